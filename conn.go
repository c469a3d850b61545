package sss

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/time/rate"

	"github.com/superscaled/sss/scaler"
)

// Conn is one client connection on this instance. Its methods are safe for
// concurrent use.
type Conn struct {
	srv     *Server
	id      string
	session *Session
	persist bool // the session id is the application's, so store subscriptions
	ws      *websocket.Conn
	raw     net.Conn // under ws, to cut a close handshake short
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
	idle      chan struct{}  // signalled when the writer stops
	wake      chan struct{}  // signalled when a frame is queued
	wwg       sync.WaitGroup // the writer and finish goroutines
	pingTimer *time.Timer

	// Subscriptions made by the client (not its user/session channels).
	smu    sync.Mutex
	subs   map[string]*sub
	nested atomic.Int32 // pairs of held subscriptions where one contains the other

	// The user and session channels, held from the upgrade until the
	// client's first request, which may ask to catch up on them (resume).
	own      []ownSub
	ownOnce  sync.Once
	ownTimer *time.Timer

	sem     chan struct{} // ask/tell handler slots
	limiter *rate.Limiter

	// Goroutines the connection owns (handlers, catch-up); once ended,
	// the connection starts no more.
	gmu   sync.Mutex
	ended bool
	wg    sync.WaitGroup

	// Server asks awaiting this client's reply.
	amu    sync.Mutex
	askSeq uint64
	asks   map[uint64]pendingAsk

	lastRead atomic.Int64 // unix nanos of the last frame read
	busy     atomic.Int32 // the read loop is inside a parser: don't reap

	closeOnce  sync.Once
	closeCode  websocket.StatusCode
	closeWhy   string
	closeCause error
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

// Subscriptions lists the channels the client subscribed to.
func (c *Conn) Subscriptions() []string {
	c.smu.Lock()
	defer c.smu.Unlock()
	out := make([]string, 0, len(c.subs))
	for ch := range c.subs {
		out = append(out, ch)
	}
	return out
}

// Close ends the connection with a close code in the reconnect range (4005)
// or, if final, one that tells the client not to reconnect (4501).
func (c *Conn) Close(reason string, final bool) {
	code := CloseDisconnect
	if final {
		code = CloseForbidden
	}
	c.close(code, reason, nil)
}

// Close codes sent by the server (docs/protocol.md). 4000–4499 ask the
// client to reconnect, 4500–4999 not to.
const (
	CloseShutdown     websocket.StatusCode = 4000
	ClosePingTimeout  websocket.StatusCode = 4001
	CloseSlowConsumer websocket.StatusCode = 4002
	CloseWriteTimeout websocket.StatusCode = 4003
	CloseServerError  websocket.StatusCode = 4004
	CloseDisconnect   websocket.StatusCode = 4005
	CloseResync       websocket.StatusCode = 4006
	CloseUnauthorized websocket.StatusCode = 4500
	CloseForbidden    websocket.StatusCode = 4501
)

// send queues a frame. A full queue either drops the frame (lossy) or ends
// the connection as a slow consumer. It never blocks.
func (c *Conn) send(frame []byte, lossy bool) {
	c.qmu.Lock()
	if c.qclosed {
		c.qmu.Unlock()
		return
	}
	maxFrames, maxBytes := c.srv.cfg.sendQueue, c.srv.cfg.sendBytes
	if lossy {
		// Lossy frames may fill three quarters of the queue: the rest is
		// kept for replies, so dropping never turns into disconnecting.
		maxFrames, maxBytes = max(1, maxFrames*3/4), max(1, maxBytes*3/4)
	}
	if len(c.queue) >= maxFrames || c.qbytes+len(frame) > maxBytes {
		c.qmu.Unlock()
		if lossy {
			c.srv.stats.dropped.Add(1)
			return
		}
		c.srv.stats.slowConsumers.Add(1)
		c.close(CloseSlowConsumer, "slow consumer", ErrSlowConsumer)
		return
	}
	c.queue = append(c.queue, frame)
	c.qbytes += len(frame)
	if !c.writing {
		// The writer runs only while there is something to write, so an
		// idle connection costs one goroutine, not two.
		c.writing = true
		c.wwg.Add(1)
		go c.writer()
	}
	c.qmu.Unlock()
	select { // wake a writer lingering for more
	case c.wake <- struct{}{}:
	default:
	}
}

// ErrSlowConsumer is the disconnect reason of a connection whose send queue
// overflowed.
var ErrSlowConsumer = Errorf(CodeRateLimited, "slow consumer")

// take removes up to maxBatch bytes of queued frames. With nothing queued
// and stop set, it marks the writer stopped.
func (c *Conn) take(buf []byte, maxBatch int, stop bool) []byte {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	n := 0
	for n < len(c.queue) {
		f := c.queue[n]
		if n > 0 && len(buf)+1+len(f) > maxBatch {
			break
		}
		if n > 0 {
			buf = append(buf, '\n')
		}
		buf = append(buf, f...)
		c.qbytes -= len(f)
		c.queue[n] = nil
		n++
	}
	c.queue = c.queue[n:]
	if len(c.queue) == 0 {
		// Drop the backing array: an idle connection should hold nothing.
		c.queue = nil
	}
	if n == 0 && stop {
		c.writing = false
		select {
		case c.idle <- struct{}{}:
		default:
		}
	}
	return buf
}

// writer writes queued frames, batching those that are ready into one
// WebSocket message, until the queue is empty.
func (c *Conn) writer() {
	defer c.wwg.Done()
	var buf []byte
	var linger *time.Timer
	for {
		buf = c.take(buf[:0], 64<<10, false)
		if len(buf) == 0 {
			// Linger a moment: under load, frames keep coming, and
			// starting a goroutine per batch would cost more than waiting.
			if linger == nil {
				linger = time.NewTimer(writerLinger)
			} else {
				linger.Reset(writerLinger)
			}
			select {
			case <-c.wake:
				continue
			case <-linger.C:
			}
			if buf = c.take(buf[:0], 64<<10, true); len(buf) == 0 {
				return
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.srv.cfg.writeTimeout)
		err := c.ws.Write(ctx, websocket.MessageText, buf)
		cancel()
		if err != nil {
			c.close(CloseWriteTimeout, "write failed", err)
			continue // close dropped the queue: the next take ends the writer
		}
		c.srv.stats.framesOut.Add(1)
		if cap(buf) > 64<<10 {
			buf = nil // don't keep a large buffer
		}
	}
}

// writerLinger is how long an idle writer waits for more before it stops.
const writerLinger = 20 * time.Millisecond

// ping runs every ping interval on a timer: it reaps a silent client, or
// queues a ping.
func (c *Conn) ping() {
	if c.ctx.Err() != nil {
		return
	}
	cfg := &c.srv.cfg
	last := time.Unix(0, c.lastRead.Load())
	if c.busy.Load() == 0 && time.Since(last) > cfg.pingInterval+cfg.pongTimeout {
		c.close(ClosePingTimeout, "ping timeout", ErrPingTimeout)
		return
	}
	c.sweepAsks(time.Now())
	c.send(pingFrame, false)
	c.qmu.Lock() // orders this with the timer's creation and Stop
	if c.ctx.Err() == nil {
		c.pingTimer.Reset(cfg.pingInterval)
	}
	c.qmu.Unlock()
}

// finish runs once the connection is closing: it lets the writer flush what
// a graceful close leaves queued, then says goodbye with the close code.
func (c *Conn) finish() {
	defer c.wwg.Done()
	c.qmu.Lock()
	c.pingTimer.Stop()
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
	// A dead peer would hold the close handshake for 5s or more.
	t := time.AfterFunc(closeGrace, c.abort)
	c.ws.Close(c.closeCode, c.closeWhy)
	t.Stop()
}

// closeGrace bounds the close handshake.
const closeGrace = time.Second

// abort closes the network connection at once.
func (c *Conn) abort() {
	if c.raw != nil {
		c.raw.Close()
	} else {
		c.ws.CloseNow()
	}
}

// ErrPingTimeout is the disconnect reason of a client that went silent.
var ErrPingTimeout = Errorf(CodeTimeout, "ping timeout")

// close ends the connection once: the queue stops, ctx is cancelled and the
// writer sends the close frame.
func (c *Conn) close(code websocket.StatusCode, why string, cause error) {
	c.closeOnce.Do(func() {
		c.closeCode, c.closeWhy, c.closeCause = code, why, cause
		c.qmu.Lock()
		c.qclosed = true // nothing more is queued
		switch code {
		case CloseSlowConsumer, CloseWriteTimeout, ClosePingTimeout:
			// The client is not reading: don't wait to flush.
			c.queue, c.qbytes = nil, 0
		default:
			// What is queued is flushed (e.g. the ack of the request that
			// made the application disconnect the client).
		}
		c.qmu.Unlock()
		c.cancel()
	})
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
	if len(c.subs) == 0 || len(name) > 0 && name[0] == scaler.ReservedPrefix[0] {
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

// isAncestor reports whether a is a strict ancestor of b ("news" of "news.uk").
func isAncestor(a, b string) bool {
	return len(b) > len(a) && b[len(a)] == '.' && b[:len(a)] == a
}

// spawn runs f on a goroutine owned by the connection, unless it ended.
func (c *Conn) spawn(f func()) bool {
	c.gmu.Lock()
	defer c.gmu.Unlock()
	if c.ended {
		return false
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f()
	}()
	return true
}

// endGoroutines stops new goroutines and waits for the running ones.
func (c *Conn) endGoroutines() {
	c.gmu.Lock()
	c.ended = true
	c.gmu.Unlock()
	c.wg.Wait()
}

type ownSub struct {
	sb  *sub
	pos scaler.Position // the stream's position at the welcome
}

type pendingAsk struct {
	origin   string // node waiting for the reply
	originID uint64
	deadline time.Time
}
