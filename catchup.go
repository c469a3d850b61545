package sss

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/superscaled/sss/scaler"
)

// Catch-up and resume. When the scaler keeps history, every subscription
// starts "held": live deliveries are buffered (hub.go's deliver calls
// sub.hold) while the server reads what the client missed from history,
// sends it, and only then releases the buffer, skipping what history
// already gave. Because live delivery is established before history is
// read, nothing falls between the two, and because both are ordered by
// offset, the client sees every publication once, in order.
//
// A subscription goes through: attach (hub.go, held) → prepare (decide
// the start, read the first page) → the ack → goLive (send the page,
// release the buffer) → catchUpLater (the rest, paced on the send queue)
// when there is more.

// sub is one connection's subscription to one stream.
type sub struct {
	c       *Conn
	channel string
	query   []byte // client subscriptions: what to re-authorise on restore
	server  bool   // made by the server (membership.go); under c.smu

	held atomic.Bool // deliveries go to buf, not to the connection
	// present: the connection is in the channel's presence (presence.go).
	present atomic.Bool

	// mu is taken after the channel's lock and before the connection's
	// subscription and queue locks (catch-up sends under it).
	mu       sync.Mutex
	buf      []scaler.Delivery
	overflow bool // buf outgrew its bound and was dropped; history has it all
	gone     bool // unsubscribed: catch-up sends nothing more
	// base is where the client stood when the subscription last went live:
	// it has every publication up to it. A repair never sends it those.
	base scaler.Position
	// upTo is base's offset, read without mu by deliver: the live feed may
	// lag what history gave (the backend wrote history before this node
	// read the deliveries), so a delivery at or below it is dropped.
	upTo atomic.Uint64
}

// drop marks the subscription gone. Catch-up sends under mu, so nothing of
// it is queued after drop returns (and so after the unsubscribe's ack).
func (sb *sub) drop() {
	sb.mu.Lock()
	sb.gone = true
	sb.buf = nil
	sb.mu.Unlock()
}

// hold buffers d if the subscription is held; it reports false when the
// caller must deliver d itself.
func (sb *sub) hold(d scaler.Delivery) bool {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if !sb.held.Load() {
		return false
	}
	if sb.overflow || sb.gone {
		return true
	}
	if len(sb.buf) >= sb.c.srv.cfg.sendQueue {
		sb.buf, sb.overflow = nil, true
		return true
	}
	sb.buf = append(sb.buf, d)
	return true
}

// release sends what was buffered after pos and makes the subscription
// live. It returns false, leaving it held, when history must be read further
// first: the buffer overflowed, or does not follow pos without a hole.
func (sb *sub) release(pos scaler.Position) (bool, error) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.gone {
		return true, nil
	}
	if sb.overflow {
		sb.overflow = false
		return false, nil
	}
	out := sb.buf[:0:0]
	next := pos.Offset + 1
	for _, d := range sb.buf {
		switch {
		case d.Offset == 0 || pos.Epoch == "": // transient: not numbered
		case d.Epoch != pos.Epoch:
			return false, errEpochChanged
		case d.Offset < next:
			continue // history gave it already
		case d.Offset > next:
			return false, nil // history must fill the hole first
		default:
			next++
		}
		out = append(out, d)
	}
	frames := make([][]byte, 0, len(out))
	size := 0
	for _, d := range out {
		if sb.coveredDeeper(d.Pub) || d.Pub.Except == sb.c.id {
			continue
		}
		f := encodeDelivery(d)
		frames = append(frames, f)
		size += len(f)
	}
	if !sb.c.fits(len(frames), size) {
		// Releasing all this at once would overflow the send queue: drop
		// it and let catch-up read it from history, paced.
		sb.buf = nil
		return false, nil
	}
	for _, f := range frames {
		sb.c.send(f, false)
	}
	sb.buf = nil
	if pos.Epoch != "" {
		sb.base = scaler.Position{Offset: next - 1, Epoch: pos.Epoch}
		sb.upTo.Store(next - 1)
	}
	sb.held.Store(false)
	return true, nil
}

// repairFrom is where a repair after deliveries missed since from must
// start for this subscription: from, unless the client stands further.
func (sb *sub) repairFrom(from scaler.Position) scaler.Position {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.base.Epoch == from.Epoch && sb.base.Offset > from.Offset {
		return sb.base
	}
	return from
}

var errEpochChanged = errors.New("sss: the channel's history was reset during catch-up")

// coveredDeeper reports whether the connection gets pub through a more
// specific subscription than this one.
func (sb *sub) coveredDeeper(pub *scaler.Publication) bool {
	return pub.Channel != sb.channel && sb.c.holdsDeeper(sb.channel, pub.Channel)
}

// sendHistory queues a publication read from history, unless a more
// specific subscription of the connection carries it.
func (sb *sub) sendHistory(e scaler.Entry, epoch string) {
	if !sb.coveredDeeper(e.Pub) && e.Pub.Except != sb.c.id {
		sb.c.send(encodeDelivery(scaler.Delivery{Stream: sb.channel, Pub: e.Pub, Offset: e.Offset, Epoch: epoch}), false)
	}
}

// historyPage is how many publications are read from history at a time.
const historyPage = 100

// maxCatchUpPages bounds the pages one catch-up reads: history is bounded,
// so more pages than this means publishers outrun the client.
const maxCatchUpPages = 10000

// historyLag is how long a catch-up waits before reading history again when
// the live feed is ahead of what history returned.
const historyLag = 10 * time.Millisecond

// recovery is the outcome of starting a subscription, reported in its ack.
type recovery struct {
	// Position is where the client stands before the publications that
	// follow the ack: its own position when recovered, else the stream's
	// current one. Zero without history.
	Position scaler.Position
	// Recovered says every publication after the client's position will be
	// delivered. False means some were lost: the client must reload.
	Recovered bool
	Reason    string
}

// startPlan is a held subscription about to go live: what to tell the
// client, and the history to send first.
type startPlan struct {
	sb      *sub
	r       recovery
	entries []scaler.Entry
	epoch   string
	last    scaler.Position // where the client stands after entries
	more    bool            // history may hold more than entries
	live    bool            // no history: release the buffer as it is
}

// result is what the ack says of the plan; asked says the client gave a
// position to catch up from.
func (p startPlan) result(asked bool) subResult {
	r := subResult{Channel: p.sb.channel, Epoch: p.r.Position.Epoch, Reason: p.r.Reason, Server: p.sb.server}
	if r.Epoch != "" {
		r.Offset = &p.r.Position.Offset
	}
	if asked {
		r.Recovered = &p.r.Recovered
	}
	return r
}

// prepare decides how a held subscription starts: from the stream's
// current position, or from since when the client asks to catch up. It reads
// the first page of history but sends nothing.
func (s *Server) prepare(ctx context.Context, sb *sub, since *scaler.Position) startPlan {
	p := startPlan{sb: sb}
	hist := s.history()
	if hist == nil {
		p.live, p.r.Recovered = true, since == nil
		if since != nil {
			p.r.Reason = "the server keeps no history"
		}
		return p
	}
	limit := historyPage
	from := scaler.Position{}
	if since != nil {
		from = *since
	} else {
		limit = 0
	}
	entries, top, err := hist.Since(ctx, sb.channel, from, limit)
	if err == nil || errors.Is(err, scaler.ErrPositionLost) {
		s.hub.noteStart(sb.channel, top)
	}
	switch {
	case err == nil && since != nil:
		p.r = recovery{Position: from, Recovered: true}
		p.entries, p.epoch, p.more = entries, top.Epoch, len(entries) == limit
		p.last = from
		if n := len(entries); n > 0 {
			p.last.Offset = entries[n-1].Offset
		}
	case errors.Is(err, scaler.ErrPositionLost) && since != nil && since.Epoch != top.Epoch && s.fromEpochStart(ctx, &p, top):
		// The history was reset (the backend lost it): what the old epoch
		// had after the client's position is gone, but the new epoch is
		// all there, and follows.
	case err == nil || errors.Is(err, scaler.ErrPositionLost):
		p.r, p.last = recovery{Position: top, Recovered: since == nil}, top
		if since != nil {
			p.r.Reason = "publications were lost: the position is too old"
		}
	default:
		// The backend is down: deliver live from now on, and say that what
		// happened meanwhile is unknown.
		s.stats.scalerErrors.Add(1)
		s.log.Warn("sss: history unavailable", "channel", sb.channel, "err", err)
		p.live, p.r = true, recovery{Reason: "history unavailable"}
	}
	return p
}

// fromEpochStart plans a subscription whose position is from an epoch that
// is gone to start at the beginning of the current epoch, when history
// still holds it from its first publication. It reports false otherwise.
func (s *Server) fromEpochStart(ctx context.Context, p *startPlan, top scaler.Position) bool {
	entries, now, err := s.history().Since(ctx, p.sb.channel, scaler.Position{}, historyPage)
	if err != nil || now.Epoch != top.Epoch || (len(entries) > 0 && entries[0].Offset != 1) ||
		(len(entries) == 0 && now.Offset != 0) {
		return false
	}
	start := scaler.Position{Epoch: now.Epoch}
	p.r = recovery{Position: start, Reason: "the channel's history was reset: publications before the reset were lost; those after it follow"}
	p.entries, p.epoch, p.more, p.last = entries, now.Epoch, len(entries) == historyPage, start
	if n := len(entries); n > 0 {
		p.last.Offset = entries[n-1].Offset
	}
	return true
}

// goLive sends the plan's history and makes the subscription live, handing
// the rest of a long catch-up to a goroutine of the connection's.
func (s *Server) goLive(p startPlan) {
	sb := p.sb
	if p.live {
		sb.release(scaler.Position{})
		return
	}
	for _, e := range p.entries {
		sb.sendHistory(e, p.epoch)
	}
	if !p.more {
		done, err := sb.release(p.last)
		if err != nil {
			sb.c.close(CloseResync, "channel history reset", ErrResync)
		}
		if done || err != nil {
			return
		}
	}
	s.catchUpLater(sb, p.last)
}

// catchUpLater pages through history from pos on a goroutine owned by the
// connection, pacing itself on the send queue, then releases the buffer.
func (s *Server) catchUpLater(sb *sub, pos scaler.Position) {
	c := sb.c
	c.spawn(func() {
		if err := s.catchUp(sb, pos); err != nil && c.ctx.Err() == nil {
			s.log.Warn("sss: catch-up failed", "conn", c.id, "channel", sb.channel, "err", err)
			// The client's view of the channel can no longer be made exact:
			// make it reconnect and resume, which reports recovered or not.
			c.close(CloseResync, "catch-up failed", ErrResync)
		}
	})
}

func (s *Server) catchUp(sb *sub, pos scaler.Position) error {
	hist := s.history()
	c := sb.c
	for range maxCatchUpPages {
		if err := c.waitRoom(); err != nil {
			return err
		}
		var entries []scaler.Entry
		var top scaler.Position
		err := retry(c.ctx, func(ctx context.Context) (err error) {
			entries, top, err = hist.Since(ctx, sb.channel, pos, historyPage)
			return err
		}, s.cfg.askTimeout)
		if err != nil {
			return err
		}
		sb.mu.Lock()
		if sb.gone {
			sb.mu.Unlock()
			return nil
		}
		for _, e := range entries {
			sb.sendHistory(e, top.Epoch)
			pos.Offset = e.Offset
		}
		sb.mu.Unlock()
		if len(entries) < historyPage {
			if done, err := sb.release(pos); done || err != nil {
				return err
			}
			if len(entries) == 0 {
				select { // the live feed is ahead of what history returned
				case <-time.After(historyLag):
				case <-c.ctx.Done():
					return c.ctx.Err()
				}
			}
		}
	}
	return errors.New("sss: catch-up did not reach the live feed")
}

// history returns the scaler's history, if it keeps one.
func (s *Server) history() scaler.History {
	h, _ := s.joined().(scaler.History)
	return h
}

// position is a stream's current position, zero without history.
func (s *Server) position(ctx context.Context, stream string) scaler.Position {
	h := s.history()
	if h == nil {
		return scaler.Position{}
	}
	_, top, err := h.Since(ctx, stream, scaler.Position{}, 0)
	if err != nil {
		s.stats.scalerErrors.Add(1)
		s.log.Warn("sss: history unavailable", "channel", stream, "err", err)
		return scaler.Position{}
	}
	s.hub.noteStart(stream, top)
	return top
}

// The user and session channels.

// ownSub is a connection's user or session channel.
type ownSub struct {
	sb  *sub
	pos scaler.Position // the stream's position at the welcome
}

// startHeld lets what is held from the upgrade go live at the client's
// first frame (or after ownHold): the user and session channels at once,
// the server subscriptions on the worker, after their restoring.
func (s *Server) startHeld(c *Conn) {
	s.startOwn(c, nil)
	c.enqueueControl(func() { s.startServerSubs(c) })
}

// ownHold is how long the user and session channels wait for a client's
// first frame before going live.
const ownHold = time.Second

// startOwn lets the user and session channels go live, once: from the
// positions a resume named, else from the welcome's. With a resume (since
// not nil), the caller sends its ack and then goLive; otherwise they go
// live at once. It returns nothing if they were started already.
func (s *Server) startOwn(c *Conn, since map[string]*scaler.Position) (plans []startPlan, asked []bool) {
	c.ownOnce.Do(func() {
		ctx, cancel := context.WithTimeout(c.ctx, s.cfg.askTimeout)
		defer cancel()
		for _, o := range c.own {
			from, named := since[o.sb.channel], true
			if from == nil {
				from, named = &o.pos, false
				if o.pos.Epoch == "" {
					from = nil
				}
			}
			plans = append(plans, s.prepare(ctx, o.sb, from))
			asked = append(asked, named)
		}
		if since == nil {
			for _, p := range plans {
				s.goLive(p)
			}
		}
	})
	return plans, asked
}

// The server side of resume.

// resume restores subscriptions after a reconnect, catching up where the
// client gives positions (docs/protocol.md). Results are acked, in request
// order, before any publication of the restored subscriptions is queued.
func (s *Server) resume(c *Conn, f inFrame) {
	list, err := s.resumeList(c, f)
	if err != nil {
		s.startOwn(c, nil)
		s.startServerSubs(c)
		c.send(encodeError(f.ID, err), false)
		return
	}
	ownPlans, ownAsked := s.startOwn(c, ownSince(c, list))
	own := make(map[string]subResult, len(ownPlans))
	for i, p := range ownPlans {
		own[p.sb.channel] = p.result(ownAsked[i])
	}
	var plans []startPlan
	results := make([]subResult, 0, len(list))
	want := make(map[string]bool, len(list)) // channel → kept
	for _, r := range list {
		if _, seen := want[r.Channel]; seen {
			continue // each channel once, where first listed
		}
		if c.ownsChannel(r.Channel) {
			want[r.Channel] = true
			res, ok := own[r.Channel]
			if !ok {
				res = lateOwn(r)
			}
			results = append(results, res)
			continue
		}
		res, p, handled := s.restoreServer(c, r)
		ok := handled && res.Error == nil
		if !handled {
			res, p, ok = s.restore(c, r)
			if !f.HasSubs {
				res.Query = r.Query // from the store: the client did not know it
			}
		}
		want[r.Channel] = ok
		results = append(results, res)
		if p.sb != nil {
			plans = append(plans, p)
		}
	}
	if f.HasSubs {
		s.dropUnlisted(c, want)
	}
	// The server subscriptions the client did not list: told after the ack.
	announce := c.pendingServer
	c.pendingServer, c.serverStarted = nil, true
	c.cork(func() {
		c.send(encodeResumeAck(f.ID, results), false)
		for _, p := range append(ownPlans, plans...) {
			s.goLive(p)
		}
		for _, p := range announce {
			c.send(encodeSubscribed(p.result(false)), false)
			s.goLive(p)
		}
	})
}

// restoreServer restores one entry of a resume that is a server
// subscription: one held since the connection began (it catches up from
// the client's position), or one the client believes the server made but
// that the server ended meanwhile (refused: not_found). handled false means
// it is not the server's.
func (s *Server) restoreServer(c *Conn, r subRequest) (res subResult, p startPlan, handled bool) {
	for i, held := range c.pendingServer {
		if held.sb.channel == r.Channel {
			c.pendingServer = slices.Delete(c.pendingServer, i, i+1)
			ctx, cancel := context.WithTimeout(c.ctx, s.cfg.askTimeout)
			defer cancel()
			p = s.prepare(ctx, held.sb, r.Since)
			return p.result(r.Since != nil), p, true
		}
	}
	if !r.Server {
		return subResult{}, startPlan{}, false
	}
	if sb := c.sub(r.Channel); sb != nil && sb.isServer() {
		return subResult{Channel: r.Channel, Server: true}, startPlan{}, true
	}
	return subResult{Channel: r.Channel, Server: true, Error: Errorf(CodeNotFound, "the server ended this subscription")}, startPlan{}, true
}

// lateOwn is the result for the user or session channel in a resume that
// came after the client's first frame: the channel went live then, from the
// welcome's position, and cannot catch up any more.
func lateOwn(r subRequest) subResult {
	res := subResult{Channel: r.Channel}
	if r.Since != nil {
		res.Recovered = new(bool)
		res.Reason = "resume was not the first request: the channel went live before it"
	}
	return res
}

// resumeList is what to restore: the client's list, or, when it sends none,
// the one stored for its session.
func (s *Server) resumeList(c *Conn, f inFrame) ([]subRequest, *Error) {
	if f.HasSubs || !c.persist || s.store == nil {
		return f.Subscriptions, nil
	}
	stored, err := s.store.storedList(c.ctx, c.storeKey())
	if err != nil {
		return nil, Errorf(CodeUnavailable, "cannot read the session's subscriptions")
	}
	list := make([]subRequest, 0, len(stored))
	for _, st := range stored {
		r := subRequest{Channel: st.Channel, Query: st.Query}
		if st.Position.Epoch != "" {
			// Catch up from where the session last stood.
			pos := st.Position
			r.Since = &pos
		}
		list = append(list, r)
	}
	return list, nil
}

// ownSince returns the positions a resume list gives for the connection's
// user and session channels.
func ownSince(c *Conn, list []subRequest) map[string]*scaler.Position {
	since := map[string]*scaler.Position{}
	for _, r := range list {
		if r.Since != nil && c.ownsChannel(r.Channel) {
			if _, dup := since[r.Channel]; !dup {
				since[r.Channel] = r.Since
			}
		}
	}
	return since
}

// restore subscribes one entry of a resume, unless the connection holds it
// already; ok says it is subscribed. A plan with a nil sub has nothing to
// send.
func (s *Server) restore(c *Conn, r subRequest) (res subResult, p startPlan, ok bool) {
	if held, _ := c.subCount(r.Channel); held {
		return subResult{Channel: r.Channel}, startPlan{}, true
	}
	p, err := s.subscribe(c, r.Channel, r.Query, r.Since)
	if err != nil {
		return subResult{Channel: r.Channel, Error: toWire(err)}, startPlan{}, false
	}
	return p.result(r.Since != nil), p, true
}

// dropUnlisted makes an authoritative resume list the truth: the
// connection's other subscriptions are dropped, and so are those stored for
// the session.
func (s *Server) dropUnlisted(c *Conn, want map[string]bool) {
	for _, sb := range c.clientSubs() {
		if !want[sb.channel] {
			s.unsubscribe(c, sb.channel)
		}
	}
	if !c.persist {
		return
	}
	var list []scaler.StoredSubscription
	for _, sb := range c.clientSubs() {
		list = append(list, scaler.StoredSubscription{Channel: sb.channel, Query: sb.query, Position: s.hub.lastPosition(sb.channel)})
	}
	s.store.replace(c.storeKey(), list)
}
