package sss

import (
	"strings"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/superscaled/sss/scaler"
)

// Catch-up. When the scaler keeps history, every subscription starts
// "held": live deliveries are buffered while the server reads what the
// client missed from history, sends it, and only then releases the buffer,
// skipping what history already gave. Because live delivery is established
// before history is read, nothing falls between the two, and because both
// are ordered by offset, the client sees every publication once, in order.

// sub is one connection's subscription to one stream.
type sub struct {
	c       *Conn
	channel string
	query   []byte // client subscriptions: what to re-authorise on restore

	held atomic.Bool // deliveries go to buf, not to the connection

	// mu is taken after the channel's lock and before the connection's
	// subscription and queue locks (catch-up sends under it).
	mu       sync.Mutex
	buf      []scaler.Delivery
	overflow bool // buf outgrew its bound and was dropped; history has it all
	gone     bool // unsubscribed: catch-up sends nothing more
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
		case d.Offset == 0 || pos.Epoch == "": // tells are not numbered
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
		if sb.coveredDeeper(d.Pub) {
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
	sb.held.Store(false)
	return true, nil
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
	if !sb.coveredDeeper(e.Pub) {
		sb.c.sendDelivery(scaler.Delivery{Stream: sb.channel, Pub: e.Pub, Offset: e.Offset, Epoch: epoch})
	}
}

// sendDelivery queues one publication for this connection.
func (c *Conn) sendDelivery(d scaler.Delivery) {
	c.send(encodeDelivery(d), false)
}

func encodeDelivery(d scaler.Delivery) []byte {
	if name, ok := strings.CutPrefix(d.Pub.Event, tellPrefix); ok && d.Pub.Transient {
		return encodeTell(name, d.Pub.Data)
	}
	return encodePub(d.Pub.Channel, d.Stream, d.Pub.Event, d.Pub.Data, d.Pub.Sender, d.Offset, d.Epoch)
}

// historyPage is how many publications are read from history at a time.
const historyPage = 100

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
	switch {
	case err == nil && since != nil:
		p.r = recovery{Position: from, Recovered: true}
		p.entries, p.epoch, p.more = entries, top.Epoch, len(entries) == limit
		p.last = from
		if n := len(entries); n > 0 {
			p.last.Offset = entries[n-1].Offset
		}
	case err == nil || errors.Is(err, scaler.ErrPositionLost):
		p.r, p.last = recovery{Position: top, Recovered: since == nil}, top
		if since != nil {
			p.r.Reason = "publications were lost: the position is too old, or the channel's history was reset"
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
			sb.c.close(CloseResync, "channel history reset", err)
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
			c.close(CloseResync, "catch-up failed", err)
		}
	})
}

func (s *Server) catchUp(sb *sub, pos scaler.Position) error {
	hist := s.history()
	c := sb.c
	// Bound the work one subscription can cause: history is bounded, so
	// more pages than this means publishers outrun the client.
	for pages := 0; pages < 10000; pages++ {
		if err := c.waitRoom(); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(c.ctx, s.cfg.askTimeout)
		entries, top, err := hist.Since(ctx, sb.channel, pos, historyPage)
		cancel()
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
				time.Sleep(10 * time.Millisecond) // history lags the live feed
			}
		}
	}
	return ErrSlowConsumer
}

// fits reports whether n frames of size bytes fit in the send queue now.
func (c *Conn) fits(n, size int) bool {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	return len(c.queue)+n <= c.srv.cfg.sendQueue && c.qbytes+size <= c.srv.cfg.sendBytes
}

// waitRoom waits until the send queue is at most half full, so catch-up
// does not overflow it.
func (c *Conn) waitRoom() error {
	for {
		c.qmu.Lock()
		room := len(c.queue) <= c.srv.cfg.sendQueue/2 && c.qbytes <= c.srv.cfg.sendBytes/2
		c.qmu.Unlock()
		if room {
			return nil
		}
		select {
		case <-c.ctx.Done():
			return c.ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// history returns the scaler's history, if it keeps one.
func (s *Server) history() scaler.History {
	h, _ := s.joined().(scaler.History)
	return h
}
