package memory

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/superscaled/sss/scaler"
	"github.com/superscaled/sss/scaler/scalertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConformance(t *testing.T) {
	scalertest.Run(t, func(t *testing.T) scaler.Scaler {
		return mustNew(t, WithPresenceTTL(200*time.Millisecond))
	})
}

// Without history the nodes are plain Brokers with a SessionStore; the
// suite skips its History group.
func TestConformanceWithoutHistory(t *testing.T) {
	scalertest.Run(t, func(t *testing.T) scaler.Scaler {
		return mustNew(t, WithHistory(0, 0), WithPresenceTTL(200*time.Millisecond))
	})
}

// clock is a settable time source for the TTL and age bounds.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// mustNew returns a Scaler closed when the test ends.
func mustNew(t *testing.T, opts ...Option) *Scaler {
	t.Helper()
	s, err := New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newWithClock(t *testing.T, opts ...Option) (*Scaler, *clock) {
	s := mustNew(t, opts...)
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	s.now = c.now
	return s, c
}

// Invalid option values make New fail.
func TestOptionsValidate(t *testing.T) {
	for _, o := range []Option{
		WithSessionTTL(-1), WithHistory(-1, 0), WithHistory(1, -1),
		WithStreamTTL(0), WithMaxSessionSubscriptions(0),
	} {
		if _, err := New(o); err == nil {
			t.Error("New accepted an invalid option")
		}
	}
}

type nop struct{}

func (nop) HandleDelivery(scaler.Delivery) {}
func (nop) HandleMessage(string, []byte)   {}
func (nop) HandleMissed(string)            {}

func join(t *testing.T, s *Scaler, id string) scaler.Node {
	t.Helper()
	n, err := s.Join(t.Context(), id, nop{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func publish(t *testing.T, n scaler.Node, channel string, count int) {
	t.Helper()
	for range count {
		if err := n.Publish(t.Context(), &scaler.Publication{Channel: channel, Data: []byte(`1`)}); err != nil {
			t.Fatal(err)
		}
	}
}

// History keeps the last size publications; older positions are lost, the
// epoch stays.
func TestHistoryTrimByCount(t *testing.T) {
	s, _ := newWithClock(t, WithHistory(3, 0))
	n := join(t, s, "a")
	h := n.(scaler.History)
	publish(t, n, "c", 5)
	entries, top, err := h.Since(t.Context(), "c", scaler.Position{}, 10)
	if err != nil || top.Offset != 5 || len(entries) != 3 || entries[0].Offset != 3 {
		t.Fatalf("Since(zero) = %d entries from %v, position %+v, %v; want offsets 3..5", len(entries), entries, top, err)
	}
	if _, _, err := h.Since(t.Context(), "c", scaler.Position{Offset: 2, Epoch: top.Epoch}, 10); err != nil {
		t.Errorf("Since(2): %v; want offsets 3..5 (all retained)", err)
	}
	_, lost, err := h.Since(t.Context(), "c", scaler.Position{Offset: 1, Epoch: top.Epoch}, 10)
	if !errors.Is(err, scaler.ErrPositionLost) || lost != top {
		t.Errorf("Since(1) = %+v, %v; want ErrPositionLost with position %+v", lost, err, top)
	}
}

// History older than the age bound is dropped on the next access.
func TestHistoryTrimByAge(t *testing.T) {
	s, clk := newWithClock(t, WithHistory(100, time.Minute))
	n := join(t, s, "a")
	h := n.(scaler.History)
	publish(t, n, "c", 2)
	clk.add(2 * time.Minute)
	publish(t, n, "c", 1)
	entries, top, err := h.Since(t.Context(), "c", scaler.Position{}, 10)
	if err != nil || top.Offset != 3 || len(entries) != 1 || entries[0].Offset != 3 {
		t.Fatalf("Since(zero) = %d entries, position %+v, %v; want only offset 3", len(entries), top, err)
	}
	if _, _, err := h.Since(t.Context(), "c", scaler.Position{Offset: 0, Epoch: top.Epoch}, 10); !errors.Is(err, scaler.ErrPositionLost) {
		t.Errorf("Since(0) after trimming: %v; want ErrPositionLost", err)
	}
}

// A session not touched for the TTL is forgotten.
func TestSessionTTL(t *testing.T) {
	s, clk := newWithClock(t, WithSessionTTL(time.Hour))
	st := join(t, s, "a").(scaler.SessionStore)
	ctx := t.Context()
	for _, id := range []string{"idle", "busy"} {
		if err := st.AddSubscription(ctx, id, scaler.StoredSubscription{Channel: "c"}); err != nil {
			t.Fatal(err)
		}
	}
	clk.add(50 * time.Minute)
	if err := st.TouchSession(ctx, "busy"); err != nil {
		t.Fatal(err)
	}
	clk.add(20 * time.Minute)
	for id, want := range map[string]int{"idle": 0, "busy": 1} {
		subs, err := st.Subscriptions(ctx, id)
		if err != nil || len(subs) != want {
			t.Errorf("Subscriptions(%q) after 70 minutes = %v, %v; want %d entries", id, subs, err, want)
		}
	}
}

func TestMaxSessionSubscriptions(t *testing.T) {
	s, _ := newWithClock(t, WithMaxSessionSubscriptions(2))
	st := join(t, s, "a").(scaler.SessionStore)
	ctx := t.Context()
	for _, ch := range []string{"a", "b", "a"} { // replacing does not count
		if err := st.AddSubscription(ctx, "s", scaler.StoredSubscription{Channel: ch}); err != nil {
			t.Fatalf("AddSubscription(%q): %v", ch, err)
		}
	}
	if err := st.AddSubscription(ctx, "s", scaler.StoredSubscription{Channel: "c"}); err == nil {
		t.Error("a third subscription was stored beyond the maximum of 2")
	}
}

func TestDuplicateJoin(t *testing.T) {
	s := mustNew(t)
	join(t, s, "a")
	if _, err := s.Join(t.Context(), "a", nop{}); err == nil {
		t.Error("a second node joined with an id already attached")
	}
}

// Scaler.Close closes every node and refuses new ones.
func TestScalerClose(t *testing.T) {
	s := mustNew(t)
	n := join(t, s, "a")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := n.Publish(context.Background(), &scaler.Publication{Channel: "c"}); !errors.Is(err, scaler.ErrClosed) {
		t.Errorf("Publish after Scaler.Close: %v; want ErrClosed", err)
	}
	if _, err := s.Join(context.Background(), "b", nop{}); !errors.Is(err, scaler.ErrClosed) {
		t.Errorf("Join after Scaler.Close: %v; want ErrClosed", err)
	}
}

// missRecorder records deliveries and HandleMissed calls.
type missRecorder struct {
	mu      sync.Mutex
	offsets []string // stream:offset
	missed  []string
}

func (r *missRecorder) HandleDelivery(d scaler.Delivery) {
	r.mu.Lock()
	r.offsets = append(r.offsets, fmt.Sprintf("%s:%d", d.Stream, d.Offset))
	r.mu.Unlock()
}
func (r *missRecorder) HandleMessage(string, []byte) {}
func (r *missRecorder) HandleMissed(stream string) {
	r.mu.Lock()
	r.missed = append(r.missed, stream)
	r.mu.Unlock()
}

// A cut node misses deliveries and cannot call the backend; Heal tells it
// which streams may have missed some.
func TestCutAndHeal(t *testing.T) {
	s := mustNew(t)
	ctx := context.Background()
	rec := &missRecorder{}
	a, err := s.Join(ctx, "a", rec)
	if err != nil {
		t.Fatal(err)
	}
	b := join(t, s, "b")
	if err := a.Subscribe(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	b.Publish(ctx, &scaler.Publication{Channel: "x"})
	if !s.Cut("a") || s.Cut("nobody") {
		t.Fatal("Cut reported the wrong nodes")
	}
	b.Publish(ctx, &scaler.Publication{Channel: "x"})
	for name, err := range map[string]error{
		"Publish":   a.Publish(ctx, &scaler.Publication{Channel: "x"}),
		"Send":      a.Send(ctx, "b", nil),
		"Subscribe": a.Subscribe(ctx, "y"),
	} {
		if !errors.Is(err, scaler.ErrUnavailable) {
			t.Errorf("%s on a cut node: %v, want ErrUnavailable", name, err)
		}
	}
	if _, _, err := a.(scaler.History).Since(ctx, "x", scaler.Position{}, 0); !errors.Is(err, scaler.ErrUnavailable) {
		t.Errorf("Since on a cut node: %v", err)
	}
	if !s.Heal("a") || s.Heal("a") {
		t.Fatal("Heal reported the wrong state")
	}
	b.Publish(ctx, &scaler.Publication{Channel: "x"})
	b.Publish(ctx, &scaler.Publication{Channel: "y"})
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if want := []string{"x:1", "x:3", "y:1"}; !slices.Equal(rec.offsets, want) {
		t.Errorf("deliveries %v, want %v (the second was lost)", rec.offsets, want)
	}
	// y was subscribed while cut: the interest was kept.
	slices.Sort(rec.missed)
	if want := []string{"x", "y"}; !slices.Equal(rec.missed, want) {
		t.Errorf("HandleMissed for %v, want %v", rec.missed, want)
	}
}
