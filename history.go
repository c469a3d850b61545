package sss

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/superscaled/sss/scaler"
)

// Reading history: the server's History and a client's history request
// (request.go hands it here). A page loads the last messages of a channel,
// then subscribes from the position they end at: no gap, no duplicate
// (docs/protocol.md, "history").

// Position is a place in a channel's stream: the offset of a publication
// in an epoch (docs/protocol.md, "Positions and catch-up").
type Position = scaler.Position

// HistoryEntry is one publication read from a channel's history.
type HistoryEntry struct {
	Channel string // where it was published: the channel read, or below it
	Event   string
	Data    json.RawMessage
	From    Sender    // the client that published; zero for the server
	Time    time.Time // when the server accepted it
	// Position is the publication's place in the stream of the channel
	// read (not of Channel).
	Position Position
}

// HistoryOption selects what History reads.
type HistoryOption func(*historyQuery)

type historyQuery struct {
	limit int
	since *Position
}

// Default and largest number of publications one history read returns.
const (
	DefaultHistoryLimit = 50
	MaxHistoryLimit     = 1000
)

// Last reads the n last publications (default 50, at most 1000).
func Last(n int) HistoryOption {
	return func(q *historyQuery) { q.limit = n }
}

// After reads the publications after p instead of the last ones: the first
// of them, up to the limit.
func After(p Position) HistoryOption {
	return func(q *historyQuery) { q.since = &p }
}

// History reads a channel's history: its last publications, or those after
// a position (After), oldest first, and the channel's position now, from
// which a subscription continues without gap or duplicate. A publication
// on a channel below this one ("news.uk" for "news") is in its history too.
// Errors: ErrNotSupported when the scaler keeps no history,
// ErrUnavailable when it cannot be reached, ErrNotFound when After names a position whose publications are
// no longer kept (the epoch changed or they were trimmed).
func (s *Server) History(ctx context.Context, channel string, opts ...HistoryOption) ([]HistoryEntry, Position, error) {
	if err := ValidChannel(channel); err != nil {
		return nil, Position{}, err
	}
	q := historyQuery{limit: DefaultHistoryLimit}
	for _, o := range opts {
		o(&q)
	}
	if q.limit <= 0 || q.limit > MaxHistoryLimit {
		return nil, Position{}, Errorf(CodeBadRequest, "a history limit is 1 to %d", MaxHistoryLimit)
	}
	if q.since != nil && !validPosition(*q.since) {
		return nil, Position{}, Errorf(CodeBadRequest, "a position needs an epoch of at most 64 bytes")
	}
	entries, now, err := s.readHistory(ctx, channel, q)
	if err != nil {
		return nil, Position{}, err
	}
	out := make([]HistoryEntry, len(entries))
	for i, e := range entries {
		out[i] = HistoryEntry{
			Channel: e.Pub.Channel, Event: e.Pub.Event, Data: e.Pub.Data, From: e.Pub.Sender,
			Position: Position{Offset: e.Offset, Epoch: now.Epoch},
		}
		if e.Pub.Time > 0 {
			out[i].Time = time.UnixMilli(e.Pub.Time)
		}
	}
	return out, now, nil
}

// readHistory reads what q asks of stream.
func (s *Server) readHistory(ctx context.Context, stream string, q historyQuery) ([]scaler.Entry, Position, error) {
	if err := s.usable(); err != nil {
		return nil, Position{}, err
	}
	if _, err := s.join(ctx); err != nil {
		return nil, Position{}, err
	}
	hist := s.history()
	if hist == nil {
		return nil, Position{}, Errorf(CodeNotSupported, "this cluster keeps no history")
	}
	var (
		entries []scaler.Entry
		now     Position
	)
	err := retry(ctx, func(ctx context.Context) (err error) {
		if q.since != nil {
			entries, now, err = hist.Since(ctx, stream, *q.since, q.limit)
			return err
		}
		// The last limit: from limit before the end, or from the oldest
		// kept when fewer are.
		if _, now, err = hist.Since(ctx, stream, Position{}, 0); err != nil {
			return err
		}
		from := Position{Offset: now.Offset - min(now.Offset, uint64(q.limit)), Epoch: now.Epoch}
		entries, now, err = hist.Since(ctx, stream, from, q.limit)
		if errors.Is(err, scaler.ErrPositionLost) && now.Epoch == from.Epoch {
			entries, now, err = hist.Since(ctx, stream, Position{}, q.limit)
		}
		return err
	}, s.cfg.askTimeout)
	switch {
	case errors.Is(err, scaler.ErrPositionLost):
		return nil, now, Errorf(CodeNotFound, "the publications after that position are no longer kept")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return nil, Position{}, err
	case err != nil:
		s.stats.scalerErrors.Add(1)
		s.log.Warn("sss: history unavailable", "channel", stream, "err", err)
		return nil, Position{}, ErrUnavailable
	}
	// Since returns what follows up to the limit: the end is the last one
	// returned when history holds more.
	if n := len(entries); q.since != nil && n > 0 && entries[n-1].Offset < now.Offset {
		now.Offset = entries[n-1].Offset
	}
	return entries, now, nil
}

// handleHistory answers a client's history request, authorised like a
// subscription by the subscription parser (with the request's query).
func (s *Server) handleHistory(c *Conn, f inFrame) {
	if err := clientChannel(f.Channel); err != nil {
		c.send(encodeError(f.ID, toWire(err)), false)
		return
	}
	q := historyQuery{limit: DefaultHistoryLimit, since: f.Since}
	if f.Limit != nil {
		q.limit = *f.Limit
	}
	if q.limit <= 0 || q.limit > MaxHistoryLimit {
		c.send(encodeError(f.ID, Errorf(CodeBadRequest, "limit is 1 to %d", MaxHistoryLimit)), false)
		return
	}
	query, err := compactJSON(f.Query)
	if err != nil {
		c.send(encodeError(f.ID, Errorf(CodeBadRequest, "query is not valid JSON")), false)
		return
	}
	if p := s.cfg.subscriptP; p != nil {
		if err := s.callParser(c, func(ctx context.Context) error { return p(ctx, c, f.Channel, query) }); err != nil {
			c.send(encodeError(f.ID, toWire(err)), false)
			return
		}
	}
	entries, now, err := s.readHistory(c.ctx, f.Channel, q)
	if err != nil {
		c.send(encodeError(f.ID, toWire(err)), false)
		return
	}
	c.send(encodeHistoryAck(f.ID, entries, now, s.cfg.sendBytes/2), false)
}
