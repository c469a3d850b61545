package client

import (
	"context"
	"encoding/json"
	"time"
)

// Reading a channel's history (docs/protocol.md, "history"): its last
// publications, or those after a position. A page that loads the last
// messages and then subscribes from the position History returns sees
// every publication once, with no gap: Subscribe with WithSince.

// HistoryOption configures History.
type HistoryOption func(*historyFrame) error

type historyFrame struct {
	Type    string          `json:"type"` // "history"
	ID      uint64          `json:"id"`
	Channel string          `json:"channel"`
	Limit   int             `json:"limit,omitempty"`
	Since   *Position       `json:"since,omitempty"`
	Query   json.RawMessage `json:"query,omitempty"`
}

func (f *historyFrame) setID(id uint64) { f.ID = id }

// defaultHistoryLimit is what History reads without HistoryLimit: the
// server's default.
const defaultHistoryLimit = 50

// HistoryLimit reads at most n publications (default 50; the server's
// maximum is 1000).
func HistoryLimit(n int) HistoryOption {
	return func(f *historyFrame) error {
		if n <= 0 {
			return invalid("HistoryLimit(%d): must be positive", n)
		}
		f.Limit = n
		return nil
	}
}

// HistorySince reads the publications after p (the first of them, up to
// the limit) instead of the last ones.
func HistorySince(p Position) HistoryOption {
	return func(f *historyFrame) error {
		if p.IsZero() {
			return invalid("HistorySince: a position needs an epoch")
		}
		f.Since = &p
		return nil
	}
}

// HistoryQuery sends q with the request, for the server's subscription
// parser, which authorises history reads like subscriptions.
func HistoryQuery(q any) HistoryOption {
	return func(f *historyFrame) error {
		b, err := json.Marshal(q)
		if err != nil {
			return &pkgError{errs: []error{ErrInvalidConfig, wrap(err, "HistoryQuery")}}
		}
		f.Query = b
		return nil
	}
}

// History reads a channel's history, oldest first, and the position it
// ends at: subscribe from there (WithSince) to go on with no gap and no
// duplicate. A server that cuts a large reply is asked again from where it
// stopped, up to the limit. Errors: ErrNotSupported (no history kept),
// ErrNotFound (the publications after HistorySince's position are gone),
// ErrForbidden (the subscription parser refused).
func (c *Client) History(ctx context.Context, channel string, opts ...HistoryOption) ([]Message, Position, error) {
	f := &historyFrame{Type: "history", Channel: channel}
	for _, o := range opts {
		if err := o(f); err != nil {
			return nil, Position{}, wrap(err, "history of %q", channel)
		}
	}
	if f.Limit == 0 {
		f.Limit = defaultHistoryLimit
	}
	limit := f.Limit
	var out []Message
	for {
		res, err := c.do(ctx, f, false, nil)
		if err != nil {
			return nil, Position{}, wrap(err, "history of %q", channel)
		}
		var r struct {
			Publications []struct {
				Channel string          `json:"channel"`
				Event   string          `json:"event"`
				Data    json.RawMessage `json:"data"`
				From    Sender          `json:"from"`
				Time    int64           `json:"time"`
				Offset  uint64          `json:"offset"`
				Epoch   string          `json:"epoch"`
			} `json:"publications"`
			Position Position `json:"position"`
			More     bool     `json:"more"`
		}
		if err := json.Unmarshal(res, &r); err != nil {
			return nil, Position{}, wrap(ErrProtocol, "history of %q: %v", channel, err)
		}
		for _, p := range r.Publications {
			m := Message{Channel: p.Channel, Sub: channel, Event: p.Event, Data: p.Data, From: p.From, Offset: p.Offset, Epoch: p.Epoch}
			if p.Time > 0 {
				m.Time = time.UnixMilli(p.Time)
			}
			out = append(out, m)
		}
		if !r.More || (limit > 0 && len(out) >= limit) {
			return out, r.Position, nil
		}
		// Cut to fit: read on from where it stopped.
		since := r.Position
		f = &historyFrame{Type: "history", Channel: channel, Since: &since, Query: f.Query}
		if limit > 0 {
			f.Limit = limit - len(out)
		}
	}
}
