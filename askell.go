package sss

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/superscaled/sss/scaler"
)

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

// acquire takes a handler slot without waiting.
func (c *Conn) acquire() bool {
	select {
	case c.sem <- struct{}{}:
		return true
	default:
		return false
	}
}

// waitSlot waits for a handler slot, at most the ask timeout.
func (c *Conn) waitSlot() (ok bool) {
	c.parsing(func() {
		t := time.NewTimer(c.srv.cfg.askTimeout)
		defer t.Stop()
		select {
		case c.sem <- struct{}{}:
			ok = true
		case <-t.C:
		case <-c.ctx.Done():
		}
	})
	return ok
}

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
	ctx, cancel := context.WithTimeout(c.ctx, s.cfg.askTimeout)
	var once sync.Once
	reply := func(frame []byte) { once.Do(func() { c.send(frame, false) }) }
	// Answer "timeout" at the deadline even if the handler ignores ctx; its
	// late result is then dropped.
	stop := context.AfterFunc(ctx, func() {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			reply(encodeError(f.ID, Errorf(CodeTimeout, "ask %q timed out", f.Name)))
		}
	})
	if !c.spawn(func() {
		res, err := s.runAsk(ctx, c, f.Name, h, f.Data)
		stop()
		cancel()
		// Free the slot before replying: a client that sends its next ask
		// on seeing this reply must find it free.
		<-c.sem
		if err != nil {
			reply(encodeError(f.ID, err))
			return
		}
		reply(encodeAck(f.ID, res))
	}) {
		stop()
		cancel()
		<-c.sem
	}
}

// runAsk calls h, encodes its result, and turns a panic into internal.
func (s *Server) runAsk(ctx context.Context, c *Conn, name string, h AskHandler, data json.RawMessage) (res []byte, e *Error) {
	defer func() {
		if r := recover(); r != nil {
			s.stats.panics.Add(1)
			s.log.Error("sss: ask handler panicked", "ask", name, "conn", c.id, "panic", r, "stack", string(debug.Stack()))
			res, e = nil, &Error{Code: CodeInternal, Message: "internal error"}
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
		return nil, &Error{Code: CodeInternal, Message: "internal error"}
	}
	if res == nil {
		res = []byte("null")
	}
	return res, nil
}

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
		defer func() { <-c.sem }()
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
		<-c.sem
	}
}

// Target names who a server Tell reaches: a connection, every connection of
// a session, or every connection of a user, on any instance.
type Target struct {
	kind byte // 'c', 's', 'u'
	id   string
}

// ToConn targets one connection by its id.
func ToConn(id string) Target { return Target{'c', id} }

// ToSession targets every connection of a session.
func ToSession(id string) Target { return Target{'s', id} }

// ToUser targets every connection of a user.
func ToUser(id string) Target { return Target{'u', id} }

func (t Target) String() string {
	switch t.kind {
	case 'c':
		return "conn " + t.id
	case 's':
		return "session " + t.id
	case 'u':
		return "user " + t.id
	}
	return "no target"
}

// Tell sends a message to the target's connections wherever they are. It
// returns once the scaler accepted it; delivery is not acknowledged by the
// clients, and a target with no connection is not an error.
func (s *Server) Tell(ctx context.Context, t Target, name string, data any) error {
	if name == "" || len(name) > maxNameLen || strings.HasPrefix(name, scaler.ReservedPrefix) {
		return Errorf(CodeBadRequest, "tell name must be 1 to %d bytes, not starting with %q", maxNameLen, scaler.ReservedPrefix)
	}
	raw, err := encodeData(data)
	if err != nil {
		return err
	}
	return s.tell(ctx, t, name, raw)
}

// Events of the server's own transient publications on user and session
// channels: the reserved tell that closes its target's connections, and
// tells (tellPrefix + name).
const (
	disconnectTell = scaler.ReservedPrefix + "disconnect"
	tellPrefix     = scaler.ReservedPrefix + "tell:"
)

func tellEvent(name string) string {
	if name == disconnectTell {
		return name
	}
	return tellPrefix + name
}

type disconnectOrder struct {
	Reason string `json:"reason"`
	Final  bool   `json:"final"`
}

// Disconnect closes the target's connections wherever they are in the
// cluster (e.g. on logout, or when a user is banned), with close code 4005
// (the clients may reconnect) or, if final, 4501 (they must not). It
// returns once the scaler accepted the order.
func (s *Server) Disconnect(ctx context.Context, t Target, reason string, final bool) error {
	raw, _ := json.Marshal(disconnectOrder{Reason: truncate(reason, 120), Final: final})
	return s.tell(ctx, t, disconnectTell, raw)
}

// obey carries out a disconnect order; it reports false for other tells.
func (c *Conn) obey(name string, data []byte) bool {
	if name != disconnectTell {
		return false
	}
	var o disconnectOrder
	json.Unmarshal(data, &o)
	c.Close(o.Reason, o.Final)
	return true
}

func (s *Server) tell(ctx context.Context, t Target, name string, raw []byte) error {
	if t.id == "" {
		return Errorf(CodeBadRequest, "empty target")
	}
	switch t.kind {
	case 'u':
		return s.publishRaw(ctx, &scaler.Publication{Channel: UserChannel(t.id), Event: tellEvent(name), Data: raw, Transient: true})
	case 's':
		return s.publishRaw(ctx, &scaler.Publication{Channel: SessionChannel(t.id), Event: tellEvent(name), Data: raw, Transient: true})
	case 'c':
		return s.sendNode(ctx, nodeOf(t.id), nodeMsg{K: "tell", Conn: t.id, Name: name, Data: raw})
	}
	return Errorf(CodeBadRequest, "invalid target")
}

// Ask sends an ask to one connection, wherever in the cluster it is, and
// waits for the client's reply, at most the ask timeout (or ctx's deadline,
// if sooner). Errors the client returned are *Error values.
func (s *Server) Ask(ctx context.Context, connID, name string, data any) (json.RawMessage, error) {
	if name == "" || len(name) > maxNameLen {
		return nil, Errorf(CodeBadRequest, "ask name must be 1 to %d bytes", maxNameLen)
	}
	raw, err := encodeData(data)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.askTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	ch := make(chan nodeMsg, 1)
	s.pending.mu.Lock()
	if s.pending.m == nil {
		s.pending.mu.Unlock()
		return nil, ErrServerClosed
	}
	s.pending.seq++
	id := s.pending.seq
	s.pending.m[id] = ch
	s.pending.mu.Unlock()
	defer func() {
		s.pending.mu.Lock()
		delete(s.pending.m, id)
		s.pending.mu.Unlock()
	}()
	msg := nodeMsg{K: "ask", ID: id, Conn: connID, Name: name, Data: raw, Reply: s.nodeID, Deadline: deadline.UnixMilli()}
	if err := s.sendNode(ctx, nodeOf(connID), msg); err != nil {
		if errors.Is(err, scaler.ErrUnknownNode) {
			return nil, Errorf(CodeNotFound, "connection %q is not connected", connID)
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

func encodeData(data any) ([]byte, error) {
	switch d := data.(type) {
	case nil:
		return nil, nil
	case json.RawMessage:
		raw, err := compactJSON(d)
		if err != nil {
			return nil, Errorf(CodeBadRequest, "data is not valid JSON: %v", err)
		}
		return raw, nil
	}
	raw, err := json.Marshal(data)
	if err != nil {
		return nil, fmt.Errorf("sss: encode data: %w", err)
	}
	return raw, nil
}

// nodeOf is the node part of a connection id ("node.random").
func nodeOf(connID string) string {
	node, _, _ := strings.Cut(connID, ".")
	return node
}

// nodeMsg is what instances send each other to route tells and asks to a
// connection, and replies back.
type nodeMsg struct {
	K        string          `json:"k"` // tell, ask, reply
	ID       uint64          `json:"id,omitempty"`
	Conn     string          `json:"conn,omitempty"`
	Name     string          `json:"name,omitempty"`
	Data     json.RawMessage `json:"data,omitempty"`
	Err      *Error          `json:"err,omitempty"`
	Reply    string          `json:"reply,omitempty"`    // node awaiting the reply
	Deadline int64           `json:"deadline,omitempty"` // unix ms
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
		return err
	}
	return nil
}

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
	switch m.K {
	case "reply":
		s.pending.mu.Lock()
		ch := s.pending.m[m.ID]
		s.pending.mu.Unlock()
		if ch != nil {
			select {
			case ch <- m:
			default:
			}
		}
	case "tell", "ask":
		s.cmu.RLock()
		c := s.conns[m.Conn]
		s.cmu.RUnlock()
		if m.K == "tell" {
			if c != nil && !c.obey(m.Name, m.Data) {
				c.send(encodeTell(m.Name, m.Data), false)
			}
			return
		}
		if c == nil {
			s.replyNode(m.Reply, m.ID, nil, Errorf(CodeNotFound, "connection %q is not connected", m.Conn))
			return
		}
		c.serverAsk(m)
	}
}

// replyNode answers a routed ask. Sending may do I/O, so it must not run on
// the scaler's delivery goroutine or the read loop when remote.
func (s *Server) replyNode(node string, id uint64, data json.RawMessage, e *Error) {
	m := nodeMsg{K: "reply", ID: id, Data: data}
	m.Err = e
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

// serverAsk forwards a server ask to the client, remembering where the
// reply must go. Pending asks per connection are bounded.
func (c *Conn) serverAsk(m nodeMsg) {
	c.amu.Lock()
	if c.asks == nil {
		c.asks = make(map[uint64]pendingAsk)
	}
	if len(c.asks) >= c.srv.cfg.maxPending {
		c.amu.Unlock()
		c.srv.replyNode(m.Reply, m.ID, nil, Errorf(CodeRateLimited, "too many server asks pending on connection"))
		return
	}
	c.askSeq++
	id := c.askSeq
	deadline := time.UnixMilli(m.Deadline)
	if m.Deadline == 0 {
		deadline = time.Now().Add(c.srv.cfg.askTimeout)
	}
	c.asks[id] = pendingAsk{origin: m.Reply, originID: m.ID, deadline: deadline}
	c.amu.Unlock()
	c.send(encodeServerAsk(id, m.Name, m.Data), false)
}

// handleReply routes a client's reply to the node that asked.
func (c *Conn) handleReply(f inFrame) {
	c.amu.Lock()
	p, ok := c.asks[f.ID]
	delete(c.asks, f.ID)
	c.amu.Unlock()
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
	if p.origin == c.srv.nodeID {
		c.srv.replyNode(p.origin, p.originID, data, e)
		return
	}
	c.spawn(func() { c.srv.replyNode(p.origin, p.originID, data, e) })
}

// sweepAsks forgets server asks past their deadline (the asker gave up).
func (c *Conn) sweepAsks(now time.Time) {
	c.amu.Lock()
	defer c.amu.Unlock()
	for id, p := range c.asks {
		if now.After(p.deadline) {
			delete(c.asks, id)
		}
	}
}

// failAsks answers every pending server ask of a closed connection.
func (c *Conn) failAsks(ctx context.Context) {
	c.amu.Lock()
	asks := c.asks
	c.asks = nil
	c.amu.Unlock()
	for _, p := range asks {
		c.srv.replyNode(p.origin, p.originID, nil, Errorf(CodeNotFound, "connection closed"))
	}
}

// failPending ends every ask this server is waiting on; called on leave.
func (s *Server) failPending() {
	s.pending.mu.Lock()
	defer s.pending.mu.Unlock()
	for id, ch := range s.pending.m {
		select {
		case ch <- nodeMsg{K: "reply", ID: id, Err: &Error{Code: CodeUnavailable, Message: "server closed"}}:
		default:
		}
	}
	s.pending.m = nil
}
