package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/client"
	"github.com/superscaled/sss/scaler"
	natsscaler "github.com/superscaled/sss/scaler/nats"
	"github.com/superscaled/sss/ssstest/containers"
)

// natsCluster is n sss.Servers, each with its own NATS Scaler (its own
// connection) and its own killable listener, as separate processes.
type natsCluster struct {
	servers   []*sss.Server
	scalers   []*natsscaler.Scaler
	listeners []*killableListener
	urls      []string
}

// newNATSCluster starts n servers; natsURL(i) is server i's NATS URL list
// and dial, when not nil, the dialer its connection uses.
func newNATSCluster(t *testing.T, n int, natsURL func(i int) string, dial nats.CustomDialer) *natsCluster {
	t.Helper()
	prefix := randomName("s")
	nc := &natsCluster{}
	for i := range n {
		opts := natsOpts()
		if dial != nil {
			opts = append(opts, nats.SetCustomDialer(dial))
		}
		sc := dialNATS(t, natsURL(i), natsscaler.WithPrefix(prefix), natsscaler.WithPresenceTTL(2*time.Second),
			natsscaler.WithNATSOptions(opts...))
		srv, err := sss.New(sss.WithScaler(sc), sss.WithSessionParser(sessionFromHeaders),
			sss.WithLogger(testLogger(t)), sss.WithAskTimeout(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		url, kl := serveKillable(t, srv)
		nc.servers, nc.scalers, nc.listeners = append(nc.servers, srv), append(nc.scalers, sc), append(nc.listeners, kl)
		nc.urls = append(nc.urls, url)
	}
	return nc
}

// kill makes instance i die as a killed process does: its node stops
// without a word to NATS, its clients' connections drop.
func (nc *natsCluster) kill(i int) {
	nc.scalers[i].Crash(nc.servers[i].NodeID())
	nc.listeners[i].kill()
	nc.servers[i].Close()
}

// gotMsgs records messages per client.
type gotMsgs struct {
	mu   sync.Mutex
	msgs []client.Message
}

func (g *gotMsgs) add(m client.Message) {
	g.mu.Lock()
	g.msgs = append(g.msgs, m)
	g.mu.Unlock()
}

func (g *gotMsgs) list() []client.Message {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]client.Message(nil), g.msgs...)
}

// TestNATSServers runs three servers on one NATS server, with Go clients
// spread over them.
func TestNATSServers(t *testing.T) {
	_, addr := runNATS(t)
	cl := newNATSCluster(t, 3, func(int) string { return natsURLs(addr) }, nil)
	ctx := ctxT(t)
	dial := func(t *testing.T, i int, user string, opts ...client.Option) *client.Client {
		t.Helper()
		c, err := client.Dial(ctx, cl.urls[i], append([]client.Option{client.WithHeader(who(user, ""))}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	t.Run("FanOutAndHierarchy", func(t *testing.T) {
		var got [3]gotMsgs
		for i := range 3 {
			c := dial(t, i, fmt.Sprint("u", i))
			if _, err := c.Subscribe(ctx, "news", client.WithMessageHandler(got[i].add)); err != nil {
				t.Fatal(err)
			}
			if i == 1 { // also the child: still one message per publication
				if _, err := c.Subscribe(ctx, "news.uk", client.WithMessageHandler(got[i].add)); err != nil {
					t.Fatal(err)
				}
			}
		}
		for j, ch := range []string{"news.uk", "news", "news.uk.london", "sport"} {
			if err := cl.servers[j%3].Publish(ctx, ch, "article", j); err != nil {
				t.Fatal(err)
			}
		}
		for i := range got {
			poll(t, 10*time.Second, fmt.Sprintf("client %d to get 3 publications", i), func() bool { return len(got[i].list()) >= 3 })
		}
		time.Sleep(200 * time.Millisecond) // a duplicate or "sport" would be here by now
		for i := range got {
			msgs := got[i].list()
			if len(msgs) != 3 || msgs[0].Channel != "news.uk" || msgs[1].Channel != "news" || msgs[2].Channel != "news.uk.london" {
				t.Errorf("client %d got %+v; want news.uk, news, news.uk.london once each, in order", i, msgs)
			}
			for _, m := range msgs {
				if m.Offset == 0 || m.Epoch == "" {
					t.Errorf("client %d: %s without a position", i, m.Channel)
				}
			}
		}
	})

	t.Run("TellUserAcrossInstances", func(t *testing.T) {
		var alice, bob atomic.Int32
		tell := func(n *atomic.Int32) client.Option {
			return client.WithTellHandler("notify", func(context.Context, json.RawMessage) error { n.Add(1); return nil })
		}
		a0, a1, b2 := dial(t, 0, "alice", tell(&alice)), dial(t, 1, "alice", tell(&alice)), dial(t, 2, "bob", tell(&bob))
		for _, c := range []*client.Client{a0, a1, b2} { // the user channel is live once a request went through
			if _, err := c.Subscribe(ctx, "warmup"); err != nil {
				t.Fatal(err)
			}
		}
		if err := cl.servers[2].Tell(ctx, sss.ToUser("alice"), "notify", "hi"); err != nil {
			t.Fatal(err)
		}
		poll(t, 10*time.Second, "both of alice's connections to get the tell", func() bool { return alice.Load() == 2 })
		time.Sleep(200 * time.Millisecond)
		if bob.Load() != 0 || alice.Load() != 2 {
			t.Errorf("tells: alice %d, bob %d; want 2 and 0", alice.Load(), bob.Load())
		}
	})

	t.Run("AskAcrossInstances", func(t *testing.T) {
		bob := dial(t, 1, "bob", client.WithAskHandler("confirm", func(_ context.Context, data json.RawMessage) (any, error) {
			return map[string]json.RawMessage{"echo": data}, nil
		}))
		res, err := cl.servers[0].Ask(ctx, sss.ToConn(bob.ID()), "confirm", "delete?")
		if err != nil {
			t.Fatalf("Ask from server 0 to a connection on server 1: %v", err)
		}
		if string(res) != `{"echo":"delete?"}` {
			t.Errorf("Ask result %s", res)
		}
	})

	// A client whose instance dies reconnects to another one, gets its
	// subscription back from the session store and every publication it
	// missed meanwhile, in order, once.
	t.Run("MovedClientCatchesUp", func(t *testing.T) {
		var rs []*received
		for i := range 3 {
			_, r := dialReceiver(t, cl.urls, i%3, fmt.Sprint("mover", i), "moves")
			rs = append(rs, r)
		}
		var mu sync.Mutex
		live := cl.servers[1:]
		p := startPublisher(func() []*sss.Server { mu.Lock(); defer mu.Unlock(); return live }, "moves.x", 5*time.Millisecond)
		poll(t, 20*time.Second, "50 publications", func() bool { return p.count() >= 50 })
		cl.kill(0)
		before := p.count()
		poll(t, 20*time.Second, "publications after the kill", func() bool { return p.count() >= before+50 })
		acked := p.finish()
		last := acked[len(acked)-1]
		for i, r := range rs {
			poll(t, 20*time.Second, fmt.Sprintf("client %d to get the last publication", i), func() bool { return r.last() == last })
			if missing, gaps := r.check(t, fmt.Sprint("client ", i), acked); missing > 0 || gaps > 0 {
				t.Errorf("client %d: %d missing, %d gaps; want an exact catch-up", i, missing, gaps)
			}
		}
	})
}

// TestNATSRestart restarts the NATS server while publications flow on a
// hierarchical channel through three instances: delivery resumes by
// itself, and every client gets each acknowledged publication once, in
// order (JetStream kept them on disk, so catch-up is exact); the stream's
// offsets stay contiguous.
func TestNATSRestart(t *testing.T) { natsRestart(t, false) }

// TestNATSRestartEmpty restarts it with its storage lost (in a tmpfs): the
// scalers create the stream and buckets again by themselves, delivery
// resumes, and what the clients missed is reported as a gap, never lost
// silently.
func TestNATSRestartEmpty(t *testing.T) { natsRestart(t, true) }

func natsRestart(t *testing.T, empty bool) {
	var opts []containers.Option
	if empty {
		opts = append(opts, containers.WithNATSTmpfs())
	}
	srv := containers.StartNATS(t, opts...)
	// The scalers' connections follow the server to its new host port.
	cl := newNATSCluster(t, 3, func(int) string { return "nats://nats.test:4222" }, srv)
	c := startContention(t, cl)

	srv.Stop(t)
	srv.Start(t)
	before := c.p.count()
	poll(t, 30*time.Second, "publications to flow again", func() bool { return c.p.count() >= before+100 })
	acked, rivalAcked, missing, gaps := c.finish(t)
	t.Logf("empty=%v: %d acknowledged (%d publishes failed during the restart); over %d clients %d missing, %d gaps reported",
		empty, len(acked), c.p.fails.Load(), len(c.rs), missing, gaps)
	if !empty && missing > 0 {
		t.Errorf("%d publications missing although JetStream kept them", missing)
	}
	checkStreams(t, natsHistory(t, cl.scalers[0]), !empty, len(acked), len(rivalAcked))
}

// TestNATSClusterNodeKill runs three instances, each attached first to a
// different node of a three-node NATS cluster; two publishers go through
// them in turn on two channels of one root stream (contending for its
// offsets); one NATS node is killed (SIGKILL) mid-stream. Its
// instance reconnects to another node, fan-out goes on, the replicated
// stream loses nothing and every client gets every acknowledged
// publication once, in order.
func TestNATSClusterNodeKill(t *testing.T) {
	cs, addrs := runNATSCluster(t)
	cl := newNATSCluster(t, 3, func(i int) string {
		return natsURLs(append(append([]string{}, addrs[i:]...), addrs[:i]...)...)
	}, nil)
	c := startContention(t, cl)
	killContainer(t, cs[0])
	before := c.p.count()
	poll(t, 30*time.Second, "publications after the kill", func() bool { return c.p.count() >= before+100 })
	acked, rivalAcked, missing, gaps := c.finish(t)
	t.Logf("%d acknowledged (%d publishes failed during the failover); over %d clients %d missing, %d gaps reported",
		len(acked), c.p.fails.Load(), len(c.rs), missing, gaps)
	if missing > 0 {
		t.Errorf("%d publications missing although the stream is replicated", missing)
	}
	checkStreams(t, natsHistory(t, cl.scalers[1]), true, len(acked), len(rivalAcked))
}

// contention is nine clients on feed.x, three per instance, and two
// publishers on two channels of one root stream (feed.x and feed.y),
// through the instances in turn: they contend for the root's offsets.
type contention struct {
	rs       []*received
	p, rival *publisher
}

// startContention starts it and waits for 100 publications.
func startContention(t *testing.T, cl *natsCluster) *contention {
	c := &contention{}
	for i := range 9 {
		_, r := dialReceiver(t, cl.urls, i%3, fmt.Sprint("r", i), "feed.x")
		c.rs = append(c.rs, r)
	}
	c.p = startPublisher(func() []*sss.Server { return cl.servers }, "feed.x", 5*time.Millisecond)
	c.rival = startPublisher(func() []*sss.Server { return reversed(cl.servers) }, "feed.y", 5*time.Millisecond)
	poll(t, 20*time.Second, "100 publications", func() bool { return c.p.count() >= 100 })
	return c
}

// finish stops the publishers, waits for every client to get the last
// acknowledged publication and checks what each received: every
// acknowledged one once, in order, or a reported gap.
func (c *contention) finish(t *testing.T) (acked, rivalAcked []int, missing, gaps int) {
	acked, rivalAcked = c.p.finish(), c.rival.finish()
	last := acked[len(acked)-1]
	for i, r := range c.rs {
		poll(t, 20*time.Second, fmt.Sprintf("client %d to get the last publication", i), func() bool { return r.last() == last })
		m, g := r.check(t, fmt.Sprint("client ", i), acked)
		missing, gaps = missing+m, gaps+g
	}
	return acked, rivalAcked, missing, gaps
}

func reversed(s []*sss.Server) []*sss.Server {
	out := make([]*sss.Server, len(s))
	for i, x := range s {
		out[len(s)-1-i] = x
	}
	return out
}

// checkStreams checks that the offsets of "feed", "feed.x" and "feed.y"
// are contiguous and, when nothing was lost (kept), that they hold at
// least what was acknowledged on each channel (a publish that failed may
// still have been stored).
func checkStreams(t *testing.T, h scaler.History, kept bool, x, y int) {
	t.Helper()
	for stream, acked := range map[string]int{"feed": x + y, "feed.x": x, "feed.y": y} {
		if n := offsetsContiguous(t, h, stream); kept && n < acked {
			t.Errorf("stream %q keeps %d publications, fewer than the %d acknowledged", stream, n, acked)
		}
	}
}

// natsLinkDialer dials through a link, as nats.go's custom dialer.
type natsLinkDialer struct{ l *link }

func (d natsLinkDialer) Dial(network, _ string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return d.l.DialContext(ctx, network, "")
}

// The connection between a node and NATS dies silently (no reset: what
// the node writes is lost, nothing comes back, no error), and it can
// connect again afterwards: with Dial's ping settings it notices within
// seconds, reconnects and is told that its stream may have missed
// deliveries, which flow again. (With nats.go's defaults, a ping every
// two minutes, it stayed deaf for 4 to 6 minutes.)
func TestNATSLinkSilent(t *testing.T) {
	srv := containers.StartNATS(t)
	l := newLink(newTarget(srv.Addr()))
	prefix := randomName("ls")
	// Only the connection options every test uses: the ping settings are
	// Dial's own.
	a := dialNATS(t, "nats://nats.test:4222", natsscaler.WithPrefix(prefix),
		natsscaler.WithNATSOptions(natsOpts(nats.SetCustomDialer(natsLinkDialer{l}))...))
	b := dialNATS(t, srv.URL(), natsscaler.WithPrefix(prefix), natsscaler.WithNATSOptions(natsOpts()...))
	ctx := ctxT(t)
	rec := &recorder{}
	na, err := a.Join(ctx, "a", rec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { na.Close() })
	if err := na.(scaler.Broker).Subscribe(ctx, "feed"); err != nil {
		t.Fatal(err)
	}
	nb, err := b.Join(ctx, "b", &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nb.Close() })
	publish := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		return nb.(scaler.Broker).Publish(ctx, &scaler.Publication{Channel: "feed", Event: "e", Data: []byte("1")})
	}
	if err := publish(); err != nil {
		t.Fatal(err)
	}
	poll(t, 10*time.Second, "the first delivery", func() bool { return len(rec.on("feed")) == 1 })

	l.setSilent(true)
	died := time.Now()
	time.Sleep(500 * time.Millisecond)
	l.setSilent(false)
	// Up to three ping intervals, then the reconnection.
	poll(t, 40*time.Second, "deliveries to flow again", func() bool {
		if err := publish(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		return len(rec.on("feed")) > 1
	})
	rec.mu.Lock()
	missed := slices.Contains(rec.missed, "feed")
	rec.mu.Unlock()
	if !missed {
		t.Error("no HandleMissed(feed) after the reconnection")
	}
	t.Logf("connection died silently; deliveries again %v later", time.Since(died).Round(time.Millisecond))
}
