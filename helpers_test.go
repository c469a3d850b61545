package sss_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/scaler/memory"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Until the Go client is used here, tests speak the documented protocol over
// raw WebSocket connections with this small helper.

// frame is a decoded server frame.
type frame struct {
	Type     string          `json:"type"`
	ID       uint64          `json:"id"`
	Channel  string          `json:"channel"`
	Sub      string          `json:"sub"`
	Event    string          `json:"event"`
	Name     string          `json:"name"`
	Data     json.RawMessage `json:"data"`
	Result   json.RawMessage `json:"result"`
	From     *sss.Sender     `json:"from"`
	Offset   uint64          `json:"offset"`
	Epoch    string          `json:"epoch"`
	Conn     string          `json:"conn"`
	Session  string          `json:"session"`
	User     string          `json:"user"`
	Channels struct {
		User    string `json:"user"`
		Session string `json:"session"`
	} `json:"channels"`
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

type wsClient struct {
	t       testing.TB
	c       *websocket.Conn
	frames  chan frame // filled by the reader goroutine
	closed  chan struct{}
	status  websocket.StatusCode // close status, valid once closed is closed
	pending []frame
	welcome frame
}

// cluster is n servers sharing one memory scaler, each behind httptest.
type cluster struct {
	t       testing.TB
	servers []*sss.Server
	https   []*httptest.Server
}

func newCluster(t testing.TB, n int, opts ...sss.Option) *cluster {
	t.Helper()
	m := newMemory(t)
	cl := &cluster{t: t}
	for i := 0; i < n; i++ {
		srv, err := sss.New(append([]sss.Option{sss.WithScaler(m)}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		ts := httptest.NewServer(srv)
		cl.servers = append(cl.servers, srv)
		cl.https = append(cl.https, ts)
	}
	t.Cleanup(func() {
		for i := range cl.servers {
			cl.servers[i].Close()
			cl.https[i].Close()
		}
		m.Close()
	})
	return cl
}

func (cl *cluster) url(i int) string { return "ws" + strings.TrimPrefix(cl.https[i].URL, "http") }

func (cl *cluster) dial(i int, header http.Header) *wsClient {
	cl.t.Helper()
	return dialWS(cl.t, cl.url(i), header)
}

func dialWS(t testing.TB, url string, header http.Header) *wsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{sss.Subprotocol}, HTTPHeader: header})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	c.SetReadLimit(1 << 20)
	w := &wsClient{t: t, c: c, frames: make(chan frame, 100000), closed: make(chan struct{})}
	// coder/websocket closes the connection when a read's context ends, so
	// one goroutine reads for the whole life of the connection.
	go w.readLoop()
	t.Cleanup(func() {
		c.CloseNow()
		<-w.closed
	})
	w.welcome = w.expect("welcome")
	return w
}

func (w *wsClient) readLoop() {
	defer close(w.closed)
	for {
		typ, msg, err := w.c.Read(context.Background())
		if err != nil {
			w.status = websocket.CloseStatus(err)
			return
		}
		if typ != websocket.MessageText {
			w.t.Errorf("server sent a binary message")
			continue
		}
		for _, line := range bytes.Split(msg, []byte("\n")) {
			var f frame
			if err := json.Unmarshal(line, &f); err != nil {
				w.t.Errorf("server sent invalid JSON %q: %v", line, err)
				continue
			}
			select {
			case w.frames <- f:
			default:
				w.t.Errorf("test client buffer full")
			}
		}
	}
}

func (w *wsClient) sendRaw(s string) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.c.Write(ctx, websocket.MessageText, []byte(s)); err != nil {
		w.t.Fatalf("write: %v", err)
	}
}

func (w *wsClient) send(v any) {
	w.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		w.t.Fatal(err)
	}
	w.sendRaw(string(b))
}

// next returns the next frame, or ok=false after d without one.
func (w *wsClient) next(d time.Duration) (frame, bool) {
	w.t.Helper()
	if len(w.pending) > 0 {
		f := w.pending[0]
		w.pending = w.pending[1:]
		return f, true
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case f := <-w.frames:
		return f, true
	case <-timer.C:
		return frame{}, false
	case <-w.closed:
		select { // what was read before the close comes first
		case f := <-w.frames:
			return f, true
		default:
			return frame{}, false
		}
	}
}

// expect returns the next frame that is not a ping and checks its type.
func (w *wsClient) expect(typ string) frame {
	w.t.Helper()
	for {
		f, ok := w.next(5 * time.Second)
		if !ok {
			w.t.Fatalf("no %q frame", typ)
		}
		if f.Type == "ping" {
			continue
		}
		if f.Type != typ {
			w.t.Fatalf("got frame %+v, want type %q", f, typ)
		}
		return f
	}
}

// nothing asserts that no frame (but pings) arrives for d.
func (w *wsClient) nothing(d time.Duration) {
	w.t.Helper()
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return
		}
		f, ok := w.next(left)
		if !ok {
			return
		}
		if f.Type != "ping" {
			w.t.Fatalf("unexpected frame %+v", f)
		}
	}
}

var nextID atomic.Uint64

// request sends a request frame with a fresh id and returns its reply;
// other frames that arrive meanwhile are kept for later expectations.
func (w *wsClient) request(v map[string]any) frame {
	w.t.Helper()
	id := nextID.Add(1)
	v["id"] = id
	w.send(v)
	return w.request2(id)
}

// request2 reads until the reply with id arrives, keeping other frames.
func (w *wsClient) request2(id uint64) frame {
	w.t.Helper()
	var kept []frame
	defer func() { w.pending = append(kept, w.pending...) }()
	for {
		f, ok := w.next(5 * time.Second)
		if !ok {
			w.t.Fatalf("no reply to request %d", id)
		}
		if (f.Type == "ack" || f.Type == "error") && f.ID == id {
			return f
		}
		if f.Type != "ping" {
			kept = append(kept, f)
		}
	}
}

func (w *wsClient) ok(v map[string]any) frame {
	w.t.Helper()
	f := w.request(v)
	if f.Type != "ack" {
		w.t.Fatalf("%v: got %+v, want ack", v, f.Error)
	}
	return f
}

func (w *wsClient) fails(v map[string]any, code string) frame {
	w.t.Helper()
	f := w.request(v)
	if f.Type != "error" || f.Error == nil || f.Error.Code != code {
		w.t.Fatalf("%v: got %+v (%+v), want error %q", v, f, f.Error, code)
	}
	return f
}

func (w *wsClient) subscribe(ch string) {
	w.t.Helper()
	w.ok(map[string]any{"type": "subscribe", "channel": ch})
}

// closeStatus waits for the server to close the connection and returns the
// close code.
func (w *wsClient) closeStatus() sss.CloseCode {
	w.t.Helper()
	select {
	case <-w.closed:
		return sss.CloseCode(w.status)
	case <-time.After(10 * time.Second):
		w.t.Fatal("connection not closed")
		return 0
	}
}

// eventually polls cond until it holds or 5s pass.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func newMemory(t testing.TB, opts ...memory.Option) *memory.Scaler {
	t.Helper()
	m, err := memory.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
