package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/client"
)

func TestDialWelcome(t *testing.T) {
	ts := newServer(t, nil, sss.WithSessionParser(userSession), sss.WithConcurrency(7))
	c := dial(t, ts.url, asUser("alice"), client.WithHeader(http.Header{"X-Session": {"s1"}}))
	info := c.Conn()
	if info.ID == "" || c.ID() != info.ID {
		t.Fatalf("conn id %q, ID() %q", info.ID, c.ID())
	}
	if info.User != "alice" || info.Session != "s1" {
		t.Fatalf("user %q session %q", info.User, info.Session)
	}
	if info.UserChannel != sss.UserChannel("alice") || info.SessionChannel != sss.SessionChannel("alice", "s1") {
		t.Fatalf("channels %q %q", info.UserChannel, info.SessionChannel)
	}
	if info.Limits.Concurrency != 7 || info.Limits.MaxMessage <= 0 || info.Ping <= 0 || info.Pong <= 0 {
		t.Fatalf("welcome %+v", info)
	}
	if c.Status() != client.StatusConnected {
		t.Fatalf("status %v", c.Status())
	}
}

func TestDialRefused(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
		is     error
	}{
		{sss.ErrUnauthorized, http.StatusUnauthorized, client.ErrUnauthorized},
		{sss.ErrForbidden, http.StatusForbidden, client.ErrForbidden},
	} {
		ts := newServer(t, nil, sss.WithSessionParser(func(*http.Request) (*sss.Session, error) { return nil, tc.err }))
		var seen statusLog
		c, err := client.Dial(ctxT(t), ts.url, client.WithHooks(client.Hooks{OnStatusChange: seen.record}))
		if c != nil {
			t.Fatal("Dial returned a client")
		}
		var he *client.HandshakeError
		if !errors.As(err, &he) || he.StatusCode != tc.status {
			t.Fatalf("err %v, want HandshakeError %d", err, tc.status)
		}
		if !errors.Is(err, tc.is) {
			t.Fatalf("errors.Is(%v, %v) false", err, tc.is)
		}
		if got := seen.get(); len(got) != 1 || got[0] != client.StatusClosed {
			t.Fatalf("status changes %v", got)
		}
	}
}

func TestDialNoServer(t *testing.T) {
	ts := newServer(t, nil)
	url := ts.url
	ts.hs.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := client.Dial(ctx, url); err == nil {
		t.Fatal("Dial to a closed server succeeded")
	}
}

func TestAsk(t *testing.T) {
	ts := newServer(t, nil)
	ts.srv.HandleAsk("echo", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		return data, nil
	})
	ts.srv.HandleAsk("deny", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		return nil, sss.Errorf(sss.CodeForbidden, "not you")
	})
	ts.srv.HandleAsk("custom", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		return nil, &sss.Error{Code: "teapot", Message: "short and stout"}
	})
	ts.srv.HandleAsk("boom", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		panic("boom")
	})
	c := dial(t, ts.url)
	ctx := ctxT(t)

	var out map[string]int
	if err := c.Ask(ctx, "echo", map[string]int{"a": 1}, &out); err != nil || out["a"] != 1 {
		t.Fatalf("echo: %v %v", out, err)
	}
	if err := c.Ask(ctx, "echo", "ignored", nil); err != nil {
		t.Fatalf("echo with nil resp: %v", err)
	}

	err := c.Ask(ctx, "nope", nil, nil)
	var e *client.Error
	if !errors.Is(err, client.ErrNotFound) || !errors.As(err, &e) || e.Code != client.CodeNotFound || e.Message == "" {
		t.Fatalf("nope: %v", err)
	}
	if err := c.Ask(ctx, "deny", nil, nil); !errors.Is(err, client.ErrForbidden) || !strings.Contains(err.Error(), "not you") {
		t.Fatalf("deny: %v", err)
	}
	// Unknown codes are treated like internal, and kept as they are.
	if err := c.Ask(ctx, "custom", nil, nil); !errors.Is(err, client.ErrInternal) || !errors.As(err, &e) || e.Code != "teapot" {
		t.Fatalf("custom: %v", err)
	}
	err = c.Ask(ctx, "boom", nil, nil)
	if !errors.Is(err, client.ErrInternal) {
		t.Fatalf("boom: %v", err)
	}
	if errors.Is(err, client.ErrNotFound) {
		t.Fatal("internal matches not_found")
	}
}

func TestAskTimeout(t *testing.T) {
	release := make(chan struct{})
	ts := newServer(t, nil, sss.WithAskTimeout(2*time.Second))
	ts.srv.HandleAsk("block", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil, ctx.Err()
	})
	defer close(release)
	c := dial(t, ts.url)

	// The caller's deadline bounds the wait.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := c.Ask(ctx, "block", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want DeadlineExceeded", err)
	}
	// Well before the server's 2s: a loaded machine has room.
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Fatalf("Ask returned after %v", d)
	}
	// The server's ask timeout is the timeout code.
	if err := c.Ask(ctxT(t), "block", nil, nil); !errors.Is(err, client.ErrTimeout) {
		t.Fatalf("err %v, want ErrTimeout", err)
	}
}

func TestTell(t *testing.T) {
	got := make(chan string, 1)
	ts := newServer(t, nil, sss.WithSessionParser(userSession))
	ts.srv.HandleTell("liked", func(ctx context.Context, c *sss.Conn, data json.RawMessage) error {
		got <- c.UserID() + " " + string(data)
		return nil
	})
	c := dial(t, ts.url, asUser("bob"))
	if err := c.Tell(ctxT(t), "liked", map[string]int{"post": 42}); err != nil {
		t.Fatal(err)
	}
	if s := recv(t, got); s != `bob {"post":42}` {
		t.Fatalf("got %q", s)
	}
	if err := c.Tell(ctxT(t), "nope", nil); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("err %v", err)
	}
}

func TestSubscribePublish(t *testing.T) {
	var queries sync.Map
	ts := newServer(t, nil,
		sss.WithSessionParser(userSession),
		sss.WithSubscriptionParser(func(ctx context.Context, c *sss.Conn, channel string, query json.RawMessage) error {
			queries.Store(channel, string(query))
			if channel == "private" && string(query) != `{"password":"s3cret"}` {
				return sss.Errorf(sss.CodeForbidden, "wrong password")
			}
			return nil
		}),
		sss.WithPublishParser(func(ctx context.Context, c *sss.Conn, channel, event string, data json.RawMessage) error {
			if strings.HasPrefix(channel, "chat") {
				return nil
			}
			return sss.ErrForbidden
		}),
	)
	c := dial(t, ts.url, asUser("alice"))
	ctx := ctxT(t)

	onArticle, articles := messages()
	onOther, others := messages()
	news, err := c.Subscribe(ctx, "news", client.WithEventHandler("article", onArticle), client.WithMessageHandler(onOther))
	if err != nil {
		t.Fatal(err)
	}
	if news.Status() != client.SubSubscribed || news.Channel() != "news" {
		t.Fatalf("status %v", news.Status())
	}
	if err := ts.srv.Publish(ctx, "news.uk", "article", map[string]string{"title": "Hello"}); err != nil {
		t.Fatal(err)
	}
	if err := ts.srv.Publish(ctx, "news", "other", 1); err != nil {
		t.Fatal(err)
	}
	m := recv(t, articles)
	var art struct{ Title string }
	if err := m.Decode(&art); err != nil || art.Title != "Hello" || m.Channel != "news.uk" || m.Sub != "news" || m.Event != "article" || m.From != (client.Sender{}) {
		t.Fatalf("message %+v %v", m, err)
	}
	if m := recv(t, others); m.Event != "other" || string(m.Data) != "1" {
		t.Fatalf("catch-all got %+v", m)
	}

	// Queries reach the subscription parser; refusals are errors.
	if _, err := c.Subscribe(ctx, "private", client.WithQuery(map[string]string{"password": "nope"})); !errors.Is(err, client.ErrForbidden) {
		t.Fatalf("private: %v", err)
	}
	priv, err := c.Subscribe(ctx, "private", client.WithQuery(map[string]string{"password": "s3cret"}))
	if err != nil {
		t.Fatal(err)
	}
	if string(priv.Query()) != `{"password":"s3cret"}` {
		t.Fatalf("query %s", priv.Query())
	}
	if _, err := c.Subscribe(ctx, "private"); !errors.Is(err, client.ErrConflict) {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := c.Subscribe(ctx, "$u.bob"); !errors.Is(err, client.ErrForbidden) {
		t.Fatalf("reserved: %v", err)
	}
	if _, err := c.Subscribe(ctx, "bad..name"); !errors.Is(err, client.ErrBadRequest) {
		t.Fatalf("invalid: %v", err)
	}

	// Client publish, stamped by the server; order is kept.
	onChat, chat := messages()
	if _, err := c.Subscribe(ctx, "chat.room1", client.WithMessageHandler(onChat)); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if err := c.Publish(ctx, "chat.room1", "message", i); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 50 {
		m := recv(t, chat)
		var n int
		if m.Decode(&n); n != i || m.From.User != "alice" || m.From.Conn != c.ID() || time.Since(m.Time) > time.Minute {
			t.Fatalf("message %d: %+v", i, m)
		}
	}
	// Everyone but me: the publisher's own connection does not get it.
	if err := c.Publish(ctx, "chat.room1", "message", "quiet", client.ExceptSelf()); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx, "chat.room1", "message", "loud"); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, chat); string(m.Data) != `"loud"` {
		t.Fatalf("got %s, want only the publication without ExceptSelf", m.Data)
	}
	if err := c.Publish(ctx, "news", "x", nil); !errors.Is(err, client.ErrForbidden) {
		t.Fatalf("publish to news: %v", err)
	}

	// After Unsubscribe nothing more arrives for it.
	if err := news.Unsubscribe(ctx); err != nil {
		t.Fatal(err)
	}
	if news.Status() != client.SubUnsubscribed {
		t.Fatalf("status %v", news.Status())
	}
	if err := news.Unsubscribe(ctx); err != nil {
		t.Fatalf("second Unsubscribe: %v", err)
	}
	ts.srv.Publish(ctx, "news", "article", "late")
	ts.srv.Publish(ctx, "chat.room1", "marker", nil)
	if m := recv(t, chat); m.Event != "marker" {
		t.Fatalf("got %+v", m)
	}
	select {
	case m := <-articles:
		t.Fatalf("message after Unsubscribe: %+v", m)
	case m := <-others:
		t.Fatalf("message after Unsubscribe: %+v", m)
	default:
	}
}

// The handlers of a subscription change after Subscribe with HandleEvent
// and HandleMessage; nil removes them.
func TestSubscriptionHandlers(t *testing.T) {
	ts := newServer(t, nil)
	c := dial(t, ts.url)
	ctx := ctxT(t)
	s, err := c.Subscribe(ctx, "ticks")
	if err != nil {
		t.Fatal(err)
	}
	onA, as := messages()
	onAny, anys := messages()
	s.HandleEvent("a", onA)
	s.HandleMessage(onAny)
	ts.srv.Publish(ctx, "ticks", "a", 1)
	ts.srv.Publish(ctx, "ticks", "b", 2)
	if m := recv(t, as); string(m.Data) != "1" {
		t.Fatalf("a got %+v", m)
	}
	if m := recv(t, anys); m.Event != "b" {
		t.Fatalf("any got %+v", m)
	}
	// Without its own handler, an event goes to the catch-all.
	s.HandleEvent("a", nil)
	ts.srv.Publish(ctx, "ticks", "a", 3)
	if m := recv(t, anys); m.Event != "a" || string(m.Data) != "3" {
		t.Fatalf("any got %+v", m)
	}
	// Without either, nothing is delivered: the next one is the marker.
	s.HandleMessage(nil)
	ts.srv.Publish(ctx, "ticks", "a", 4)
	s.HandleEvent("marker", onA)
	ts.srv.Publish(ctx, "ticks", "marker", 5)
	if m := recv(t, as); m.Event != "marker" {
		t.Fatalf("a got %+v", m)
	}
	select {
	case m := <-anys:
		t.Fatalf("removed catch-all got %+v", m)
	default:
	}
}

func TestUserAndSessionChannels(t *testing.T) {
	ts := newServer(t, nil, sss.WithSessionParser(userSession))
	onUser, user := messages()
	onSession, session := messages()
	c := dial(t, ts.url, asUser("carol"), client.WithHeader(http.Header{"X-Session": {"tab1"}}),
		client.WithHooks(client.Hooks{OnUserMessage: onUser, OnSessionMessage: onSession}))
	ctx := ctxT(t)
	if err := ts.srv.PublishUser(ctx, "carol", "hello", "u"); err != nil {
		t.Fatal(err)
	}
	if err := ts.srv.PublishSession(ctx, "carol", "tab1", "hello", "s"); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, user); string(m.Data) != `"u"` || m.Sub != c.Conn().UserChannel {
		t.Fatalf("user message %+v", m)
	}
	if m := recv(t, session); string(m.Data) != `"s"` || m.Sub != c.Conn().SessionChannel {
		t.Fatalf("session message %+v", m)
	}
}

// serverHold is how long an sss server holds the user and session
// channels of a new connection that says nothing (docs/protocol.md, "The
// hold of the user and session channels").
const serverHold = time.Second

// A client that sends nothing after Dial gets its user and session
// channels' publications at once: its "ready" ends the server's hold.
func TestNoHoldAfterDial(t *testing.T) {
	ts := newServer(t, nil, sss.WithSessionParser(userSession))
	onUser, user := messages()
	onSession, session := messages()
	c := dial(t, ts.url, asUser("ivy"), client.WithHeader(http.Header{"X-Session": {"tab9"}}),
		client.WithHooks(client.Hooks{OnUserMessage: onUser, OnSessionMessage: onSession}))
	start := time.Now()
	if err := ts.srv.PublishUser(ctxT(t), "ivy", "hello", "u"); err != nil {
		t.Fatal(err)
	}
	if err := ts.srv.PublishSession(ctxT(t), "ivy", "tab9", "hello", "s"); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, user); string(m.Data) != `"u"` || m.Sub != c.Conn().UserChannel {
		t.Fatalf("user message %+v", m)
	}
	if m := recv(t, session); string(m.Data) != `"s"` || m.Sub != c.Conn().SessionChannel {
		t.Fatalf("session message %+v", m)
	}
	// Half the hold leaves a loaded machine plenty of room, and still fails
	// a client that waits for the hold to end.
	if d := time.Since(start); d >= serverHold/2 {
		t.Fatalf("publications arrived after %v: held by the server (hold %v)", d, serverHold)
	}
}

func TestServerTellAndAsk(t *testing.T) {
	ts := newServer(t, nil, sss.WithSessionParser(userSession), sss.WithAskTimeout(2*time.Second))
	tells := make(chan string, 4)
	var errs atomic.Int32
	c := dial(t, ts.url, asUser("dave"),
		client.WithTellHandler("notify", func(ctx context.Context, data json.RawMessage) error {
			tells <- string(data)
			return nil
		}),
		client.WithAskHandler("confirm", func(ctx context.Context, data json.RawMessage) (any, error) {
			var q string
			json.Unmarshal(data, &q)
			return q == "Delete?", nil
		}),
		client.WithAskHandler("deny", func(ctx context.Context, data json.RawMessage) (any, error) {
			return nil, client.Errorf(client.CodeForbidden, "no way")
		}),
		client.WithAskHandler("fail", func(ctx context.Context, data json.RawMessage) (any, error) {
			return nil, errors.New("plain error")
		}),
		client.WithAskHandler("boom", func(ctx context.Context, data json.RawMessage) (any, error) {
			panic("client handler panic")
		}),
		client.WithHooks(client.Hooks{OnError: func(error) { errs.Add(1) }}))
	ctx := ctxT(t)

	if err := ts.srv.Tell(ctx, sss.ToUser("dave"), "notify", map[string]string{"text": "mail"}); err != nil {
		t.Fatal(err)
	}
	if s := recv(t, tells); s != `{"text":"mail"}` {
		t.Fatalf("tell %q", s)
	}

	res, err := ts.srv.Ask(ctx, sss.ToConn(c.ID()), "confirm", "Delete?")
	if err != nil || string(res) != "true" {
		t.Fatalf("confirm: %s %v", res, err)
	}
	if _, err := ts.srv.Ask(ctx, sss.ToConn(c.ID()), "nope", nil); !errors.Is(err, sss.ErrNotFound) {
		t.Fatalf("nope: %v", err)
	}
	if _, err := ts.srv.Ask(ctx, sss.ToConn(c.ID()), "deny", nil); !errors.Is(err, sss.ErrForbidden) {
		t.Fatalf("deny: %v", err)
	}
	if _, err := ts.srv.Ask(ctx, sss.ToConn(c.ID()), "fail", nil); !errors.Is(err, sss.ErrInternal) {
		t.Fatalf("fail: %v", err)
	}
	if _, err := ts.srv.Ask(ctx, sss.ToConn(c.ID()), "boom", nil); !errors.Is(err, sss.ErrInternal) {
		t.Fatalf("boom: %v", err)
	}
	// The client survived the panic.
	if res, err := ts.srv.Ask(ctx, sss.ToConn(c.ID()), "confirm", "Keep?"); err != nil || string(res) != "false" {
		t.Fatalf("confirm after panic: %s %v", res, err)
	}
	waitFor(t, "OnError for the panic", func() bool { return errs.Load() >= 1 })

	// A tell with no handler is reported, not fatal.
	if err := ts.srv.Tell(ctx, sss.ToConn(c.ID()), "unknown", nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "OnError for the unknown tell", func() bool { return errs.Load() >= 2 })

	// HandleAsk and HandleTell change the handlers given to Dial; nil
	// removes them.
	c.HandleAsk("confirm", func(ctx context.Context, data json.RawMessage) (any, error) { return "changed", nil })
	if res, err := ts.srv.Ask(ctx, sss.ToConn(c.ID()), "confirm", "Delete?"); err != nil || string(res) != `"changed"` {
		t.Fatalf("confirm after HandleAsk: %s %v", res, err)
	}
	c.HandleAsk("confirm", nil)
	if _, err := ts.srv.Ask(ctx, sss.ToConn(c.ID()), "confirm", "Delete?"); !errors.Is(err, sss.ErrNotFound) {
		t.Fatalf("confirm after HandleAsk(nil): %v", err)
	}
	c.HandleTell("notify", func(ctx context.Context, data json.RawMessage) error {
		tells <- "changed " + string(data)
		return nil
	})
	if err := ts.srv.Tell(ctx, sss.ToConn(c.ID()), "notify", 1); err != nil {
		t.Fatal(err)
	}
	if s := recv(t, tells); s != "changed 1" {
		t.Fatalf("tell after HandleTell %q", s)
	}
	c.HandleTell("notify", nil)
	if err := ts.srv.Tell(ctx, sss.ToConn(c.ID()), "notify", 2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "OnError for the removed tell handler", func() bool { return errs.Load() >= 3 })
}

// A handler may call the client (Ask needs the read loop that fed the
// handler) without deadlocking.
func TestHandlerCallsClient(t *testing.T) {
	ts := newServer(t, nil)
	ts.srv.HandleAsk("double", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		var n int
		json.Unmarshal(data, &n)
		return 2 * n, nil
	})
	c := dial(t, ts.url)
	ctx := ctxT(t)
	results := make(chan int, 100)
	_, err := c.Subscribe(ctx, "jobs", client.WithMessageHandler(func(m client.Message) {
		var n, out int
		m.Decode(&n)
		if err := c.Ask(ctx, "double", n, &out); err != nil {
			t.Errorf("Ask in handler: %v", err)
		}
		results <- out
	}))
	if err != nil {
		t.Fatal(err)
	}
	// The acks come after publications still queued for the handler.
	for i := range 20 {
		ts.srv.Publish(ctx, "jobs", "", i)
	}
	for i := range 20 {
		if got := recv(t, results); got != 2*i {
			t.Fatalf("result %d: %d", i, got)
		}
	}
}

func TestHandlerCallsClose(t *testing.T) {
	ts := newServer(t, nil)
	c := dial(t, ts.url)
	closed := make(chan error, 1)
	if _, err := c.Subscribe(ctxT(t), "bye", client.WithMessageHandler(func(client.Message) {
		closed <- c.Close()
	})); err != nil {
		t.Fatal(err)
	}
	ts.srv.Publish(ctxT(t), "bye", "", nil)
	if err := recv(t, closed); err != nil {
		t.Fatal(err)
	}
	if c.Status() != client.StatusClosed || !errors.Is(c.Err(), client.ErrClosed) {
		t.Fatalf("status %v err %v", c.Status(), c.Err())
	}
}

// The client keeps to the server's concurrency limit instead of being
// refused with rate_limited.
func TestConcurrencyLimit(t *testing.T) {
	const limit = 3
	ts := newServer(t, nil, sss.WithConcurrency(limit))
	var running, peak atomic.Int32
	ts.srv.HandleAsk("work", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(10 * time.Millisecond)
		running.Add(-1)
		return nil, nil
	})
	logs := newLogCounter()
	c := dial(t, ts.url, client.WithLogger(slog.New(logs)))
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.Ask(ctx, "work", nil, nil); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("Ask: %v", err)
	}
	if p := peak.Load(); p > limit || p < 2 {
		t.Fatalf("peak concurrency %d, limit %d", p, limit)
	}
	// The server frees a slot a moment after sending its reply, so the next
	// ask can be refused although the client kept to the limit; the client
	// retries those (see Client.do).
	t.Logf("%d asks retried after rate_limited", logs.count("sss: rate_limited, retrying"))
}

func TestTooLarge(t *testing.T) {
	ts := newServer(t, nil, sss.WithMaxMessageSize(1024))
	ts.srv.HandleTell("t", func(context.Context, *sss.Conn, json.RawMessage) error { return nil })
	c := dial(t, ts.url)
	err := c.Tell(ctxT(t), "t", strings.Repeat("x", 2000))
	if !errors.Is(err, client.ErrTooLarge) {
		t.Fatalf("err %v", err)
	}
	// The link is still fine.
	if err := c.Tell(ctxT(t), "t", "small"); err != nil {
		t.Fatal(err)
	}
}

func TestClose(t *testing.T) {
	ts := newServer(t, nil)
	var seen statusLog
	c := dial(t, ts.url, client.WithHooks(client.Hooks{OnStatusChange: seen.record}))
	s, err := c.Subscribe(ctxT(t), "x")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if c.Status() != client.StatusClosed || !errors.Is(c.Err(), client.ErrClosed) {
		t.Fatalf("status %v err %v", c.Status(), c.Err())
	}
	if s.Status() != client.SubUnsubscribed {
		t.Fatalf("subscription %v", s.Status())
	}
	if err := c.Ask(ctxT(t), "x", nil, nil); !errors.Is(err, client.ErrClosed) || err.Error() != `sss: ask "x": client closed` {
		t.Fatalf("Ask after Close: %v", err)
	}
	if err := c.Err(); err != client.ErrClosed || err.Error() != "sss: client closed" {
		t.Fatalf("Err() %v", err)
	}
	if _, err := c.Subscribe(ctxT(t), "y"); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Subscribe after Close: %v", err)
	}
	want := []client.Status{client.StatusConnected, client.StatusClosed}
	if got := seen.get(); !equal(got, want) {
		t.Fatalf("status changes %v, want %v", got, want)
	}
	// The server saw a normal closure, not a drop.
	waitFor(t, "server to see the close", func() bool { return ts.srv.Stats().Connections == 0 })
}

func equal[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// The server holds a concurrency slot while a tell's handler runs, after the
// ack: a client cannot see that, so tells to slow handlers are refused with
// rate_limited now and then, and the client sends them again.
func TestTellsToSlowHandler(t *testing.T) {
	ts := newServer(t, nil, sss.WithConcurrency(1))
	var handled atomic.Int32
	ts.srv.HandleTell("slow", func(ctx context.Context, c *sss.Conn, data json.RawMessage) error {
		time.Sleep(20 * time.Millisecond)
		handled.Add(1)
		return nil
	})
	logs := newLogCounter()
	c := dial(t, ts.url, client.WithLogger(slog.New(logs)))
	for i := range 5 {
		if err := c.Tell(ctxT(t), "slow", i); err != nil {
			t.Fatalf("tell %d: %v", i, err)
		}
	}
	waitFor(t, "the handlers", func() bool { return handled.Load() == 5 })
	t.Logf("%d tells retried after rate_limited", logs.count("sss: rate_limited, retrying"))
}

// A page's recipe: the last messages from History, then a subscription
// from the position it returned; and the server's broadcasts.
func TestHistoryAndBroadcast(t *testing.T) {
	ts := newServer(t, nil)
	ctx := ctxT(t)
	for i := 1; i <= 10; i++ {
		ts.srv.Publish(ctx, "feed", "m", i)
	}
	onBroadcast, broadcasts := messages()
	c := dial(t, ts.url, client.WithHooks(client.Hooks{OnBroadcast: onBroadcast}))
	msgs, pos, err := c.History(ctx, "feed", client.HistoryLimit(3))
	if err != nil || len(msgs) != 3 || string(msgs[0].Data) != "8" || msgs[2].Offset != 10 || pos.Offset != 10 || msgs[0].Time.IsZero() {
		t.Fatalf("History: %+v %v %v", msgs, pos, err)
	}
	ts.srv.Publish(ctx, "feed", "m", 11) // between the read and the subscription
	onFeed, feed := messages()
	if _, err := c.Subscribe(ctx, "feed", client.WithSince(pos), client.WithMessageHandler(onFeed)); err != nil {
		t.Fatal(err)
	}
	ts.srv.Publish(ctx, "feed", "m", 12)
	for _, want := range []string{"11", "12"} {
		if m := recv(t, feed); string(m.Data) != want {
			t.Fatalf("got %s, want %s", m.Data, want)
		}
	}
	if _, _, err := c.History(ctx, "feed", client.HistorySince(client.Position{Offset: 1, Epoch: "gone"})); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("History since a lost position: %v", err)
	}
	ts.srv.Broadcast(ctx, "notice", "hello all")
	if m := recv(t, broadcasts); m.Channel != "$all" || m.Event != "notice" || string(m.Data) != `"hello all"` {
		t.Fatalf("broadcast %+v", m)
	}
}
