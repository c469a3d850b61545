package client

import (
	"errors"
	"time"
)

// Routing of what the server pushes: publications to their subscription or
// to the user and session hooks, tells to their handler (server asks are in
// handlers.go). Routing runs on the read loop, so it is ordered with the
// acks of subscribe and resume; the handlers run later, on the dispatcher.

// dest is where a publication goes: a subscription, or the user or session
// channel (sub nil).
type dest struct {
	kind ChannelKind
	sub  *Subscription
}

// broadcastChannel is the reserved channel of the server's broadcasts.
const broadcastChannel = "$all"

// routePub hands a publication to its subscription's handlers, or to the
// user, session or broadcast hook. A publication not past its channel's position is
// dropped, and one from an unexpected epoch is reported as a gap first.
func (c *Client) routePub(l *link, f *inFrame) {
	if l.dropping {
		return // the link is going: what is not delivered, the resume sends again
	}
	m, p := pubMessage(f)
	if m.Sub == broadcastChannel {
		// A broadcast: transient, unnumbered, for every connection.
		if h := c.hooks.OnBroadcast; h != nil {
			c.queue(l, func() { h(m) })
		}
		return
	}
	d, ok := c.destination(l, m)
	if !ok {
		return
	}
	back, ok := c.admit(d, m, p)
	if !ok {
		return
	}
	c.deliverPub(l, d, m, p, back)
}

// pubMessage turns a pub frame into the Message handlers get, and its
// position (zero when the server keeps no history).
func pubMessage(f *inFrame) (Message, Position) {
	sub := f.Sub
	if sub == "" {
		sub = f.Channel
	}
	m := Message{Channel: f.Channel, Sub: sub, Event: f.Event, Data: f.Data, From: f.From}
	if f.Time > 0 {
		m.Time = time.UnixMilli(f.Time)
	}
	var p Position
	if f.Offset != nil && f.Epoch != "" {
		p = Position{Offset: *f.Offset, Epoch: f.Epoch}
		m.Offset, m.Epoch = p.Offset, p.Epoch
	}
	return m, p
}

// destination finds where m goes; false drops it: no subscription holds
// it, or a deeper one does, through which it comes too.
func (c *Client) destination(l *link, m Message) (dest, bool) {
	switch {
	case m.Sub == l.info.UserChannel && m.Sub != "":
		return dest{kind: KindUser}, true
	case m.Sub == l.info.SessionChannel && m.Sub != "":
		return dest{kind: KindSession}, true
	}
	c.mu.Lock()
	s := c.subs[m.Sub]
	deeper := s != nil && c.deeperHeld(m.Sub, m.Channel)
	c.mu.Unlock()
	if s == nil {
		c.log.Debug("sss: publication for no subscription", "channel", m.Channel, "sub", m.Sub)
		return dest{}, false
	}
	if deeper {
		// The protocol delivers a publication once, through the most
		// specific subscription: this one comes through the other too.
		c.stats.duplicates.Add(1)
		c.log.Debug("sss: publication through an ancestor subscription dropped", "channel", m.Channel, "sub", m.Sub, "offset", m.Offset)
		return dest{}, false
	}
	return dest{kind: KindSubscription, sub: s}, true
}

// admit compares the publication's position p with its channel's: false
// drops a duplicate. A publication from another epoch is admitted after
// its gap is reported. back is where the channel's position returns if the
// publication cannot be queued.
func (c *Client) admit(d dest, m Message, p Position) (back Position, ok bool) {
	pos := c.positionOf(d.kind, d.sub)
	ok, epochChanged := accept(pos, p)
	if !ok {
		c.stats.duplicates.Add(1)
		c.log.Debug("sss: duplicate publication dropped", "channel", m.Channel, "sub", m.Sub, "offset", p.Offset, "position", pos)
		return pos, false
	}
	var info RecoverInfo
	switch {
	case epochChanged:
		info = epochGap(m.Sub, d.kind, d.sub, pos, p)
	case !pos.IsZero() && !p.IsZero() && p.Offset > pos.Offset+1 && !c.maySkip(d):
		info = jumpGap(m.Sub, d.kind, d.sub, pos, p)
	default:
		return pos, true
	}
	c.mu.Lock()
	if d.sub != nil {
		d.sub.mu.Lock()
		d.sub.recovered = false
		d.sub.mu.Unlock()
	}
	events := c.recoveryEvents(info, nil)
	c.mu.Unlock()
	for _, ev := range events {
		c.d.push(ev)
	}
	// Were it refused, the publication would come again after the resume:
	// the position goes back to just before it.
	return info.Position, true
}

// maySkip reports whether a channel's offsets may jump without a loss: a
// subscription with a deeper one (now, or since its position was last set)
// does not see the offsets of what came through that one.
func (c *Client) maySkip(d dest) bool {
	if d.sub == nil {
		return false // the user and session channels are flat
	}
	if d.sub.skips.Load() {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for ch := range c.subs {
		if isAncestor(d.sub.channel, ch) {
			return true
		}
	}
	return false
}

// deliverPub queues m for its handler. The position moves before the
// handler can run (Position is never behind a message handled), and back if
// the dispatcher refuses it: it comes again after the resume.
func (c *Client) deliverPub(l *link, d dest, m Message, p Position, back Position) {
	var fn func()
	switch d.kind {
	case KindUser:
		h := c.hooks.OnUserMessage
		fn = func() {
			if h != nil {
				h(m)
			}
		}
	case KindSession:
		h := c.hooks.OnSessionMessage
		fn = func() {
			if h != nil {
				h(m)
			}
		}
	default:
		s := d.sub
		fn = func() { s.deliver(m) }
	}
	if p.IsZero() {
		c.queue(l, fn)
		return
	}
	c.setPositionOf(d.kind, d.sub, p)
	if !c.queue(l, fn) {
		c.setPositionOf(d.kind, d.sub, back)
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
		c.log.Warn("sss: handlers too slow, dropping the link", "queue", c.opts.receiveQueue)
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
			c.callOnError(wrap(err, "tell handler %q", name))
		}
	})
}
