package sss

import "sync"

// workers runs the connections' short-lived goroutines (ask and tell
// handlers, the ordered-request worker, parser calls, catch-ups: see
// Conn.spawn) on goroutines that finished their last task and wait for the
// next. A new goroutine starts with a small stack and grows it on the
// handler and reply path, copying it twice, every time: 7% of the server's
// CPU under back-to-back asks. A waiting one has grown it already.
//
// At most maxIdleWorkers wait, the most recently used first (its stack is
// the warmest); more goroutines run when more tasks do, and end after
// their task. stop, at Close or Shutdown, ends the waiting ones and makes
// the running ones end after their task; tasks started after it get a
// goroutine of their own.
type workers struct {
	mu     sync.Mutex
	idle   []chan func()
	closed bool
}

// maxIdleWorkers bounds the goroutines waiting for a task.
const maxIdleWorkers = 32

// run runs f on a waiting goroutine, or on a new one.
func (w *workers) run(f func()) {
	w.mu.Lock()
	if n := len(w.idle); n > 0 {
		next := w.idle[n-1]
		w.idle = w.idle[:n-1]
		w.mu.Unlock()
		next <- f // buffered: never blocks
		return
	}
	closed := w.closed
	w.mu.Unlock()
	if closed {
		go f()
		return
	}
	go w.work(f)
}

// work runs tasks until the pool has enough waiting goroutines or stops.
func (w *workers) work(f func()) {
	var next chan func()
	for {
		f()
		w.mu.Lock()
		if w.closed || len(w.idle) >= maxIdleWorkers {
			w.mu.Unlock()
			return
		}
		if next == nil {
			next = make(chan func(), 1)
		}
		w.idle = append(w.idle, next)
		w.mu.Unlock()
		if f = <-next; f == nil {
			return // stopped
		}
	}
}

// stop ends the waiting goroutines; the running ones end after their task.
func (w *workers) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	for _, next := range w.idle {
		close(next)
	}
	w.idle = nil
}
