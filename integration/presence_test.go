package integration

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/client"
	"github.com/superscaled/sss/scaler/mongoredis"
)

// Presence on Redis+MongoDB, across three instances, with real failures:
// an instance killed with a client present, and Redis killed and restarted
// empty.

const presenceTTL = time.Second

func presenceServerOptions() []sss.Option {
	return []sss.Option{
		sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
			u := r.Header.Get("X-User")
			return &sss.Session{UserID: u, SessionID: r.Header.Get("X-Session"), Info: map[string]string{"name": strings.ToUpper(u)}}, nil
		}),
		sss.WithPresence(func(channel string) sss.ChannelPresence {
			return sss.ChannelPresence{JoinLeave: strings.HasPrefix(channel, "room.")}
		}),
	}
}

// roomClient is a client in room.1 that records the joins and leaves it
// sees, by connection id.
type roomClient struct {
	c *client.Client

	mu     sync.Mutex
	joins  []string // "user/conn"
	leaves []string
}

func (r *roomClient) seen() (joins, leaves []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.joins), slices.Clone(r.leaves)
}

func joinRoom(t *testing.T, urls []string, first int, user string) *roomClient {
	t.Helper()
	r := &roomClient{}
	others := slices.Concat(urls[first+1:], urls[:first])
	c, err := client.Dial(ctxT(t), urls[first], client.WithURLs(others...),
		client.WithHeader(who(user, user+"-s")),
		client.WithReconnectDelay(50*time.Millisecond, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r.c = c
	_, err = c.Subscribe(ctxT(t), "room.1",
		client.WithJoinHandler(func(ci client.ClientInfo) {
			r.mu.Lock()
			r.joins = append(r.joins, ci.User+"/"+ci.Conn)
			r.mu.Unlock()
		}),
		client.WithLeaveHandler(func(ci client.ClientInfo) {
			r.mu.Lock()
			r.leaves = append(r.leaves, ci.User+"/"+ci.Conn)
			r.mu.Unlock()
		}))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// presentUsers reads the room's presence through server srv: the users,
// sorted, and their connections.
func presentUsers(t *testing.T, srv *sss.Server) ([]string, []string) {
	list, err := srv.Presence(ctxT(t), "room.1")
	if err != nil {
		t.Logf("presence: %v", err)
		return nil, nil
	}
	var users, conns []string
	for _, c := range list {
		users = append(users, c.User)
		conns = append(conns, c.Conn)
	}
	slices.Sort(users)
	return users, conns
}

// An instance dies with alice present: bob and carol, on the other two,
// see her connection leave within the presence TTL (and 4/3 of it), once;
// her client comes back elsewhere and joins again.
func TestMongoRedisPresenceInstanceKill(t *testing.T) {
	b := newBackend(t)
	fc := newFaultClusterWith(t, b, 3, presenceServerOptions(), mongoredis.WithPresenceTTL(presenceTTL))
	alice := joinRoom(t, fc.urls, 0, "alice")
	bob := joinRoom(t, fc.urls, 1, "bob")
	carol := joinRoom(t, fc.urls, 2, "carol")
	poll(t, 10*time.Second, "everyone to see everyone join", func() bool {
		j, _ := carol.seen()
		return len(j) >= 1 && slices.Equal(must(presentUsers(t, fc.servers[0])), []string{"alice", "bob", "carol"})
	})
	for i := range fc.servers {
		if n, err := fc.servers[i].PresenceCounts(ctxT(t), "room.1"); err != nil || n != (sss.PresenceCounts{Clients: 3, Users: 3}) {
			t.Fatalf("instance %d counts %+v %v", i, n, err)
		}
	}
	old := alice.c.Conn().ID
	killed := time.Now()
	fc.kill(0)
	for _, r := range []*roomClient{bob, carol} {
		poll(t, 10*time.Second, "alice's old connection to leave", func() bool {
			_, l := r.seen()
			return slices.Contains(l, "alice/"+old)
		})
	}
	took := time.Since(killed)
	t.Logf("kill -> leave of the dead instance's client seen after %v (presence TTL %v)", took.Round(time.Millisecond), presenceTTL)
	if took > presenceTTL*4/3+3*time.Second {
		t.Errorf("leave after %v, beyond the documented bound", took)
	}
	// Alice is back on another instance, with a new connection.
	poll(t, 10*time.Second, "alice back in the room", func() bool {
		users, conns := presentUsers(t, fc.servers[1])
		return slices.Equal(users, []string{"alice", "bob", "carol"}) && !slices.Contains(conns, old)
	})
	time.Sleep(presenceTTL) // a second leave would come by now
	for name, r := range map[string]*roomClient{"bob": bob, "carol": carol} {
		_, l := r.seen()
		if n := count(l, "alice/"+old); n != 1 {
			t.Errorf("%s saw alice's old connection leave %d times: %v", name, n, l)
		}
	}
}

// Redis dies and comes back empty: each instance's heartbeat finds its
// presence gone and writes it again, so the room lists everyone within
// the TTL, and no live connection is reported gone. (The restart resets
// the channels' history, so instances may close their subscribers'
// connections for a resync: those connections really leave, and their
// clients come back with new ones.)
func TestMongoRedisPresenceRedisRestart(t *testing.T) {
	b := newBackendWith(t)
	fc := newFaultClusterWith(t, b, 3, presenceServerOptions(), mongoredis.WithPresenceTTL(presenceTTL))
	var rooms []*roomClient
	for i, u := range []string{"alice", "bob", "carol"} {
		rooms = append(rooms, joinRoom(t, fc.urls, i, u))
	}
	poll(t, 10*time.Second, "everyone present", func() bool {
		return slices.Equal(must(presentUsers(t, fc.servers[2])), []string{"alice", "bob", "carol"})
	})
	killContainer(t, b.redisC)
	time.Sleep(500 * time.Millisecond)
	b.restartRedis(t)
	back := time.Now()
	current := func() []string { // the clients' connections now
		var ids []string
		for _, r := range rooms {
			ids = append(ids, r.c.Conn().ID)
		}
		slices.Sort(ids)
		return ids
	}
	want := []string{"alice", "bob", "carol"}
	for deadline := back.Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		users, conns := presentUsers(t, fc.servers[0])
		slices.Sort(conns)
		if slices.Equal(users, want) && slices.Equal(conns, current()) {
			break
		}
		if time.Now().After(deadline) {
			_, l0 := rooms[0].seen()
			_, l1 := rooms[1].seen()
			_, l2 := rooms[2].seen()
			t.Fatalf("20s after Redis came back, instance 0 lists %v %v, want %v %v (leaves seen: %v %v %v)", users, conns, want, current(), l0, l1, l2)
		}
	}
	t.Logf("Redis back empty -> presence complete again after %v", time.Since(back).Round(time.Millisecond))
	live := current()
	for i, r := range rooms {
		_, l := r.seen()
		for _, x := range l {
			if _, conn, _ := strings.Cut(x, "/"); slices.Contains(live, conn) {
				t.Errorf("client %d saw %s leave, a connection still alive (leaves seen: %v)", i, x, l)
			}
		}
	}
	if n, err := fc.servers[1].PresenceCounts(context.Background(), "room.1"); err != nil || n != (sss.PresenceCounts{Clients: 3, Users: 3}) {
		t.Errorf("counts after the restart %+v %v", n, err)
	}
}

func must[T any](v T, _ ...any) T { return v }

func count(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}
