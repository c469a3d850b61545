package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/superscaled/sss/scaler"
	"github.com/superscaled/sss/scaler/memory"
	"github.com/superscaled/sss/scaler/scalertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The conformance suite is how you check a scaler of your own: give it a
// factory for fresh instances.
func TestConformance(t *testing.T) {
	scalertest.Run(t, func(t *testing.T) scaler.Scaler {
		inner := newMemory(t)
		t.Cleanup(func() { inner.Close() })
		return NewCountingScaler(inner, slog.New(slog.DiscardHandler))
	})
}

// plainScaler hides every optional interface of its nodes: embedding
// scaler.Node promotes only Node's methods.
type plainScaler struct{ scaler.Scaler }

func (p plainScaler) Join(ctx context.Context, id string, h scaler.Handler) (scaler.Node, error) {
	n, err := p.Scaler.Join(ctx, id, h)
	if err != nil {
		return nil, err
	}
	return struct{ scaler.Node }{n}, nil
}

// The wrapper has exactly the optional interfaces of the node it wraps.
func TestOptionalInterfaces(t *testing.T) {
	for _, tc := range []struct {
		name  string
		inner scaler.Scaler
	}{
		{"memory", newMemory(t)},
		{"plain", plainScaler{newMemory(t)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			innerNode, err := tc.inner.Join(t.Context(), "direct", nopHandler{})
			if err != nil {
				t.Fatal(err)
			}
			defer innerNode.Close()
			n, err := NewCountingScaler(tc.inner, slog.New(slog.DiscardHandler)).Join(t.Context(), "wrapped", nopHandler{})
			if err != nil {
				t.Fatal(err)
			}
			defer n.Close()
			_, wantStore := innerNode.(scaler.SessionStore)
			_, wantHist := innerNode.(scaler.History)
			if _, got := n.(scaler.SessionStore); got != wantStore {
				t.Errorf("wrapped node implements SessionStore: %t, inner: %t", got, wantStore)
			}
			if _, got := n.(scaler.History); got != wantHist {
				t.Errorf("wrapped node implements History: %t, inner: %t", got, wantHist)
			}
		})
	}
}

type nopHandler struct{}

func (nopHandler) HandleDelivery(scaler.Delivery) {}
func (nopHandler) HandleMessage(string, []byte)   {}
func (nopHandler) HandleMissed(string)            {}

// The demo runs to completion and shows what it promises.
func TestRun(t *testing.T) {
	var out bytes.Buffer
	if err := run(&out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		`client 1 got pub on news.uk.london via news: article {"title":"Hello"}`,
		`client 2 got pub on news.uk.london via news.uk: article {"title":"Hello"}`,
		`client 2 got tell notify: {"text":"hi from A"}`,
		"published=1 delivered=2 sent=1 received=1",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

func newMemory(t testing.TB) *memory.Scaler {
	t.Helper()
	m, err := memory.New()
	if err != nil {
		t.Fatal(err)
	}
	return m
}
