package sss

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/superscaled/sss/scaler"
)

// The server's lifecycle: the HTTP upgrade, a connection's life from its
// welcome to its cleanup (its read loop hands each frame to request.go),
// joining and leaving the cluster, and shutdown.

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
	// The origin first: a foreign page never gets to run the session
	// parser (and its database lookups) at all.
	if !originAllowed(r, s.cfg.origins) {
		s.log.Debug("sss: origin refused", "remote", r.RemoteAddr, "origin", r.Header.Get("Origin"))
		http.Error(w, "origin not allowed", http.StatusForbidden)
		return
	}
	sess, named, err := s.parseSession(r)
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
	hj := &hijackRecorder{ResponseWriter: w, writeTimeout: s.cfg.writeTimeout}
	ws, err := websocket.Accept(hj, r, &websocket.AcceptOptions{
		Subprotocols:       []string{Subprotocol},
		InsecureSkipVerify: true, // the origin was checked above
	})
	if err != nil {
		return // Accept answered the request
	}
	ws.SetReadLimit(s.cfg.maxMessage)
	c := newConn(s, sess, named && s.store != nil, ws, hj.sock, r.RemoteAddr)
	// Serve on a fresh goroutine and let this one return: net/http's
	// request, its buffers and this goroutine's grown stack are freed,
	// which halves what an idle connection costs. The server still owns
	// the goroutine: Shutdown waits for it through admit/done.
	upgraded = true
	go s.serve(c)
}

// originAllowed reports whether a browser page may connect: no Origin
// header (not a browser), the same host, or a host matching one of the
// patterns (path.Match, case-insensitive; a pattern with "://" matches
// scheme://host), as coder/websocket checks it.
func originAllowed(r *http.Request, patterns []string) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(r.Host, u.Host) {
		return true
	}
	for _, p := range patterns {
		target := u.Host
		if strings.Contains(p, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, _ := path.Match(strings.ToLower(p), strings.ToLower(target)); ok {
			return true
		}
	}
	return false
}

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

// serve runs a connection from its welcome to its end.
func (s *Server) serve(c *Conn) {
	s.stats.connections.Add(1)
	s.stats.accepted.Add(1)
	c.qmu.Lock()
	c.pingTimer = time.AfterFunc(s.cfg.pingInterval, c.ping)
	c.qmu.Unlock()
	if err := s.welcome(c); err != nil {
		s.end(c, err)
		return
	}
	s.read(c)
}

// welcome registers c and welcomes it.
func (s *Server) welcome(c *Conn) error {
	if !s.hub.add(c) {
		c.close(CloseShutdown, "server shutting down", ErrServerClosed)
		return ErrServerClosed
	}
	own := []string{SessionChannel(c.session.UserID, c.session.SessionID)}
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
	if c.persist {
		s.store.touch(c.storeKey())
	}
	// First on the worker: the server's subscriptions, held like the user
	// and session channels (membership.go).
	c.enqueueControl(func() { s.restoreServerSubs(c) })
	c.send(encodeWelcome(c), false)
	// A client that says nothing gets its held channels soon; either way
	// the connection's setup is over by then, and its reader sheds the
	// stack that setup grew.
	c.ownTimer = time.AfterFunc(ownHold, func() {
		s.startHeld(c)
		c.shed()
	})
	if exp := c.session.ExpiresAt; !exp.IsZero() {
		c.expiry = time.AfterFunc(time.Until(exp), func() {
			c.close(CloseExpired, "session expired", ErrSessionExpired)
		})
	}
	if h := s.cfg.hooks.OnConnect; h != nil {
		s.hook("OnConnect", func() { h(c) })
	}
	return nil
}

// read reads until the connection fails, then ends it. Asked to shed its
// stack, it goes on in a fresh goroutine, which ends the connection in
// its turn.
func (s *Server) read(c *Conn) {
	for {
		closing, move := c.awaitMessage()
		switch {
		case closing:
			s.end(c, net.ErrClosed) // closed by the server: end reports why
			return
		case move:
			go s.read(c)
			return
		}
		if err := s.readMessage(c); err != nil {
			s.end(c, readError(err))
			return
		}
	}
}

// end removes every trace of c once its reads are over, and then lets
// Shutdown, which waits for every connection, go on.
func (s *Server) end(c *Conn, reason error) {
	defer s.done()
	c.close(CloseServerError, "", reason) // no-op if already closed
	c.ownOnce.Do(func() {})               // no catch-up starts from now on
	if c.ownTimer != nil {
		c.ownTimer.Stop()
	}
	if c.expiry != nil {
		c.expiry.Stop()
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

// readBuffers holds the buffers messages are read into: an idle connection
// keeps none, and a busy one does not allocate one per message. Nothing
// keeps a frame's bytes once handle returns (decoding copies).
var readBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledRead bounds the buffers kept in readBuffers.
const maxPooledRead = 64 << 10

// readMessage reads one message and handles its frames.
func (s *Server) readMessage(c *Conn) error {
	typ, r, err := c.ws.Reader(context.Background())
	if err != nil {
		return err
	}
	buf := readBuffers.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= maxPooledRead {
			buf.Reset()
			readBuffers.Put(buf)
		}
	}()
	if _, err := buf.ReadFrom(r); err != nil {
		return err
	}
	msg := buf.Bytes()
	c.lastRead.Store(time.Now().UnixNano())
	s.stats.framesIn.Add(1)
	if typ != websocket.MessageText {
		c.send(encodeError(0, Errorf(CodeBadRequest, "binary messages are not supported")), false)
		return nil
	}
	if !utf8.Valid(msg) {
		// RFC 6455 asks text messages to be UTF-8; nothing of this one
		// is relayed.
		s.stats.badFrames.Add(1)
		c.send(encodeError(0, Errorf(CodeBadRequest, "message is not valid UTF-8")), false)
		return nil
	}
	splitFrames(msg, func(b []byte) { s.handle(c, b) })
	return nil
}

// readError names why the read side ended.
func readError(err error) error {
	switch websocket.CloseStatus(err) {
	case websocket.StatusNormalClosure, websocket.StatusGoingAway:
		return ErrClientClosed
	case websocket.StatusMessageTooBig:
		return ErrMessageTooBig
	}
	if errors.Is(err, websocket.ErrMessageTooBig) {
		return ErrMessageTooBig
	}
	return err
}

// cleanup removes every trace of c from this instance.
func (s *Server) cleanup(c *Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.askTimeout)
	defer cancel()
	if c.persist {
		// Where the session stands on each channel, for a client that
		// restores its subscriptions later (resume without a list).
		for _, sb := range c.clientSubs() {
			s.store.advance(c.storeKey(), sb.channel, sb.query, s.hub.lastPosition(sb.channel))
		}
	}
	for _, sb := range c.forgetAll() {
		s.endSub(ctx, sb)
	}
	for _, o := range c.own {
		s.detach(ctx, c, o.sb.channel)
	}
	s.hub.remove(c)
	s.failAsks(c)
	if c.persist {
		// The session's subscriptions expire a TTL after its last
		// connection ended, not after it began.
		s.store.touch(c.storeKey())
	}
}

// Joining and leaving the cluster.

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
	if s.closed.Load() {
		return nil, ErrServerClosed
	}
	n, err := s.cfg.scaler.Join(ctx, s.nodeID, nodeHandler{s})
	if err != nil {
		return nil, err
	}
	// Every node hears broadcasts, for all its connections (publish.go).
	if err := n.Subscribe(ctx, broadcastChannel); err != nil && !errors.Is(err, scaler.ErrUnavailable) {
		n.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stopNode = cancel
	if st, ok := n.(scaler.SessionStore); ok {
		s.store = newStoreWriter(s, st)
		s.nodeWG.Add(1)
		go func() {
			defer s.nodeWG.Done()
			s.store.run(ctx)
		}()
	}
	s.node = n
	s.nodeRef.Store(&n)
	s.nodeWG.Add(1)
	go func() {
		defer s.nodeWG.Done()
		s.checkMissed(ctx)
	}()
	return n, nil
}

// Ready reports whether the server can serve, for readiness probes: nil
// when it is not shutting down, it joined its scaler, and the scaler's
// backend answers (when its nodes implement scaler.Pinger). Otherwise
// ErrServerClosed, or an error matching ErrUnavailable that wraps why.
func (s *Server) Ready(ctx context.Context) error {
	if err := s.usable(); err != nil {
		return err
	}
	node, err := s.join(ctx)
	if err == nil {
		if p, ok := node.(scaler.Pinger); ok {
			err = p.Ping(ctx)
		}
	}
	if err != nil {
		if s.closed.Load() {
			return ErrServerClosed
		}
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return nil
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
func (h nodeHandler) HandleMissed(stream string)            { h.s.hub.missed(stream) }
func (h nodeHandler) HandleGone(ctx context.Context, channel string, gone []scaler.ClientInfo) {
	h.s.handleGone(ctx, channel, gone)
}

// leave writes what the session store still lacks (within ctx, at most
// the store timeout), then leaves the cluster.
func (s *Server) leave(ctx context.Context) error {
	s.joinMu.Lock()
	defer s.joinMu.Unlock()
	s.failPending()
	var err error
	if s.node != nil {
		if s.store != nil {
			fctx, cancel := context.WithTimeout(ctx, storeTimeout)
			s.store.flushAll(fctx)
			cancel()
		}
		s.stopNode()
		s.nodeWG.Wait()
		err = s.node.Close()
	}
	if closer, ok := s.cfg.scaler.(interface{ Close() error }); ok && s.cfg.ownScaler {
		err = errors.Join(err, closer.Close())
	}
	return err
}

// Shutting down.

// usable reports ErrServerClosed once Shutdown or Close began.
func (s *Server) usable() error {
	if s.closed.Load() {
		return ErrServerClosed
	}
	return nil
}

// admit counts a request being served unless the server is closing.
func (s *Server) admit() bool {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if s.closing {
		return false
	}
	s.active++
	return true
}

func (s *Server) done() {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	s.active--
	if s.closing && s.active == 0 {
		close(s.idle)
	}
}

// Shutdown stops accepting connections, closes every connection with 4000
// (clients reconnect at once, elsewhere), waits for handlers in progress and
// leaves the cluster. If ctx ends first, the remaining connections are
// dropped, their handlers waited for 5 seconds at most, and ctx's error
// returned.
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
		s.awaitHandlers()
	}
	s.workers.stop()
	return errors.Join(err, s.leave(ctx))
}

// abandonAfter bounds how long Close, or Shutdown past its context, waits
// for handlers that ignore their cancelled context: the server leaves the
// cluster without them, and their late calls get ErrServerClosed.
var abandonAfter = 5 * time.Second

// awaitHandlers waits for the connections' goroutines to end, at most
// abandonAfter.
func (s *Server) awaitHandlers() {
	t := time.NewTimer(abandonAfter)
	defer t.Stop()
	select {
	case <-s.idle:
	case <-t.C:
		s.log.Error("sss: handlers still running after their connections closed; leaving without them", "waited", abandonAfter)
	}
}

// Close drops every connection at once and leaves the cluster. Handlers in
// progress see their context cancelled; Close waits for them 5 seconds at
// most.
func (s *Server) Close() error {
	conns := s.startClosing()
	for _, c := range conns {
		c.close(CloseShutdown, "server closed", ErrServerClosed)
		c.abort()
	}
	s.awaitHandlers()
	s.workers.stop()
	return s.leave(context.Background())
}

// startClosing refuses new requests and connections, and returns the
// connections to close.
func (s *Server) startClosing() []*Conn {
	s.closed.Store(true)
	s.lmu.Lock()
	if !s.closing {
		s.closing = true
		if s.active == 0 {
			close(s.idle)
		}
	}
	s.lmu.Unlock()
	return s.hub.close()
}
