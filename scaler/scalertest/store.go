package scalertest

import (
	"bytes"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/superscaled/sss/scaler"
)

var storeTests = []test{
	{"AddAndList", testStoreAddList},
	{"ReplaceSameChannel", testStoreReplace},
	{"Position", testStorePosition},
	{"Remove", testStoreRemove},
	{"UnknownSession", testStoreUnknown},
	{"Touch", testStoreTouch},
	{"SharedAcrossNodes", testStoreShared},
	{"KeepsItsOwnCopies", testStoreCopies},
	{"Concurrent", testStoreConcurrent},
	{"UpdatePosition", testStoreUpdatePosition},
}

// stores joins n nodes and returns their SessionStores, skipping the test
// when the backend does not persist sessions.
func stores(t *testing.T, ns func(*testing.T) scaler.Scaler, n int) (*env, []*member, []scaler.SessionStore) {
	t.Helper()
	return joinAs[scaler.SessionStore](t, ns, n)
}

// joinAs joins n nodes and returns them as the optional interface T,
// skipping the test when the backend's Node does not implement it.
func joinAs[T any](t *testing.T, ns func(*testing.T) scaler.Scaler, n int) (*env, []*member, []T) {
	t.Helper()
	e := newEnv(t, ns)
	ms := e.nodes(n)
	out := make([]T, n)
	for i, m := range ms {
		v, ok := m.node.(T)
		if !ok {
			t.Skipf("the Node (%T) does not implement %v", m.node, reflect.TypeFor[T]())
		}
		out[i] = v
	}
	return e, ms, out
}

func add(t *testing.T, st scaler.SessionStore, session, channel, query string) {
	t.Helper()
	ctx, cancel := callCtx(t)
	defer cancel()
	sub := scaler.StoredSubscription{Channel: channel}
	if query != "" {
		sub.Query = []byte(query)
	}
	if err := st.AddSubscription(ctx, session, sub); err != nil {
		t.Fatalf("AddSubscription(%q, %q): %v", session, channel, err)
	}
}

func remove(t *testing.T, st scaler.SessionStore, session, channel string) {
	t.Helper()
	ctx, cancel := callCtx(t)
	defer cancel()
	if err := st.RemoveSubscription(ctx, session, channel); err != nil {
		t.Fatalf("RemoveSubscription(%q, %q): %v", session, channel, err)
	}
}

func list(t *testing.T, st scaler.SessionStore, session string) []scaler.StoredSubscription {
	t.Helper()
	ctx, cancel := callCtx(t)
	defer cancel()
	subs, err := st.Subscriptions(ctx, session)
	if err != nil {
		t.Fatalf("Subscriptions(%q): %v", session, err)
	}
	return subs
}

// sub is the expected form of a stored subscription; "" means no query.
type sub struct{ channel, query string }

// expectList checks the session's list, in order. A nil Query and an empty
// one are equivalent.
func expectList(t *testing.T, st scaler.SessionStore, session string, want ...sub) {
	t.Helper()
	got := list(t, st, session)
	ok := len(got) == len(want)
	for i := 0; ok && i < len(want); i++ {
		ok = got[i].Channel == want[i].channel && bytes.Equal(got[i].Query, []byte(want[i].query)) && got[i].Position == (scaler.Position{})
	}
	if !ok {
		t.Errorf("Subscriptions(%q) = %s\nwant %s", session, fmtSubs(got), fmtWant(want))
	}
}

func fmtSubs(subs []scaler.StoredSubscription) string {
	parts := make([]string, len(subs))
	for i, s := range subs {
		parts[i] = fmt.Sprintf("{%s %s}", s.Channel, s.Query)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func fmtWant(subs []sub) string {
	parts := make([]string, len(subs))
	for i, s := range subs {
		parts[i] = fmt.Sprintf("{%s %s}", s.channel, s.query)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// Entries come back ordered by channel (byte order), with their queries,
// whatever order they were added in; adding twice stores one entry.
func testStoreAddList(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, _, st := stores(t, ns, 1)
	s := e.session("s")
	add(t, st[0], s, "news.uk", "")
	add(t, st[0], s, "private", `{"password":"s3cret"}`)
	add(t, st[0], s, "chat:room-1", `"pw"`)
	add(t, st[0], s, "news", `[1,2,{"a":null}]`)
	add(t, st[0], s, "news", `[1,2,{"a":null}]`) // idempotent
	add(t, st[0], s, "Zeta", "")                 // upper case sorts first in byte order
	expectList(t, st[0], s,
		sub{"Zeta", ""},
		sub{"chat:room-1", `"pw"`},
		sub{"news", `[1,2,{"a":null}]`},
		sub{"news.uk", ""},
		sub{"private", `{"password":"s3cret"}`},
	)
}

// Adding a channel again replaces its query, including with none.
func testStoreReplace(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, _, st := stores(t, ns, 1)
	s := e.session("s")
	add(t, st[0], s, "room", `"old"`)
	add(t, st[0], s, "room", `"new"`)
	expectList(t, st[0], s, sub{"room", `"new"`})
	add(t, st[0], s, "room", "")
	expectList(t, st[0], s, sub{"room", ""})
	add(t, st[0], s, "room", `{"again":true}`)
	expectList(t, st[0], s, sub{"room", `{"again":true}`})
}

// Remove deletes one entry; removing an absent entry, or from an unknown
// session, is not an error.
func testStoreRemove(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, _, st := stores(t, ns, 1)
	s := e.session("s")
	add(t, st[0], s, "a", "")
	add(t, st[0], s, "b", `1`)
	add(t, st[0], s, "a.b", "")
	remove(t, st[0], s, "a")
	expectList(t, st[0], s, sub{"a.b", ""}, sub{"b", `1`}) // no hierarchy here
	remove(t, st[0], s, "a")
	remove(t, st[0], s, "never")
	remove(t, st[0], e.session("unknown"), "a")
	expectList(t, st[0], s, sub{"a.b", ""}, sub{"b", `1`})
	remove(t, st[0], s, "a.b")
	remove(t, st[0], s, "b")
	expectList(t, st[0], s)
}

// An unknown session lists nothing, without error.
func testStoreUnknown(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, _, st := stores(t, ns, 1)
	expectList(t, st[0], e.session("never-seen"))
}

// TouchSession keeps the entries; on an unknown session it is not an error
// and creates nothing.
func testStoreTouch(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, _, st := stores(t, ns, 1)
	s := e.session("s")
	add(t, st[0], s, "a", `1`)
	ctx, cancel := callCtx(t)
	defer cancel()
	for _, id := range []string{s, e.session("unknown")} {
		if err := st[0].TouchSession(ctx, id); err != nil {
			t.Fatalf("TouchSession(%q): %v", id, err)
		}
	}
	expectList(t, st[0], s, sub{"a", `1`})
	expectList(t, st[0], e.session("unknown"))
}

// A subscription's position is kept with it, and replaced with it.
func testStorePosition(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, _, st := stores(t, ns, 1)
	s := e.session("s")
	ctx, cancel := callCtx(t)
	defer cancel()
	for _, pos := range []scaler.Position{{Offset: 7, Epoch: "e1"}, {Offset: 1 << 40, Epoch: "e2"}} {
		if err := st[0].AddSubscription(ctx, s, scaler.StoredSubscription{Channel: "news", Position: pos}); err != nil {
			t.Fatal(err)
		}
		got := list(t, st[0], s)
		if len(got) != 1 || got[0].Position != pos {
			t.Fatalf("Subscriptions = %+v, want news at %+v", got, pos)
		}
	}
}

// Sessions belong to the scaler, not to a node: what one node stores the
// others see, and it outlives the node that stored it (a client reconnects
// to another instance when its own goes away).
func testStoreShared(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, m, st := stores(t, ns, 3)
	s := e.session("s")
	add(t, st[0], s, "a", `1`)
	add(t, st[1], s, "b", `2`)
	expectList(t, st[2], s, sub{"a", `1`}, sub{"b", `2`})
	remove(t, st[2], s, "a")
	expectList(t, st[0], s, sub{"b", `2`})
	m[0].close()
	expectList(t, st[1], s, sub{"b", `2`})
	remove(t, st[1], s, "b")
	expectList(t, st[2], s)
}

// The store does not alias the caller's Query slices, in either direction.
func testStoreCopies(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, _, st := stores(t, ns, 1)
	s := e.session("s")
	ctx, cancel := callCtx(t)
	defer cancel()
	q := []byte(`"abc"`)
	if err := st[0].AddSubscription(ctx, s, scaler.StoredSubscription{Channel: "x", Query: q}); err != nil {
		t.Fatal(err)
	}
	copy(q, `"zzz"`)
	got := list(t, st[0], s)
	if len(got) == 1 && len(got[0].Query) > 1 {
		got[0].Query[1] = 'Q'
	}
	expectList(t, st[0], s, sub{"x", `"abc"`})
}

// Concurrent writers on several nodes: one session gets distinct channels
// from every goroutine, plus a channel they all replace; others add and
// remove on their own sessions. Nothing is lost or duplicated.
func testStoreConcurrent(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	const (
		workers = 4  // per node
		each    = 25 // channels per worker
	)
	e, _, st := stores(t, ns, 3)
	shared := e.session("shared")
	var wg sync.WaitGroup
	for ni, store := range st {
		for w := range workers {
			wg.Go(func() {
				ctx, cancel := callCtx(t)
				defer cancel()
				own := e.session(fmt.Sprintf("own-%d-%d", ni, w))
				for i := range each {
					ch := fmt.Sprintf("ch.%d.%d.%03d", ni, w, i)
					q := []byte(fmt.Sprintf(`{"w":"%d.%d"}`, ni, w))
					for _, err := range []error{
						store.AddSubscription(ctx, shared, scaler.StoredSubscription{Channel: ch}),
						store.AddSubscription(ctx, shared, scaler.StoredSubscription{Channel: "contended", Query: q}),
						store.AddSubscription(ctx, own, scaler.StoredSubscription{Channel: ch}),
						store.RemoveSubscription(ctx, own, ch),
					} {
						if err != nil {
							t.Errorf("node %d worker %d: %v", ni, w, err)
							return
						}
					}
					if _, err := store.Subscriptions(ctx, shared); err != nil {
						t.Errorf("node %d worker %d: Subscriptions: %v", ni, w, err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	got := list(t, st[0], shared)
	if want := len(st)*workers*each + 1; len(got) != want {
		t.Fatalf("shared session has %d entries, want %d", len(got), want)
	}
	if !slices.IsSortedFunc(got, func(a, b scaler.StoredSubscription) int { return strings.Compare(a.Channel, b.Channel) }) {
		t.Errorf("entries not ordered by channel")
	}
	if got[0].Channel != "ch.0.0.000" || got[len(got)-1].Channel != "contended" || !bytes.HasPrefix(got[len(got)-1].Query, []byte(`{"w":`)) {
		t.Errorf("unexpected first/last entries: %s ... %s", fmtSubs(got[:1]), fmtSubs(got[len(got)-1:]))
	}
	for ni := range st {
		for w := range workers {
			expectList(t, st[ni], e.session(fmt.Sprintf("own-%d-%d", ni, w)))
		}
	}
}

// UpdatePosition (scaler.PositionUpdater, optional) moves an entry's
// position and never creates an entry.
func testStoreUpdatePosition(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, _, sts := stores(t, ns, 2)
	pu, ok := sts[0].(scaler.PositionUpdater)
	if !ok {
		t.Skipf("the SessionStore (%T) does not implement scaler.PositionUpdater", sts[0])
	}
	s, ch, gone := e.session("s"), e.ch("a"), e.ch("gone")
	add(t, sts[0], s, ch, `{"q":1}`)
	ctx, cancel := callCtx(t)
	defer cancel()
	pos := scaler.Position{Offset: 42, Epoch: "ep"}
	if err := pu.UpdatePosition(ctx, s, ch, pos); err != nil {
		t.Fatalf("UpdatePosition: %v", err)
	}
	if err := pu.UpdatePosition(ctx, s, gone, pos); err != nil {
		t.Fatalf("UpdatePosition of an absent entry: %v", err)
	}
	got := list(t, sts[1], s)
	if len(got) != 1 || got[0].Channel != ch || got[0].Position != pos || string(got[0].Query) != `{"q":1}` {
		t.Fatalf("after UpdatePosition: %+v; want only %q at %+v with its query", got, ch, pos)
	}
}
