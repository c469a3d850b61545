// Package memory is an in-process scaler. Several sss.Servers in one process
// that share one memory.Scaler behave exactly like a cluster: this is how
// tests and examples run many instances without a backend. Its nodes
// implement every part of the scaler contract: Broker, History (unless
// WithHistory(0, 0)), SessionStore, PositionUpdater and Presence; Cut,
// Heal and Crash break them as a network or a dying process would, for
// tests.
package memory

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/superscaled/sss/scaler"
)

// Option configures a Scaler. Invalid values make New fail.
type Option func(*config) error

type config struct {
	sessionTTL time.Duration
	maxSubs    int
	histSize   int
	histAge    time.Duration
	streamTTL  time.Duration
	// presenceTTL: how long a crashed node's presence entries remain.
	presenceTTL time.Duration
}

// Defaults.
const (
	DefaultSessionTTL       = 24 * time.Hour
	DefaultMaxSubscriptions = 1024
	DefaultHistorySize      = 1000
	DefaultHistoryAge       = 5 * time.Minute
	DefaultStreamTTL        = 24 * time.Hour
)

// WithSessionTTL sets how long a session's stored subscriptions survive
// without a TouchSession or AddSubscription (default 24h). Zero keeps them
// for as long as the Scaler lives.
func WithSessionTTL(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("memory: WithSessionTTL(%v): must not be negative", d)
		}
		c.sessionTTL = d
		return nil
	}
}

// WithHistory bounds each stream's history by count (default 1000) and age
// (default 5 minutes; 0: no age bound). A size of 0 disables history:
// deliveries carry no offsets and the node does not implement
// scaler.History.
func WithHistory(size int, age time.Duration) Option {
	return func(c *config) error {
		if size < 0 || age < 0 {
			return fmt.Errorf("memory: WithHistory(%d, %v): must not be negative", size, age)
		}
		c.histSize, c.histAge = size, age
		return nil
	}
}

// WithStreamTTL sets how long a stream's epoch and last offset are kept
// after its last use when no node subscribes to it and its history is
// empty (default 24h). Past that it is forgotten, and a later publication
// starts a new epoch. This bounds the memory held for channels no longer
// used.
func WithStreamTTL(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("memory: WithStreamTTL(%v): must be positive", d)
		}
		c.streamTTL = d
		return nil
	}
}

// WithMaxSessionSubscriptions bounds the subscriptions stored per session
// (default 1024); AddSubscription beyond it fails.
func WithMaxSessionSubscriptions(n int) Option {
	return func(c *config) error {
		if n <= 0 {
			return fmt.Errorf("memory: WithMaxSessionSubscriptions(%d): must be positive", n)
		}
		c.maxSubs = n
		return nil
	}
}

// Scaler is an in-memory scaler.Scaler. The zero value is not usable: call New.
type Scaler struct {
	config
	now func() time.Time

	mu        sync.RWMutex
	closed    bool
	nodes     map[string]*node
	streams   map[string]*stream
	sessions  map[string]*session
	lastSweep time.Time
	// streamSweep is when streams were last checked for retention.
	streamSweep time.Time

	presence presence // presence.go
}

type stream struct {
	// mu serialises deliveries so every node sees one order per stream, and
	// guards the history below.
	mu    sync.Mutex
	nodes []*node // copy-on-write under Scaler.mu and stream.mu

	epoch  string  // set when the stream is created with history on
	offset uint64  // of the last publication
	hist   []entry // retained publications, in offset order
	used   time.Time
}

type entry struct {
	offset uint64
	pub    *scaler.Publication
	at     time.Time
}

type session struct {
	subs     map[string]scaler.StoredSubscription
	lastSeen time.Time
}

// New returns an empty in-memory scaler.
func New(opts ...Option) (*Scaler, error) {
	cfg := config{
		sessionTTL: DefaultSessionTTL,
		maxSubs:    DefaultMaxSubscriptions,
		histSize:   DefaultHistorySize,
		histAge:    DefaultHistoryAge,
		streamTTL:  DefaultStreamTTL,

		presenceTTL: DefaultPresenceTTL,
	}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	s := &Scaler{
		config:   cfg,
		now:      time.Now,
		nodes:    make(map[string]*node),
		streams:  make(map[string]*stream),
		sessions: make(map[string]*session),
	}
	s.presence.init()
	return s, nil
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
	s.presence.mu.Lock()
	for n, t := range s.presence.reapers {
		t.Stop()
		delete(s.presence.reapers, n)
	}
	s.presence.mu.Unlock()
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
	if s.histSize > 0 {
		return historyNode{n}, nil
	}
	return n, nil
}

// historyNode is a node whose scaler keeps history; only it implements
// scaler.History, so the server can tell whether catch-up is possible.
type historyNode struct{ *node }

// Since implements scaler.History.
func (n historyNode) Since(ctx context.Context, name string, pos scaler.Position, limit int) ([]scaler.Entry, scaler.Position, error) {
	if err := ctx.Err(); err != nil {
		return nil, scaler.Position{}, err
	}
	if n.isClosed() {
		return nil, scaler.Position{}, scaler.ErrClosed
	}
	if err := n.down(); err != nil {
		return nil, scaler.Position{}, err
	}
	st := n.s.stream(name, true)
	now := n.s.now()
	st.mu.Lock()
	defer st.mu.Unlock()
	st.used = now
	n.s.trim(st, now)
	top := scaler.Position{Offset: st.offset, Epoch: st.epoch}
	first := st.offset + 1 // offset of the oldest retained entry
	if len(st.hist) > 0 {
		first = st.hist[0].offset
	}
	from := first
	if pos.Epoch != "" {
		switch {
		case pos.Epoch != st.epoch:
			return nil, top, fmt.Errorf("memory: stream %q: epoch %q is not the current one: %w", name, pos.Epoch, scaler.ErrPositionLost)
		case pos.Offset > st.offset:
			return nil, top, fmt.Errorf("memory: stream %q: offset %d is beyond the last (%d): %w", name, pos.Offset, st.offset, scaler.ErrPositionLost)
		case pos.Offset+1 < first:
			return nil, top, fmt.Errorf("memory: stream %q: publications after offset %d were trimmed: %w", name, pos.Offset, scaler.ErrPositionLost)
		}
		from = pos.Offset + 1
	}
	if limit <= 0 || from > st.offset {
		return nil, top, nil
	}
	rest := st.hist[from-first:]
	out := make([]scaler.Entry, min(limit, len(rest)))
	for i := range out {
		out[i] = scaler.Entry{Offset: rest[i].offset, Pub: rest[i].pub}
	}
	return out, top, nil
}

// stream returns the named stream, creating it (with a new epoch) if
// create is set.
func (s *Scaler) stream(name string, create bool) *stream {
	s.mu.RLock()
	st := s.streams[name]
	s.mu.RUnlock()
	if st != nil || !create {
		return st
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if st = s.streams[name]; st == nil {
		st = &stream{epoch: newEpoch(), used: s.now()}
		s.streams[name] = st
	}
	return st
}

var epochSeq atomic.Uint64

// newEpoch is unique in the process and across restarts.
func newEpoch() string {
	return strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + strconv.FormatUint(epochSeq.Add(1), 36)
}

// trim drops entries past the count or age bound. Callers hold st.mu.
func (s *Scaler) trim(st *stream, now time.Time) {
	drop := max(0, len(st.hist)-s.histSize)
	if s.histAge > 0 {
		for drop < len(st.hist) && now.Sub(st.hist[drop].at) > s.histAge {
			drop++
		}
	}
	if drop == 0 {
		return
	}
	clear(st.hist[:drop])
	st.hist = st.hist[drop:]
	if cap(st.hist) > 2*s.histSize+16 {
		st.hist = slices.Clone(st.hist) // release the dropped prefix's array
	}
}

// sweepStreams forgets streams without subscribers whose history is empty
// and which saw no use for the retention period. Callers hold s.mu.
func (s *Scaler) sweepStreamsLocked(now time.Time) {
	if now.Sub(s.streamSweep) < s.streamTTL/4 {
		return
	}
	s.streamSweep = now
	for name, st := range s.streams {
		st.mu.Lock()
		s.trim(st, now)
		idle := len(st.nodes) == 0 && len(st.hist) == 0 && now.Sub(st.used) > s.streamTTL
		st.mu.Unlock()
		if idle {
			delete(s.streams, name)
		}
	}
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

	cut     atomic.Bool // Cut: the node's link to the backend is broken
	crashed atomic.Bool // Crash: cut for good (presence.go)
}

// Cut breaks a node's link to the scaler, as a network failure would, for
// tests: until Heal, deliveries to the node are lost, and its calls fail
// with scaler.ErrUnavailable (Subscribe and Unsubscribe still record the
// interest, as the contract asks). It reports whether the node exists.
func (s *Scaler) Cut(nodeID string) bool {
	s.mu.RLock()
	n := s.nodes[nodeID]
	s.mu.RUnlock()
	if n == nil {
		return false
	}
	n.cut.Store(true)
	return true
}

// Heal restores a node's link after Cut, and tells the node, for each
// stream it subscribes, that deliveries may have been missed
// (scaler.Handler.HandleMissed). It reports whether the node was cut.
func (s *Scaler) Heal(nodeID string) bool {
	s.mu.RLock()
	n := s.nodes[nodeID]
	s.mu.RUnlock()
	if n == nil || n.crashed.Load() || !n.cut.Swap(false) {
		return false
	}
	n.smu.Lock()
	streams := make([]string, 0, len(n.subs))
	for name := range n.subs {
		streams = append(streams, name)
	}
	n.smu.Unlock()
	for _, name := range streams {
		st := s.stream(name, false)
		if st == nil {
			continue
		}
		st.mu.Lock() // serialised with the stream's deliveries
		if n.enter() {
			n.h.HandleMissed(name)
			n.leave()
		}
		st.mu.Unlock()
	}
	return true
}

// down reports scaler.ErrUnavailable for a cut node.
func (n *node) down() error {
	if n.cut.Load() {
		return fmt.Errorf("memory: node %q is cut: %w", n.id, scaler.ErrUnavailable)
	}
	return nil
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
	if err := n.down(); err != nil {
		return err
	}
	s := n.s
	keep := s.histSize > 0 && !pub.Transient
	now := s.now()
	if keep {
		// streamSweep is guarded by s.mu: read it under the read lock, so
		// the write lock is only taken when a sweep is due.
		s.mu.RLock()
		due := now.Sub(s.streamSweep) > s.streamTTL/4
		s.mu.RUnlock()
		if due {
			s.mu.Lock()
			s.sweepStreamsLocked(now)
			s.mu.Unlock()
		}
	}
	for _, name := range scaler.Streams(pub.Channel) {
		st := s.stream(name, keep)
		if st == nil {
			continue
		}
		st.mu.Lock()
		d := scaler.Delivery{Stream: name, Pub: pub}
		if keep {
			st.offset++
			st.used = now
			st.hist = append(st.hist, entry{offset: st.offset, pub: pub, at: now})
			s.trim(st, now)
			d.Offset, d.Epoch = st.offset, st.epoch
		}
		for _, dst := range st.nodes {
			if !dst.cut.Load() && dst.enter() {
				dst.h.HandleDelivery(d)
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
		st = &stream{used: n.s.now()}
		if n.s.histSize > 0 {
			st.epoch = newEpoch()
		}
		n.s.streams[name] = st
	}
	st.mu.Lock()
	st.nodes = append(slices.Clip(st.nodes), n)
	st.mu.Unlock()
	n.s.mu.Unlock()
	return n.down() // the interest is recorded even so
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
	if len(st.nodes) == 0 && st.epoch == "" {
		delete(s.streams, name) // no history to keep
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
	if err := n.down(); err != nil {
		return err
	}
	n.s.mu.RLock()
	dst := n.s.nodes[nodeID]
	n.s.mu.RUnlock()
	if dst != nil && dst.cut.Load() {
		return nil // lost on the way, as over a broken link
	}
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
	if !n.crashed.Load() {
		// The server left its channels: no report. A crashed node's
		// entries stay until its reaper reports them gone, as a dead
		// process's would, however soon after the crash Close comes.
		n.s.presence.dropNode(n)
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
		sub.Query = slices.Clone(sub.Query)
		ss.subs[sub.Channel] = sub
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
		for _, sub := range ss.subs {
			sub.Query = slices.Clone(sub.Query)
			out = append(out, sub)
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

// Ping implements scaler.Pinger: a cut or crashed node cannot reach the
// scaler.
func (n *node) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if n.isClosed() {
		return scaler.ErrClosed
	}
	return n.down()
}

// UpdatePosition implements scaler.PositionUpdater.
func (n *node) UpdatePosition(ctx context.Context, id, channel string, pos scaler.Position) error {
	return n.withSession(ctx, id, false, func(ss *session) error {
		if sub, ok := ss.subs[channel]; ok {
			sub.Position = pos
			ss.subs[channel] = sub
		}
		return nil
	})
}

func (n *node) TouchSession(ctx context.Context, id string) error {
	return n.withSession(ctx, id, false, func(*session) error { return nil })
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
	if err := n.down(); err != nil {
		return err
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
		ss = &session{subs: make(map[string]scaler.StoredSubscription)}
		s.sessions[id] = ss
	}
	ss.lastSeen = now
	return f(ss)
}

// sweepLocked deletes expired sessions. It runs on store calls rather than on
// a timer, so the scaler owns no goroutine; the cost is amortised by only
// scanning once per TTL/4.
func (s *Scaler) sweepLocked(now time.Time) {
	if s.sessionTTL <= 0 || now.Sub(s.lastSweep) < s.sessionTTL/4 {
		return
	}
	s.lastSweep = now
	for id, ss := range s.sessions {
		if now.Sub(ss.lastSeen) > s.sessionTTL {
			delete(s.sessions, id)
		}
	}
}

var (
	_ scaler.History         = historyNode{}
	_ scaler.Scaler          = (*Scaler)(nil)
	_ scaler.Node            = (*node)(nil)
	_ scaler.SessionStore    = (*node)(nil)
	_ scaler.PositionUpdater = (*node)(nil)
	_ scaler.Pinger          = (*node)(nil)
)
