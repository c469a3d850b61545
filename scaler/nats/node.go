package nats

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/superscaled/sss/scaler"
)

// node is one server instance's handle. It shares the Scaler's connection
// and has its own subscriptions: one for its messages and one per stream
// it is interested in.
type node struct {
	s  *Scaler
	id string
	h  scaler.Handler

	// stop ends the heartbeat goroutine; wg waits for it.
	stop   context.CancelFunc
	stopCx context.Context
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	crashed bool
	streams map[string]*streamSub

	// msgMu guards msgLive and is held while HandleMessage runs, so no
	// call is in progress once Close returns.
	msgMu   sync.Mutex
	msgLive bool
	msgSub  *nats.Subscription

	pres presenceState
}

// streamSub is the node's subscription to one stream. mu is held while the
// handler runs, so that Unsubscribe and Close wait for a call in progress
// and the handler is never called twice at once for the stream.
type streamSub struct {
	stream string
	depth  int
	mu     sync.Mutex
	live   bool
	sub    *nats.Subscription
}

func newNode(s *Scaler, id string, h scaler.Handler) *node {
	ctx, cancel := context.WithCancel(context.Background())
	return &node{s: s, id: id, h: h, stop: cancel, stopCx: ctx, streams: make(map[string]*streamSub)}
}

func (n *node) start(ctx context.Context, subj string) error {
	n.msgMu.Lock()
	n.msgLive = true
	n.msgMu.Unlock()
	sub, err := n.s.nc.Subscribe(subj, n.onMessage)
	if err != nil {
		return n.s.failed(ctx, "join", err)
	}
	n.mu.Lock()
	n.msgSub = sub
	n.mu.Unlock()
	cctx, cancel := n.s.call(ctx)
	defer cancel()
	if err := n.s.nc.FlushWithContext(cctx); err != nil {
		return n.s.failed(ctx, "join", err)
	}
	if err := n.startPresence(cctx); err != nil {
		return n.s.failed(ctx, "join: presence", err)
	}
	n.wg.Add(1)
	go n.heartbeat()
	return nil
}

// check returns the error every method returns on a closed node or with a
// done context.
func (n *node) check(ctx context.Context) error {
	n.mu.Lock()
	closed := n.closed
	n.mu.Unlock()
	if closed {
		return scaler.ErrClosed
	}
	return ctx.Err()
}

func (n *node) onMessage(m *nats.Msg) {
	from := m.Header.Get(hdrFrom)
	data := append([]byte(nil), m.Data...)
	// The reply tells the sender a node is there; it goes before the
	// handler so a slow handler never times a sender out.
	_ = m.Respond(nil)
	n.msgMu.Lock()
	defer n.msgMu.Unlock()
	if n.msgLive {
		n.h.HandleMessage(from, data)
	}
}

// Send is a request to the node's subject: NATS answers "no responders"
// at once when no node has that id, and a node answers on receipt.
func (n *node) Send(ctx context.Context, nodeID string, msg []byte) error {
	if err := n.check(ctx); err != nil {
		return err
	}
	subj := n.s.nRoot + "." + escapeToken(nodeID)
	if err := checkSubject(subj); err != nil {
		return err
	}
	m := nats.NewMsg(subj)
	m.Header.Set(hdrFrom, n.id)
	m.Data = msg
	cctx, cancel := n.s.call(ctx)
	defer cancel()
	if _, err := n.s.nc.RequestMsgWithContext(cctx, m); err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return fmt.Errorf("nats scaler: send to %q: %w", nodeID, scaler.ErrUnknownNode)
		}
		return n.s.failed(ctx, "send", err)
	}
	return nil
}

// Subscribe subscribes to the stream's delivery subjects. The interest is
// kept even when NATS cannot be reached: nats.go sends it when it
// reconnects.
func (n *node) Subscribe(ctx context.Context, stream string) error {
	if err := n.check(ctx); err != nil {
		return err
	}
	filter := streamFilter(n.s.dRoot, stream)
	if err := checkSubject(filter); err != nil {
		return err
	}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return scaler.ErrClosed
	}
	if n.streams[stream] != nil {
		n.mu.Unlock()
		return nil
	}
	ss := &streamSub{stream: stream, depth: depth(stream), live: true}
	sub, err := n.s.nc.Subscribe(filter, func(m *nats.Msg) { n.onDelivery(ss, m) })
	if err != nil {
		n.mu.Unlock()
		return n.s.failed(ctx, "subscribe", err)
	}
	ss.sub = sub
	n.streams[stream] = ss
	n.mu.Unlock()
	// The server knows of the interest once it answered a ping sent after
	// the subscription.
	cctx, cancel := n.s.call(ctx)
	defer cancel()
	if err := n.s.nc.FlushWithContext(cctx); err != nil {
		return n.s.failed(ctx, "subscribe", err)
	}
	return nil
}

func (n *node) Unsubscribe(ctx context.Context, stream string) error {
	if err := n.check(ctx); err != nil {
		return err
	}
	n.mu.Lock()
	ss := n.streams[stream]
	delete(n.streams, stream)
	n.mu.Unlock()
	if ss != nil {
		ss.stopDeliveries()
	}
	return nil
}

func (ss *streamSub) stopDeliveries() {
	ss.mu.Lock()
	ss.live = false
	ss.mu.Unlock()
	_ = ss.sub.Unsubscribe()
}

func (n *node) onDelivery(ss *streamSub, m *nats.Msg) {
	pub, err := decodePub(m.Data)
	if err != nil {
		return // not ours: nothing to deliver
	}
	d := scaler.Delivery{Stream: ss.stream, Pub: pub}
	if off := m.Header.Get(hdrOffsets); off != "" {
		ps, err := parsePositions(off, m.Header.Get(hdrEpochs))
		if err != nil {
			return
		}
		if pos, ok := ps.at(ss.depth); ok {
			d.Offset, d.Epoch = pos.Offset, pos.Epoch
		}
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.live {
		n.h.HandleDelivery(d)
	}
}

// reconnected tells the handler that every stream may have missed
// deliveries while the link was down.
func (n *node) reconnected() {
	for _, ss := range n.subs() {
		ss.mu.Lock()
		if ss.live {
			n.h.HandleMissed(ss.stream)
		}
		ss.mu.Unlock()
	}
	// Presence needs nothing here: the entries are in JetStream, and a
	// write that failed meanwhile marked them to be rewritten.
}

// dropped tells the handler that nats.go dropped deliveries of the stream
// whose subscription is sub.
func (n *node) dropped(sub *nats.Subscription) {
	for _, ss := range n.subs() {
		if ss.sub == sub {
			ss.mu.Lock()
			if ss.live {
				n.h.HandleMissed(ss.stream)
			}
			ss.mu.Unlock()
		}
	}
}

func (n *node) subs() []*streamSub {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]*streamSub, 0, len(n.streams))
	for _, ss := range n.streams {
		out = append(out, ss)
	}
	return out
}

// Ping checks that NATS and JetStream answer.
func (n *node) Ping(ctx context.Context) error {
	if err := n.check(ctx); err != nil {
		return err
	}
	cctx, cancel := n.s.call(ctx)
	defer cancel()
	if err := n.s.nc.FlushWithContext(cctx); err != nil {
		return n.s.failed(ctx, "ping", err)
	}
	if _, err := n.s.js.AccountInfo(cctx); err != nil {
		return n.s.failed(ctx, "ping: JetStream", err)
	}
	return nil
}

// Close detaches the node and removes its presence entries (unless it
// crashed).
func (n *node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	crashed := n.crashed
	streams := n.streams
	n.streams = map[string]*streamSub{}
	msgSub := n.msgSub
	n.mu.Unlock()
	n.halt(streams, msgSub, !crashed)
	if !crashed {
		ctx, cancel := context.WithTimeout(context.Background(), n.s.o.callTimeout)
		n.removePresence(ctx)
		cancel()
	}
	n.s.forget(n)
	return nil
}

// crash stops everything a dead process would stop, without a goodbye.
func (n *node) crash() {
	n.mu.Lock()
	n.crashed = true
	streams := n.streams
	n.streams = map[string]*streamSub{}
	msgSub := n.msgSub
	n.msgSub = nil
	n.mu.Unlock()
	n.halt(streams, msgSub, false)
}

// halt stops deliveries, messages and the heartbeat, and waits for calls
// in progress.
// A node that closes drains its message subscription: the requests NATS
// already routed to it are answered (and dropped, as Send allows) instead
// of leaving their senders waiting for a timeout.
func (n *node) halt(streams map[string]*streamSub, msgSub *nats.Subscription, drain bool) {
	for _, ss := range streams {
		ss.stopDeliveries()
	}
	n.msgMu.Lock()
	n.msgLive = false
	n.msgMu.Unlock()
	if msgSub != nil {
		if drain {
			_ = msgSub.Drain()
		} else {
			_ = msgSub.Unsubscribe()
		}
	}
	n.stop()
	n.wg.Wait()
}

var (
	_ scaler.Node    = (*node)(nil)
	_ scaler.History = (*node)(nil)
	_ scaler.Pinger  = (*node)(nil)
)
