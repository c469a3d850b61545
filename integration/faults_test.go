package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/testcontainers/testcontainers-go"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/client"
	"github.com/superscaled/sss/internal/wstest"
	"github.com/superscaled/sss/scaler"
	"github.com/superscaled/sss/scaler/mongoredis"
	"github.com/superscaled/sss/ssstest/containers"
)

// Faults injected for real into a cluster of sss.Servers on Redis and a
// MongoDB-wire server: an instance's link to Redis cut and restored, Redis
// killed (SIGKILL) and restarted with and without its append-only file, an
// instance killed with its clients on it. Each checks that no publication
// is lost silently: every one a publisher got acknowledged reaches every
// subscriber once, in order, or the client is told of a gap at that point.

// link is one instance's path to a backend: it dials through a target and
// can be cut (every connection it made is closed and new ones are refused)
// and restored, as a network failure between one instance and Redis would.
type link struct {
	tg *target

	mu     sync.Mutex
	cut    bool
	silent bool
	conns  map[net.Conn]bool
}

// silentConn is a connection of a link that can go silent: from then on,
// what is written to it is dropped and what arrives on it is discarded,
// while reads still honour their deadlines and nothing reports an error,
// as when a peer or a middlebox forgets a TCP connection without a reset.
type silentConn struct {
	net.Conn
	dead atomic.Bool
}

func (c *silentConn) Read(b []byte) (int, error) {
	for {
		n, err := c.Conn.Read(b)
		if err != nil || !c.dead.Load() {
			return n, err
		}
	}
}

func (c *silentConn) Write(b []byte) (int, error) {
	if c.dead.Load() {
		return len(b), nil
	}
	return c.Conn.Write(b)
}

func newLink(tg *target) *link { return &link{tg: tg, conns: make(map[net.Conn]bool)} }

func (l *link) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	l.mu.Lock()
	cut := l.cut
	l.mu.Unlock()
	if cut {
		return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("link cut")}
	}
	c, err := l.tg.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cut || l.silent {
		c.Close()
		return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("link cut")}
	}
	sc := &silentConn{Conn: c}
	l.conns[sc] = true
	return sc, nil
}

// setSilent makes every connection the link made so far silent for ever
// and, while silent, refuses new ones; afterwards new connections work,
// as when an instance comes back on the network with another address.
func (l *link) setSilent(silent bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.silent = silent
	if silent {
		for c := range l.conns {
			c.(*silentConn).dead.Store(true)
		}
		clear(l.conns)
	}
}

func (l *link) setCut(cut bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut = cut
	if cut {
		for c := range l.conns {
			c.Close()
		}
		clear(l.conns)
	}
}

// killableListener keeps the connections it accepted, so that an instance
// can die with its clients' connections at once, as a killed process's do.
type killableListener struct {
	net.Listener
	mu    sync.Mutex
	dead  bool
	conns []net.Conn
}

func (l *killableListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead {
		c.Close()
		return nil, net.ErrClosed
	}
	l.conns = append(l.conns, c)
	return c, nil
}

func (l *killableListener) kill() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dead = true
	l.Listener.Close()
	for _, c := range l.conns {
		c.Close()
	}
}

// serveKillable serves srv on a killable listener on loopback and returns
// its WebSocket URL; the server, its HTTP server and the listener close
// when the test ends.
func serveKillable(t *testing.T, srv *sss.Server) (string, *killableListener) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	kl := &killableListener{Listener: ln}
	hs := &http.Server{Handler: srv}
	go hs.Serve(kl)
	t.Cleanup(func() {
		srv.Close()
		hs.Close()
		kl.kill()
	})
	return "ws://" + ln.Addr().String() + "/", kl
}

// faultCluster is n instances, each with its own Redis client through its
// own link, its own scaler, and its own killable listener.
type faultCluster struct {
	servers   []*sss.Server
	scalers   []*mongoredis.Scaler
	links     []*link
	listeners []*killableListener
	urls      []string
}

func newFaultCluster(t *testing.T, b *backend, n int, opts ...mongoredis.Option) *faultCluster {
	t.Helper()
	return newFaultClusterWith(t, b, n, nil, opts...)
}

// newFaultClusterWith is newFaultCluster with extra server options.
func newFaultClusterWith(t *testing.T, b *backend, n int, sopts []sss.Option, opts ...mongoredis.Option) *faultCluster {
	t.Helper()
	name := randomName("fault")
	db := b.mc.Database(name)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		db.Drop(ctx)
	})
	fc := &faultCluster{}
	for range n {
		l := newLink(b.redisT)
		rdb := redis.NewClient(&redis.Options{
			Addr: "redis.test:6379", Dialer: l.DialContext,
			DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
			MaxRetries: -1, DialerRetries: 1,
		})
		t.Cleanup(func() { rdb.Close() })
		sc, err := mongoredis.New(rdb, db, append([]mongoredis.Option{
			mongoredis.WithPrefix(name + ":"),
			mongoredis.WithLogger(testLogger(t)),
			mongoredis.WithCallTimeout(2 * time.Second),
		}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		srv, err := sss.New(append([]sss.Option{sss.WithScaler(sc), sss.WithSessionParser(sessionFromHeaders),
			sss.WithLogger(testLogger(t)), sss.WithAskTimeout(5 * time.Second)}, sopts...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sc.Close() }) // after the server's
		url, kl := serveKillable(t, srv)
		fc.servers, fc.scalers, fc.links, fc.listeners = append(fc.servers, srv), append(fc.scalers, sc), append(fc.links, l), append(fc.listeners, kl)
		fc.urls = append(fc.urls, url)
	}
	return fc
}

// kill makes instance i die as a killed process does: its clients'
// connections and its Redis connections drop at once, with no goodbye.
func (fc *faultCluster) kill(i int) {
	// Redis first: a dead process says nothing more to it, not even about
	// the clients it loses.
	fc.links[i].setCut(true)
	fc.listeners[i].kill()
	fc.servers[i].Close() // its goroutines; the connections are dead already
}

// An instance's link to Redis is cut while publications are made on the
// channels its clients hold (the first ones since they subscribed, on a
// user channel and a channel): once the link is back, the instance says it
// may have missed deliveries and fills them from history, although nothing
// else is published. Five rounds, as the issue asked.
func TestFaultLinkCut(t *testing.T) {
	b := newBackend(t)
	fc := newFaultCluster(t, b, 2)
	c := wstest.Dial(t, fc.urls[0], who("uma", "s"), wstest.Name("uma@0"))
	c.SendRaw(`{"type":"ready"}`)
	c.Subscribe("feed")
	ctx := ctxT(t)
	want := 0
	for round := 1; round <= 5; round++ {
		fc.links[0].setCut(true)
		for range 2 {
			want++
			if err := fc.servers[1].PublishUser(ctx, "uma", "e", want); err != nil {
				t.Fatal(err)
			}
			if err := fc.servers[1].Publish(ctx, "feed", "e", want); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(300 * time.Millisecond) // the instance's receive loop notices
		fc.links[0].setCut(false)
		c.WaitPubs("$u.uma", want)
		c.WaitPubs("feed", want)
	}
	for _, ch := range []string{"$u.uma", "feed"} {
		got := c.Pubs(ch)
		for i, d := range got {
			if d != fmt.Sprint(i+1) {
				t.Fatalf("%s: %v, want 1..%d once each, in order", ch, got, want)
			}
		}
		if len(got) != want {
			t.Fatalf("%s: %d publications, want %d", ch, len(got), want)
		}
	}
	if g := fc.servers[0].Stats().Gaps; g == 0 {
		t.Fatal("no gap counted: the misses were not noticed")
	}
}

// The link between an instance and Redis dies silently (no reset: what
// the instance writes is lost, nothing comes back, no error), and the
// instance can connect again afterwards: it notices through its idle ping,
// which goes unanswered, connects again, and fills what its client missed
// from history. (It used to wait on the dead connection for ever.)
func TestFaultLinkSilent(t *testing.T) {
	b := newBackend(t)
	fc := newFaultCluster(t, b, 2)
	c := wstest.Dial(t, fc.urls[0], who("sid", "s"), wstest.Name("sid@0"))
	c.SendRaw(`{"type":"ready"}`)
	c.Subscribe("feed")
	ctx := ctxT(t)
	if err := fc.servers[1].Publish(ctx, "feed", "e", 1); err != nil {
		t.Fatal(err)
	}
	c.WaitPubs("feed", 1)
	fc.links[0].setSilent(true)
	for i := 2; i <= 4; i++ {
		if err := fc.servers[1].Publish(ctx, "feed", "e", i); err != nil {
			t.Fatal(err)
		}
		if err := fc.servers[1].PublishUser(ctx, "sid", "e", i); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	fc.links[0].setSilent(false)
	// The idle check (15s) and the ping's call timeout (2s here), then
	// the reconnection.
	poll(t, 40*time.Second, "the publications made while the link was dead", func() bool {
		return len(c.Pubs("feed")) >= 4 && len(c.Pubs("$u.sid")) >= 3
	})
	if got := c.Pubs("feed"); !slices.Equal(got, []string{"1", "2", "3", "4"}) {
		t.Fatalf("feed: %v, want 1..4 once each, in order", got)
	}
	if got := c.Pubs("$u.sid"); !slices.Equal(got, []string{"2", "3", "4"}) {
		t.Fatalf("user channel: %v, want 2..4 once each, in order", got)
	}
}

// The same with Redis Cluster (sharded pub/sub, one node owning every
// slot): the node's shard connection goes silent; its idle ping goes
// unanswered, the shard is retired and its channels subscribed again on
// a new connection, and the node says the stream may have missed
// deliveries; live deliveries flow again.
func TestFaultLinkSilentCluster(t *testing.T) {
	_, addr := runRedisWith(t, "--cluster-enabled", "yes")
	tg := newTarget(addr)
	ctx := ctxT(t)
	admin := newRedisVia(t, tg)
	if err := admin.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", 0, 16383).Err(); err != nil {
		t.Fatalf("CLUSTER ADDSLOTSRANGE: %v", err)
	}
	poll(t, 20*time.Second, "cluster state ok", func() bool {
		info, err := admin.ClusterInfo(ctx).Result()
		return err == nil && strings.Contains(info, "cluster_state:ok")
	})
	l := newLink(tg)
	name := randomName("sc")
	scalerVia := func(dial func(context.Context, string, string) (net.Conn, error)) *mongoredis.Scaler {
		rdb := redis.NewClusterClient(&redis.ClusterOptions{
			// The node announces its container address; every address
			// leads to the one mapped port.
			Addrs: []string{"redis.test:6379"}, Dialer: dial,
			DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second, MaxRetries: -1,
		})
		t.Cleanup(func() { rdb.Close() })
		s, err := mongoredis.New(rdb, nil, mongoredis.WithPrefix(name+":"), mongoredis.WithLogger(testLogger(t)),
			mongoredis.WithCallTimeout(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a, _, rec := joinNode(t, scalerVia(l.DialContext), "a")
	b, _, _ := joinNode(t, scalerVia(tg.DialContext), "b")
	if err := a.Subscribe(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	publishN(t, b, "s", 1, 1)
	poll(t, 10*time.Second, "the first delivery", func() bool { return len(rec.on("s")) == 1 })
	l.setSilent(true)
	publishN(t, b, "s", 2, 3)
	time.Sleep(500 * time.Millisecond)
	l.setSilent(false)
	poll(t, 40*time.Second, "the node to say it may have missed deliveries", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return slices.Contains(rec.missed, "s")
	})
	publishN(t, b, "s", 4, 4)
	poll(t, 10*time.Second, "live deliveries again", func() bool {
		ds := rec.on("s")
		return len(ds) > 0 && ds[len(ds)-1].Offset == 4
	})
}

// received is what one Go client saw on a channel: the publications' data
// (sequence numbers) and, in their place, the gaps it was told of.
type received struct {
	mu     sync.Mutex
	events []int // a sequence number, or -1 for a gap
}

func (r *received) add(n int) {
	r.mu.Lock()
	r.events = append(r.events, n)
	r.mu.Unlock()
}

func (r *received) last() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.events) - 1; i >= 0; i-- {
		if r.events[i] >= 0 {
			return r.events[i]
		}
	}
	return 0
}

// check verifies that every acknowledged publication up to last was
// received exactly once, in order, or that a gap was reported in its
// place. It returns how many were missing and how many gaps were reported.
func (r *received) check(t *testing.T, who string, acked []int) (missing, gaps int) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := map[int]bool{}
	prev, gapSince := 0, false
	for _, n := range r.events {
		if n < 0 {
			gaps++
			gapSince = true
			continue
		}
		if seen[n] {
			t.Errorf("%s: %d received twice", who, n)
		}
		if n <= prev {
			t.Errorf("%s: %d received after %d", who, n, prev)
		}
		seen[n] = true
		// Acknowledged publications between prev and n that did not come
		// must be covered by a gap reported between them.
		for _, a := range acked {
			if a > prev && a < n && !seen[a] {
				missing++
				if !gapSince {
					t.Errorf("%s: %d lost silently (between %d and %d)", who, a, prev, n)
				}
			}
		}
		prev, gapSince = n, false
	}
	return missing, gaps
}

// publisher publishes numbered publications to channel through the
// instances in turn, every interval, and keeps the numbers acknowledged.
type publisher struct {
	mu    sync.Mutex
	acked []int
	fails atomic.Int64
	stop  chan struct{}
	done  chan struct{}
}

func startPublisher(servers func() []*sss.Server, channel string, every time.Duration) *publisher {
	p := &publisher{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for n := 1; ; n++ {
			select {
			case <-p.stop:
				return
			case <-t.C:
			}
			srvs := servers()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			err := srvs[n%len(srvs)].Publish(ctx, channel, "n", n)
			cancel()
			if err != nil {
				p.fails.Add(1)
				continue
			}
			p.mu.Lock()
			p.acked = append(p.acked, n)
			p.mu.Unlock()
		}
	}()
	return p
}

func (p *publisher) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.acked)
}

func (p *publisher) finish() []int {
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.acked)
}

// dialReceiver is a Go client on url (with the others to fail over to),
// subscribed to channel, recording what it receives and the gaps it is
// told of.
func dialReceiver(t *testing.T, urls []string, first int, user, channel string) (*client.Client, *received) {
	t.Helper()
	r := &received{}
	onGap := func(info client.RecoverInfo) {
		if info.Channel == channel {
			r.add(-1)
		}
	}
	others := slices.Concat(urls[first+1:], urls[:first])
	c, err := client.Dial(ctxT(t), urls[first], client.WithURLs(others...),
		client.WithHeader(who(user, user+"-s")),
		client.WithReconnectDelay(50*time.Millisecond, time.Second),
		client.WithHooks(client.Hooks{OnGap: onGap}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The server promises each publication once: the client had none
		// to drop.
		if st := c.Stats(); st.Duplicates != 0 {
			t.Errorf("%s: the server sent %d duplicates", user, st.Duplicates)
		}
		c.Close()
	})
	_, err = c.Subscribe(ctxT(t), channel, client.WithMessageHandler(func(m client.Message) {
		var n int
		json.Unmarshal(m.Data, &n)
		r.add(n)
	}))
	if err != nil {
		t.Fatal(err)
	}
	return c, r
}

// redisKill kills Redis (SIGKILL, no chance to save) while a publisher
// goes on through three instances, and restarts it: with the append-only
// file (every write synced) it comes back with its history and offsets,
// and every acknowledged publication reaches every client exactly once, in
// order; without, it comes back empty, and what it lost is reported as
// gaps, never lost silently, while what is published after its return is
// delivered from the start of the new epoch.
func redisKill(t *testing.T, aof bool) {
	var flags []string
	if aof {
		flags = []string{"--appendonly", "yes", "--appendfsync", "always"}
	}
	b := newBackendWith(t, flags...)
	fc := newFaultCluster(t, b, 3)
	live := func() []*sss.Server { return fc.servers }
	var clients []*received
	for i := range 9 {
		_, r := dialReceiver(t, fc.urls, i%3, fmt.Sprint("r", i), "feed")
		clients = append(clients, r)
	}
	p := startPublisher(live, "feed", 5*time.Millisecond)
	poll(t, 20*time.Second, "100 publications", func() bool { return p.count() >= 100 })

	killContainer(t, b.redisC)
	time.Sleep(time.Second)
	b.restartRedis(t)
	before := p.count()
	poll(t, 30*time.Second, "publications to flow again", func() bool { return p.count() >= before+100 })
	acked := p.finish()
	last := acked[len(acked)-1]
	for i, r := range clients {
		poll(t, 20*time.Second, fmt.Sprintf("client %d to get the last publication", i), func() bool { return r.last() == last })
	}
	var missing, gaps int
	for i, r := range clients {
		m, g := r.check(t, fmt.Sprint("client ", i), acked)
		missing, gaps = missing+m, gaps+g
	}
	t.Logf("aof=%v: %d acknowledged (%d publishes failed during the outage); over %d clients %d missing, %d gaps reported",
		aof, len(acked), p.fails.Load(), len(clients), missing, gaps)
	if aof && missing > 0 {
		t.Errorf("%d publications missing although Redis kept them", missing)
	}
}

func TestFaultRedisKillWithAOF(t *testing.T)    { redisKill(t, true) }
func TestFaultRedisKillWithoutAOF(t *testing.T) { redisKill(t, false) }

// An instance is killed with a third of the clients on it: each reconnects
// to another instance and resumes there (the session store on), and every
// acknowledged publication still reaches every client, exactly once, in
// order. The time from the kill until every one of them is back and
// resubscribed is logged (p50, p99, max), and bounded generously.
func TestFaultInstanceKill(t *testing.T) {
	b := newBackend(t)
	fc := newFaultCluster(t, b, 3)
	const perInstance = 30
	type victim struct {
		back chan time.Time
	}
	var (
		clients []*received
		victims []victim
	)
	for i := range 3 * perInstance {
		first := i % 3
		r := &received{}
		back := make(chan time.Time, 1)
		others := slices.Concat(fc.urls[first+1:], fc.urls[:first])
		user := fmt.Sprint("k", i)
		c, err := client.Dial(ctxT(t), fc.urls[first], client.WithURLs(others...),
			client.WithHeader(who(user, user+"-s")),
			client.WithHooks(client.Hooks{
				OnGap:       func(info client.RecoverInfo) { r.add(-1) },
				OnReconnect: func(client.ConnInfo) { back <- time.Now() },
			}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if st := c.Stats(); st.Duplicates != 0 {
				t.Errorf("%s: the server sent %d duplicates", user, st.Duplicates)
			}
			c.Close()
		})
		for j, ch := range []string{"feed", "room.a", "room.b"} {
			handler := func(client.Message) {}
			if j == 0 {
				handler = func(m client.Message) {
					var n int
					json.Unmarshal(m.Data, &n)
					r.add(n)
				}
			}
			if _, err := c.Subscribe(ctxT(t), ch, client.WithMessageHandler(handler)); err != nil {
				t.Fatal(err)
			}
		}
		clients = append(clients, r)
		if first == 0 {
			victims = append(victims, victim{back: back})
		}
	}
	// With no fault, every session's stored list is complete.
	probe, _, _ := joinNode(t, fc.scalers[1], "probe")
	st := probe.(scaler.SessionStore)
	poll(t, 30*time.Second, "every session's subscriptions to be stored", func() bool {
		for i := range 3 * perInstance {
			user := fmt.Sprint("k", i)
			subs, err := st.Subscriptions(ctxT(t), fmt.Sprintf("%d:%s:%s-s", len(user), user, user))
			if err != nil || len(subs) != 3 {
				return false
			}
		}
		return true
	})

	var mu sync.Mutex
	survivors := fc.servers
	p := startPublisher(func() []*sss.Server { mu.Lock(); defer mu.Unlock(); return survivors }, "feed", 5*time.Millisecond)
	poll(t, 20*time.Second, "50 publications", func() bool { return p.count() >= 50 })

	mu.Lock()
	survivors = fc.servers[1:]
	mu.Unlock()
	killed := time.Now()
	fc.kill(0)
	var delays []time.Duration
	for i, v := range victims {
		select {
		case at := <-v.back:
			delays = append(delays, at.Sub(killed))
		case <-time.After(20 * time.Second):
			t.Fatalf("client %d of the killed instance not back after 20s", i)
		}
	}
	slices.Sort(delays)
	ms := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	t.Logf("kill -> all %d clients back and resubscribed: p50 %v, p99 %v, max %v",
		len(delays), ms(delays[len(delays)/2]), ms(delays[len(delays)*99/100]), ms(delays[len(delays)-1]))
	if max := delays[len(delays)-1]; max > 10*time.Second {
		t.Errorf("the last client came back after %v", max)
	}
	before := p.count()
	poll(t, 20*time.Second, "publications after the kill", func() bool { return p.count() >= before+50 })
	acked := p.finish()
	last := acked[len(acked)-1]
	for i, r := range clients {
		poll(t, 20*time.Second, fmt.Sprintf("client %d to get the last publication", i), func() bool { return r.last() == last })
		if missing, _ := r.check(t, fmt.Sprint("client ", i), acked); missing > 0 {
			t.Errorf("client %d: %d publications missing after the kill", i, missing)
		}
	}
}

// newBackendWith is newBackend with extra redis-server flags.
func newBackendWith(t *testing.T, redisFlags ...string) *backend {
	t.Helper()
	b := &backend{}
	var raddr, maddr string
	b.redisC, raddr = runRedisWith(t, redisFlags...)
	b.mongoC, maddr = runMongo(t)
	b.redisT, b.mongoT = newTarget(raddr), newTarget(maddr)
	b.rdb = newRedisVia(t, b.redisT)
	b.mc = newMongoVia(t, b.mongoT)
	return b
}

// killContainer kills c with SIGKILL, as kill -9 would: no chance to save.
func killContainer(t testing.TB, c testcontainers.Container) {
	t.Helper()
	if err := containers.Kill(context.Background(), c); err != nil {
		t.Fatal(err)
	}
}
