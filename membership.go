package sss

import (
	"context"
	"encoding/json"
	"slices"

	"github.com/superscaled/sss/scaler"
)

// Server subscriptions: the application subscribes a connection, a session
// or a user to a channel (Server.Subscribe), wherever it is connected, or
// names channels at login (Session.Channels). They are the server's
// decision: no subscription parser runs, the client cannot unsubscribe
// them, a resume keeps them without the client listing them, and they are
// remembered (when the scaler has a session store): for a user, by every
// connection the user makes later; for a session or a connection, by the
// session's later connections. The client is told with a "subscribed"
// frame (and "unsubscribed" when the server ends one).
//
// The path: Subscribe → the user's or session's reserved channel (a
// transient control publication) or a node message → hub.go's deliver or
// asktell.go's handleNode → the connection's worker (applySubscribe), in
// order with the client's own requests.

// Events of the server's control publications on user and session channels.
const (
	subscribeEvent   = scaler.ReservedPrefix + "subscribe"
	unsubscribeEvent = scaler.ReservedPrefix + "unsubscribe"
)

// serverKey is the session store key of the server subscriptions kept for
// a session (or, with an empty session id, for a user): beside the
// client's own list, which a client's resume replaces.
func serverKey(userID, sessionID string) string { return "$" + sessionKey(userID, sessionID) }

// Subscribe subscribes the target's connections to channel, wherever they
// are in the cluster, as a server subscription (see the package doc's
// Server subscriptions). A user or session target is remembered for its
// later connections when the scaler keeps sessions; a connection target
// for the later connections of its session. It returns once the scaler
// accepted the order; a target with no connection is not an error.
func (s *Server) Subscribe(ctx context.Context, t Target, channel string) error {
	return s.membership(ctx, t, channel, true)
}

// Unsubscribe ends the target's subscriptions to channel, server or client
// made, wherever they are, and forgets a server subscription remembered for
// the target. The client is told with an "unsubscribed" frame.
func (s *Server) Unsubscribe(ctx context.Context, t Target, channel string) error {
	return s.membership(ctx, t, channel, false)
}

func (s *Server) membership(ctx context.Context, t Target, channel string, subscribe bool) error {
	if err := s.usable(); err != nil {
		return err
	}
	if err := t.valid(); err != nil {
		return err
	}
	if err := clientChannel(channel); err != nil {
		return err
	}
	if _, err := s.join(ctx); err != nil {
		return err
	}
	remember := func(key string) {
		if s.store == nil {
			return
		}
		if subscribe {
			s.store.add(key, channel, nil, scaler.Position{})
		} else {
			s.store.remove(key, channel)
		}
	}
	event, kind := subscribeEvent, msgSubscribe
	if !subscribe {
		event, kind = unsubscribeEvent, msgUnsubscribe
	}
	data, _ := json.Marshal(channel)
	switch t.kind {
	case targetUser:
		remember("$" + sessionKey(t.id, ""))
	case targetSession:
		remember("$" + t.id)
	case targetConn:
		// The connection's instance knows its session: it remembers it.
		return s.routeToConn(ctx, t.id, nodeMsg{K: kind, Conn: t.id, Name: channel})
	}
	return s.publishRaw(ctx, &scaler.Publication{Channel: t.channel(), Event: event, Data: data, Transient: true})
}

// control hands a server subscription order to a connection's worker. A
// connection with a backlog of orders it cannot queue is asked to
// reconnect: its next connection gets the remembered state.
func (s *Server) control(c *Conn, channel string, subscribe, remember bool) {
	ok := c.enqueueControl(func() {
		if subscribe {
			s.applySubscribe(c, channel, remember)
		} else {
			s.applyUnsubscribe(c, channel, remember)
		}
	})
	if !ok {
		s.log.Warn("sss: too many server subscription orders queued; the connection resyncs", "conn", c.id)
		c.close(CloseResync, "too many server subscription orders", ErrResync)
	}
}

// applySubscribe makes a server subscription on c, on its worker.
// remember stores it for c's session (the order named c alone).
func (s *Server) applySubscribe(c *Conn, channel string, remember bool) {
	if remember && c.persist {
		s.store.add(serverKey(c.session.UserID, c.session.SessionID), channel, nil, scaler.Position{})
	}
	if sb := c.sub(channel); sb != nil {
		if !sb.isServer() && !c.isPending(channel) {
			// The client's own becomes the server's; the client learns it.
			sb.setServer()
			c.send(encodeSubscribed(subResult{Channel: channel, Server: true}), false)
		}
		return
	}
	p, err := s.serverSub(c, channel)
	if err != nil {
		return
	}
	if !c.serverStarted {
		c.pendingServer = append(c.pendingServer, p)
		return
	}
	c.cork(func() {
		c.send(encodeSubscribed(p.result(false)), false)
		s.goLive(p)
	})
}

// serverSub subscribes c to channel for the server, held; the caller
// announces it and makes it go live.
func (s *Server) serverSub(c *Conn, channel string) (startPlan, error) {
	sb := &sub{c: c, channel: channel, server: true}
	sb.held.Store(true)
	if !c.addSub(sb) {
		s.log.Warn("sss: no room for a server subscription", "conn", c.id, "channel", channel, "max", s.cfg.maxSubs)
		return startPlan{}, ErrLimitExceeded
	}
	if err := s.attach(c.ctx, sb); err != nil {
		c.forget(channel)
		return startPlan{}, err
	}
	ctx, cancel := context.WithTimeout(c.ctx, s.cfg.askTimeout)
	defer cancel()
	s.presenceJoin(ctx, c, sb)
	if h := s.cfg.hooks.OnSubscribe; h != nil {
		s.hook("OnSubscribe", func() { h(c, channel) })
	}
	return s.prepare(ctx, sb, nil), nil
}

// applyUnsubscribe ends c's subscription to channel, on its worker.
func (s *Server) applyUnsubscribe(c *Conn, channel string, remember bool) {
	if remember && c.persist {
		s.store.remove(serverKey(c.session.UserID, c.session.SessionID), channel)
	}
	pending := c.isPending(channel)
	if pending {
		c.pendingServer = slices.DeleteFunc(c.pendingServer, func(p startPlan) bool { return p.sb.channel == channel })
	}
	sb := c.forget(channel)
	if sb == nil {
		return
	}
	if c.persist {
		s.store.remove(c.storeKey(), channel)
	}
	if !pending { // announced: the client holds it
		c.send(encodeUnsubscribed(channel), false)
	}
	s.endSub(c.ctx, sb)
}

// restoreServerSubs subscribes, held, what the server subscribes c to
// from the start: the session parser's Channels, and what is remembered
// for its user and its session. It runs first on c's worker; the
// subscriptions go live with the user and session channels.
func (s *Server) restoreServerSubs(c *Conn) {
	channels := slices.Clone(c.session.Channels)
	if s.store != nil {
		var keys []string
		if c.session.UserID != "" {
			keys = append(keys, serverKey(c.session.UserID, ""))
		}
		if c.persist {
			keys = append(keys, serverKey(c.session.UserID, c.session.SessionID))
		}
		for _, key := range keys {
			list, err := s.store.quickList(c.ctx, key)
			if err != nil {
				// Unknown now: the client gets them at its next connection.
				s.log.Warn("sss: cannot read the server subscriptions of a session", "conn", c.id, "err", err)
				continue
			}
			for _, st := range list {
				channels = append(channels, st.Channel)
			}
		}
	}
	slices.Sort(channels)
	for _, ch := range slices.Compact(channels) {
		if c.sub(ch) != nil {
			continue
		}
		if p, err := s.serverSub(c, ch); err == nil {
			c.pendingServer = append(c.pendingServer, p)
		}
	}
}

// startServerSubs announces the server subscriptions held since the
// connection began and makes them go live, once: at the client's first
// frame when it is not a resume (a resume does it itself).
func (s *Server) startServerSubs(c *Conn) {
	if c.serverStarted {
		return
	}
	c.serverStarted = true
	pending := c.pendingServer
	c.pendingServer = nil
	if len(pending) == 0 {
		return
	}
	c.cork(func() {
		for _, p := range pending {
			c.send(encodeSubscribed(p.result(false)), false)
			s.goLive(p)
		}
	})
}
