package mongoredis

import (
	"context"
	"errors"
	"net"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/superscaled/sss/scaler"
)

// Sharded pub/sub, used when the client is a *redis.ClusterClient.
//
// A shard channel can only be SSUBSCRIBEd on the master that owns its slot,
// and one go-redis PubSub talks to one cluster node, chosen by the slot of
// its first channel. A node therefore keeps one shard per master: a PubSub
// carrying the node's channels whose slots that master owned when they were
// subscribed, and a goroutine reading it. Every shard's goroutine calls the
// handler under the node's dmu, so calls stay serialised; a channel lives on
// one shard at a time, whose connection keeps Redis' order.
//
// Topology changes: any error on a shard's connection (MOVED in reply to
// SSUBSCRIBE, a broken link, a slot migrated away, which Redis announces
// with a "sunsubscribe" push) retires the whole shard: it is closed and
// never reused, its channels lose their owner, and the node's repair loop
// resolves their masters again (after asking go-redis to reload the cluster
// state) and subscribes them on the right shards. A shard drops messages of
// channels it no longer carries, so a channel that moved never receives an
// old shard's message after a new shard's. Deliveries published while a
// channel had no shard are lost, which the contract allows: the server fills
// the gap from the history.

// shard is one sharded pub/sub connection of a node to one master.
type shard struct {
	n    *node
	addr string // the master, as go-redis resolved the first channel's slot
	ps   *redis.PubSub
	// Under n.dmu:
	dead   bool           // retired: closed, its channels handed back
	unsubs map[string]int // our SUNSUBSCRIBEs whose confirmation is pending
}

func (n *node) cluster() *redis.ClusterClient { return n.s.rdb.(*redis.ClusterClient) }

// joinSharded subscribes the node's message channel and starts the repair
// loop. On error the caller closes n.
func (n *node) joinSharded(ctx, cctx context.Context) error {
	n.sharded = true
	n.shards = make(map[string]*shard)
	n.owner = make(map[string]*shard)
	n.kick = make(chan struct{}, 1)
	n.wg.Add(1)
	go n.repairLoop()
	n.subMu.Lock()
	token, done, err := n.subscribeShardLocked(cctx, n.self)
	n.subMu.Unlock()
	return n.awaitBarrier(ctx, cctx, "join", token, done, err)
}

// subscribeShardLocked subscribes ch on the shard of its master and sends
// the barrier that confirms it. On error ch is left without a shard and the
// repair loop will subscribe it. Called with subMu held.
func (n *node) subscribeShardLocked(ctx context.Context, ch string) (string, chan error, error) {
	addr, err := n.masterOf(ctx, ch)
	var sh *shard
	if err == nil {
		sh, err = n.placeLocked(ctx, ch, addr)
	}
	if err != nil {
		n.kickRepair()
		return "", nil, err
	}
	token, done := n.addBarrier(sh)
	if err := sh.ps.Ping(ctx, token); err != nil {
		n.dropBarrier(token)
		n.retireLocked(sh)
		return "", nil, err
	}
	return token, done, nil
}

// masterOf returns the address of the master owning ch's slot, as go-redis
// knows it: the node a PubSub whose first channel is ch connects to.
func (n *node) masterOf(ctx context.Context, ch string) (string, error) {
	master, err := n.cluster().MasterForKey(ctx, ch)
	if err != nil {
		return "", err
	}
	return master.Options().Addr, nil
}

// placeLocked SSUBSCRIBEs ch on the shard of addr, the master owning its
// slot, creating the shard if needed, and records it as ch's owner. Called
// with subMu held.
func (n *node) placeLocked(ctx context.Context, ch, addr string) (*shard, error) {
	if n.ctx.Err() != nil {
		return nil, scaler.ErrClosed
	}
	if sh := n.shards[addr]; sh != nil {
		n.dmu.Lock()
		n.owner[ch] = sh
		n.dmu.Unlock()
		if err := sh.ps.SSubscribe(ctx, ch); err != nil {
			n.retireLocked(sh) // hands ch back too
			return nil, err
		}
		return sh, nil
	}
	// A new PubSub connects on its first SSUBSCRIBE, to the master of that
	// channel's slot. Its reader starts only after: a PubSub reading with
	// no channel would connect to a random node.
	sh := &shard{n: n, addr: addr, ps: n.cluster().SSubscribe(ctx), unsubs: make(map[string]int)}
	if err := sh.ps.SSubscribe(ctx, ch); err != nil {
		sh.ps.Close()
		return nil, err
	}
	n.shards[addr] = sh
	n.dmu.Lock()
	n.owner[ch] = sh
	n.dmu.Unlock()
	n.wg.Add(1)
	go sh.loop()
	return sh, nil
}

// retireLocked closes sh for good and hands its channels to the repair
// loop. Called with subMu held; idempotent.
func (n *node) retireLocked(sh *shard) {
	n.dmu.Lock()
	if sh.dead {
		n.dmu.Unlock()
		return
	}
	sh.dead = true
	for ch, o := range n.owner {
		if o == sh {
			delete(n.owner, ch)
		}
	}
	n.dmu.Unlock()
	if n.shards[sh.addr] == sh {
		delete(n.shards, sh.addr)
	}
	sh.ps.Close()
	n.failBarriersOf(sh, errLinkDown)
	n.kickRepair()
}

func (n *node) kickRepair() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// repairLoop subscribes, with backoff, the channels of the node's interests
// that have no shard, until Close.
func (n *node) repairLoop() {
	defer n.wg.Done()
	log := n.s.cfg.logger
	failures := 0
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-n.kick:
		}
		for {
			// A short pause first: the cluster state go-redis reloads in
			// the background settles, and a flapping shard cannot spin.
			if !n.pause(max(failures, 1)) {
				return
			}
			placed, err := n.repair()
			if err == nil {
				if failures > 0 {
					log.Info("mongoredis: Redis Cluster pub/sub restored", "node", n.id, "attempts", failures)
					failures = 0
				}
				if placed > 0 {
					log.Debug("mongoredis: shard channels resubscribed", "node", n.id, "channels", placed)
				}
				break
			}
			if failures == 0 {
				log.Warn("mongoredis: Redis Cluster pub/sub unavailable; retrying", "node", n.id, "err", err)
			}
			failures++
		}
	}
}

// repair subscribes every channel the node wants that has no shard.
func (n *node) repair() (int, error) {
	n.subMu.Lock()
	defer n.subMu.Unlock()
	if n.ctx.Err() != nil {
		return 0, nil
	}
	var todo []string
	n.dmu.Lock()
	if n.owner[n.self] == nil {
		todo = append(todo, n.self)
	}
	for ch := range n.streams {
		if n.owner[ch] == nil {
			todo = append(todo, ch)
		}
	}
	n.dmu.Unlock()
	if len(todo) == 0 {
		return 0, nil
	}
	ctx, cancel := n.s.callCtx(n.ctx)
	defer cancel()
	n.cluster().ReloadState(ctx)
	var first error
	placed := 0
	failed := map[string]bool{} // masters that failed this round: skip their other channels
	for _, ch := range todo {
		addr, err := n.masterOf(ctx, ch)
		if err == nil && failed[addr] {
			continue
		}
		if err == nil {
			_, err = n.placeLocked(ctx, ch, addr)
			if err != nil {
				failed[addr] = true
			}
		}
		if err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		placed++
	}
	return placed, first
}

// loop reads sh until it fails or the node closes.
func (sh *shard) loop() {
	n := sh.n
	defer n.wg.Done()
	for {
		msg, err := sh.ps.ReceiveTimeout(n.ctx, idleCheck)
		if err != nil {
			if n.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Idle: a ping either gets a pong or breaks the connection.
				// go-redis would reconnect it by itself, with one SSUBSCRIBE
				// for all the shard's channels (CROSSSLOT when they span
				// slots): retire the shard instead.
				if err := sh.ps.Ping(n.ctx); err == nil || n.ctx.Err() != nil {
					continue
				}
			}
			sh.retire("mongoredis: shard pub/sub failed; resubscribing its channels", err)
			return
		}
		switch m := msg.(type) {
		case *redis.Message:
			n.dispatch(sh, m)
		case *redis.Pong:
			n.releaseBarrier(m.Payload)
		case *redis.Subscription:
			if m.Kind == "sunsubscribe" && sh.lost(m.Channel) {
				sh.retire("mongoredis: shard channel moved; resubscribing", errors.New("sunsubscribe "+strconv.Quote(m.Channel)))
				return
			}
		}
	}
}

// lost tells whether a sunsubscribe for ch came from Redis (the slot moved)
// rather than confirming our own SUNSUBSCRIBE.
func (sh *shard) lost(ch string) bool {
	n := sh.n
	n.dmu.Lock()
	defer n.dmu.Unlock()
	if k := sh.unsubs[ch]; k > 0 {
		if k == 1 {
			delete(sh.unsubs, ch)
		} else {
			sh.unsubs[ch] = k - 1
		}
		return false
	}
	return !sh.dead && n.owner[ch] == sh
}

func (sh *shard) retire(msg string, err error) {
	n := sh.n
	n.subMu.Lock()
	defer n.subMu.Unlock()
	n.dmu.Lock()
	dead := sh.dead
	n.dmu.Unlock()
	if dead || n.ctx.Err() != nil {
		return
	}
	n.s.cfg.logger.Info(msg, "node", n.id, "master", sh.addr, "err", err)
	n.retireLocked(sh)
}

// unsubscribeShard drops ch from its shard. Called with subMu and dmu held;
// it unlocks dmu.
func (n *node) unsubscribeShard(ctx context.Context, stream, ch string) {
	sh := n.owner[ch]
	delete(n.owner, ch)
	if sh == nil || sh.dead {
		n.dmu.Unlock()
		return
	}
	sh.unsubs[ch]++
	n.dmu.Unlock()
	cctx, cancel := n.s.callCtx(ctx)
	defer cancel()
	if err := sh.ps.SUnsubscribe(cctx, ch); err != nil {
		n.s.cfg.logger.Debug("mongoredis: sunsubscribe", "node", n.id, "stream", stream, "err", err)
	}
}

// awaitBarrier waits for a Subscribe's confirmation.
func (n *node) awaitBarrier(ctx, cctx context.Context, op, token string, done chan error, err error) error {
	if err == nil {
		select {
		case err = <-done:
		case <-cctx.Done():
			n.dropBarrier(token)
			err = cctx.Err()
		case <-n.ctx.Done():
			return scaler.ErrClosed
		}
	}
	if err != nil {
		if n.isClosed() || errors.Is(err, scaler.ErrClosed) {
			return scaler.ErrClosed
		}
		return n.s.redisErr(ctx, op, err)
	}
	return nil
}

// closeShards closes every shard; the node's context is already cancelled.
func (n *node) closeShards() {
	n.subMu.Lock()
	shards := n.shards
	n.shards = map[string]*shard{}
	n.subMu.Unlock()
	n.dmu.Lock()
	for _, sh := range shards {
		sh.dead = true
	}
	n.dmu.Unlock()
	for _, sh := range shards {
		sh.ps.Close()
	}
}
