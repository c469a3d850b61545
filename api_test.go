package sss_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/scaler"
)

// Every option checks its value, and New returns the error.
func TestOptionsValidate(t *testing.T) {
	bad := map[string]sss.Option{
		"WithScaler(nil)":             sss.WithScaler(nil),
		"WithSessionParser(nil)":      sss.WithSessionParser(nil),
		"WithSubscriptionParser(nil)": sss.WithSubscriptionParser(nil),
		"WithPublishParser(nil)":      sss.WithPublishParser(nil),
		"WithLogger(nil)":             sss.WithLogger(nil),
		"WithOriginPatterns([)":       sss.WithOriginPatterns("ok.example.com", "["),
		"WithLossyChannels(nil)":      sss.WithLossyChannels(nil),
		"WithMaxMessageSize(0)":       sss.WithMaxMessageSize(0),
		"WithSendQueue(0, 1)":         sss.WithSendQueue(0, 1),
		"WithSendQueue(1, -1)":        sss.WithSendQueue(1, -1),
		"WithMaxSubscriptions(0)":     sss.WithMaxSubscriptions(0),
		"WithPing(0, 1)":              sss.WithPing(0, time.Second),
		"WithPing(1, -1)":             sss.WithPing(time.Second, -1),
		"WithWriteTimeout(0)":         sss.WithWriteTimeout(0),
		"WithAskTimeout(-1)":          sss.WithAskTimeout(-1),
		"WithConcurrency(0)":          sss.WithConcurrency(0),
		"WithRateLimit(0, 1)":         sss.WithRateLimit(0, 1),
		"WithRateLimit(1, 0)":         sss.WithRateLimit(1, 0),
		"WithMaxPayloadSize(0)":       sss.WithMaxPayloadSize(0),
	}
	for name, o := range bad {
		if srv, err := sss.New(o); err == nil {
			srv.Close()
			t.Errorf("New(%s) accepted it", name)
		}
	}
	if srv, err := sss.New(sss.WithSendQueue(16, 1<<20), sss.WithMaxPayloadSize(1<<20)); err == nil {
		srv.Close()
		t.Error("New accepted a payload limit larger than half the send queue")
	}
	srv, err := sss.New(sss.WithOriginPatterns("*.example.com"), sss.WithSendQueue(1, 1))
	if err != nil {
		t.Fatalf("valid options refused: %v", err)
	}
	srv.Close()
}

// Each disconnect reason is its own value: no error code sentinel and no
// other reason matches it.
func TestDisconnectReasonsAreDistinct(t *testing.T) {
	reasons := []error{sss.ErrClientClosed, sss.ErrServerClosed, sss.ErrPingTimeout, sss.ErrSlowConsumer,
		sss.ErrWriteFailed, sss.ErrKicked, sss.ErrResync, sss.ErrMessageTooBig}
	codes := []error{sss.ErrBadRequest, sss.ErrUnauthorized, sss.ErrForbidden, sss.ErrNotFound, sss.ErrConflict,
		sss.ErrTimeout, sss.ErrTooLarge, sss.ErrRateLimited, sss.ErrLimitExceeded, sss.ErrUnavailable, sss.ErrInternal}
	for i, r := range reasons {
		for j, o := range reasons {
			if i != j && (errors.Is(r, o) || errors.Is(o, r)) {
				t.Errorf("%v and %v match each other", r, o)
			}
		}
		for _, c := range codes {
			if errors.Is(r, c) || errors.Is(c, r) {
				t.Errorf("%v and %v match each other", r, c)
			}
		}
	}
	if errors.Is(sss.Errorf(sss.CodeRateLimited, "slow consumer"), sss.ErrSlowConsumer) {
		t.Error("a rate_limited error matches ErrSlowConsumer")
	}
}

// A client that does not read is closed 4002 and reported as a slow
// consumer, not as a rate-limit error.
func TestSlowConsumerReason(t *testing.T) {
	reasons := make(chan error, 1)
	srv, err := sss.New(sss.WithSendQueue(4, 1<<20), sss.WithHooks(sss.Hooks{
		OnDisconnect: func(_ *sss.Conn, reason error) { reasons <- reason },
	}))
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(func() { srv.Close(); ts.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(ts.URL, "http"), &websocket.DialOptions{Subprotocols: []string{sss.Subprotocol}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	ws.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","id":1,"channel":"firehose"}`))
	// Publish far more than the queue holds while the client reads nothing.
	deadline := time.Now().Add(5 * time.Second)
	for srv.Stats().SlowConsumers == 0 && time.Now().Before(deadline) {
		srv.Publish(ctx, "firehose", "e", strings.Repeat("x", 4096))
	}
	select {
	case r := <-reasons:
		if !errors.Is(r, sss.ErrSlowConsumer) || errors.Is(r, sss.ErrRateLimited) {
			t.Fatalf("reason %v: want ErrSlowConsumer and not ErrRateLimited", r)
		}
	case <-ctx.Done():
		t.Fatal("no disconnect")
	}
}

// Once Shutdown or Close began, the server's API says ErrServerClosed.
func TestClosedServerAPI(t *testing.T) {
	for _, how := range []string{"Close", "Shutdown"} {
		t.Run(how, func(t *testing.T) {
			srv, err := sss.New()
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if err := srv.Publish(ctx, "warm", "e", 1); err != nil { // joins the scaler
				t.Fatal(err)
			}
			if how == "Close" {
				srv.Close()
			} else {
				srv.Shutdown(ctx)
			}
			_, askErr := srv.Ask(ctx, sss.ToConn(srv.NodeID()+".x"), "q", nil)
			for name, err := range map[string]error{
				"Publish":        srv.Publish(ctx, "c", "e", 1),
				"PublishUser":    srv.PublishUser(ctx, "u", "e", 1),
				"PublishSession": srv.PublishSession(ctx, "u", "s", "e", 1),
				"Tell(user)":     srv.Tell(ctx, sss.ToUser("u"), "t", 1),
				"Tell(conn)":     srv.Tell(ctx, sss.ToConn("n.c"), "t", 1),
				"Ask":            askErr,
				"Disconnect":     srv.Disconnect(ctx, sss.ToSession("u", "s"), "bye", false),
			} {
				if !errors.Is(err, sss.ErrServerClosed) {
					t.Errorf("%s after %s: %v, want ErrServerClosed", name, how, err)
				}
			}
		})
	}
}

// Ask reaches connections only; targets are checked; a connection that is
// not there is not_found for Ask and nothing for Tell.
func TestTargets(t *testing.T) {
	srv, err := sss.New()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()
	for _, tg := range []sss.Target{sss.ToUser("u"), sss.ToSession("u", "s")} {
		if _, err := srv.Ask(ctx, tg, "q", nil); !errors.Is(err, sss.ErrBadRequest) {
			t.Errorf("Ask(%v): %v, want bad_request", tg, err)
		}
	}
	for _, tg := range []sss.Target{{}, sss.ToUser(""), sss.ToConn(""), sss.ToSession("u", "")} {
		if _, err := srv.Ask(ctx, tg, "q", nil); !errors.Is(err, sss.ErrBadRequest) {
			t.Errorf("Ask(%v): %v, want bad_request", tg, err)
		}
		if err := srv.Tell(ctx, tg, "t", nil); !errors.Is(err, sss.ErrBadRequest) {
			t.Errorf("Tell(%v): %v, want bad_request", tg, err)
		}
		if err := srv.Disconnect(ctx, tg, "", false); !errors.Is(err, sss.ErrBadRequest) {
			t.Errorf("Disconnect(%v): %v, want bad_request", tg, err)
		}
	}
	for _, id := range []string{"nosuchnode.c", srv.NodeID() + ".nosuchconn"} {
		if _, err := srv.Ask(ctx, sss.ToConn(id), "q", nil); !errors.Is(err, sss.ErrNotFound) {
			t.Errorf("Ask(%s): %v, want not_found", id, err)
		}
		if err := srv.Tell(ctx, sss.ToConn(id), "t", nil); err != nil {
			t.Errorf("Tell(%s): %v, want nil", id, err)
		}
		if err := srv.Disconnect(ctx, sss.ToConn(id), "", false); err != nil {
			t.Errorf("Disconnect(%s): %v, want nil", id, err)
		}
	}
}

// Subscriptions are stored for every session the parser names, whatever
// its id looks like, and never for an anonymous one.
func TestNamedSessionsAreStored(t *testing.T) {
	m := newMemory(t)
	parser := func(r *http.Request) (*sss.Session, error) {
		return &sss.Session{SessionID: r.Header.Get("X-Session")}, nil
	}
	srv, err := sss.New(sss.WithScaler(m), sss.WithSessionParser(parser))
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(func() { srv.Close(); ts.Close(); m.Close() })
	node, err := m.Join(context.Background(), "probe", nopHandler{})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	store := node.(scaler.SessionStore)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, id := range []string{"anon-1", "s2", ""} {
		h := http.Header{}
		h.Set("X-Session", id)
		ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(ts.URL, "http"), &websocket.DialOptions{Subprotocols: []string{sss.Subprotocol}, HTTPHeader: h})
		if err != nil {
			t.Fatal(err)
		}
		defer ws.CloseNow()
		ws.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","id":1,"channel":"room"}`))
		for { // up to the ack
			_, msg, err := ws.Read(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(msg), `"type":"ack"`) {
				break
			}
		}
		if id == "" {
			continue
		}
		eventually(t, "session "+id+" stored with [room]", func() bool { // written behind
			subs, err := store.Subscriptions(ctx, "0::"+id)
			return err == nil && len(subs) == 1 && subs[0].Channel == "room"
		})
	}
	if got := srv.Stats().Subscriptions; got != 3 {
		t.Fatalf("%d subscriptions, want 3", got)
	}
}

type nopHandler struct{}

func (nopHandler) HandleDelivery(scaler.Delivery) {}
func (nopHandler) HandleMessage(string, []byte)   {}
func (nopHandler) HandleMissed(string)            {}
