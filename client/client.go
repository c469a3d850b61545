package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Status is the state of a Client's connection.
type Status int32

const (
	// StatusConnecting: Dial is making the first connection.
	StatusConnecting Status = iota
	// StatusConnected: the link is up (and, after a reconnect, the
	// subscriptions are restored).
	StatusConnected
	// StatusReconnecting: the link dropped; the client is trying again.
	StatusReconnecting
	// StatusClosed: final. Client.Err says why.
	StatusClosed
)

// String returns the status in lower case, as in "connected".
func (s Status) String() string {
	switch s {
	case StatusConnecting:
		return "connecting"
	case StatusConnected:
		return "connected"
	case StatusReconnecting:
		return "reconnecting"
	case StatusClosed:
		return "closed"
	}
	return fmt.Sprintf("Status(%d)", int32(s))
}

// ConnInfo describes one connection, from the server's welcome frame.
type ConnInfo struct {
	URL            string // the server URL it was made to
	ID             string // the connection id, unique in the cluster
	Session        string // the session id the server's session parser named (random when anonymous)
	User           string // the user id; empty when anonymous
	UserChannel    string // the connection's user channel; empty when anonymous
	SessionChannel string // the connection's session channel
	Ping, Pong     time.Duration
	Limits         Limits
}

// Client is a connection to an sss cluster that survives drops. Its methods
// are safe for concurrent use.
type Client struct {
	opts  options
	hooks Hooks    // fixed at Dial: read without a lock
	urls  []string // fixed at Dial: the Dial URL, then WithURLs'
	log   *slog.Logger
	d     *dispatcher

	// ctx ends on Close or when the client closes for good: it stops
	// connection attempts and is the context of tell handlers.
	ctx       context.Context
	cancel    context.CancelFunc
	closing   chan struct{} // Close was called
	closeOnce sync.Once
	wg        sync.WaitGroup // run loop and link goroutines
	nextID    atomic.Uint64
	askSlots  chan struct{} // server asks being handled

	mu        sync.Mutex
	status    Status
	err       error // why the client closed
	ready     *link // nil while not connected
	readyCh   chan struct{}
	readyOpen bool // readyCh is not closed yet
	info      ConnInfo
	subs      map[string]*Subscription
	own       [2]ownChan // user and session channels (ownIndex)
	tells     map[string]TellHandler
	asks      map[string]AskHandler
	stats     stats
	restored  bool // the first connection restored the stored subscriptions (WithRestore); under mu
}

// Dial connects to the sss server at url (ws:// or wss://; http(s) works
// too) and returns once the server welcomed the connection. With WithURLs,
// the other URLs are tried if url fails (see WithURLs for the order); Dial
// makes one attempt per URL, without delay, and stops early on a refusal
// (HTTP 4xx: see HandshakeError). Later drops are handled by reconnecting,
// per the options.
//
// An invalid option or URL fails Dial at once with an error that matches
// ErrInvalidConfig. ctx bounds Dial only, not the Client's life.
func Dial(ctx context.Context, url string, opts ...Option) (*Client, error) {
	o := defaultOptions()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	if err := checkURL(url); err != nil {
		return nil, invalid("Dial: %v", err)
	}
	c := &Client{
		opts:      o,
		hooks:     o.hooks,
		log:       o.logger,
		closing:   make(chan struct{}),
		askSlots:  make(chan struct{}, o.concurrency),
		readyCh:   make(chan struct{}),
		readyOpen: true,
		subs:      make(map[string]*Subscription),
		tells:     o.tells,
		asks:      o.asks,
	}
	for _, u := range append([]string{url}, o.urls...) {
		if !slices.Contains(c.urls, u) {
			c.urls = append(c.urls, u)
		}
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.d = newDispatcher(o.receiveQueue, c.handlerPanic)

	l, err := c.connectFirst(ctx)
	if err != nil {
		c.finish(err)
		c.wg.Wait()
		if !c.d.stop() {
			<-c.d.done
		}
		return nil, err
	}
	c.linkUp(l, false)
	c.wg.Add(1)
	go c.run(l)
	return c, nil
}

// linkUp makes l the current link.
func (c *Client) linkUp(l *link, reconnected bool) {
	c.mu.Lock()
	if c.status == StatusClosed {
		c.mu.Unlock()
		l.fail(ErrClosed)
		return
	}
	if l.ctx.Err() != nil {
		// Already dead: run notices, reports the drop and reconnects.
		c.mu.Unlock()
		return
	}
	c.ready = l
	c.info = l.info
	if c.readyOpen {
		close(c.readyCh)
		c.readyOpen = false
	}
	ev := c.setStatusLocked(StatusConnected)
	info := l.info
	c.mu.Unlock()
	if ev != nil {
		c.d.push(ev)
	}
	if reconnected {
		c.stats.reconnects.Add(1)
		if fn := c.hooks.OnReconnect; fn != nil {
			c.d.push(func() { fn(info) })
		}
	}
}

// unready withdraws l as the current link, so that requests wait for the
// next one. It is called as soon as l fails.
func (c *Client) unready(l *link) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ready == l {
		c.ready = nil
		if c.status != StatusClosed {
			c.readyCh = make(chan struct{})
			c.readyOpen = true
		}
	}
}

// linkDown reports a drop. Unless final, the client reconnects: the status
// becomes Reconnecting and the subscriptions Resubscribing.
func (c *Client) linkDown(err error, final bool) {
	var events []func()
	c.mu.Lock()
	if c.status == StatusClosed {
		c.mu.Unlock()
		return
	}
	if fn := c.hooks.OnDrop; fn != nil {
		events = append(events, func() { fn(err) })
	}
	if !final {
		events = append(events, c.setStatusLocked(StatusReconnecting))
		for _, s := range c.subs {
			events = append(events, s.setStatus(SubResubscribing, nil, nil))
		}
	}
	c.mu.Unlock()
	for _, ev := range events {
		if ev != nil {
			c.d.push(ev)
		}
	}
}

// finish closes the client for good with reason err. Idempotent.
func (c *Client) finish(err error) {
	var events []func()
	c.mu.Lock()
	if c.status == StatusClosed {
		c.mu.Unlock()
		return
	}
	c.err = err
	events = append(events, c.setStatusLocked(StatusClosed))
	if c.readyOpen {
		close(c.readyCh) // wakes the requests waiting for a link: they see Closed
		c.readyOpen = false
	}
	c.ready = nil
	for ch, s := range c.subs {
		delete(c.subs, ch)
		events = append(events, s.setStatus(SubUnsubscribed, err, nil))
	}
	c.mu.Unlock()
	c.cancel()
	for _, ev := range events {
		if ev != nil {
			c.d.push(ev)
		}
	}
	c.d.stop() // runs the events above, then exits
	if errors.Is(err, ErrClosed) {
		c.log.Debug("sss: client closed")
	} else {
		c.log.Warn("sss: client closed for good", "err", err)
	}
}

// setStatusLocked changes the status and returns the hook's event, or nil.
// The caller holds c.mu.
func (c *Client) setStatusLocked(s Status) func() {
	old := c.status
	if old == s {
		return nil
	}
	c.status = s
	fn := c.hooks.OnStatusChange
	if fn == nil {
		return nil
	}
	return func() { fn(s, old) }
}

func (c *Client) isClosing() bool {
	select {
	case <-c.closing:
		return true
	default:
		return false
	}
}

// Close closes the connection with a normal close frame and stops the
// client for good: every goroutine of the client has ended when it returns,
// except a handler still running (its context is cancelled), so that a
// handler may call Close. Requests in flight fail with ErrClosed. Close is
// idempotent.
func (c *Client) Close() error {
	first := false
	c.closeOnce.Do(func() {
		first = true
		close(c.closing)
		c.cancel()
	})
	if !first {
		return nil
	}
	c.wg.Wait()
	c.finish(ErrClosed)
	if !c.d.stop() {
		<-c.d.done
	}
	return nil
}

// Status returns the connection's state now.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status
}

// Err returns why the client closed: ErrClosed after Close, or the error
// that stopped it for good (a *HandshakeError for a refused session, a
// *CloseError with code 4500–4999, or the last error after WithMaxAttempts).
// It is nil while the client is not closed.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// ID returns the id of the current connection, or "" while disconnected.
func (c *Client) ID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ready == nil {
		return ""
	}
	return c.info.ID
}

// Conn describes the current connection or, while disconnected, the last one.
func (c *Client) Conn() ConnInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.info
}
