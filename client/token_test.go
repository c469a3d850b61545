package client_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/client"
)

// Credentials that expire: the server closes with 4007 at the token's
// expiry, the client asks WithToken for a fresh one and is back at once,
// its subscription resumed; a token the server refuses stops it.
func TestTokenRefresh(t *testing.T) {
	ts := newServer(t, nil, sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || tok == "revoked" {
			return nil, sss.ErrUnauthorized
		}
		return &sss.Session{UserID: "alice", SessionID: "s", ExpiresAt: time.Now().Add(400 * time.Millisecond)}, nil
	}))
	var issued, backoffs atomic.Int32
	revoked := atomic.Bool{}
	reconnected := make(chan client.ConnInfo, 4)
	c := dial(t, ts.url, client.WithToken(func(ctx context.Context) (string, error) {
		if revoked.Load() {
			return "revoked", nil
		}
		return "t" + string(rune('0'+issued.Add(1))), nil
	}), client.WithHooks(client.Hooks{OnReconnect: func(ci client.ConnInfo) { reconnected <- ci }}),
		client.WithReconnectDelay(time.Second, 2*time.Second),
		client.WithBackoffObserver(func(time.Duration) { backoffs.Add(1) }))
	ctx := ctxT(t)
	got, msgs := messages()
	if _, err := c.Subscribe(ctx, "news", client.WithMessageHandler(got)); err != nil {
		t.Fatal(err)
	}
	recv(t, reconnected)
	// At once, without waiting for a backoff delay.
	if n := backoffs.Load(); n != 0 {
		t.Fatalf("%d backoff delays drawn before reconnecting, want none", n)
	}
	if n := issued.Load(); n != 2 {
		t.Fatalf("%d tokens issued, want 2", n)
	}
	ts.srv.Publish(ctx, "news", "e", 1)
	if m := recv(t, msgs); string(m.Data) != "1" {
		t.Fatalf("message %+v", m)
	}
	revoked.Store(true)
	waitFor(t, "the client to stop", func() bool { return c.Status() == client.StatusClosed })
	if !errors.Is(c.Err(), client.ErrUnauthorized) {
		t.Fatalf("Err %v", c.Err())
	}
}
