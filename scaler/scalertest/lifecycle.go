package scalertest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/superscaled/sss/scaler"
)

var closeTests = []test{
	{"MethodsReturnErrClosed", testClosedMethods},
	{"Idempotent", testCloseIdempotent},
	{"OthersKeepWorking", testCloseOthers},
	{"NoHandlerCallAfterClose", testCloseUnderTraffic},
	{"RejoinSameID", testRejoin},
}

var contextTests = []test{
	{"Cancelled", testCancelled},
	{"DeadlineExceeded", testDeadline},
}

var concurrencyTests = []test{
	{"InterestChurnWhilePublishing", testChurn},
	{"MixedWorkload", testStress},
}

// Every method of a closed node returns an error wrapping ErrClosed.
func testClosedMethods(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e := newEnv(t, ns)
	n := e.nodes(2)
	s := e.ch("closed")
	n[0].subscribe(s)
	n[0].close()
	ctx, cancel := callCtx(t)
	defer cancel()
	calls := map[string]error{
		"Publish":     n[0].node.Publish(ctx, pub(s, "e", `1`)),
		"Subscribe":   n[0].node.Subscribe(ctx, e.ch("other")),
		"Unsubscribe": n[0].node.Unsubscribe(ctx, s),
		"Send":        n[0].node.Send(ctx, n[1].id, []byte("x")),
	}
	if st, ok := n[0].node.(scaler.SessionStore); ok {
		calls["AddSubscription"] = st.AddSubscription(ctx, e.session("s"), scaler.StoredSubscription{Channel: s})
		calls["RemoveSubscription"] = st.RemoveSubscription(ctx, e.session("s"), s)
		_, calls["Subscriptions"] = st.Subscriptions(ctx, e.session("s"))
		calls["TouchSession"] = st.TouchSession(ctx, e.session("s"))
	}
	if p, ok := n[0].node.(scaler.Presence); ok {
		calls["Join"] = p.Join(ctx, s, scaler.ClientInfo{Conn: "c"})
		calls["Leave"] = p.Leave(ctx, s, "c")
		_, calls["Present"] = p.Present(ctx, s)
		_, calls["Counts"] = p.Counts(ctx, s)
	}
	for name, err := range calls {
		if !errors.Is(err, scaler.ErrClosed) {
			t.Errorf("%s on a closed node: %v; want an error wrapping scaler.ErrClosed", name, err)
		}
	}
}

// Close twice is harmless. The contract says both "Close is idempotent" and
// "every method of a closed Node returns ErrClosed", so the second Close may
// return nil or ErrClosed.
func testCloseIdempotent(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e := newEnv(t, ns)
	n := e.nodes(1)
	n[0].close()
	for range 2 {
		if err := n[0].node.Close(); err != nil && !errors.Is(err, scaler.ErrClosed) {
			t.Errorf("second Close: %v; want nil or ErrClosed", err)
		}
	}
}

// Closing one node drops its interests and nothing else: the others keep
// publishing, receiving and sending; a Send to the closed node is nil or
// ErrUnknownNode and is not delivered.
func testCloseOthers(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e := newEnv(t, ns)
	n := e.nodes(3)
	s := e.ch("survive")
	for _, m := range n {
		m.subscribe(s)
	}
	n[0].close()
	n[1].publish(pub(s, "e", `1`))
	n[2].publish(pub(s+".x", "e", `2`))
	n[1].send(n[2].id, []byte("still here"))
	ctx, cancel := callCtx(t)
	defer cancel()
	if err := n[1].node.Send(ctx, n[0].id, []byte("gone")); err != nil && !errors.Is(err, scaler.ErrUnknownNode) {
		t.Errorf("Send to a closed node: %v; want nil or an error wrapping ErrUnknownNode", err)
	}
	n[1].rec.waitStream(t, s, 2)
	n[2].rec.waitStream(t, s, 2)
	n[2].rec.waitMsgs(t, 1)
	settle()
	expectDeliveries(t, n[0])
	expectDeliveries(t, n[1], via(s, s), via(s, s+".x"))
	expectDeliveries(t, n[2], via(s, s), via(s, s+".x"))
	if got := n[0].rec.msgs(); len(got) != 0 {
		t.Errorf("%s received %d messages after Close", n[0].id, len(got))
	}
}

// While other nodes publish and send to it, a node closes: its handler is
// never called, nor still running, once Close has returned (the recorder
// checks). Several nodes close in turn, each in the middle of the traffic.
func testCloseUnderTraffic(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	const rounds = 5
	e := newEnv(t, ns)
	n := e.nodes(2)
	s := e.ch("busy")
	n[0].subscribe(s)

	var target atomic.Pointer[string] // the node being closed, for Send
	target.Store(&n[0].id)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 2*len(n))
	for _, m := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout*rounds)
			defer cancel()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := m.node.Publish(ctx, pub(s+".deep", "e", strconv.Itoa(i))); err != nil {
					errs <- fmt.Errorf("%s: Publish: %w", m.id, err)
					return
				}
				if i%16 == 0 {
					time.Sleep(time.Millisecond)
				}
			}
		})
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout*rounds)
			defer cancel()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := m.node.Send(ctx, *target.Load(), []byte("m")); err != nil && !errors.Is(err, scaler.ErrUnknownNode) {
					errs <- fmt.Errorf("%s: Send: %w", m.id, err)
					return
				}
				if i%16 == 0 {
					time.Sleep(time.Millisecond)
				}
			}
		})
	}
	for i := range rounds {
		victim := e.join("victim" + strconv.Itoa(i))
		victim.subscribe(s, s+".deep")
		target.Store(&victim.id)
		victim.rec.waitStream(t, s, 10)
		victim.rec.waitMsgs(t, 5)
		victim.close()
	}
	time.Sleep(quiet) // late calls would show up now
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	n[0].rec.waitStream(t, s, 20) // the survivor still receives
}

// Close frees the node's id: Join with the same id succeeds and the new node
// starts with no interests; deliveries and messages go to the new handler.
// (The contract's "unique id" is read as unique among attached nodes.)
func testRejoin(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e := newEnv(t, ns)
	n := e.nodes(2)
	s := e.ch("again")
	n[0].subscribe(s)
	n[0].close()
	again := e.join("n0")
	if again.id != n[0].id {
		t.Fatalf("rejoined as %q, want %q", again.id, n[0].id)
	}
	n[1].publish(pub(s, "e", `1`)) // old interest must be gone
	again.subscribe(e.ch("fresh"))
	n[1].publish(pub(e.ch("fresh"), "e", `2`))
	n[1].send(again.id, []byte("hello again"))
	again.rec.waitStream(t, e.ch("fresh"), 1)
	again.rec.waitMsgs(t, 1)
	settle()
	expectDeliveries(t, again, via(e.ch("fresh"), e.ch("fresh")))
	if got := again.rec.msgs(); len(got) != 1 || got[0].from != n[1].id {
		t.Errorf("rejoined node got messages %+v, want one from %s", got, n[1].id)
	}
	expectDeliveries(t, n[0])
}

// An already cancelled context makes every call fail with its error.
func testCancelled(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e := newEnv(t, ns)
	n := e.nodes(2)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if node, err := e.sc.Join(ctx, e.prefix+"-late", newRecorder("late")); !errors.Is(err, context.Canceled) {
		if node != nil {
			node.Close()
		}
		t.Errorf("Join with a cancelled context: %v; want an error wrapping context.Canceled", err)
	}
	checkCtxErr(t, ctx, e, n, context.Canceled)
}

// An expired deadline too.
func testDeadline(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e := newEnv(t, ns)
	n := e.nodes(2)
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	checkCtxErr(t, ctx, e, n, context.DeadlineExceeded)
}

func checkCtxErr(t *testing.T, ctx context.Context, e *env, n []*member, want error) {
	t.Helper()
	s := e.ch("ctx")
	calls := map[string]error{
		"Publish":     n[0].node.Publish(ctx, pub(s, "e", `1`)),
		"Subscribe":   n[0].node.Subscribe(ctx, s),
		"Unsubscribe": n[0].node.Unsubscribe(ctx, s),
		"Send":        n[0].node.Send(ctx, n[1].id, []byte("x")),
	}
	if st, ok := n[0].node.(scaler.SessionStore); ok {
		calls["AddSubscription"] = st.AddSubscription(ctx, e.session("s"), scaler.StoredSubscription{Channel: s})
		calls["RemoveSubscription"] = st.RemoveSubscription(ctx, e.session("s"), s)
		_, calls["Subscriptions"] = st.Subscriptions(ctx, e.session("s"))
		calls["TouchSession"] = st.TouchSession(ctx, e.session("s"))
	}
	if p, ok := n[0].node.(scaler.Presence); ok {
		calls["Join"] = p.Join(ctx, s, scaler.ClientInfo{Conn: "c"})
		calls["Leave"] = p.Leave(ctx, s, "c")
		_, calls["Present"] = p.Present(ctx, s)
		_, calls["Counts"] = p.Counts(ctx, s)
	}
	for name, err := range calls {
		if !errors.Is(err, want) {
			t.Errorf("%s with a done context: %v; want an error wrapping %v", name, err, want)
		}
	}
	// Whatever the failed calls did, the nodes still work.
	n[0].unsubscribe(s)
	n[1].subscribe(s)
	n[0].publish(pub(s, "e", `2`))
	n[1].rec.waitStream(t, s, 1)
}

// Every node toggles its interest in one hot stream while every node
// publishes to it: Subscribe and Unsubscribe race with deliveries to the
// same node and stream, the interleaving where lock-order bugs hide. It must
// finish, and each node still gets exactly one delivery per publication
// once the churn has stopped.
func testChurn(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	const (
		nodes  = 4
		rounds = 300 // Subscribe+Unsubscribe pairs per node
	)
	e := newEnv(t, ns)
	n := e.nodes(nodes)
	hot := e.ch("hot")
	var wg sync.WaitGroup
	for _, m := range n {
		wg.Go(func() { // churn
			ctx, cancel := context.WithTimeout(context.Background(), stressTimeout)
			defer cancel()
			for i := range rounds {
				if err := m.node.Subscribe(ctx, hot); err != nil {
					t.Errorf("%s: Subscribe %d: %v", m.id, i, err)
					return
				}
				if err := m.node.Unsubscribe(ctx, hot); err != nil {
					t.Errorf("%s: Unsubscribe %d: %v", m.id, i, err)
					return
				}
			}
		})
		wg.Go(func() { // publish
			ctx, cancel := context.WithTimeout(context.Background(), stressTimeout)
			defer cancel()
			for i := range rounds {
				if err := m.node.Publish(ctx, pub(hot+".x", m.id, strconv.Itoa(i))); err != nil {
					t.Errorf("%s: Publish %d: %v", m.id, i, err)
					return
				}
			}
		})
	}
	waitOrCrash(t, &wg, "Subscribe/Unsubscribe racing with Publish")
	if t.Failed() {
		return
	}
	for _, m := range n {
		m.unsubscribe(hot) // every node ends unsubscribed: nothing may arrive
	}
	n[0].publish(pub(hot, "after", `1`))
	settle()
	for _, m := range n {
		m.subscribe(hot)
	}
	n[1].publish(pub(hot, "final", `2`))
	for _, m := range n {
		m.rec.waitUntil(t, "the final publication", func() bool { return countEvent(m.rec, "final") == 1 })
	}
	settle()
	for _, m := range n {
		if got := countEvent(m.rec, "final") + countEvent(m.rec, "after"); got != 1 {
			t.Errorf("%s: got %d deliveries after the churn, want 1", m.id, got)
		}
	}
}

func countEvent(r *recorder, event string) int {
	c := 0
	for _, d := range r.all() {
		if d.Pub.Event == event {
			c++
		}
	}
	return c
}

// waitOrCrash waits for wg, crashing the binary if it takes longer than
// stressTimeout.
func waitOrCrash(t *testing.T, wg *sync.WaitGroup, what string) {
	t.Helper()
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(stressTimeout):
		crash(t, fmt.Sprintf("%s did not finish within %v: deadlock in the backend?", what, stressTimeout))
	}
}

// Many goroutines on every node publish, subscribe, unsubscribe and send at
// once, on overlapping streams. The workload must finish (no deadlock) and
// leave the nodes in a state that still follows the contract.
func testStress(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	const (
		workers = 4   // per node
		ops     = 300 // per worker
	)
	e := newEnv(t, ns)
	n := e.nodes(3)
	streams := []string{
		e.ch("c0"), e.ch("c0.a"), e.ch("c0.a.b"), e.ch("c0.z"),
		e.ch("c1"), e.ch("c1.x"), e.res("c2"), e.res("c2.y"),
	}
	var wg sync.WaitGroup
	for ni, m := range n {
		for w := range workers {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(ni), uint64(w))) // reproducible mix
				ctx, cancel := context.WithTimeout(context.Background(), stressTimeout)
				defer cancel()
				for i := range ops {
					s := streams[rng.IntN(len(streams))]
					var err error
					switch op := rng.IntN(10); {
					case op < 5:
						err = m.node.Publish(ctx, pub(s, m.id, strconv.Itoa(i)))
					case op < 7:
						err = m.node.Subscribe(ctx, s)
					case op < 9:
						err = m.node.Unsubscribe(ctx, s)
					default:
						err = m.node.Send(ctx, n[rng.IntN(len(n))].id, []byte(strconv.Itoa(i)))
					}
					if err != nil {
						t.Errorf("%s: worker %d op %d on %q: %v", m.id, w, i, s, err)
						return
					}
				}
			})
		}
	}
	waitOrCrash(t, &wg, "the workload")
	if t.Failed() {
		return
	}

	// Settle: every node withdraws every stream; then nothing arrives for
	// them (the recorder checks), and a fresh subscription gets exactly one
	// delivery per publication.
	for _, m := range n {
		m.unsubscribe(streams...)
	}
	n[0].publish(pub(e.ch("c0.a.b"), "after", `1`), pub(e.res("c2"), "after", `2`))
	settle()
	before := make([]int, len(n))
	for i, m := range n {
		m.subscribe(e.ch("c0.a"))
		before[i] = m.rec.count()
	}
	n[1].publish(pub(e.ch("c0.a.b"), "final", `3`))
	for i, m := range n {
		m.rec.waitUntil(t, "the final publication", func() bool { return m.rec.count() > before[i] })
	}
	settle()
	for i, m := range n {
		if got := m.rec.count() - before[i]; got != 1 {
			t.Errorf("%s: got %d deliveries of the final publication, want 1", m.id, got)
		}
	}
}

// crash stops the test binary with every goroutine's stack, as go test's
// -timeout does. A stuck backend would also block the cleanups (Close) that
// t.Fatal or a panic in the test goroutine run, hanging the binary instead.
func crash(t *testing.T, why string) {
	t.Helper()
	debug.SetTraceback("all")
	msg := fmt.Sprintf("scalertest: %s: %s", t.Name(), why)
	go func() { panic(msg) }()
	select {}
}
