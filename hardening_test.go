package sss_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/internal/wstest"
)

// What clients or applications send cannot poison other clients, stall a
// connection or vanish without a reply (the hardening issue's six defects,
// each tested here, and the decisions around them).

func allowAll(context.Context, *sss.Conn, string, string, json.RawMessage) error { return nil }

// 1. Invalid UTF-8 is refused where it enters, never relayed: not from a
// client's publish or ask, not from the application's raw JSON, and so
// not kept in history either.
func TestInvalidUTF8IsNotRelayed(t *testing.T) {
	cl := newCluster(t, 2, sss.WithPublishParser(allowAll))
	cl.servers[0].HandleAsk("echo", func(_ context.Context, _ *sss.Conn, data json.RawMessage) (any, error) { return data, nil })
	alice := cl.dial(1, nil)
	epoch := ackEpoch(t, alice, "room")
	bob := cl.dial(0, nil)
	bad := "hi \xff\xfe\xc0\xaf"
	bob.SendRaw(`{"type":"publish","id":1,"channel":"room","event":"m","data":{"text":"` + bad + `"}}`)
	if f := bob.Expect("error"); f.ID != 0 || f.Error.Code != "bad_request" || !strings.Contains(f.Error.Message, "UTF-8") {
		t.Fatalf("invalid UTF-8 publish: %v", f)
	}
	bob.SendRaw(`{"type":"ask","id":2,"name":"echo","data":"` + bad + `"}`)
	if f := bob.Expect("error"); f.ID != 0 || f.Error.Code != "bad_request" {
		t.Fatalf("invalid UTF-8 ask: %v", f)
	}
	if err := cl.servers[0].Publish(context.Background(), "room", "m", json.RawMessage(`"`+bad+`"`)); !errors.Is(err, sss.ErrBadRequest) {
		t.Fatalf("Publish of invalid UTF-8: %v, want bad_request", err)
	}
	if err := cl.servers[0].Tell(context.Background(), sss.ToConn(alice.Welcome.Conn), "t", json.RawMessage(`"`+bad+`"`)); !errors.Is(err, sss.ErrBadRequest) {
		t.Fatalf("Tell of invalid UTF-8: %v, want bad_request", err)
	}
	alice.Nothing(100 * time.Millisecond)
	// Nothing was kept: a catch-up from the start gives nothing either.
	late := cl.dial(1, nil)
	res := late.Ack(map[string]any{"type": "subscribe", "channel": "room", "since": map[string]any{"offset": 0, "epoch": epoch}})
	if !strings.Contains(string(res.Result), `"offset":0`) || !strings.Contains(string(res.Result), `"recovered":true`) {
		t.Fatalf("catch-up from the start: %s", res.Result)
	}
	late.Nothing(50 * time.Millisecond)
	// The connection that sent it is still usable.
	bob.Ack(map[string]any{"type": "ask", "name": "echo", "data": "ok"})
}

// ackEpoch subscribes w to channel and returns the epoch of its ack.
func ackEpoch(t *testing.T, w *wstest.Client, channel string) string {
	t.Helper()
	var r struct{ Epoch string }
	json.Unmarshal(w.Subscribe(channel).Result, &r)
	return r.Epoch
}

// 2. A publication larger than the payload limit is refused where it
// enters, on the server's API and from clients, instead of being accepted
// and then closing every subscriber.
func TestOversizedPayloadIsRefused(t *testing.T) {
	cl := newCluster(t, 1, sss.WithPublishParser(allowAll), sss.WithMaxMessageSize(1<<20))
	srv := cl.servers[0]
	w := cl.dial(0, nil)
	if w.Welcome.Limits.MaxPayload != sss.DefaultMaxPayloadSize {
		t.Fatalf("welcome limits %+v", w.Welcome.Limits)
	}
	w.Subscribe("room")
	ctx := context.Background()
	big := strings.Repeat("x", 1500<<10)
	for name, err := range map[string]error{
		"Publish":        srv.Publish(ctx, "room", "e", big),
		"PublishUser":    srv.PublishUser(ctx, "u", "e", big),
		"PublishSession": srv.PublishSession(ctx, "u", "s", "e", big),
		"Tell":           srv.Tell(ctx, sss.ToConn(w.Welcome.Conn), "t", big),
	} {
		if !errors.Is(err, sss.ErrTooLarge) {
			t.Errorf("%s of 1.5 MB: %v, want too_large", name, err)
		}
	}
	if _, err := srv.Ask(ctx, sss.ToConn(w.Welcome.Conn), "q", big); !errors.Is(err, sss.ErrTooLarge) {
		t.Errorf("Ask of 1.5 MB: %v, want too_large", err)
	}
	w.Fails(map[string]any{"type": "publish", "channel": "room", "event": "e", "data": strings.Repeat("y", 100<<10)}, "too_large")
	w.Nothing(100 * time.Millisecond)
	// At the limit it goes through.
	if err := srv.Publish(ctx, "room", "e", strings.Repeat("z", sss.DefaultMaxPayloadSize-2)); err != nil {
		t.Fatal(err)
	}
	w.Expect("pub")
}

// A frame larger than a connection's whole send queue, from an instance
// that allows larger payloads, is delivered on an empty queue: it does not
// make the subscriber a slow consumer (4002 means "did not read").
func TestLargeFrameOnAnEmptyQueue(t *testing.T) {
	m := newMemory(t)
	big, err := sss.New(sss.WithScaler(m), sss.WithSendQueue(64, 8<<20), sss.WithMaxPayloadSize(2<<20))
	if err != nil {
		t.Fatal(err)
	}
	small, err := sss.New(sss.WithScaler(m)) // 1 MiB of send queue
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(small)
	t.Cleanup(func() { big.Close(); small.Close(); ts.Close(); m.Close() })
	w := wstest.Dial(t, wsURL(ts), nil, wstest.ReadLimit(4<<20))
	w.Subscribe("room")
	if err := big.Publish(context.Background(), "room", "e", strings.Repeat("x", 1500<<10)); err != nil {
		t.Fatal(err)
	}
	if f := w.Expect("pub"); len(f.Data) < 1500<<10 {
		t.Fatalf("got %d bytes", len(f.Data))
	}
	if small.Stats().SlowConsumers != 0 {
		t.Fatal("closed as a slow consumer")
	}
}

// 3. An ask whose result is too large gets an error reply, not silence and
// a 4002; the connection stays up.
func TestLargeAskResult(t *testing.T) {
	cl := newCluster(t, 1)
	cl.servers[0].HandleAsk("big", func(context.Context, *sss.Conn, json.RawMessage) (any, error) {
		return strings.Repeat("x", 2<<20), nil
	})
	w := cl.dial(0, nil)
	f := w.Fails(map[string]any{"type": "ask", "name": "big"}, "too_large")
	if !strings.Contains(f.Error.Message, "result") {
		t.Fatalf("error %v", f)
	}
	w.Subscribe("still.up")
	if cl.servers[0].Stats().SlowConsumers != 0 {
		t.Fatal("closed as a slow consumer")
	}
}

// 4. A subscription parser that ignores its context is answered timeout at
// the deadline; an ask sent behind it is not held up, and the ordered
// requests behind it run after the deadline, in order.
func TestSlowParserIsBounded(t *testing.T) {
	release := make(chan struct{})
	var calls atomic.Int32
	cl := newCluster(t, 1, sss.WithAskTimeout(300*time.Millisecond),
		sss.WithSubscriptionParser(func(ctx context.Context, c *sss.Conn, channel string, q json.RawMessage) error {
			if channel == "slow" {
				calls.Add(1)
				<-release // ignores ctx
			}
			return nil
		}))
	defer close(release)
	cl.servers[0].HandleAsk("echo", func(_ context.Context, _ *sss.Conn, data json.RawMessage) (any, error) { return data, nil })
	w := cl.dial(0, nil)
	start := time.Now()
	w.Send(map[string]any{"type": "subscribe", "id": 1, "channel": "slow"})
	w.Send(map[string]any{"type": "ask", "id": 2, "name": "echo", "data": 1})
	w.Send(map[string]any{"type": "subscribe", "id": 3, "channel": "fast"})
	var order []string
	for len(order) < 3 {
		f := w.Expect("")
		order = append(order, fmt.Sprintf("%d:%s", f.ID, f.Type))
		if f.ID == 1 && (f.Error == nil || f.Error.Code != "timeout") {
			t.Fatalf("slow subscribe: %v, want timeout", f)
		}
	}
	if want := "2:ack 1:error 3:ack"; strings.Join(order, " ") != want {
		t.Fatalf("replies %v, want %s", order, want)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("took %v", d)
	}
	if calls.Load() != 1 {
		t.Fatalf("parser called %d times", calls.Load())
	}
}

// The session parser has a deadline too: at its expiry the upgrade is
// answered 503, so clients retry with backoff.
func TestSessionParserDeadline(t *testing.T) {
	release := make(chan struct{})
	cl := newCluster(t, 1, sss.WithAskTimeout(200*time.Millisecond),
		sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
			<-release
			return &sss.Session{}, nil
		}))
	defer close(release)
	start := time.Now()
	_, resp, err := websocket.Dial(context.Background(), cl.url(0), &websocket.DialOptions{Subprotocols: []string{sss.Subprotocol}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("dial: %v, %v; want 503", resp, err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("answered after %v", d)
	}
}

// The origin is checked before the session parser runs.
func TestOriginCheckedFirst(t *testing.T) {
	var calls atomic.Int32
	cl := newCluster(t, 1, sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
		calls.Add(1)
		return &sss.Session{}, nil
	}), sss.WithOriginPatterns("*.example.com"))
	for origin, want := range map[string]int{"https://evil.test": http.StatusForbidden, "https://app.example.com": http.StatusSwitchingProtocols} {
		h := http.Header{"Origin": {origin}}
		c, resp, _ := websocket.Dial(context.Background(), cl.url(0), &websocket.DialOptions{Subprotocols: []string{sss.Subprotocol}, HTTPHeader: h})
		if c != nil {
			c.CloseNow()
		}
		if resp == nil || resp.StatusCode != want {
			t.Fatalf("origin %s: %v, want %d", origin, resp, want)
		}
	}
	if calls.Load() != 1 {
		t.Fatalf("session parser ran %d times, want once (not for the foreign origin)", calls.Load())
	}
}

// 5. A burst of requests is answered at the pace the client reads, not
// closed as a slow consumer: 10,000 bad frames in one message, then a
// flood of subscribes past the limit.
func TestRequestBurstIsAnswered(t *testing.T) {
	cl := newCluster(t, 1, sss.WithSendQueue(64, 64<<10), sss.WithMaxSubscriptions(2), sss.WithMaxMessageSize(1<<20))
	w := cl.dial(0, nil)
	const n = 10000
	w.SendRaw(strings.Repeat("{\"type\":\"nope\",\"id\":1}\n", n))
	for i := range n {
		if f := w.Expect("error"); f.Error.Code != "bad_request" {
			t.Fatalf("reply %d: %v", i, f)
		}
	}
	var b strings.Builder
	for i := range 300 {
		fmt.Fprintf(&b, "{\"type\":\"subscribe\",\"id\":%d,\"channel\":\"c%d\"}\n", i+1, i)
	}
	w.SendRaw(b.String())
	for i := range 300 {
		f := w.Expect("")
		if want := map[bool]string{true: "ack", false: "error"}[i < 2]; f.Type != want || f.ID != uint64(i+1) {
			t.Fatalf("reply %d: %v, want %s", i, f, want)
		}
	}
	if st := cl.servers[0].Stats(); st.SlowConsumers != 0 || st.Connections != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// A connection whose reads the server pauses (a tell waiting for a handler
// slot) is not closed as silent meanwhile.
func TestPausedReaderIsNotReaped(t *testing.T) {
	cl := newCluster(t, 1, sss.WithConcurrency(1), sss.WithPing(50*time.Millisecond, 50*time.Millisecond))
	cl.servers[0].HandleTell("slow", func(ctx context.Context, _ *sss.Conn, _ json.RawMessage) error {
		select {
		case <-time.After(400 * time.Millisecond):
		case <-ctx.Done():
		}
		return nil
	})
	w := cl.dial(0, nil, wstest.NoPongs()) // only requests show it is alive
	w.Send(map[string]any{"type": "tell", "id": 1, "name": "slow"})
	w.Send(map[string]any{"type": "tell", "id": 2, "name": "slow"}) // waits, reads paused
	w.Send(map[string]any{"type": "tell", "id": 3, "name": "slow"})
	for range 3 {
		w.Expect("ack")
	}
	select {
	case <-w.Done():
		t.Fatalf("closed %d while the server paused its reads", w.CloseStatus())
	default:
	}
}

// 6. A resume's results come in request order, the user and session
// channels included.
func TestResumeResultsInRequestOrder(t *testing.T) {
	cl := newCluster(t, 1, sss.WithSessionParser(userParser))
	w := cl.dial(0, as("alice", "s"))
	pos := w.Welcome.Positions[w.Welcome.Channels.User]
	res := w.Ack(map[string]any{"type": "resume", "subscriptions": []map[string]any{
		{"channel": "$u.alice", "since": pos},
		{"channel": "own.news"},
		{"channel": w.Welcome.Channels.Session},
		{"channel": "a.first"},
	}})
	var r struct{ Subscriptions []struct{ Channel string } }
	json.Unmarshal(res.Result, &r)
	var got []string
	for _, s := range r.Subscriptions {
		got = append(got, s.Channel)
	}
	if want := []string{"$u.alice", "own.news", w.Welcome.Channels.Session, "a.first"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("results %v, want %v", got, want)
	}
}

// Errors name what the client must send, in JSON terms, never Go types;
// invalid channel characters are shown as characters.
func TestErrorMessagesSpeakJSON(t *testing.T) {
	cl := newCluster(t, 1)
	w := cl.dial(0, nil)
	for frame, want := range map[string]string{
		`{"type":"subscribe","id":1,"channel":5}`:                                      `field "channel" must be a string`,
		`{"type":"resume","id":2,"subscriptions":"x"}`:                                 `field "subscriptions" must be a list`,
		`{"type":"subscribe","id":3,"channel":"a","since":{"offset":"x","epoch":"e"}}`: `must be an integer`,
		`[1]`: `must be an object`,
	} {
		w.SendRaw(frame)
		f := w.Expect("error")
		if !strings.Contains(f.Error.Message, want) || strings.Contains(f.Error.Message, "sss.") || strings.Contains(f.Error.Message, "scaler.") {
			t.Errorf("%s: %q, want %q", frame, f.Error.Message, want)
		}
	}
	if err := sss.ValidChannel("news.é"); err == nil || !strings.Contains(err.Error(), `'é'`) {
		t.Errorf("ValidChannel: %v", err)
	}
}
