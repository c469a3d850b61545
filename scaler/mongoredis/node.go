package mongoredis

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/superscaled/sss/scaler"
)

const (
	// idleCheck is how long a receive loop waits for anything before it
	// pings, so that a connection that died silently gets noticed (see
	// node.receive).
	idleCheck = 15 * time.Second
	// Backoff between attempts to reach Redis again after the link broke.
	minBackoff = 50 * time.Millisecond
	maxBackoff = 2 * time.Second
)

// errLinkDown fails Subscribe calls whose confirmation was lost with the
// connection.
var errLinkDown = errors.New("pub/sub connection lost")

// errSilentLink: a pub/sub connection stayed silent through a ping.
var errSilentLink = errors.New("pub/sub connection silent: no answer to a ping")

// receive reads the next message of a receive loop's connection, and
// checks that a silent one is alive. After idleCheck without anything it
// pings, sets *pinged and returns the timeout (the loop goes on). The
// answer, or anything else, must then come within the call timeout: the
// read is made without go-redis' tolerance of timeouts, so that if it
// times out go-redis replaces the connection, and receive returns an
// error wrapping errSilentLink. A connection can die without a reset
// (its peer or a middlebox between forgot it, the instance came back on
// the network with another address) and a write to it still succeeds:
// without the deadline, the loop would wait for ever while the node
// misses every delivery.
func (n *node) receive(ps *redis.PubSub, pinged *bool) (any, error) {
	if !*pinged {
		msg, err := ps.ReceiveTimeout(n.ctx, idleCheck)
		var ne net.Error
		if err != nil && errors.As(err, &ne) && ne.Timeout() && n.ctx.Err() == nil {
			// A failed write makes go-redis replace the connection too;
			// the error must not read as a timeout, which means idle.
			if perr := ps.Ping(n.ctx); perr != nil {
				return nil, fmt.Errorf("%w: ping: %v", errLinkDown, perr)
			}
			*pinged = true
		}
		return msg, err
	}
	wait := n.s.cfg.callTimeout
	ctx, cancel := context.WithTimeout(n.ctx, wait)
	defer cancel()
	// Timeout 0: the read's deadline is ctx's, and its expiry is an error
	// of the connection.
	msg, err := ps.ReceiveTimeout(ctx, 0)
	*pinged = false
	var ne net.Error
	timedOut := ctx.Err() != nil || errors.As(err, &ne) && ne.Timeout()
	if err != nil && timedOut && n.ctx.Err() == nil {
		// Not a timeout for the caller: the connection is gone.
		return nil, fmt.Errorf("%w within %v", errSilentLink, wait)
	}
	return msg, err
}

// node is one server instance. It owns what does not depend on how Redis
// pub/sub is reached: the node's interests, the handler calls, and the
// barriers that confirm subscriptions. Its pubsub carries the channels:
// plainPubSub (plain.go), one connection for a single Redis or Sentinel, or
// shardedPubSub (sharded.go), one connection per master of a Redis Cluster.
//
// Locks, in the order they are taken:
//
//  1. subMu, held by Subscribe and Unsubscribe while they change an
//     interest and then its channel on the pubsub, so the two change
//     together;
//  2. the pubsub's own mutex (plainPubSub.mu, shardedPubSub.mu), held by
//     each of its methods and receive loops that change which channels its
//     connections carry, across the calls to Redis;
//  3. dmu, held while the handler runs and while interests change;
//  4. leaves, under which no other lock is taken: shardedPubSub.omu (which
//     shard carries which channel) and bmu (barriers).
//
// A function takes and releases its own locks; the only "called with a lock
// held" helpers are shardedPubSub's ...Locked methods (its mu).
type node struct {
	s      *Scaler
	id     string
	h      scaler.Handler
	self   string // the node's message channel
	pubsub pubsub // set by join, never changed

	ctx    context.Context // ends with Close; stops the pubsub's goroutines
	cancel context.CancelFunc

	// subMu serialises Subscribe and Unsubscribe (see the lock order).
	subMu sync.Mutex

	// dmu is held while the handler runs, so Unsubscribe and Close wait for
	// a call in progress and nothing is delivered after they return.
	dmu     sync.Mutex
	closed  atomic.Bool       // set under dmu; read without it by the other methods
	streams map[string]string // Redis channel → stream, the node's interests; under dmu

	// Barriers: Subscribe writes a PING with a unique token after its
	// SUBSCRIBE, on the same connection, and returns when the PONG comes
	// back, i.e. once Redis has processed the SUBSCRIBE on the connection
	// that carries deliveries.
	bmu      sync.Mutex
	bseq     uint64
	barriers map[string]*barrier

	presence presence // presence.go
}

// pubsub is the node's link to Redis pub/sub: the connections carrying its
// message channel and its interests' channels, and the goroutines reading
// them, which hand messages to node.dispatch and PONGs to
// node.releaseBarrier. When a connection breaks, the pubsub subscribes again
// by itself, with backoff until Close, every channel node.channels lists.
// Each method takes its own locks.
type pubsub interface {
	// subscribe subscribes ch on the connection that must carry it and
	// sends a barrier after it there. On error ch is subscribed later,
	// when Redis can be reached again (as long as node.channels lists it).
	subscribe(ctx context.Context, ch string) (*barrier, error)
	// unsubscribe drops ch, which node.channels no longer lists. ch is
	// forgotten even on error, so that a new connection will not carry it:
	// the error is only worth logging.
	unsubscribe(ctx context.Context, ch string) error
	// close closes the connections and waits for the goroutines reading
	// them. The node's context is already cancelled.
	close()
}

// barrier is a pending subscription confirmation: a PING with a unique
// token written on conn after the SUBSCRIBE.
type barrier struct {
	token string
	conn  *redis.PubSub
	done  chan error // buffered; nil once the PONG came, or why it never will
	// missed lists channels subscribed again after conn's link broke: when
	// the PONG comes, their deliveries flow again, and the handler is told
	// that some may have been lost meanwhile.
	missed []string
}

// join creates the node, waits for its message channel to be subscribed and
// starts its pubsub's goroutines.
func (s *Scaler) join(ctx context.Context, id string, h scaler.Handler) (*node, error) {
	cctx, cancel := s.callCtx(ctx)
	defer cancel()
	n := &node{
		s: s, id: id, h: h, self: s.nodeChannel(id),
		streams:  make(map[string]string),
		barriers: make(map[string]*barrier),
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	var err error
	if s.cluster {
		n.pubsub, err = joinSharded(ctx, cctx, n)
	} else {
		n.pubsub, err = joinPlain(ctx, cctx, n)
	}
	if err == nil {
		err = n.startPresence(cctx)
	}
	if err != nil {
		n.cancel()
		n.pubsub.close()
		return nil, err
	}
	return n, nil
}

// channels lists the channels the node wants: its message channel first,
// then its interests'.
func (n *node) channels() []string {
	n.dmu.Lock()
	defer n.dmu.Unlock()
	out := make([]string, 0, len(n.streams)+1)
	out = append(out, n.self)
	for ch := range n.streams {
		out = append(out, ch)
	}
	return out
}

// backoff waits before the next attempt to reach Redis; false means ctx
// ended (Close).
func backoff(ctx context.Context, failures int) bool {
	d := minBackoff << min(failures-1, 8)
	d = min(d, maxBackoff)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// dispatch decodes a message and calls the handler, in the goroutine that
// read it: calls are never concurrent (dmu), and arrive in Redis' order.
// carries, if not nil, tells whether the connection that read m still
// carries its channel; it is asked under dmu, so that with sharded pub/sub
// a channel that moved to another shard never gets a stale message from
// the old one after newer ones.
func (n *node) dispatch(m *redis.Message, carries func(ch string) bool) {
	if m.Channel == n.self {
		from, msg, err := parseMessage(m.Payload)
		if err != nil {
			n.s.cfg.logger.Warn("mongoredis: dropped a node message", "node", n.id, "err", err)
			return
		}
		n.dmu.Lock()
		defer n.dmu.Unlock()
		if !n.closed.Load() && (carries == nil || carries(m.Channel)) {
			n.h.HandleMessage(from, msg)
		}
		return
	}
	off, epoch, body, err := parseFrame(m.Payload)
	var pub *scaler.Publication
	if err == nil {
		_, pub, err = parseBody(body)
	}
	if err != nil {
		n.s.cfg.logger.Warn("mongoredis: dropped a delivery", "node", n.id, "channel", m.Channel, "err", err)
		return
	}
	n.dmu.Lock()
	defer n.dmu.Unlock()
	stream, ok := n.streams[m.Channel]
	if !ok || n.closed.Load() || (carries != nil && !carries(m.Channel)) {
		return // unsubscribed locally; Redis may not have processed it yet
	}
	n.h.HandleDelivery(scaler.Delivery{Stream: stream, Pub: pub, Offset: off, Epoch: epoch})
}

// sendBarrier writes a barrier on conn, after a subscription made on it.
// The reader of conn completes it with releaseBarrier when the PONG comes.
func (n *node) sendBarrier(ctx context.Context, conn *redis.PubSub, missed []string) (*barrier, error) {
	n.bmu.Lock()
	n.bseq++
	// missed is set before the barrier is registered: its release may
	// come before sendBarrier returns.
	b := &barrier{token: "sss-barrier-" + strconv.FormatUint(n.bseq, 10), conn: conn, done: make(chan error, 1), missed: missed}
	n.barriers[b.token] = b
	n.bmu.Unlock()
	if err := conn.Ping(ctx, b.token); err != nil {
		n.dropBarrier(b)
		return nil, err
	}
	return b, nil
}

func (n *node) dropBarrier(b *barrier) {
	n.bmu.Lock()
	delete(n.barriers, b.token)
	n.bmu.Unlock()
}

// releaseBarrier completes a barrier; it runs on the goroutine reading the
// barrier's connection.
func (n *node) releaseBarrier(token string) {
	n.bmu.Lock()
	b, ok := n.barriers[token]
	delete(n.barriers, token)
	n.bmu.Unlock()
	if !ok {
		return
	}
	b.done <- nil
	if len(b.missed) > 0 {
		n.reportMissed(b.missed)
	}
}

// resubscribed sends, on conn, a barrier after channels were subscribed
// again following a broken link: once Redis has processed those
// subscriptions, the handler is told that their streams may have missed
// deliveries (scaler.Handler.HandleMissed).
func (n *node) resubscribed(ctx context.Context, conn *redis.PubSub, channels []string) error {
	_, err := n.sendBarrier(ctx, conn, channels)
	return err
}

// reportMissed calls HandleMissed for the streams of channels the node
// still wants, in the goroutine that reads their connection.
func (n *node) reportMissed(channels []string) {
	n.dmu.Lock()
	defer n.dmu.Unlock()
	for _, ch := range channels {
		if stream, ok := n.streams[ch]; ok && !n.closed.Load() {
			n.h.HandleMissed(stream)
		}
	}
}

// failBarriers fails the barriers pending on conn, or all of them if conn
// is nil.
func (n *node) failBarriers(conn *redis.PubSub, err error) {
	n.bmu.Lock()
	defer n.bmu.Unlock()
	for token, b := range n.barriers {
		if conn == nil || b.conn == conn {
			b.done <- err
			delete(n.barriers, token)
		}
	}
}

// awaitBarrier waits for a subscription's barrier; ctx is the subscription's
// (bounded) context.
func (n *node) awaitBarrier(ctx context.Context, b *barrier) error {
	select {
	case err := <-b.done:
		return err
	case <-ctx.Done():
		n.dropBarrier(b)
		return ctx.Err()
	case <-n.ctx.Done():
		return scaler.ErrClosed
	}
}

// subscribeErr is the error of a subscription that failed with err: Close
// may have closed the connection under it.
func (n *node) subscribeErr(caller context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	if n.isClosed() || errors.Is(err, scaler.ErrClosed) {
		return scaler.ErrClosed
	}
	return n.s.redisErr(caller, op, err)
}

func (n *node) isClosed() bool { return n.closed.Load() }

// Publish implements scaler.Broker. Local subscribers get the publication
// through Redis like everyone else, so a node's own publications keep their
// place in each stream's order.
func (n *node) Publish(ctx context.Context, pub *scaler.Publication) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if pub == nil {
		return errors.New("mongoredis: Publish(nil)")
	}
	if n.isClosed() {
		return scaler.ErrClosed
	}
	cctx, cancel := n.s.callCtx(ctx)
	defer cancel()
	body, pls, err := n.s.publish(cctx, n.id, pub)
	if err != nil {
		return n.s.redisErr(ctx, "publish to "+strconv.Quote(pub.Channel), err)
	}
	n.s.archive(ctx, n.id, pub, body, pls)
	return nil
}

// Subscribe implements scaler.Broker. It returns once Redis has registered
// the subscription. If Redis cannot be reached, the interest is kept (the
// pubsub subscribes it when the link returns) and the error wraps
// scaler.ErrUnavailable.
func (n *node) Subscribe(ctx context.Context, stream string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	cctx, cancel := n.s.callCtx(ctx)
	defer cancel()
	b, err := n.subscribe(cctx, stream)
	if err == nil && b != nil {
		err = n.awaitBarrier(cctx, b)
	}
	return n.subscribeErr(ctx, "subscribe to "+strconv.Quote(stream), err)
}

// subscribe records the interest in stream and subscribes its channel. It
// returns the barrier to wait for, nil if the node was already subscribed.
func (n *node) subscribe(ctx context.Context, stream string) (*barrier, error) {
	ch := n.s.streamChannel(stream)
	n.subMu.Lock()
	defer n.subMu.Unlock()
	n.dmu.Lock()
	closed := n.closed.Load()
	_, had := n.streams[ch]
	if !closed && !had {
		n.streams[ch] = stream
	}
	n.dmu.Unlock()
	switch {
	case closed:
		return nil, scaler.ErrClosed
	case had:
		return nil, nil
	}
	return n.pubsub.subscribe(ctx, ch)
}

// Unsubscribe implements scaler.Broker. Deliveries stop at once (the
// handler is no longer called for the stream); Redis drops the channel
// asynchronously.
func (n *node) Unsubscribe(ctx context.Context, stream string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ch := n.s.streamChannel(stream)
	n.subMu.Lock()
	defer n.subMu.Unlock()
	n.dmu.Lock()
	closed := n.closed.Load()
	_, had := n.streams[ch]
	if !closed {
		delete(n.streams, ch)
	}
	n.dmu.Unlock()
	switch {
	case closed:
		return scaler.ErrClosed
	case !had:
		return nil
	}
	cctx, cancel := n.s.callCtx(ctx)
	defer cancel()
	if err := n.pubsub.unsubscribe(cctx, ch); err != nil {
		// The interest is gone locally, and the pubsub forgot the channel,
		// so a new connection will not carry it: nothing to report.
		n.s.cfg.logger.Debug("mongoredis: unsubscribe", "node", n.id, "stream", stream, "err", err)
	}
	return nil
}

// Send implements scaler.Broker. A node that is not attached is reported
// with scaler.ErrUnknownNode, except with a ClusterClient that reads from
// replicas (ReadOnly): node channels are then subscribed on replicas, and
// SPUBLISH counts only the master's receivers, so there a Send that reaches
// nobody returns nil.
func (n *node) Send(ctx context.Context, nodeID string, msg []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if n.isClosed() {
		return scaler.ErrClosed
	}
	cctx, cancel := n.s.callCtx(ctx)
	defer cancel()
	payload := appendMessage(make([]byte, 0, len(n.id)+len(msg)+4), n.id, msg)
	var got int64
	var err error
	if n.s.cluster {
		got, err = n.s.rdb.SPublish(cctx, n.s.nodeChannel(nodeID), payload).Result()
	} else {
		got, err = n.s.rdb.Publish(cctx, n.s.nodeChannel(nodeID), payload).Result()
	}
	if err != nil {
		return n.s.redisErr(ctx, "send to "+strconv.Quote(nodeID), err)
	}
	if got == 0 && !n.s.inexactSend {
		return fmt.Errorf("mongoredis: send to %q: %w", nodeID, scaler.ErrUnknownNode)
	}
	return nil
}

// Since implements scaler.History.
func (n *node) Since(ctx context.Context, stream string, pos scaler.Position, limit int) ([]scaler.Entry, scaler.Position, error) {
	if err := ctx.Err(); err != nil {
		return nil, scaler.Position{}, err
	}
	if n.isClosed() {
		return nil, scaler.Position{}, scaler.ErrClosed
	}
	cctx, cancel := n.s.callCtx(ctx)
	defer cancel()
	entries, top, err := n.s.since(cctx, stream, pos, limit)
	var ae *archiveError
	if errors.As(err, &ae) {
		return nil, scaler.Position{}, n.s.mongoErr(ctx, "archived history of "+strconv.Quote(stream), ae.err)
	}
	if err != nil && !errors.Is(err, scaler.ErrPositionLost) {
		return nil, scaler.Position{}, n.s.redisErr(ctx, "history of "+strconv.Quote(stream), err)
	}
	return entries, top, err
}

// Ping implements scaler.Pinger: Redis answers a PING (and, with a
// session store, MongoDB answers a ping: see storeNode.Ping).
func (n *node) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if n.isClosed() {
		return scaler.ErrClosed
	}
	cctx, cancel := n.s.callCtx(ctx)
	defer cancel()
	if err := n.s.rdb.Ping(cctx).Err(); err != nil {
		return n.s.redisErr(ctx, "ping redis", err)
	}
	return nil
}

// Close implements scaler.Node. It waits for a handler call in progress, so
// it must not be called from the node's own handler.
func (n *node) Close() error {
	n.dmu.Lock() // waits for a handler call in progress
	if n.closed.Load() {
		n.dmu.Unlock()
		return nil
	}
	n.closed.Store(true)
	n.dmu.Unlock()
	n.cancel()
	n.closePresence()
	n.pubsub.close() // Redis drops the subscriptions with the connections
	n.failBarriers(nil, scaler.ErrClosed)
	n.s.removeNode(n)
	return nil
}

var (
	_ scaler.Node    = (*node)(nil)
	_ scaler.History = (*node)(nil)
	_ scaler.Pinger  = (*node)(nil)
)
