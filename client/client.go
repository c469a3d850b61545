// Package client is the Go client of sss ("Super Scaled Sockets"). It speaks
// the sss.v1 wire protocol (docs/protocol.md) and nothing else: it shares no
// code with the server.
//
// A Client keeps one WebSocket to one server of a cluster. When the link
// drops it reconnects by itself (with backoff and full jitter, failing over
// between the URLs it knows), restores its subscriptions with one resume
// request, and reports each step through callbacks. When the server keeps
// history, the resume catches up exactly: every publication missed on each
// subscription and on the user and session channels is delivered once, in
// order, before the live ones; when that is impossible (history trimmed or
// lost), OnGap says so (see RecoverInfo, Position). Requests in flight when
// the link drops fail with ErrDisconnected; new ones wait for the next link
// within their context (or fail fast, with WithFailFast).
//
// Handlers and callbacks run one at a time, in order, on a goroutine of the
// client's own, never on the goroutine that reads the connection: they may
// call any method of the Client, including Ask and Close.
package client

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
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

// TellHandler receives a tell from the server. ctx ends when the client
// closes. A returned error goes to OnError.
type TellHandler func(ctx context.Context, data json.RawMessage) error

// AskHandler answers an ask from the server. The result is encoded with
// encoding/json (a json.RawMessage is sent as is). Return an *Error to choose
// the code the server sees; any other error is sent as internal. ctx ends
// when the link the ask came on drops, or the client closes.
type AskHandler func(ctx context.Context, data json.RawMessage) (any, error)

// Client is a connection to an sss cluster that survives drops. Its methods
// are safe for concurrent use.
type Client struct {
	opts options
	urls []string
	log  *slog.Logger
	d    *dispatcher

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
	next      int // index in urls of the next attempt
	subs      map[string]*Subscription
	own       [2]ownChan // user and session channels (ownIndex)
	tells     map[string]TellHandler
	asks      map[string]AskHandler
	stats     stats

	onStatus    func(s, old Status)
	onDrop      func(err error)
	onReconnect func(info ConnInfo)
	onError     func(err error)
	onRefused   func(sub *Subscription, err error)
	onUser      func(Message)
	onSession   func(Message)
	onRecover   func(RecoverInfo)
	onGap       func(RecoverInfo)
}

// Dial connects to the sss server at url (ws:// or wss://; http(s) works
// too) and returns once the server welcomed the connection. With WithURLs,
// the other URLs are tried in turn if url fails; Dial makes one attempt per
// URL, without delay, and stops early on a refusal (HTTP 4xx: see
// HandshakeError). Later drops are handled by reconnecting, per the options.
//
// ctx bounds Dial only, not the Client's life.
func Dial(ctx context.Context, url string, opts ...Option) (*Client, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if o.httpClient == nil {
		o.httpClient = http.DefaultClient
	}
	c := &Client{
		opts:     o,
		log:      o.logger,
		closing:  make(chan struct{}),
		askSlots: make(chan struct{}, o.maxAsks),
		readyCh:  make(chan struct{}),
		subs:     make(map[string]*Subscription),
		tells:    make(map[string]TellHandler),
		asks:     make(map[string]AskHandler),
	}
	c.readyOpen = true
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	for _, u := range append([]string{url}, o.urls...) {
		if u != "" && !slices.Contains(c.urls, u) {
			c.urls = append(c.urls, u)
		}
	}
	if len(c.urls) == 0 {
		return nil, errors.New("sss: no server URL")
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.d = newDispatcher(o.msgBuffer, c.handlerPanic)
	for _, fn := range o.init {
		fn(c)
	}

	var errs []error
	for range c.urls {
		u := c.nextURL()
		l, err := c.connect(ctx, u, false)
		if err == nil {
			c.linkUp(l, false)
			c.wg.Add(1)
			go c.run(l)
			return c, nil
		}
		c.log.Debug("sss: connection attempt failed", "url", u, "err", err)
		errs = append(errs, err)
		if permanent(err) || ctx.Err() != nil {
			break
		}
	}
	err := errs[len(errs)-1]
	if len(errs) > 1 {
		err = errors.Join(errs...)
	}
	c.finish(err)
	c.wg.Wait()
	if !c.d.stop() {
		<-c.d.done
	}
	return nil, err
}

// connect makes one connection attempt: handshake, welcome and, when resume
// is set, the resume request that restores the subscriptions.
func (c *Client) connect(ctx context.Context, url string, resume bool) (*link, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.dialTimeout)
	defer cancel()
	l, err := c.dial(ctx, url, resume)
	if err != nil {
		return nil, err
	}
	abort := func(err error) (*link, error) {
		l.fail(err)
		<-l.done
		return nil, err
	}
	select {
	case <-l.welcomed:
	case <-l.done:
		return nil, l.reason()
	case <-ctx.Done():
		return abort(fmt.Errorf("sss: waiting for welcome from %s: %w", url, ctx.Err()))
	}
	if resume {
		if err := c.resume(ctx, l); err != nil {
			return abort(err)
		}
	}
	return l, nil
}

func (c *Client) nextURL() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	u := c.urls[c.next%len(c.urls)]
	c.next = (c.next + 1) % len(c.urls)
	return u
}

// run watches the current link and replaces it when it drops, until the
// client closes.
func (c *Client) run(l *link) {
	defer c.wg.Done()
	retry := 0 // backoff step; carried over while links do not last
	for {
		up := time.Now()
		select {
		case <-l.done:
		case <-c.closing:
			l.closeGracefully()
			<-l.done
			return
		}
		err := l.reason()
		c.log.Info("sss: link dropped", "url", l.url, "conn", l.info.ID, "err", err)
		if permanent(err) {
			c.linkDown(err, true)
			c.finish(err)
			return
		}
		c.linkDown(err, false)
		if time.Since(up) >= stableLink {
			retry = 0
		}
		if l, retry = c.reconnect(err, retry); l == nil {
			return
		}
	}
}

// stableLink is how long a link must last for the backoff to start over:
// a server that accepts and drops at once is not hammered by one quick
// retry after another.
const stableLink = 30 * time.Second

// reconnect makes attempts until one succeeds (returned) or the client
// closes (nil). retry is the backoff step to start from; the step reached is
// returned.
func (c *Client) reconnect(cause error, retry int) (*link, int) {
	// 4000: the server is going away and asked for an immediate reconnect,
	// preferably elsewhere, which the round robin gives.
	immediate := closeCode(cause) == closeShutdown
	for attempt := 1; ; attempt++ {
		if !immediate {
			d := backoff(retry, c.opts.minDelay, c.opts.maxDelay)
			retry++
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-c.ctx.Done():
				t.Stop()
				return nil, retry
			}
		}
		immediate = false
		// Handlers far behind would refuse the catch-up the resume brings,
		// and the new link would drop at once: let them catch up first.
		if err := c.d.waitRoom(c.ctx); err != nil {
			return nil, retry
		}
		u := c.nextURL()
		l, err := c.connect(c.ctx, u, true)
		if err == nil {
			c.log.Info("sss: reconnected", "url", u, "conn", l.info.ID, "attempts", attempt)
			c.linkUp(l, true)
			return l, retry
		}
		if c.ctx.Err() != nil {
			return nil, retry
		}
		c.log.Debug("sss: reconnection attempt failed", "url", u, "attempt", attempt, "err", err)
		if permanent(err) {
			c.finish(err)
			return nil, retry
		}
		if c.opts.maxAttempts > 0 && attempt >= c.opts.maxAttempts {
			c.finish(fmt.Errorf("sss: gave up reconnecting after %d attempts: %w", attempt, err))
			return nil, retry
		}
	}
}

// resume sends the client's subscriptions on a new link, which it holds
// authoritative, and applies the server's verdict for each.
func (c *Client) resume(ctx context.Context, l *link) error {
	c.mu.Lock()
	subs := make([]*Subscription, 0, len(c.subs))
	for _, s := range c.subs {
		subs = append(subs, s)
	}
	c.mu.Unlock()
	slices.SortFunc(subs, func(a, b *Subscription) int { return cmp.Compare(a.channel, b.channel) })
	since := make([]Position, len(subs))
	f := &resumeFrame{Type: "resume", Subscriptions: make([]resumeEntry, len(subs), len(subs)+2)}
	for i, s := range subs {
		f.Subscriptions[i] = resumeEntry{Channel: s.channel, Query: s.query}
		// Nothing of the subscription arrives on l before the resume's ack,
		// so the position cannot move meanwhile.
		if since[i] = s.Position(); !since[i].IsZero() {
			f.Subscriptions[i].Since = &since[i]
		}
	}
	// The user and session channels, when they are the previous
	// connection's (welcomeOwn decided), catch up from their positions too.
	for i, ch := range l.ownChannels() {
		if l.ownResume[i] && !l.ownSince[i].IsZero() {
			f.Subscriptions = append(f.Subscriptions, resumeEntry{Channel: ch, Since: &l.ownSince[i]})
		}
	}
	_, err := l.roundTrip(ctx, f, false, func(l *link, result json.RawMessage, abandoned bool) {
		if !abandoned {
			c.applyResume(l, subs, since, result)
		}
	})
	if errors.Is(err, errNotSent) {
		err = l.reason()
	}
	if err != nil {
		return fmt.Errorf("sss: resume: %w", err)
	}
	return nil
}

// applyResume runs on the read loop, before any publication that follows
// the resume's ack. since holds the positions sent for subs.
func (c *Client) applyResume(l *link, subs []*Subscription, since []Position, result json.RawMessage) {
	var r resumeResult
	if err := json.Unmarshal(result, &r); err != nil {
		l.fail(fmt.Errorf("%w: resume result: %v", ErrProtocol, err))
		return
	}
	results := make(map[string]*subResult, len(r.Subscriptions))
	for i := range r.Subscriptions {
		e := &r.Subscriptions[i]
		results[e.Channel] = e
	}
	var events []func()
	c.mu.Lock()
	for i, s := range subs {
		e := results[s.channel]
		if c.subs[s.channel] != s {
			// Unsubscribed while the resume was in flight: the server
			// subscribed it again, undo that.
			if e != nil && e.Error == nil {
				c.sendUnsubscribe(l, s.channel)
			}
			continue
		}
		switch {
		case e == nil:
			err := Errorf(CodeInternal, "subscription missing from the resume reply")
			delete(c.subs, s.channel)
			events = append(events, s.setStatus(SubRefused, err, c.onRefused))
		case e.Error != nil:
			delete(c.subs, s.channel)
			events = append(events, s.setStatus(SubRefused, e.Error, c.onRefused))
		default:
			info := outcome(s.channel, KindSubscription, s, since[i], e)
			s.mu.Lock()
			s.pos, s.recovered = info.Position, info.Recovered
			s.mu.Unlock()
			s.leaving.Store(false) // an unsubscribe that failed is not pending on this link
			events = append(events, s.setStatus(SubSubscribed, nil, nil))
			events = c.recoveryEvents(info, events)
		}
	}
	for i, ch := range l.ownChannels() {
		if !l.ownResume[i] {
			continue
		}
		var e *subResult
		if !l.ownSince[i].IsZero() {
			e = results[ch] // listed: reported
		}
		info := outcome(ch, ChannelKind(i+1), nil, l.ownSince[i], e)
		switch {
		case e != nil:
			c.own[i].pos = info.Position
		case l.ownSince[i].IsZero():
			// Not listed: live from the welcome's position.
			info.Position = l.positions[ch]
			c.own[i].pos = info.Position
		default:
			// Listed but not reported: the position stays, publications
			// that arrive move it on.
			info.Position = c.own[i].pos
		}
		events = c.recoveryEvents(info, events)
	}
	c.mu.Unlock()
	for _, ev := range events {
		if ev != nil {
			c.d.push(ev)
		}
	}
}

// sendUnsubscribe tells the server to drop a subscription the client no
// longer holds; the ack is not awaited. Losing it is harmless: the next
// resume is authoritative.
func (c *Client) sendUnsubscribe(l *link, channel string) {
	b, _ := json.Marshal(&unsubscribeFrame{Type: "unsubscribe", ID: c.nextID.Add(1), Channel: channel})
	l.sendNoWait(b)
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
	onReconnect := c.onReconnect
	info := l.info
	c.mu.Unlock()
	c.d.push(ev)
	if reconnected {
		c.stats.reconnects.Add(1)
		c.d.push(func() {
			if onReconnect != nil {
				onReconnect(info)
			}
		})
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
	onDrop := c.onDrop
	events = append(events, func() {
		if onDrop != nil {
			onDrop(err)
		}
	})
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

// setStatusLocked changes the status and returns the callback event.
func (c *Client) setStatusLocked(s Status) func() {
	old := c.status
	if old == s {
		return nil
	}
	c.status = s
	fn := c.onStatus
	return func() {
		if fn != nil {
			fn(s, old)
		}
	}
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

// OnStatusChange sets the callback for status changes.
func (c *Client) OnStatusChange(fn func(s, old Status)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onStatus = fn
}

// OnDrop sets the callback for a dropped link (not one ended by Close), with
// the reason: a *CloseError when the server closed it (4006: it could not
// keep a channel exact; the client resumes, and OnRecover and OnGap tell
// the outcome), ErrLinkTimeout when it went silent, a network error. The status then becomes Reconnecting, or
// Closed if the reason is final (Err tells).
func (c *Client) OnDrop(fn func(err error)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onDrop = fn
}

// OnReconnect sets the callback for a successful reconnection; it runs after
// every subscription was restored or reported refused, and after the
// outcomes of their catch-up (OnRecover, OnGap).
func (c *Client) OnReconnect(fn func(info ConnInfo)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onReconnect = fn
}

// OnError sets the callback for errors that belong to no request: an error
// frame about the connection, a tell handler's error, a handler's panic, a
// tell with no handler.
func (c *Client) OnError(fn func(err error)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onError = fn
}

// OnRefused sets the callback for a subscription the server refused to
// restore after a reconnect (access revoked, say). The subscription is then
// in status SubRefused and no longer held.
func (c *Client) OnRefused(fn func(sub *Subscription, err error)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onRefused = fn
}

// OnUserMessage sets the handler for publications to the user's channel
// (sss Server.PublishUser), which every connection of a user holds.
func (c *Client) OnUserMessage(fn func(Message)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onUser = fn
}

// OnSessionMessage sets the handler for publications to the session's
// channel (sss Server.PublishSession).
func (c *Client) OnSessionMessage(fn func(Message)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onSession = fn
}

// HandleTell sets the handler for the server's tells named name, replacing
// any. Tells run on the client's handler goroutine, in order with
// publications.
func (c *Client) HandleTell(name string, fn TellHandler) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if fn == nil {
		delete(c.tells, name)
		return
	}
	c.tells[name] = fn
}

// HandleAsk sets the handler for the server's asks named name, replacing
// any. Each ask runs on its own goroutine (an answer may take a while, such
// as a user's confirmation); an ask with no handler is answered not_found, a
// panicking handler internal.
func (c *Client) HandleAsk(name string, fn AskHandler) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if fn == nil {
		delete(c.asks, name)
		return
	}
	c.asks[name] = fn
}

// Ask calls the server's ask handler name with req (encoded with
// encoding/json) and decodes its result into resp (unless resp is nil). A
// refusal is an *Error: test it with errors.Is(err, ErrNotFound) and the
// like. ctx bounds the whole call, including the wait for a link and for a
// free concurrency slot.
func (c *Client) Ask(ctx context.Context, name string, req, resp any) error {
	data, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("sss: ask %q: encode request: %w", name, err)
	}
	res, err := c.do(ctx, &callFrame{Type: "ask", Name: name, Data: data}, true, nil)
	if err != nil {
		return fmt.Errorf("sss: ask %q: %w", name, err)
	}
	if resp != nil && len(res) > 0 {
		if err := json.Unmarshal(res, resp); err != nil {
			return fmt.Errorf("sss: ask %q: decode result: %w", name, err)
		}
	}
	return nil
}

// Tell sends data to the server's tell handler name and returns once the
// server acknowledged it (the handler runs after).
func (c *Client) Tell(ctx context.Context, name string, data any) error {
	b, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("sss: tell %q: encode: %w", name, err)
	}
	if _, err := c.do(ctx, &callFrame{Type: "tell", Name: name, Data: b}, true, nil); err != nil {
		return fmt.Errorf("sss: tell %q: %w", name, err)
	}
	return nil
}

// Publish publishes an event to a channel and returns once the cluster
// accepted it. The server must allow client publications (its publish
// parser), else the error matches ErrForbidden.
func (c *Client) Publish(ctx context.Context, channel, event string, data any) error {
	b, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("sss: publish to %q: encode: %w", channel, err)
	}
	f := &publishFrame{Type: "publish", Channel: channel, Event: event, Data: b}
	if _, err := c.do(ctx, f, false, nil); err != nil {
		return fmt.Errorf("sss: publish to %q: %w", channel, err)
	}
	return nil
}

// do sends a request on the current link, waiting for one per the options,
// and returns the server's result.
//
// An ask or tell refused with rate_limited is sent again after a short
// jittered delay (at most maxRateRetries times, within ctx): the server ran
// nothing, and the refusal can come although the client keeps to the
// concurrency limit, because the server frees a slot a moment after its
// reply, and holds one while a tell's handler runs after the ack.
func (c *Client) do(ctx context.Context, req request, counted bool, onAck func(*link, json.RawMessage, bool)) (json.RawMessage, error) {
	for retries := 0; ; {
		l, err := c.link(ctx)
		if err != nil {
			return nil, err
		}
		res, err := l.roundTrip(ctx, req, counted, onAck)
		if errors.Is(err, errNotSent) {
			continue // the link died first; the next one may take it
		}
		if counted && errors.Is(err, ErrRateLimited) && retries < maxRateRetries {
			d := backoff(retries, rateRetryMin, rateRetryMax)
			retries++
			c.log.Debug("sss: rate_limited, retrying", "retry", retries, "delay", d)
			t := time.NewTimer(d)
			select {
			case <-t.C:
				continue
			case <-ctx.Done():
				t.Stop()
			}
		}
		return res, err
	}
}

// Retries of a request refused with rate_limited.
const (
	maxRateRetries = 8
	rateRetryMin   = 5 * time.Millisecond
	rateRetryMax   = time.Second
)

// link returns the current link, waiting for one unless failing fast.
func (c *Client) link(ctx context.Context) (*link, error) {
	for {
		c.mu.Lock()
		if c.status == StatusClosed {
			err := c.err
			c.mu.Unlock()
			if errors.Is(err, ErrClosed) {
				return nil, ErrClosed
			}
			return nil, fmt.Errorf("%w: %w", ErrClosed, err)
		}
		if l := c.ready; l != nil {
			c.mu.Unlock()
			return l, nil
		}
		if c.opts.failFast {
			c.mu.Unlock()
			return nil, ErrDisconnected
		}
		ch := c.readyCh
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// routePub hands a publication to its subscription's handlers. It runs on
// the read loop, so the lookup is ordered with subscribe and resume acks,
// and so are the positions: a publication not past its channel's position
// is dropped, and one from an unexpected epoch is reported as a gap first.
func (c *Client) routePub(l *link, f *inFrame) {
	if l.dropping {
		return // the link is going: what is not delivered, the resume sends again
	}
	sub := f.Sub
	if sub == "" {
		sub = f.Channel
	}
	m := Message{Channel: f.Channel, Sub: sub, Event: f.Event, Data: f.Data, From: f.From}
	var p Position
	if f.Offset != nil && f.Epoch != "" {
		p = Position{Offset: *f.Offset, Epoch: f.Epoch}
		m.Offset, m.Epoch = p.Offset, p.Epoch
	}
	kind := KindSubscription
	var s *Subscription
	switch {
	case sub == l.info.UserChannel && sub != "":
		kind = KindUser
	case sub == l.info.SessionChannel && sub != "":
		kind = KindSession
	default:
		c.mu.Lock()
		s = c.subs[sub]
		deeper := s != nil && c.deeperHeld(sub, f.Channel)
		c.mu.Unlock()
		if s == nil {
			c.log.Debug("sss: publication for no subscription", "channel", f.Channel, "sub", sub)
			return
		}
		if deeper {
			// The protocol delivers a publication once, through the most
			// specific subscription: this one comes through the other too.
			c.stats.duplicates.Add(1)
			c.log.Debug("sss: publication through an ancestor subscription dropped", "channel", f.Channel, "sub", sub, "offset", p.Offset)
			return
		}
	}
	pos := c.positionOf(kind, s)
	ok, epochChanged := accept(pos, p)
	if !ok {
		c.stats.duplicates.Add(1)
		c.log.Debug("sss: duplicate publication dropped", "channel", f.Channel, "sub", sub, "offset", p.Offset, "position", pos)
		return
	}
	if epochChanged {
		info := epochGap(sub, kind, s, pos, p)
		c.mu.Lock()
		if s != nil {
			s.mu.Lock()
			s.recovered = false
			s.mu.Unlock()
		}
		events := c.recoveryEvents(info, nil)
		c.mu.Unlock()
		for _, ev := range events {
			c.d.push(ev)
		}
	}
	var fn func()
	switch kind {
	case KindUser:
		fn = func() {
			c.mu.Lock()
			h := c.onUser
			c.mu.Unlock()
			if h != nil {
				h(m)
			}
		}
	case KindSession:
		fn = func() {
			c.mu.Lock()
			h := c.onSession
			c.mu.Unlock()
			if h != nil {
				h(m)
			}
		}
	default:
		fn = func() { s.deliver(m) }
	}
	if p.IsZero() {
		c.queue(l, fn)
		return
	}
	// The position moves before the handler can run (Position is never
	// behind a message handled), and back if the publication is refused
	// here: it comes again after the resume.
	if epochChanged {
		pos = Position{Offset: p.Offset - 1, Epoch: p.Epoch}
	}
	c.setPositionOf(kind, s, p)
	if !c.queue(l, fn) {
		c.setPositionOf(kind, s, pos)
	}
}

// deeperHeld reports whether the client holds a subscription below sub that
// channel belongs to, not being unsubscribed: the server delivers channel's
// publications through that one. Subscriptions count from their ack, which
// the server sends after it stopped delivering through sub. The caller holds
// c.mu.
func (c *Client) deeperHeld(sub, channel string) bool {
	if len(channel) <= len(sub)+1 || channel[len(sub)] != '.' || channel[:len(sub)] != sub {
		return false
	}
	for i := len(sub) + 1; i <= len(channel); i++ {
		if i == len(channel) || channel[i] == '.' {
			if d := c.subs[channel[:i]]; d != nil && !d.leaving.Load() {
				return true
			}
		}
	}
	return false
}

// positionOf returns where a channel the link receives stands.
func (c *Client) positionOf(kind ChannelKind, s *Subscription) Position {
	if s != nil {
		return s.Position()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.own[ownIndex(kind)].pos
}

// setPositionOf moves a channel's position; on the read loop.
func (c *Client) setPositionOf(kind ChannelKind, s *Subscription, p Position) {
	if s != nil {
		s.setPosition(p)
		return
	}
	c.mu.Lock()
	c.own[ownIndex(kind)].pos = p
	c.mu.Unlock()
}

// queue hands a message handler to the dispatcher, dropping the link if the
// handlers are too far behind; it reports whether fn was queued. After a
// refusal, nothing more from the link is delivered, so that no publication
// overtakes the one refused.
func (c *Client) queue(l *link, fn func()) bool {
	err := c.d.pushMsg(fn)
	if errors.Is(err, errQueueFull) {
		c.log.Warn("sss: handlers too slow, dropping the link", "buffer", c.opts.msgBuffer)
		l.dropping = true
		c.emitError(ErrSlowConsumer)
		l.fail(ErrSlowConsumer)
	}
	return err == nil
}

// routeTell queues a server tell for its handler.
func (c *Client) routeTell(l *link, f *inFrame) {
	if l.dropping {
		return
	}
	name, data := f.Name, f.Data
	c.queue(l, func() {
		c.mu.Lock()
		h := c.tells[name]
		c.mu.Unlock()
		if h == nil {
			c.log.Warn("sss: tell with no handler", "name", name)
			c.callOnError(Errorf(CodeNotFound, "no tell handler %q", name))
			return
		}
		if err := h(c.ctx, data); err != nil {
			c.callOnError(fmt.Errorf("sss: tell handler %q: %w", name, err))
		}
	})
}

// serveAsk answers a server ask on its own goroutine.
func (c *Client) serveAsk(l *link, f *inFrame) {
	id, name, data := f.ID, f.Name, f.Data
	c.mu.Lock()
	h := c.asks[name]
	c.mu.Unlock()
	if h == nil {
		l.send(encodeReply(id, nil, Errorf(CodeNotFound, "no ask handler %q", name)))
		return
	}
	select {
	case c.askSlots <- struct{}{}:
	default:
		l.send(encodeReply(id, nil, Errorf(CodeRateLimited, "more than %d server asks at once", cap(c.askSlots))))
		return
	}
	go func() {
		defer func() { <-c.askSlots }()
		res, err := c.runAsk(l.ctx, name, h, data)
		b := encodeReply(id, res, err)
		if max := l.info.Limits.MaxMessage; max > 0 && len(b) > max {
			b = encodeReply(id, nil, Errorf(CodeTooLarge, "reply of %d bytes exceeds the server's limit of %d", len(b), max))
		}
		l.send(b)
	}()
}

func (c *Client) runAsk(ctx context.Context, name string, h AskHandler, data json.RawMessage) (res any, err error) {
	defer func() {
		if v := recover(); v != nil {
			c.log.Error("sss: ask handler panicked", "name", name, "panic", v, "stack", string(debug.Stack()))
			res, err = nil, Errorf(CodeInternal, "ask handler panicked")
			c.d.push(func() { c.callOnError(fmt.Errorf("sss: ask handler %q panicked: %v", name, v)) })
		}
	}()
	return h(ctx, data)
}

// encodeReply encodes the reply to a server ask.
func encodeReply(id uint64, res any, err error) []byte {
	f := replyFrame{Type: "reply", ID: id}
	if err == nil {
		b, merr := json.Marshal(res)
		if merr == nil {
			f.Result = b
		} else {
			err = Errorf(CodeInternal, "cannot encode the result: %v", merr)
		}
	}
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			e = &Error{Code: CodeInternal, Message: err.Error()}
		}
		f.Error = e
	}
	b, _ := json.Marshal(&f)
	return b
}

// handlerPanic is called on the handler goroutine when a handler or callback
// panicked; the client goes on.
func (c *Client) handlerPanic(v any) {
	c.log.Error("sss: handler panicked", "panic", v, "stack", string(debug.Stack()))
	c.callOnError(fmt.Errorf("sss: handler panicked: %v", v))
}

// callOnError calls the OnError callback; on the handler goroutine only.
func (c *Client) callOnError(err error) {
	c.mu.Lock()
	fn := c.onError
	c.mu.Unlock()
	if fn == nil {
		return
	}
	defer func() {
		if v := recover(); v != nil {
			c.log.Error("sss: OnError callback panicked", "panic", v)
		}
	}()
	fn(err)
}

// emitError queues a call of the OnError callback.
func (c *Client) emitError(err error) {
	c.d.push(func() { c.callOnError(err) })
}
