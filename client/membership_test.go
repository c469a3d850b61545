package client_test

import (
	"errors"
	"net/http"
	"testing"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/client"
)

// A subscription the server makes is announced by OnSubscribed, where the
// application sets its handlers before its first publication; the client
// lists it, cannot leave it, keeps it across a reconnect, and learns when
// the server ends it.
func TestServerSubscriptions(t *testing.T) {
	m := newMemory(t)
	defer m.Close()
	r := newRestartable(t, nil, sss.WithScaler(m), sss.WithSessionParser(userSession))
	other := newServer(t, m)
	onMsg, msgs := messages()
	subscribed := make(chan *client.Subscription, 4)
	unsubscribed := make(chan *client.Subscription, 4)
	ev := newEvents()
	c := dial(t, r.url, fastRetry, asUser("ann"), client.WithHeader(http.Header{"X-Session": {"s1"}}), hooks(watch(ev), client.Hooks{
		OnSubscribed: func(s *client.Subscription) {
			s.HandleMessage(onMsg)
			subscribed <- s
		},
		OnUnsubscribed: func(s *client.Subscription) { unsubscribed <- s },
	}))
	ctx := ctxT(t)
	if err := other.srv.Subscribe(ctx, sss.ToUser("ann"), "team.ops"); err != nil {
		t.Fatal(err)
	}
	sub := recv(t, subscribed)
	if sub.Channel() != "team.ops" || !sub.Server() || len(c.Subscriptions()) != 1 {
		t.Fatalf("subscription %q server %v; list %v", sub.Channel(), sub.Server(), c.Subscriptions())
	}
	other.srv.Publish(ctx, "team.ops", "e", 1)
	if m := recv(t, msgs); m.Channel != "team.ops" {
		t.Fatalf("message %+v", m)
	}
	if err := sub.Unsubscribe(ctx); !errors.Is(err, client.ErrForbidden) {
		t.Fatalf("Unsubscribe of a server subscription: %v", err)
	}

	// Across a reconnect it stays, and catches up.
	r.stop()
	ev.waitEvent(t, "status:reconnecting")
	other.srv.Publish(ctx, "team.ops", "e", 2)
	r.start()
	ev.waitEvent(t, "reconnect")
	if m := recv(t, msgs); string(m.Data) != "2" {
		t.Fatalf("after the reconnect: %+v", m)
	}
	if st := c.Stats(); st.Duplicates != 0 || st.Gaps != 0 {
		t.Fatalf("stats %+v", st)
	}

	if err := other.srv.Unsubscribe(ctx, sss.ToUser("ann"), "team.ops"); err != nil {
		t.Fatal(err)
	}
	if s := recv(t, unsubscribed); s != sub || s.Status() != client.SubUnsubscribed || len(c.Subscriptions()) != 0 {
		t.Fatalf("unsubscribed %v, status %v", s.Channel(), s.Status())
	}
}

// A client that starts with no state restores what the session store kept
// for its session, and catches up on what was published since its
// session's last connection ended.
func TestRestoreFromStore(t *testing.T) {
	m := newMemory(t)
	defer m.Close()
	ts := newServer(t, m, sss.WithSessionParser(userSession))
	ctx := ctxT(t)
	who := client.WithHeader(http.Header{"X-User": {"bo"}, "X-Session": {"tab"}})
	first := dial(t, ts.url, who)
	if _, err := first.Subscribe(ctx, "room.a", client.WithQuery("pw")); err != nil {
		t.Fatal(err)
	}
	ts.srv.Publish(ctx, "room.a", "e", "seen")
	waitFor(t, "the store to be written", func() bool { return ts.srv.Stats().StoreBacklog == 0 })
	first.Close()
	waitFor(t, "the connection's end to be stored", func() bool {
		return ts.srv.Stats().Connections == 0 && ts.srv.Stats().StoreBacklog == 0
	})
	ts.srv.Publish(ctx, "room.a", "e", "missed")

	onMsg, msgs := messages()
	restored := make(chan *client.Subscription, 2)
	second := dial(t, ts.url, who, client.WithRestore(), client.WithHooks(client.Hooks{OnSubscribed: func(s *client.Subscription) {
		s.HandleMessage(onMsg)
		restored <- s
	}}))
	s := recv(t, restored)
	if s.Channel() != "room.a" || string(s.Query()) != `"pw"` || s.Server() {
		t.Fatalf("restored %q query %s", s.Channel(), s.Query())
	}
	if m := recv(t, msgs); string(m.Data) != `"missed"` {
		t.Fatalf("caught up %+v", m)
	}
	if got := second.Subscriptions(); len(got) != 1 {
		t.Fatalf("subscriptions %v", got)
	}
}

// When the server ends a subscription below one the client holds
// ("news.uk" under "news"), the offsets of "news" jump over what came
// through "news.uk": that is no gap.
func TestServerUnsubscribeChildNoFalseGap(t *testing.T) {
	m := newMemory(t)
	defer m.Close()
	ts := newServer(t, m, sss.WithSessionParser(userSession))
	onMsg, msgs := messages()
	subscribed := make(chan *client.Subscription, 2)
	unsubscribed := make(chan *client.Subscription, 2)
	gaps := make(chan client.RecoverInfo, 4)
	c := dial(t, ts.url, asUser("gus"), client.WithHooks(client.Hooks{
		OnSubscribed: func(s *client.Subscription) {
			s.HandleMessage(onMsg)
			subscribed <- s
		},
		OnUnsubscribed: func(s *client.Subscription) { unsubscribed <- s },
		OnGap:          func(info client.RecoverInfo) { gaps <- info },
	}))
	ctx := ctxT(t)
	if _, err := c.Subscribe(ctx, "news", client.WithMessageHandler(onMsg)); err != nil {
		t.Fatal(err)
	}
	if err := ts.srv.Subscribe(ctx, sss.ToUser("gus"), "news.uk"); err != nil {
		t.Fatal(err)
	}
	recv(t, subscribed)
	ts.srv.Publish(ctx, "news", "e", 1)    // offset 1 of news
	ts.srv.Publish(ctx, "news.uk", "e", 2) // through news.uk: offset 2 of news too, unseen there
	for _, want := range []string{"news:1", "news.uk:2"} {
		if m := recv(t, msgs); m.Sub+":"+string(m.Data) != want {
			t.Fatalf("got %s:%s, want %s", m.Sub, m.Data, want)
		}
	}
	if err := ts.srv.Unsubscribe(ctx, sss.ToUser("gus"), "news.uk"); err != nil {
		t.Fatal(err)
	}
	recv(t, unsubscribed)
	ts.srv.Publish(ctx, "news", "e", 3) // offset 3: news jumps from 1, and loses nothing
	ts.srv.Publish(ctx, "news.uk", "e", 4)
	for _, want := range []string{"news:3", "news:4"} {
		if m := recv(t, msgs); m.Sub+":"+string(m.Data) != want {
			t.Fatalf("got %s:%s, want %s", m.Sub, m.Data, want)
		}
	}
	select {
	case info := <-gaps:
		t.Fatalf("false gap on %s: %s", info.Channel, info.Reason)
	default:
	}
	if st := c.Stats(); st.Gaps != 0 {
		t.Fatalf("stats %+v, want no gap", st)
	}
}

// A server subscription the server ended while the client was away comes
// back from the resume as not_found: the client reports it unsubscribed
// by the server (OnUnsubscribed), not refused.
func TestServerUnsubscribedWhileAway(t *testing.T) {
	m := newMemory(t)
	defer m.Close()
	r := newRestartable(t, nil, sss.WithScaler(m), sss.WithSessionParser(userSession))
	other := newServer(t, m)
	subscribed := make(chan *client.Subscription, 4)
	unsubscribed := make(chan *client.Subscription, 4)
	refused := make(chan *client.Subscription, 4)
	ev := newEvents()
	c := dial(t, r.url, fastRetry, asUser("abe"), client.WithHeader(http.Header{"X-Session": {"s1"}}), hooks(watch(ev), client.Hooks{
		OnSubscribed:   func(s *client.Subscription) { subscribed <- s },
		OnUnsubscribed: func(s *client.Subscription) { unsubscribed <- s },
		OnRefused:      func(s *client.Subscription, err error) { refused <- s },
	}))
	ctx := ctxT(t)
	if err := other.srv.Subscribe(ctx, sss.ToUser("abe"), "team.ops"); err != nil {
		t.Fatal(err)
	}
	sub := recv(t, subscribed)
	r.stop()
	ev.waitEvent(t, "status:reconnecting")
	if err := other.srv.Unsubscribe(ctx, sss.ToUser("abe"), "team.ops"); err != nil {
		t.Fatal(err)
	}
	r.start()
	ev.waitEvent(t, "reconnect")
	if s := recv(t, unsubscribed); s != sub || s.Status() != client.SubUnsubscribed || s.Err() != nil {
		t.Fatalf("unsubscribed %q, status %v, err %v", s.Channel(), s.Status(), s.Err())
	}
	select {
	case s := <-refused:
		t.Fatalf("%q reported refused", s.Channel())
	default:
	}
	if got := c.Subscriptions(); len(got) != 0 {
		t.Fatalf("subscriptions %v", got)
	}
}
