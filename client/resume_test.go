package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/client"
	"github.com/superscaled/sss/scaler/memory"
)

// recorder collects the numbered messages of one channel and checks, as
// they come, that they are 0, 1, 2... with increasing offsets.
type recorder struct {
	mu     sync.Mutex
	got    []int
	last   client.Position
	errs   []string
	extras []string // messages that are not numbers (markers)
}

func (r *recorder) handle(m client.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n int
	if err := json.Unmarshal(m.Data, &n); err != nil {
		r.extras = append(r.extras, string(m.Data))
		return
	}
	if n != len(r.got) && len(r.errs) < 10 {
		r.errs = append(r.errs, fmt.Sprintf("got %d after %d messages (offset %d, epoch %s)", n, len(r.got), m.Offset, m.Epoch))
	}
	if m.Epoch == r.last.Epoch && m.Offset <= r.last.Offset && len(r.errs) < 10 {
		r.errs = append(r.errs, fmt.Sprintf("offset %d after %d", m.Offset, r.last.Offset))
	}
	r.last = client.Position{Offset: m.Offset, Epoch: m.Epoch}
	r.got = append(r.got, n)
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

func (r *recorder) markers() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.extras)
}

func (r *recorder) check(t testing.TB, want int) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.errs {
		t.Error(e)
	}
	if len(r.got) != want {
		t.Errorf("%d messages, want %d", len(r.got), want)
	}
}

// outcomes records OnRecover and OnGap.
type outcomes struct {
	mu        sync.Mutex
	recovered []client.RecoverInfo
	gaps      []client.RecoverInfo
}

func (o *outcomes) hooks() client.Hooks {
	return client.Hooks{
		OnRecover: func(info client.RecoverInfo) {
			o.mu.Lock()
			o.recovered = append(o.recovered, info)
			o.mu.Unlock()
		},
		OnGap: func(info client.RecoverInfo) {
			o.mu.Lock()
			o.gaps = append(o.gaps, info)
			o.mu.Unlock()
		},
	}
}

func (o *outcomes) get() (recovered, gaps []client.RecoverInfo) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.recovered), slices.Clone(o.gaps)
}

// The headline: a subscriber on instance A of a cluster of four, whose link
// is cut (or whose instance shuts down) at random points while another
// instance publishes 10,000 numbered messages at full speed, reconnects to
// other instances and ends with all of them, in order, once each, every
// catch-up reported recovered.
func TestCatchUpExact(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0x5555))
	const iterations = 5
	for i := range iterations {
		cuts := make([]int, 1+rng.IntN(3))
		for j := range cuts {
			cuts[j] = 500 + rng.IntN(9000)
		}
		slices.Sort(cuts)
		shutdown := i == iterations-1 // the last run loses its instance instead
		t.Run(fmt.Sprintf("run%d", i), func(t *testing.T) { catchUpRun(t, cuts, shutdown) })
	}
}

func catchUpRun(t *testing.T, cuts []int, shutdown bool) {
	const total = 10000
	m := newMemory(t, memory.WithHistory(2*total, time.Minute))
	defer m.Close()
	var servers []*testServer
	var proxies []*proxy
	for range 4 {
		servers = append(servers, newServer(t, m))
	}
	for _, s := range servers[:3] {
		proxies = append(proxies, newProxy(t, s.url))
	}
	var out outcomes
	var dmu sync.Mutex
	drops := map[string]int{}
	var links []client.ConnInfo // each reconnection's, in order
	reconnections := func() []client.ConnInfo {
		dmu.Lock()
		defer dmu.Unlock()
		return slices.Clone(links)
	}
	c := dial(t, proxies[0].url, client.WithURLs(proxies[1].url, proxies[2].url), fastRetry, hooks(out.hooks(), client.Hooks{
		OnDrop: func(err error) {
			dmu.Lock()
			drops[err.Error()]++
			dmu.Unlock()
		},
		OnReconnect: func(info client.ConnInfo) {
			dmu.Lock()
			links = append(links, info)
			dmu.Unlock()
		},
	}))
	first := c.Conn()
	var rec recorder
	sub, err := c.Subscribe(ctxT(t), "feed", client.WithMessageHandler(rec.handle))
	if err != nil {
		t.Fatal(err)
	}
	if p := sub.Position(); p.IsZero() || p.Offset != 0 {
		t.Fatalf("position after subscribe %v, want offset 0 in an epoch", p)
	}

	pubErr := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		for i := range total {
			if err := servers[3].srv.Publish(ctx, "feed", "n", i); err != nil {
				pubErr <- fmt.Errorf("publish %d: %w", i, err)
				return
			}
		}
		pubErr <- nil
	}()

	shutdowns := make(chan error, 1)
	for k, at := range cuts {
		waitFor(t, fmt.Sprintf("%d messages", at), func() bool { return rec.count() >= at || rec.count() == total })
		// The link now is the last one reported: the next reconnection
		// starts from it.
		var before int
		var from string
		waitFor(t, "a link", func() bool {
			ls, now := reconnections(), c.Conn()
			last := first
			if len(ls) > 0 {
				last = ls[len(ls)-1]
			}
			before, from = len(ls), now.URL
			return c.Status() == client.StatusConnected && now.ID == last.ID
		})
		if shutdown && k == 0 {
			// The instance behind the proxy shuts down: close code 4000,
			// and the client moves on at once.
			s := servers[slices.IndexFunc(proxies, func(p *proxy) bool { return p.url == from })]
			go func() { shutdowns <- s.srv.Shutdown(context.Background()) }()
		} else {
			for _, p := range proxies {
				p.cut()
			}
		}
		waitFor(t, "the reconnection", func() bool { return len(reconnections()) > before })
		// The first reconnection goes elsewhere (a later one, after a
		// slow-consumer drop, may come back).
		if to := reconnections()[before].URL; to == from {
			t.Errorf("reconnected to the same instance %s", to)
		}
	}
	if err := recv(t, pubErr); err != nil {
		t.Fatal(err)
	}
	if shutdown {
		if err := recv(t, shutdowns); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	}
	waitFor(t, "every message", func() bool { return rec.count() >= total })
	// Anything after the 10,000th would be a duplicate: a marker published
	// afterwards comes after all of them.
	if err := servers[3].srv.Publish(ctxT(t), "feed", "end", "end"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the end marker", func() bool { return len(rec.markers()) > 0 })
	rec.check(t, total)

	recovered, gaps := out.get()
	for _, g := range gaps {
		t.Errorf("gap: %+v", g)
	}
	if len(recovered) < len(cuts) {
		t.Errorf("%d recovery outcomes for %d cuts", len(recovered), len(cuts))
	}
	for _, r := range recovered {
		if !r.Recovered || r.Channel != "feed" || r.Sub != sub || r.Since.IsZero() || r.Position != r.Since {
			t.Errorf("outcome %+v", r)
		}
	}
	if !sub.Recovered() {
		t.Error("Recovered() false")
	}
	if p := sub.Position(); p.Offset != total+1 {
		t.Errorf("position %v, want offset %d", p, total+1)
	}
	st := c.Stats()
	dmu.Lock()
	t.Logf("cuts at %v (shutdown first: %v): stats %+v, drops %v", cuts, shutdown, st, drops)
	dmu.Unlock()
	if st.Duplicates != 0 {
		t.Errorf("the server sent %d duplicates", st.Duplicates)
	}
}

// A reconnect to a cluster whose backend lost its history (another
// scaler: new epochs) cannot catch up: every channel reports recovered
// false, with OnGap, and the publications that follow arrive.
func TestEpochChange(t *testing.T) {
	m1, m2 := newMemory(t), newMemory(t)
	defer m1.Close()
	defer m2.Close()
	s1 := newServer(t, m1, sss.WithSessionParser(userSession))
	s2 := newServer(t, m2, sss.WithSessionParser(userSession))
	p := newProxy(t, s1.url)
	var out outcomes
	ev := newEvents()
	onUser, users := messages()
	c := dial(t, p.url, client.WithURLs(s2.url), fastRetry, hooks(out.hooks(), watch(ev), client.Hooks{OnUserMessage: onUser}),
		asUser("uma"), client.WithHeader(http.Header{"X-Session": {"tab"}}))
	subGaps := make(chan client.RecoverInfo, 4)
	on, msgs := messages()
	sub, err := c.Subscribe(ctxT(t), "feed", client.WithMessageHandler(on), client.WithSubHooks(client.SubHooks{OnGap: func(info client.RecoverInfo) { subGaps <- info }}))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		s1.srv.Publish(ctxT(t), "feed", "", i)
	}
	s1.srv.PublishUser(ctxT(t), "uma", "", "hi")
	for range 3 {
		recv(t, msgs)
	}
	recv(t, users)
	old := sub.Position()
	oldUser := c.Position(c.Conn().UserChannel)
	if old.Offset != 3 || oldUser.Offset != 1 {
		t.Fatalf("positions %v %v", old, oldUser)
	}

	p.cut()
	ev.waitEvent(t, "reconnect")
	if u := c.Conn().URL; u != s2.url {
		t.Fatalf("reconnected to %s", u)
	}
	info := recv(t, subGaps)
	if info.Recovered || info.Reason == "" || info.Since != old || info.Position.Epoch == old.Epoch || info.Sub != sub || info.Kind != client.KindSubscription {
		t.Fatalf("subscription gap %+v", info)
	}
	if sub.Recovered() {
		t.Fatal("Recovered() true")
	}
	recovered, gaps := out.get()
	kinds := map[client.ChannelKind]client.RecoverInfo{}
	for _, g := range gaps {
		kinds[g.Kind] = g
	}
	if len(gaps) != 3 || len(recovered) != 3 || kinds[client.KindUser].Channel != "$u.uma" || kinds[client.KindUser].Since != oldUser ||
		kinds[client.KindSession].Channel != sss.SessionChannel("uma", "tab") {
		t.Fatalf("gaps %+v, outcomes %+v", gaps, recovered)
	}
	s2.srv.Publish(ctxT(t), "feed", "", "new")
	s2.srv.PublishUser(ctxT(t), "uma", "", "new")
	if m := recv(t, msgs); string(m.Data) != `"new"` || m.Offset != 1 || m.Epoch != sub.Position().Epoch || m.Epoch == old.Epoch {
		t.Fatalf("got %+v", m)
	}
	if m := recv(t, users); string(m.Data) != `"new"` || m.Offset != 1 {
		t.Fatalf("user got %+v", m)
	}
	if st := c.Stats(); st.Gaps != 3 || st.Recovered != 0 || st.Duplicates != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// The backend restarts empty behind the same servers: the server closes its
// connections with 4006 or the resume reports the new epoch; either way,
// the client reports a gap and goes on.
func TestBackendRestart(t *testing.T) {
	m1 := newMemory(t)
	defer m1.Close()
	r := newRestartable(t, nil, sss.WithScaler(m1))
	var out outcomes
	ev := newEvents()
	c := dial(t, r.url, fastRetry, hooks(out.hooks(), watch(ev)))
	on, msgs := messages()
	sub, err := c.Subscribe(ctxT(t), "feed", client.WithMessageHandler(on))
	if err != nil {
		t.Fatal(err)
	}
	r.server().Publish(ctxT(t), "feed", "", 1)
	recv(t, msgs)
	old := sub.Position()

	m2 := newMemory(t)
	defer m2.Close()
	r.stop()
	r.opts = append(r.opts, sss.WithScaler(m2))
	r.start()
	ev.waitEvent(t, "reconnect")
	_, gaps := out.get()
	if len(gaps) != 1 || gaps[0].Since != old || gaps[0].Recovered {
		t.Fatalf("gaps %+v", gaps)
	}
	r.server().Publish(ctxT(t), "feed", "", 2)
	if m := recv(t, msgs); string(m.Data) != "2" || m.Offset != 1 {
		t.Fatalf("got %+v", m)
	}
}

// History trimmed past the client's position while it was away: recovered
// false, never a silent gap, and none of the trimmed range is delivered.
func TestHistoryTrimmed(t *testing.T) {
	m := newMemory(t, memory.WithHistory(10, time.Minute))
	defer m.Close()
	r := newRestartable(t, nil, sss.WithScaler(m))
	other := newServer(t, m)
	var out outcomes
	ev := newEvents()
	c := dial(t, r.url, fastRetry, hooks(out.hooks(), watch(ev)))
	var rec recorder
	sub, err := c.Subscribe(ctxT(t), "feed", client.WithMessageHandler(rec.handle))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		other.srv.Publish(ctxT(t), "feed", "", i)
	}
	waitFor(t, "5 messages", func() bool { return rec.count() == 5 })
	before := sub.Position()

	r.stop()
	ev.waitEvent(t, "status:reconnecting")
	for i := range 100 {
		other.srv.Publish(ctxT(t), "feed", "", 5+i)
	}
	r.start()
	ev.waitEvent(t, "reconnect")
	_, gaps := out.get()
	if len(gaps) != 1 {
		t.Fatalf("gaps %+v", gaps)
	}
	g := gaps[0]
	if g.Recovered || g.Reason == "" || g.Since != before || g.Position != (client.Position{Offset: 105, Epoch: before.Epoch}) {
		t.Fatalf("gap %+v (before %v)", g, before)
	}
	if sub.Recovered() || sub.Position().Offset != 105 {
		t.Fatalf("Recovered() %v, position %v", sub.Recovered(), sub.Position())
	}
	other.srv.Publish(ctxT(t), "feed", "", "after")
	waitFor(t, "the marker", func() bool { return len(rec.markers()) == 1 })
	rec.check(t, 5)
}

// The edges: a channel nobody published to, and a server without history
// (no positions at all): subscribe and resume work without hanging.
func TestCatchUpEdges(t *testing.T) {
	t.Run("empty channel", func(t *testing.T) {
		m := newMemory(t)
		defer m.Close()
		r := newRestartable(t, nil, sss.WithScaler(m))
		var out outcomes
		ev := newEvents()
		c := dial(t, r.url, fastRetry, hooks(out.hooks(), watch(ev)))
		on, msgs := messages()
		sub, err := c.Subscribe(ctxT(t), "quiet", client.WithMessageHandler(on))
		if err != nil {
			t.Fatal(err)
		}
		p := sub.Position()
		if p.IsZero() || p.Offset != 0 {
			t.Fatalf("position %v", p)
		}
		r.stop()
		r.start()
		ev.waitEvent(t, "reconnect")
		recovered, gaps := out.get()
		if len(gaps) != 0 || len(recovered) != 1 || !recovered[0].Recovered || recovered[0].Since != p || recovered[0].Position != p {
			t.Fatalf("outcomes %+v, gaps %+v", recovered, gaps)
		}
		r.server().Publish(ctxT(t), "quiet", "", 1)
		if m := recv(t, msgs); m.Offset != 1 || m.Epoch != p.Epoch {
			t.Fatalf("got %+v", m)
		}
	})
	t.Run("no history", func(t *testing.T) {
		m := newMemory(t, memory.WithHistory(0, 0))
		defer m.Close()
		r := newRestartable(t, nil, sss.WithScaler(m), sss.WithSessionParser(userSession))
		var out outcomes
		ev := newEvents()
		onUser, users := messages()
		c := dial(t, r.url, fastRetry, hooks(out.hooks(), watch(ev), client.Hooks{OnUserMessage: onUser}), asUser("nat"))
		on, msgs := messages()
		sub, err := c.Subscribe(ctxT(t), "x", client.WithMessageHandler(on))
		if err != nil {
			t.Fatal(err)
		}
		if p := sub.Position(); !p.IsZero() {
			t.Fatalf("position %v without history", p)
		}
		r.stop()
		r.start()
		ev.waitEvent(t, "reconnect")
		// Without positions nothing could be caught up: said so.
		recovered, gaps := out.get()
		if len(recovered) != 2 || len(gaps) != 2 || gaps[0].Recovered || !gaps[0].Since.IsZero() || gaps[0].Reason == "" {
			t.Fatalf("outcomes %+v, gaps %+v", recovered, gaps)
		}
		r.server().Publish(ctxT(t), "x", "", 1)
		r.server().PublishUser(ctxT(t), "nat", "", 2)
		if m := recv(t, msgs); string(m.Data) != "1" || m.Offset != 0 || m.Epoch != "" {
			t.Fatalf("got %+v", m)
		}
		if m := recv(t, users); string(m.Data) != "2" {
			t.Fatalf("got %+v", m)
		}
	})
}

// Publications to the user and session channels while the client is away
// are delivered after the reconnect, exactly once, in order.
func TestUserChannelCatchUp(t *testing.T) {
	m := newMemory(t)
	defer m.Close()
	r := newRestartable(t, nil, sss.WithScaler(m), sss.WithSessionParser(userSession))
	other := newServer(t, m)
	var out outcomes
	ev := newEvents()
	var users, sessions recorder
	c := dial(t, r.url, fastRetry, asUser("alice"),
		client.WithHeader(http.Header{"X-Session": {"tab1"}}),
		hooks(out.hooks(), watch(ev), client.Hooks{OnUserMessage: users.handle, OnSessionMessage: sessions.handle}))
	userPos := c.Position("$u.alice")
	if userPos.IsZero() || c.Position(sss.SessionChannel("alice", "tab1")).IsZero() {
		t.Fatalf("welcome positions %v %v", userPos, c.Position(sss.SessionChannel("alice", "tab1")))
	}
	// A subscription too, whose catch-up is reported with theirs.
	if _, err := c.Subscribe(ctxT(t), "unrelated"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		other.srv.PublishUser(ctxT(t), "alice", "", i)
	}
	waitFor(t, "3 user messages", func() bool { return users.count() == 3 })

	r.stop()
	ev.waitEvent(t, "status:reconnecting")
	for i := range 50 {
		other.srv.PublishUser(ctxT(t), "alice", "", 3+i)
		if i < 20 {
			other.srv.PublishSession(ctxT(t), "alice", "tab1", "", i)
		}
	}
	r.start()
	ev.waitEvent(t, "reconnect")
	other.srv.PublishUser(ctxT(t), "alice", "", "end")
	other.srv.PublishSession(ctxT(t), "alice", "tab1", "", "end")
	waitFor(t, "the markers", func() bool { return len(users.markers()) == 1 && len(sessions.markers()) == 1 })
	users.check(t, 53)
	sessions.check(t, 20)
	recovered, gaps := out.get()
	if len(gaps) != 0 {
		t.Fatalf("gaps %+v", gaps)
	}
	var kinds []string
	for _, o := range recovered {
		kinds = append(kinds, o.Kind.String()+":"+o.Channel)
	}
	slices.Sort(kinds)
	if want := []string{"session:$s.5:alice:tab1", "subscription:unrelated", "user:$u.alice"}; !slices.Equal(kinds, want) {
		t.Fatalf("outcomes %v, want %v", kinds, want)
	}
	if p := c.Position("$u.alice"); p.Offset != userPos.Offset+54 || p.Epoch != userPos.Epoch {
		t.Fatalf("user position %v (welcome %v)", p, userPos)
	}
	if st := c.Stats(); st.Duplicates != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// Subscribed to "news" and "news.uk": publications on "news.uk.x" and
// "news.y" made during a drop arrive once each after the resume, through
// the most specific subscription, in order per subscription.
func TestHierarchyCatchUp(t *testing.T) {
	m := newMemory(t)
	defer m.Close()
	r := newRestartable(t, nil, sss.WithScaler(m))
	other := newServer(t, m)
	var out outcomes
	ev := newEvents()
	c := dial(t, r.url, fastRetry, hooks(out.hooks(), watch(ev)))
	var news, uk recorder
	var mu sync.Mutex
	var wrong []string
	check := func(want string, rec *recorder) func(client.Message) {
		return func(m client.Message) {
			if m.Sub != want || (want == "news" && strings.HasPrefix(m.Channel, "news.uk")) {
				mu.Lock()
				wrong = append(wrong, fmt.Sprintf("%s via %s", m.Channel, m.Sub))
				mu.Unlock()
			}
			rec.handle(m)
		}
	}
	if _, err := c.Subscribe(ctxT(t), "news", client.WithMessageHandler(check("news", &news))); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Subscribe(ctxT(t), "news.uk", client.WithMessageHandler(check("news.uk", &uk))); err != nil {
		t.Fatal(err)
	}
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			other.srv.Publish(ctxT(t), "news.uk.x", "", i)
			other.srv.Publish(ctxT(t), "news.y", "", i)
		}
	}
	publish(0, 5)
	waitFor(t, "the first messages", func() bool { return news.count() == 5 && uk.count() == 5 })

	r.stop()
	ev.waitEvent(t, "status:reconnecting")
	publish(5, 30)
	r.start()
	ev.waitEvent(t, "reconnect")
	publish(30, 35)
	other.srv.Publish(ctxT(t), "news.uk.x", "", "end")
	other.srv.Publish(ctxT(t), "news.y", "", "end")
	waitFor(t, "the markers", func() bool { return len(news.markers()) == 1 && len(uk.markers()) == 1 })
	news.check(t, 35)
	uk.check(t, 35)
	mu.Lock()
	defer mu.Unlock()
	if len(wrong) > 0 {
		t.Errorf("%d messages through the wrong subscription, e.g. %v", len(wrong), wrong[:min(5, len(wrong))])
	}
	recovered, gaps := out.get()
	if len(gaps) != 0 || len(recovered) != 2 {
		t.Fatalf("outcomes %+v gaps %+v", recovered, gaps)
	}
	// The server sends each publication once, through the most specific
	// subscription, during the catch-up too: the client drops nothing.
	if st := c.Stats(); st.Duplicates != 0 {
		t.Fatalf("stats %+v: the server sent duplicates", st)
	}
}

// The frames, by hand: subscribe sends no position; resume sends each
// subscription's position and those of the user and session channels when
// they are the previous connection's (not after a change of user or
// session); duplicates are dropped; a publication from another epoch is
// reported as a gap before it is delivered.
func TestResumeFramePositions(t *testing.T) {
	var mu sync.Mutex
	conns := 0
	frames := make(chan string, 16) // what the client sent, as the test needs it
	next := make(chan struct{})     // the test lets the script drop the link
	fs := newFakeServer(t, func(fc *fakeConn) {
		mu.Lock()
		conns++
		n := conns
		mu.Unlock()
		frame := func(typ string) map[string]any {
			for {
				f := fc.next(5 * time.Second)
				if f == nil || f["type"] == typ {
					return f
				}
			}
		}
		report := func(f map[string]any, key string) {
			b, _ := json.Marshal(f[key])
			frames <- string(b)
		}
		switch n {
		case 1:
			fc.send(`{"type":"welcome","version":1,"conn":"n1.a","session":"s1","user":"al","channels":{"user":"$u.al","session":"$s.s1"},` +
				`"positions":{"$u.al":{"offset":7,"epoch":"e1"},"$s.s1":{"offset":0,"epoch":"e2"}},"ping":25000,"pong":10000,"limits":{"maxMessage":65536,"maxSubscriptions":256,"concurrency":4}}`)
			f := frame("subscribe")
			report(f, "since")
			fc.send(`{"type":"ack","id":` + id(f) + `,"result":{"channel":"a","offset":41,"epoch":"ea"}}`)
			f = frame("subscribe")
			report(f, "since")
			fc.send(`{"type":"ack","id":` + id(f) + `,"result":{"channel":"b"}}`)
			fc.send(`{"type":"pub","channel":"a","sub":"a","event":"","data":42,"offset":42,"epoch":"ea"}`,
				`{"type":"pub","channel":"a","sub":"a","event":"","data":-1,"offset":42,"epoch":"ea"}`,
				`{"type":"pub","channel":"a","sub":"a","event":"","data":-2,"offset":40,"epoch":"ea"}`,
				`{"type":"pub","channel":"$u.al","sub":"$u.al","event":"","data":8,"offset":8,"epoch":"e1"}`,
				`{"type":"pub","channel":"b.c","sub":"b","event":"","data":"b"}`)
		case 2:
			fc.send(`{"type":"welcome","version":1,"conn":"n1.b","session":"s1","user":"al","channels":{"user":"$u.al","session":"$s.s1"},` +
				`"positions":{"$u.al":{"offset":30,"epoch":"e1"},"$s.s1":{"offset":0,"epoch":"e2"}},"ping":25000,"pong":10000,"limits":{"maxMessage":65536,"maxSubscriptions":256,"concurrency":4}}`)
			f := frame("resume")
			report(f, "subscriptions")
			fc.send(`{"type":"ack","id":`+id(f)+`,"result":{"subscriptions":[`+
				`{"channel":"a","offset":42,"epoch":"ea","recovered":true},`+
				`{"channel":"b"},`+
				`{"channel":"$s.s1","offset":0,"epoch":"e2","recovered":true},`+
				`{"channel":"$u.al","offset":30,"epoch":"e1","recovered":false,"reason":"trimmed"}]}}`,
				`{"type":"pub","channel":"a","sub":"a","event":"","data":43,"offset":43,"epoch":"ea"}`,
				`{"type":"pub","channel":"$u.al","sub":"$u.al","event":"","data":31,"offset":31,"epoch":"e1"}`,
				`{"type":"pub","channel":"a","sub":"a","event":"","data":5,"offset":5,"epoch":"eb"}`,
				`{"type":"pub","channel":"a","sub":"a","event":"","data":6,"offset":6,"epoch":"eb"}`)
		default:
			// Another user and session: their channels start afresh.
			fc.send(`{"type":"welcome","version":1,"conn":"n1.c","session":"s9","user":"bob","channels":{"user":"$u.bob","session":"$s.s9"},` +
				`"positions":{"$u.bob":{"offset":3,"epoch":"e1"},"$s.s9":{"offset":0,"epoch":"e2"}},"ping":25000,"pong":10000,"limits":{"maxMessage":65536,"maxSubscriptions":256,"concurrency":4}}`)
			f := frame("resume")
			report(f, "subscriptions")
			fc.send(`{"type":"ack","id":` + id(f) + `,"result":{"subscriptions":[{"channel":"a","offset":6,"epoch":"eb","recovered":true},{"channel":"b"}]}}`)
			fc.next(5 * time.Second)
			return
		}
		select {
		case <-next:
		case <-time.After(10 * time.Second):
		}
	})

	ev := newEvents()
	var out outcomes
	c := dial(t, fs.url, fastRetry, hooks(watch(ev), out.hooks(), client.Hooks{
		OnUserMessage: func(m client.Message) { ev.add(fmt.Sprintf("user:%s@%d", m.Data, m.Offset)) },
		OnGap:         func(info client.RecoverInfo) { ev.add("gap:" + info.Kind.String() + ":" + info.Channel) },
	}))
	onMsg := func(m client.Message) { ev.add(fmt.Sprintf("%s:%s@%d%s", m.Sub, m.Data, m.Offset, m.Epoch)) }
	a, err := c.Subscribe(ctxT(t), "a", client.WithMessageHandler(onMsg))
	if err != nil {
		t.Fatal(err)
	}
	if s := recv(t, frames); s != "null" {
		t.Fatalf("subscribe sent since %s", s)
	}
	b, err := c.Subscribe(ctxT(t), "b", client.WithMessageHandler(onMsg))
	if err != nil {
		t.Fatal(err)
	}
	recv(t, frames)
	ev.waitEvent(t, `b:"b"@0`)
	if got, want := a.Position(), (client.Position{Offset: 42, Epoch: "ea"}); got != want {
		t.Fatalf("a at %v, want %v", got, want)
	}
	if p := b.Position(); !p.IsZero() {
		t.Fatalf("b at %v", p)
	}
	if p := c.Position("$u.al"); p != (client.Position{Offset: 8, Epoch: "e1"}) {
		t.Fatalf("user channel at %v", p)
	}
	if st := c.Stats(); st.Duplicates != 2 {
		t.Fatalf("stats %+v", st)
	}

	next <- struct{}{}
	want := `[{"channel":"a","since":{"epoch":"ea","offset":42}},{"channel":"b"},` +
		`{"channel":"$u.al","since":{"epoch":"e1","offset":8}},{"channel":"$s.s1","since":{"epoch":"e2","offset":0}}]`
	if s := recv(t, frames); s != want {
		t.Fatalf("resume\n got %s\nwant %s", s, want)
	}
	ev.waitEvent(t, "a:6@6eb")
	log := ev.get()
	i := slices.Index(log, "status:reconnecting")
	wantLog := []string{"gap:subscription:b", "gap:user:$u.al", "status:connected", "reconnect",
		"a:43@43ea", "user:31@31", "gap:subscription:a", "a:5@5eb", "a:6@6eb"}
	got := slices.DeleteFunc(slices.Clone(log[i+1:]), func(s string) bool { return s == "status:connected" || s == "reconnect" })
	wantNoStatus := slices.DeleteFunc(slices.Clone(wantLog), func(s string) bool { return s == "status:connected" || s == "reconnect" })
	if !slices.Equal(got, wantNoStatus) {
		t.Fatalf("events after the drop %v, want %v (status events anywhere after the gaps)", log[i+1:], wantLog)
	}
	recovered, gaps := out.get()
	if len(recovered) != 5 || len(gaps) != 3 {
		t.Fatalf("outcomes %+v, gaps %+v", recovered, gaps)
	}
	if g := gaps[1]; g.Kind != client.KindUser || g.Reason != "trimmed" || g.Since != (client.Position{Offset: 8, Epoch: "e1"}) || g.Position != (client.Position{Offset: 30, Epoch: "e1"}) {
		t.Fatalf("user gap %+v", g)
	}
	if g := gaps[2]; g.Sub != a || g.Since != (client.Position{Offset: 43, Epoch: "ea"}) || g.Position != (client.Position{Offset: 4, Epoch: "eb"}) {
		t.Fatalf("epoch gap %+v", g)
	}
	if a.Recovered() || b.Recovered() {
		t.Fatal("Recovered() after gaps")
	}

	next <- struct{}{}
	if s, want := recv(t, frames), `[{"channel":"a","since":{"epoch":"eb","offset":6}},{"channel":"b"}]`; s != want {
		t.Fatalf("resume after a change of user\n got %s\nwant %s", s, want)
	}
	waitFor(t, "the third connection", func() bool { return c.Stats().Reconnects == 2 && c.Status() == client.StatusConnected })
	if !a.Recovered() {
		t.Fatal("a not recovered after an exact resume")
	}
	if p := c.Position("$u.bob"); p != (client.Position{Offset: 3, Epoch: "e1"}) {
		t.Fatalf("new user channel at %v", p)
	}
	if p := c.Position("$u.al"); !p.IsZero() {
		t.Fatalf("old user channel at %v", p)
	}
}

// Close code 4006 (the server could not keep a channel exact): the client
// reconnects, with backoff, and resumes from its positions; the outcome is
// reported.
func TestResyncClose(t *testing.T) {
	var mu sync.Mutex
	var conns []time.Time
	resumes := make(chan string, 2)
	fs := newFakeServer(t, func(fc *fakeConn) {
		mu.Lock()
		conns = append(conns, time.Now())
		n := len(conns)
		mu.Unlock()
		fc.welcome(4)
		if n == 1 {
			f := fc.next(5 * time.Second)
			fc.send(`{"type":"ack","id":`+id(f)+`,"result":{"channel":"a","offset":9,"epoch":"e"}}`,
				`{"type":"pub","channel":"a","sub":"a","event":"","data":10,"offset":10,"epoch":"e"}`)
			fc.ws.Close(4006, "channel history reset")
			return
		}
		f := fc.next(5 * time.Second)
		b, _ := json.Marshal(f["subscriptions"])
		resumes <- string(b)
		fc.send(`{"type":"ack","id":` + id(f) + `,"result":{"subscriptions":[{"channel":"a","offset":3,"epoch":"f","recovered":false,"reason":"reset"}]}}`)
		fc.next(5 * time.Second)
	})
	drops := make(chan error, 2)
	var out outcomes
	c := dial(t, fs.url, client.WithReconnectDelay(100*time.Millisecond, 100*time.Millisecond),
		hooks(out.hooks(), client.Hooks{OnDrop: func(err error) { drops <- err }}))
	on, msgs := messages()
	sub, err := c.Subscribe(ctxT(t), "a", client.WithMessageHandler(on))
	if err != nil {
		t.Fatal(err)
	}
	recv(t, msgs)
	var ce *client.CloseError
	if err := recv(t, drops); !errors.As(err, &ce) || ce.Code != 4006 {
		t.Fatalf("drop %v", err)
	}
	if s := recv(t, resumes); s != `[{"channel":"a","since":{"epoch":"e","offset":10}}]` {
		t.Fatalf("resume %s", s)
	}
	// Two gaps: the subscription's, and the session channel's, which had no
	// position (this server's welcome has none).
	waitFor(t, "the gaps", func() bool { _, gaps := out.get(); return len(gaps) == 2 })
	if _, gaps := out.get(); gaps[0].Sub != sub || gaps[0].Reason != "reset" || gaps[1].Kind != client.KindSession || !gaps[1].Since.IsZero() {
		t.Fatalf("gaps %+v", gaps)
	}
	if p := sub.Position(); p != (client.Position{Offset: 3, Epoch: "f"}) || sub.Recovered() {
		t.Fatalf("position %v, recovered %v", p, sub.Recovered())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(conns) != 2 {
		t.Fatalf("%d connections", len(conns))
	}
}

// Within one epoch, a publication past the next offset on a channel that
// cannot skip is reported as a gap before it is delivered; on a
// subscription with a deeper one, jumps are normal (that one carries the
// offsets between) and nothing is reported.
func TestOffsetJumpIsAGap(t *testing.T) {
	fs := newFakeServer(t, func(fc *fakeConn) {
		fc.send(`{"type":"welcome","version":1,"conn":"n1.a","session":"s1","user":"al","channels":{"user":"$u.al","session":"$s.s1"},` +
			`"positions":{"$u.al":{"offset":7,"epoch":"e1"},"$s.s1":{"offset":0,"epoch":"e2"}},"ping":25000,"pong":10000,"limits":{"maxMessage":65536,"maxSubscriptions":256,"concurrency":4}}`)
		acks := []string{`{"channel":"a","offset":5,"epoch":"ea"}`, `{"channel":"n","offset":0,"epoch":"en"}`, `{"channel":"n.uk","offset":0,"epoch":"eu"}`}
		for _, res := range acks {
			f := fc.next(5 * time.Second)
			if f == nil {
				return
			}
			fc.send(`{"type":"ack","id":` + id(f) + `,"result":` + res + `}`)
		}
		fc.send(`{"type":"pub","channel":"a","sub":"a","event":"","data":6,"offset":6,"epoch":"ea"}`,
			`{"type":"pub","channel":"a","sub":"a","event":"","data":9,"offset":9,"epoch":"ea"}`,
			`{"type":"pub","channel":"$u.al","sub":"$u.al","event":"","data":10,"offset":10,"epoch":"e1"}`,
			`{"type":"pub","channel":"n","sub":"n","event":"","data":1,"offset":1,"epoch":"en"}`,
			`{"type":"pub","channel":"n","sub":"n","event":"","data":4,"offset":4,"epoch":"en"}`,
			`{"type":"pub","channel":"a","sub":"a","event":"","data":10,"offset":10,"epoch":"ea"}`)
		fc.next(10 * time.Second)
	})
	ev := newEvents()
	c := dial(t, fs.url, hooks(client.Hooks{
		OnUserMessage: func(m client.Message) { ev.add(fmt.Sprintf("user:%s", m.Data)) },
		OnGap: func(info client.RecoverInfo) {
			ev.add(fmt.Sprintf("gap:%s:%d-%d", info.Channel, info.Since.Offset, info.Position.Offset))
		},
	}))
	for _, ch := range []string{"a", "n", "n.uk"} {
		if _, err := c.Subscribe(ctxT(t), ch, client.WithMessageHandler(func(m client.Message) {
			ev.add(fmt.Sprintf("%s:%s", m.Sub, m.Data))
		})); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"a:6", "gap:a:6-8", "a:9", "gap:$u.al:7-9", "user:10", "n:1", "n:4", "a:10"}
	for _, w := range want {
		ev.waitEvent(t, w)
	}
	if got := ev.get(); !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	if st := c.Stats(); st.Gaps != 2 {
		t.Fatalf("stats %+v, want 2 gaps", st)
	}
}
