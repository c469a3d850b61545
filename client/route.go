package client

import (
	"errors"
	"fmt"
)

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
