package sss

import (
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/superscaled/sss/internal/wstest"
)

// Shutdown returns soon after its context ends even when a handler ignores
// its own cancelled context: it does not wait for it without bound.
func TestShutdownDoesNotWaitForStuckHandlers(t *testing.T) {
	defer func(d time.Duration) { abandonAfter = d }(abandonAfter)
	abandonAfter = 200 * time.Millisecond
	release := make(chan struct{})
	srv, err := New()
	if err != nil {
		t.Fatal(err)
	}
	srv.HandleTell("stuck", func(context.Context, *Conn, json.RawMessage) error {
		<-release // ignores its context
		return nil
	})
	ts := httptest.NewServer(srv)
	defer ts.Close()
	w := wstest.Dial(t, "ws"+strings.TrimPrefix(ts.URL, "http"), nil)
	w.Ack(map[string]any{"type": "tell", "name": "stuck"})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want its context's error", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Shutdown took %v", d)
	}
	if err := srv.Publish(context.Background(), "c", "e", 1); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Publish after Shutdown: %v", err)
	}
	close(release)
	// The stuck handler's connection ends once it returns.
	deadline := time.Now().Add(5 * time.Second)
	for srv.Stats().Connections != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}
