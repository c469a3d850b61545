package sss_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/internal/wstest"
)

// membershipCluster is two servers whose subscription parser refuses
// "vip" channels to clients: only the server puts anyone there.
func membershipCluster(t *testing.T, opts ...sss.Option) *cluster {
	return newCluster(t, 2, append([]sss.Option{
		sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
			s := &sss.Session{UserID: r.Header.Get("X-User"), SessionID: r.Header.Get("X-Session")}
			if g := r.Header.Get("X-Groups"); g != "" {
				s.Channels = strings.Split(g, ",")
			}
			return s, nil
		}),
		sss.WithSubscriptionParser(func(ctx context.Context, c *sss.Conn, channel string, q json.RawMessage) error {
			if strings.HasPrefix(channel, "vip") {
				return sss.Errorf(sss.CodeForbidden, "members only")
			}
			return nil
		}),
	}, opts...)...)
}

func expectSubscribed(t *testing.T, w *wstest.Client, channel string) wstest.Frame {
	t.Helper()
	f := w.Expect("subscribed")
	if f.Channel != channel {
		t.Fatalf("subscribed %v, want %s", f, channel)
	}
	return f
}

// The server subscribes every connection of a user, on every instance, to
// a channel its parser refuses to clients; the client cannot leave it; the
// server ends it.
func TestServerSubscribesUser(t *testing.T) {
	cl := membershipCluster(t)
	ctx := context.Background()
	a0 := cl.dial(0, as("alice", "phone"))
	a1 := cl.dial(1, as("alice", "laptop"))
	bob := cl.dial(1, as("bob", "b"))
	for _, w := range []*wstest.Client{a0, a1, bob} {
		w.SendRaw(`{"type":"ready"}`)
	}
	a0.Fails(map[string]any{"type": "subscribe", "channel": "vip.lounge"}, "forbidden")
	if err := cl.servers[1].Subscribe(ctx, sss.ToUser("alice"), "vip.lounge"); err != nil {
		t.Fatal(err)
	}
	for _, w := range []*wstest.Client{a0, a1} {
		expectSubscribed(t, w, "vip.lounge")
	}
	cl.servers[0].Publish(ctx, "vip.lounge", "e", "welcome")
	for _, w := range []*wstest.Client{a0, a1} {
		if p, _ := nextPub(t, w, 5*time.Second); p.Channel != "vip.lounge" {
			t.Fatalf("pub %v", p)
		}
	}
	bob.Nothing(50 * time.Millisecond)
	a0.Fails(map[string]any{"type": "unsubscribe", "channel": "vip.lounge"}, "forbidden")

	if err := cl.servers[0].Unsubscribe(ctx, sss.ToUser("alice"), "vip.lounge"); err != nil {
		t.Fatal(err)
	}
	for _, w := range []*wstest.Client{a0, a1} {
		if f := w.Expect("unsubscribed"); f.Channel != "vip.lounge" {
			t.Fatalf("unsubscribed %v", f)
		}
	}
	cl.servers[0].Publish(ctx, "vip.lounge", "e", "gone")
	a0.Nothing(50 * time.Millisecond)
	a1.Nothing(50 * time.Millisecond)
}

// What the server subscribes a user, a session or a connection to is
// remembered: the user's later connections, and the session's, get it
// from the start, without the client asking.
func TestServerSubscriptionsAreRemembered(t *testing.T) {
	cl := membershipCluster(t)
	ctx := context.Background()
	phone := cl.dial(0, as("alice", "phone"))
	phone.SendRaw(`{"type":"ready"}`)
	if err := cl.servers[0].Subscribe(ctx, sss.ToUser("alice"), "vip.user"); err != nil {
		t.Fatal(err)
	}
	if err := cl.servers[1].Subscribe(ctx, sss.ToSession("alice", "phone"), "vip.session"); err != nil {
		t.Fatal(err)
	}
	if err := cl.servers[1].Subscribe(ctx, sss.ToConn(phone.Welcome.Conn), "vip.conn"); err != nil {
		t.Fatal(err)
	}
	first := map[string]bool{}
	for range 3 {
		first[phone.Expect("subscribed").Channel] = true
	}
	if !first["vip.user"] || !first["vip.session"] || !first["vip.conn"] {
		t.Fatalf("subscribed to %v", first)
	}
	laptop := cl.dial(1, as("alice", "laptop")) // another session: the user's only
	laptop.SendRaw(`{"type":"ready"}`)
	expectSubscribed(t, laptop, "vip.user")
	laptop.Nothing(100 * time.Millisecond)

	phone2 := cl.dial(1, as("alice", "phone")) // the same session again
	eventually(t, "the session's server subscriptions to be stored", func() bool {
		return cl.servers[0].Stats().StoreBacklog == 0 && cl.servers[1].Stats().StoreBacklog == 0
	})
	phone2.SendRaw(`{"type":"ready"}`)
	got := map[string]bool{} // user and session orders travel apart: any order
	for range 3 {
		got[phone2.Expect("subscribed").Channel] = true
	}
	if !got["vip.user"] || !got["vip.session"] || !got["vip.conn"] {
		t.Fatalf("the session's next connection got %v", got)
	}
}

// The session parser names channels at login; a resume keeps the server's
// subscriptions without the client listing them and without the parser,
// catches up on those it lists with a position, and refuses one the server
// ended meanwhile.
func TestServerSubscriptionsAcrossResume(t *testing.T) {
	cl := membershipCluster(t)
	ctx := context.Background()
	h := as("carol", "c1")
	h.Set("X-Groups", "vip.team,vip.all")
	w := cl.dial(0, h)
	w.SendRaw(`{"type":"ready"}`)
	expectSubscribed(t, w, "vip.all") // in channel order
	teamF := expectSubscribed(t, w, "vip.team")
	w.Subscribe("news")
	cl.servers[0].Subscribe(ctx, sss.ToConn(w.Welcome.Conn), "vip.extra")
	extra := expectSubscribed(t, w, "vip.extra")
	eventually(t, "the store to settle", func() bool { return cl.servers[0].Stats().StoreBacklog == 0 })
	w.CloseNow()

	cl.servers[1].Publish(ctx, "vip.team", "e", "missed")
	cl.servers[1].Unsubscribe(ctx, sss.ToSession("carol", "c1"), "vip.extra")
	eventually(t, "the store to settle", func() bool { return cl.servers[1].Stats().StoreBacklog == 0 })

	w2 := cl.dial(1, h)
	res := w2.Ack(map[string]any{"type": "resume", "subscriptions": []map[string]any{
		{"channel": "news"},
		{"channel": "vip.team", "server": true, "since": map[string]any{"offset": teamF.Offset, "epoch": teamF.Epoch}},
		{"channel": "vip.extra", "server": true, "since": map[string]any{"offset": extra.Offset, "epoch": extra.Epoch}},
	}})
	var r struct {
		Subscriptions []struct {
			Channel   string
			Server    bool
			Recovered *bool
			Error     *struct{ Code string }
		}
	}
	json.Unmarshal(res.Result, &r)
	if len(r.Subscriptions) != 3 || r.Subscriptions[1].Channel != "vip.team" || !r.Subscriptions[1].Server ||
		r.Subscriptions[1].Recovered == nil || !*r.Subscriptions[1].Recovered ||
		r.Subscriptions[2].Error == nil || r.Subscriptions[2].Error.Code != "not_found" {
		t.Fatalf("resume result %s", res.Result)
	}
	if p, _ := nextPub(t, w2, 5*time.Second); p.Channel != "vip.team" || string(p.Data) != `"missed"` {
		t.Fatalf("catch-up %v", p)
	}
	// Not listed: announced after the ack.
	expectSubscribed(t, w2, "vip.all")
	w2.Nothing(100 * time.Millisecond)
}
