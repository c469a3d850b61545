package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/client"
)

// fast reconnects for tests that do not look at the delays.
var fastRetry = client.WithReconnectDelay(5*time.Millisecond, 50*time.Millisecond)

// watch returns hooks that log into ev.
func watch(ev *events) client.Hooks {
	return client.Hooks{
		OnStatusChange: func(s, old client.Status) { ev.add("status:" + s.String()) },
		OnDrop:         func(err error) { ev.add("drop") },
		OnReconnect:    func(client.ConnInfo) { ev.add("reconnect") },
		OnRefused:      func(s *client.Subscription, err error) { ev.add("refused:" + s.Channel()) },
	}
}

// The server is shut down (4000) and started again on the same address: the
// client comes back and its subscriptions work.
func TestReconnectSameAddress(t *testing.T) {
	r := newRestartable(t, nil, sss.WithSessionParser(userSession))
	ev := newEvents()
	drops := make(chan error, 4)
	c := dial(t, r.url, asUser("eve"), fastRetry, hooks(watch(ev), client.Hooks{OnDrop: func(err error) { drops <- err }}))
	on, msgs := messages()
	var subStates []client.SubStatus
	var mu sync.Mutex
	_, err := c.Subscribe(ctxT(t), "news", client.WithMessageHandler(on), client.WithSubHooks(client.SubHooks{
		OnStatusChange: func(s, _ client.SubStatus) {
			mu.Lock()
			subStates = append(subStates, s)
			mu.Unlock()
		},
	}))
	if err != nil {
		t.Fatal(err)
	}
	firstID := c.ID()

	r.stop()
	var ce *client.CloseError
	if err := recv(t, drops); !errors.As(err, &ce) || ce.Code != 4000 {
		t.Fatalf("drop reason %v, want close 4000", err)
	}
	ev.waitEvent(t, "status:reconnecting")
	if c.ID() != "" {
		t.Fatalf("ID() %q while disconnected", c.ID())
	}
	r.start()
	ev.waitEvent(t, "reconnect")
	if c.ID() == "" || c.ID() == firstID {
		t.Fatalf("new conn id %q (was %q)", c.ID(), firstID)
	}
	if err := r.server().Publish(ctxT(t), "news", "after", 1); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, msgs); m.Event != "after" {
		t.Fatalf("got %+v", m)
	}
	want := []string{"status:connected", "drop", "status:reconnecting", "status:connected", "reconnect"}
	if got := ev.get(); !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(subStates, []client.SubStatus{client.SubResubscribing, client.SubSubscribed}) {
		t.Fatalf("subscription states %v", subStates)
	}
}

// A shut-down instance (4000) is left at once for another URL, without
// backoff, and the subscriptions follow.
func TestFailoverOnShutdown(t *testing.T) {
	m := newMemory(t)
	defer m.Close()
	var s []*testServer
	for range 3 {
		s = append(s, newServer(t, m))
	}
	ev := newEvents()
	// Backoff of up to an hour: only an immediate reconnect passes.
	c := dial(t, s[0].url, client.WithURLs(s[1].url, s[2].url), client.WithReconnectDelay(time.Hour, time.Hour), hooks(watch(ev)))
	on, msgs := messages()
	if _, err := c.Subscribe(ctxT(t), "room", client.WithMessageHandler(on)); err != nil {
		t.Fatal(err)
	}
	if err := s[0].srv.Shutdown(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	ev.waitEvent(t, "reconnect")
	// Another instance, whichever (see TestReconnectsSpread).
	if u := c.Conn().URL; u != s[1].url && u != s[2].url {
		t.Fatalf("reconnected to %s, want %s or %s", u, s[1].url, s[2].url)
	}
	if err := s[2].srv.Publish(ctxT(t), "room", "hi", "from 2"); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, msgs); string(m.Data) != `"from 2"` {
		t.Fatalf("got %+v", m)
	}
}

// One instance of three dies (no 4000, then refusing with 503): the client
// moves on through its URL list with its subscriptions.
func TestFailoverOnCrash(t *testing.T) {
	m := newMemory(t)
	defer m.Close()
	var s []*testServer
	for range 3 {
		s = append(s, newServer(t, m))
	}
	p := newProxy(t, s[0].url)
	ev := newEvents()
	c := dial(t, p.url, client.WithURLs(s[1].url, s[2].url), fastRetry, hooks(watch(ev)))
	on, msgs := messages()
	if _, err := c.Subscribe(ctxT(t), "room", client.WithMessageHandler(on)); err != nil {
		t.Fatal(err)
	}
	s[1].srv.Close() // answers 503 from now on
	p.close()        // s[0] vanishes without a close frame
	ev.waitEvent(t, "reconnect")
	if u := c.Conn().URL; u != s[2].url {
		t.Fatalf("reconnected to %s, want %s", u, s[2].url)
	}
	if err := s[2].srv.Publish(ctxT(t), "room", "hi", 2); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, msgs); string(m.Data) != "2" {
		t.Fatalf("got %+v", m)
	}
}

// A link that stops carrying anything is noticed by the ping+pong window.
func TestPingTimeout(t *testing.T) {
	ts := newServer(t, nil, sss.WithPing(50*time.Millisecond, 100*time.Millisecond))
	p := newProxy(t, ts.url)
	drops := make(chan error, 4)
	ev := newEvents()
	c := dial(t, p.url, fastRetry, hooks(watch(ev), client.Hooks{OnDrop: func(err error) { drops <- err }}))
	if w := c.Conn().Ping + c.Conn().Pong; w != 150*time.Millisecond {
		t.Fatalf("window %v", w)
	}
	on, msgs := messages()
	if _, err := c.Subscribe(ctxT(t), "x", client.WithMessageHandler(on)); err != nil {
		t.Fatal(err)
	}
	// Several ping periods pass on a healthy link without a drop: the
	// client answers pings.
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-drops:
		t.Fatalf("healthy link dropped: %v", err)
	default:
	}
	p.freeze()
	if err := recv(t, drops); !errors.Is(err, client.ErrLinkTimeout) {
		t.Fatalf("drop reason %v", err)
	}
	ev.waitEvent(t, "reconnect")
	ts.srv.Publish(ctxT(t), "x", "", "back")
	if m := recv(t, msgs); string(m.Data) != `"back"` {
		t.Fatalf("got %+v", m)
	}
}

// An ask in flight when the link drops fails with ErrDisconnected (it does
// not hang), and the client carries on.
func TestAskDuringDrop(t *testing.T) {
	started := make(chan struct{}, 1)
	ts := newServer(t, nil)
	ts.srv.HandleAsk("block", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		started <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	})
	ts.srv.HandleAsk("ok", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) { return "ok", nil })
	p := newProxy(t, ts.url)
	ev := newEvents()
	c := dial(t, p.url, fastRetry, hooks(watch(ev)))
	on, msgs := messages()
	if _, err := c.Subscribe(ctxT(t), "x", client.WithMessageHandler(on)); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- c.Ask(context.Background(), "block", nil, nil) }()
	recv(t, started)
	p.cut()
	if err := recv(t, errc); !errors.Is(err, client.ErrDisconnected) {
		t.Fatalf("err %v, want ErrDisconnected", err)
	}
	ev.waitEvent(t, "reconnect")
	var s string
	if err := c.Ask(ctxT(t), "ok", nil, &s); err != nil || s != "ok" {
		t.Fatalf("Ask after reconnect: %q %v", s, err)
	}
	ts.srv.Publish(ctxT(t), "x", "", 1)
	recv(t, msgs)
}

// The session is revoked: the server disconnects (4005), the client retries
// and is refused with 401, and stops for good with that error.
func TestSessionRevoked(t *testing.T) {
	var revoked atomic.Bool
	conns := make(chan *sss.Conn, 4)
	ts := newServer(t, nil,
		sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
			if revoked.Load() {
				return nil, sss.ErrUnauthorized
			}
			return userSession(r)
		}),
		sss.WithHooks(sss.Hooks{OnConnect: func(c *sss.Conn) { conns <- c }}),
	)
	ev := newEvents()
	c := dial(t, ts.url, asUser("mallory"), fastRetry, hooks(watch(ev)))
	sub, err := c.Subscribe(ctxT(t), "x")
	if err != nil {
		t.Fatal(err)
	}
	revoked.Store(true)
	recv(t, conns).Close("session revoked", false)
	ev.waitEvent(t, "status:closed")

	var he *client.HandshakeError
	if err := c.Err(); !errors.As(err, &he) || he.StatusCode != 401 || !errors.Is(err, client.ErrUnauthorized) {
		t.Fatalf("Err() %v", err)
	}
	err = c.Ask(ctxT(t), "x", nil, nil)
	if !errors.Is(err, client.ErrClosed) || !errors.Is(err, client.ErrUnauthorized) || !errors.As(err, &he) {
		t.Fatalf("Ask: %v", err)
	}
	// The prefix once, at the outermost error.
	if msg := err.Error(); msg != `sss: ask "x": client closed: handshake refused: 401 Unauthorized` {
		t.Fatalf("message %q", msg)
	}
	if sub.Status() != client.SubUnsubscribed {
		t.Fatalf("subscription %v", sub.Status())
	}
	want := []string{"status:connected", "drop", "status:reconnecting", "status:closed"}
	if got := ev.get(); !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
}

// Close codes 4500–4999 stop the client without a retry.
func TestFinalClose(t *testing.T) {
	conns := make(chan *sss.Conn, 4)
	var accepted atomic.Int32
	ts := newServer(t, nil, sss.WithHooks(sss.Hooks{OnConnect: func(c *sss.Conn) {
		accepted.Add(1)
		conns <- c
	}}))
	ev := newEvents()
	c := dial(t, ts.url, fastRetry, hooks(watch(ev)))
	recv(t, conns).Close("banned", true)
	ev.waitEvent(t, "status:closed")
	var ce *client.CloseError
	if err := c.Err(); !errors.As(err, &ce) || ce.Code != 4501 || ce.Reason != "banned" || !errors.Is(err, client.ErrForbidden) ||
		err.Error() != "sss: closed by the server with 4501: banned" {
		t.Fatalf("Err() %v", err)
	}
	err := c.Publish(ctxT(t), "news", "", nil)
	if !errors.Is(err, client.ErrClosed) || !errors.As(err, &ce) || err.Error() != `sss: publish to "news": client closed: closed by the server with 4501: banned` {
		t.Fatalf("Publish: %v", err)
	}
	if n := accepted.Load(); n != 1 {
		t.Fatalf("%d connections, want no retry", n)
	}
	if got, want := ev.get(), []string{"status:connected", "drop", "status:closed"}; !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
}

// After a reconnect, a subscription whose access was revoked is reported
// refused, the others restored, and only then OnReconnect fires.
func TestResumeRefused(t *testing.T) {
	var revoked atomic.Bool
	ts := newServer(t, nil, sss.WithSubscriptionParser(func(ctx context.Context, c *sss.Conn, channel string, query json.RawMessage) error {
		if channel == "vip" && (revoked.Load() || string(query) != `"gold"`) {
			return sss.Errorf(sss.CodeForbidden, "access revoked")
		}
		return nil
	}))
	p := newProxy(t, ts.url)
	ev := newEvents()
	c := dial(t, p.url, fastRetry, hooks(watch(ev)))
	onNews, news := messages()
	onVIP, vips := messages()
	if _, err := c.Subscribe(ctxT(t), "news", client.WithMessageHandler(onNews)); err != nil {
		t.Fatal(err)
	}
	vip, err := c.Subscribe(ctxT(t), "vip", client.WithQuery("gold"), client.WithMessageHandler(onVIP))
	if err != nil {
		t.Fatal(err)
	}
	ts.srv.Publish(ctxT(t), "vip", "", "before")
	recv(t, vips)

	revoked.Store(true)
	p.cut()
	ev.waitEvent(t, "reconnect")
	want := []string{"status:connected", "drop", "status:reconnecting", "refused:vip", "status:connected", "reconnect"}
	if got := ev.get(); !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	if vip.Status() != client.SubRefused || !errors.Is(vip.Err(), client.ErrForbidden) || !strings.Contains(vip.Err().Error(), "access revoked") {
		t.Fatalf("vip %v %v", vip.Status(), vip.Err())
	}
	ts.srv.Publish(ctxT(t), "vip", "", "after")
	ts.srv.Publish(ctxT(t), "news", "", "after")
	recv(t, news)
	select {
	case m := <-vips:
		t.Fatalf("refused subscription got %+v", m)
	default:
	}
	// A refused subscription is not restored on later reconnects either.
	if err := vip.Unsubscribe(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

// Subscriptions dropped while disconnected are not restored.
func TestUnsubscribeWhileDisconnected(t *testing.T) {
	r := newRestartable(t, nil)
	ev := newEvents()
	c := dial(t, r.url, fastRetry, hooks(watch(ev)))
	gone, err := c.Subscribe(ctxT(t), "gone")
	if err != nil {
		t.Fatal(err)
	}
	on, kept := messages()
	if _, err := c.Subscribe(ctxT(t), "kept", client.WithMessageHandler(on)); err != nil {
		t.Fatal(err)
	}
	r.stop()
	ev.waitEvent(t, "status:reconnecting")
	if err := gone.Unsubscribe(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if gone.Status() != client.SubUnsubscribed {
		t.Fatalf("status %v", gone.Status())
	}
	r.start()
	ev.waitEvent(t, "reconnect")
	if n := r.server().Stats().Subscriptions; n != 1 {
		t.Fatalf("server holds %d subscriptions, want 1", n)
	}
	r.server().Publish(ctxT(t), "kept", "", 1)
	recv(t, kept)
}

// While disconnected, requests wait for the link within their context, or
// fail at once with WithFailFast.
func TestWaitForLinkOrFailFast(t *testing.T) {
	told := make(chan string, 4)
	r := newRestartable(t, func(s *sss.Server) {
		s.HandleTell("t", func(ctx context.Context, c *sss.Conn, data json.RawMessage) error {
			told <- string(data)
			return nil
		})
	})
	evWait, evFast := newEvents(), newEvents()
	waiting := dial(t, r.url, fastRetry, hooks(watch(evWait)))
	fast := dial(t, r.url, fastRetry, hooks(watch(evFast)), client.WithFailFast())
	r.stop()
	evWait.waitEvent(t, "status:reconnecting")
	evFast.waitEvent(t, "status:reconnecting")

	if err := fast.Tell(ctxT(t), "t", nil); !errors.Is(err, client.ErrDisconnected) {
		t.Fatalf("fail fast: %v", err)
	}
	if err := fast.Publish(ctxT(t), "x", "", nil); !errors.Is(err, client.ErrDisconnected) {
		t.Fatalf("fail fast publish: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if err := waiting.Tell(ctx, "t", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting with a short deadline: %v", err)
	}
	errc := make(chan error, 1)
	go func() { errc <- waiting.Tell(ctxT(t), "t", "queued") }()
	r.start()
	if err := recv(t, errc); err != nil {
		t.Fatalf("waiting Tell: %v", err)
	}
	if s := recv(t, told); s != `"queued"` {
		t.Fatalf("told %q", s)
	}
}

// WithMaxAttempts gives up, with the last error.
func TestMaxAttempts(t *testing.T) {
	r := newRestartable(t, nil)
	ev := newEvents()
	c := dial(t, r.url, fastRetry, client.WithMaxAttempts(3), hooks(watch(ev)))
	r.stop()
	ev.waitEvent(t, "status:closed")
	err := c.Err()
	if err == nil || errors.Is(err, client.ErrClosed) || !strings.HasPrefix(err.Error(), "sss: gave up reconnecting after 3 attempts: ") ||
		strings.Count(err.Error(), "sss: ") != 1 {
		t.Fatalf("Err() %v", err)
	}
	if err := c.Tell(ctxT(t), "t", nil); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Tell: %v", err)
	}
}

// Handlers that fall behind the message buffer get the link dropped and
// resumed instead of blocking the reader. The client waits for its handlers
// to catch up before it reconnects, and the resume catches up on what was
// not handed to them: nothing is lost, nothing comes twice.
func TestSlowConsumer(t *testing.T) {
	ts := newServer(t, nil)
	ev := newEvents()
	errs := make(chan error, 16)
	c := dial(t, ts.url, fastRetry, client.WithReceiveQueue(2), hooks(watch(ev), client.Hooks{OnError: func(err error) { errs <- err }}))
	release := make(chan struct{})
	got := make(chan string, 64)
	if _, err := c.Subscribe(ctxT(t), "firehose", client.WithMessageHandler(func(m client.Message) {
		<-release
		got <- string(m.Data)
	})); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		ts.srv.Publish(ctxT(t), "firehose", "", i)
	}
	// Callbacks wait behind the blocked handler; the link does not.
	waitFor(t, "the drop", func() bool { return c.Status() == client.StatusReconnecting })
	close(release)
	if err := recv(t, errs); !errors.Is(err, client.ErrSlowConsumer) {
		t.Fatalf("OnError %v", err)
	}
	ev.waitEvent(t, "reconnect")
	ts.srv.Publish(ctxT(t), "firehose", "", "marker")
	for i := range 10 {
		if s := recv(t, got); s != itoa(i) {
			t.Fatalf("message %d: %s", i, s)
		}
	}
	if s := recv(t, got); s != `"marker"` {
		t.Fatalf("got %s, want the marker", s)
	}
	// (With a buffer of 2, the catch-up itself may overflow it a few times
	// before a link lasts: every resume recovers exactly.)
	if st := c.Stats(); st.Gaps != 0 || st.Reconnects == 0 || st.Recovered == 0 || st.Duplicates != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// Close on a dead network does not wait long for the server's close frame.
func TestCloseOnDeadLink(t *testing.T) {
	ts := newServer(t, nil)
	p := newProxy(t, ts.url)
	c := dial(t, p.url)
	p.freeze()
	start := time.Now()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Close took %v", d)
	}
}
