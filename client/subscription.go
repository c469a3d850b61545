package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// SubStatus is the state of a Subscription.
type SubStatus int32

const (
	// SubSubscribed: the server holds the subscription; messages flow.
	SubSubscribed SubStatus = iota
	// SubResubscribing: the link dropped; the subscription will be restored
	// on the next connection.
	SubResubscribing
	// SubRefused: final. The server refused to restore it after a reconnect;
	// Err says why (errors.Is(err, ErrForbidden), say).
	SubRefused
	// SubUnsubscribed: final. Unsubscribe was called, or the client closed.
	SubUnsubscribed
)

// String returns the status in lower case, as in "subscribed".
func (s SubStatus) String() string {
	switch s {
	case SubSubscribed:
		return "subscribed"
	case SubResubscribing:
		return "resubscribing"
	case SubRefused:
		return "refused"
	case SubUnsubscribed:
		return "unsubscribed"
	}
	return fmt.Sprintf("SubStatus(%d)", int32(s))
}

// Message is a publication received on a channel.
type Message struct {
	// Channel is the channel it was published to.
	Channel string
	// Sub is the subscription that matched: Channel itself or an ancestor
	// (a subscription to "news" receives "news.uk"), or the connection's
	// user or session channel.
	Sub string
	// Event is the name the publisher gave; it may be empty.
	Event string
	// Data is the JSON payload.
	Data json.RawMessage
	// From is the client that published, stamped by the server; zero when
	// the server published.
	From Sender
	// Time is when the server accepted the publication (zero from a server
	// that does not say).
	Time time.Time
	// Offset and Epoch are the publication's position in the stream of Sub
	// (not of Channel), when the server keeps history; zero otherwise.
	// Within an epoch, the offsets a subscription receives increase.
	Offset uint64
	Epoch  string
}

// Decode decodes the message's data into v with encoding/json.
func (m Message) Decode(v any) error {
	if len(m.Data) == 0 {
		return json.Unmarshal([]byte("null"), v)
	}
	return json.Unmarshal(m.Data, v)
}

// Subscription is the client's subscription to a channel. It survives
// reconnects: the client restores it on every new connection until
// Unsubscribe, a refusal, or Close.
//
// It takes its callbacks the way the Client does. Its hooks (SubHooks:
// status changes, gaps) are given once, to Subscribe, and do not change.
// Its message handlers are given to Subscribe too (WithEventHandler,
// WithMessageHandler), so that they are in place for the first publication
// after the ack, and may be changed later with HandleEvent and
// HandleMessage, as the Client's ask and tell handlers are with HandleAsk
// and HandleTell.
type Subscription struct {
	c       *Client
	channel string
	query   json.RawMessage
	hooks   SubHooks // fixed at Subscribe: read without a lock

	mu      sync.Mutex
	status  SubStatus
	err     error
	on      map[string]func(Message)
	onAny   func(Message)
	onJoin  func(ClientInfo)
	onLeave func(ClientInfo)
	// pos is where the subscription stands in its channel's stream: set by
	// the subscribe or resume ack, moved on by each publication received
	// (on the read loop).
	pos       Position
	recovered bool // the last catch-up was exact (true until one was not)
	// leaving is set when an unsubscribe is sent: from then on the server
	// may deliver the channel's publications through an ancestor.
	leaving atomic.Bool
	// skips: since pos was last set by an ack, a deeper subscription ended,
	// so this one's offsets may jump over what was delivered through it.
	skips atomic.Bool
	// server: the server made it (it tells with a "subscribed" frame); only
	// the server ends it.
	server atomic.Bool
}

// Server reports whether the server made the subscription (sss
// Server.Subscribe, or channels named at login): the client did not ask
// for it and cannot unsubscribe it. Hooks.OnSubscribed tells of each.
func (s *Subscription) Server() bool { return s.server.Load() }

// newSubscription returns a subscription the client did not make in this
// process: made by the server, or restored from the session store.
func newSubscription(c *Client, channel string, query json.RawMessage) *Subscription {
	return &Subscription{c: c, channel: channel, query: query, on: make(map[string]func(Message)), recovered: true}
}

// SubHooks are a subscription's callbacks, given to Subscribe with
// WithSubHooks. Each may be nil. They run on the client's handler goroutine,
// in order with the message handlers and the client's Hooks.
type SubHooks struct {
	// OnStatusChange runs when the subscription's status changes.
	OnStatusChange func(st, old SubStatus)

	// OnGap runs when publications were lost on this subscription (the
	// client's Hooks.OnGap runs too, after it): the application should
	// reload what it derives from the channel. It runs before the
	// publications that follow the gap are delivered.
	OnGap func(RecoverInfo)
}

// SubscribeOption configures Subscribe. An invalid one makes Subscribe fail
// with an error that matches ErrInvalidConfig, before anything is sent.
type SubscribeOption func(*subOptions) error

type subOptions struct {
	query    json.RawMessage
	since    *Position
	hooks    SubHooks
	hooksSet bool
	on       map[string]func(Message)
	onAny    func(Message)
	onJoin   func(ClientInfo)
	onLeave  func(ClientInfo)
}

// WithQuery sends q (encoded with encoding/json) with the subscription: the
// server's subscription parser receives it (a password, a filter, a token).
// It is sent again on every reconnect.
func WithQuery(q any) SubscribeOption {
	return func(o *subOptions) error {
		b, err := json.Marshal(q)
		if err != nil {
			return &pkgError{errs: []error{ErrInvalidConfig, wrap(err, "WithQuery")}}
		}
		o.query = b
		return nil
	}
}

// WithSince starts the subscription after p instead of at the channel's
// current position: every publication after p is delivered first, once and
// in order (p typically comes from History). When that is impossible (the
// publications after p are gone), the subscription starts at the channel's
// position and its SubHooks.OnGap and the client's Hooks.OnGap say so.
func WithSince(p Position) SubscribeOption {
	return func(o *subOptions) error {
		if p.IsZero() {
			return invalid("WithSince: a position needs an epoch")
		}
		o.since = &p
		return nil
	}
}

// WithSubHooks sets the subscription's hooks (see SubHooks). It may be given
// once.
func WithSubHooks(h SubHooks) SubscribeOption {
	return func(o *subOptions) error {
		if o.hooksSet {
			return invalid("WithSubHooks given twice: pass one SubHooks")
		}
		o.hooks, o.hooksSet = h, true
		return nil
	}
}

// WithEventHandler sets the handler for the messages with the given event,
// in place before the first message can arrive; Subscription.HandleEvent
// changes it later. A nil fn or an event given twice is an error.
func WithEventHandler(event string, fn func(Message)) SubscribeOption {
	return func(o *subOptions) error {
		switch {
		case fn == nil:
			return invalid("WithEventHandler(%q, nil)", event)
		case o.on[event] != nil:
			return invalid("WithEventHandler(%q) given twice", event)
		}
		o.on[event] = fn
		return nil
	}
}

// WithMessageHandler sets the handler for the messages whose event has no
// handler of its own: a catch-all, in place before the first message can
// arrive; Subscription.HandleMessage changes it later. A nil fn, or the
// option given twice, is an error.
func WithMessageHandler(fn func(Message)) SubscribeOption {
	return func(o *subOptions) error {
		switch {
		case fn == nil:
			return invalid("WithMessageHandler(nil)")
		case o.onAny != nil:
			return invalid("WithMessageHandler given twice")
		}
		o.onAny = fn
		return nil
	}
}

// Subscribe subscribes to channel and returns once the server acknowledged
// it. If the link drops meanwhile, it is sent again on the next one (unless
// WithFailFast). The server may refuse: errors.Is(err, ErrForbidden)
// (parser or reserved channel), ErrConflict (already subscribed),
// ErrBadRequest (invalid name), ErrLimitExceeded. Messages are delivered
// from the acknowledgement on; give handlers as options to be sure to see
// the first ones.
func (c *Client) Subscribe(ctx context.Context, channel string, opts ...SubscribeOption) (*Subscription, error) {
	o := subOptions{on: make(map[string]func(Message))}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, wrap(err, "subscribe to %q", channel)
		}
	}
	s := &Subscription{c: c, channel: channel, query: o.query, hooks: o.hooks, on: o.on, onAny: o.onAny, onJoin: o.onJoin, onLeave: o.onLeave, recovered: true}
	f := &subscribeFrame{Type: "subscribe", Channel: channel, Query: s.query, Since: o.since}
	onAck := func(l *link, result json.RawMessage, abandoned bool) {
		var r subResult
		if len(result) > 0 {
			if err := json.Unmarshal(result, &r); err != nil {
				c.log.Warn("sss: invalid subscribe result", "channel", channel, "err", err)
			}
		}
		// Before any publication of the subscription: the read loop runs
		// onAck before the next frame.
		s.mu.Lock()
		s.pos = r.position()
		s.mu.Unlock()
		if r.Reason != "" {
			c.log.Debug("sss: subscribed", "channel", channel, "reason", r.Reason)
		}
		c.mu.Lock()
		if abandoned || c.status == StatusClosed {
			c.mu.Unlock()
			// Nobody will hold this subscription: drop it on the server too.
			c.sendUnsubscribe(l, channel)
			return
		}
		// The server acknowledges only a channel it did not hold, so an older
		// Subscription still listed here is stale: the new one replaces it.
		var ev func()
		if old := c.subs[channel]; old != nil {
			ev = old.setStatus(SubUnsubscribed, nil, nil)
		}
		c.subs[channel] = s
		var events []func()
		if o.since != nil {
			// Whether the publications after since could all be delivered.
			info := outcome(channel, KindSubscription, s, *o.since, &r)
			s.mu.Lock()
			s.recovered = info.Recovered
			s.mu.Unlock()
			events = c.recoveryEvents(info, events)
		}
		c.mu.Unlock()
		if ev != nil {
			c.d.push(ev)
		}
		for _, e := range events {
			c.d.push(e)
		}
	}
	for {
		_, err := c.do(ctx, f, false, onAck)
		if errors.Is(err, ErrDisconnected) && !c.opts.failFast && ctx.Err() == nil {
			// Unlike an ask, a subscribe is safe to send again: the next
			// link's resume did not include it, whatever the old one did.
			continue
		}
		if err != nil {
			return nil, wrap(err, "subscribe to %q", channel)
		}
		return s, nil
	}
}

// Channel returns the channel subscribed to.
func (s *Subscription) Channel() string { return s.channel }

// Query returns the query sent with the subscription, or nil.
func (s *Subscription) Query() json.RawMessage { return s.query }

// Status returns the subscription's state now.
func (s *Subscription) Status() SubStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// Err returns why the subscription ended: the server's refusal for
// SubRefused, the client's close reason when it closed; nil otherwise.
func (s *Subscription) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Position returns where the subscription stands in its channel's stream:
// the position of the last publication received, or where the last
// subscribe or resume placed it. Zero when the server keeps no history.
func (s *Subscription) Position() Position {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pos
}

// Recovered reports whether the subscription's catch-up after the last
// reconnect was exact: every publication since the previous connection was
// delivered. It is true until a reconnect, and false after a gap
// (SubHooks.OnGap: a reconnect that lost publications, or a publication
// from an unexpected epoch) until the next exact catch-up.
func (s *Subscription) Recovered() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.recovered
}

// HandleEvent sets the handler for messages with the given event,
// replacing any; a nil fn removes it. Set the first one with
// WithEventHandler to be sure to see the first messages.
func (s *Subscription) HandleEvent(event string, fn func(Message)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fn == nil {
		delete(s.on, event)
		return
	}
	s.on[event] = fn
}

// HandleMessage sets the handler for messages whose event has no handler of
// its own (HandleEvent): a catch-all, replacing any; nil removes it. Set the
// first one with WithMessageHandler to be sure to see the first messages.
func (s *Subscription) HandleMessage(fn func(Message)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onAny = fn
}

// Unsubscribe ends the subscription. While disconnected it only forgets it:
// the next connection's resume will not ask for it. Unsubscribing a
// subscription that already ended does nothing.
func (s *Subscription) Unsubscribe(ctx context.Context) error {
	if s.Server() {
		return wrap(Errorf(CodeForbidden, "the server made this subscription: only the server ends it"), "unsubscribe from %q", s.channel)
	}
	c := s.c
	c.mu.Lock()
	if c.subs[s.channel] != s {
		c.mu.Unlock()
		return nil
	}
	l := c.ready
	if l == nil {
		c.mu.Unlock()
		c.dropSub(s)
		return nil
	}
	s.leaving.Store(true)
	c.mu.Unlock()
	f := &unsubscribeFrame{Type: "unsubscribe", Channel: s.channel}
	_, err := l.roundTrip(ctx, f, false, func(*link, json.RawMessage, bool) { c.dropSub(s) })
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNotFound), errors.Is(err, errNotSent), errors.Is(err, ErrDisconnected):
		// The server does not hold it (any more), or the link is gone and
		// the next resume will leave it out.
		c.dropSub(s)
		return nil
	}
	return wrap(err, "unsubscribe from %q", s.channel)
}

// dropSub forgets s after Unsubscribe.
func (c *Client) dropSub(s *Subscription) {
	c.mu.Lock()
	if c.subs[s.channel] != s {
		c.mu.Unlock()
		return
	}
	c.forget(s)
	ev := s.setStatus(SubUnsubscribed, nil, nil)
	c.mu.Unlock()
	if ev != nil {
		c.d.push(ev)
	}
}

// forget removes s from the subscriptions held, whoever ended it (the
// client, or the server). The ancestors' offsets may then jump over what
// came through s. The caller holds c.mu.
func (c *Client) forget(s *Subscription) {
	delete(c.subs, s.channel)
	for ch, a := range c.subs {
		if isAncestor(ch, s.channel) {
			a.skips.Store(true)
		}
	}
}

// isAncestor reports whether a is a strict ancestor of b ("news" of "news.uk").
func isAncestor(a, b string) bool {
	return len(b) > len(a) && b[len(a)] == '.' && b[:len(a)] == a
}

// sendUnsubscribe tells the server to drop a subscription the client no
// longer holds; the ack is not awaited. Losing it is harmless: the next
// resume is authoritative.
func (c *Client) sendUnsubscribe(l *link, channel string) {
	b, _ := json.Marshal(&unsubscribeFrame{Type: "unsubscribe", ID: c.nextID.Add(1), Channel: channel})
	l.sendNoWait(b)
}

// setStatus changes the status and returns the hooks' event, or nil. The
// caller holds c.mu. onRefused is the client's refusal hook, for
// SubRefused.
func (s *Subscription) setStatus(st SubStatus, err error, onRefused func(*Subscription, error)) func() {
	s.mu.Lock()
	old := s.status
	if old == st || old == SubRefused || old == SubUnsubscribed {
		s.mu.Unlock()
		return nil // final states stay
	}
	s.status, s.err = st, err
	s.mu.Unlock()
	fn := s.hooks.OnStatusChange
	if fn == nil && (onRefused == nil || st != SubRefused) {
		return nil
	}
	return func() {
		if fn != nil {
			fn(st, old)
		}
		if onRefused != nil && st == SubRefused {
			onRefused(s, err)
		}
	}
}

// setPosition records where the subscription stands; on the read loop.
func (s *Subscription) setPosition(p Position) {
	s.mu.Lock()
	s.pos = p
	s.mu.Unlock()
}

// deliver runs the handler for m; on the handler goroutine.
func (s *Subscription) deliver(m Message) {
	s.mu.Lock()
	if s.status == SubUnsubscribed || s.status == SubRefused {
		s.mu.Unlock()
		return // ended after m was received: its handlers expect nothing more
	}
	h := s.on[m.Event]
	if h == nil {
		h = s.onAny
	}
	s.mu.Unlock()
	if h != nil {
		h(m)
	}
}
