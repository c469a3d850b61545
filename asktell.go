package sss

import (
	"context"
	"encoding/json"
	"errors"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/superscaled/sss/scaler"
)

// Ask and tell, both ways. A client's ask or tell (request.go hands it
// here) runs its handler on a goroutine of the connection and replies
// through the connection's send queue. The server's Tell and Ask reach a
// connection wherever it is: to a user or session through its flat
// reserved channel (a transient publication, see hub.go's deliver), to one
// connection through a node message to the instance that holds it
// (handleNode), whose reply comes back the same way.

// AskHandler answers a client's ask. The result is encoded with
// encoding/json. ctx ends when the connection closes or the ask times out.
// Return an *Error to choose the code the client sees.
type AskHandler func(ctx context.Context, c *Conn, data json.RawMessage) (any, error)

// TellHandler receives a client's tell. The client was acknowledged already;
// a returned error is logged.
type TellHandler func(ctx context.Context, c *Conn, data json.RawMessage) error

// HandleAsk registers the handler for asks named name, replacing any.
func (s *Server) HandleAsk(name string, h AskHandler) {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	s.asks[name] = h
}

// HandleTell registers the handler for tells named name, replacing any.
func (s *Server) HandleTell(name string, h TellHandler) {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	s.tells[name] = h
}

// A client's ask and tell.

// handleAsk runs a client's ask on a goroutine of the connection. The
// client gets exactly one reply: the result, the handler's error, or
// timeout at the deadline if the handler ignores its context.
func (s *Server) handleAsk(c *Conn, f inFrame) {
	s.hmu.RLock()
	h := s.asks[f.Name]
	s.hmu.RUnlock()
	if h == nil {
		c.send(encodeError(f.ID, Errorf(CodeNotFound, "no ask handler %q", f.Name)), false)
		return
	}
	if !c.acquire() {
		c.send(encodeError(f.ID, Errorf(CodeRateLimited, "more than %d requests in flight", s.cfg.concurrency)), false)
		return
	}
	s.stats.asks.Add(1)
	a := c.startAsk(f.ID, f.Name)
	if !c.spawn(func() {
		res, err := s.runAsk(a, c, f.Name, h, f.Data)
		c.endAsk(a)
		// Free the slot before replying: a client that sends its next ask
		// on seeing this reply must find it free.
		c.release()
		if err != nil {
			a.reply(encodeError(f.ID, err))
			return
		}
		a.reply(encodeAck(f.ID, res))
	}) {
		c.endAsk(a)
		c.release()
	}
}

// askCtx is the context of a client's ask: done when the ask times out
// (DeadlineExceeded, and the client is answered timeout at once) or ends,
// or the connection ends (Canceled). It costs no timer, goroutine or
// registration with the connection's context of its own: the connection
// keeps its asks in flight and one timer for the earliest deadline
// (startAsk), which profiles showed cost less than a context.WithTimeout
// and a context.AfterFunc per ask.
type askCtx struct {
	c        *Conn
	id       uint64
	name     string
	deadline time.Time

	mu      sync.Mutex
	done    chan struct{} // made when first asked for
	err     error
	replied bool
}

func (a *askCtx) Deadline() (time.Time, bool) { return a.deadline, true }
func (a *askCtx) Value(key any) any           { return a.c.ctx.Value(key) }

func (a *askCtx) Done() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.done == nil {
		a.done = make(chan struct{})
		if a.err != nil {
			close(a.done)
		}
	}
	return a.done
}

func (a *askCtx) Err() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// cancel ends the context with err, once; it reports whether this call
// did.
func (a *askCtx) cancel(err error) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.err != nil {
		return false
	}
	a.err = err
	if a.done != nil {
		close(a.done)
	}
	return true
}

// reply sends the ask's one reply; later ones are dropped. The goroutine
// that replies has nothing else to do: it writes the reply itself when no
// writer runs.
func (a *askCtx) reply(frame []byte) {
	a.mu.Lock()
	first := !a.replied
	a.replied = true
	a.mu.Unlock()
	if first {
		a.c.sendWrite(frame)
	}
}

// startAsk registers an ask in flight and arms the connection's ask timer
// if it is not armed: every ask has the same timeout, so a timer armed
// for an earlier ask fires first, and the next deadline is looked for
// then.
func (c *Conn) startAsk(id uint64, name string) *askCtx {
	a := &askCtx{c: c, id: id, name: name, deadline: time.Now().Add(c.srv.cfg.askTimeout)}
	c.xmu.Lock()
	defer c.xmu.Unlock()
	if c.xended {
		a.err = context.Canceled
		return a
	}
	if c.inflight == nil {
		c.inflight = make(map[*askCtx]struct{})
	}
	c.inflight[a] = struct{}{}
	if !c.askArmed {
		c.askArmed = true
		if c.askTimer == nil {
			c.askTimer = time.AfterFunc(c.srv.cfg.askTimeout, c.expireAsks)
		} else {
			c.askTimer.Reset(c.srv.cfg.askTimeout)
		}
	}
	return a
}

// endAsk forgets an ask whose handler returned, and ends its context.
func (c *Conn) endAsk(a *askCtx) {
	c.xmu.Lock()
	delete(c.inflight, a)
	c.xmu.Unlock()
	a.cancel(context.Canceled)
}

// expireAsks runs on the ask timer: it times out the asks past their
// deadline (the client is answered now, whatever the handler does later)
// and re-arms the timer for the next deadline.
func (c *Conn) expireAsks() {
	now := time.Now()
	var expired []*askCtx
	c.xmu.Lock()
	c.askArmed = false
	var next time.Time
	for a := range c.inflight {
		if !a.deadline.After(now) {
			expired = append(expired, a)
			delete(c.inflight, a)
		} else if next.IsZero() || a.deadline.Before(next) {
			next = a.deadline
		}
	}
	if !next.IsZero() && !c.xended {
		c.askArmed = true
		c.askTimer.Reset(next.Sub(now))
	}
	c.xmu.Unlock()
	for _, a := range expired {
		if a.cancel(context.DeadlineExceeded) {
			a.reply(encodeError(a.id, Errorf(CodeTimeout, "ask %q timed out", a.name)))
		}
	}
}

// endAsks cancels the asks in flight when the connection ends; no ask
// starts after it.
func (c *Conn) endAsks() {
	c.xmu.Lock()
	c.xended = true
	inflight := c.inflight
	c.inflight = nil
	if c.askTimer != nil {
		c.askTimer.Stop()
	}
	c.xmu.Unlock()
	for a := range inflight {
		a.cancel(context.Canceled)
	}
}

// runAsk calls h, encodes its result, and turns a panic into internal.
func (s *Server) runAsk(ctx context.Context, c *Conn, name string, h AskHandler, data json.RawMessage) (res []byte, e *Error) {
	defer func() {
		if r := recover(); r != nil {
			s.stats.panics.Add(1)
			s.log.Error("sss: ask handler panicked", "ask", name, "conn", c.id, "panic", r, "stack", string(debug.Stack()))
			res, e = nil, errInternal
		}
	}()
	v, err := h(ctx, c, data)
	if err != nil {
		w := toWire(err)
		if w.Code == CodeInternal {
			s.log.Error("sss: ask handler failed", "ask", name, "conn", c.id, "err", err)
		}
		return nil, w
	}
	if res, err = encodeData(v); err != nil {
		s.log.Error("sss: cannot encode ask result", "ask", name, "err", err)
		return nil, errInternal
	}
	if err := s.checkPayload("result", res); err != nil {
		s.log.Warn("sss: ask result too large", "ask", name, "conn", c.id, "bytes", len(res))
		return nil, err
	}
	if res == nil {
		res = []byte("null")
	}
	return res, nil
}

// handleTell acks a client's tell and runs its handler on a goroutine of
// the connection.
func (s *Server) handleTell(c *Conn, f inFrame) {
	s.hmu.RLock()
	h := s.tells[f.Name]
	s.hmu.RUnlock()
	if h == nil {
		c.send(encodeError(f.ID, Errorf(CodeNotFound, "no tell handler %q", f.Name)), false)
		return
	}
	// A tell is acked on receipt, so the client cannot see when its handler
	// ends: rather than refuse, wait for a slot (pausing this connection's
	// reads), for at most the ask timeout.
	if !c.acquire() && !c.waitSlot() {
		c.send(encodeError(f.ID, Errorf(CodeRateLimited, "tell handlers of this connection are stuck")), false)
		return
	}
	s.stats.tells.Add(1)
	c.send(encodeAck(f.ID, nil), false)
	if !c.spawn(func() {
		defer c.release()
		ctx, cancel := context.WithTimeout(c.ctx, s.cfg.askTimeout)
		defer cancel()
		defer func() {
			if r := recover(); r != nil {
				s.stats.panics.Add(1)
				s.log.Error("sss: tell handler panicked", "tell", f.Name, "conn", c.id, "panic", r, "stack", string(debug.Stack()))
			}
		}()
		if err := h(ctx, c, f.Data); err != nil {
			s.log.Warn("sss: tell handler failed", "tell", f.Name, "conn", c.id, "err", err)
		}
	}) {
		c.release()
	}
}

// Targets.

// Target names who a server Tell, Ask or Disconnect reaches: a connection,
// every connection of a session, or every connection of a user, on any
// instance.
type Target struct {
	kind targetKind
	id   string
}

type targetKind byte

const (
	targetNone targetKind = iota
	targetConn
	targetSession
	targetUser
)

// ToConn targets one connection by its id.
func ToConn(id string) Target { return Target{targetConn, id} }

// ToSession targets every connection of a user's session (anonymous
// connections have an empty user id).
func ToSession(userID, sessionID string) Target {
	return Target{targetSession, sessionKey(userID, sessionID)}
}

// ToUser targets every connection of a user.
func ToUser(id string) Target { return Target{targetUser, id} }

func (t Target) String() string {
	switch t.kind {
	case targetConn:
		return "conn " + t.id
	case targetSession:
		return "session " + t.id
	case targetUser:
		return "user " + t.id
	}
	return "no target"
}

// channel is the reserved channel of a user or session target.
func (t Target) channel() string {
	if t.kind == targetUser {
		return UserChannel(t.id)
	}
	return scaler.ReservedPrefix + "s." + t.id
}

var errNoTarget = Errorf(CodeBadRequest, "no target: use ToConn, ToSession or ToUser with an id")

func (t Target) valid() error {
	if t.kind == targetNone || t.id == "" || t.kind == targetSession && strings.HasSuffix(t.id, ":") {
		return errNoTarget
	}
	return nil
}

// tellPrefix starts the event of the server's transient publication that
// carries a tell to a user's or session's connections: tellPrefix + name.
const tellPrefix = scaler.ReservedPrefix + "tell:"

// Tell sends a message to the target's connections wherever they are. It
// returns once the scaler accepted it; delivery is not acknowledged by the
// clients, and a target with no connection is not an error.
func (s *Server) Tell(ctx context.Context, t Target, name string, data any) error {
	if err := s.usable(); err != nil {
		return err
	}
	if err := t.valid(); err != nil {
		return err
	}
	if name == "" || len(name) > maxNameLen || reserved(name) {
		return Errorf(CodeBadRequest, "tell name must be 1 to %d bytes, not starting with %q", maxNameLen, scaler.ReservedPrefix)
	}
	raw, err := encodeData(data)
	if err != nil {
		return err
	}
	if err := s.checkPayload("data", raw); err != nil {
		return err
	}
	if t.kind == targetConn {
		return s.routeToConn(ctx, t.id, nodeMsg{K: msgTell, Conn: t.id, Name: name, Data: raw})
	}
	return s.publishRaw(ctx, &scaler.Publication{Channel: t.channel(), Event: tellPrefix + name, Data: raw, Transient: true})
}

// Ask sends an ask to one connection (a ToConn target), wherever in the
// cluster it is, and waits for the client's reply, at most the ask timeout
// (or ctx's deadline, if sooner). Errors the client returned are *Error
// values; a connection that is not connected gives ErrNotFound.
func (s *Server) Ask(ctx context.Context, t Target, name string, data any) (json.RawMessage, error) {
	if err := s.usable(); err != nil {
		return nil, err
	}
	if err := t.valid(); err != nil {
		return nil, err
	}
	if t.kind != targetConn {
		return nil, Errorf(CodeBadRequest, "only a connection can be asked, not a %s", t)
	}
	if name == "" || len(name) > maxNameLen {
		return nil, Errorf(CodeBadRequest, "ask name must be 1 to %d bytes", maxNameLen)
	}
	raw, err := encodeData(data)
	if err != nil {
		return nil, err
	}
	if err := s.checkPayload("data", raw); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.askTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	id, ch, ok := s.awaitReply()
	if !ok {
		return nil, ErrServerClosed
	}
	defer s.forgetReply(id)
	msg := nodeMsg{K: msgAsk, ID: id, Conn: t.id, Name: name, Data: raw, Reply: s.nodeID, Deadline: deadline.UnixMilli()}
	if err := s.routeToConn(ctx, t.id, msg); err != nil {
		if errors.Is(err, scaler.ErrUnknownNode) {
			return nil, Errorf(CodeNotFound, "connection %q is not connected", t.id)
		}
		return nil, err
	}
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Data, nil
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, Errorf(CodeTimeout, "no reply to ask %q", name)
		}
		return nil, ctx.Err()
	}
}

// awaitReply registers a server ask waiting for its reply.
func (s *Server) awaitReply() (uint64, chan nodeMsg, bool) {
	s.pending.mu.Lock()
	defer s.pending.mu.Unlock()
	if s.pending.m == nil {
		return 0, nil, false
	}
	s.pending.seq++
	ch := make(chan nodeMsg, 1)
	s.pending.m[s.pending.seq] = ch
	return s.pending.seq, ch, true
}

func (s *Server) forgetReply(id uint64) {
	s.pending.mu.Lock()
	delete(s.pending.m, id)
	s.pending.mu.Unlock()
}

// failPending ends every ask this server is waiting on; called on leave.
func (s *Server) failPending() {
	s.pending.mu.Lock()
	defer s.pending.mu.Unlock()
	for id, ch := range s.pending.m {
		select {
		case ch <- nodeMsg{K: msgReply, ID: id, Err: &Error{Code: CodeUnavailable, Message: "server closed"}}:
		default:
		}
	}
	s.pending.m = nil
}

// Node messages.

// nodeMsg is what instances send each other to reach one connection (a
// tell, an ask, a disconnect order) and to answer an ask.
type nodeMsg struct {
	K        string          `json:"k"` // msgTell, msgAsk, msgReply, msgDisconnect
	ID       uint64          `json:"id,omitempty"`
	Conn     string          `json:"conn,omitempty"`
	Name     string          `json:"name,omitempty"`
	Data     json.RawMessage `json:"data,omitempty"`
	Err      *Error          `json:"err,omitempty"`
	Reply    string          `json:"reply,omitempty"`    // node awaiting the reply
	Deadline int64           `json:"deadline,omitempty"` // unix ms
}

// Kinds of node messages.
const (
	msgTell       = "tell"
	msgAsk        = "ask"
	msgReply      = "reply"
	msgDisconnect = "disconnect"
	// A server subscription's start or end for one connection (Name: the
	// channel), remembered for its session.
	msgSubscribe   = "subscribe"
	msgUnsubscribe = "unsubscribe"
)

// nodeOf is the node part of a connection id ("node.random").
func nodeOf(connID string) string {
	node, _, _ := strings.Cut(connID, ".")
	return node
}

// routeToConn sends m to the instance holding connection connID. An unknown
// node is reported as scaler.ErrUnknownNode only by Ask, which promises
// not_found; for the others a target that is gone is not an error.
func (s *Server) routeToConn(ctx context.Context, connID string, m nodeMsg) error {
	err := s.sendNode(ctx, nodeOf(connID), m)
	if errors.Is(err, scaler.ErrUnknownNode) && m.K != msgAsk {
		return nil
	}
	return err
}

// sendNode routes a message to a node, short-circuiting this one.
func (s *Server) sendNode(ctx context.Context, node string, m nodeMsg) error {
	if node == s.nodeID {
		s.handleNode(m)
		return nil
	}
	n, err := s.join(ctx)
	if err != nil {
		return err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := n.Send(ctx, node, b); err != nil {
		s.stats.scalerErrors.Add(1)
		if errors.Is(err, scaler.ErrUnknownNode) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		s.log.Warn("sss: cannot reach a node", "node", node, "err", err)
		return ErrUnavailable
	}
	return nil
}

// handleNodeMessage decodes a message from another node.
func (s *Server) handleNodeMessage(from string, b []byte) {
	var m nodeMsg
	if err := json.Unmarshal(b, &m); err != nil {
		s.log.Warn("sss: bad node message", "from", from, "err", err)
		return
	}
	s.handleNode(m)
}

// handleNode acts on a routed message. It runs on the scaler's goroutine, so
// it only queues; replies to other nodes go out on a goroutine of their own.
func (s *Server) handleNode(m nodeMsg) {
	if m.K == msgReply {
		s.pending.mu.Lock()
		ch := s.pending.m[m.ID]
		s.pending.mu.Unlock()
		if ch != nil {
			select {
			case ch <- m:
			default:
			}
		}
		return
	}
	c := s.hub.conn(m.Conn)
	switch m.K {
	case msgTell:
		if c != nil {
			c.send(encodeTell(m.Name, m.Data), false)
		}
	case msgDisconnect:
		if c != nil {
			obey(c, m.Data)
		}
	case msgSubscribe, msgUnsubscribe:
		if c != nil {
			s.control(c, m.Name, m.K == msgSubscribe, true)
		}
	case msgAsk:
		if c == nil {
			s.replyNode(m.Reply, m.ID, nil, Errorf(CodeNotFound, "connection %q is not connected", m.Conn))
			return
		}
		s.forwardAsk(c, m)
	}
}

// replyNode answers a routed ask. Sending may do I/O, so it must not run on
// the scaler's delivery goroutine or the read loop when remote.
func (s *Server) replyNode(node string, id uint64, data json.RawMessage, e *Error) {
	m := nodeMsg{K: msgReply, ID: id, Data: data, Err: e}
	if node == s.nodeID {
		s.handleNode(m)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.askTimeout)
	defer cancel()
	if err := s.sendNode(ctx, node, m); err != nil {
		s.log.Warn("sss: cannot route ask reply", "node", node, "err", err)
	}
}

// The server's asks to a client.

// forwardAsk sends a server ask to the client, remembering where the reply
// must go. Pending asks per connection are bounded.
func (s *Server) forwardAsk(c *Conn, m nodeMsg) {
	deadline := time.UnixMilli(m.Deadline)
	if m.Deadline == 0 {
		deadline = time.Now().Add(s.cfg.askTimeout)
	}
	id, ok := c.addAsk(pendingAsk{origin: m.Reply, originID: m.ID, deadline: deadline})
	if !ok {
		s.replyNode(m.Reply, m.ID, nil, Errorf(CodeRateLimited, "too many server asks pending on connection"))
		return
	}
	c.send(encodeServerAsk(id, m.Name, m.Data), false)
}

// handleReply routes a client's reply to the node that asked.
func (s *Server) handleReply(c *Conn, f inFrame) {
	p, ok := c.takeAsk(f.ID)
	if !ok {
		return // unknown or expired: ignored, as documented
	}
	var e *Error
	var data json.RawMessage
	if f.Error != nil {
		code := f.Error.Code
		if code == "" {
			code = CodeInternal
		}
		e = &Error{Code: code, Message: truncate(f.Error.Message, 1024)}
	} else {
		var err error
		if data, err = compactJSON(f.Result); err != nil {
			e = Errorf(CodeBadRequest, "client replied with invalid JSON")
		}
	}
	if p.origin == s.nodeID {
		s.replyNode(p.origin, p.originID, data, e)
		return
	}
	c.spawn(func() { s.replyNode(p.origin, p.originID, data, e) })
}

// failAsks answers every pending server ask of a closed connection.
func (s *Server) failAsks(c *Conn) {
	for _, p := range c.takeAsks() {
		s.replyNode(p.origin, p.originID, nil, Errorf(CodeNotFound, "connection closed"))
	}
}
