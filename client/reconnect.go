package client

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
)

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
