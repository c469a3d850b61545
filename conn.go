package sss

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/time/rate"
)

// Conn is one client connection on this instance. Its methods are safe for
// concurrent use.
//
// A connection owns one goroutine for as long as it lives (it reads, see
// Server.serve), a writer goroutine only while frames are queued, and the
// goroutines of its handlers and catch-ups (spawn), all stopped when it
// ends.
type Conn struct {
	srv     *Server
	id      string
	session *Session
	persist bool // the session parser named the session: store its subscriptions
	ws      *websocket.Conn
	sock    *socket // under ws (nil in tests that build a Conn on another net.Conn)
	remote  string

	// ctx is cancelled when the connection ends; handlers derive from it.
	ctx    context.Context
	cancel context.CancelFunc

	// Outgoing frames, written in order by the writer goroutine. Bounded by
	// count and bytes; overflow is the slow-consumer policy.
	qmu       sync.Mutex
	queue     [][]byte
	qbytes    int
	qclosed   bool
	writing   bool           // a writer goroutine is running
	corked    int            // >0: frames are queued but not written yet (cork)
	idle      chan struct{}  // signalled when the writer stops
	room      chan struct{}  // closed when the queue drained to half; nil when nobody waits
	wwg       sync.WaitGroup // the writer and finish goroutines
	pingTimer *time.Timer    // alternates: next ping, then pong deadline
	pingSent  atomic.Int64   // unix nanos of the last ping; 0 after its deadline passed

	// Subscriptions made by the client (not its user/session channels).
	smu    sync.Mutex
	subs   map[string]*sub
	nested atomic.Int32 // pairs of held subscriptions where one contains the other
	final  []string     // the channels held when the connection ended

	// The user and session channels, held from the upgrade until the
	// client's first request, which may ask to catch up on them (resume).
	own      []ownSub
	ownOnce  sync.Once
	ownTimer *time.Timer
	expiry   *time.Timer // closes the connection when its session expires
	spoke    bool        // the reader saw the client's first frame (reader only)

	// Server subscriptions held since the connection began, until the
	// client's first frame (membership.go; worker only).
	pendingServer []startPlan
	serverStarted bool

	// Ordered requests (subscribe, unsubscribe, publish, resume) wait here
	// for the connection's worker, which runs them one at a time, in order,
	// while the reader goes on with asks and tells (request.go).
	omu     sync.Mutex
	ordered []func()
	working bool          // a worker goroutine is running
	taken   chan struct{} // signalled when the worker took a request

	sem     chan struct{} // ask/tell handler slots
	parsers chan struct{} // parser calls running, abandoned ones included
	limiter *rate.Limiter

	// Goroutines the connection owns (handlers, catch-up); once ended,
	// the connection starts no more.
	gmu   sync.Mutex
	ended bool
	wg    sync.WaitGroup

	// The client's asks in flight and the timer of the earliest deadline
	// (asktell.go).
	xmu      sync.Mutex
	inflight map[*askCtx]struct{}
	askTimer *time.Timer
	askArmed bool
	xended   bool

	// Server asks awaiting this client's reply (asktell.go).
	amu    sync.Mutex
	askSeq uint64
	asks   map[uint64]pendingAsk

	// The reader's look at coder/websocket's buffer, against the close
	// handshake's; and the reader's wait, against shed.
	rmu      sync.Mutex
	waiting  bool         // in socket.wait
	shedding bool         // shed woke the wait: the reader moves to a fresh goroutine
	lastRead atomic.Int64 // unix nanos of the last frame read
	busy     atomic.Int32 // the read loop is inside a parser: don't reap

	closeOnce  sync.Once
	closeCode  CloseCode
	closeWhy   string
	closeCause error
}

func newConn(s *Server, sess *Session, persist bool, ws *websocket.Conn, sock *socket, remote string) *Conn {
	ctx, cancel := context.WithCancel(context.Background())
	c := &Conn{
		srv:     s,
		id:      s.nodeID + "." + randomID(8),
		session: sess,
		persist: persist,
		ws:      ws,
		sock:    sock,
		remote:  remote,
		ctx:     ctx,
		cancel:  cancel,
		sem:     make(chan struct{}, s.cfg.concurrency),
		idle:    make(chan struct{}, 1),
		taken:   make(chan struct{}, 1),
		parsers: make(chan struct{}, maxParsers),
	}
	if s.cfg.rate > 0 {
		c.limiter = rate.NewLimiter(rate.Limit(s.cfg.rate), s.cfg.burst)
	}
	c.lastRead.Store(time.Now().UnixNano())
	return c
}

// ID is the connection's id, unique in the cluster.
func (c *Conn) ID() string { return c.id }

// Session is what the session parser returned.
func (c *Conn) Session() *Session { return c.session }

// UserID is shorthand for Session().UserID.
func (c *Conn) UserID() string { return c.session.UserID }

// RemoteAddr is the network address of the client (the HTTP request's).
func (c *Conn) RemoteAddr() string { return c.remote }

// Context is cancelled when the connection ends.
func (c *Conn) Context() context.Context { return c.ctx }

// Subscriptions lists the channels the connection is subscribed to (by
// the client or the server; not its user and session channels). Once the
// connection ended (in OnDisconnect) it lists those it held at the end.
func (c *Conn) Subscriptions() []string {
	c.smu.Lock()
	defer c.smu.Unlock()
	if c.final != nil {
		return slices.Clone(c.final)
	}
	out := make([]string, 0, len(c.subs))
	for ch := range c.subs {
		out = append(out, ch)
	}
	return out
}

// Close ends the connection with a close code in the reconnect range (4005)
// or, if final, one that tells the client not to reconnect (4501). What was
// queued for the client (e.g. the reply to its last request) is sent first.
// The disconnect reason is ErrKicked.
func (c *Conn) Close(reason string, final bool) {
	code := CloseKicked
	if final {
		code = CloseForbidden
	}
	c.close(code, reason, ErrKicked)
}

// CloseCode is a WebSocket close code the server sends (docs/protocol.md).
// 4000–4499 ask the client to reconnect, 4500–4999 not to.
type CloseCode int

// Close codes sent by the server.
const (
	CloseShutdown     CloseCode = 4000 // server shutting down: reconnect at once, elsewhere
	ClosePingTimeout  CloseCode = 4001 // the client was silent for ping+pong
	CloseSlowConsumer CloseCode = 4002 // the client did not read: its send queue overflowed
	CloseWriteFailed  CloseCode = 4003 // a write failed or timed out
	CloseServerError  CloseCode = 4004 // the server failed
	CloseKicked       CloseCode = 4005 // closed by the application; may reconnect
	CloseResync       CloseCode = 4006 // a channel could not be kept exact: reconnect and resume
	CloseExpired      CloseCode = 4007 // the session's credentials expired: reconnect with fresh ones
	CloseUnauthorized CloseCode = 4500 // closed by the application: unauthorized; do not reconnect
	CloseForbidden    CloseCode = 4501 // closed by the application: forbidden; do not reconnect
)

// maxCloseReason bounds a close frame's reason: a control frame's payload
// is at most 125 bytes, 2 of them the code.
const maxCloseReason = 120

// Send queue and writer.

// maxBatch bounds the frames the writer joins into one WebSocket message.
const maxBatch = 64 << 10

// send queues a frame. A full queue either drops the frame (lossy) or ends
// the connection as a slow consumer. It never blocks.
func (c *Conn) send(frame []byte, lossy bool) {
	c.push(frame, lossy, false)
}

// sendWrite queues a frame like send and, when no writer runs, writes it
// on the calling goroutine instead of starting one: for a goroutine that
// has nothing else to do (an ask's handler once it has its reply), which
// saves a goroutine and a hand-off per round trip.
func (c *Conn) sendWrite(frame []byte) {
	if c.push(frame, false, true) {
		c.writer()
	}
}

// push queues a frame and starts the writer if none runs, or, with inline,
// reports that the caller must run it.
func (c *Conn) push(frame []byte, lossy, inline bool) (runWriter bool) {
	c.qmu.Lock()
	if c.qclosed {
		c.qmu.Unlock()
		return false
	}
	maxFrames, maxBytes := c.srv.cfg.sendQueue, c.srv.cfg.sendBytes
	if lossy {
		// Lossy frames may fill three quarters of the queue: the rest is
		// kept for replies, so dropping never turns into disconnecting.
		maxFrames, maxBytes = max(1, maxFrames*3/4), max(1, maxBytes*3/4)
	}
	// An empty queue takes any frame: a single frame larger than the budget
	// (from an instance with a larger payload limit) is not a slow consumer.
	if len(c.queue) > 0 && (len(c.queue) >= maxFrames || c.qbytes+len(frame) > maxBytes) {
		c.qmu.Unlock()
		if lossy {
			c.srv.stats.dropped.Add(1)
			return false
		}
		c.srv.stats.slowConsumers.Add(1)
		c.close(CloseSlowConsumer, "slow consumer", ErrSlowConsumer)
		return false
	}
	c.queue = append(c.queue, frame)
	c.qbytes += len(frame)
	if inline {
		runWriter = c.claimWriterLocked()
	} else {
		c.startWriterLocked()
	}
	c.qmu.Unlock()
	return runWriter
}

// startWriterLocked starts the writer if frames are waiting and none runs.
// The writer runs only while there is something to write, so an idle
// connection costs one goroutine, not two. Callers hold qmu.
func (c *Conn) startWriterLocked() {
	if c.claimWriterLocked() {
		go c.writer()
	}
}

// claimWriterLocked marks the writer running if frames are waiting and
// none runs; the caller then runs c.writer. Callers hold qmu.
func (c *Conn) claimWriterLocked() bool {
	if c.writing || c.corked > 0 || len(c.queue) == 0 {
		return false
	}
	c.writing = true
	c.wwg.Add(1)
	return true
}

// cork runs f with the writer paused, so that the frames f queues leave
// together: the client sees a subscription's ack only once the publications
// held for it were released after it, and a publication made after the
// client saw the ack cannot overtake them.
func (c *Conn) cork(f func()) {
	c.qmu.Lock()
	c.corked++
	c.qmu.Unlock()
	defer func() {
		c.qmu.Lock()
		c.corked--
		c.startWriterLocked()
		c.qmu.Unlock()
	}()
	f()
}

// signal wakes the waiter of a capacity-1 channel, if any, without blocking.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// take removes up to maxBatch bytes of queued frames into buf. With nothing
// queued and stop set, it marks the writer stopped.
func (c *Conn) take(buf []byte, stop bool) []byte {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	n, size := 0, 0
	for n < len(c.queue) && c.corked == 0 {
		add := len(c.queue[n])
		if n > 0 {
			add++ // the newline between frames
		}
		if n > 0 && size+add > maxBatch {
			break
		}
		size += add
		n++
	}
	buf = slices.Grow(buf, size) // one allocation at most
	for i, f := range c.queue[:n] {
		if i > 0 {
			buf = append(buf, '\n')
		}
		buf = append(buf, f...)
		c.qbytes -= len(f)
		c.queue[i] = nil
	}
	if n == len(c.queue) {
		// Keep the array while the writer runs (a busy connection would
		// grow a new one for every batch); an idle one holds nothing.
		c.queue = c.queue[:0]
	} else {
		c.queue = c.queue[n:]
	}
	if n > 0 && c.room != nil && c.halfEmptyLocked() {
		close(c.room) // wakes every waiter: the reader, the worker, catch-ups
		c.room = nil
	}
	if n == 0 && stop {
		if len(c.queue) == 0 {
			c.queue = nil // an idle connection holds no array
		}
		// (Frames queued under a cork stay: uncorking starts a writer.)
		c.writing = false
		signal(c.idle)
	}
	return buf
}

// batches holds the writers' batch buffers: a connection keeps none while
// idle, and a busy one does not grow a new one for each batch.
var batches = sync.Pool{New: func() any { return new([]byte) }}

// halfEmptyLocked reports whether the send queue is at most half full.
// Callers hold qmu.
func (c *Conn) halfEmptyLocked() bool {
	return len(c.queue) <= c.srv.cfg.sendQueue/2 && c.qbytes <= c.srv.cfg.sendBytes/2
}

// writer writes queued frames, batching those that are ready into one
// WebSocket message, until the queue is empty.
//
// It stops as soon as the queue is empty, after yielding once so that a
// fan-out in progress on another goroutine can queue more first: no timer,
// no linger. Starting a goroutine for the next frame costs about what
// waking a parked one would, and an idle connection then costs one
// goroutine, not two.
func (c *Conn) writer() {
	defer c.wwg.Done()
	bp := batches.Get().(*[]byte)
	buf := slices.Grow((*bp)[:0], frameHeaderRoom)
	defer func() {
		if cap(buf) <= 2*maxBatch {
			*bp = buf[:0]
			batches.Put(bp)
		}
	}()
	for {
		// The batch follows room for its frame header (socket.writeMessage).
		buf = c.take(buf[:frameHeaderRoom], false)
		if len(buf) == frameHeaderRoom {
			runtime.Gosched()
			if buf = c.take(buf[:frameHeaderRoom], true); len(buf) == frameHeaderRoom {
				return
			}
		}
		if err := c.write(buf); err != nil {
			c.close(CloseWriteFailed, "write failed", fmt.Errorf("%w: %w", ErrWriteFailed, err))
			continue // close dropped the queue: the next take ends the writer
		}
		c.srv.stats.framesOut.Add(1)
	}
}

// write writes one message, whose payload follows frameHeaderRoom bytes of
// b, within the write timeout: the socket frames and writes it in one
// system call (socket.writeMessage). Writer only.
func (c *Conn) write(b []byte) error {
	if c.sock == nil {
		ctx, cancel := context.WithTimeout(context.Background(), c.srv.cfg.writeTimeout)
		defer cancel()
		return c.ws.Write(ctx, websocket.MessageText, b[frameHeaderRoom:])
	}
	return c.sock.writeMessage(b)
}

// fits reports whether n frames of size bytes fit in the send queue now.
func (c *Conn) fits(n, size int) bool {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	return len(c.queue)+n <= c.srv.cfg.sendQueue && c.qbytes+size <= c.srv.cfg.sendBytes
}

// waitRoom waits until the send queue is at most half full, so that a
// catch-up, or replies, do not overflow it. The writer wakes every waiter
// as it drains.
func (c *Conn) waitRoom() error {
	for {
		c.qmu.Lock()
		if c.halfEmptyLocked() {
			c.qmu.Unlock()
			return nil
		}
		if c.room == nil {
			c.room = make(chan struct{})
		}
		room := c.room
		c.qmu.Unlock()
		select {
		case <-c.ctx.Done():
			return c.ctx.Err()
		case <-room:
		}
	}
}

// awaitMessage parks the reader until the client sends something, on a
// shallow stack when coder/websocket has nothing buffered (socket.wait).
// It reports closing once the connection is closing: from then on only
// the close handshake (finish) reads, so that the look at coder/websocket's
// buffer, which is not safe against concurrent reads, never overlaps it;
// and move when shed woke it to go on in a fresh goroutine.
func (c *Conn) awaitMessage() (closing, move bool) {
	c.rmu.Lock()
	if c.ctx.Err() != nil {
		c.rmu.Unlock()
		return true, false
	}
	if c.sock == nil || c.sock.br.Buffered() > 0 {
		c.rmu.Unlock()
		return false, false
	}
	c.waiting = true
	c.rmu.Unlock()
	c.sock.wait()
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.waiting = false
	if c.shedding {
		// What wait read, if anything, stays in the socket for the next.
		c.shedding = false
		c.sock.SetReadDeadline(time.Time{})
		return false, true
	}
	return false, false
}

// shed asks the reader, if it is waiting for its client, to go on in a
// fresh goroutine: the stack it grew handling requests (the welcome,
// subscriptions, catch-up, a pong) stays at 8 KB until garbage collections
// halve it, never below 4 KB once grown, while a fresh goroutine waits in
// 2 KB. A read deadline in the past wakes the wait; nothing else reads
// before awaitMessage clears it. The connection's timers call it once
// the client has gone quiet: after the setup, and after each pong.
func (c *Conn) shed() {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.waiting && !c.shedding && c.ctx.Err() == nil && c.sock.rc != nil {
		c.shedding = true
		c.sock.SetReadDeadline(time.Unix(1, 0))
	}
}

// Liveness.

// ping runs on the connection's liveness timer, which alternates: at each
// ping interval it queues a ping and arms the pong deadline; at the
// deadline, a client that sent nothing since the ping is closed with 4001,
// unless the server itself is pausing its reads (busy).
func (c *Conn) ping() {
	if c.ctx.Err() != nil {
		return
	}
	cfg := &c.srv.cfg
	now := time.Now()
	next := cfg.pongTimeout
	if sent := c.pingSent.Load(); sent != 0 {
		// The pong deadline.
		if c.lastRead.Load() < sent && c.busy.Load() == 0 {
			c.close(ClosePingTimeout, "ping timeout", ErrPingTimeout)
			return
		}
		c.pingSent.Store(0)
		next = max(0, cfg.pingInterval-cfg.pongTimeout)
		c.shed() // the pong was read on a stack it grew
	} else {
		c.sweepAsks(now)
		c.pingSent.Store(now.UnixNano())
		c.send(pingFrame, false)
	}
	c.qmu.Lock() // orders this with the timer's creation and Stop
	if c.ctx.Err() == nil {
		c.pingTimer.Reset(next)
	}
	c.qmu.Unlock()
}

// parsing runs f, which may call application parsers or wait, without
// letting the ping check reap a client whose frames are not read meanwhile.
func (c *Conn) parsing(f func()) {
	c.busy.Add(1)
	defer func() {
		c.busy.Add(-1)
		c.lastRead.Store(time.Now().UnixNano())
	}()
	f()
}

// Closing.

// closeGrace bounds the close handshake.
const closeGrace = time.Second

// close ends the connection once: the queue stops, ctx is cancelled and
// finish sends the close frame. cause is the disconnect reason.
func (c *Conn) close(code CloseCode, why string, cause error) {
	c.closeOnce.Do(func() {
		// A close frame's reason must be valid UTF-8, at most 123 bytes.
		why = truncate(strings.ToValidUTF8(why, ""), maxCloseReason)
		c.closeCode, c.closeWhy, c.closeCause = code, why, cause
		c.qmu.Lock()
		c.qclosed = true // nothing more is queued
		switch code {
		case CloseSlowConsumer, CloseWriteFailed, ClosePingTimeout:
			// The client is not reading: don't wait to flush.
			c.queue, c.qbytes = nil, 0
		default:
			// What is queued is flushed (e.g. the ack of the request that
			// made the application disconnect the client).
		}
		c.qmu.Unlock()
		c.cancel()
		c.endAsks() // their contexts end with the connection's
		c.wwg.Add(1)
		go c.finish() // the goodbye; serve waits for it
	})
}

// finish runs once the connection is closing: it lets the writer flush what
// a graceful close leaves queued, then says goodbye with the close code.
func (c *Conn) finish() {
	defer c.wwg.Done()
	c.qmu.Lock()
	if c.pingTimer != nil {
		c.pingTimer.Stop()
	}
	c.qmu.Unlock()
	for {
		c.qmu.Lock()
		writing := c.writing
		c.qmu.Unlock()
		if !writing {
			break
		}
		<-c.idle
	}
	// The close handshake reads coder/websocket's buffer: the reader
	// checks it no more (awaitMessage).
	c.rmu.Lock()
	c.rmu.Unlock() //nolint:staticcheck // an empty critical section: a barrier
	// A dead peer would hold the close handshake for 5s or more.
	t := time.AfterFunc(closeGrace, c.abort)
	c.ws.Close(websocket.StatusCode(c.closeCode), c.closeWhy)
	t.Stop()
}

// abort closes the network connection at once.
func (c *Conn) abort() {
	if c.sock != nil {
		c.sock.Close()
	} else {
		c.ws.CloseNow()
	}
}

// Subscriptions of the connection.

// addSub records a new client subscription, unless the connection holds
// the channel already or has as many subscriptions as allowed.
func (c *Conn) addSub(sb *sub) bool {
	c.smu.Lock()
	defer c.smu.Unlock()
	if _, dup := c.subs[sb.channel]; dup || len(c.subs) >= c.srv.cfg.maxSubs {
		return false
	}
	if c.subs == nil {
		c.subs = make(map[string]*sub)
	}
	c.nested.Add(c.nestedWith(sb.channel))
	c.subs[sb.channel] = sb
	c.srv.stats.subscriptions.Add(1)
	return true
}

// sub returns c's subscription to channel, or nil.
func (c *Conn) sub(channel string) *sub {
	c.smu.Lock()
	defer c.smu.Unlock()
	return c.subs[channel]
}

// clientSubs returns the subscriptions the client made (not the server).
func (c *Conn) clientSubs() []*sub {
	c.smu.Lock()
	defer c.smu.Unlock()
	out := make([]*sub, 0, len(c.subs))
	for _, sb := range c.subs {
		if !sb.server {
			out = append(out, sb)
		}
	}
	return out
}

func (sb *sub) isServer() bool {
	sb.c.smu.Lock()
	defer sb.c.smu.Unlock()
	return sb.server
}

func (sb *sub) setServer() {
	sb.c.smu.Lock()
	sb.server = true
	sb.c.smu.Unlock()
}

// isPending reports whether channel is a server subscription not announced
// yet (worker only).
func (c *Conn) isPending(channel string) bool {
	for _, p := range c.pendingServer {
		if p.sb.channel == channel {
			return true
		}
	}
	return false
}

// storeKey is the key of c's session in the session store.
func (c *Conn) storeKey() string { return sessionKey(c.session.UserID, c.session.SessionID) }

// subCount reports whether c holds channel, and how many subscriptions it
// holds.
func (c *Conn) subCount(channel string) (held bool, n int) {
	c.smu.Lock()
	defer c.smu.Unlock()
	_, held = c.subs[channel]
	return held, len(c.subs)
}

// forget drops channel from c's subscriptions and returns it (nil when c
// did not hold it). Nothing of the subscription is queued once it returns.
func (c *Conn) forget(channel string) *sub {
	c.smu.Lock()
	sb, ok := c.subs[channel]
	if ok {
		delete(c.subs, channel)
		c.nested.Add(-c.nestedWith(channel))
	}
	c.smu.Unlock()
	if !ok {
		return nil
	}
	c.srv.stats.subscriptions.Add(-1)
	sb.drop() // after smu: catch-up holds sb.mu while it takes smu
	return sb
}

// forgetAll drops every subscription, when the connection ends, and
// returns them. Subscriptions still lists them, for OnDisconnect.
func (c *Conn) forgetAll() []*sub {
	c.smu.Lock()
	subs := c.subs
	c.subs = nil
	c.nested.Store(0)
	out := make([]*sub, 0, len(subs))
	c.final = make([]string, 0, len(subs))
	for ch, sb := range subs {
		out = append(out, sb)
		c.final = append(c.final, ch)
	}
	c.smu.Unlock()
	for _, sb := range out {
		sb.drop()
	}
	c.srv.stats.subscriptions.Add(-int64(len(subs)))
	return out
}

// holdsDeeper reports whether c holds a subscription strictly below stream
// that also matches channel.
func (c *Conn) holdsDeeper(stream, channel string) bool {
	if c.nested.Load() == 0 {
		return false
	}
	c.smu.Lock()
	defer c.smu.Unlock()
	for i := len(stream) + 1; i < len(channel); i++ {
		if channel[i] == '.' {
			if _, ok := c.subs[channel[:i]]; ok {
				return true
			}
		}
	}
	_, ok := c.subs[channel]
	return ok
}

// nestedWith counts held subscriptions that contain name or that name
// contains. Callers hold smu.
func (c *Conn) nestedWith(name string) int32 {
	if len(c.subs) == 0 || reserved(name) {
		return 0
	}
	var n int32
	for other := range c.subs {
		if isAncestor(other, name) || isAncestor(name, other) {
			n++
		}
	}
	return n
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

// Ordered requests.

// maxOrdered bounds the ordered requests waiting for the worker; beyond it
// the reader pauses.
const maxOrdered = 32

// enqueue hands an ordered request to the connection's worker, which runs
// them one at a time, in order, starting the worker if none runs. When
// maxOrdered wait already, the reader pauses until the worker takes one.
func (c *Conn) enqueue(run func()) {
	for !c.tryEnqueue(run, maxOrdered) {
		c.parsing(func() {
			select {
			case <-c.taken:
			case <-c.ctx.Done():
			}
		})
		if c.ctx.Err() != nil {
			return
		}
	}
}

// enqueueControl queues work of the server's own (a server subscription,
// the start of the held subscriptions) on the worker, in order with the
// client's requests, without ever waiting: it may exceed maxOrdered by as
// much again. It reports false when even that is full.
func (c *Conn) enqueueControl(run func()) bool {
	return c.tryEnqueue(run, 2*maxOrdered)
}

func (c *Conn) tryEnqueue(run func(), bound int) bool {
	c.omu.Lock()
	if len(c.ordered) >= bound {
		c.omu.Unlock()
		return false
	}
	c.ordered = append(c.ordered, run)
	start := !c.working
	c.working = true
	c.omu.Unlock()
	if start && !c.spawn(c.work) {
		c.omu.Lock()
		c.working, c.ordered = false, nil
		c.omu.Unlock()
	}
	return true
}

// work runs the queued ordered requests until none is left or the
// connection ends.
func (c *Conn) work() {
	for {
		c.omu.Lock()
		if len(c.ordered) == 0 || c.ctx.Err() != nil {
			c.working, c.ordered = false, nil
			c.omu.Unlock()
			return
		}
		run := c.ordered[0]
		c.ordered[0] = nil
		c.ordered = c.ordered[1:]
		c.omu.Unlock()
		signal(c.taken)
		// Like the reader, wait for room for the replies: a burst of
		// requests is answered at the pace the client reads.
		if c.waitRoom() != nil {
			continue // the connection ended: the next turn stops
		}
		run()
	}
}

// pauseForRoom pauses the reader while the send queue is more than half
// full, so that a client sending many requests gets its replies at the
// pace it reads them (TCP backpressure) instead of overflowing its queue.
func (c *Conn) pauseForRoom() {
	c.qmu.Lock()
	ok := c.halfEmptyLocked()
	c.qmu.Unlock()
	if !ok {
		c.parsing(func() { c.waitRoom() })
	}
}

// Handler slots.

// acquire takes a handler slot without waiting.
func (c *Conn) acquire() bool {
	select {
	case c.sem <- struct{}{}:
		return true
	default:
		return false
	}
}

// waitSlot waits for a handler slot, at most the ask timeout, pausing the
// connection's reads meanwhile.
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

func (c *Conn) release() { <-c.sem }

// Goroutines of the connection.

// spawn runs f on a goroutine owned by the connection (one of the
// server's workers), unless it ended.
func (c *Conn) spawn(f func()) bool {
	c.gmu.Lock()
	defer c.gmu.Unlock()
	if c.ended {
		return false
	}
	c.wg.Add(1)
	c.srv.workers.run(func() {
		defer c.wg.Done()
		f()
	})
	return true
}

// endGoroutines stops new goroutines and waits for the running ones.
func (c *Conn) endGoroutines() {
	c.gmu.Lock()
	c.ended = true
	c.gmu.Unlock()
	c.wg.Wait()
}

// Server asks awaiting the client's reply.

type pendingAsk struct {
	origin   string // node waiting for the reply
	originID uint64
	deadline time.Time
}

// addAsk records a server ask and returns the id the client must reply to;
// false when too many are pending.
func (c *Conn) addAsk(p pendingAsk) (uint64, bool) {
	c.amu.Lock()
	defer c.amu.Unlock()
	if len(c.asks) >= c.srv.cfg.maxPending {
		return 0, false
	}
	if c.asks == nil {
		c.asks = make(map[uint64]pendingAsk)
	}
	c.askSeq++
	c.asks[c.askSeq] = p
	return c.askSeq, true
}

// takeAsk removes and returns the pending ask a reply answers.
func (c *Conn) takeAsk(id uint64) (pendingAsk, bool) {
	c.amu.Lock()
	defer c.amu.Unlock()
	p, ok := c.asks[id]
	delete(c.asks, id)
	return p, ok
}

// takeAsks removes and returns every pending ask.
func (c *Conn) takeAsks() map[uint64]pendingAsk {
	c.amu.Lock()
	defer c.amu.Unlock()
	asks := c.asks
	c.asks = nil
	return asks
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
