package memory

import (
	"context"
	"errors"
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
		return mustNew(t)
	})
}

// Without history the nodes are plain Brokers with a SessionStore; the
// suite skips its History group.
func TestConformanceWithoutHistory(t *testing.T) {
	scalertest.Run(t, func(t *testing.T) scaler.Scaler {
		return mustNew(t, WithHistory(0, 0))
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
