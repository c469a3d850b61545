package sss

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"

	"github.com/superscaled/sss/scaler"
)

// Presence: who is subscribed to a channel right now, on every instance,
// and join and leave events. The application says per channel what it
// keeps (WithPresence); request.go and membership.go call presenceJoin
// when a subscription is made, and endSub calls presenceLeave when one ends
// (unsubscribe, the server's unsubscribe, the connection's end). The
// scaler keeps the entries (scaler.Presence) and reports those of an
// instance that died (nodeHandler.HandleGone): a leave event is published
// for them too.
//
// Presence is per exact channel: a subscriber of "news" is present on
// "news", not on "news.uk", and join and leave events of "news.uk" reach
// only the subscribers of "news.uk". A room's members are those who
// entered that room; an ancestor would otherwise see every descendant's
// crowd, and its counts would mean nothing.

// ChannelPresence says what presence a channel keeps.
type ChannelPresence struct {
	// Track lists the channel's subscribers in its presence (Server.Presence,
	// a client's presence request).
	Track bool
	// JoinLeave sends the channel's subscribers a join frame when a client
	// subscribes and a leave frame when it unsubscribes, disconnects, or its
	// instance dies. It implies Track. The events are transient: they are
	// not in history and a client that reconnects does not catch up on them
	// (it reads the presence list again instead). Each event goes to every
	// subscriber: in a room of n clients that all come and go, that is n
	// frames per join. For very large rooms, Track alone and counts scale
	// better.
	JoinLeave bool
}

// PresenceParser authorises a client's read of a channel's presence (the
// presence request). Return nil to allow; an *Error to choose the code
// (default forbidden). Without one, only the channel's subscribers may
// read it.
type PresenceParser func(ctx context.Context, c *Conn, channel string) error

// ClientInfo is one connection present on a channel: its id, user id,
// session id, and the public Info its session parser gave it (JSON).
type ClientInfo = scaler.ClientInfo

// PresenceCounts summarises a channel's presence: connections, and
// distinct non-empty user ids.
type PresenceCounts = scaler.PresenceCounts

// Event names of join and leave events, carried as transient publications
// on the channel itself.
const (
	joinEvent  = scaler.ReservedPrefix + "join"
	leaveEvent = scaler.ReservedPrefix + "leave"
)

// errNoPresence answers presence reads when the scaler keeps none.
var errNoPresence = Errorf(CodeNotSupported, "this cluster keeps no presence")

// channelPresence is what the application keeps for channel; reserved
// channels keep none.
func (s *Server) channelPresence(channel string) ChannelPresence {
	if s.cfg.presence == nil || reserved(channel) {
		return ChannelPresence{}
	}
	p := s.cfg.presence(channel)
	if p.JoinLeave {
		p.Track = true
	}
	return p
}

// presenceBackend returns the node's presence, or nil.
func (s *Server) presenceBackend() scaler.Presence {
	p, _ := s.joined().(scaler.Presence)
	return p
}

// presenceJoin records a new subscription in the channel's presence and
// announces it, when the channel asks. A backend that cannot be reached
// keeps the entry and writes it later (the contract); any other failure
// is logged and the subscription stands without presence.
func (s *Server) presenceJoin(ctx context.Context, c *Conn, sb *sub) {
	cp := s.channelPresence(sb.channel)
	p := s.presenceBackend()
	if !cp.Track || p == nil {
		return
	}
	err := p.Join(ctx, sb.channel, c.clientInfo())
	if err != nil && !errors.Is(err, scaler.ErrUnavailable) {
		s.stats.scalerErrors.Add(1)
		s.log.Warn("sss: cannot record presence", "channel", sb.channel, "conn", c.id, "err", err)
		return
	}
	sb.present.Store(true)
	if cp.JoinLeave {
		s.announce(ctx, sb.channel, joinEvent, c.clientInfo())
	}
}

// presenceLeave removes an ended subscription from the channel's presence
// and announces it.
func (s *Server) presenceLeave(ctx context.Context, c *Conn, sb *sub) {
	if !sb.present.Swap(false) {
		return
	}
	p := s.presenceBackend()
	if p == nil {
		return
	}
	if err := p.Leave(ctx, sb.channel, c.id); err != nil && !errors.Is(err, scaler.ErrUnavailable) {
		s.stats.scalerErrors.Add(1)
		s.log.Warn("sss: cannot remove presence", "channel", sb.channel, "conn", c.id, "err", err)
	}
	if s.channelPresence(sb.channel).JoinLeave {
		s.announce(ctx, sb.channel, leaveEvent, c.clientInfo())
	}
}

// announce publishes a join or leave event: transient, straight to the
// node, so that the connections a closing server ends still say goodbye.
func (s *Server) announce(ctx context.Context, channel, event string, ci ClientInfo) {
	node := s.joined()
	if node == nil {
		return
	}
	pub := &scaler.Publication{Channel: channel, Event: event, Data: encodeClient(ci), Transient: true}
	if err := node.Publish(ctx, pub); err != nil {
		s.stats.scalerErrors.Add(1)
		s.log.Log(ctx, levelFor(err), "sss: cannot announce presence", "channel", channel, "event", event, "conn", ci.Conn, "err", err)
	}
}

// levelFor logs the failures of a closing node quietly.
func levelFor(err error) slog.Level {
	if errors.Is(err, scaler.ErrClosed) {
		return slog.LevelDebug
	}
	return slog.LevelWarn
}

// handleGone announces that the clients of an instance that died left.
func (s *Server) handleGone(ctx context.Context, channel string, gone []ClientInfo) {
	if !s.channelPresence(channel).JoinLeave {
		return
	}
	for _, ci := range gone {
		s.announce(ctx, channel, leaveEvent, ci)
	}
}

// clientInfo is c's presence entry.
func (c *Conn) clientInfo() ClientInfo {
	return ClientInfo{Conn: c.id, User: c.session.UserID, Session: c.session.SessionID, Info: c.session.info}
}

// encodeClient is what other clients see of a present connection: its
// id, user and public info, never its session id, which applications may
// derive from a secret (a login token).
func encodeClient(ci ClientInfo) []byte {
	b := make([]byte, 0, 48+len(ci.Conn)+len(ci.User)+len(ci.Info))
	b = append(b, `{"conn":`...)
	b = appendString(b, ci.Conn)
	if ci.User != "" {
		b = append(b, `,"user":`...)
		b = appendString(b, ci.User)
	}
	if len(ci.Info) > 0 {
		b = append(b, `,"info":`...)
		b = append(b, ci.Info...)
	}
	return append(b, '}')
}

// Presence lists who is subscribed to channel on every instance. The
// channel must track presence (WithPresence). Errors: code not_supported
// when the scaler keeps no presence or the channel does not track it,
// ErrUnavailable when the scaler cannot be reached.
func (s *Server) Presence(ctx context.Context, channel string) ([]ClientInfo, error) {
	p, err := s.presenceFor(ctx, channel)
	if err != nil {
		return nil, err
	}
	var list []ClientInfo
	err = retry(ctx, func(ctx context.Context) (err error) {
		list, err = p.Present(ctx, channel)
		return err
	}, s.cfg.askTimeout)
	return list, s.presenceErr(channel, err)
}

// PresenceCounts counts who is subscribed to channel on every instance,
// at a cost that does not grow with their number. Errors as Presence.
func (s *Server) PresenceCounts(ctx context.Context, channel string) (PresenceCounts, error) {
	p, err := s.presenceFor(ctx, channel)
	if err != nil {
		return PresenceCounts{}, err
	}
	var n PresenceCounts
	err = retry(ctx, func(ctx context.Context) (err error) {
		n, err = p.Counts(ctx, channel)
		return err
	}, s.cfg.askTimeout)
	return n, s.presenceErr(channel, err)
}

func (s *Server) presenceFor(ctx context.Context, channel string) (scaler.Presence, error) {
	if err := ValidChannel(channel); err != nil {
		return nil, err
	}
	if err := s.usable(); err != nil {
		return nil, err
	}
	if _, err := s.join(ctx); err != nil {
		return nil, err
	}
	p := s.presenceBackend()
	if p == nil {
		return nil, errNoPresence
	}
	if !s.channelPresence(channel).Track {
		return nil, Errorf(CodeNotSupported, "channel %q does not track presence", channel)
	}
	return p, nil
}

func (s *Server) presenceErr(channel string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	s.stats.scalerErrors.Add(1)
	s.log.Warn("sss: presence unavailable", "channel", channel, "err", err)
	return ErrUnavailable
}

// handlePresence answers a client's presence request: the list (cut to
// fit the send queue, with the full counts) or, with "counts", the counts
// alone.
func (s *Server) handlePresence(c *Conn, f inFrame) {
	if err := clientChannel(f.Channel); err != nil {
		c.send(encodeError(f.ID, toWire(err)), false)
		return
	}
	if err := s.canReadPresence(c, f.Channel); err != nil {
		c.send(encodeError(f.ID, toWire(err)), false)
		return
	}
	ctx := c.ctx
	if f.Counts {
		n, err := s.PresenceCounts(ctx, f.Channel)
		if err != nil {
			c.send(encodeError(f.ID, toWire(err)), false)
			return
		}
		c.send(encodePresenceAck(f.ID, nil, n, false, 0), false)
		return
	}
	list, err := s.Presence(ctx, f.Channel)
	if err != nil {
		c.send(encodeError(f.ID, toWire(err)), false)
		return
	}
	c.send(encodePresenceAck(f.ID, list, countClients(list), true, s.cfg.sendBytes/2), false)
}

// canReadPresence applies the presence parser, or the default: only the
// channel's subscribers read its presence.
func (s *Server) canReadPresence(c *Conn, channel string) error {
	if p := s.cfg.presenceP; p != nil {
		return s.callParser(c, func(ctx context.Context) error { return p(ctx, c, channel) })
	}
	if c.sub(channel) == nil {
		return Errorf(CodeForbidden, "subscribe to %q to read its presence", channel)
	}
	return nil
}

// countClients counts a list as Counts would.
func countClients(list []ClientInfo) PresenceCounts {
	users := make(map[string]struct{}, len(list))
	for _, ci := range list {
		if ci.User != "" {
			users[ci.User] = struct{}{}
		}
	}
	return PresenceCounts{Clients: len(list), Users: len(users)}
}

// presenceInfo encodes the session's public info once, at connect.
func (s *Server) presenceInfo(sess *Session) error {
	if sess.Info == nil {
		return nil
	}
	b, err := json.Marshal(sess.Info)
	if err != nil {
		return err
	}
	if len(b) > s.cfg.maxPayload {
		return Errorf(CodeTooLarge, "session info of %d bytes exceeds the payload limit of %d", len(b), s.cfg.maxPayload)
	}
	if string(b) != "null" {
		sess.info = b
	}
	return nil
}
