package sss_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/internal/wstest"
	"github.com/superscaled/sss/scaler"
	"github.com/superscaled/sss/scaler/memory"
)

// Deliveries an instance misses while its link to the backend is broken
// are never lost silently: each of three checks catches them on its own.

// missedCluster is two servers on one memory scaler; a's link can be cut
// (memory.Scaler.Cut) and healed.
func missedCluster(t *testing.T, opts ...sss.Option) (a, b *sss.Server, url string, cut, heal func()) {
	m := newMemory(t)
	a, err := sss.New(append([]sss.Option{sss.WithScaler(m)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	b, err = sss.New(append([]sss.Option{sss.WithScaler(m)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(a)
	t.Cleanup(func() { a.Close(); b.Close(); ts.Close(); m.Close() })
	return a, b, wsURL(ts), func() { m.Cut(a.NodeID()) }, func() { m.Heal(a.NodeID()) }
}

func pubData(t *testing.T, w *wstest.Client) string {
	t.Helper()
	p, ok := nextPub(t, w, 5*time.Second)
	if !ok {
		t.Fatal("no publication")
	}
	var s string
	json.Unmarshal(p.Data, &s)
	return s
}

// The first publication on a user channel since the connection's welcome
// is missed while the link is down. When the link returns, the scaler says
// deliveries may have been missed (HandleMissed), and the server fills them
// from history, although nothing else is published.
func TestMissedFirstDeliveryAfterHeal(t *testing.T) {
	a, b, url, cut, heal := missedCluster(t, sss.WithSessionParser(userParser))
	w := wstest.Dial(t, url, as("uma", "s"))
	w.SendRaw(`{"type":"ready"}`)
	if p := w.Welcome.Positions["$u.uma"]; p.Offset != 0 || p.Epoch == "" {
		t.Fatalf("welcome position %+v", p)
	}
	cut()
	if err := b.PublishUser(context.Background(), "uma", "e", "1"); err != nil {
		t.Fatal(err)
	}
	w.Nothing(50 * time.Millisecond)
	heal()
	if got := pubData(t, w); got != "1" {
		t.Fatalf("got %q, want the missed publication 1", got)
	}
	if a.Stats().Gaps == 0 {
		t.Fatal("the gap was not counted")
	}
	b.PublishUser(context.Background(), "uma", "e", "2")
	if got := pubData(t, w); got != "2" {
		t.Fatalf("got %q, want 2", got)
	}
	w.Nothing(50 * time.Millisecond)
}

// Without that notice (a backend that cannot tell), the first delivery
// after the welcome is checked against the welcome's position: #2 shows
// that #1 is missing, which is filled from history before #2.
func TestMissedFirstDeliveryByOffset(t *testing.T) {
	m := newMemory(t)
	lossy := &dropScaler{Scaler: m}
	a, _ := sss.New(sss.WithScaler(lossy), sss.WithSessionParser(userParser))
	b, _ := sss.New(sss.WithScaler(m))
	ts := httptest.NewServer(a)
	t.Cleanup(func() { a.Close(); b.Close(); ts.Close(); m.Close() })
	w := wstest.Dial(t, wsURL(ts), as("uma", "s"))
	w.SendRaw(`{"type":"ready"}`)
	lossy.count.Store(1)
	lossy.drop.Store(1) // a's first delivery never arrives
	ctx := context.Background()
	b.PublishUser(ctx, "uma", "e", "1")
	b.PublishUser(ctx, "uma", "e", "2")
	for _, want := range []string{"1", "2"} {
		if got := pubData(t, w); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	w.Nothing(50 * time.Millisecond)
}

// A subscription made after the instance last received a delivery on its
// stream starts at the position its ack gave: a repair of deliveries the
// instance missed before that never sends it those (no duplicates).
func TestRepairSendsNoDuplicates(t *testing.T) {
	m := newMemory(t)
	lossy := &dropScaler{Scaler: m}
	a, _ := sss.New(sss.WithScaler(lossy))
	b, _ := sss.New(sss.WithScaler(m))
	ts := httptest.NewServer(a)
	t.Cleanup(func() { a.Close(); b.Close(); ts.Close(); m.Close() })
	ctx := context.Background()
	old := wstest.Dial(t, wsURL(ts), nil)
	old.Subscribe("feed")
	b.Publish(ctx, "feed", "e", "1")
	if got := pubData(t, old); got != "1" {
		t.Fatal(got)
	}
	lossy.count.Store(2)
	lossy.drop.Store(2) // a misses #2 and #3
	b.Publish(ctx, "feed", "e", "2")
	b.Publish(ctx, "feed", "e", "3")
	// A new subscriber on a, which starts after #3 (its ack says so).
	newer := wstest.Dial(t, wsURL(ts), nil)
	var r struct{ Offset uint64 }
	json.Unmarshal(newer.Subscribe("feed").Result, &r)
	if r.Offset != 3 {
		t.Fatalf("ack offset %d, want 3", r.Offset)
	}
	b.Publish(ctx, "feed", "e", "4") // a sees 1 then 4: a gap, repaired
	for _, want := range []string{"2", "3", "4"} {
		if got := pubData(t, old); got != want {
			t.Fatalf("old subscriber got %q, want %q", got, want)
		}
	}
	if got := pubData(t, newer); got != "4" {
		t.Fatalf("the newer subscriber got %q first, want 4: nothing at or below its ack", got)
	}
	newer.Nothing(50 * time.Millisecond)
	old.Nothing(50 * time.Millisecond)
	if a.Stats().Gaps == 0 {
		t.Fatal("the gap was not counted")
	}
}

// lagScaler delivers to its nodes late, as a busy node's receive loop
// does: history (Since) already has what the live feed has not brought.
type lagScaler struct {
	*memory.Scaler
	lag time.Duration
}

func (l *lagScaler) Join(ctx context.Context, id string, h scaler.Handler) (scaler.Node, error) {
	lh := &lagHandler{Handler: h, in: make(chan scaler.Delivery, 1024), done: make(chan struct{}), lag: l.lag}
	go lh.run()
	n, err := l.Scaler.Join(ctx, id, lh)
	if err != nil {
		close(lh.in)
		<-lh.done
		return nil, err
	}
	return lagNode{Node: n, History: n.(scaler.History), h: lh}, nil
}

type lagNode struct {
	scaler.Node
	scaler.History
	h *lagHandler
}

func (n lagNode) Close() error {
	err := n.Node.Close()
	close(n.h.in)
	<-n.h.done
	return err
}

type lagHandler struct {
	scaler.Handler
	in   chan scaler.Delivery
	done chan struct{}
	lag  time.Duration
}

func (h *lagHandler) HandleDelivery(d scaler.Delivery) { h.in <- d }

func (h *lagHandler) run() {
	defer close(h.done)
	for d := range h.in {
		time.Sleep(h.lag)
		h.Handler.HandleDelivery(d)
	}
}

// A subscription that catches up from history goes live at the offset
// history gave; the live feed of its instance may still bring publications
// at or below it (it lags history): they are not sent again.
func TestLaggingFeedSendsNoDuplicates(t *testing.T) {
	m := newMemory(t)
	lag := &lagScaler{Scaler: m, lag: 20 * time.Millisecond}
	a, _ := sss.New(sss.WithScaler(lag))
	b, _ := sss.New(sss.WithScaler(m))
	ts := httptest.NewServer(a)
	t.Cleanup(func() { a.Close(); b.Close(); ts.Close(); m.Close() })
	ctx := context.Background()
	keep := wstest.Dial(t, wsURL(ts), nil) // keeps a subscribed to the stream
	var r struct {
		Offset uint64
		Epoch  string
	}
	json.Unmarshal(keep.Subscribe("feed").Result, &r)
	for i := 1; i <= 10; i++ {
		b.Publish(ctx, "feed", "e", fmt.Sprint(i))
	}
	// History has 1..10 at once; a's live feed brings them over 200 ms.
	w := wstest.Dial(t, wsURL(ts), nil)
	w.Ack(map[string]any{"type": "subscribe", "channel": "feed", "since": map[string]any{"offset": r.Offset, "epoch": r.Epoch}})
	for i := 1; i <= 10; i++ {
		if got := pubData(t, w); got != fmt.Sprint(i) {
			t.Fatalf("got %q, want %d", got, i)
		}
	}
	w.Nothing(300 * time.Millisecond)
}
