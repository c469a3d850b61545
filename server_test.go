package sss_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/internal/wstest"
)

// userParser names the user and session from headers, refusing "evil".
func userParser(r *http.Request) (*sss.Session, error) {
	u := r.Header.Get("X-User")
	switch u {
	case "":
		return nil, sss.ErrUnauthorized
	case "evil":
		return nil, sss.Errorf(sss.CodeForbidden, "banned")
	case "teapot":
		return nil, &sss.StatusError{Status: http.StatusTeapot, Message: "short and stout"}
	}
	return &sss.Session{UserID: u, SessionID: r.Header.Get("X-Session")}, nil
}

func as(user, session string) http.Header {
	h := http.Header{}
	h.Set("X-User", user)
	h.Set("X-Session", session)
	return h
}

func TestWelcome(t *testing.T) {
	cl := newCluster(t, 1, sss.WithSessionParser(userParser))
	w := cl.dial(0, as("alice", "s1"))
	f := w.Welcome
	if f.User != "alice" || f.Session != "s1" || f.Channels.User != "$u.alice" || f.Channels.Session != "$s.5:alice:s1" {
		t.Fatalf("welcome %+v", f)
	}
	if !strings.HasPrefix(f.Conn, cl.servers[0].NodeID()+".") {
		t.Fatalf("conn id %q does not start with the node id %q", f.Conn, cl.servers[0].NodeID())
	}
}

func TestAnonymousSessions(t *testing.T) {
	cl := newCluster(t, 1)
	a, b := cl.dial(0, nil), cl.dial(0, nil)
	if a.Welcome.User != "" || a.Welcome.Session == "" || a.Welcome.Session == b.Welcome.Session {
		t.Fatalf("anonymous welcomes %+v %+v", a.Welcome, b.Welcome)
	}
}

func TestUpgradeRefusals(t *testing.T) {
	cl := newCluster(t, 1, sss.WithSessionParser(userParser))
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		header http.Header
		protos []string
		want   int
	}{
		{"no credentials", nil, []string{sss.Subprotocol}, http.StatusUnauthorized},
		{"forbidden", as("evil", ""), []string{sss.Subprotocol}, http.StatusForbidden},
		{"custom status", as("teapot", ""), []string{sss.Subprotocol}, http.StatusTeapot},
		{"no subprotocol", as("alice", ""), nil, http.StatusBadRequest},
		{"other subprotocol", as("alice", ""), []string{"mqtt"}, http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, resp, err := websocket.Dial(ctx, cl.url(0), &websocket.DialOptions{HTTPHeader: tc.header, Subprotocols: tc.protos})
			if err == nil {
				t.Fatal("upgrade succeeded")
			}
			if resp == nil || resp.StatusCode != tc.want {
				t.Fatalf("status %v, want %d (err %v)", resp, tc.want, err)
			}
		})
	}
	resp, err := http.Get(cl.https[0].URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("plain GET: %d", resp.StatusCode)
	}
	if n := cl.servers[0].Stats().Connections; n != 0 {
		t.Fatalf("%d connections after refusals", n)
	}
}

func TestOriginCheck(t *testing.T) {
	cl := newCluster(t, 1, sss.WithOriginPatterns("app.example.com"))
	h := http.Header{}
	h.Set("Origin", "https://evil.example.com")
	_, resp, err := websocket.Dial(context.Background(), cl.url(0), &websocket.DialOptions{HTTPHeader: h, Subprotocols: []string{sss.Subprotocol}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("foreign origin: resp %v err %v", resp, err)
	}
	h.Set("Origin", "https://app.example.com")
	wstest.Dial(t, cl.url(0), h)
}

func TestPublishReachesEveryInstance(t *testing.T) {
	cl := newCluster(t, 3)
	var subs []*wstest.Client
	for i := 0; i < 3; i++ {
		w := cl.dial(i, nil)
		w.Subscribe("news")
		subs = append(subs, w)
	}
	if err := cl.servers[1].Publish(context.Background(), "news", "article", map[string]string{"title": "hi"}); err != nil {
		t.Fatal(err)
	}
	for i, w := range subs {
		f := w.Expect("pub")
		if f.Channel != "news" || f.Sub != "news" || f.Event != "article" || string(f.Data) != `{"title":"hi"}` || f.From != nil {
			t.Fatalf("instance %d got %+v", i, f)
		}
	}
}

func TestHierarchicalDelivery(t *testing.T) {
	cl := newCluster(t, 2)
	ctx := context.Background()
	both := cl.dial(0, nil)
	both.Subscribe("news")
	both.Subscribe("news.uk")
	top := cl.dial(1, nil)
	top.Subscribe("news")
	other := cl.dial(1, nil)
	other.Subscribe("newsletter")

	for _, ch := range []string{"news.uk.london", "news.fr", "news", "newsletter.weekly"} {
		if err := cl.servers[1].Publish(ctx, ch, "e", ch); err != nil {
			t.Fatal(err)
		}
	}
	// One copy each, through the most specific subscription.
	for _, want := range [][2]string{{"news.uk.london", "news.uk"}, {"news.fr", "news"}, {"news", "news"}} {
		f := both.Expect("pub")
		if f.Channel != want[0] || f.Sub != want[1] {
			t.Fatalf("both: got %s via %s, want %s via %s", f.Channel, f.Sub, want[0], want[1])
		}
	}
	both.Nothing(100 * time.Millisecond)
	for _, want := range []string{"news.uk.london", "news.fr", "news"} {
		if f := top.Expect("pub"); f.Channel != want || f.Sub != "news" {
			t.Fatalf("top: got %+v, want %s", f, want)
		}
	}
	if f := other.Expect("pub"); f.Channel != "newsletter.weekly" || f.Sub != "newsletter" {
		t.Fatalf("newsletter: %+v", f)
	}
	other.Nothing(50 * time.Millisecond)

	// After unsubscribing the deeper one, the ancestor carries it.
	both.Ack(map[string]any{"type": "unsubscribe", "channel": "news.uk"})
	cl.servers[0].Publish(ctx, "news.uk.x", "e", nil)
	if f := both.Expect("pub"); f.Channel != "news.uk.x" || f.Sub != "news" || string(f.Data) != "null" {
		t.Fatalf("after unsubscribe: %+v", f)
	}
}

func TestChannelOrder(t *testing.T) {
	cl := newCluster(t, 3)
	var subs []*wstest.Client
	for i := 0; i < 3; i++ {
		w := cl.dial(i, nil)
		w.Subscribe("seq")
		subs = append(subs, w)
	}
	const n = 300
	var wg sync.WaitGroup
	for p := 0; p < 3; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n; i++ {
				cl.servers[p].Publish(context.Background(), "seq", fmt.Sprint(p), i)
			}
		}()
	}
	wg.Wait()
	var orders [][]string
	for _, w := range subs {
		var got []string
		last := map[string]int{"0": -1, "1": -1, "2": -1}
		for i := 0; i < 3*n; i++ {
			f := w.Expect("pub")
			var v int
			json.Unmarshal(f.Data, &v)
			if v != last[f.Event]+1 {
				t.Fatalf("publisher %s: got %d after %d", f.Event, v, last[f.Event])
			}
			last[f.Event] = v
			got = append(got, f.Event+":"+string(f.Data))
		}
		orders = append(orders, got)
	}
	for i := 1; i < len(orders); i++ {
		if strings.Join(orders[i], ",") != strings.Join(orders[0], ",") {
			t.Fatalf("subscriber %d saw a different order than subscriber 0", i)
		}
	}
}

func TestSubscriptionParser(t *testing.T) {
	cl := newCluster(t, 1, sss.WithSessionParser(userParser),
		sss.WithSubscriptionParser(func(ctx context.Context, c *sss.Conn, channel string, query json.RawMessage) error {
			switch channel {
			case "private":
				if string(query) != `{"password":"open"}` {
					return sss.Errorf(sss.CodeForbidden, "wrong password")
				}
			case "error":
				return errors.New("database down")
			case "panic":
				panic("parser bug")
			case "slow":
				<-ctx.Done()
				return ctx.Err()
			case "owner":
				if c.UserID() != "alice" {
					return sss.ErrUnauthorized
				}
			}
			return nil
		}), sss.WithAskTimeout(200*time.Millisecond))
	w := cl.dial(0, as("bob", "s2"))
	w.Fails(map[string]any{"type": "subscribe", "channel": "private", "query": map[string]string{"password": "nope"}}, "forbidden")
	w.Ack(map[string]any{"type": "subscribe", "channel": "private", "query": map[string]string{"password": "open"}})
	w.Fails(map[string]any{"type": "subscribe", "channel": "error"}, "forbidden")
	w.Fails(map[string]any{"type": "subscribe", "channel": "panic"}, "internal")
	w.Fails(map[string]any{"type": "subscribe", "channel": "slow"}, "timeout")
	w.Fails(map[string]any{"type": "subscribe", "channel": "owner"}, "unauthorized")
	// Still alive, and refused subscriptions left nothing behind.
	w.Subscribe("fine")
	if n := cl.servers[0].Stats().Subscriptions; n != 2 {
		t.Fatalf("%d subscriptions, want 2", n)
	}
}

func TestClientPublish(t *testing.T) {
	t.Run("disabled by default", func(t *testing.T) {
		cl := newCluster(t, 1)
		w := cl.dial(0, nil)
		w.Fails(map[string]any{"type": "publish", "channel": "chat", "event": "m", "data": 1}, "forbidden")
	})
	t.Run("stamped sender", func(t *testing.T) {
		cl := newCluster(t, 2, sss.WithSessionParser(userParser),
			sss.WithPublishParser(func(ctx context.Context, c *sss.Conn, channel, event string, data json.RawMessage) error {
				if channel == "readonly" {
					return errors.New("read only")
				}
				return nil
			}))
		sub := cl.dial(1, as("bob", "sb"))
		sub.Subscribe("chat")
		pub := cl.dial(0, as("alice", "sa"))
		// A forged "from" is ignored: the server stamps the sender.
		pub.Ack(map[string]any{"type": "publish", "channel": "chat", "event": "m",
			"data": map[string]any{"text": "hi\nthere"}, "from": map[string]string{"user": "admin"}})
		f := sub.Expect("pub")
		if f.From == nil || f.From.User != "alice" || f.From.Conn != pub.Welcome.Conn {
			t.Fatalf("from %+v", f.From)
		}
		if string(f.Data) != `{"text":"hi\nthere"}` {
			t.Fatalf("data %s", f.Data)
		}
		pub.Fails(map[string]any{"type": "publish", "channel": "readonly", "event": "m"}, "forbidden")
		pub.Fails(map[string]any{"type": "publish", "channel": "$u.bob", "event": "m"}, "forbidden")
		pub.Fails(map[string]any{"type": "publish", "channel": "bad channel", "event": "m"}, "bad_request")
		// Pretty-printed data is compacted, so batching stays line-safe.
		pub.SendRaw("{\"type\":\"publish\",\"id\":99999,\"channel\":\"chat\",\"event\":\"m\",\"data\":{\n  \"a\": 1\n}}")
		f = sub.Expect("pub")
		if string(f.Data) != `{"a":1}` {
			t.Fatalf("data %q", f.Data)
		}
	})
}

func TestForgedUnsubscribe(t *testing.T) {
	cl := newCluster(t, 1)
	victim := cl.dial(0, nil)
	victim.Subscribe("room")
	attacker := cl.dial(0, nil)
	attacker.Fails(map[string]any{"type": "unsubscribe", "channel": "room"}, "not_found")
	// The victim keeps its subscription, and the instance its interest.
	cl.servers[0].Publish(context.Background(), "room", "e", 1)
	victim.Expect("pub")
	attacker.Nothing(50 * time.Millisecond)
}

func TestReservedChannels(t *testing.T) {
	cl := newCluster(t, 2, sss.WithSessionParser(userParser))
	ctx := context.Background()
	alice := cl.dial(0, as("alice", "sa"))
	alice2 := cl.dial(1, as("alice", "sa2"))
	// Mallory's session has the same id as alice's: it is hers, not alice's.
	mallory := cl.dial(1, as("mallory", "sa2"))
	for _, ch := range []string{"$u.alice", "$s.5:alice:sa", "$s.sa", "$internal", "$u.alice.x"} {
		mallory.Fails(map[string]any{"type": "subscribe", "channel": ch}, "forbidden")
	}
	if err := cl.servers[1].PublishUser(ctx, "alice", "hello", "a"); err != nil {
		t.Fatal(err)
	}
	for _, w := range []*wstest.Client{alice, alice2} {
		if f := w.Expect("pub"); f.Channel != "$u.alice" || f.Sub != "$u.alice" || f.Event != "hello" {
			t.Fatalf("user pub %+v", f)
		}
	}
	if err := cl.servers[0].PublishSession(ctx, "alice", "sa2", "s", nil); err != nil {
		t.Fatal(err)
	}
	if f := alice2.Expect("pub"); f.Channel != "$s.5:alice:sa2" || f.Channel != sss.SessionChannel("alice", "sa2") {
		t.Fatalf("session pub %+v", f)
	}
	alice.Nothing(50 * time.Millisecond)
	mallory.Nothing(50 * time.Millisecond)
}

func TestSubscribeLimits(t *testing.T) {
	cl := newCluster(t, 1, sss.WithMaxSubscriptions(2))
	w := cl.dial(0, nil)
	w.Subscribe("a")
	w.Fails(map[string]any{"type": "subscribe", "channel": "a"}, "conflict")
	w.Subscribe("b")
	w.Fails(map[string]any{"type": "subscribe", "channel": "c"}, "limit_exceeded")
	w.Ack(map[string]any{"type": "unsubscribe", "channel": "a"})
	w.Subscribe("c")
	w.Fails(map[string]any{"type": "unsubscribe", "channel": "never"}, "not_found")
}

func TestHooksAndStats(t *testing.T) {
	var mu sync.Mutex
	var events []string
	rec := func(s string) { mu.Lock(); events = append(events, s); mu.Unlock() }
	cl := newCluster(t, 1, sss.WithHooks(sss.Hooks{
		OnConnect: func(c *sss.Conn) { rec("connect") },
		OnDisconnect: func(c *sss.Conn, reason error) {
			rec("disconnect:" + fmt.Sprint(errors.Is(reason, sss.ErrClientClosed)))
		},
		OnSubscribe:    func(c *sss.Conn, ch string) { rec("subscribe:" + ch) },
		OnUnsubscribe:  func(c *sss.Conn, ch string) { rec("unsubscribe:" + ch) },
		OnChannelOpen:  func(ch string) { rec("open:" + ch) },
		OnChannelClose: func(ch string) { rec("close:" + ch); panic("hook bug") },
	}))
	w := cl.dial(0, nil)
	w.Subscribe("x")
	w.Ack(map[string]any{"type": "unsubscribe", "channel": "x"})
	w.Subscribe("y")
	st := cl.servers[0].Stats()
	if st.Connections != 1 || st.Subscriptions != 1 || st.Channels != 2 { // y and the session channel
		t.Fatalf("stats %+v", st)
	}
	w.Close()
	eventually(t, "disconnect hook", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(events) > 0 && strings.HasPrefix(events[len(events)-1], "disconnect")
	})
	// The end of the connection ends y: OnUnsubscribe fires for it too.
	want := "connect open:x subscribe:x close:x unsubscribe:x open:y subscribe:y close:y unsubscribe:y disconnect:true"
	if got := strings.Join(events, " "); got != want {
		t.Fatalf("events\n got %s\nwant %s", got, want)
	}
	st = cl.servers[0].Stats()
	if st.Connections != 0 || st.Subscriptions != 0 || st.Channels != 0 || st.Panics != 0 {
		t.Fatalf("stats after disconnect %+v", st)
	}
}

func TestSlowConsumer(t *testing.T) {
	cl := newCluster(t, 1, sss.WithSendQueue(8, 1<<20))
	w := cl.dial(0, nil)
	w.Subscribe("firehose")
	// The client never reads; the server's queue overflows once the socket
	// buffers are full.
	big := strings.Repeat("x", 16<<10)
	ctx := context.Background()
	for i := 0; i < 10000 && cl.servers[0].Stats().SlowConsumers == 0; i++ {
		cl.servers[0].Publish(ctx, "firehose", "e", big)
	}
	if cl.servers[0].Stats().SlowConsumers != 1 {
		t.Fatal("no slow consumer detected")
	}
	eventually(t, "connection closed", func() bool { return cl.servers[0].Stats().Connections == 0 })
	w.CloseStatus() // and the client saw it
}

func TestSlowConsumerCloseCode(t *testing.T) {
	cl := newCluster(t, 1, sss.WithSendQueue(4, 1000))
	w := cl.dial(0, nil)
	w.Subscribe("x")
	// Frames of 400 bytes published in a burst: the third cannot fit 1000
	// bytes unless the writer drained the queue in between, which it cannot
	// do fifty times in a row.
	for i := 0; i < 50; i++ {
		cl.servers[0].Publish(context.Background(), "x", "e", strings.Repeat("y", 400))
	}
	if code := sss.CloseCode(w.CloseStatus()); code != sss.CloseSlowConsumer {
		t.Fatalf("close code %d, want %d", code, sss.CloseSlowConsumer)
	}
}

func TestLossyChannels(t *testing.T) {
	cl := newCluster(t, 1, sss.WithSendQueue(4, 1000), sss.WithLossyChannels(func(ch string) bool { return strings.HasPrefix(ch, "ticks") }))
	w := cl.dial(0, nil)
	w.Subscribe("ticks")
	for i := 0; i < 10000 && cl.servers[0].Stats().Dropped == 0; i++ {
		cl.servers[0].Publish(context.Background(), "ticks", "e", strings.Repeat("y", 400))
	}
	if cl.servers[0].Stats().Dropped == 0 {
		t.Fatal("nothing dropped")
	}
	// Still connected.
	w.Ack(map[string]any{"type": "subscribe", "channel": "other"})
}

func TestOversizedMessage(t *testing.T) {
	cl := newCluster(t, 1, sss.WithMaxMessageSize(1024))
	w := cl.dial(0, nil)
	w.SendRaw(`{"type":"tell","id":1,"name":"x","data":"` + strings.Repeat("a", 2000) + `"}`)
	if code := sss.CloseCode(w.CloseStatus()); code != sss.CloseCode(websocket.StatusMessageTooBig) {
		t.Fatalf("close code %d, want 1009", code)
	}
}

func TestPingTimeoutReapsSilentClient(t *testing.T) {
	cl := newCluster(t, 1, sss.WithPing(50*time.Millisecond, 50*time.Millisecond))
	w := cl.dial(0, nil, wstest.NoPongs())
	// A client that answers pings stays.
	for pings := 0; pings < 6; {
		f, ok := w.Next(5 * time.Second)
		if !ok {
			t.Fatal("no ping")
		}
		if f.Type == "ping" {
			pings++
			w.Send(map[string]string{"type": "pong"})
		}
	}
	if cl.servers[0].Stats().Connections != 1 {
		t.Fatal("answering client was reaped")
	}
	// One that stops answering goes.
	if code := sss.CloseCode(w.CloseStatus()); code != sss.ClosePingTimeout {
		t.Fatalf("close code %d, want %d", code, sss.ClosePingTimeout)
	}
}

func TestShutdownTellsClientsToReconnect(t *testing.T) {
	cl := newCluster(t, 2)
	w := cl.dial(0, nil)
	started := make(chan struct{})
	cl.servers[0].HandleAsk("slow", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		close(started)
		<-ctx.Done()
		return nil, ctx.Err()
	})
	w.Send(map[string]any{"type": "ask", "id": 1, "name": "slow"})
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- cl.servers[0].Shutdown(ctx) }()
	if code := sss.CloseCode(w.CloseStatus()); code != sss.CloseShutdown {
		t.Fatalf("close code %d, want %d", code, sss.CloseShutdown)
	}
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	// New connections are refused; the other instance still serves.
	_, resp, err := websocket.Dial(context.Background(), cl.url(0), &websocket.DialOptions{Subprotocols: []string{sss.Subprotocol}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("dial after shutdown: %v %v", resp, err)
	}
	other := cl.dial(1, nil)
	other.Subscribe("still")
	if err := cl.servers[0].Publish(context.Background(), "x", "e", nil); err == nil {
		t.Fatal("publish on a closed server succeeded")
	}
}

func TestDisconnectFromHandler(t *testing.T) {
	cl := newCluster(t, 1)
	cl.servers[0].HandleTell("logout", func(ctx context.Context, c *sss.Conn, data json.RawMessage) error {
		c.Close("logged out", true)
		return nil
	})
	w := cl.dial(0, nil)
	w.Ack(map[string]any{"type": "tell", "name": "logout"})
	if code := sss.CloseCode(w.CloseStatus()); code != sss.CloseForbidden {
		t.Fatalf("close code %d", code)
	}
}

func TestOptionsValidation(t *testing.T) {
	for _, o := range []sss.Option{
		sss.WithScaler(nil), sss.WithLogger(nil), sss.WithMaxMessageSize(0), sss.WithSendQueue(0, 1),
		sss.WithMaxSubscriptions(-1), sss.WithPing(0, time.Second), sss.WithWriteTimeout(0),
		sss.WithAskTimeout(0), sss.WithConcurrency(0), sss.WithRateLimit(0, 1),
	} {
		if _, err := sss.New(o); err == nil {
			t.Error("invalid option accepted")
		}
	}
}

func TestValidChannel(t *testing.T) {
	for _, ok := range []string{"a", "news.uk", "chat:room-1", "orders.eu.shop@42", "a/b=c+d", "$u.x", strings.Repeat("a", 255)} {
		if err := sss.ValidChannel(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "a.", ".a", "a..b", "a b", "é", "a\nb", "a*", strings.Repeat("a", 256)} {
		if err := sss.ValidChannel(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// A session whose credentials expire is closed with 4007 then (the client
// reconnects with fresh ones); one already expired is refused.
func TestSessionExpires(t *testing.T) {
	var reason atomic.Value
	exp := time.Now().Add(300 * time.Millisecond)
	cl := newCluster(t, 1, sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
		if r.Header.Get("X-Old") != "" {
			return &sss.Session{UserID: "u", ExpiresAt: time.Now().Add(-time.Second)}, nil
		}
		return &sss.Session{UserID: "u", ExpiresAt: exp}, nil
	}), sss.WithHooks(sss.Hooks{OnDisconnect: func(c *sss.Conn, err error) { reason.Store(err) }}))
	w := cl.dial(0, nil)
	select {
	case <-w.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("not closed at expiry")
	}
	if code := w.CloseStatus(); code != 4007 {
		t.Fatalf("close code %d, want 4007", code)
	}
	if time.Now().Before(exp) {
		t.Fatal("closed before the expiry")
	}
	eventually(t, "the disconnect hook", func() bool {
		err, _ := reason.Load().(error)
		return errors.Is(err, sss.ErrSessionExpired)
	})
	h := http.Header{}
	h.Set("X-Old", "1")
	_, resp, err := websocket.Dial(context.Background(), cl.url(0), &websocket.DialOptions{HTTPHeader: h, Subprotocols: []string{sss.Subprotocol}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("expired credentials: %v %+v", err, resp)
	}
}

// Ready says whether the server can serve: its scaler answers, it is not
// closed.
func TestReady(t *testing.T) {
	m := newMemory(t)
	cl := newClusterWith(t, m, 1)
	srv := cl.servers[0]
	ctx := context.Background()
	if err := srv.Ready(ctx); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	m.Cut(srv.NodeID())
	if err := srv.Ready(ctx); !errors.Is(err, sss.ErrUnavailable) {
		t.Fatalf("Ready with the scaler cut off: %v", err)
	}
	m.Heal(srv.NodeID())
	if err := srv.Ready(ctx); err != nil {
		t.Fatalf("Ready after the heal: %v", err)
	}
	srv.Close()
	if err := srv.Ready(ctx); !errors.Is(err, sss.ErrServerClosed) {
		t.Fatalf("Ready after Close: %v", err)
	}
}
