package client_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// fakeServer speaks the protocol by hand, for what a real server does not
// show (or not deterministically): each connection runs script.
type fakeServer struct {
	hs  *httptest.Server
	url string
	wg  sync.WaitGroup
}

// fakeConn is the server side of one connection.
type fakeConn struct {
	t  testing.TB
	ws *websocket.Conn
	in chan map[string]any // frames from the client, except "ready"

	first   chan string  // the type of the client's first frame
	readies atomic.Int32 // "ready" frames received (not passed on to in)
}

func newFakeServer(t testing.TB, script func(fc *fakeConn)) *fakeServer {
	fs := &fakeServer{}
	fs.hs = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fs.wg.Add(1)
		defer fs.wg.Done()
		ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{"sss.v1"}})
		if err != nil {
			return
		}
		defer ws.CloseNow()
		fc := &fakeConn{t: t, ws: ws, in: make(chan map[string]any, 100), first: make(chan string, 1)}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			defer close(fc.in)
			for {
				_, b, err := ws.Read(ctx)
				if err != nil {
					return
				}
				for _, line := range strings.Split(string(b), "\n") {
					var f map[string]any
					if json.Unmarshal([]byte(line), &f) != nil {
						continue
					}
					typ, _ := f["type"].(string)
					select {
					case fc.first <- typ:
					default:
					}
					if typ == "ready" {
						fc.readies.Add(1)
						continue
					}
					fc.in <- f
				}
			}
		}()
		script(fc)
	}))
	fs.url = wsURL(fs.hs.URL)
	t.Cleanup(func() {
		fs.hs.CloseClientConnections()
		fs.hs.Close()
		fs.wg.Wait()
	})
	return fs
}

func (fc *fakeConn) send(frames ...string) {
	if err := fc.ws.Write(context.Background(), websocket.MessageText, []byte(strings.Join(frames, "\n"))); err != nil {
		fc.t.Errorf("fake server write: %v", err)
	}
}

func (fc *fakeConn) welcome(concurrency int) {
	fc.send(`{"type":"welcome","version":1,"conn":"n1.a","session":"s1","user":"",` +
		`"channels":{"session":"$s.s1"},"ping":25000,"pong":10000,` +
		`"limits":{"maxMessage":65536,"maxSubscriptions":256,"concurrency":` + itoa(concurrency) + `}}`)
}

// firstFrame returns the type of the client's first frame, or "" if none
// comes soon. It may be called once.
func (fc *fakeConn) firstFrame(wait time.Duration) string {
	select {
	case typ := <-fc.first:
		return typ
	case <-time.After(wait):
		return ""
	}
}

// next returns the next frame from the client other than "ready", or nil
// if none comes soon.
func (fc *fakeConn) next(wait time.Duration) map[string]any {
	select {
	case f := <-fc.in:
		return f
	case <-time.After(wait):
		return nil
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func id(f map[string]any) string {
	b, _ := json.Marshal(f["id"])
	return string(b)
}
