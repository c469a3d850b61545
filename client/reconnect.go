package client

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"slices"
	"time"
)

// Connection attempts, from Dial's first one to every reconnection, and the
// resume that restores the subscriptions on a new link.
//
// A link that does not resume (Dial's) sends "ready" as its first frame, so
// the server delivers the user and session channels at once instead of
// holding them for a second in case a resume comes (docs/protocol.md, "The
// hold of the user and session channels"); a link that resumes sends
// "resume" first. See link.go (dial).

// connectFirst makes Dial's attempts: one per URL, in dialOrder, without
// delay, until one succeeds, one is refused for good, or ctx ends.
func (c *Client) connectFirst(ctx context.Context) (*link, error) {
	var errs []error
	for _, u := range dialOrder(c.urls) {
		l, err := c.connect(ctx, u, c.opts.restore)
		if err == nil {
			return l, nil
		}
		c.log.Debug("sss: connection attempt failed", "url", u, "err", err)
		errs = append(errs, err)
		if permanent(err) || ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 1 {
		return nil, errs[0]
	}
	return nil, &pkgError{errs: errs, list: true}
}

// dialOrder returns the URLs Dial tries, in order: its own first, then each
// of the others once, round robin from a random one (see WithURLs).
func dialOrder(urls []string) []string {
	return append([]string{urls[0]}, rotated(urls[1:])...)
}

// reconnectOrder returns one round of a reconnection's attempts: the URLs
// other than lost (the one whose link dropped), round robin from a random
// one, then lost. Starting at random is what spreads the clients of a dead
// instance over the others: they share one list, and with a fixed successor
// they would all move to the same next URL. lost comes last, so a dead
// instance is tried again only once every other was.
func reconnectOrder(urls []string, lost string) []string {
	others := slices.DeleteFunc(slices.Clone(urls), func(u string) bool { return u == lost })
	order := rotated(others)
	if len(others) < len(urls) {
		order = append(order, lost)
	}
	return order
}

// rotated returns urls in their order, starting from a random one.
func rotated(urls []string) []string {
	if len(urls) == 0 {
		return nil
	}
	k := rand.N(len(urls))
	return append(slices.Clone(urls[k:]), urls[:k]...)
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
		return abort(wrap(ctx.Err(), "waiting for welcome from %s", url))
	}
	if resume {
		resumeOrRestore := c.resume
		if c.opts.restore && !c.restored {
			resumeOrRestore = c.restoreStored
		}
		if err := resumeOrRestore(ctx, l); err != nil {
			return abort(err)
		}
	}
	return l, nil
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
		if l, retry = c.reconnect(err, l.url, retry); l == nil {
			return
		}
	}
}

// stableLink is how long a link must last for the backoff to start over:
// a server that accepts and drops at once is not hammered by one quick
// retry after another.
const stableLink = 30 * time.Second

// reconnect makes attempts, in rounds of reconnectOrder, until one succeeds
// (returned) or the client closes (nil).
// cause is why the link to lost dropped; retry is the backoff step to start
// from, and the step reached is returned.
func (c *Client) reconnect(cause error, lost string, retry int) (*link, int) {
	// 4000: the server is going away and asked for an immediate reconnect,
	// preferably elsewhere, which reconnectOrder gives.
	// 4007: the credentials expired; WithToken gives fresh ones at once.
	immediate := closeCode(cause) == closeShutdown || closeCode(cause) == closeExpired
	order := reconnectOrder(c.urls, lost)
	for attempt := 1; ; attempt++ {
		if !immediate {
			d := backoff(retry, c.opts.minDelay, c.opts.maxDelay)
			retry++
			if c.opts.backoffDrawn != nil {
				c.opts.backoffDrawn(d)
			}
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
		u := order[(attempt-1)%len(order)]
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
			c.finish(wrap(err, "gave up reconnecting after %d attempts", attempt))
			return nil, retry
		}
	}
}

// resumeReq is a resume request, with what its reply is matched against.
type resumeReq struct {
	frame *resumeFrame
	subs  []*Subscription // as listed in frame, by channel
	since []Position      // the positions sent for subs; zero: none sent
}

// resume sends the client's subscriptions on a new link, which it holds
// authoritative, and applies the server's verdict for each when the ack
// comes (applyResume).
func (c *Client) resume(ctx context.Context, l *link) error {
	req := newResumeReq(l, c.heldSubs())
	_, err := l.roundTrip(ctx, req.frame, false, func(l *link, result json.RawMessage, abandoned bool) {
		if !abandoned {
			c.applyResume(l, req, result)
		}
	})
	if errors.Is(err, errNotSent) {
		err = l.reason()
	}
	if err != nil {
		return wrap(err, "resume")
	}
	return nil
}

// heldSubs returns the subscriptions the client holds, by channel.
func (c *Client) heldSubs() []*Subscription {
	c.mu.Lock()
	subs := make([]*Subscription, 0, len(c.subs))
	for _, s := range c.subs {
		subs = append(subs, s)
	}
	c.mu.Unlock()
	slices.SortFunc(subs, func(a, b *Subscription) int { return cmp.Compare(a.channel, b.channel) })
	return subs
}

// newResumeReq lists each subscription with its query and position, then
// the user and session channels that continue the previous connection's
// (welcomeOwn decided) with theirs, so that they catch up too.
func newResumeReq(l *link, subs []*Subscription) *resumeReq {
	req := &resumeReq{
		frame: &resumeFrame{Type: "resume", Subscriptions: make([]resumeEntry, len(subs), len(subs)+2)},
		subs:  subs,
		since: make([]Position, len(subs)),
	}
	for i, s := range subs {
		req.frame.Subscriptions[i] = resumeEntry{Channel: s.channel, Query: s.query, Server: s.Server()}
		// Nothing of the subscription arrives on l before the resume's ack,
		// so the position cannot move meanwhile.
		if req.since[i] = s.Position(); !req.since[i].IsZero() {
			req.frame.Subscriptions[i].Since = &req.since[i]
		}
	}
	for i, ch := range l.ownChannels() {
		if l.ownResume[i] && !l.ownSince[i].IsZero() {
			req.frame.Subscriptions = append(req.frame.Subscriptions, resumeEntry{Channel: ch, Since: &l.ownSince[i]})
		}
	}
	return req
}

// applyResume runs on the read loop at the resume's ack, before any
// publication that follows it: it restores or refuses each subscription,
// places the user and session channels, and queues the events that say so.
func (c *Client) applyResume(l *link, req *resumeReq, result json.RawMessage) {
	var r resumeResult
	if err := json.Unmarshal(result, &r); err != nil {
		l.fail(withDetail(ErrProtocol, "resume result: %v", err))
		return
	}
	results := make(map[string]*subResult, len(r.Subscriptions))
	for i := range r.Subscriptions {
		e := &r.Subscriptions[i]
		results[e.Channel] = e
	}
	var events []func()
	c.mu.Lock()
	for i, s := range req.subs {
		events = c.restoreSub(l, s, req.since[i], results[s.channel], events)
	}
	events = c.restoreOwn(l, results, events)
	c.mu.Unlock()
	for _, ev := range events {
		c.d.push(ev)
	}
}

// restoreSub applies the server's verdict e on s, resumed from since, and
// appends the events it fires. The caller holds c.mu.
func (c *Client) restoreSub(l *link, s *Subscription, since Position, e *subResult, events []func()) []func() {
	if c.subs[s.channel] != s {
		// Unsubscribed while the resume was in flight: the server
		// subscribed it again, undo that.
		if e != nil && e.Error == nil {
			c.sendUnsubscribe(l, s.channel)
		}
		return events
	}
	if e != nil && e.Error != nil && e.Error.Code == CodeNotFound && (s.Server() || e.Server) {
		// A server subscription the server ended while the client was
		// away: an unsubscription, not a refusal.
		return c.endedByServer(s, events)
	}
	if e == nil || e.Error != nil {
		var err error = Errorf(CodeInternal, "subscription missing from the resume reply")
		if e != nil {
			err = e.Error
		}
		delete(c.subs, s.channel)
		return append(events, s.setStatus(SubRefused, err, c.hooks.OnRefused))
	}
	info := outcome(s.channel, KindSubscription, s, since, e)
	s.mu.Lock()
	s.pos, s.recovered = info.Position, info.Recovered
	s.mu.Unlock()
	s.leaving.Store(false) // an unsubscribe that failed is not pending on this link
	s.skips.Store(false)
	events = append(events, s.setStatus(SubSubscribed, nil, nil))
	return c.recoveryEvents(info, events)
}

// restoreOwn places the user and session channels that continue the
// previous connection's, from the resume's results, and appends the events
// of their outcome. The others were placed by the welcome. The caller holds
// c.mu.
func (c *Client) restoreOwn(l *link, results map[string]*subResult, events []func()) []func() {
	for i, ch := range l.ownChannels() {
		if !l.ownResume[i] {
			continue
		}
		since := l.ownSince[i]
		var e *subResult
		if !since.IsZero() {
			e = results[ch] // listed: reported
		}
		info := outcome(ch, ChannelKind(i+1), nil, since, e)
		switch {
		case e != nil:
			c.own[i].pos = info.Position
		case since.IsZero():
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
	return events
}
