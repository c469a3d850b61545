package sss_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/internal/wstest"
	"github.com/superscaled/sss/scaler"
	"github.com/superscaled/sss/scaler/memory"
)

// presenceOptions: "room.*" channels announce joins and leaves, "lobby"
// only tracks; the session parser names users and gives them a public name.
func presenceOptions(extra ...sss.Option) []sss.Option {
	return append([]sss.Option{
		sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
			s := &sss.Session{UserID: r.Header.Get("X-User"), SessionID: r.Header.Get("X-Session"), Data: "secret"}
			if n := r.Header.Get("X-Name"); n != "" {
				s.Info = map[string]string{"name": n}
			}
			return s, nil
		}),
		sss.WithPresence(func(channel string) sss.ChannelPresence {
			switch {
			case strings.HasPrefix(channel, "room."):
				return sss.ChannelPresence{JoinLeave: true}
			case channel == "lobby":
				return sss.ChannelPresence{Track: true}
			}
			return sss.ChannelPresence{}
		}),
	}, extra...)
}

func named(user, session, name string) http.Header {
	h := as(user, session)
	h.Set("X-Name", name)
	return h
}

// presenceClient is a client as join, leave and presence frames show it.
type presenceClient struct {
	Conn string          `json:"conn"`
	User string          `json:"user"`
	Info json.RawMessage `json:"info"`
	// Session must never be there.
	Session *string `json:"session"`
}

// expectPresence takes the next frame, which must be a join or leave of
// user on channel; it returns the client it names.
func expectPresence(t *testing.T, w *wstest.Client, typ, channel, user string) presenceClient {
	t.Helper()
	f := w.Expect(typ)
	var c presenceClient
	if err := json.Unmarshal(f.Client, &c); err != nil {
		t.Fatalf("%s frame %v: %v", typ, f, err)
	}
	if f.Channel != channel || c.User != user || c.Conn == "" || c.Session != nil {
		t.Fatalf("got %s %v, want %s of %s on %s (with a conn, without a session)", typ, f, typ, user, channel)
	}
	return c
}

type presenceResult struct {
	Counts  sss.PresenceCounts `json:"counts"`
	Clients []presenceClient   `json:"clients"`
	More    bool               `json:"more"`
}

func readPresence(t *testing.T, w *wstest.Client, channel string, countsOnly bool) presenceResult {
	t.Helper()
	req := map[string]any{"type": "presence", "channel": channel}
	if countsOnly {
		req["counts"] = true
	}
	f := w.Ack(req)
	var r presenceResult
	if err := json.Unmarshal(f.Result, &r); err != nil {
		t.Fatalf("presence result %s: %v", f.Result, err)
	}
	return r
}

func users(list []presenceClient) []string {
	out := make([]string, 0, len(list))
	for _, c := range list {
		out = append(out, c.User)
	}
	slices.Sort(out)
	return out
}

// Presence and join/leave across three instances: who comes, who goes by
// unsubscribing or disconnecting, what a client and the server read.
func TestPresenceAcrossInstances(t *testing.T) {
	var mu sync.Mutex
	var unsubs []string
	var atDisconnect []string
	cl := newCluster(t, 3, presenceOptions(sss.WithHooks(sss.Hooks{
		OnUnsubscribe: func(c *sss.Conn, channel string) {
			mu.Lock()
			unsubs = append(unsubs, c.UserID()+":"+channel)
			mu.Unlock()
		},
		OnDisconnect: func(c *sss.Conn, reason error) {
			mu.Lock()
			atDisconnect = append(atDisconnect, c.UserID()+":"+strings.Join(c.Subscriptions(), ","))
			mu.Unlock()
		},
	}))...)
	ctx := context.Background()

	alice := cl.dial(0, named("alice", "a1", "Alice"))
	alice.Subscribe("room.1")
	self := expectPresence(t, alice, "join", "room.1", "alice")
	if string(self.Info) != `{"name":"Alice"}` {
		t.Fatalf("alice's own join has info %s", self.Info)
	}

	bob := cl.dial(1, named("bob", "b1", "Bob"))
	bob.Subscribe("room.1")
	expectPresence(t, bob, "join", "room.1", "bob")
	if c := expectPresence(t, alice, "join", "room.1", "bob"); string(c.Info) != `{"name":"Bob"}` {
		t.Fatalf("bob's join has info %s", c.Info)
	}

	// Both read the same list from their instances; the server's API on a
	// third instance sees the sessions too.
	for _, w := range []*wstest.Client{alice, bob} {
		r := readPresence(t, w, "room.1", false)
		if r.Counts != (sss.PresenceCounts{Clients: 2, Users: 2}) || !slices.Equal(users(r.Clients), []string{"alice", "bob"}) || r.More {
			t.Fatalf("presence %+v", r)
		}
		if r := readPresence(t, w, "room.1", true); r.Counts != (sss.PresenceCounts{Clients: 2, Users: 2}) || r.Clients != nil {
			t.Fatalf("counts %+v", r)
		}
	}
	list, err := cl.servers[2].Presence(ctx, "room.1")
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(list, func(a, b sss.ClientInfo) int { return strings.Compare(a.User, b.User) })
	if len(list) != 2 || list[0].Session != "a1" || list[1].Session != "b1" || string(list[1].Info) != `{"name":"Bob"}` {
		t.Fatalf("server presence %+v", list)
	}
	if n, err := cl.servers[2].PresenceCounts(ctx, "room.1"); err != nil || n != (sss.PresenceCounts{Clients: 2, Users: 2}) {
		t.Fatalf("server counts %+v %v", n, err)
	}

	// A second connection of bob counts as a client, not as a user.
	bob2 := cl.dial(2, named("bob", "b2", "Bob"))
	bob2.Subscribe("room.1")
	expectPresence(t, bob2, "join", "room.1", "bob")
	expectPresence(t, alice, "join", "room.1", "bob")
	expectPresence(t, bob, "join", "room.1", "bob")
	if n, _ := cl.servers[0].PresenceCounts(ctx, "room.1"); n != (sss.PresenceCounts{Clients: 3, Users: 2}) {
		t.Fatalf("counts with two bobs %+v", n)
	}

	// Unsubscribing leaves; the leaver hears nothing of it.
	bob.Ack(map[string]any{"type": "unsubscribe", "channel": "room.1"})
	expectPresence(t, alice, "leave", "room.1", "bob")
	expectPresence(t, bob2, "leave", "room.1", "bob")
	bob.Nothing(50 * time.Millisecond)

	// Disconnecting leaves too, fires OnUnsubscribe, and OnDisconnect still
	// sees the subscriptions.
	bob2.Close()
	expectPresence(t, alice, "leave", "room.1", "bob")
	eventually(t, "bob2's hooks", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(atDisconnect, "bob:room.1")
	})
	mu.Lock()
	if n := strings.Count(strings.Join(unsubs, " "), "bob:room.1"); n != 2 {
		t.Errorf("OnUnsubscribe for bob: %v, want two (unsubscribe, disconnect)", unsubs)
	}
	mu.Unlock()
	r := readPresence(t, alice, "room.1", false)
	if !slices.Equal(users(r.Clients), []string{"alice"}) || r.Counts != (sss.PresenceCounts{Clients: 1, Users: 1}) {
		t.Fatalf("presence after the leaves %+v", r)
	}
	alice.Nothing(50 * time.Millisecond)
}

// Tracking without join/leave; channels without presence; who may read.
func TestPresenceRules(t *testing.T) {
	cl := newCluster(t, 2, presenceOptions()...)
	alice := cl.dial(0, named("alice", "a", "Alice"))
	bob := cl.dial(1, as("bob", "b"))
	alice.Subscribe("lobby")
	bob.Subscribe("lobby")
	alice.Nothing(50 * time.Millisecond) // tracked, not announced
	if r := readPresence(t, alice, "lobby", false); !slices.Equal(users(r.Clients), []string{"alice", "bob"}) {
		t.Fatalf("lobby %+v", r)
	}
	// Bob's session gave no Info: none is sent.
	for _, c := range readPresence(t, alice, "lobby", false).Clients {
		if c.User == "bob" && c.Info != nil {
			t.Fatalf("bob has info %s", c.Info)
		}
	}

	bob.Subscribe("plain")
	bob.Fails(map[string]any{"type": "presence", "channel": "plain"}, "not_supported")
	if _, err := cl.servers[0].Presence(context.Background(), "plain"); !errors.Is(err, sss.ErrNotSupported) {
		t.Fatalf("server presence on an untracked channel: %v", err)
	}
	// Only subscribers read a channel's presence by default.
	alice.Fails(map[string]any{"type": "presence", "channel": "room.9"}, "forbidden")
	alice.Fails(map[string]any{"type": "presence"}, "bad_request")
	alice.Fails(map[string]any{"type": "presence", "channel": "$u.bob"}, "forbidden")
	alice.Fails(map[string]any{"type": "presence", "channel": "bad..name"}, "bad_request")
	if _, err := cl.servers[0].Presence(context.Background(), "bad..name"); !errors.Is(err, sss.ErrBadRequest) {
		t.Fatalf("server presence on a bad name: %v", err)
	}

	// Hierarchy: a subscriber of "room" is not in "room.1", and hears
	// nothing of its comings and goings.
	alice.Subscribe("room")
	bob.Subscribe("room.1")
	expectPresence(t, bob, "join", "room.1", "bob")
	alice.Nothing(50 * time.Millisecond)
	if n, _ := cl.servers[1].PresenceCounts(context.Background(), "room.1"); n.Clients != 1 {
		t.Fatalf("room.1 counts %+v", n)
	}
}

// A presence parser opens reading to whom the application decides.
func TestPresenceParser(t *testing.T) {
	cl := newCluster(t, 1, presenceOptions(sss.WithPresenceParser(func(ctx context.Context, c *sss.Conn, channel string) error {
		if c.UserID() == "admin" {
			return nil
		}
		return sss.Errorf(sss.CodeForbidden, "admins only")
	}))...)
	alice := cl.dial(0, as("alice", "a"))
	alice.Subscribe("lobby")
	admin := cl.dial(0, as("admin", "x"))
	if r := readPresence(t, admin, "lobby", true); r.Counts.Clients != 1 {
		t.Fatalf("admin reads %+v", r)
	}
	if f := alice.Fails(map[string]any{"type": "presence", "channel": "lobby"}, "forbidden"); f.Error.Message != "admins only" {
		t.Fatalf("refusal %+v", f.Error)
	}
}

// An instance that dies without a goodbye: its clients are announced gone
// to the others within the presence TTL, and leave the lists.
func TestPresenceInstanceDeath(t *testing.T) {
	m := newMemory(t, memory.WithPresenceTTL(300*time.Millisecond))
	cl := newClusterWith(t, m, 3, presenceOptions()...)
	alice := cl.dial(0, as("alice", "a"))
	alice.Subscribe("room.1")
	alice.Subscribe("lobby")
	expectPresence(t, alice, "join", "room.1", "alice")
	bob := cl.dial(1, as("bob", "b"))
	bob.Subscribe("room.1")
	expectPresence(t, bob, "join", "room.1", "bob")
	carol := cl.dial(2, as("carol", "c"))
	carol.Subscribe("room.1")
	expectPresence(t, carol, "join", "room.1", "carol")
	expectPresence(t, bob, "join", "room.1", "carol")

	start := time.Now()
	m.Crash(cl.servers[0].NodeID())
	expectPresence(t, bob, "leave", "room.1", "alice")
	expectPresence(t, carol, "leave", "room.1", "alice")
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("leave after %v, before the presence TTL", d)
	}
	bob.Nothing(100 * time.Millisecond) // once, from one survivor
	carol.Nothing(0)
	r := readPresence(t, bob, "room.1", false)
	if !slices.Equal(users(r.Clients), []string{"bob", "carol"}) {
		t.Fatalf("after the death: %+v", r)
	}
	if n, _ := cl.servers[2].PresenceCounts(context.Background(), "lobby"); n.Clients != 0 {
		t.Fatalf("lobby still counts %+v", n)
	}
}

// hiddenPresence is a scaler whose nodes do not implement scaler.Presence.
type hiddenPresence struct{ *memory.Scaler }

type brokerOnly struct{ scaler.Node }

func (h hiddenPresence) Join(ctx context.Context, id string, hd scaler.Handler) (scaler.Node, error) {
	n, err := h.Scaler.Join(ctx, id, hd)
	return brokerOnly{n}, err
}

// Without presence in the scaler, reads fail clearly and subscriptions
// work as ever.
func TestPresenceNotInScaler(t *testing.T) {
	m := newMemory(t)
	defer m.Close()
	srv, err := sss.New(append(presenceOptions(), sss.WithScaler(hiddenPresence{m}))...)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if _, err := srv.Presence(context.Background(), "lobby"); !errors.Is(err, sss.ErrNotSupported) {
		t.Fatalf("Presence: %v", err)
	}
	if _, err := srv.PresenceCounts(context.Background(), "room.1"); !errors.Is(err, sss.ErrNotSupported) {
		t.Fatalf("PresenceCounts: %v", err)
	}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	cl := &cluster{t: t, servers: []*sss.Server{srv}, https: []*httptest.Server{hs}}
	w := cl.dial(0, as("alice", "a"))
	w.Subscribe("room.1")
	w.Fails(map[string]any{"type": "presence", "channel": "room.1"}, "not_supported")
	w.Nothing(50 * time.Millisecond) // no join without presence
}

// Info the session parser gives must be JSON: otherwise the upgrade fails
// with 500 rather than a connection nobody can describe.
func TestPresenceInfoMustEncode(t *testing.T) {
	cl := newCluster(t, 1, sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
		return &sss.Session{UserID: "x", Info: make(chan int)}, nil
	}))
	_, resp, err := websocket.Dial(context.Background(), cl.url(0), &websocket.DialOptions{Subprotocols: []string{sss.Subprotocol}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("dial: %v %+v", err, resp)
	}
}
