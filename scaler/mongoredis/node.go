package mongoredis

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/superscaled/sss/scaler"
)

const (
	// idleCheck is how long the receive loop waits for anything before it
	// pings, so that a connection that died silently gets noticed.
	idleCheck = 15 * time.Second
	// Backoff between attempts to reach Redis again after the link broke.
	minBackoff = 50 * time.Millisecond
	maxBackoff = 2 * time.Second
)

// errLinkDown fails Subscribe calls whose confirmation was lost with the
// connection.
var errLinkDown = errors.New("pub/sub connection lost")

// node is one server instance: one Redis PubSub connection carrying its
// message channel and the channels of the streams it is interested in, and
// one goroutine reading it and calling the handler in order.
// With Redis Cluster it holds one such connection per master instead
// (sharded.go).
type node struct {
	s    *Scaler
	id   string
	h    scaler.Handler
	ps   *redis.PubSub
	self string // the node's message channel

	ctx    context.Context // ends with Close; stops the receive loop
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// subMu serialises changes of the PubSub's channels, so that the
	// receive loop's resubscription after an outage cannot resurrect a
	// channel Unsubscribe just dropped. Lock order: subMu, then dmu.
	subMu sync.Mutex

	// dmu is held while the handler runs, so Unsubscribe and Close wait for
	// a call in progress and nothing is delivered after they return.
	dmu     sync.Mutex
	closed  atomic.Bool       // set under dmu; read without it by the other methods
	streams map[string]string // Redis channel → stream, the node's interests

	// Barriers: Subscribe writes a PING with a unique token after its
	// SUBSCRIBE and returns when the PONG comes back, i.e. once Redis has
	// processed the SUBSCRIBE on the connection that carries deliveries.
	bmu      sync.Mutex
	bseq     uint64
	barriers map[string]barrier

	// Redis Cluster (sharded pub/sub, see sharded.go); ps is nil then.
	sharded bool
	shards  map[string]*shard // master address → its live shard; under subMu
	owner   map[string]*shard // channel → shard carrying it; under dmu
	kick    chan struct{}     // wakes the repair loop
}

// barrier is a pending Subscribe confirmation, on the shard whose
// connection carries it (nil without Cluster).
type barrier struct {
	ch chan error
	sh *shard
}

// join creates the node, waits for its message channel to be subscribed and
// starts its receive loop. On error the returned node, if any, must be
// closed.
func (s *Scaler) join(ctx context.Context, id string, h scaler.Handler) (*node, error) {
	cctx, cancel := s.callCtx(ctx)
	defer cancel()
	n := &node{
		s: s, id: id, h: h, self: s.nodeChannel(id),
		streams:  make(map[string]string),
		barriers: make(map[string]barrier),
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	if s.cluster {
		return n, n.joinSharded(ctx, cctx)
	}
	n.ps = s.rdb.Subscribe(cctx, n.self)
	for {
		timeout := s.cfg.callTimeout
		if dl, ok := cctx.Deadline(); ok {
			timeout = time.Until(dl)
		}
		if timeout <= 0 {
			n.abort()
			return nil, s.redisErr(ctx, "join", context.DeadlineExceeded)
		}
		msg, err := n.ps.ReceiveTimeout(cctx, timeout)
		if err != nil {
			n.abort()
			return nil, s.redisErr(ctx, "join", err)
		}
		if sub, ok := msg.(*redis.Subscription); ok && sub.Channel == n.self {
			break
		}
	}
	n.wg.Add(1)
	go n.loop()
	return n, nil
}

// abort releases a node whose join failed (without Cluster).
func (n *node) abort() {
	n.cancel()
	n.ps.Close()
}

// loop reads the PubSub connection until Close.
func (n *node) loop() {
	defer n.wg.Done()
	log := n.s.cfg.logger
	failures := 0
	resubscribe := false
	for {
		if n.ctx.Err() != nil {
			return
		}
		if resubscribe {
			// go-redis resubscribes by itself when it reconnects, but not a
			// channel whose SUBSCRIBE failed on a connection it then
			// replaced: subscribe everything again (Redis ignores repeats).
			if err := n.resubscribeAll(); err != nil {
				failures++
				if !n.pause(failures) {
					return
				}
				continue
			}
			resubscribe = false
		}
		msg, err := n.ps.ReceiveTimeout(n.ctx, idleCheck)
		if err != nil {
			if n.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Idle: a ping either gets a pong or breaks the connection.
				n.ps.Ping(n.ctx)
				continue
			}
			n.failBarriers(errLinkDown)
			if failures == 0 {
				log.Warn("mongoredis: Redis pub/sub link down; retrying", "node", n.id, "err", err)
			}
			failures++
			resubscribe = true
			if !n.pause(failures) {
				return
			}
			continue
		}
		if failures > 0 {
			log.Info("mongoredis: Redis pub/sub link restored", "node", n.id, "attempts", failures)
			failures = 0
		}
		switch m := msg.(type) {
		case *redis.Message:
			n.dispatch(nil, m)
		case *redis.Pong:
			n.releaseBarrier(m.Payload)
		}
	}
}

// pause waits before the next attempt to reach Redis; false means Close.
func (n *node) pause(failures int) bool {
	d := minBackoff << min(failures-1, 8)
	d = min(d, maxBackoff)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-n.ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (n *node) resubscribeAll() error {
	n.subMu.Lock()
	defer n.subMu.Unlock()
	n.dmu.Lock()
	channels := append(slices.Collect(maps.Keys(n.streams)), n.self)
	n.dmu.Unlock()
	ctx, cancel := n.s.callCtx(n.ctx)
	defer cancel()
	return n.ps.Subscribe(ctx, channels...)
}

// dispatch decodes a message and calls the handler, in the loop's
// goroutine: calls are never concurrent (dmu), and arrive in Redis' order.
// With Cluster, sh is the shard that read m: a message is delivered only if
// that shard still carries its channel, so a channel that moved to another
// shard never gets a stale message from the old one after newer ones.
func (n *node) dispatch(sh *shard, m *redis.Message) {
	if m.Channel == n.self {
		from, msg, err := parseMessage(m.Payload)
		if err != nil {
			n.s.cfg.logger.Warn("mongoredis: dropped a node message", "node", n.id, "err", err)
			return
		}
		n.dmu.Lock()
		defer n.dmu.Unlock()
		if !n.closed.Load() && (sh == nil || n.owner[m.Channel] == sh) {
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
	if !ok || n.closed.Load() || (sh != nil && n.owner[m.Channel] != sh) {
		return // unsubscribed locally; Redis may not have processed it yet
	}
	n.h.HandleDelivery(scaler.Delivery{Stream: stream, Pub: pub, Offset: off, Epoch: epoch})
}

func (n *node) addBarrier(sh *shard) (string, chan error) {
	n.bmu.Lock()
	defer n.bmu.Unlock()
	n.bseq++
	token := "sss-barrier-" + strconv.FormatUint(n.bseq, 10)
	ch := make(chan error, 1)
	n.barriers[token] = barrier{ch: ch, sh: sh}
	return token, ch
}

func (n *node) dropBarrier(token string) {
	n.bmu.Lock()
	delete(n.barriers, token)
	n.bmu.Unlock()
}

func (n *node) releaseBarrier(token string) {
	n.bmu.Lock()
	b, ok := n.barriers[token]
	delete(n.barriers, token)
	n.bmu.Unlock()
	if ok {
		b.ch <- nil
	}
}

func (n *node) failBarriers(err error) { n.failBarriersOf(nil, err) }

// failBarriersOf fails the barriers pending on sh, or all of them if sh is
// nil.
func (n *node) failBarriersOf(sh *shard, err error) {
	n.bmu.Lock()
	defer n.bmu.Unlock()
	for token, b := range n.barriers {
		if sh == nil || b.sh == sh {
			b.ch <- err
			delete(n.barriers, token)
		}
	}
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
// receive loop subscribes it when the link returns) and the error wraps
// scaler.ErrUnavailable.
func (n *node) Subscribe(ctx context.Context, stream string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ch := n.s.streamChannel(stream)
	n.subMu.Lock()
	n.dmu.Lock()
	if n.closed.Load() {
		n.dmu.Unlock()
		n.subMu.Unlock()
		return scaler.ErrClosed
	}
	if _, ok := n.streams[ch]; ok {
		n.dmu.Unlock()
		n.subMu.Unlock()
		return nil
	}
	n.streams[ch] = stream
	n.dmu.Unlock()

	cctx, cancel := n.s.callCtx(ctx)
	defer cancel()
	if n.sharded {
		token, done, err := n.subscribeShardLocked(cctx, ch)
		n.subMu.Unlock()
		return n.awaitBarrier(ctx, cctx, "subscribe to "+strconv.Quote(stream), token, done, err)
	}
	var token string
	var done chan error
	err := n.ps.Subscribe(cctx, ch)
	if err == nil {
		token, done = n.addBarrier(nil)
		if err = n.ps.Ping(cctx, token); err != nil {
			n.dropBarrier(token)
		}
	}
	n.subMu.Unlock()
	if err != nil {
		if n.isClosed() {
			return scaler.ErrClosed // Close closed the PubSub under us
		}
		return n.s.redisErr(ctx, "subscribe to "+strconv.Quote(stream), err)
	}
	select {
	case err = <-done:
	case <-cctx.Done():
		n.dropBarrier(token)
		err = cctx.Err()
	case <-n.ctx.Done():
		return scaler.ErrClosed
	}
	if err != nil {
		return n.s.redisErr(ctx, "subscribe to "+strconv.Quote(stream), err)
	}
	return nil
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
	if n.closed.Load() {
		n.dmu.Unlock()
		return scaler.ErrClosed
	}
	if _, ok := n.streams[ch]; !ok {
		n.dmu.Unlock()
		return nil
	}
	delete(n.streams, ch)
	if n.sharded {
		n.unsubscribeShard(ctx, stream, ch) // unlocks dmu
		return nil
	}
	n.dmu.Unlock()
	cctx, cancel := n.s.callCtx(ctx)
	defer cancel()
	if err := n.ps.Unsubscribe(cctx, ch); err != nil {
		// The interest is gone locally, and go-redis forgot the channel, so
		// a new connection will not carry it: nothing to report.
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
	if n.sharded {
		n.closeShards()
	} else {
		n.ps.Close() // unblocks the loop's read; Redis drops the subscriptions
	}
	n.wg.Wait()
	n.failBarriers(scaler.ErrClosed)
	n.s.removeNode(n)
	return nil
}

var (
	_ scaler.Node    = (*node)(nil)
	_ scaler.History = (*node)(nil)
)
