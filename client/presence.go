package client

import (
	"context"
	"encoding/json"
)

// Presence: who is subscribed to a channel right now, on every instance
// (docs/protocol.md, "presence"), and the join and leave events of the
// channels where the application turned them on ("join and leave").

// ClientInfo is a connection present on a channel, as other clients see
// it: its id, its user (empty when anonymous) and the public Info the
// application gave it (a display name, a status), JSON.
type ClientInfo struct {
	Conn string          `json:"conn"`
	User string          `json:"user,omitempty"`
	Info json.RawMessage `json:"info,omitempty"`
}

// PresenceCounts summarises a channel's presence: connections, and
// distinct user ids among them (anonymous ones not counted).
type PresenceCounts struct {
	Clients int `json:"clients"`
	Users   int `json:"users"`
}

type presenceFrame struct {
	Type    string `json:"type"` // "presence"
	ID      uint64 `json:"id"`
	Channel string `json:"channel"`
	Counts  bool   `json:"counts,omitempty"`
}

func (f *presenceFrame) setID(id uint64) { f.ID = id }

type presenceResult struct {
	Counts  PresenceCounts `json:"counts"`
	Clients []ClientInfo   `json:"clients"`
	More    bool           `json:"more"`
}

// Presence lists who is subscribed to channel, with the counts. A list
// too large for one reply is cut: it then holds fewer clients than
// counts.Clients. Errors: ErrForbidden (by default only the channel's
// subscribers may read it), ErrNotSupported (the channel keeps no
// presence, or the cluster none), ErrUnavailable.
func (c *Client) Presence(ctx context.Context, channel string) ([]ClientInfo, PresenceCounts, error) {
	r, err := c.presence(ctx, channel, false)
	if err != nil {
		return nil, PresenceCounts{}, err
	}
	return r.Clients, r.Counts, nil
}

// PresenceCounts counts who is subscribed to channel, at a cost that does
// not grow with the channel's size. Errors as Presence.
func (c *Client) PresenceCounts(ctx context.Context, channel string) (PresenceCounts, error) {
	r, err := c.presence(ctx, channel, true)
	return r.Counts, err
}

func (c *Client) presence(ctx context.Context, channel string, counts bool) (presenceResult, error) {
	res, err := c.do(ctx, &presenceFrame{Type: "presence", Channel: channel, Counts: counts}, false, nil)
	if err != nil {
		return presenceResult{}, wrap(err, "presence of %q", channel)
	}
	var r presenceResult
	if err := json.Unmarshal(res, &r); err != nil {
		return presenceResult{}, wrap(ErrProtocol, "presence of %q: %v", channel, err)
	}
	return r, nil
}

// WithJoinHandler sets the handler of the subscription's join events (a
// client subscribed to the channel, this one included), in place before
// the first can arrive; Subscription.HandleJoin changes it later.
func WithJoinHandler(fn func(ClientInfo)) SubscribeOption {
	return func(o *subOptions) error {
		if fn == nil {
			return invalid("WithJoinHandler(nil)")
		}
		o.onJoin = fn
		return nil
	}
}

// WithLeaveHandler sets the handler of the subscription's leave events (a
// client unsubscribed, disconnected, or its server instance died);
// Subscription.HandleLeave changes it later.
func WithLeaveHandler(fn func(ClientInfo)) SubscribeOption {
	return func(o *subOptions) error {
		if fn == nil {
			return invalid("WithLeaveHandler(nil)")
		}
		o.onLeave = fn
		return nil
	}
}

// HandleJoin sets (nil: removes) the handler of join events.
func (s *Subscription) HandleJoin(fn func(ClientInfo)) {
	s.mu.Lock()
	s.onJoin = fn
	s.mu.Unlock()
}

// HandleLeave sets (nil: removes) the handler of leave events.
func (s *Subscription) HandleLeave(fn func(ClientInfo)) {
	s.mu.Lock()
	s.onLeave = fn
	s.mu.Unlock()
}

// routePresence hands a join or leave frame to its subscription's handler.
// They are not numbered: a reconnect does not catch up on them (read
// Presence again then).
func (c *Client) routePresence(l *link, f *inFrame) {
	var ci ClientInfo
	if err := json.Unmarshal(f.Client, &ci); err != nil {
		c.log.Warn("sss: invalid presence event", "type", f.Type, "err", err)
		return
	}
	c.mu.Lock()
	s := c.subs[f.Channel]
	c.mu.Unlock()
	if s == nil {
		return
	}
	join := f.Type == "join"
	c.queue(l, func() { s.presenceEvent(join, ci) })
}

func (s *Subscription) presenceEvent(join bool, ci ClientInfo) {
	s.mu.Lock()
	h := s.onLeave
	if join {
		h = s.onJoin
	}
	ended := s.status == SubUnsubscribed || s.status == SubRefused
	s.mu.Unlock()
	if h != nil && !ended {
		h(ci)
	}
}
