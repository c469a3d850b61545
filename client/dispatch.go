package client

import (
	"context"
	"errors"
	"sync"
)

// dispatcher runs the application's handlers and callbacks one at a time, in
// the order the events happened, on its own goroutine: never on a read loop,
// so a handler may call Ask (whose answer the read loop must read) without
// deadlocking, and a slow handler never delays another request's reply.
//
// Messages (publications, tells) are bounded: the read loop never waits for
// room, so a link whose handlers fall more than maxMsgs behind is dropped as
// a slow consumer and resumed, the same policy as the server's. Lifecycle
// events (status changes, drops, refusals) are never refused, so the
// goroutine that reconnects never waits for a handler; there are a handful
// per connection attempt, which bounds them in practice.
type dispatcher struct {
	mu       sync.Mutex
	q        []event
	nmsgs    int
	maxMsgs  int
	wake     chan struct{} // capacity 1: the queue is not empty
	room     chan struct{} // capacity 1: a message was handled
	stopping bool          // drop messages, run the remaining lifecycle events, exit
	running  bool          // a handler is running now
	done     chan struct{}
	recover  func(v any)
}

type event struct {
	fn  func()
	msg bool
}

// Why pushMsg refused a message.
var (
	errQueueFull = errors.New("queue full")
	errStopping  = errors.New("stopping")
)

func newDispatcher(maxMsgs int, recover func(v any)) *dispatcher {
	d := &dispatcher{
		maxMsgs: maxMsgs,
		wake:    make(chan struct{}, 1),
		room:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		recover: recover,
	}
	go d.loop()
	return d
}

// pushMsg queues a message handler without waiting: it fails with
// errQueueFull when maxMsgs are waiting, errStopping after stop.
func (d *dispatcher) pushMsg(fn func()) error {
	d.mu.Lock()
	switch {
	case d.stopping:
		d.mu.Unlock()
		return errStopping
	case d.nmsgs >= d.maxMsgs:
		d.mu.Unlock()
		return errQueueFull
	}
	d.q = append(d.q, event{fn: fn, msg: true})
	d.nmsgs++
	d.mu.Unlock()
	d.signal()
	return nil
}

// push queues a lifecycle event; it never waits. A nil fn is ignored (a
// hook that is not set). Events pushed after the dispatcher exited are
// dropped.
func (d *dispatcher) push(fn func()) {
	if fn == nil {
		return
	}
	d.mu.Lock()
	d.q = append(d.q, event{fn: fn})
	d.mu.Unlock()
	d.signal()
}

func (d *dispatcher) signal() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// stop makes the dispatcher drop queued messages, run the lifecycle events
// still queued (and those pushed meanwhile), and exit. It reports whether a
// handler is running now: then the caller should not wait for done, since
// that handler may be the one calling Close.
func (d *dispatcher) stop() (running bool) {
	d.mu.Lock()
	if !d.stopping {
		d.stopping = true
		kept := d.q[:0]
		for _, ev := range d.q {
			if !ev.msg {
				kept = append(kept, ev)
			}
		}
		clear(d.q[len(kept):])
		d.q = kept
		d.nmsgs = 0
	}
	running = d.running
	d.mu.Unlock()
	d.signal()
	return running
}

// waitRoom waits until at most half of maxMsgs messages are waiting (or the
// dispatcher stops), within ctx. The client calls it before reconnecting
// after a slow-consumer drop: a resume would catch up on what was missed at
// once, and drop the new link too if the handlers had no room for it.
func (d *dispatcher) waitRoom(ctx context.Context) error {
	for {
		d.mu.Lock()
		ok := d.nmsgs <= d.maxMsgs/2 || d.stopping
		d.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-d.room:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (d *dispatcher) loop() {
	defer close(d.done)
	for {
		d.mu.Lock()
		for len(d.q) == 0 {
			if d.stopping {
				d.mu.Unlock()
				return
			}
			d.mu.Unlock()
			<-d.wake
			d.mu.Lock()
		}
		ev := d.q[0]
		d.q[0] = event{}
		d.q = d.q[1:]
		if ev.msg {
			d.nmsgs--
			select {
			case d.room <- struct{}{}:
			default:
			}
		}
		d.running = true
		d.mu.Unlock()

		d.run(ev.fn)

		d.mu.Lock()
		d.running = false
		d.mu.Unlock()
	}
}

func (d *dispatcher) run(fn func()) {
	defer func() {
		if v := recover(); v != nil {
			d.recover(v)
		}
	}()
	fn()
}
