package client

import (
	"context"
	"fmt"
	"log/slog"
)

// Resume with exact catch-up (docs/protocol.md, "Positions and catch-up").
//
// When the server keeps history, the client keeps a Position per channel it
// receives: one per Subscription, from its subscribe ack, and one for each
// of the connection's user and session channels, from the welcome. Each
// publication delivered moves it on. After a reconnect the resume request
// sends these positions, and the server sends every publication after them,
// once and in order, before the live ones; its reply says, per channel,
// whether that was possible (recovered) or publications were lost (the
// epoch changed, or history was trimmed past the position). Lost
// publications are reported, never silent: see Hooks.OnGap and
// SubHooks.OnGap. The resume itself is in reconnect.go; this file holds the
// positions and the outcomes.
//
// As a defence, a publication whose offset is not past the channel's
// position (in the same epoch) is dropped as a duplicate (Stats.Duplicates),
// and one from another epoch than the position's is reported as a gap.
// Offsets may jump without a gap: a subscription to "news" does not see the
// offsets of "news" taken by publications delivered through a deeper
// subscription ("news.uk"), nor those a server drops on a lossy channel.

// ChannelKind says what a channel is to the client.
type ChannelKind int

const (
	// KindSubscription: a channel subscribed to with Subscribe.
	KindSubscription ChannelKind = iota
	// KindUser: the connection's user channel (Hooks.OnUserMessage).
	KindUser
	// KindSession: the connection's session channel (Hooks.OnSessionMessage).
	KindSession
)

// String returns "subscription", "user" or "session".
func (k ChannelKind) String() string {
	switch k {
	case KindSubscription:
		return "subscription"
	case KindUser:
		return "user"
	case KindSession:
		return "session"
	}
	return fmt.Sprintf("ChannelKind(%d)", int(k))
}

// RecoverInfo is the outcome of catching up one channel after a reconnect,
// or a gap noticed in the publications themselves.
type RecoverInfo struct {
	// Channel is the subscription's channel, or the user or session channel.
	Channel string
	Kind    ChannelKind
	// Sub is the subscription; nil for the user and session channels.
	Sub *Subscription
	// Recovered is true when every publication after Since is delivered,
	// once and in order, before the publications that follow. False means
	// some were lost: the application should reload what it derives from
	// the channel from its source of truth.
	Recovered bool
	// Reason says why publications were lost, when not Recovered.
	Reason string
	// Since is the position the client resumed from; zero when it had none
	// (the server kept no history).
	Since Position
	// Position is where the client stands now: the publications delivered
	// next come after it. Zero when the server keeps no history.
	Position Position
}

// ownChan is the state of the user or session channel across links.
type ownChan struct {
	channel string   // from the last welcome; "" when none (anonymous user)
	pos     Position // guarded by Client.mu
}

// ownIndex returns the index in Client.own of a channel kind.
func ownIndex(k ChannelKind) int { return int(k) - 1 }

// accept decides whether a publication at p is new for a channel that stands
// at pos: false for a duplicate. epochChanged says it comes from another
// epoch than pos's, which only a new subscription or resume should bring.
func accept(pos, p Position) (ok, epochChanged bool) {
	switch {
	case p.IsZero() || pos.IsZero():
		return true, false // not numbered, or nothing to compare with
	case p.Epoch != pos.Epoch:
		return true, true
	}
	return p.Offset > pos.Offset, false
}

// epochGap describes a publication from an unexpected epoch.
func epochGap(ch string, kind ChannelKind, sub *Subscription, pos, p Position) RecoverInfo {
	return RecoverInfo{
		Channel: ch, Kind: kind, Sub: sub,
		Reason: fmt.Sprintf("publication from epoch %q while at %s: the channel's history was reset, publications may have been lost", p.Epoch, pos),
		Since:  pos,
		// The publication itself is delivered next.
		Position: Position{Offset: p.Offset - 1, Epoch: p.Epoch},
	}
}

// jumpGap describes a publication whose offset is past the next one: the
// ones between were lost (a server missed them, or dropped them on a lossy
// channel).
func jumpGap(ch string, kind ChannelKind, sub *Subscription, pos, p Position) RecoverInfo {
	return RecoverInfo{
		Channel: ch, Kind: kind, Sub: sub,
		Reason: fmt.Sprintf("offsets jumped from %d to %d: %d publications were lost", pos.Offset, p.Offset, p.Offset-pos.Offset-1),
		Since:  pos,
		// The publication itself is delivered next.
		Position: Position{Offset: p.Offset - 1, Epoch: p.Epoch},
	}
}

// outcome turns a subscription's resume result into a RecoverInfo.
func outcome(ch string, kind ChannelKind, sub *Subscription, since Position, r *subResult) RecoverInfo {
	info := RecoverInfo{Channel: ch, Kind: kind, Sub: sub, Since: since}
	if r != nil {
		info.Position, info.Reason = r.position(), r.Reason
	}
	switch {
	case since.IsZero():
		if info.Reason == "" {
			info.Reason = "no position to resume from: the server kept no history"
		}
	case r == nil:
		info.Reason = "the channel is missing from the resume reply"
	case r.Recovered == nil:
		info.Reason = "the server did not say whether it recovered the publications"
	default:
		info.Recovered = *r.Recovered
		if !info.Recovered && info.Reason == "" {
			info.Reason = "publications were lost"
		}
	}
	if info.Recovered {
		info.Reason = ""
	}
	return info
}

// recoveryEvents counts an outcome and returns the hooks it fires, in
// order: OnRecover, then (when publications were lost) the subscription's
// SubHooks.OnGap and the client's OnGap. The caller holds c.mu.
func (c *Client) recoveryEvents(info RecoverInfo, events []func()) []func() {
	if info.Recovered {
		c.stats.recovered.Add(1)
	} else {
		c.stats.gaps.Add(1)
		level := slog.LevelWarn
		if info.Since.IsZero() {
			level = slog.LevelDebug // no history at all: nothing unusual
		}
		c.log.Log(context.Background(), level, "sss: publications lost", "channel", info.Channel, "kind", info.Kind, "since", info.Since, "now", info.Position, "reason", info.Reason)
	}
	onRecover, onGap := c.hooks.OnRecover, c.hooks.OnGap
	var subGap func(RecoverInfo)
	if info.Sub != nil && !info.Recovered {
		subGap = info.Sub.hooks.OnGap
	}
	return append(events, func() {
		if onRecover != nil {
			onRecover(info)
		}
		if info.Recovered {
			return
		}
		if subGap != nil {
			subGap(info)
		}
		if onGap != nil {
			onGap(info)
		}
	})
}

// Position returns where the client stands on a channel it receives: a
// subscription's channel, or the user or session channel (ConnInfo). It is
// zero when unknown: the server keeps no history, or the client does not
// receive that channel.
func (c *Client) Position(channel string) Position {
	c.mu.Lock()
	s := c.subs[channel]
	if s == nil {
		defer c.mu.Unlock()
		for _, o := range c.own {
			if o.channel == channel && channel != "" {
				return o.pos
			}
		}
		return Position{}
	}
	c.mu.Unlock()
	return s.Position()
}

// positionOf returns where a channel the link receives stands.
func (c *Client) positionOf(kind ChannelKind, s *Subscription) Position {
	if s != nil {
		return s.Position()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.own[ownIndex(kind)].pos
}

// setPositionOf moves a channel's position; on the read loop.
func (c *Client) setPositionOf(kind ChannelKind, s *Subscription, p Position) {
	if s != nil {
		s.setPosition(p)
		return
	}
	c.mu.Lock()
	c.own[ownIndex(kind)].pos = p
	c.mu.Unlock()
}

// welcomeOwn records a new link's user and session channels; on the read
// loop, before any publication. On a link that resumes, a channel that is
// the previous connection's (same user, same session) continues: it catches
// up from its position. Any other starts from the welcome's position: the
// server only lets a connection catch up on its own channels.
func (c *Client) welcomeOwn(l *link) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, ch := range l.ownChannels() {
		o := &c.own[i]
		if l.resuming && ch != "" && ch == o.channel {
			l.ownResume[i], l.ownSince[i] = true, o.pos
			continue
		}
		*o = ownChan{channel: ch, pos: l.positions[ch]}
	}
}
