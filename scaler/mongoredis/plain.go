package mongoredis

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Plain pub/sub, used with a single Redis or Sentinel: one go-redis PubSub
// carries the node's message channel and its interests' channels, and one
// goroutine reads it and calls the handler in order.

// plainPubSub is a node's one pub/sub connection and its receive loop.
type plainPubSub struct {
	n  *node
	ps *redis.PubSub
	wg sync.WaitGroup // the receive loop

	// mu serialises changes of ps's channels, so that the receive loop's
	// resubscription after an outage cannot resurrect a channel
	// unsubscribe just dropped.
	mu sync.Mutex
}

// joinPlain subscribes the node's message channel, waits for Redis to
// confirm it and starts the receive loop. It returns the pubsub even on
// error, for the caller to close.
func joinPlain(ctx, cctx context.Context, n *node) (*plainPubSub, error) {
	p := &plainPubSub{n: n, ps: n.s.rdb.Subscribe(cctx, n.self)}
	for {
		timeout := n.s.cfg.callTimeout
		if dl, ok := cctx.Deadline(); ok {
			timeout = time.Until(dl)
		}
		if timeout <= 0 {
			return p, n.s.redisErr(ctx, "join", context.DeadlineExceeded)
		}
		msg, err := p.ps.ReceiveTimeout(cctx, timeout)
		if err != nil {
			return p, n.s.redisErr(ctx, "join", err)
		}
		if sub, ok := msg.(*redis.Subscription); ok && sub.Channel == n.self {
			break
		}
	}
	p.wg.Add(1)
	go p.loop()
	return p, nil
}

func (p *plainPubSub) subscribe(ctx context.Context, ch string) (*barrier, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.ps.Subscribe(ctx, ch); err != nil {
		return nil, err
	}
	return p.n.sendBarrier(ctx, p.ps, nil)
}

func (p *plainPubSub) unsubscribe(ctx context.Context, ch string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ps.Unsubscribe(ctx, ch)
}

func (p *plainPubSub) close() {
	p.ps.Close() // unblocks the loop's read; Redis drops the subscriptions
	p.wg.Wait()
}

// loop reads the PubSub connection until Close.
func (p *plainPubSub) loop() {
	defer p.wg.Done()
	n := p.n
	log := n.s.cfg.logger
	failures := 0
	resubscribe, pinged := false, false
	for {
		if n.ctx.Err() != nil {
			return
		}
		if resubscribe {
			// go-redis resubscribes by itself when it reconnects, but not a
			// channel whose SUBSCRIBE failed on a connection it then
			// replaced: subscribe everything again (Redis ignores repeats).
			if err := p.resubscribeAll(); err != nil {
				failures++
				if !backoff(n.ctx, failures) {
					return
				}
				continue
			}
			resubscribe = false
		}
		msg, err := n.receive(p.ps, &pinged)
		if err != nil {
			if n.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue // idle: receive pinged
			}
			n.failBarriers(p.ps, errLinkDown)
			if failures == 0 {
				log.Warn("mongoredis: Redis pub/sub link down; retrying", "node", n.id, "err", err)
			}
			failures++
			resubscribe = true
			if !backoff(n.ctx, failures) {
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
			n.dispatch(m, nil)
		case *redis.Pong:
			n.releaseBarrier(m.Payload)
		}
	}
}

// resubscribeAll subscribes every channel the node wants, after the link
// broke, and a barrier after them that tells the handler, once Redis has
// processed them, that deliveries may have been missed. The list is read
// under mu, and Unsubscribe drops an interest before it calls unsubscribe,
// which waits for mu: a channel listed here just before it was dropped is
// unsubscribed after this SUBSCRIBE, never before it.
func (p *plainPubSub) resubscribeAll() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	ctx, cancel := p.n.s.callCtx(p.n.ctx)
	defer cancel()
	channels := p.n.channels()
	if err := p.ps.Subscribe(ctx, channels...); err != nil {
		return err
	}
	return p.n.resubscribed(ctx, p.ps, channels[1:])
}
