package sss

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/time/rate"

	"github.com/superscaled/sss/scaler"
)

// ServeHTTP upgrades a request to an sss.v1 WebSocket connection and serves
// it until it ends.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.admit() {
		http.Error(w, "server shutting down", http.StatusServiceUnavailable)
		return
	}
	upgraded := false
	defer func() {
		if !upgraded {
			s.done()
		}
	}()
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		http.Error(w, "expected a WebSocket upgrade", http.StatusBadRequest)
		return
	}
	if !offers(r, Subprotocol) {
		http.Error(w, "the client must offer WebSocket subprotocol "+Subprotocol, http.StatusBadRequest)
		return
	}
	sess, err := s.parseSession(r)
	if err != nil {
		status, msg := httpStatus(err)
		s.log.Debug("sss: session refused", "remote", r.RemoteAddr, "status", status, "err", err)
		http.Error(w, msg, status)
		return
	}
	if _, err := s.join(r.Context()); err != nil {
		s.log.Error("sss: cannot join scaler", "err", err)
		http.Error(w, "cluster unavailable", http.StatusServiceUnavailable)
		return
	}
	hj := &hijackRecorder{ResponseWriter: w}
	ws, err := websocket.Accept(hj, r, &websocket.AcceptOptions{
		Subprotocols:   []string{Subprotocol},
		OriginPatterns: s.cfg.origins,
	})
	if err != nil {
		return // Accept answered the request (e.g. 403 for a foreign origin)
	}
	ws.SetReadLimit(s.cfg.maxMessage)
	ctx, cancel := context.WithCancel(context.Background())
	c := &Conn{
		srv:     s,
		id:      s.nodeID + "." + randomID(8),
		session: sess,
		persist: s.cfg.sessionP != nil && !strings.HasPrefix(sess.SessionID, "anon-"),
		ws:      ws,
		raw:     hj.conn,
		remote:  r.RemoteAddr,
		ctx:     ctx,
		cancel:  cancel,
		sem:     make(chan struct{}, s.cfg.concurrency),
		idle:    make(chan struct{}, 1),
		wake:    make(chan struct{}, 1),
	}
	if s.cfg.rate > 0 {
		c.limiter = rate.NewLimiter(rate.Limit(s.cfg.rate), s.cfg.burst)
	}
	c.lastRead.Store(time.Now().UnixNano())
	// Serve on a fresh goroutine and let this one return: net/http's
	// request, its buffers and this goroutine's grown stack are freed,
	// which halves what an idle connection costs. The server still owns
	// the goroutine: Shutdown waits for it through admit/done.
	upgraded = true
	go func() {
		defer s.done()
		s.serve(c)
	}()
}

// hijackRecorder keeps the connection coder/websocket hijacks, so that a
// close handshake with a dead peer can be cut short.
type hijackRecorder struct {
	http.ResponseWriter
	conn net.Conn
}

func (h *hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	h.conn = c
	return c, rw, err
}

func (h *hijackRecorder) Unwrap() http.ResponseWriter { return h.ResponseWriter }

// offers reports whether the request lists a WebSocket subprotocol.
func offers(r *http.Request, proto string) bool {
	for _, h := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(h, ",") {
			if strings.TrimSpace(p) == proto {
				return true
			}
		}
	}
	return false
}

func (s *Server) serve(c *Conn) {
	s.stats.connections.Add(1)
	s.stats.accepted.Add(1)
	c.qmu.Lock()
	c.pingTimer = time.AfterFunc(s.cfg.pingInterval, c.ping)
	c.qmu.Unlock()
	c.wwg.Add(1)
	context.AfterFunc(c.ctx, c.finish) // the goodbye, whoever closes
	reason := s.run(c)
	c.close(CloseServerError, "", reason) // no-op if already closed
	c.ownOnce.Do(func() {})               // no catch-up starts from now on
	if c.ownTimer != nil {
		c.ownTimer.Stop()
	}
	c.endGoroutines() // handlers see c.ctx cancelled
	s.cleanup(c)
	c.wwg.Wait()
	if c.closeCause != nil {
		reason = c.closeCause
	}
	s.stats.connections.Add(-1)
	if h := s.cfg.hooks.OnDisconnect; h != nil {
		s.hook("OnDisconnect", func() { h(c, reason) })
	}
}

// run registers c, welcomes it and reads until the connection fails.
func (s *Server) run(c *Conn) error {
	s.cmu.Lock()
	if s.closing {
		s.cmu.Unlock()
		c.close(CloseShutdown, "server shutting down", ErrServerClosed)
		return ErrServerClosed
	}
	s.conns[c.id] = c
	s.cmu.Unlock()

	own := []string{SessionChannel(c.session.SessionID)}
	if u := c.session.UserID; u != "" {
		own = []string{UserChannel(u), own[0]}
	}
	for _, name := range own {
		sb := &sub{c: c, channel: name}
		sb.held.Store(true)
		if err := s.attach(c.ctx, sb); err != nil {
			return err
		}
		c.own = append(c.own, ownSub{sb: sb, pos: s.position(c.ctx, name)})
	}
	if c.persist && s.store != nil {
		c.spawn(func() { // off the connect path: a slow store must not delay the welcome
			s.storeCall(c.ctx, "touch", func(ctx context.Context, st scaler.SessionStore) error {
				return st.TouchSession(ctx, c.session.SessionID)
			})
		})
	}
	c.send(s.welcome(c), false)
	// A client that says nothing gets its user and session channels soon.
	c.ownTimer = time.AfterFunc(ownHold, func() { s.startOwn(c, nil) })
	if h := s.cfg.hooks.OnConnect; h != nil {
		s.hook("OnConnect", func() { h(c) })
	}
	for {
		typ, msg, err := c.ws.Read(context.Background())
		if err != nil {
			return readError(err)
		}
		c.lastRead.Store(time.Now().UnixNano())
		s.stats.framesIn.Add(1)
		if typ != websocket.MessageText {
			c.send(encodeError(0, &Error{Code: CodeBadRequest, Message: "binary messages are not supported"}), false)
			continue
		}
		splitFrames(msg, c.handleFrame)
	}
}

// readError names why the read side ended.
func readError(err error) error {
	switch websocket.CloseStatus(err) {
	case websocket.StatusNormalClosure, websocket.StatusGoingAway:
		return ErrClientClosed
	case websocket.StatusMessageTooBig:
		return ErrTooLarge
	}
	if errors.Is(err, websocket.ErrMessageTooBig) {
		return Errorf(CodeTooLarge, "message larger than the limit")
	}
	return err
}

// ErrClientClosed is the disconnect reason of a client that closed normally.
var ErrClientClosed = errors.New("sss: client closed the connection")

// cleanup removes every trace of c from this instance.
func (s *Server) cleanup(c *Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.askTimeout)
	defer cancel()
	c.smu.Lock()
	subs := c.subs
	c.subs = nil
	c.smu.Unlock()
	s.stats.subscriptions.Add(-int64(len(subs)))
	for ch := range subs {
		s.detach(ctx, c, ch)
	}
	for _, o := range c.own {
		s.detach(ctx, c, o.sb.channel)
	}
	s.cmu.Lock()
	delete(s.conns, c.id)
	s.cmu.Unlock()
	c.failAsks(ctx)
	if c.persist {
		// The session's subscriptions expire a TTL after its last
		// connection ended, not after it began.
		s.storeCall(ctx, "touch", func(ctx context.Context, st scaler.SessionStore) error {
			return st.TouchSession(ctx, c.session.SessionID)
		})
	}
}

func (s *Server) welcome(c *Conn) []byte {
	type channels struct {
		User    string `json:"user,omitempty"`
		Session string `json:"session"`
	}
	type limits struct {
		MaxMessage       int64 `json:"maxMessage"`
		MaxSubscriptions int   `json:"maxSubscriptions"`
		Concurrency      int   `json:"concurrency"`
	}
	w := struct {
		Type      string                     `json:"type"`
		Version   int                        `json:"version"`
		Conn      string                     `json:"conn"`
		Session   string                     `json:"session"`
		User      string                     `json:"user"`
		Channels  channels                   `json:"channels"`
		Positions map[string]scaler.Position `json:"positions,omitempty"`
		Ping      int64                      `json:"ping"`
		Pong      int64                      `json:"pong"`
		Limits    limits                     `json:"limits"`
	}{
		Type: "welcome", Version: 1, Conn: c.id, Session: c.session.SessionID, User: c.session.UserID,
		Channels: channels{Session: SessionChannel(c.session.SessionID)},
		Ping:     s.cfg.pingInterval.Milliseconds(), Pong: s.cfg.pongTimeout.Milliseconds(),
		Limits: limits{MaxMessage: s.cfg.maxMessage, MaxSubscriptions: s.cfg.maxSubs, Concurrency: s.cfg.concurrency},
	}
	if c.session.UserID != "" {
		w.Channels.User = UserChannel(c.session.UserID)
	}
	for _, o := range c.own {
		if o.pos.Epoch != "" {
			if w.Positions == nil {
				w.Positions = make(map[string]scaler.Position)
			}
			w.Positions[o.sb.channel] = o.pos
		}
	}
	b, _ := json.Marshal(w)
	return b
}

// handleFrame processes one client frame on the read loop.
func (c *Conn) handleFrame(b []byte) {
	s := c.srv
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
		c.send(encodeError(id, &Error{Code: CodeRateLimited, Message: "too many requests"}), false)
		return
	}
	switch f.Type {
	case typePong, typeReady: // ready: nothing to resume, startOwn did it
	case typeReply:
		c.handleReply(f)
	case typeSubscribe:
		c.parsing(func() {
			p, err := s.subscribe(c, f.Channel, f.Query, f.Since)
			if err != nil {
				c.send(encodeError(f.ID, toWire(err)), false)
				return
			}
			res, _ := json.Marshal(p.result(f.Since != nil))
			c.send(encodeAck(f.ID, res), false)
			s.goLive(p)
		})
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

// parsing runs f, which may call application parsers, without letting the
// ping check reap a client whose frames we are not reading meanwhile.
func (c *Conn) parsing(f func()) {
	c.busy.Add(1)
	defer func() {
		c.busy.Add(-1)
		c.lastRead.Store(time.Now().UnixNano())
	}()
	f()
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
	c.smu.Lock()
	_, dup := c.subs[channel]
	full := len(c.subs) >= s.cfg.maxSubs
	c.smu.Unlock()
	if dup {
		return startPlan{}, Errorf(CodeConflict, "already subscribed to %q", channel)
	}
	if full {
		return startPlan{}, Errorf(CodeLimitExceeded, "at most %d subscriptions per connection", s.cfg.maxSubs)
	}
	if p := s.cfg.subscriptP; p != nil {
		if err := s.callParser(c, func(ctx context.Context) error { return p(ctx, c, channel, query) }); err != nil {
			return startPlan{}, err
		}
	}
	sb := &sub{c: c, channel: channel, query: query}
	sb.held.Store(true)
	c.smu.Lock()
	if c.subs == nil {
		c.subs = make(map[string]*sub)
	}
	c.nested.Add(c.nestedWith(channel))
	c.subs[channel] = sb
	c.smu.Unlock()
	s.stats.subscriptions.Add(1)
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

// subResult is what an ack says of a subscription (docs/protocol.md).
type subResult struct {
	Channel   string  `json:"channel"`
	Offset    *uint64 `json:"offset,omitempty"` // with Epoch, when the server keeps history
	Epoch     string  `json:"epoch,omitempty"`
	Recovered *bool   `json:"recovered,omitempty"`
	Reason    string  `json:"reason,omitempty"`
	Error     *Error  `json:"error,omitempty"`
}

func (p startPlan) result(asked bool) subResult {
	r := subResult{Channel: p.sb.channel, Epoch: p.r.Position.Epoch, Reason: p.r.Reason}
	if r.Epoch != "" {
		r.Offset = &p.r.Position.Offset
	}
	if asked {
		r.Recovered = &p.r.Recovered
	}
	return r
}

// position is a stream's current position, zero without history.
func (s *Server) position(ctx context.Context, stream string) scaler.Position {
	h := s.history()
	if h == nil {
		return scaler.Position{}
	}
	_, top, err := h.Since(ctx, stream, scaler.Position{}, 0)
	if err != nil {
		s.stats.scalerErrors.Add(1)
		s.log.Warn("sss: history unavailable", "channel", stream, "err", err)
		return scaler.Position{}
	}
	return top
}

// ownHold is how long the user and session channels wait for a client's
// first request before going live.
const ownHold = time.Second

// startOwn lets the user and session channels go live, once: from the
// positions a resume named, else from the welcome's. With a resume, the
// caller sends its ack and then goLive; otherwise they go live at once.
// It returns nothing if they were started already.
func (s *Server) startOwn(c *Conn, since map[string]*scaler.Position) (plans []startPlan, asked []bool) {
	c.ownOnce.Do(func() {
		ctx, cancel := context.WithTimeout(c.ctx, s.cfg.askTimeout)
		defer cancel()
		for _, o := range c.own {
			from, named := since[o.sb.channel], true
			if from == nil {
				from, named = &o.pos, false
				if o.pos.Epoch == "" {
					from = nil
				}
			}
			plans = append(plans, s.prepare(ctx, o.sb, from))
			asked = append(asked, named)
		}
		if since == nil {
			for _, p := range plans {
				s.goLive(p)
			}
		}
	})
	return plans, asked
}

// forget drops channel from c's own list; it reports whether c held it.
func (c *Conn) forget(channel string) bool {
	c.smu.Lock()
	sb, ok := c.subs[channel]
	if ok {
		delete(c.subs, channel)
		c.nested.Add(-c.nestedWith(channel))
	}
	c.smu.Unlock()
	if !ok {
		return false
	}
	c.srv.stats.subscriptions.Add(-1)
	sb.drop() // after smu: catch-up holds sb.mu while it takes smu
	return true
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
			err = &Error{Code: CodeInternal, Message: "internal error"}
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

// storeTimeout bounds one session store call: the store is a convenience,
// so an outage must not stall subscribes for the ask timeout.
const storeTimeout = 2 * time.Second

// storeRetry is how long store calls are skipped after one failed, so an
// outage costs one timeout, not one per request.
const storeRetry = 5 * time.Second

// storeCall runs f on the session store, if there is one and it is not
// known to be down. Failures are counted and logged, and returned.
func (s *Server) storeCall(ctx context.Context, op string, f func(context.Context, scaler.SessionStore) error) error {
	if s.store == nil {
		return nil
	}
	if time.Now().UnixNano() < s.storeDownUntil.Load() {
		s.stats.scalerErrors.Add(1)
		return ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	err := f(ctx, s.store)
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, scaler.ErrUnavailable) {
		// Timed out or unreachable: the store is down, not this request.
		s.storeDownUntil.Store(time.Now().Add(storeRetry).UnixNano())
	}
	if err != nil {
		s.stats.scalerErrors.Add(1)
		s.log.Warn("sss: session store", "op", op, "err", err)
	}
	return err
}

// resume restores subscriptions after a reconnect, catching up where the
// client gives positions (docs/protocol.md). Results are acked before any
// publication of the restored subscriptions is queued.
func (s *Server) resume(c *Conn, f inFrame) {
	list := f.Subscriptions
	if !f.HasSubs && c.persist && s.store != nil {
		var stored []scaler.StoredSubscription
		err := s.storeCall(c.ctx, "list subscriptions", func(ctx context.Context, st scaler.SessionStore) (err error) {
			stored, err = st.Subscriptions(ctx, c.session.SessionID)
			return err
		})
		if err != nil {
			s.startOwn(c, nil)
			c.send(encodeError(f.ID, Errorf(CodeUnavailable, "cannot read the session's subscriptions")), false)
			return
		}
		for _, st := range stored {
			list = append(list, subRequest{Channel: st.Channel, Query: st.Query})
		}
	}
	ownSince := map[string]*scaler.Position{}
	for _, o := range c.own {
		ownSince[o.sb.channel] = nil
	}
	for _, r := range list {
		if _, own := ownSince[r.Channel]; own && r.Since != nil {
			ownSince[r.Channel] = r.Since
		}
	}
	for ch, p := range ownSince {
		if p == nil {
			delete(ownSince, ch)
		}
	}
	ownPlans, ownAsked := s.startOwn(c, ownSince)
	var plans []startPlan
	results := make([]subResult, 0, len(list))
	want := make(map[string]bool, len(list)) // channel → subscribed
	seen := make(map[string]bool, len(list))
	for _, r := range list {
		if seen[r.Channel] {
			continue
		}
		seen[r.Channel] = true
		if _, own := ownSince[r.Channel]; own || c.ownsChannel(r.Channel) {
			continue // reported below
		}
		c.smu.Lock()
		_, held := c.subs[r.Channel]
		c.smu.Unlock()
		want[r.Channel] = true
		if held {
			results = append(results, subResult{Channel: r.Channel})
			continue
		}
		p, err := s.subscribe(c, r.Channel, r.Query, r.Since)
		if err != nil {
			results = append(results, subResult{Channel: r.Channel, Error: toWire(err)})
			want[r.Channel] = false // refused: not kept for the session either
			continue
		}
		plans = append(plans, p)
		results = append(results, p.result(r.Since != nil))
	}
	for i, p := range ownPlans {
		if seen[p.sb.channel] {
			results = append(results, p.result(ownAsked[i]))
		}
	}
	if f.HasSubs {
		// The client's list is authoritative: drop everything else.
		for _, ch := range c.Subscriptions() {
			if !want[ch] {
				s.unsubscribe(c, ch)
			}
		}
		if c.persist {
			s.storeCall(c.ctx, "prune subscriptions", func(ctx context.Context, st scaler.SessionStore) error {
				stored, err := st.Subscriptions(ctx, c.session.SessionID)
				for _, sub := range stored {
					if err == nil && !want[sub.Channel] {
						err = st.RemoveSubscription(ctx, c.session.SessionID, sub.Channel)
					}
				}
				return err
			})
		}
	}
	b, _ := json.Marshal(struct {
		Subscriptions []subResult `json:"subscriptions"`
	}{results})
	c.send(encodeAck(f.ID, b), false)
	for _, p := range ownPlans {
		s.goLive(p)
	}
	for _, p := range plans {
		s.goLive(p)
	}
}

// ownsChannel reports whether name is c's user or session channel.
func (c *Conn) ownsChannel(name string) bool {
	for _, o := range c.own {
		if o.sb.channel == name {
			return true
		}
	}
	return false
}

// admit counts a request being served unless the server is closing.
func (s *Server) admit() bool {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	if s.closing {
		return false
	}
	s.active++
	return true
}

func (s *Server) done() {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	s.active--
	if s.closing && s.active == 0 {
		close(s.idle)
	}
}

// join attaches this server to the scaler on first use.
func (s *Server) join(ctx context.Context) (scaler.Node, error) {
	if n := s.joined(); n != nil {
		return n, nil
	}
	s.joinMu.Lock()
	defer s.joinMu.Unlock()
	if s.node != nil {
		return s.node, nil
	}
	s.cmu.RLock()
	closing := s.closing
	s.cmu.RUnlock()
	if closing {
		return nil, ErrServerClosed
	}
	n, err := s.cfg.scaler.Join(ctx, s.nodeID, nodeHandler{s})
	if err != nil {
		return nil, err
	}
	s.store, _ = n.(scaler.SessionStore)
	s.node = n
	s.nodeRef.Store(&n)
	return n, nil
}

// joined returns the node if the server joined the scaler, without joining.
func (s *Server) joined() scaler.Node {
	if p := s.nodeRef.Load(); p != nil {
		return *p
	}
	return nil
}

// nodeHandler receives what the scaler delivers; it keeps those methods out
// of the Server's API.
type nodeHandler struct{ s *Server }

func (h nodeHandler) HandleDelivery(d scaler.Delivery)      { h.s.deliver(d) }
func (h nodeHandler) HandleMessage(from string, msg []byte) { h.s.handleNodeMessage(from, msg) }

// Shutdown stops accepting connections, closes every connection with 4000
// (clients reconnect at once, elsewhere), waits for handlers in progress and
// leaves the cluster. If ctx ends first, the remaining connections are
// dropped and ctx's error returned.
func (s *Server) Shutdown(ctx context.Context) error {
	conns := s.startClosing()
	for _, c := range conns {
		c.close(CloseShutdown, "server shutting down", ErrServerClosed)
	}
	var err error
	select {
	case <-s.idle:
	case <-ctx.Done():
		err = ctx.Err()
		for _, c := range conns {
			c.abort()
		}
		<-s.idle
	}
	return errors.Join(err, s.leave())
}

// Close drops every connection at once and leaves the cluster. Handlers in
// progress see their context cancelled.
func (s *Server) Close() error {
	conns := s.startClosing()
	for _, c := range conns {
		c.close(CloseShutdown, "server closed", ErrServerClosed)
		c.abort()
	}
	<-s.idle
	return s.leave()
}

func (s *Server) startClosing() []*Conn {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	if !s.closing {
		s.closing = true
		if s.active == 0 {
			close(s.idle)
		}
	}
	conns := make([]*Conn, 0, len(s.conns))
	for _, c := range s.conns {
		conns = append(conns, c)
	}
	return conns
}

func (s *Server) leave() error {
	s.joinMu.Lock()
	defer s.joinMu.Unlock()
	s.failPending()
	var err error
	if s.node != nil {
		err = s.node.Close()
	}
	if closer, ok := s.cfg.scaler.(interface{ Close() error }); ok && s.cfg.ownScaler {
		err = errors.Join(err, closer.Close())
	}
	return err
}
