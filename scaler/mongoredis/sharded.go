package mongoredis

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"

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
// handler through node.dispatch, under the node's dmu, so calls stay
// serialised; a channel lives on one shard at a time, whose connection
// keeps Redis' order.
//
// Topology changes: any error on a shard's connection (MOVED in reply to
// SSUBSCRIBE, a broken link, a slot migrated away, which Redis announces
// with a "sunsubscribe" push) retires the whole shard: it is closed and
// never reused, its channels lose their owner, and the repair loop
// resolves their masters again (after asking go-redis to reload the cluster
// state) and subscribes them on the right shards. A shard drops messages of
// channels it no longer carries, so a channel that moved never receives an
// old shard's message after a new shard's. Deliveries published while a
// channel had no shard are lost, which the contract allows: the server fills
// the gap from the history.

// shardedPubSub is a node's shards and the loop that repairs them.
type shardedPubSub struct {
	n    *node
	cc   *redis.ClusterClient
	wg   sync.WaitGroup // the shards' readers and the repair loop
	kick chan struct{}  // wakes the repair loop

	// mu is held, across the calls to Redis, by whatever changes the shards
	// or the channels they carry: subscribe, unsubscribe, repair, close and
	// a shard's retire. placeLocked and retireLocked are called with it.
	mu     sync.Mutex
	shards map[string]*shard // master address → its live shard; under mu

	// omu guards what a shard's reader checks per message (a leaf lock:
	// nothing else is taken under it); the changes happen under mu too.
	omu   sync.Mutex
	owner map[string]*shard // channel → the shard carrying it
}

// shard is one sharded pub/sub connection of a node to one master.
type shard struct {
	l    *shardedPubSub
	addr string // the master, as go-redis resolved the first channel's slot
	ps   *redis.PubSub
	// Under l.omu:
	dead   bool           // retired: closed, its channels handed back
	unsubs map[string]int // our SUNSUBSCRIBEs whose confirmation is pending
}

// joinSharded starts the repair loop and subscribes the node's message
// channel. It returns the pubsub even on error, for the caller to close.
func joinSharded(ctx, cctx context.Context, n *node) (*shardedPubSub, error) {
	l := &shardedPubSub{
		n:      n,
		cc:     n.s.rdb.(*redis.ClusterClient),
		kick:   make(chan struct{}, 1),
		shards: make(map[string]*shard),
		owner:  make(map[string]*shard),
	}
	l.wg.Add(1)
	go l.repairLoop()
	b, err := l.subscribe(cctx, n.self)
	if err == nil {
		err = n.awaitBarrier(cctx, b)
	}
	return l, n.subscribeErr(ctx, "join", err)
}

// subscribe subscribes ch on the shard of its master and sends the barrier
// that confirms it. On error ch is left without a shard and the repair loop
// will subscribe it.
func (l *shardedPubSub) subscribe(ctx context.Context, ch string) (*barrier, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	addr, err := l.masterOf(ctx, ch)
	var sh *shard
	if err == nil {
		sh, err = l.placeLocked(ctx, ch, addr)
	}
	if err != nil {
		l.kickRepair()
		return nil, err
	}
	b, err := l.n.sendBarrier(ctx, sh.ps, nil)
	if err != nil {
		l.retireLocked(sh)
		return nil, err
	}
	return b, nil
}

// unsubscribe drops ch from its shard.
func (l *shardedPubSub) unsubscribe(ctx context.Context, ch string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.omu.Lock()
	sh := l.owner[ch]
	delete(l.owner, ch)
	live := sh != nil && !sh.dead
	if live {
		sh.unsubs[ch]++
	}
	l.omu.Unlock()
	if !live {
		return nil
	}
	return sh.ps.SUnsubscribe(ctx, ch)
}

// close closes every shard and waits for the readers and the repair loop.
func (l *shardedPubSub) close() {
	l.mu.Lock()
	shards := l.shards
	l.shards = map[string]*shard{}
	l.mu.Unlock()
	l.omu.Lock()
	for _, sh := range shards {
		sh.dead = true
	}
	l.omu.Unlock()
	for _, sh := range shards {
		sh.ps.Close()
	}
	l.wg.Wait()
}

// masterOf returns the address of the master owning ch's slot, as go-redis
// knows it: the node a PubSub whose first channel is ch connects to.
func (l *shardedPubSub) masterOf(ctx context.Context, ch string) (string, error) {
	master, err := l.cc.MasterForKey(ctx, ch)
	if err != nil {
		return "", err
	}
	return master.Options().Addr, nil
}

// placeLocked SSUBSCRIBEs ch on the shard of addr, the master owning its
// slot, creating the shard if needed, and records it as ch's owner. Called
// with mu held.
func (l *shardedPubSub) placeLocked(ctx context.Context, ch, addr string) (*shard, error) {
	if l.n.ctx.Err() != nil {
		return nil, scaler.ErrClosed // close may have run: no new shard
	}
	if sh := l.shards[addr]; sh != nil {
		l.setOwner(ch, sh)
		if err := sh.ps.SSubscribe(ctx, ch); err != nil {
			l.retireLocked(sh) // hands ch back too
			return nil, err
		}
		return sh, nil
	}
	// A new PubSub connects on its first SSUBSCRIBE, to the master of that
	// channel's slot. Its reader starts only after: a PubSub reading with
	// no channel would connect to a random node.
	sh := &shard{l: l, addr: addr, ps: l.cc.SSubscribe(ctx), unsubs: make(map[string]int)}
	if err := sh.ps.SSubscribe(ctx, ch); err != nil {
		sh.ps.Close()
		return nil, err
	}
	l.shards[addr] = sh
	l.setOwner(ch, sh)
	l.wg.Add(1)
	go sh.loop()
	return sh, nil
}

func (l *shardedPubSub) setOwner(ch string, sh *shard) {
	l.omu.Lock()
	l.owner[ch] = sh
	l.omu.Unlock()
}

// retireLocked closes sh for good and hands its channels to the repair
// loop. Called with mu held; idempotent.
func (l *shardedPubSub) retireLocked(sh *shard) {
	l.omu.Lock()
	if sh.dead {
		l.omu.Unlock()
		return
	}
	sh.dead = true
	for ch, o := range l.owner {
		if o == sh {
			delete(l.owner, ch)
		}
	}
	l.omu.Unlock()
	if l.shards[sh.addr] == sh {
		delete(l.shards, sh.addr)
	}
	sh.ps.Close()
	l.n.failBarriers(sh.ps, errLinkDown)
	l.kickRepair()
}

func (l *shardedPubSub) kickRepair() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// repairLoop subscribes, with backoff, the channels the node wants that
// have no shard, until Close.
func (l *shardedPubSub) repairLoop() {
	defer l.wg.Done()
	n := l.n
	log := n.s.cfg.logger
	failures := 0
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-l.kick:
		}
		for {
			// A short pause first: the cluster state go-redis reloads in
			// the background settles, and a flapping shard cannot spin.
			if !backoff(n.ctx, max(failures, 1)) {
				return
			}
			placed, err := l.repair()
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

// repair subscribes every channel the node wants that has no shard. The
// list is read under mu, and Unsubscribe drops an interest before it calls
// unsubscribe, which waits for mu: a channel listed here just before it was
// dropped is unsubscribed after it is placed, never before.
func (l *shardedPubSub) repair() (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n.ctx.Err() != nil {
		return 0, nil
	}
	var todo []string
	want := l.n.channels()
	l.omu.Lock()
	for _, ch := range want {
		if l.owner[ch] == nil {
			todo = append(todo, ch)
		}
	}
	l.omu.Unlock()
	if len(todo) == 0 {
		return 0, nil
	}
	ctx, cancel := l.n.s.callCtx(l.n.ctx)
	defer cancel()
	l.cc.ReloadState(ctx)
	var first error
	placed := 0
	failed := map[string]bool{} // masters that failed this round: skip their other channels
	on := map[*shard][]string{} // where each channel went
	for _, ch := range todo {
		addr, err := l.masterOf(ctx, ch)
		if err == nil && failed[addr] {
			continue
		}
		var sh *shard
		if err == nil {
			sh, err = l.placeLocked(ctx, ch, addr)
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
		if ch != l.n.self {
			on[sh] = append(on[sh], ch)
		}
	}
	// Deliveries of these channels may have been lost while they had no
	// shard: say so once each shard has processed its subscriptions.
	for sh, chs := range on {
		if err := l.n.resubscribed(ctx, sh.ps, chs); err != nil {
			l.retireLocked(sh) // its channels are repaired (and reported) again
			if first == nil {
				first = err
			}
		}
	}
	return placed, first
}

// loop reads sh until it fails or the node closes.
func (sh *shard) loop() {
	n := sh.l.n
	defer sh.l.wg.Done()
	pinged := false
	for {
		msg, err := n.receive(sh.ps, &pinged)
		if err != nil {
			if n.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue // idle: receive pinged
			}
			// A failed ping or an unanswered one: go-redis would reconnect
			// by itself, with one SSUBSCRIBE for all the shard's channels
			// (CROSSSLOT when they span slots): retire the shard instead.
			sh.retire("mongoredis: shard pub/sub failed; resubscribing its channels", err)
			return
		}
		switch m := msg.(type) {
		case *redis.Message:
			n.dispatch(m, sh.carries)
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

// carries tells whether sh still carries ch (asked by node.dispatch).
func (sh *shard) carries(ch string) bool {
	l := sh.l
	l.omu.Lock()
	defer l.omu.Unlock()
	return l.owner[ch] == sh
}

// lost tells whether a sunsubscribe for ch came from Redis (the slot moved)
// rather than confirming our own SUNSUBSCRIBE.
func (sh *shard) lost(ch string) bool {
	l := sh.l
	l.omu.Lock()
	defer l.omu.Unlock()
	if k := sh.unsubs[ch]; k > 0 {
		if k == 1 {
			delete(sh.unsubs, ch)
		} else {
			sh.unsubs[ch] = k - 1
		}
		return false
	}
	return !sh.dead && l.owner[ch] == sh
}

// retire retires sh after its reader failed, unless it is already retired
// or the node is closing.
func (sh *shard) retire(msg string, err error) {
	l := sh.l
	l.mu.Lock()
	defer l.mu.Unlock()
	l.omu.Lock()
	dead := sh.dead
	l.omu.Unlock()
	if dead || l.n.ctx.Err() != nil {
		return
	}
	l.n.s.cfg.logger.Info(msg, "node", l.n.id, "master", sh.addr, "err", err)
	l.retireLocked(sh)
}
