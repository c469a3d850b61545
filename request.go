package sss

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/superscaled/sss/scaler"
)

// A client's requests. The reader (server.go) hands each frame to handle.
// Subscribe, unsubscribe, publish and resume are ordered: the connection's
// worker runs them one at a time, in order (runOrdered), so their replies
// come in request order; a slow parser holds up only the ordered requests
// behind it. Asks and tells (asktell.go) run at once, on goroutines of the
// connection, and a reply goes back to the asktell.go that asked.

// handle processes one client frame, on the reader.
func (s *Server) handle(c *Conn, b []byte) {
	c.pauseForRoom()
	f, id, e := decodeFrame(b)
	if e != nil {
		s.stats.badFrames.Add(1)
		c.send(encodeError(id, e), false)
		return
	}
	if !c.spoke && f.Type != typePong && f.Type != typeReply {
		// The client's first frame ends the hold of its user and session
		// channels: a resume (on the worker) says from where, anything else
		// makes them go live from the welcome's position.
		c.spoke = true
		if f.Type != typeResume {
			s.startHeld(c)
		}
	}
	if c.limiter != nil && f.Type != typePong && f.Type != typeReady && f.Type != typeReply && !c.limiter.Allow() {
		c.send(encodeError(id, Errorf(CodeRateLimited, "too many requests")), false)
		return
	}
	switch f.Type {
	case typePong, typeReady: // ready: nothing to resume, startOwn did it
	case typeReply:
		s.handleReply(c, f)
	case typeAsk:
		s.handleAsk(c, f)
	case typeTell:
		s.handleTell(c, f)
	case typeSubscribe, typeUnsubscribe, typePublish, typeResume, typeHistory, typePresence:
		c.enqueue(func() { s.runOrdered(c, f) })
	}
}

// runOrdered runs one ordered request, on the connection's worker.
func (s *Server) runOrdered(c *Conn, f inFrame) {
	switch f.Type {
	case typeSubscribe:
		s.handleSubscribe(c, f)
	case typeUnsubscribe:
		if err := s.unsubscribe(c, f.Channel); err != nil {
			c.send(encodeError(f.ID, toWire(err)), false)
			return
		}
		c.send(encodeAck(f.ID, nil), false)
	case typePublish:
		if err := s.clientPublish(c, f); err != nil {
			c.send(encodeError(f.ID, toWire(err)), false)
			return
		}
		c.send(encodeAck(f.ID, nil), false)
	case typeResume:
		s.resume(c, f)
	case typeHistory:
		s.handleHistory(c, f)
	case typePresence:
		s.handlePresence(c, f)
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
	s.presenceJoin(ctx, c, sb)
	p := s.prepare(ctx, sb, since)
	if c.persist {
		s.store.add(c.storeKey(), channel, query, p.r.Position)
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
	if sb := c.sub(channel); sb != nil && sb.isServer() {
		return Errorf(CodeForbidden, "the server subscribed this connection to %q: only the server ends it", channel)
	}
	sb := c.forget(channel)
	if sb == nil {
		return Errorf(CodeNotFound, "not subscribed to %q", channel)
	}
	if c.persist {
		s.store.remove(c.storeKey(), channel)
	}
	s.endSub(c.ctx, sb)
	return nil
}

// endSub finishes a subscription c.forget dropped: out of the stream, out
// of the channel's presence, and the OnUnsubscribe hook. Every end goes
// through it: the client's unsubscribe, the server's, the connection's end.
func (s *Server) endSub(ctx context.Context, sb *sub) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.askTimeout)
	defer cancel()
	s.detach(ctx, sb.c, sb.channel)
	s.presenceLeave(ctx, sb.c, sb)
	if h := s.cfg.hooks.OnUnsubscribe; h != nil {
		s.hook("OnUnsubscribe", func() { h(sb.c, sb.channel) })
	}
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
	if err := s.checkPayload("data", data); err != nil {
		return err
	}
	if err := s.callParser(c, func(ctx context.Context) error { return p(ctx, c, f.Channel, f.Event, data) }); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.ctx, s.cfg.askTimeout)
	defer cancel()
	pub := &scaler.Publication{
		Channel: f.Channel, Event: f.Event, Data: data,
		Sender: scaler.Sender{User: c.session.UserID, Conn: c.id},
	}
	if f.ExceptSelf {
		pub.Except = c.id
	}
	return s.publishRaw(ctx, pub)
}

// maxParsers bounds the parser calls of one connection still running,
// those abandoned at their deadline included.
const maxParsers = 4

// callParser runs an application parser with the ask timeout. At the
// deadline it answers timeout whether the parser returned or not (a late
// answer is dropped). A refusal becomes forbidden, a panic internal.
func (s *Server) callParser(c *Conn, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(c.ctx, s.cfg.askTimeout)
	defer cancel()
	select {
	case c.parsers <- struct{}{}:
	case <-ctx.Done():
		return s.parserTimeout(c, ctx)
	}
	done := make(chan error, 1)
	if !c.spawn(func() {
		defer func() { <-c.parsers }()
		done <- s.runParser(ctx, c, f)
	}) {
		<-c.parsers
		return ErrUnavailable
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return s.parserTimeout(c, ctx)
	}
}

func (s *Server) parserTimeout(c *Conn, ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		s.log.Warn("sss: parser timed out", "conn", c.id, "timeout", s.cfg.askTimeout)
		return Errorf(CodeTimeout, "authorisation took too long")
	}
	return ctx.Err() // the connection ended
}

func (s *Server) runParser(ctx context.Context, c *Conn, f func(ctx context.Context) error) (err error) {
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
