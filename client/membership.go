package client

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"slices"
)

// Subscriptions the client did not make in this process: the server's
// (docs/protocol.md, "subscribed"), and those restored from the session
// store (WithRestore). Both are announced by Hooks.OnSubscribed before any
// of their publications.

// Subscriptions returns the subscriptions the client holds, by channel:
// its own, the server's, and those restored from the session store.
func (c *Client) Subscriptions() []*Subscription {
	c.mu.Lock()
	out := make([]*Subscription, 0, len(c.subs))
	for _, s := range c.subs {
		out = append(out, s)
	}
	c.mu.Unlock()
	slices.SortFunc(out, func(a, b *Subscription) int { return cmp.Compare(a.channel, b.channel) })
	return out
}

// routeSubscribed takes a server subscription, on the read loop, before
// any of its publications.
func (c *Client) routeSubscribed(l *link, f *inFrame) {
	r := subResult{Channel: f.Channel, Offset: f.Offset, Epoch: f.Epoch}
	c.mu.Lock()
	if s := c.subs[f.Channel]; s != nil {
		// One of the client's own that the server took over.
		s.server.Store(true)
		c.mu.Unlock()
		return
	}
	s := newSubscription(c, f.Channel, nil)
	s.server.Store(true)
	s.pos = r.position()
	c.subs[f.Channel] = s
	hook := c.hooks.OnSubscribed
	c.mu.Unlock()
	if hook != nil {
		c.d.push(func() { hook(s) })
	}
}

// routeUnsubscribed ends a subscription the server ended.
func (c *Client) routeUnsubscribed(l *link, f *inFrame) {
	c.mu.Lock()
	s := c.subs[f.Channel]
	if s == nil {
		c.mu.Unlock()
		return
	}
	events := c.endedByServer(s, nil)
	c.mu.Unlock()
	for _, ev := range events {
		c.d.push(ev)
	}
}

// endedByServer forgets a subscription the server ended (an unsubscribed
// frame, or a resume answering not_found for a server subscription ended
// while the client was away) and appends the events that say so. The
// caller holds c.mu.
func (c *Client) endedByServer(s *Subscription, events []func()) []func() {
	c.forget(s)
	if ev := s.setStatus(SubUnsubscribed, nil, nil); ev != nil {
		events = append(events, ev)
	}
	if hook := c.hooks.OnUnsubscribed; hook != nil {
		events = append(events, func() { hook(s) })
	}
	return events
}

// restoreStored is the first connection's resume with WithRestore: without
// a list, so that the server restores what it stored for the session, each
// from where the session last stood.
func (c *Client) restoreStored(ctx context.Context, l *link) error {
	_, err := l.roundTrip(ctx, &restoreFrame{Type: "resume"}, false, func(l *link, result json.RawMessage, abandoned bool) {
		if !abandoned {
			c.applyRestore(l, result)
		}
	})
	if errors.Is(err, errNotSent) {
		err = l.reason()
	}
	if err != nil {
		return wrap(err, "restore")
	}
	return nil
}

// applyRestore makes a Subscription of each restored entry, on the read
// loop at the ack, before any of their publications.
func (c *Client) applyRestore(l *link, result json.RawMessage) {
	var r resumeResult
	if err := json.Unmarshal(result, &r); err != nil {
		l.fail(withDetail(ErrProtocol, "resume result: %v", err))
		return
	}
	var events []func()
	c.mu.Lock()
	c.restored = true
	hook := c.hooks.OnSubscribed
	for i := range r.Subscriptions {
		e := &r.Subscriptions[i]
		if e.Error != nil || c.subs[e.Channel] != nil {
			if e.Error != nil {
				c.log.Info("sss: stored subscription not restored", "channel", e.Channel, "err", e.Error)
			}
			continue
		}
		s := newSubscription(c, e.Channel, e.Query)
		s.server.Store(e.Server)
		c.subs[e.Channel] = s
		if hook != nil {
			events = append(events, func() { hook(s) })
		}
		since := Position{}
		if e.Recovered != nil {
			since = e.position() // caught up from a stored position: report how
		}
		info := outcome(e.Channel, KindSubscription, s, since, e)
		s.pos, s.recovered = info.Position, info.Recovered || since.IsZero()
		if !since.IsZero() {
			events = c.recoveryEvents(info, events)
		}
	}
	c.mu.Unlock()
	for _, ev := range events {
		c.d.push(ev)
	}
}
