package integration

import (
	"net/http"
	"testing"
	"time"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/client"
)

// On Redis+MongoDB, across three instances: a server subscription of a
// user reaches its connections everywhere and is remembered for its later
// ones; a broadcast reaches everyone; history reads and a subscription from
// their position lose nothing; a client with no state restores its
// session's subscriptions from MongoDB, caught up.
func TestMongoRedisMembershipAndHistory(t *testing.T) {
	cl := newCluster(t, newBackend(t), 3)
	membershipAndHistory(t, cl.servers, cl.urls)
}

// The same on NATS: JetStream history, sessions in a key-value bucket.
func TestNATSMembershipAndHistory(t *testing.T) {
	_, addr := runNATS(t)
	cl := newNATSCluster(t, 3, func(int) string { return natsURLs(addr) }, nil)
	membershipAndHistory(t, cl.servers, cl.urls)
}

// membershipAndHistory runs on three instances, servers[i] at urls[i],
// whose session parser is sessionFromHeaders.
func membershipAndHistory(t *testing.T, servers []*sss.Server, urls []string) {
	ctx := ctxT(t)
	type got struct {
		subscribed chan string
		msgs       chan client.Message
		broadcasts chan client.Message
	}
	dialAs := func(i int, user, session string, opts ...client.Option) (*client.Client, got) {
		g := got{make(chan string, 8), make(chan client.Message, 64), make(chan client.Message, 8)}
		c, err := client.Dial(ctx, urls[i], append([]client.Option{
			client.WithHeader(http.Header{"X-User": {user}, "X-Session": {session}}),
			client.WithHooks(client.Hooks{
				OnSubscribed: func(s *client.Subscription) {
					s.HandleMessage(func(m client.Message) { g.msgs <- m })
					g.subscribed <- s.Channel()
				},
				OnBroadcast: func(m client.Message) { g.broadcasts <- m },
			}),
		}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, g
	}
	wait := func(what string, ch chan string) string {
		t.Helper()
		select {
		case v := <-ch:
			return v
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s", what)
			return ""
		}
	}
	_, a0 := dialAs(0, "ann", "phone")
	_, a1 := dialAs(1, "ann", "laptop")
	if err := servers[2].Subscribe(ctx, sss.ToUser("ann"), "team.ops"); err != nil {
		t.Fatal(err)
	}
	for _, g := range []got{a0, a1} {
		if ch := wait("subscribed", g.subscribed); ch != "team.ops" {
			t.Fatalf("subscribed to %s", ch)
		}
	}
	poll(t, 10*time.Second, "the server subscription to be stored", func() bool { return servers[2].Stats().StoreBacklog == 0 })
	_, a2 := dialAs(2, "ann", "tablet") // a later connection of the user
	if ch := wait("subscribed", a2.subscribed); ch != "team.ops" {
		t.Fatalf("later connection subscribed to %s", ch)
	}
	servers[0].Publish(ctx, "team.ops", "e", "hi")
	for _, g := range []got{a0, a1, a2} {
		select {
		case m := <-g.msgs:
			if m.Channel != "team.ops" || m.Time.IsZero() {
				t.Fatalf("message %+v", m)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no message on the server subscription")
		}
	}
	servers[1].Broadcast(ctx, "notice", 1)
	for _, g := range []got{a0, a1, a2} {
		select {
		case <-g.broadcasts:
		case <-time.After(10 * time.Second):
			t.Fatal("no broadcast")
		}
	}

	// History then live, from another instance than the publisher's.
	for i := 1; i <= 20; i++ {
		servers[i%3].Publish(ctx, "feed", "n", i)
	}
	reader, _ := dialAs(1, "rob", "r")
	msgs, pos, err := reader.History(ctx, "feed", client.HistoryLimit(5))
	if err != nil || len(msgs) != 5 || string(msgs[0].Data) != "16" || pos.Offset != 20 {
		t.Fatalf("History: %v %v %v", msgs, pos, err)
	}
	live := make(chan client.Message, 4)
	servers[0].Publish(ctx, "feed", "n", 21)
	if _, err := reader.Subscribe(ctx, "feed", client.WithSince(pos), client.WithMessageHandler(func(m client.Message) { live <- m })); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-live:
		if string(m.Data) != "21" {
			t.Fatalf("after the history: %s", m.Data)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("nothing after the history")
	}

	// A client with no state restores its session's subscriptions.
	first, _ := dialAs(0, "cy", "tab")
	if _, err := first.Subscribe(ctx, "room.x"); err != nil {
		t.Fatal(err)
	}
	first.Close()
	poll(t, 10*time.Second, "the session's position to be stored", func() bool {
		st := servers[0].Stats()
		return st.Connections == 1 && st.StoreBacklog == 0 // a0 is left
	})
	servers[1].Publish(ctx, "room.x", "e", "while away")
	_, again := dialAs(2, "cy", "tab", client.WithRestore())
	if ch := wait("restored", again.subscribed); ch != "room.x" {
		t.Fatalf("restored %s", ch)
	}
	select {
	case m := <-again.msgs:
		if string(m.Data) != `"while away"` {
			t.Fatalf("caught up %s", m.Data)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the restored subscription did not catch up")
	}
}
