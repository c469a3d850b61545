package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/client"
)

// The client never has more asks and tells in flight than welcome's
// limits.concurrency.
func TestConcurrencySemaphore(t *testing.T) {
	done := make(chan struct{})
	fs := newFakeServer(t, func(fc *fakeConn) {
		fc.welcome(2)
		var held []map[string]any
		for arrived, answered := 0, 0; answered < 5; answered++ {
			for len(held) < 2 && arrived < 5 {
				f := fc.next(5 * time.Second)
				if f == nil {
					t.Errorf("no ask arrived (%d held, %d answered)", len(held), answered)
					return
				}
				held = append(held, f)
				arrived++
			}
			if arrived < 5 {
				// Both slots are taken: nothing more may come.
				if f := fc.next(50 * time.Millisecond); f != nil {
					t.Errorf("third request in flight: %v", f)
					return
				}
			}
			fc.send(`{"type":"ack","id":` + id(held[0]) + `,"result":1}`)
			held = held[1:]
		}
		<-done
	})
	c := dial(t, fs.url)
	defer close(done)
	var wg sync.WaitGroup
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var n int
			if err := c.Ask(ctxT(t), "x", nil, &n); err != nil || n != 1 {
				t.Errorf("Ask: %d %v", n, err)
			}
		}()
	}
	wg.Wait()
}

// Frames may be batched; pings get pongs; unknown frame types and errors
// about no request do not break the link.
func TestBatchesPingAndStrayErrors(t *testing.T) {
	errs := make(chan error, 4)
	fs := newFakeServer(t, func(fc *fakeConn) {
		fc.send(`{"type":"welcome","version":1,"conn":"n1.a","session":"s1","channels":{"session":"$s.s1"},"ping":25000,"pong":10000,"limits":{"maxMessage":65536,"maxSubscriptions":256,"concurrency":4}}`,
			``,
			`{"type":"ping"}`,
			`{"type":"future","x":1}`,
			`{"type":"error","error":{"code":"bad_request","message":"invalid JSON"}}`)
		// The pong and the test's ask may come in either order.
		var f map[string]any
		pong := false
		for i := 0; i < 2; i++ {
			g := fc.next(5 * time.Second)
			switch {
			case g != nil && g["type"] == "pong":
				pong = true
			case g != nil && g["type"] == "ask":
				f = g
			default:
				t.Errorf("got %v, want a pong and an ask", g)
			}
		}
		if !pong || f == nil {
			t.Errorf("pong %v, ask %v", pong, f)
			return
		}
		fc.send(`{"type":"ack","id":`+id(f)+`,"result":"ok","later":"field"}`, `{"type":"ack","id":999}`)
		fc.next(5 * time.Second) // until the client closes
	})
	c := dial(t, fs.url, client.WithHooks(client.Hooks{OnError: func(err error) { errs <- err }}))
	if err := recv(t, errs); !errors.Is(err, client.ErrBadRequest) {
		t.Fatalf("OnError got %v", err)
	}
	var s string
	if err := c.Ask(ctxT(t), "x", nil, &s); err != nil || s != "ok" {
		t.Fatalf("Ask: %q %v", s, err)
	}
}

// A subscription whose caller gave up before the ack is withdrawn from the
// server, since nobody holds it.
func TestAbandonedSubscribe(t *testing.T) {
	unsub := make(chan string, 1)
	fs := newFakeServer(t, func(fc *fakeConn) {
		fc.welcome(4)
		f := fc.next(5 * time.Second)
		if f == nil || f["type"] != "subscribe" {
			t.Errorf("got %v", f)
			return
		}
		time.Sleep(100 * time.Millisecond) // past the caller's deadline
		fc.send(`{"type":"ack","id":` + id(f) + `,"result":{"channel":"news"}}`)
		if f := fc.next(5 * time.Second); f != nil && f["type"] == "unsubscribe" {
			unsub <- f["channel"].(string)
		}
		fc.next(5 * time.Second)
	})
	c := dial(t, fs.url)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := c.Subscribe(ctx, "news"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Subscribe: %v", err)
	}
	if ch := recv(t, unsub); ch != "news" {
		t.Fatalf("unsubscribed %q", ch)
	}
}

// A server that accepts the WebSocket without selecting sss.v1 is not an
// sss server: Dial fails with ErrProtocol.
func TestWrongSubprotocol(t *testing.T) {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		ws.Read(r.Context())
		ws.CloseNow()
	}))
	defer hs.Close()
	_, err := client.Dial(ctxT(t), wsURL(hs.URL))
	if !errors.Is(err, client.ErrProtocol) {
		t.Fatalf("err %v", err)
	}
}

// A server that never welcomes: the dial timeout bounds the attempt.
func TestDialTimeout(t *testing.T) {
	fs := newFakeServer(t, func(fc *fakeConn) { fc.next(5 * time.Second) })
	start := time.Now()
	_, err := client.Dial(ctxT(t), fs.url, client.WithDialTimeout(100*time.Millisecond))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Dial took %v", d)
	}
}

// A first frame other than welcome is a protocol violation.
func TestNoWelcome(t *testing.T) {
	fs := newFakeServer(t, func(fc *fakeConn) {
		fc.send(`{"type":"ping"}`)
		fc.next(5 * time.Second)
	})
	_, err := client.Dial(ctxT(t), fs.url)
	if !errors.Is(err, client.ErrProtocol) || err.Error() != `sss: protocol violation: first frame is "ping", not welcome` {
		t.Fatalf("err %v", err)
	}
}

// Cookies, headers and a custom HTTP client reach the session parser.
func TestHandshakeOptions(t *testing.T) {
	got := make(chan string, 1)
	ts := newServer(t, nil, sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
		ck, err := r.Cookie("session")
		if err != nil {
			return nil, sss.ErrUnauthorized
		}
		got <- ck.Value + " " + r.Header.Get("X-App") + " " + r.Header.Get("X-Transport")
		return &sss.Session{UserID: "u"}, nil
	}))
	hc := &http.Client{Transport: headerTransport{}}
	dial(t, ts.url,
		client.WithCookies(&http.Cookie{Name: "session", Value: "abc"}),
		client.WithHeader(http.Header{"X-App": {"demo"}}),
		client.WithHTTPClient(hc))
	if s := recv(t, got); s != "abc demo yes" {
		t.Fatalf("session parser saw %q", s)
	}
}

type headerTransport struct{}

func (headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("X-Transport", "yes")
	return http.DefaultTransport.RoundTrip(r)
}

// A panicking handler is reported and the client goes on.
func TestHandlerPanic(t *testing.T) {
	ts := newServer(t, nil)
	errs := make(chan error, 4)
	c := dial(t, ts.url, client.WithHooks(client.Hooks{OnError: func(err error) { errs <- err }}))
	got := make(chan string, 4)
	if _, err := c.Subscribe(ctxT(t), "x", client.WithMessageHandler(func(m client.Message) {
		if m.Event == "boom" {
			panic("handler bug")
		}
		got <- m.Event
	})); err != nil {
		t.Fatal(err)
	}
	ts.srv.Publish(ctxT(t), "x", "boom", nil)
	ts.srv.Publish(ctxT(t), "x", "fine", nil)
	if err := recv(t, errs); !strings.Contains(err.Error(), "handler bug") {
		t.Fatalf("OnError %v", err)
	}
	if s := recv(t, got); s != "fine" {
		t.Fatalf("got %q", s)
	}
}

// A subscribe cut by a drop is sent again on the next link, after that
// link's resume, which lists exactly the subscriptions held (here: none, in
// an authoritative empty list).
func TestSubscribeAcrossDrop(t *testing.T) {
	var mu sync.Mutex
	conns := 0
	resumes := make(chan string, 1)
	fs := newFakeServer(t, func(fc *fakeConn) {
		mu.Lock()
		conns++
		n := conns
		mu.Unlock()
		fc.welcome(4)
		if n == 1 {
			if f := fc.next(5 * time.Second); f == nil || f["type"] != "subscribe" {
				t.Errorf("got %v", f)
			}
			return // drop without an answer
		}
		f := fc.next(5 * time.Second)
		if f == nil || f["type"] != "resume" {
			t.Errorf("first frame on the new link %v, want resume", f)
			return
		}
		b, _ := json.Marshal(f["subscriptions"])
		resumes <- string(b)
		fc.send(`{"type":"ack","id":` + id(f) + `,"result":{"subscriptions":[]}}`)
		f = fc.next(5 * time.Second)
		if f == nil || f["type"] != "subscribe" || f["channel"] != "news" {
			t.Errorf("got %v, want the subscribe again", f)
			return
		}
		fc.send(`{"type":"ack","id":`+id(f)+`,"result":{"channel":"news"}}`,
			`{"type":"pub","channel":"news","sub":"news","event":"e","data":1}`)
		fc.next(5 * time.Second)
	})
	c := dial(t, fs.url, fastRetry)
	on, msgs := messages()
	if _, err := c.Subscribe(ctxT(t), "news", client.WithMessageHandler(on)); err != nil {
		t.Fatal(err)
	}
	if s := recv(t, resumes); s != "[]" {
		t.Fatalf("resume subscriptions %s, want []", s)
	}
	if m := recv(t, msgs); m.Event != "e" {
		t.Fatalf("got %+v", m)
	}
}

// The resume request carries each subscription's channel and query; one
// missing from the reply counts as refused.
func TestResumeFrame(t *testing.T) {
	var mu sync.Mutex
	conns := 0
	resumes := make(chan string, 1)
	fs := newFakeServer(t, func(fc *fakeConn) {
		mu.Lock()
		conns++
		n := conns
		mu.Unlock()
		fc.welcome(4)
		if n == 1 {
			for range 2 {
				f := fc.next(5 * time.Second)
				if f == nil {
					return
				}
				fc.send(`{"type":"ack","id":` + id(f) + `,"result":{"channel":"x"}}`)
			}
			fc.next(50 * time.Millisecond)
			return // drop
		}
		f := fc.next(5 * time.Second)
		b, _ := json.Marshal(f["subscriptions"])
		resumes <- string(b)
		fc.send(`{"type":"ack","id":` + id(f) + `,"result":{"subscriptions":[{"channel":"a"}]}}`)
		fc.next(5 * time.Second)
	})
	ev := newEvents()
	c := dial(t, fs.url, fastRetry, hooks(watch(ev)))
	a, err := c.Subscribe(ctxT(t), "a", client.WithQuery(map[string]any{"pw": "s3cret"}))
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Subscribe(ctxT(t), "b")
	if err != nil {
		t.Fatal(err)
	}
	if s := recv(t, resumes); s != `[{"channel":"a","query":{"pw":"s3cret"}},{"channel":"b"}]` {
		t.Fatalf("resume subscriptions %s", s)
	}
	ev.waitEvent(t, "reconnect")
	if a.Status() != client.SubSubscribed || b.Status() != client.SubRefused || !errors.Is(b.Err(), client.ErrInternal) {
		t.Fatalf("a %v, b %v %v", a.Status(), b.Status(), b.Err())
	}
}

// A link with nothing to resume (Dial's) starts with "ready", so that the
// server ends the hold of the user and session channels at once; a link
// that resumes starts with "resume" and sends no "ready".
func TestReadyOrResumeFirst(t *testing.T) {
	var mu sync.Mutex
	conns := 0
	firsts := make(chan string, 2)
	drop := make(chan struct{})
	fs := newFakeServer(t, func(fc *fakeConn) {
		mu.Lock()
		conns++
		n := conns
		mu.Unlock()
		fc.welcome(4)
		firsts <- fc.firstFrame(5 * time.Second)
		if n == 1 {
			select {
			case <-drop:
			case <-time.After(10 * time.Second):
			}
			return
		}
		f := fc.next(5 * time.Second)
		if f == nil || f["type"] != "resume" {
			t.Errorf("got %v, want the resume", f)
			return
		}
		fc.send(`{"type":"ack","id":` + id(f) + `,"result":{"subscriptions":[]}}`)
		f = fc.next(5 * time.Second)
		if f == nil || f["type"] != "tell" {
			t.Errorf("got %v, want the tell", f)
			return
		}
		// Frames are read in order: a ready sent before the tell is counted.
		if n := fc.readies.Load(); n != 0 {
			t.Errorf("%d ready frames on a link that resumes", n)
		}
		fc.send(`{"type":"ack","id":` + id(f) + `}`)
		fc.next(5 * time.Second)
	})
	ev := newEvents()
	c := dial(t, fs.url, fastRetry, hooks(watch(ev)))
	if typ := recv(t, firsts); typ != "ready" {
		t.Fatalf("first frame of Dial's link %q, want ready", typ)
	}
	close(drop)
	if typ := recv(t, firsts); typ != "resume" {
		t.Fatalf("first frame of the reconnected link %q, want resume", typ)
	}
	ev.waitEvent(t, "reconnect")
	if err := c.Tell(ctxT(t), "x", nil); err != nil {
		t.Fatal(err)
	}
}

// Asks and tells refused with rate_limited are sent again, up to
// WithRateLimitRetries times (default 8; 0: never); the error after the
// last refusal matches ErrRateLimited. Publications are not retried.
func TestRateLimitRetries(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opts  []client.Option
		sends int32 // per ask or tell
	}{
		{"default", nil, 9},
		{"off", []client.Option{client.WithRateLimitRetries(0)}, 1},
		{"two", []client.Option{client.WithRateLimitRetries(2)}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			sent := map[string]int32{}
			fs := newFakeServer(t, func(fc *fakeConn) {
				fc.welcome(4)
				for {
					f := fc.next(5 * time.Second)
					if f == nil {
						return
					}
					mu.Lock()
					sent[f["type"].(string)]++
					mu.Unlock()
					fc.send(`{"type":"error","id":` + id(f) + `,"error":{"code":"rate_limited","message":"slow down"}}`)
				}
			})
			c := dial(t, fs.url, tc.opts...)
			if err := c.Ask(ctxT(t), "x", nil, nil); !errors.Is(err, client.ErrRateLimited) {
				t.Fatalf("Ask: %v", err)
			}
			if err := c.Tell(ctxT(t), "x", nil); !errors.Is(err, client.ErrRateLimited) {
				t.Fatalf("Tell: %v", err)
			}
			if err := c.Publish(ctxT(t), "x", "", nil); !errors.Is(err, client.ErrRateLimited) {
				t.Fatalf("Publish: %v", err)
			}
			mu.Lock()
			defer mu.Unlock()
			if sent["ask"] != tc.sends || sent["tell"] != tc.sends || sent["publish"] != 1 {
				t.Fatalf("sent %v, want %d asks and tells, 1 publish", sent, tc.sends)
			}
		})
	}
}

// Handlers given to Dial see what the server sends right after its
// welcome, and hooks the first status change: nothing is missed between
// Dial and a later registration.
func TestHandlersFromTheStart(t *testing.T) {
	replies := make(chan string, 1)
	fs := newFakeServer(t, func(fc *fakeConn) {
		// The welcome, a tell and an ask in one message: the client reads
		// them before Dial returns.
		fc.send(`{"type":"welcome","version":1,"conn":"n1.a","session":"s1","channels":{"session":"$s.s1"},"ping":25000,"pong":10000,"limits":{"maxMessage":65536,"maxSubscriptions":256,"concurrency":4}}`,
			`{"type":"tell","name":"hello","data":"early"}`,
			`{"type":"ask","id":1,"name":"who","data":null}`)
		for {
			f := fc.next(5 * time.Second)
			if f == nil {
				return
			}
			if f["type"] == "reply" {
				b, _ := json.Marshal(f["result"])
				replies <- string(b)
			}
		}
	})
	tells := make(chan string, 1)
	var seen statusLog
	dial(t, fs.url,
		client.WithTellHandler("hello", func(ctx context.Context, data json.RawMessage) error {
			tells <- string(data)
			return nil
		}),
		client.WithAskHandler("who", func(ctx context.Context, data json.RawMessage) (any, error) { return "me", nil }),
		client.WithHooks(client.Hooks{OnStatusChange: seen.record}))
	if s := recv(t, tells); s != `"early"` {
		t.Fatalf("tell %s", s)
	}
	if s := recv(t, replies); s != `"me"` {
		t.Fatalf("reply %s", s)
	}
	if got := seen.get(); len(got) == 0 || got[0] != client.StatusConnected {
		t.Fatalf("status changes %v", got)
	}
}
