package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// link is one WebSocket connection to a server: from the handshake until it
// drops. A Client makes a new link for each (re)connection; a link never
// reconnects by itself.
//
// Goroutines: readLoop owns the link's end (it tears everything down when
// the socket fails, for whatever reason), writeLoop is the only writer.
type link struct {
	c   *Client
	ws  *websocket.Conn
	raw io.Closer // the upgraded connection itself, to abort a stuck close
	url string

	// ctx ends when the link fails. It is not derived from the Client's
	// context, so that Close can still say goodbye with a close frame.
	ctx    context.Context
	cancel context.CancelFunc

	out  chan []byte   // encoded frames for writeLoop; bounded
	pong chan struct{} // a ping is waiting for its pong

	welcomed chan struct{} // closed once info, sem and window are set
	gotHello bool          // read loop only: the welcome was handled
	dropping bool          // read loop only: a message was refused, deliver no more
	info     ConnInfo
	// Set from the welcome (before welcomed is closed): the positions of
	// the user and session channels, and, on a link that resumes, which of
	// them continue the previous connection's (ownResume) and from where.
	positions map[string]Position
	resuming  bool // set at dial: the client sends a resume on this link
	ownResume [2]bool
	ownSince  [2]Position
	sem       chan struct{} // asks and tells in flight, per welcome's concurrency; nil: no limit
	window    time.Duration // ping+pong: silence longer than this means the link is dead
	alive     *time.Timer

	mu      sync.Mutex
	pending map[uint64]*call
	dead    bool  // teardown started: no new calls
	err     error // why the link ended; first one wins

	writerDone chan struct{}
	done       chan struct{} // teardown finished: goroutines exited, calls failed
}

// call is a request waiting for its reply.
type call struct {
	state atomic.Int32 // callWaiting, callDone or callAbandoned
	res   chan callResult
	slot  bool // holds one of link.sem
	// onAck runs on the read loop when the request is acknowledged, before
	// the caller is woken and before the next frame is handled: that is how a
	// subscription is in place for the publication that follows its ack.
	// abandoned says the caller gave up (ctx) before the ack came.
	onAck func(l *link, result json.RawMessage, abandoned bool)
}

const (
	callWaiting int32 = iota
	callDone
	callAbandoned
)

type callResult struct {
	result json.RawMessage
	err    error
}

// errNotSent means the link died before the request was handed to it: it is
// safe to send it again on the next link.
var errNotSent = newError("request not sent")

// defaultMaxMessage is used to batch before the welcome tells the real limit.
const defaultMaxMessage = 64 << 10

// dial opens a WebSocket to url and starts the link's goroutines. It does not
// wait for the welcome. The link's first frame is "ready" unless it resumes
// (then the caller sends "resume" first).
func (c *Client) dial(ctx context.Context, url string, resuming bool) (*link, error) {
	header := c.opts.header
	if c.opts.token != nil {
		tok, err := c.opts.token(ctx)
		if err != nil {
			return nil, wrap(err, "token for %s", url)
		}
		header = header.Clone()
		header.Set("Authorization", "Bearer "+tok)
	}
	hc := *c.opts.httpClient
	rt := &rawCapture{base: hc.Transport}
	hc.Transport = rt
	ws, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{
		HTTPClient:   &hc,
		HTTPHeader:   header,
		Subprotocols: []string{subprotocol},
	})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			he := &HandshakeError{StatusCode: resp.StatusCode}
			if resp.Body != nil {
				b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
				he.Body = strings.TrimSpace(string(b))
			}
			return nil, he
		}
		return nil, wrap(err, "dial %s", url)
	}
	if ws.Subprotocol() != subprotocol {
		ws.Close(websocket.StatusPolicyViolation, "sss.v1 required")
		return nil, errWrongSubprotocol
	}
	ws.SetReadLimit(c.opts.maxMessage)

	l := &link{
		c:          c,
		ws:         ws,
		raw:        rt.body,
		url:        url,
		out:        make(chan []byte, 64),
		pong:       make(chan struct{}, 1),
		welcomed:   make(chan struct{}),
		pending:    make(map[uint64]*call),
		writerDone: make(chan struct{}),
		done:       make(chan struct{}),
		resuming:   resuming,
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	if !resuming {
		// Nothing to resume: say so first, without waiting for the welcome,
		// so the server delivers the user and session channels at once
		// instead of holding them for a resume that will not come. The
		// queue is empty: this never blocks, and goes out first.
		l.out <- readyFrame
	}
	c.wg.Add(2)
	go func() {
		defer c.wg.Done()
		l.writeLoop()
	}()
	go func() {
		defer c.wg.Done()
		l.readLoop()
	}()
	return l, nil
}

// fail ends the link with err (the first reason given is kept). It never
// blocks: readLoop notices and tears down.
func (l *link) fail(err error) {
	l.mu.Lock()
	if l.err == nil {
		l.err = err
	}
	l.mu.Unlock()
	// Cancel before unready: linkUp refuses a link whose ctx is done, so a
	// dead link never stays current.
	l.cancel() // unblocks readLoop's Read (coder/websocket then closes the socket) and writeLoop
	l.c.unready(l)
}

// reason returns why the link ended.
func (l *link) reason() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// closeGracefully sends a normal close frame and waits for the server's, so
// the server knows the client meant it; at most closeTimeout, for a dead
// network would hold it for coder/websocket's 5s+5s.
func (l *link) closeGracefully() {
	l.mu.Lock()
	if l.err == nil {
		l.err = ErrClosed
	}
	l.mu.Unlock()
	l.c.unready(l)
	// Cancelling the read's context makes coder/websocket close the socket,
	// which ends the handshake wait.
	// Cancelling alone cannot interrupt coder/websocket's close handshake
	// (up to 5s+5s on a dead network); closing the socket does.
	t := time.AfterFunc(closeTimeout, func() {
		l.cancel()
		if l.raw != nil {
			l.raw.Close()
		}
	})
	l.ws.Close(websocket.StatusNormalClosure, "")
	t.Stop()
	l.cancel()
}

const closeTimeout = time.Second

func (l *link) readLoop() {
	defer l.teardown()
	for {
		typ, msg, err := l.ws.Read(l.ctx)
		if err != nil {
			if code := websocket.CloseStatus(err); code != -1 {
				var ce websocket.CloseError
				errors.As(err, &ce)
				err = &CloseError{Code: int(code), Reason: ce.Reason}
			} else {
				err = wrap(err, "read")
			}
			l.fail(err)
			return
		}
		if l.alive != nil {
			l.alive.Reset(l.window) // any message is a sign of life
		}
		if typ != websocket.MessageText {
			l.fail(withDetail(ErrProtocol, "binary message"))
			return
		}
		for len(msg) > 0 {
			line := msg
			if i := bytes.IndexByte(msg, '\n'); i >= 0 {
				line, msg = msg[:i], msg[i+1:]
			} else {
				msg = nil
			}
			if len(bytes.TrimSpace(line)) == 0 {
				continue
			}
			if err := l.handle(line); err != nil {
				l.fail(err)
				return
			}
		}
	}
}

// teardown runs when readLoop ends: it stops the writer, fails the calls in
// flight and marks the link done.
func (l *link) teardown() {
	l.fail(ErrDisconnected) // keeps the first reason; makes sure ctx is cancelled
	if l.alive != nil {
		l.alive.Stop()
	}
	<-l.writerDone
	l.ws.CloseNow()

	l.mu.Lock()
	l.dead = true
	pending := l.pending
	l.pending = nil
	reason := l.err
	l.mu.Unlock()

	err := ErrDisconnected
	if reason != ErrDisconnected {
		err = withCause(ErrDisconnected, reason)
	}
	if l.c.isClosing() {
		err = ErrClosed
	}
	for _, cl := range pending {
		if cl.state.CompareAndSwap(callWaiting, callDone) {
			cl.res <- callResult{err: err}
		}
	}
	close(l.done)
}

// handle processes one frame on the read loop. An error ends the link.
func (l *link) handle(line []byte) error {
	var f inFrame
	if err := json.Unmarshal(line, &f); err != nil {
		return withDetail(ErrProtocol, "invalid frame: %v", err)
	}
	if !l.gotHello {
		if f.Type != "welcome" {
			return withDetail(ErrProtocol, "first frame is %q, not welcome", f.Type)
		}
		l.setWelcome(&f)
		return nil
	}
	c := l.c
	switch f.Type {
	case "ack", "error":
		if f.ID == 0 {
			// About the connection's last message, not a request: nothing to
			// fail, but the application may want to know.
			e := f.Error
			if e == nil {
				e = &Error{Code: CodeInternal}
			}
			c.log.Warn("sss: error from server", "err", e)
			c.emitError(e)
			return nil
		}
		if f.Type == "error" {
			e := f.Error
			if e == nil {
				e = &Error{Code: CodeInternal, Message: "error frame without error"}
			}
			l.complete(f.ID, nil, e)
		} else {
			l.complete(f.ID, f.Result, nil)
		}
	case "pub":
		c.routePub(l, &f)
	case "tell":
		c.routeTell(l, &f)
	case "ask":
		c.serveAsk(l, &f)
	case "ping":
		select {
		case l.pong <- struct{}{}:
		default: // a pong is already due
		}
	case "join", "leave":
		c.routePresence(l, &f)
	case "subscribed":
		c.routeSubscribed(l, &f)
	case "unsubscribed":
		c.routeUnsubscribed(l, &f)
	case "welcome":
		c.log.Warn("sss: second welcome ignored", "url", l.url)
	default:
		// Later protocol versions may add frame types; a v1 server does not
		// send them, so this is only worth a note.
		c.log.Debug("sss: unknown frame type ignored", "type", f.Type)
	}
	return nil
}

func (l *link) setWelcome(f *inFrame) {
	l.info = ConnInfo{
		URL:            l.url,
		ID:             f.Conn,
		Session:        f.Session,
		User:           f.User,
		UserChannel:    f.Channels.User,
		SessionChannel: f.Channels.Session,
		Ping:           time.Duration(f.Ping) * time.Millisecond,
		Pong:           time.Duration(f.Pong) * time.Millisecond,
		Limits:         f.Limits,
	}
	if f.Version != 1 {
		l.c.log.Warn("sss: unexpected protocol version in welcome", "version", f.Version)
	}
	l.positions = f.Positions
	l.c.welcomeOwn(l)
	if n := f.Limits.Concurrency; n > 0 {
		l.sem = make(chan struct{}, n)
	}
	if l.window = l.info.Ping + l.info.Pong; l.window > 0 {
		l.alive = time.AfterFunc(l.window, func() { l.fail(ErrLinkTimeout) })
	}
	l.gotHello = true
	close(l.welcomed)
}

// ownChannels returns the link's user and session channels, by ownIndex.
func (l *link) ownChannels() [2]string {
	return [2]string{l.info.UserChannel, l.info.SessionChannel}
}

// complete hands a reply to the call waiting for it.
func (l *link) complete(id uint64, result json.RawMessage, err error) {
	l.mu.Lock()
	cl := l.pending[id]
	delete(l.pending, id)
	l.mu.Unlock()
	if cl == nil {
		return // late reply to a request abandoned and already failed, or a stray id
	}
	if cl.slot {
		<-l.sem
	}
	abandoned := !cl.state.CompareAndSwap(callWaiting, callDone)
	if err == nil && cl.onAck != nil {
		cl.onAck(l, result, abandoned)
	}
	if !abandoned {
		cl.res <- callResult{result: result, err: err}
	}
}

// roundTrip sends req on this link and waits for its reply within ctx.
// counted requests (asks and tells) first take a concurrency slot, held until
// the reply comes even if the caller gives up: the server still counts the
// request as in flight until then.
func (l *link) roundTrip(ctx context.Context, req request, counted bool, onAck func(*link, json.RawMessage, bool)) (json.RawMessage, error) {
	if counted && l.sem != nil {
		select {
		case l.sem <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-l.ctx.Done():
			return nil, errNotSent
		}
	}
	cl := &call{res: make(chan callResult, 1), slot: counted && l.sem != nil, onAck: onAck}
	release := func() {
		if cl.slot {
			<-l.sem
		}
	}

	id := l.c.nextID.Add(1)
	req.setID(id)
	b, err := json.Marshal(req)
	if err != nil {
		release()
		return nil, wrap(err, "encode request")
	}
	if max := l.info.Limits.MaxMessage; max > 0 && len(b) > max {
		release()
		return nil, Errorf(CodeTooLarge, "frame of %d bytes exceeds the server's limit of %d", len(b), max)
	}

	l.mu.Lock()
	if l.dead || l.ctx.Err() != nil {
		l.mu.Unlock()
		release()
		return nil, errNotSent
	}
	l.pending[id] = cl
	l.mu.Unlock()

	select {
	case l.out <- b:
	case <-ctx.Done():
		l.forget(id, cl)
		return nil, ctx.Err()
	case <-l.ctx.Done():
		l.forget(id, cl)
		return nil, errNotSent
	}

	select {
	case r := <-cl.res:
		return r.result, r.err
	case <-ctx.Done():
		if cl.state.CompareAndSwap(callWaiting, callAbandoned) {
			// The pending entry stays: its reply (or the link's end) releases
			// the slot and runs onAck.
			return nil, ctx.Err()
		}
		r := <-cl.res // the reply won the race
		return r.result, r.err
	}
}

// forget withdraws a call that was never sent.
func (l *link) forget(id uint64, cl *call) {
	l.mu.Lock()
	_, ok := l.pending[id]
	delete(l.pending, id)
	l.mu.Unlock()
	if ok && cl.slot {
		<-l.sem
	}
	// If teardown took it first, it failed the call: nobody reads that
	// result, and the slot belongs to a dead link anyway.
}

// sendNoWait queues a frame without waiting; it reports whether it was
// queued. Used from the read loop, which must not block on a full queue
// for frames whose loss a later resume repairs.
func (l *link) sendNoWait(b []byte) bool {
	select {
	case l.out <- b:
		return true
	default:
		return false
	}
}

// send queues a frame, waiting for room while the link lives.
func (l *link) send(b []byte) bool {
	select {
	case l.out <- b:
		return true
	case <-l.ctx.Done():
		return false
	}
}

func (l *link) writeLoop() {
	defer close(l.writerDone)
	var (
		buf   []byte
		carry []byte
	)
	for {
		buf = buf[:0]
		if carry != nil {
			buf, carry = append(buf, carry...), nil
		} else {
			select {
			case <-l.ctx.Done():
				return
			case <-l.pong:
				buf = append(buf, pongFrame...)
			case b := <-l.out:
				buf = append(buf, b...)
			}
		}
		max, timeout := defaultMaxMessage, 10*time.Second
		select {
		case <-l.welcomed:
			if l.info.Limits.MaxMessage > 0 {
				max = l.info.Limits.MaxMessage
			}
			if l.window > 0 {
				timeout = l.window
			}
		default:
		}
		// Batch what else is waiting, one frame per line, within the
		// server's message limit.
	batch:
		for {
			select {
			case <-l.pong:
				if len(buf)+1+len(pongFrame) <= max {
					buf = append(append(buf, '\n'), pongFrame...)
				} // else the batch itself answers the ping
			case b := <-l.out:
				if len(buf)+1+len(b) > max {
					carry = b
					break batch
				}
				buf = append(append(buf, '\n'), b...)
			default:
				break batch
			}
		}
		ctx, cancel := context.WithTimeout(l.ctx, timeout)
		err := l.ws.Write(ctx, websocket.MessageText, buf)
		cancel()
		if err != nil {
			l.fail(wrap(err, "write"))
			return
		}
	}
}

// rawCapture keeps the body of a 101 response, which is the upgraded
// connection, so a link can be torn down even while coder/websocket waits
// for a close handshake.
type rawCapture struct {
	base http.RoundTripper
	body io.Closer
}

func (r *rawCapture) RoundTrip(req *http.Request) (*http.Response, error) {
	base := r.base
	if base == nil {
		base = http.DefaultTransport
	}
	resp, err := base.RoundTrip(req)
	if err == nil && resp.StatusCode == http.StatusSwitchingProtocols {
		r.body = resp.Body
	}
	return resp, err
}
