package sss

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/superscaled/sss/scaler"
)

// A client's requests. The read loop (server.go) hands each frame to
// handle, which answers it here (subscribe, unsubscribe, publish), or in
// catchup.go (resume) or asktell.go (ask, tell, reply). Subscribe,
// unsubscribe, publish and resume run on the read loop, one at a time, so
// their replies come in request order; asks and tells run on goroutines of
// the connection.

// handle processes one client frame, on the read loop.
func (s *Server) handle(c *Conn, b []byte) {
	f, id, e := decodeFrame(b)
	if e != nil {
		s.stats.badFrames.Add(1)
		c.send(encodeError(id, e), false)
		return
	}
	if f.Type != typeResume && f.Type != typePong && f.Type != typeReply {
		// The first request is not a resume: the user and session channels
		// go live from the welcome's position.
		s.startOwn(c, nil)
	}
	if c.limiter != nil && f.Type != typePong && f.Type != typeReady && f.Type != typeReply && !c.limiter.Allow() {
		c.send(encodeError(id, Errorf(CodeRateLimited, "too many requests")), false)
		return
	}
	switch f.Type {
	case typePong, typeReady: // ready: nothing to resume, startOwn did it
	case typeReply:
		s.handleReply(c, f)
	case typeSubscribe:
		c.parsing(func() { s.handleSubscribe(c, f) })
	case typeUnsubscribe:
		if err := s.unsubscribe(c, f.Channel); err != nil {
			c.send(encodeError(f.ID, toWire(err)), false)
			return
		}
		c.send(encodeAck(f.ID, nil), false)
	case typePublish:
		c.parsing(func() {
			if err := s.clientPublish(c, f); err != nil {
				c.send(encodeError(f.ID, toWire(err)), false)
				return
			}
			c.send(encodeAck(f.ID, nil), false)
		})
	case typeResume:
		c.parsing(func() { s.resume(c, f) })
	case typeAsk:
		s.handleAsk(c, f)
	case typeTell:
		s.handleTell(c, f)
	}
}

// handleSubscribe subscribes, acks with the subscription's position, then
// sends what the client asked to catch up on and goes live.
func (s *Server) handleSubscribe(c *Conn, f inFrame) {
	p, err := s.subscribe(c, f.Channel, f.Query, f.Since)
	if err != nil {
		c.send(encodeError(f.ID, toWire(err)), false)
		return
	}
	c.cork(func() {
		c.send(encodeSubscribeAck(f.ID, p.result(f.Since != nil)), false)
		s.goLive(p)
	})
}

// subscribe makes a client subscription, held: the caller acks it with
// the plan's result, then calls goLive. Errors are for the caller to send.
func (s *Server) subscribe(c *Conn, channel string, query json.RawMessage, since *scaler.Position) (startPlan, error) {
	if err := clientChannel(channel); err != nil {
		return startPlan{}, err
	}
	query, err := compactJSON(query)
	if err != nil {
		return startPlan{}, Errorf(CodeBadRequest, "query is not valid JSON")
	}
	if err := s.canSubscribe(c, channel); err != nil {
		return startPlan{}, err
	}
	if p := s.cfg.subscriptP; p != nil {
		if err := s.callParser(c, func(ctx context.Context) error { return p(ctx, c, channel, query) }); err != nil {
			return startPlan{}, err
		}
	}
	sb := &sub{c: c, channel: channel, query: query}
	sb.held.Store(true)
	if !c.addSub(sb) {
		return startPlan{}, s.canSubscribe(c, channel)
	}
	if err := s.attach(c.ctx, sb); err != nil {
		c.forget(channel)
		return startPlan{}, err
	}
	ctx, cancel := context.WithTimeout(c.ctx, s.cfg.askTimeout)
	defer cancel()
	p := s.prepare(ctx, sb, since)
	if c.persist {
		s.storeCall(ctx, "add subscription", func(ctx context.Context, st scaler.SessionStore) error {
			return st.AddSubscription(ctx, c.session.SessionID, scaler.StoredSubscription{Channel: channel, Query: query})
		})
	}
	if h := s.cfg.hooks.OnSubscribe; h != nil {
		s.hook("OnSubscribe", func() { h(c, channel) })
	}
	return p, nil
}

// canSubscribe refuses a channel the connection holds already, or one more
// subscription than the limit.
func (s *Server) canSubscribe(c *Conn, channel string) error {
	switch dup, n := c.subCount(channel); {
	case dup:
		return Errorf(CodeConflict, "already subscribed to %q", channel)
	case n >= s.cfg.maxSubs:
		return Errorf(CodeLimitExceeded, "at most %d subscriptions per connection", s.cfg.maxSubs)
	}
	return nil
}

func (s *Server) unsubscribe(c *Conn, channel string) error {
	if len(channel) > MaxChannelLen {
		return Errorf(CodeTooLarge, "channel name longer than %d bytes", MaxChannelLen)
	}
	if !c.forget(channel) {
		return Errorf(CodeNotFound, "not subscribed to %q", channel)
	}
	s.detach(c.ctx, c, channel)
	if c.persist {
		s.storeCall(c.ctx, "remove subscription", func(ctx context.Context, st scaler.SessionStore) error {
			return st.RemoveSubscription(ctx, c.session.SessionID, channel)
		})
	}
	if h := s.cfg.hooks.OnUnsubscribe; h != nil {
		s.hook("OnUnsubscribe", func() { h(c, channel) })
	}
	return nil
}

// clientPublish publishes for a client, with the sender stamped by the
// server, once the publish parser allowed it.
func (s *Server) clientPublish(c *Conn, f inFrame) error {
	p := s.cfg.publishP
	if p == nil {
		return Errorf(CodeForbidden, "client publish is not enabled")
	}
	if err := clientChannel(f.Channel); err != nil {
		return err
	}
	data, err := compactJSON(f.Data)
	if err != nil {
		return Errorf(CodeBadRequest, "data is not valid JSON")
	}
	if err := s.callParser(c, func(ctx context.Context) error { return p(ctx, c, f.Channel, f.Event, data) }); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.ctx, s.cfg.askTimeout)
	defer cancel()
	return s.publishRaw(ctx, &scaler.Publication{
		Channel: f.Channel, Event: f.Event, Data: data,
		Sender: scaler.Sender{User: c.session.UserID, Conn: c.id},
	})
}

// callParser runs an application parser with the ask timeout, turning a
// refusal into forbidden and a panic into internal.
func (s *Server) callParser(c *Conn, f func(ctx context.Context) error) (err error) {
	ctx, cancel := context.WithTimeout(c.ctx, s.cfg.askTimeout)
	defer cancel()
	defer func() {
		if r := recover(); r != nil {
			s.stats.panics.Add(1)
			s.log.Error("sss: parser panicked", "conn", c.id, "panic", r)
			err = errInternal
		}
	}()
	err = f(ctx)
	if err == nil {
		return nil
	}
	var e *Error
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, context.DeadlineExceeded):
		return Errorf(CodeTimeout, "authorisation took too long")
	}
	return Errorf(CodeForbidden, "%v", err)
}
