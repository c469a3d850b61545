// Package memory is an in-process scaler. Several sss.Servers in one process
// that share one memory.Scaler behave exactly like a cluster: this is how
// tests and examples run many instances without a backend.
package memory

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/superscaled/sss/scaler"
)

// Option configures a Scaler.
type Option func(*Scaler)

// WithSessionTTL sets how long a session's stored subscriptions survive
// without a TouchSession or AddSubscription (default 24h). Zero keeps them
// until ExpireSession.
func WithSessionTTL(d time.Duration) Option { return func(s *Scaler) { s.ttl = d } }

// WithMaxSessionSubscriptions bounds the subscriptions stored per session
// (default 1024); AddSubscription beyond it fails.
func WithMaxSessionSubscriptions(n int) Option { return func(s *Scaler) { s.maxSubs = n } }

// Scaler is an in-memory scaler.Scaler. The zero value is not usable: call New.
type Scaler struct {
	ttl     time.Duration
	maxSubs int
	now     func() time.Time

	mu        sync.RWMutex
	closed    bool
	nodes     map[string]*node
	streams   map[string]*stream
	sessions  map[string]*session
	lastSweep time.Time
}

type stream struct {
	// mu serialises deliveries so every node sees one order per stream.
	mu    sync.Mutex
	nodes []*node // copy-on-write under Scaler.mu and stream.mu
}

type session struct {
	subs     map[string][]byte
	lastSeen time.Time
}

// New returns an empty in-memory scaler.
func New(opts ...Option) *Scaler {
	s := &Scaler{
		ttl:      24 * time.Hour,
		maxSubs:  1024,
		now:      time.Now,
		nodes:    make(map[string]*node),
		streams:  make(map[string]*stream),
		sessions: make(map[string]*session),
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Close detaches every node. Later calls on the scaler or its nodes return
// scaler.ErrClosed.
func (s *Scaler) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	nodes := make([]*node, 0, len(s.nodes))
	for _, n := range s.nodes {
		nodes = append(nodes, n)
	}
	s.mu.Unlock()
	for _, n := range nodes {
		n.Close()
	}
	return nil
}

// Join implements scaler.Scaler.
func (s *Scaler) Join(ctx context.Context, nodeID string, h scaler.Handler) (scaler.Node, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, scaler.ErrClosed
	}
	if _, dup := s.nodes[nodeID]; dup {
		return nil, fmt.Errorf("memory: node %q already joined", nodeID)
	}
	n := &node{s: s, id: nodeID, h: h, subs: make(map[string]bool)}
	n.cond = sync.NewCond(&n.mu)
	s.nodes[nodeID] = n
	return n, nil
}

type node struct {
	s  *Scaler
	id string
	h  scaler.Handler

	// Lock order: smu, then Scaler.mu, then stream.mu, then mu. Publish
	// holds a stream lock while it calls enter, so mu is never held while
	// taking a stream lock.
	smu  sync.Mutex
	subs map[string]bool // streams this node subscribed; guarded by smu

	mu       sync.Mutex
	cond     *sync.Cond
	closed   bool
	inflight int // handler calls running; Close waits for zero
}

// enter admits a handler call unless the node is closed.
func (n *node) enter() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return false
	}
	n.inflight++
	return true
}

func (n *node) leave() {
	n.mu.Lock()
	n.inflight--
	if n.inflight == 0 {
		n.cond.Broadcast()
	}
	n.mu.Unlock()
}

func (n *node) isClosed() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.closed
}

func (n *node) Publish(ctx context.Context, pub *scaler.Publication) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if n.isClosed() {
		return scaler.ErrClosed
	}
	for _, name := range scaler.Streams(pub.Channel) {
		n.s.mu.RLock()
		st := n.s.streams[name]
		n.s.mu.RUnlock()
		if st == nil {
			continue
		}
		st.mu.Lock()
		for _, dst := range st.nodes {
			if dst.enter() {
				dst.h.HandleDelivery(scaler.Delivery{Stream: name, Pub: pub})
				dst.leave()
			}
		}
		st.mu.Unlock()
	}
	return nil
}

func (n *node) Subscribe(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	n.smu.Lock()
	defer n.smu.Unlock()
	if n.subs == nil { // closed
		return scaler.ErrClosed
	}
	if n.subs[name] {
		return nil
	}
	n.subs[name] = true
	n.s.mu.Lock()
	st := n.s.streams[name]
	if st == nil {
		st = &stream{}
		n.s.streams[name] = st
	}
	st.mu.Lock()
	st.nodes = append(slices.Clip(st.nodes), n)
	st.mu.Unlock()
	n.s.mu.Unlock()
	return nil
}

func (n *node) Unsubscribe(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	n.smu.Lock()
	defer n.smu.Unlock()
	if n.subs == nil { // closed
		return scaler.ErrClosed
	}
	if !n.subs[name] {
		return nil
	}
	delete(n.subs, name)
	n.s.removeFromStream(name, n)
	return nil
}

// removeFromStream drops n from a stream; an empty stream is forgotten so the
// map does not grow with every channel ever used.
func (s *Scaler) removeFromStream(name string, n *node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[name]
	if st == nil {
		return
	}
	st.mu.Lock()
	st.nodes = slices.DeleteFunc(slices.Clone(st.nodes), func(x *node) bool { return x == n })
	if len(st.nodes) == 0 {
		delete(s.streams, name)
	}
	st.mu.Unlock()
}

func (n *node) Send(ctx context.Context, nodeID string, msg []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if n.isClosed() {
		return scaler.ErrClosed
	}
	n.s.mu.RLock()
	dst := n.s.nodes[nodeID]
	n.s.mu.RUnlock()
	if dst == nil || !dst.enter() {
		return fmt.Errorf("memory: send to %q: %w", nodeID, scaler.ErrUnknownNode)
	}
	defer dst.leave()
	// The receiver may keep msg; give it its own copy.
	dst.h.HandleMessage(n.id, slices.Clone(msg))
	return nil
}

// Close implements scaler.Node. It waits for handler calls in progress, so it
// must not be called from inside the node's own handler.
func (n *node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	for n.inflight > 0 {
		n.cond.Wait()
	}
	n.mu.Unlock()
	n.smu.Lock()
	subs := n.subs
	n.subs = nil
	n.smu.Unlock()
	for name := range subs {
		n.s.removeFromStream(name, n)
	}
	n.s.mu.Lock()
	if n.s.nodes[n.id] == n {
		delete(n.s.nodes, n.id)
	}
	n.s.mu.Unlock()
	return nil
}

// Session store. Sessions live in the Scaler, shared by all its nodes.

func (n *node) AddSubscription(ctx context.Context, id string, sub scaler.StoredSubscription) error {
	return n.withSession(ctx, id, true, func(ss *session) error {
		if _, ok := ss.subs[sub.Channel]; !ok && len(ss.subs) >= n.s.maxSubs {
			return fmt.Errorf("memory: session %q has %d subscriptions, the maximum", id, n.s.maxSubs)
		}
		ss.subs[sub.Channel] = slices.Clone(sub.Query)
		return nil
	})
}

func (n *node) RemoveSubscription(ctx context.Context, id, channel string) error {
	return n.withSession(ctx, id, false, func(ss *session) error {
		delete(ss.subs, channel)
		return nil
	})
}

func (n *node) Subscriptions(ctx context.Context, id string) ([]scaler.StoredSubscription, error) {
	var out []scaler.StoredSubscription
	err := n.withSession(ctx, id, false, func(ss *session) error {
		for ch, q := range ss.subs {
			out = append(out, scaler.StoredSubscription{Channel: ch, Query: slices.Clone(q)})
		}
		return nil
	})
	slices.SortFunc(out, func(a, b scaler.StoredSubscription) int {
		if a.Channel < b.Channel {
			return -1
		}
		if a.Channel > b.Channel {
			return 1
		}
		return 0
	})
	return out, err
}

func (n *node) TouchSession(ctx context.Context, id string) error {
	return n.withSession(ctx, id, false, func(*session) error { return nil })
}

func (n *node) ExpireSession(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if n.isClosed() {
		return scaler.ErrClosed
	}
	n.s.mu.Lock()
	delete(n.s.sessions, id)
	n.s.mu.Unlock()
	return nil
}

// withSession runs f on the session under the scaler lock, creating it when
// create is set, refreshing its expiry, and sweeping expired sessions.
func (n *node) withSession(ctx context.Context, id string, create bool, f func(*session) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if n.isClosed() {
		return scaler.ErrClosed
	}
	s := n.s
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweepLocked(now)
	ss := s.sessions[id]
	if ss == nil {
		if !create {
			return nil
		}
		ss = &session{subs: make(map[string][]byte)}
		s.sessions[id] = ss
	}
	ss.lastSeen = now
	return f(ss)
}

// sweepLocked deletes expired sessions. It runs on store calls rather than on
// a timer, so the scaler owns no goroutine; the cost is amortised by only
// scanning once per TTL/4.
func (s *Scaler) sweepLocked(now time.Time) {
	if s.ttl <= 0 || now.Sub(s.lastSweep) < s.ttl/4 {
		return
	}
	s.lastSweep = now
	for id, ss := range s.sessions {
		if now.Sub(ss.lastSeen) > s.ttl {
			delete(s.sessions, id)
		}
	}
}

var (
	_ scaler.Scaler       = (*Scaler)(nil)
	_ scaler.Node         = (*node)(nil)
	_ scaler.SessionStore = (*node)(nil)
)
