package scalertest

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/superscaled/sss/scaler"
)

var presenceTests = []test{
	{"JoinListCount", testPresenceList},
	{"Replace", testPresenceReplace},
	{"Leave", testPresenceLeave},
	{"ExactChannel", testPresenceExact},
	{"KeepsItsOwnCopies", testPresenceCopies},
	{"CloseRemovesSilently", testPresenceClose},
	{"Closed", testPresenceClosed},
	{"Concurrent", testPresenceConcurrent},
	{"NodeDeath", testPresenceDeath},
}

// Crasher is implemented by a Scaler that can stop one of its nodes as if
// its process died (no Close, no goodbye), for tests. The NodeDeath test
// needs it, and a presence TTL of at most a few seconds: it waits up to
// deathTimeout for the dead node's entries to be reported gone.
type Crasher interface {
	Crash(nodeID string) bool
}

// deathTimeout bounds how long a crashed node's entries may remain.
const deathTimeout = 20 * time.Second

func presences(t *testing.T, ns func(*testing.T) scaler.Scaler, n int) (*env, []*member, []scaler.Presence) {
	t.Helper()
	return joinAs[scaler.Presence](t, ns, n)
}

func client(conn, user, session, info string) scaler.ClientInfo {
	c := scaler.ClientInfo{Conn: conn, User: user, Session: session}
	if info != "" {
		c.Info = []byte(info)
	}
	return c
}

func pjoin(t *testing.T, p scaler.Presence, channel string, c scaler.ClientInfo) {
	t.Helper()
	ctx, cancel := callCtx(t)
	defer cancel()
	if err := p.Join(ctx, channel, c); err != nil {
		t.Fatalf("Join(%q, %q): %v", channel, c.Conn, err)
	}
}

func pleave(t *testing.T, p scaler.Presence, channel, conn string) {
	t.Helper()
	ctx, cancel := callCtx(t)
	defer cancel()
	if err := p.Leave(ctx, channel, conn); err != nil {
		t.Fatalf("Leave(%q, %q): %v", channel, conn, err)
	}
}

func present(t *testing.T, p scaler.Presence, channel string) []scaler.ClientInfo {
	t.Helper()
	ctx, cancel := callCtx(t)
	defer cancel()
	list, err := p.Present(ctx, channel)
	if err != nil {
		t.Fatalf("Present(%q): %v", channel, err)
	}
	slices.SortFunc(list, func(a, b scaler.ClientInfo) int { return strings.Compare(a.Conn, b.Conn) })
	return list
}

func counts(t *testing.T, p scaler.Presence, channel string) scaler.PresenceCounts {
	t.Helper()
	ctx, cancel := callCtx(t)
	defer cancel()
	c, err := p.Counts(ctx, channel)
	if err != nil {
		t.Fatalf("Counts(%q): %v", channel, err)
	}
	return c
}

func fmtClients(list []scaler.ClientInfo) string {
	parts := make([]string, len(list))
	for i, c := range list {
		parts[i] = fmt.Sprintf("{%s user=%q session=%q info=%s}", c.Conn, c.User, c.Session, c.Info)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func sameClients(a, b []scaler.ClientInfo) bool {
	return slices.EqualFunc(a, b, func(x, y scaler.ClientInfo) bool {
		return x.Conn == y.Conn && x.User == y.User && x.Session == y.Session && bytes.Equal(x.Info, y.Info)
	})
}

// expectPresent checks a channel's list and counts as seen from every node.
func expectPresent(t *testing.T, ps []scaler.Presence, channel string, want []scaler.ClientInfo, users int) {
	t.Helper()
	for i, p := range ps {
		if got := present(t, p, channel); !sameClients(got, want) {
			t.Errorf("node %d: Present(%q) = %s, want %s", i, channel, fmtClients(got), fmtClients(want))
		}
		if got := counts(t, p, channel); got != (scaler.PresenceCounts{Clients: len(want), Users: users}) {
			t.Errorf("node %d: Counts(%q) = %+v, want {Clients:%d Users:%d}", i, channel, got, len(want), users)
		}
	}
}

// Entries joined on any node are listed and counted on every node; users
// are counted once however many connections they have, anonymous ones not
// at all.
func testPresenceList(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, _, ps := presences(t, ns, 2)
	room := e.ch("room")
	a := client("n0.a", "alice", "s1", `{"name":"Alice"}`)
	b := client("n1.b", "alice", "s2", "")
	c := client("n1.c", "bob", "", `"away"`)
	d := client("n0.d", "", "", "")
	pjoin(t, ps[0], room, a)
	pjoin(t, ps[1], room, b)
	pjoin(t, ps[1], room, c)
	pjoin(t, ps[0], room, d)
	expectPresent(t, ps, room, []scaler.ClientInfo{a, d, b, c}, 2)
	expectPresent(t, ps, e.ch("empty"), nil, 0)
}

// Joining again with the same connection id replaces the entry, and the
// user counts follow.
func testPresenceReplace(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, _, ps := presences(t, ns, 2)
	room := e.ch("room")
	pjoin(t, ps[0], room, client("x", "alice", "", `1`))
	pjoin(t, ps[0], room, client("x", "alice", "", `1`))
	expectPresent(t, ps, room, []scaler.ClientInfo{client("x", "alice", "", `1`)}, 1)
	pjoin(t, ps[0], room, client("x", "bob", "s", `2`))
	expectPresent(t, ps, room, []scaler.ClientInfo{client("x", "bob", "s", `2`)}, 1)
}

// Leave removes one entry, from any node's view; leaving an absent entry
// or channel is not an error.
func testPresenceLeave(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, _, ps := presences(t, ns, 2)
	room := e.ch("room")
	a, b, c := client("a", "alice", "", ""), client("b", "alice", "", ""), client("c", "bob", "", "")
	pjoin(t, ps[0], room, a)
	pjoin(t, ps[0], room, b)
	pjoin(t, ps[1], room, c)
	pleave(t, ps[0], room, "a")
	expectPresent(t, ps, room, []scaler.ClientInfo{b, c}, 2)
	pleave(t, ps[0], room, "b")
	expectPresent(t, ps, room, []scaler.ClientInfo{c}, 1)
	pleave(t, ps[1], room, "b")
	pleave(t, ps[1], e.ch("never"), "b")
	pleave(t, ps[1], room, "c")
	expectPresent(t, ps, room, nil, 0)
}

// Presence is per exact channel: no hierarchy, and reserved names are
// channels like any other.
func testPresenceExact(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, _, ps := presences(t, ns, 1)
	a := client("a", "u", "", "")
	pjoin(t, ps[0], e.ch("news.uk"), a)
	pjoin(t, ps[0], e.res("x"), a)
	expectPresent(t, ps, e.ch("news"), nil, 0)
	expectPresent(t, ps, e.ch("news.uk.london"), nil, 0)
	expectPresent(t, ps, e.ch("news.uk"), []scaler.ClientInfo{a}, 1)
	expectPresent(t, ps, e.res("x"), []scaler.ClientInfo{a}, 1)
}

// The backend keeps its own copy of Info: the caller may reuse its buffer.
func testPresenceCopies(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, _, ps := presences(t, ns, 2)
	room := e.ch("room")
	info := []byte(`"one"`)
	pjoin(t, ps[0], room, scaler.ClientInfo{Conn: "a", Info: info})
	copy(info, `"two"`)
	expectPresent(t, ps, room, []scaler.ClientInfo{client("a", "", "", `"one"`)}, 0)
}

// Close removes the node's entries without reporting them as gone.
func testPresenceClose(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, ms, ps := presences(t, ns, 3)
	room := e.ch("room")
	pjoin(t, ps[0], room, client("a", "alice", "", ""))
	pjoin(t, ps[0], e.ch("other"), client("a", "alice", "", ""))
	pjoin(t, ps[1], room, client("b", "bob", "", ""))
	ms[0].close()
	expectPresent(t, ps[1:], room, []scaler.ClientInfo{client("b", "bob", "", "")}, 1)
	expectPresent(t, ps[1:], e.ch("other"), nil, 0)
	settle()
	for _, m := range ms[1:] {
		if g := m.rec.goneList(); len(g) > 0 {
			t.Errorf("%s: HandleGone after a Close: %v", m.id, g)
		}
	}
}

// A closed node's presence calls fail with ErrClosed.
func testPresenceClosed(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, ms, ps := presences(t, ns, 1)
	ms[0].close()
	ctx, cancel := callCtx(t)
	defer cancel()
	room := e.ch("room")
	_, errList := ps[0].Present(ctx, room)
	_, errCount := ps[0].Counts(ctx, room)
	for name, err := range map[string]error{
		"Join":    ps[0].Join(ctx, room, client("a", "", "", "")),
		"Leave":   ps[0].Leave(ctx, room, "a"),
		"Present": errList,
		"Counts":  errCount,
	} {
		if !isClosed(err) {
			t.Errorf("%s after Close: %v, want an error wrapping scaler.ErrClosed", name, err)
		}
	}
}

// Joins and leaves from many goroutines on several nodes converge.
func testPresenceConcurrent(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, _, ps := presences(t, ns, 2)
	room := e.ch("room")
	const per = 200
	var wg sync.WaitGroup
	errs := make(chan error, 4*per)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := ps[g%2]
			ctx, cancel := context.WithTimeout(context.Background(), stressTimeout)
			defer cancel()
			for i := range per {
				c := client(fmt.Sprintf("g%d-%d", g, i), fmt.Sprintf("u%d", i%50), "", "")
				if err := p.Join(ctx, room, c); err != nil {
					errs <- err
					return
				}
				if i%2 == 1 { // every other one leaves again
					if err := p.Leave(ctx, room, c.Conn); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	waitOrCrash(t, &wg, "concurrent presence joins")
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent presence: %v", err)
	}
	// Even connections remain: 4 goroutines x 100, users u0, u2, ..., u48.
	for i, p := range ps {
		if got := counts(t, p, room); got != (scaler.PresenceCounts{Clients: 4 * per / 2, Users: 25}) {
			t.Errorf("node %d: Counts = %+v, want {Clients:%d Users:25}", i, got, 4*per/2)
		}
		if got := present(t, p, room); len(got) != 4*per/2 {
			t.Errorf("node %d: %d entries listed, want %d", i, len(got), 4*per/2)
		}
	}
}

// A node that dies without Close loses its entries within the backend's
// presence TTL, and exactly one live node hears of each, once.
func testPresenceDeath(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, ms, ps := presences(t, ns, 3)
	cr, ok := e.sc.(Crasher)
	if !ok {
		t.Skipf("the Scaler (%T) cannot crash a node (no Crash(nodeID string) bool method)", e.sc)
	}
	room, other := e.ch("room"), e.ch("other")
	a, b, c := client("a", "alice", "", `"A"`), client("b", "bob", "", ""), client("c", "carol", "", "")
	pjoin(t, ps[0], room, a)
	pjoin(t, ps[0], room, b)
	pjoin(t, ps[0], other, a)
	pjoin(t, ps[1], room, c)
	if !cr.Crash(ms[0].id) {
		t.Fatalf("Crash(%q) = false", ms[0].id)
	}
	// A crashed node's Close (which its owner still calls) says nothing
	// more: its entries wait for the TTL like a dead process's.
	ms[0].close()
	start := time.Now()
	gone := func() map[string][]scaler.ClientInfo {
		out := make(map[string][]scaler.ClientInfo)
		for _, m := range ms[1:] {
			for _, g := range m.rec.goneList() {
				out[g.channel] = append(out[g.channel], g.clients...)
			}
		}
		return out
	}
	deadline := time.Now().Add(deathTimeout)
	for {
		g := gone()
		if len(g[room]) >= 2 && len(g[other]) >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, gone reports: %v; want a and b on %q, a on %q", deathTimeout, g, room, other)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("entries of the crashed node reported gone after %v", time.Since(start).Round(time.Millisecond))
	settle()
	g := gone()
	for ch := range g {
		slices.SortFunc(g[ch], func(x, y scaler.ClientInfo) int { return strings.Compare(x.Conn, y.Conn) })
	}
	if !sameClients(g[room], []scaler.ClientInfo{a, b}) || !sameClients(g[other], []scaler.ClientInfo{a}) || len(g) != 2 {
		t.Errorf("gone reports %v; want exactly a and b on %q, a on %q, each once", g, room, other)
	}
	expectPresent(t, ps[1:], room, []scaler.ClientInfo{c}, 1)
	expectPresent(t, ps[1:], other, nil, 0)
}

// gone is one HandleGone call.
type gone struct {
	channel string
	clients []scaler.ClientInfo
}

func (g gone) String() string { return g.channel + ":" + fmtClients(g.clients) }

// HandleGone records reports of dead nodes' entries.
func (r *recorder) HandleGone(ctx context.Context, channel string, clients []scaler.ClientInfo) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed.Load() {
		r.problemLocked("HandleGone(%q) called after Close returned", channel)
	}
	if ctx.Err() != nil {
		r.problemLocked("HandleGone(%q) called with a done context: %v", channel, ctx.Err())
	}
	r.gone = append(r.gone, gone{channel, slices.Clone(clients)})
	r.signal()
}

func (r *recorder) goneList() []gone {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.gone)
}

var _ scaler.PresenceHandler = (*recorder)(nil)
