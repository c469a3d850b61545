// Package wstest is a raw sss.v1 client for tests: it speaks the wire
// protocol of docs/protocol.md directly over a WebSocket, so tests see
// exactly what the server sends.
//
// One goroutine reads for the whole life of a connection (coder/websocket
// closes a connection when a read's context ends). It answers pings
// (unless NoPongs), answers asks when a responder is set (AnswerAsks), and
// keeps every server frame twice over:
//
//   - in a queue, consumed in order by Next, Expect and Nothing (pings
//     included, though Expect and Nothing skip them); Request takes its
//     reply out of the queue and leaves the rest in order;
//   - in a record that nothing consumes, searched by Wait, Find and Pubs.
//
// A Client's methods may be called from any goroutine, but the ones that
// fail the test (with t.Fatal) only from the test's own. The package does
// not import sss: close codes are plain ints, error codes strings.
package wstest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// Timeout bounds every wait that has no duration of its own: for the
// welcome, a reply, an expected frame, a match, the close.
const Timeout = 10 * time.Second

const (
	subprotocol = "sss.v1"
	readLimit   = 1 << 20
)

// Frame is any server frame (docs/protocol.md, "Server to client");
// fields its type does not use stay empty.
type Frame struct {
	Type string `json:"type"`
	// ID is the id of the request an ack or error answers, or of a server
	// ask.
	ID uint64 `json:"id,omitempty"`

	// welcome
	Version  int    `json:"version,omitempty"`
	Conn     string `json:"conn,omitempty"`
	Session  string `json:"session,omitempty"`
	User     string `json:"user,omitempty"`
	Channels struct {
		User    string `json:"user,omitempty"`
		Session string `json:"session,omitempty"`
	} `json:"channels,omitzero"`
	Positions map[string]Position `json:"positions,omitempty"`
	Ping      int64               `json:"ping,omitempty"` // ms
	Pong      int64               `json:"pong,omitempty"` // ms
	Limits    struct {
		MaxMessage       int64 `json:"maxMessage"`
		MaxPayload       int   `json:"maxPayload"`
		MaxSubscriptions int   `json:"maxSubscriptions"`
		Concurrency      int   `json:"concurrency"`
	} `json:"limits,omitzero"`

	// ack and error
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`

	// pub (Channel to Epoch), tell (Name, Data) and ask (ID, Name, Data)
	Channel string          `json:"channel,omitempty"`
	Sub     string          `json:"sub,omitempty"`
	Event   string          `json:"event,omitempty"`
	Name    string          `json:"name,omitempty"`
	Data    json.RawMessage `json:"data,omitempty"`
	From    *Sender         `json:"from,omitempty"`
	// Time is when the server accepted a pub, ms since the Unix epoch.
	Time   int64  `json:"time,omitempty"`
	Offset uint64 `json:"offset,omitempty"`
	Epoch  string `json:"epoch,omitempty"`

	// join and leave: the client that came or went.
	Client json.RawMessage `json:"client,omitempty"`
}

// String is the frame as JSON, without its empty fields.
func (f Frame) String() string {
	b, err := json.Marshal(f)
	if err != nil {
		return fmt.Sprintf("%s frame (%v)", f.Type, err)
	}
	return string(b)
}

// Position is a place in a channel's stream, as in a welcome's positions
// or a subscribe's since.
type Position struct {
	Offset uint64 `json:"offset"`
	Epoch  string `json:"epoch"`
}

// Sender is the from of a pub that a client published.
type Sender struct {
	User string `json:"user"`
	Conn string `json:"conn"`
}

// Error is the error of an error frame.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Option configures Dial.
type Option func(*Client)

// Name names the client in failure messages.
func Name(name string) Option { return func(c *Client) { c.name = name } }

// NoPongs leaves pings unanswered: the test answers them itself, or lets
// the server time the connection out.
func NoPongs() Option { return func(c *Client) { c.noPongs = true } }

// ReadLimit sets the largest message the client reads (default 1 MiB).
func ReadLimit(n int64) Option { return func(c *Client) { c.readLimit = n } }

// Client is one raw sss.v1 connection.
type Client struct {
	// Welcome is the connection's welcome frame.
	Welcome Frame

	t         testing.TB
	name      string
	noPongs   bool
	readLimit int64
	ws        *websocket.Conn
	done      chan struct{} // closed when the reader stops

	mu     sync.Mutex
	record []Frame
	queue  []Frame
	status int           // close code, once done is closed
	wake   chan struct{} // closed and replaced on every change
	onAsk  func(name string, data json.RawMessage) any
}

// Dial connects to url, offering sss.v1, with header (what the server's
// session parser reads), and waits for the welcome, which must be the
// first frame. It fails the test if any of this fails. The connection is
// closed at once (CloseNow) when the test ends.
func Dial(t testing.TB, url string, header http.Header, opts ...Option) *Client {
	t.Helper()
	c := &Client{t: t, name: url, done: make(chan struct{}), wake: make(chan struct{}), readLimit: readLimit}
	for _, o := range opts {
		o(c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{subprotocol}, HTTPHeader: header})
	if err != nil {
		t.Fatalf("%s: dial: %v", c.name, err)
	}
	ws.SetReadLimit(c.readLimit)
	c.ws = ws
	go c.read()
	t.Cleanup(c.CloseNow)
	c.Welcome = c.Expect("welcome")
	return c
}

func (c *Client) read() {
	defer close(c.done)
	for {
		typ, msg, err := c.ws.Read(context.Background())
		if err != nil {
			c.mu.Lock()
			c.status = int(websocket.CloseStatus(err))
			c.changed()
			c.mu.Unlock()
			return
		}
		if typ != websocket.MessageText {
			c.t.Errorf("%s: server sent a binary message", c.name)
			continue
		}
		// The server never sends empty lines, though the protocol lets a
		// receiver ignore them: one is reported like any invalid frame.
		for _, line := range bytes.Split(msg, []byte("\n")) {
			var f Frame
			if err := json.Unmarshal(line, &f); err != nil {
				c.t.Errorf("%s: server sent invalid JSON %q: %v", c.name, line, err)
				continue
			}
			c.mu.Lock()
			c.record = append(c.record, f)
			c.queue = append(c.queue, f)
			onAsk := c.onAsk
			c.changed()
			c.mu.Unlock()
			switch {
			case f.Type == "ping" && !c.noPongs:
				c.write(map[string]any{"type": "pong"})
			case f.Type == "ask" && onAsk != nil:
				c.write(map[string]any{"type": "reply", "id": f.ID, "result": onAsk(f.Name, f.Data)})
			}
		}
	}
}

// changed wakes every waiter; c.mu is held.
func (c *Client) changed() {
	close(c.wake)
	c.wake = make(chan struct{})
}

// write sends v from the reader; a failure shows as a missing reply or a
// close.
func (c *Client) write(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Errorf("%s: %v", c.name, err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	c.ws.Write(ctx, websocket.MessageText, b)
}

// AnswerAsks makes the client answer every server ask from now on with a
// reply whose result is f(name, data). f runs on the reader goroutine and
// must not block; nil leaves asks unanswered (the default). Asks are
// queued and recorded either way.
func (c *Client) AnswerAsks(f func(name string, data json.RawMessage) any) {
	c.mu.Lock()
	c.onAsk = f
	c.mu.Unlock()
}

// SendRaw sends s as one text message, as is.
func (c *Client) SendRaw(s string) {
	c.t.Helper()
	c.send(websocket.MessageText, []byte(s))
}

// SendBinary sends b as one binary message.
func (c *Client) SendBinary(b []byte) {
	c.t.Helper()
	c.send(websocket.MessageBinary, b)
}

// Send sends v, encoded as JSON, as one text message.
func (c *Client) Send(v any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatalf("%s: %v", c.name, err)
	}
	c.send(websocket.MessageText, b)
}

func (c *Client) send(typ websocket.MessageType, b []byte) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	if err := c.ws.Write(ctx, typ, b); err != nil {
		c.t.Fatalf("%s: write: %v", c.name, err)
	}
}

// Request ids are unique in the process, from idBase+1 up: above the small
// ids tests write by hand in raw frames.
const idBase = 1_000_000

var lastID atomic.Uint64

// Request sends req with a fresh id (set in req["id"]) and returns the ack
// or error with that id, taken out of the queue. Frames that arrive
// meanwhile stay queued, in order.
func (c *Client) Request(req map[string]any) Frame {
	c.t.Helper()
	id := idBase + lastID.Add(1)
	req["id"] = id
	c.Send(req)
	f, ok := c.await(Timeout, func() (Frame, bool) {
		return c.pop(func(f Frame) bool { return (f.Type == "ack" || f.Type == "error") && f.ID == id })
	})
	if !ok {
		c.t.Fatalf("%s: no reply to %v; %s", c.name, req, c.state())
	}
	return f
}

// Ack is Request, failing the test unless the reply is an ack.
func (c *Client) Ack(req map[string]any) Frame {
	c.t.Helper()
	f := c.Request(req)
	if f.Type != "ack" {
		c.t.Fatalf("%s: %v: got %s %+v, want ack", c.name, req, f.Type, f.Error)
	}
	return f
}

// Fails is Request, failing the test unless the reply is an error with
// code.
func (c *Client) Fails(req map[string]any, code string) Frame {
	c.t.Helper()
	f := c.Request(req)
	if f.Type != "error" || f.Error == nil || f.Error.Code != code {
		c.t.Fatalf("%s: %v: got %+v (%+v), want error %q", c.name, req, f, f.Error, code)
	}
	return f
}

// Subscribe subscribes to channel and returns the ack.
func (c *Client) Subscribe(channel string) Frame {
	c.t.Helper()
	return c.Ack(map[string]any{"type": "subscribe", "channel": channel})
}

// Next takes the next queued frame, pings included, waiting up to d; ok is
// false if none came, or the connection closed with the queue empty.
func (c *Client) Next(d time.Duration) (f Frame, ok bool) {
	return c.await(d, func() (Frame, bool) { return c.pop(func(Frame) bool { return true }) })
}

// Expect takes the next queued frame that is not a ping, failing the test
// unless it arrives within Timeout and, if typ is not empty, has type typ.
func (c *Client) Expect(typ string) Frame {
	c.t.Helper()
	deadline := time.Now().Add(Timeout)
	for {
		f, ok := c.Next(time.Until(deadline))
		if !ok {
			c.t.Fatalf("%s: no %q frame; %s", c.name, typ, c.state())
		}
		if f.Type == "ping" {
			continue
		}
		if typ != "" && f.Type != typ {
			c.t.Fatalf("%s: got frame %+v, want type %q", c.name, f, typ)
		}
		return f
	}
}

// Nothing fails the test if a frame other than a ping arrives within d.
func (c *Client) Nothing(d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		f, ok := c.Next(time.Until(deadline))
		if !ok {
			return
		}
		if f.Type != "ping" {
			c.t.Fatalf("%s: unexpected frame %+v", c.name, f)
		}
	}
}

// Wait returns the first recorded frame that match accepts, waiting up to
// Timeout, and fails the test (naming what it waited for) otherwise.
func (c *Client) Wait(what string, match func(Frame) bool) Frame {
	c.t.Helper()
	f, ok := c.await(Timeout, func() (Frame, bool) { return c.Find(match) })
	if !ok {
		c.t.Fatalf("%s: no %s; %s", c.name, what, c.state())
	}
	return f
}

// Find returns the first recorded frame that match accepts, without
// waiting.
func (c *Client) Find(match func(Frame) bool) (Frame, bool) {
	for _, f := range c.recorded() {
		if match(f) {
			return f, true
		}
	}
	return Frame{}, false
}

// recorded returns the record so far. It is only ever appended to, so
// the frames it holds never change.
func (c *Client) recorded() []Frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.record
}

// Pubs returns the data of the recorded pubs on channel, in order.
func (c *Client) Pubs(channel string) []string {
	var out []string
	for _, f := range c.recorded() {
		if f.Type == "pub" && f.Channel == channel {
			out = append(out, string(f.Data))
		}
	}
	return out
}

// WaitPubs waits up to Timeout until n pubs on channel were recorded and
// returns the data of all of them.
func (c *Client) WaitPubs(channel string, n int) []string {
	c.t.Helper()
	c.Wait(fmt.Sprintf("%d pubs on %q", n, channel), func(Frame) bool { return len(c.Pubs(channel)) >= n })
	return c.Pubs(channel)
}

// Done is closed once the connection is closed and everything it received
// is queued.
func (c *Client) Done() <-chan struct{} { return c.done }

// CloseStatus waits up to Timeout for the connection to close and returns
// its WebSocket close code (-1 if it ended without a close frame).
func (c *Client) CloseStatus() int {
	c.t.Helper()
	timer := time.NewTimer(Timeout)
	defer timer.Stop()
	select {
	case <-c.done:
	case <-timer.C:
		c.t.Fatalf("%s: connection not closed; %s", c.name, c.state())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status
}

// Close closes the connection with a normal closure, waits for the server
// to answer up to Timeout, then for the reader to stop.
func (c *Client) Close() {
	c.ws.Close(websocket.StatusNormalClosure, "")
	c.CloseNow()
}

// CloseNow closes the connection without a close handshake and waits for
// the reader to stop.
func (c *Client) CloseNow() {
	c.ws.CloseNow()
	<-c.done
}

// await calls take until it finds something, the connection ends (one
// last try then), or d passes.
func (c *Client) await(d time.Duration, take func() (Frame, bool)) (Frame, bool) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		c.mu.Lock()
		wake := c.wake // taken before trying: no change is missed
		c.mu.Unlock()
		if f, ok := take(); ok {
			return f, true
		}
		select {
		case <-wake:
		case <-c.done:
			return take()
		case <-timer.C:
			return Frame{}, false
		}
	}
}

// pop takes the first queued frame that match accepts.
func (c *Client) pop(match func(Frame) bool) (Frame, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, f := range c.queue {
		if !match(f) {
			continue
		}
		if i == 0 {
			c.queue[0] = Frame{} // for the collector
			c.queue = c.queue[1:]
		} else {
			c.queue = append(c.queue[:i], c.queue[i+1:]...)
		}
		return f, true
	}
	return Frame{}, false
}

// state describes the connection for failure messages: whether it is
// closed, and the last frames recorded.
func (c *Client) state() string {
	const shown = 40
	record := c.recorded()
	var b strings.Builder
	select {
	case <-c.done:
		c.mu.Lock()
		fmt.Fprintf(&b, "connection closed (%d); ", c.status)
		c.mu.Unlock()
	default:
	}
	fmt.Fprintf(&b, "%d frames received", len(record))
	if len(record) > shown {
		fmt.Fprintf(&b, ", the last %d", shown)
		record = record[len(record)-shown:]
	}
	b.WriteString(": [")
	for i, f := range record {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(f.Type)
		if f.Channel+f.Name != "" {
			b.WriteString(":" + f.Channel + f.Name)
		}
		if f.ID != 0 {
			fmt.Fprintf(&b, "#%d", f.ID)
		}
	}
	b.WriteString("]")
	return b.String()
}
