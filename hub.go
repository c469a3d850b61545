package sss

import (
	"context"
	"encoding/json"
	"errors"
	"hash/maphash"
	"iter"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/superscaled/sss/scaler"
)

// hub owns this instance's local state: its connections by id, and for each
// stream the local subscribers (the registry), whose fan-out it does. It
// also keeps the instance's interest in streams at the scaler in step with
// whether any local connection subscribes, and carries out disconnect
// orders. Every other file reaches local connections and subscribers
// through it.
//
// Lock order (a goroutine holding one may take those below it, never
// those above):
//
//	hub.mu           connections by id; nothing is taken under it
//	interest stripe  held across the scaler's Subscribe/Unsubscribe of a stream
//	shard.mu         the registry's map of streams
//	channel.mu       a stream's local subscribers
//	channel.pmu      a stream's last delivered position
//	sub.mu           a subscription's hold buffer (catchup.go)
//	Conn.smu         a connection's subscriptions
//	Conn.qmu         a connection's send queue
//	Conn.xmu         a connection's asks in flight (asktell.go)
//	askCtx.mu        one ask's context and reply
//
// Nothing blocks under these locks: sending only queues (Conn.send), and
// scaler calls are made under an interest stripe only, never under a
// channel's lock.
type hub struct {
	mu     sync.RWMutex
	conns  map[string]*Conn
	closed bool // no connection is added any more (shutdown)

	seed   maphash.Seed
	shards [64]shard
	// interest serialises the scaler calls per stream (striped), so that a
	// subscribe and an unsubscribe racing on one stream converge.
	interest [64]struct {
		sync.Mutex
		on map[string]bool
	}

	// Streams the backend said may have missed deliveries, for checkMissed.
	mmu       sync.Mutex
	unchecked map[string]bool
	checkWake chan struct{}
}

// shard is one part of the registry, so that deliveries on different
// streams never contend on one lock.
type shard struct {
	mu sync.RWMutex
	m  map[string]*channel
}

// channel is one stream's local subscribers.
type channel struct {
	name string
	refs int // connections subscribed or subscribing; guarded by shard.mu

	// The subscribers: one inline (a user's or a session's stream, and
	// most of any instance's streams, have one local subscriber), a map
	// from the second on.
	mu   sync.RWMutex
	one  *sub
	subs map[*Conn]*sub

	// last is the position of the last delivery, to notice deliveries the
	// scaler lost (a jump in offsets) or an epoch change.
	pmu  sync.Mutex
	last scaler.Position
}

func (h *hub) init() {
	h.conns = make(map[string]*Conn)
	h.unchecked = make(map[string]bool)
	h.checkWake = make(chan struct{}, 1)
	h.seed = maphash.MakeSeed()
	for i := range h.shards {
		h.shards[i].m = make(map[string]*channel)
		h.interest[i].on = make(map[string]bool)
	}
}

// Connections.

// add registers c; false once the hub is closed.
func (h *hub) add(c *Conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.conns[c.id] = c
	return true
}

func (h *hub) remove(c *Conn) {
	h.mu.Lock()
	delete(h.conns, c.id)
	h.mu.Unlock()
}

// conn returns the local connection with that id, or nil.
func (h *hub) conn(id string) *Conn {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.conns[id]
}

// all returns the current connections.
func (h *hub) all() []*Conn {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]*Conn, 0, len(h.conns))
	for _, c := range h.conns {
		out = append(out, c)
	}
	return out
}

// close refuses new connections and returns the current ones.
func (h *hub) close() []*Conn {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	out := make([]*Conn, 0, len(h.conns))
	for _, c := range h.conns {
		out = append(out, c)
	}
	return out
}

// The registry.

func (h *hub) index(name string) int {
	return int(maphash.String(h.seed, name) % uint64(len(h.shards)))
}

func (h *hub) get(name string) *channel {
	sh := &h.shards[h.index(name)]
	sh.mu.RLock()
	ch := sh.m[name]
	sh.mu.RUnlock()
	return ch
}

// acquire reserves a place on the stream and returns its channel.
func (h *hub) acquire(name string) *channel {
	sh := &h.shards[h.index(name)]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	ch := sh.m[name]
	if ch == nil {
		ch = &channel{name: name}
		sh.m[name] = ch
	}
	ch.refs++
	return ch
}

// release gives back a reservation; the last one forgets the stream.
func (h *hub) release(ch *channel) {
	sh := &h.shards[h.index(ch.name)]
	sh.mu.Lock()
	ch.refs--
	if ch.refs == 0 && sh.m[ch.name] == ch {
		delete(sh.m, ch.name)
	}
	sh.mu.Unlock()
}

// streams counts the streams with local subscribers.
func (h *hub) streams() (n int) {
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.RLock()
		n += len(sh.m)
		sh.mu.RUnlock()
	}
	return n
}

// Subscribers and the scaler's interest.

// attach subscribes sb's connection to its stream locally and in the
// scaler. sb should be held: deliveries are buffered until it goes live.
func (s *Server) attach(ctx context.Context, sb *sub) error {
	node, err := s.join(ctx)
	if err != nil {
		return err
	}
	ch := s.hub.acquire(sb.channel)
	if err := s.syncInterest(ctx, node, sb.channel); err != nil {
		s.hub.release(ch)
		s.stats.scalerErrors.Add(1)
		s.log.Warn("sss: cannot subscribe at the scaler", "channel", sb.channel, "err", err)
		return Errorf(CodeUnavailable, "the cluster is unavailable")
	}
	ch.mu.Lock()
	ch.put(sb)
	ch.mu.Unlock()
	return nil
}

// detach removes c from a stream; the last local subscriber withdraws the
// instance's interest.
func (s *Server) detach(ctx context.Context, c *Conn, name string) {
	ch := s.hub.get(name)
	if ch == nil {
		return
	}
	ch.mu.Lock()
	ok := ch.take(c)
	ch.mu.Unlock()
	if !ok {
		return
	}
	s.hub.release(ch)
	if node := s.joined(); node != nil {
		s.syncInterest(ctx, node, name)
	}
}

// syncInterest makes the scaler's interest in a stream match whether this
// instance has local subscribers, firing the open/close hooks on change.
// Because it reads the wanted state under the stripe lock, concurrent calls
// converge on the latest state.
func (s *Server) syncInterest(ctx context.Context, node scaler.Node, name string) error {
	st := &s.hub.interest[s.hub.index(name)]
	st.Lock()
	defer st.Unlock()
	want := s.hub.get(name) != nil
	if st.on[name] == want {
		return nil
	}
	var err error
	if want {
		err = node.Subscribe(ctx, name)
		// A backend that is down still records the interest (the contract);
		// anything else means we are not subscribed.
		if err != nil && !errors.Is(err, scaler.ErrUnavailable) {
			return err
		}
		st.on[name] = true
		if h := s.cfg.hooks.OnChannelOpen; h != nil && !reserved(name) {
			s.hook("OnChannelOpen", func() { h(name) })
		}
	} else {
		err = node.Unsubscribe(ctx, name)
		delete(st.on, name)
		if h := s.cfg.hooks.OnChannelClose; h != nil && !reserved(name) {
			s.hook("OnChannelClose", func() { h(name) })
		}
	}
	if err != nil {
		s.stats.scalerErrors.Add(1)
		s.log.Warn("sss: scaler interest", "channel", name, "subscribe", want, "err", err)
	}
	return nil
}

// Fan-out.

// deliver fans a publication out to the local subscribers of one stream,
// encoding it once. The scaler calls it (through nodeHandler) for one
// stream at a time, in the stream's order.
func (s *Server) deliver(d scaler.Delivery) {
	if d.Stream == broadcastChannel && d.Pub != nil {
		s.stats.delivered.Add(1)
		frame := encodeDelivery(d)
		for _, c := range s.hub.all() {
			if c.id != d.Pub.Except {
				c.send(frame, false)
			}
		}
		return
	}
	ch := s.hub.get(d.Stream)
	if ch == nil || d.Pub == nil {
		return
	}
	s.stats.delivered.Add(1)
	if d.Offset > 0 {
		dup, gap, from := ch.track(d)
		if dup {
			return
		}
		if gap {
			s.repair(ch, from, d.Epoch, d.Offset)
		}
	}
	pub := d.Pub
	if pub.Transient && reserved(pub.Event) {
		switch {
		case pub.Event == joinEvent || pub.Event == leaveEvent:
			// Presence is per exact channel: not for its ancestors.
			if pub.Channel != d.Stream {
				return
			}
		case !strings.HasPrefix(pub.Event, tellPrefix):
			s.controlOrder(ch, pub)
			return
		}
	}
	frame := encodeDelivery(d)
	lossy := !pub.Transient && s.cfg.lossy != nil && s.cfg.lossy(pub.Channel)
	nested := pub.Channel != d.Stream
	ch.mu.RLock()
	defer ch.mu.RUnlock()
	for sb := range ch.all() {
		c := sb.c
		// A held subscription buffers everything, to see its offsets
		// without holes; the filter below applies when it is released.
		if sb.held.Load() && sb.hold(d) {
			continue
		}
		if c.id == pub.Except {
			continue
		}
		// Already sent from history when it went live: the live feed lags.
		// (An epoch change never gets here: track repairs it first.)
		if d.Offset != 0 && d.Offset <= sb.upTo.Load() {
			continue
		}
		// A connection subscribed at several levels gets one copy, through
		// its most specific subscription.
		if nested && c.holdsDeeper(d.Stream, pub.Channel) {
			continue
		}
		c.send(frame, lossy)
	}
}

// conns returns the stream's local subscribers now.
func (ch *channel) conns() []*Conn {
	ch.mu.RLock()
	defer ch.mu.RUnlock()
	var out []*Conn
	for sb := range ch.all() {
		out = append(out, sb.c)
	}
	return out
}

// put adds a subscriber, or replaces the connection's. Callers hold mu.
func (ch *channel) put(sb *sub) {
	switch {
	case ch.subs != nil:
		ch.subs[sb.c] = sb
	case ch.one == nil || ch.one.c == sb.c:
		ch.one = sb
	default:
		ch.subs = map[*Conn]*sub{ch.one.c: ch.one, sb.c: sb}
		ch.one = nil
	}
}

// take removes c's subscription, and reports whether it had one. Callers
// hold mu.
func (ch *channel) take(c *Conn) bool {
	if ch.subs == nil {
		if ch.one == nil || ch.one.c != c {
			return false
		}
		ch.one = nil
		return true
	}
	if _, ok := ch.subs[c]; !ok {
		return false
	}
	delete(ch.subs, c)
	if len(ch.subs) == 1 {
		for _, sb := range ch.subs {
			ch.one = sb
		}
		ch.subs = nil
	}
	return true
}

// all yields the subscribers. Callers hold mu.
func (ch *channel) all() iter.Seq[*sub] {
	return func(yield func(*sub) bool) {
		if ch.one != nil {
			yield(ch.one)
			return
		}
		for _, sb := range ch.subs {
			if !yield(sb) {
				return
			}
		}
	}
}

// noteStart records the position a client is given on a stream (its
// welcome or its subscription's start) as the stream's last position when
// this instance has seen no delivery on it yet: the first delivery is then
// checked against it, so that one missed before it is noticed.
func (h *hub) noteStart(stream string, pos scaler.Position) {
	ch := h.get(stream)
	if ch == nil || pos.Epoch == "" {
		return
	}
	ch.pmu.Lock()
	if ch.last.Epoch == "" {
		ch.last = pos
	}
	ch.pmu.Unlock()
}

// lastPosition returns the position of the last delivery this instance
// received on a stream (zero if none).
func (h *hub) lastPosition(stream string) scaler.Position {
	ch := h.get(stream)
	if ch == nil {
		return scaler.Position{}
	}
	ch.pmu.Lock()
	defer ch.pmu.Unlock()
	return ch.last
}

// track records a delivery's position. It reports a duplicate to drop, or a
// gap: deliveries after from that this node did not receive.
func (ch *channel) track(d scaler.Delivery) (dup, gap bool, from scaler.Position) {
	ch.pmu.Lock()
	defer ch.pmu.Unlock()
	last := ch.last
	switch {
	case last.Epoch == d.Epoch && d.Offset <= last.Offset:
		return true, false, last
	case last.Epoch == "", last.Epoch == d.Epoch && d.Offset == last.Offset+1:
	default:
		gap, from = true, last
	}
	ch.last = scaler.Position{Offset: d.Offset, Epoch: d.Epoch}
	return false, gap, from
}

// repair handles deliveries this node missed (its link to the backend
// broke) after from, up to a stream now at offset now in epoch: every live
// subscriber is held, so that it buffers what comes next, and caught up
// from history. After an epoch change nothing can be recovered, so
// subscribers are asked to reconnect, and their resume reports what was
// lost. It runs before the delivery that showed the gap is fanned out.
func (s *Server) repair(ch *channel, from scaler.Position, epoch string, now uint64) {
	s.stats.gaps.Add(1)
	reset := from.Epoch != epoch
	s.log.Warn("sss: missed deliveries", "channel", ch.name, "after", from.Offset, "now", now, "epoch_changed", reset)
	ch.mu.RLock()
	subs := slices.Collect(ch.all())
	ch.mu.RUnlock()
	for _, sb := range subs {
		if reset {
			sb.c.close(CloseResync, "channel history reset", ErrResync)
			continue
		}
		// A subscription held already catches up by itself.
		if !sb.held.Swap(true) {
			s.catchUpLater(sb, sb.repairFrom(from))
		}
	}
}

// Deliveries a backend says this node may have missed (HandleMissed).

// missed queues a check of a stream; it never blocks (the scaler calls it).
func (h *hub) missed(stream string) {
	h.mmu.Lock()
	if len(h.unchecked) < maxUnchecked {
		h.unchecked[stream] = true
	}
	h.mmu.Unlock()
	signal(h.checkWake)
}

// maxUnchecked bounds the streams waiting for a check; a stream beyond it
// is checked anyway by its next delivery.
const maxUnchecked = 1 << 16

// checkMissed runs while the server is joined: it checks the streams the
// backend said may have missed deliveries.
func (s *Server) checkMissed(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.hub.checkWake:
		}
		s.hub.mmu.Lock()
		streams := s.hub.unchecked
		s.hub.unchecked = make(map[string]bool)
		s.hub.mmu.Unlock()
		for stream := range streams {
			s.checkStream(ctx, stream)
		}
	}
}

// checkStream compares a stream's position in history with the last
// delivery this instance received, and repairs the difference.
func (s *Server) checkStream(ctx context.Context, stream string) {
	ch, hist := s.hub.get(stream), s.history()
	if ch == nil || hist == nil {
		return
	}
	var top scaler.Position
	err := retry(ctx, func(ctx context.Context) (err error) {
		_, top, err = hist.Since(ctx, stream, scaler.Position{}, 0)
		return err
	}, s.cfg.askTimeout)
	if err != nil {
		if ctx.Err() == nil {
			s.stats.scalerErrors.Add(1)
			s.log.Warn("sss: cannot check a stream for missed deliveries", "channel", stream, "err", err)
		}
		return
	}
	ch.pmu.Lock()
	last := ch.last
	missed := last.Epoch != "" && (last.Epoch != top.Epoch || top.Offset > last.Offset)
	if missed {
		ch.last = top
	}
	ch.pmu.Unlock()
	if missed {
		s.repair(ch, last, top.Epoch, top.Offset)
	}
}

// retry calls f until it succeeds, up to retryAttempts times with a growing
// pause, each call bounded by timeout: a backend that just came back may
// fail a moment longer.
func retry(ctx context.Context, f func(context.Context) error, timeout time.Duration) error {
	var err error
	pause := retryPause
	for i := range retryAttempts {
		if i > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(pause):
				pause *= 4
			}
		}
		cctx, cancel := context.WithTimeout(ctx, timeout)
		err = f(cctx)
		cancel()
		if err == nil || ctx.Err() != nil || errors.Is(err, scaler.ErrPositionLost) {
			return err
		}
	}
	return err
}

// Retries of history reads after the backend failed.
const (
	retryAttempts = 4
	retryPause    = 50 * time.Millisecond
)

// Disconnect orders.

// disconnectEvent is the event of the server's transient publication that
// closes the connections of a user or session; disconnect messages between
// nodes close one connection.
const disconnectEvent = scaler.ReservedPrefix + "disconnect"

type disconnectOrder struct {
	Reason string `json:"reason"`
	Final  bool   `json:"final"`
}

// Disconnect closes the target's connections wherever they are in the
// cluster (e.g. on logout, or when a user is banned), with close code 4005
// (the clients may reconnect) or, if final, 4501 (they must not). It
// returns once the scaler accepted the order; a target with no connection
// is not an error.
func (s *Server) Disconnect(ctx context.Context, t Target, reason string, final bool) error {
	if err := s.usable(); err != nil {
		return err
	}
	if err := t.valid(); err != nil {
		return err
	}
	raw, _ := json.Marshal(disconnectOrder{Reason: truncate(reason, maxCloseReason), Final: final})
	switch t.kind {
	case targetUser, targetSession:
		return s.publishRaw(ctx, &scaler.Publication{Channel: t.channel(), Event: disconnectEvent, Data: raw, Transient: true})
	case targetConn:
		return s.routeToConn(ctx, t.id, nodeMsg{K: msgDisconnect, Conn: t.id, Data: raw})
	}
	return nil
}

// controlOrder carries out a control publication on a user's or session's
// connections here: disconnect them, or subscribe or unsubscribe them.
func (s *Server) controlOrder(ch *channel, pub *scaler.Publication) {
	var channel string
	if pub.Event != disconnectEvent && json.Unmarshal(pub.Data, &channel) != nil {
		return
	}
	for _, c := range ch.conns() {
		switch pub.Event {
		case disconnectEvent:
			obey(c, pub.Data)
		case subscribeEvent, unsubscribeEvent:
			s.control(c, channel, pub.Event == subscribeEvent, false)
		}
	}
}

// obey carries out a disconnect order on one local connection.
func obey(c *Conn, data []byte) {
	var o disconnectOrder
	json.Unmarshal(data, &o)
	c.Close(o.Reason, o.Final)
}
