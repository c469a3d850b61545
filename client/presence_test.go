package client_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/client"
	"github.com/superscaled/sss/scaler/memory"
)

func presenceServer(t *testing.T, m *memory.Scaler) *testServer {
	return newServer(t, m,
		sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
			u := r.Header.Get("X-User")
			return &sss.Session{UserID: u, Info: map[string]string{"name": strings.ToUpper(u)}}, nil
		}),
		sss.WithPresence(func(channel string) sss.ChannelPresence {
			return sss.ChannelPresence{JoinLeave: strings.HasPrefix(channel, "room.")}
		}))
}

func user(name string) client.Option {
	h := http.Header{}
	h.Set("X-User", name)
	return client.WithHeader(h)
}

// Join and leave events reach a subscription's handlers across instances;
// the presence list and counts read what is there; a dead instance's
// clients leave.
func TestPresence(t *testing.T) {
	m := newMemory(t, memory.WithPresenceTTL(300*time.Millisecond))
	defer m.Close()
	a, b := presenceServer(t, m), presenceServer(t, m)
	ctx := ctxT(t)
	joins, leaves := make(chan client.ClientInfo, 16), make(chan client.ClientInfo, 16)
	alice := dial(t, a.url, user("alice"))
	sub, err := alice.Subscribe(ctx, "room.1",
		client.WithJoinHandler(func(ci client.ClientInfo) { joins <- ci }),
		client.WithLeaveHandler(func(ci client.ClientInfo) { leaves <- ci }))
	if err != nil {
		t.Fatal(err)
	}
	if ci := recv(t, joins); ci.User != "alice" || ci.Conn != alice.Conn().ID || string(ci.Info) != `{"name":"ALICE"}` {
		t.Fatalf("own join %+v", ci)
	}
	bob := dial(t, b.url, user("bob"))
	if _, err := bob.Subscribe(ctx, "room.1"); err != nil {
		t.Fatal(err)
	}
	if ci := recv(t, joins); ci.User != "bob" {
		t.Fatalf("join %+v", ci)
	}
	list, n, err := alice.Presence(ctx, "room.1")
	if err != nil || len(list) != 2 || n != (client.PresenceCounts{Clients: 2, Users: 2}) {
		t.Fatalf("Presence: %+v %+v %v", list, n, err)
	}
	if n, err := bob.PresenceCounts(ctx, "room.1"); err != nil || n.Clients != 2 {
		t.Fatalf("PresenceCounts: %+v %v", n, err)
	}

	// A handler changed later is used from then on.
	later := make(chan client.ClientInfo, 1)
	sub.HandleLeave(func(ci client.ClientInfo) { later <- ci })
	bob.Close()
	if ci := recv(t, later); ci.User != "bob" {
		t.Fatalf("leave %+v", ci)
	}

	// Errors: not a subscriber, a channel without presence.
	carol := dial(t, b.url, user("carol"))
	if _, _, err := carol.Presence(ctx, "room.1"); !errors.Is(err, client.ErrForbidden) {
		t.Fatalf("non-subscriber: %v", err)
	}
	if _, err := carol.Subscribe(ctx, "plain"); err != nil {
		t.Fatal(err)
	}
	if _, err := carol.PresenceCounts(ctx, "plain"); !errors.Is(err, client.ErrNotSupported) {
		t.Fatalf("untracked channel: %v", err)
	}

	// Carol joins; her instance dies: alice hears her leave.
	if _, err := carol.Subscribe(ctx, "room.1"); err != nil {
		t.Fatal(err)
	}
	if ci := recv(t, joins); ci.User != "carol" {
		t.Fatalf("join %+v", ci)
	}
	m.Crash(b.srv.NodeID())
	if ci := recv(t, later); ci.User != "carol" {
		t.Fatalf("leave of the dead instance's client %+v", ci)
	}
	if _, n, err := alice.Presence(context.Background(), "room.1"); err != nil || n.Clients != 1 {
		t.Fatalf("after the death: %+v %v", n, err)
	}
}
