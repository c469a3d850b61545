// Package scalertest checks a [scaler.Scaler] implementation against the
// contract documented in package scaler. Backend authors call [Run] from
// their own tests:
//
//	func TestConformance(t *testing.T) {
//		scalertest.Run(t, func(t *testing.T) scaler.Scaler {
//			s, err := mybackend.New(mybackend.Options{Addr: testAddr(t)})
//			if err != nil {
//				t.Fatal(err)
//			}
//			t.Cleanup(func() { s.Close() })
//			return s
//		})
//	}
//
// Every subtest asks the factory for a fresh Scaler, joins a few nodes to it
// with unique ids and recording handlers, and closes them when it ends. The
// factory registers its own cleanup with t.Cleanup; that cleanup runs after
// the nodes have been closed.
//
// Channel names, node ids and session ids carry a random prefix per subtest,
// so a network backend (Redis, NATS, ...) can share one server between
// subtests and between concurrent runs of the suite.
//
// The suite never assumes synchronous delivery: it polls for expected
// deliveries for up to 5 seconds and checks that nothing unexpected arrives
// within a short quiet window. Run it with -race. Against the in-memory
// scaler it takes a few seconds.
//
// Groups:
//
//   - Broker: fan-out, hierarchy, reserved flat channels, publication round
//     trip, idempotent Subscribe/Unsubscribe and when deliveries start and
//     stop, per-publisher and per-stream order, Send.
//   - Close: ErrClosed, idempotence, no handler call after Close, survivors,
//     re-joining an id after Close.
//   - Context: cancelled or expired contexts fail every call, Join included.
//   - Concurrency: a mixed workload from many goroutines must finish.
//   - SessionStore: skipped when the Node does not implement it.
//   - History: offsets and epochs per stream, Since, lost positions; skipped
//     when the Node does not implement it. (Trimming by count and age
//     depends on backend options: test it in the backend's own tests.)
//   - Presence: lists and counts across nodes, replace, leave, exact
//     channels, Close, concurrency, and node death (a Scaler that
//     implements [Crasher], with a presence TTL of a few seconds at most);
//     skipped when the Node does not implement scaler.Presence.
//
// Throughout, the recording handlers also check that they are never called
// concurrently for one stream on one node, never after Close returned, and
// never for a stream after Unsubscribe returned.
package scalertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/superscaled/sss/scaler"
)

const (
	// waitTimeout bounds how long an expected delivery may take.
	waitTimeout = 5 * time.Second
	// quiet is how long the suite waits before concluding that nothing more
	// arrives. Backends deliver far faster than this in practice.
	quiet = 150 * time.Millisecond
	// callTimeout bounds one call to the backend, so a hung backend fails
	// the test instead of hanging it.
	callTimeout = 10 * time.Second
	// stressTimeout bounds the concurrency workload; beyond it the suite
	// reports a deadlock.
	stressTimeout = 30 * time.Second
)

// Run runs the conformance suite. newScaler must return a fresh Scaler for
// each call and register its cleanup with t.Cleanup.
func Run(t *testing.T, newScaler func(t *testing.T) scaler.Scaler) {
	t.Helper()
	groups := []struct {
		name  string
		tests []test
	}{
		{"Broker", brokerTests},
		{"Close", closeTests},
		{"Context", contextTests},
		{"Concurrency", concurrencyTests},
		{"SessionStore", storeTests},
		{"History", historyTests},
		{"Presence", presenceTests},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) {
			for _, tc := range g.tests {
				t.Run(tc.name, func(t *testing.T) { tc.run(t, newScaler) })
			}
		})
	}
}

type test struct {
	name string
	run  func(t *testing.T, newScaler func(*testing.T) scaler.Scaler)
}

// env is one subtest's scaler and nodes.
type env struct {
	t      *testing.T
	sc     scaler.Scaler
	prefix string
}

func newEnv(t *testing.T, newScaler func(*testing.T) scaler.Scaler) *env {
	t.Helper()
	sc := newScaler(t)
	if sc == nil {
		t.Fatal("scalertest: newScaler returned nil")
	}
	return &env{t: t, sc: sc, prefix: "st" + token()}
}

// nodes joins n nodes named n0, n1, ...
func (e *env) nodes(n int) []*member {
	e.t.Helper()
	ms := make([]*member, n)
	for i := range ms {
		ms[i] = e.join(fmt.Sprintf("n%d", i))
	}
	return ms
}

// join attaches a node with a recording handler. Cleanup closes it (before
// the scaler's own cleanup, which was registered earlier) and reports what
// the handler saw going wrong.
func (e *env) join(name string) *member {
	e.t.Helper()
	id := e.prefix + "-" + name
	rec := newRecorder(id)
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	n, err := e.sc.Join(ctx, id, rec)
	if err != nil {
		e.t.Fatalf("Join(%q): %v", id, err)
	}
	if n == nil {
		e.t.Fatalf("Join(%q) returned a nil Node and no error", id)
	}
	m := &member{t: e.t, id: id, node: n, rec: rec}
	e.t.Cleanup(func() {
		if err := n.Close(); err != nil && !isClosed(err) {
			e.t.Errorf("%s: Close: %v", id, err)
		}
		rec.closed.Store(true)
		for _, p := range rec.problemList() {
			e.t.Errorf("%s: %s", id, p)
		}
	})
	return m
}

// ch returns a channel name unique to this subtest. Dots in name make levels.
func (e *env) ch(name string) string { return e.prefix + "." + name }

// res returns a reserved (flat) channel unique to this subtest, like a user
// channel "$u.<id>" whose id holds dots.
func (e *env) res(name string) string { return scaler.ReservedPrefix + "u." + e.prefix + "." + name }

// session returns a session id unique to this subtest.
func (e *env) session(name string) string { return e.prefix + "-" + name }

func token() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 8)
	rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

func isClosed(err error) bool { return err != nil && errors.Is(err, scaler.ErrClosed) }

// member is one joined node with the recorder its handler writes to.
type member struct {
	t    *testing.T
	id   string
	node scaler.Node
	rec  *recorder
}

func callCtx(t *testing.T) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), callTimeout)
}

// subscribe subscribes and fails the test on error. The stream is marked
// live before the call: deliveries may start as soon as Subscribe is called.
func (m *member) subscribe(streams ...string) {
	m.t.Helper()
	ctx, cancel := callCtx(m.t)
	defer cancel()
	for _, s := range streams {
		m.rec.setStopped(s, false)
		if err := m.node.Subscribe(ctx, s); err != nil {
			m.t.Fatalf("%s: Subscribe(%q): %v", m.id, s, err)
		}
	}
}

// unsubscribe unsubscribes and fails the test on error. From the moment it
// returns, any delivery on the stream is reported by the recorder.
func (m *member) unsubscribe(streams ...string) {
	m.t.Helper()
	ctx, cancel := callCtx(m.t)
	defer cancel()
	for _, s := range streams {
		if err := m.node.Unsubscribe(ctx, s); err != nil {
			m.t.Fatalf("%s: Unsubscribe(%q): %v", m.id, s, err)
		}
		m.rec.setStopped(s, true)
	}
}

func (m *member) publish(pubs ...*scaler.Publication) {
	m.t.Helper()
	ctx, cancel := callCtx(m.t)
	defer cancel()
	for _, p := range pubs {
		if err := m.node.Publish(ctx, p); err != nil {
			m.t.Fatalf("%s: Publish(%q): %v", m.id, p.Channel, err)
		}
	}
}

func (m *member) send(to string, msg []byte) {
	m.t.Helper()
	ctx, cancel := callCtx(m.t)
	defer cancel()
	if err := m.node.Send(ctx, to, msg); err != nil {
		m.t.Fatalf("%s: Send(%q): %v", m.id, to, err)
	}
}

// close closes the node; from the moment Close returns, any handler call is
// reported by the recorder.
func (m *member) close() {
	m.t.Helper()
	if err := m.node.Close(); err != nil {
		m.t.Fatalf("%s: Close: %v", m.id, err)
	}
	m.rec.closed.Store(true)
}

func pub(channel, event, data string) *scaler.Publication {
	p := &scaler.Publication{Channel: channel, Event: event}
	if data != "" {
		p.Data = []byte(data)
	}
	return p
}

type message struct {
	from string
	msg  []byte
}

// recorder is the Handler of every node the suite joins. It records what
// arrives and checks the rules a handler can observe by itself.
type recorder struct {
	id     string
	notify chan struct{} // one token: something was recorded
	closed atomic.Bool   // set once Close returned

	mu         sync.Mutex
	deliveries []scaler.Delivery
	messages   []message
	missed     []string        // HandleMissed calls, by stream
	gone       []gone          // HandleGone calls (presence.go)
	active     map[string]int  // handler calls in progress per stream
	stopped    map[string]bool // streams whose Unsubscribe returned
	problems   []string
}

func newRecorder(id string) *recorder {
	return &recorder{
		id:      id,
		notify:  make(chan struct{}, 1),
		active:  make(map[string]int),
		stopped: make(map[string]bool),
	}
}

const maxProblems = 10

func (r *recorder) problemLocked(format string, args ...any) {
	if len(r.problems) < maxProblems {
		r.problems = append(r.problems, fmt.Sprintf(format, args...))
	}
}

func (r *recorder) HandleDelivery(d scaler.Delivery) {
	r.mu.Lock()
	switch {
	case d.Pub == nil:
		r.problemLocked("HandleDelivery with a nil Pub (stream %q)", d.Stream)
	case r.closed.Load():
		r.problemLocked("HandleDelivery(%q <- %q) called after Close returned", d.Stream, d.Pub.Channel)
	case r.stopped[d.Stream]:
		r.problemLocked("HandleDelivery(%q <- %q) called after Unsubscribe(%q) returned", d.Stream, d.Pub.Channel, d.Stream)
	}
	if r.active[d.Stream] > 0 {
		r.problemLocked("HandleDelivery called concurrently for stream %q", d.Stream)
	}
	r.active[d.Stream]++
	r.deliveries = append(r.deliveries, d)
	closed, stopped := r.closed.Load(), r.stopped[d.Stream]
	r.mu.Unlock()
	// Yield so that an overlapping call for the same stream, or a Close or
	// Unsubscribe returning while this call runs, has a chance to be seen.
	runtime.Gosched()
	r.mu.Lock()
	r.active[d.Stream]--
	if !closed && r.closed.Load() {
		r.problemLocked("HandleDelivery(%q) still running when Close returned", d.Stream)
	}
	if !stopped && r.stopped[d.Stream] {
		r.problemLocked("HandleDelivery(%q) still running when Unsubscribe(%q) returned", d.Stream, d.Stream)
	}
	r.mu.Unlock()
	r.signal()
}

func (r *recorder) HandleMessage(from string, msg []byte) {
	r.mu.Lock()
	closed := r.closed.Load()
	if closed {
		r.problemLocked("HandleMessage from %q called after Close returned", from)
	}
	// Kept as is: the contract lets the receiver keep msg, so the backend
	// must not reuse the buffer. Tests compare it later.
	r.messages = append(r.messages, message{from, msg})
	r.mu.Unlock()
	runtime.Gosched()
	if !closed && r.closed.Load() {
		r.mu.Lock()
		r.problemLocked("HandleMessage from %q still running when Close returned", from)
		r.mu.Unlock()
	}
	r.signal()
}

// HandleMissed may come for a subscribed stream at any time (a backend
// whose link broke), never after Close or Unsubscribe returned.
func (r *recorder) HandleMissed(stream string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed.Load() {
		r.problemLocked("HandleMissed(%q) called after Close returned", stream)
	}
	if r.stopped[stream] {
		r.problemLocked("HandleMissed(%q) called after Unsubscribe(%q) returned", stream, stream)
	}
	r.missed = append(r.missed, stream)
	r.signal()
}

func (r *recorder) signal() {
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *recorder) setStopped(stream string, stopped bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if stopped {
		r.stopped[stream] = true
	} else {
		delete(r.stopped, stream)
	}
}

func (r *recorder) problemList() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.problems)
}

// all returns a copy of the deliveries recorded so far.
func (r *recorder) all() []scaler.Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.deliveries)
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.deliveries)
}

// onStream returns the publications delivered through stream, in order.
func (r *recorder) onStream(stream string) []*scaler.Publication {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*scaler.Publication
	for _, d := range r.deliveries {
		if d.Stream == stream {
			out = append(out, d.Pub)
		}
	}
	return out
}

func (r *recorder) msgs() []message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.messages)
}

// waitUntil polls cond until it holds, failing the test after waitTimeout.
func (r *recorder) waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-r.notify:
		case <-tick.C:
		case <-deadline.C:
			if cond() {
				return
			}
			t.Fatalf("%s: no %s within %v", r.id, what, waitTimeout)
		}
	}
}

// waitStream waits until at least n publications arrived through stream.
func (r *recorder) waitStream(t *testing.T, stream string, n int) {
	t.Helper()
	r.waitUntil(t, fmt.Sprintf("%d deliveries on stream %q (have %d)", n, stream, len(r.onStream(stream))),
		func() bool { return len(r.onStream(stream)) >= n })
}

// waitMsgs waits until at least n messages arrived.
func (r *recorder) waitMsgs(t *testing.T, n int) {
	t.Helper()
	r.waitUntil(t, fmt.Sprintf("%d messages", n), func() bool { return len(r.msgs()) >= n })
}

// settle waits for the quiet window, after which the suite checks that
// nothing unexpected arrived.
func settle() { time.Sleep(quiet) }

// summary renders deliveries as sorted "stream<-channel" lines, so sets of
// deliveries can be compared regardless of cross-stream interleaving.
func summary(ds []scaler.Delivery) []string {
	out := make([]string, 0, len(ds))
	for _, d := range ds {
		ch := "<nil>"
		if d.Pub != nil {
			ch = d.Pub.Channel
		}
		out = append(out, d.Stream+"<-"+ch)
	}
	slices.Sort(out)
	return out
}

func expectDeliveries(t *testing.T, m *member, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := summary(m.rec.all()); !slices.Equal(got, want) {
		t.Errorf("%s received (stream<-channel):\n  %s\nwant:\n  %s", m.id, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func via(stream, channel string) string { return stream + "<-" + channel }

func samePub(a, b *scaler.Publication) bool {
	return a.Transient == b.Transient && a.Time == b.Time && a.Except == b.Except && a.Channel == b.Channel && a.Event == b.Event &&
		bytes.Equal(a.Data, b.Data) && a.Sender == b.Sender
}

func fmtPub(p *scaler.Publication) string {
	if p == nil {
		return "<nil>"
	}
	return fmt.Sprintf("{Channel:%q Event:%q Data:%q Sender:%+v Time:%d Except:%q Transient:%v}", p.Channel, p.Event, p.Data, p.Sender, p.Time, p.Except, p.Transient)
}
