package integration

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/redis/go-redis/v9"
	"github.com/testcontainers/testcontainers-go"

	"github.com/superscaled/sss/scaler"
	"github.com/superscaled/sss/scaler/mongoredis"
	"github.com/superscaled/sss/scaler/scalertest"
	"github.com/superscaled/sss/ssstest/containers"
)

// freeClusterPort returns a port on 127.0.0.1 that is free, and whose
// cluster bus port (port+10000) is free too. Another process may take them
// before the server binds them; that shows as a start failure.
func freeClusterPort(t testing.TB, taken map[int]bool) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if p+10000 > 65535 || taken[p] || taken[p+10000] {
			continue
		}
		bus, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+10000))
		if err != nil {
			continue
		}
		bus.Close()
		taken[p], taken[p+10000] = true, true
		return p
	}
	t.Fatal("no free port pair for a cluster node")
	return 0
}

// startRedisCluster starts n Redis servers in cluster mode on the host's
// network, each announcing 127.0.0.1:<its port>, so the addresses the
// cluster hands out are the ones the test dials. It splits the slots into n
// ranges, joins the nodes with CLUSTER MEET (the image has no redis-cli) and
// waits for cluster_state:ok everywhere. It returns the nodes' addresses
// and containers. A node stopped and started again keeps its address and
// its cluster configuration (nodes-<port>.conf, in the container), but no
// data.
func startRedisCluster(t *testing.T, n int) ([]string, []testcontainers.Container) {
	t.Helper()
	requireDocker(t)
	taken := map[int]bool{}
	addrs := make([]string, n)
	cs := make([]testcontainers.Container, n)
	admins := make([]*redis.Client, n)
	for i := range n {
		port := freeClusterPort(t, taken)
		p := strconv.Itoa(port)
		req := testcontainers.ContainerRequest{
			Image: containers.RedisImage(),
			Cmd: []string{"--protected-mode", "no", "--save", "", "--appendonly", "no",
				"--bind", "127.0.0.1", "--port", p,
				"--cluster-enabled", "yes", "--cluster-config-file", "nodes-" + p + ".conf",
				"--cluster-announce-ip", "127.0.0.1", "--cluster-node-timeout", "5000"},
			WaitingFor:         forLogEachStart("Ready to accept connections"),
			HostConfigModifier: func(hc *container.HostConfig) { hc.NetworkMode = "host" },
		}
		cs[i] = containers.Run(t, req)
		addrs[i] = "127.0.0.1:" + p
		admins[i] = redis.NewClient(&redis.Options{Addr: addrs[i], DialTimeout: time.Second, MaxRetries: -1})
		t.Cleanup(func() { admins[i].Close() })
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i, a := range admins {
		lo, hi := i*16384/n, (i+1)*16384/n-1
		if err := a.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", lo, hi).Err(); err != nil {
			t.Fatalf("CLUSTER ADDSLOTSRANGE %d %d on %s: %v", lo, hi, addrs[i], err)
		}
	}
	for i := 1; i < n; i++ {
		host, port, _ := net.SplitHostPort(addrs[i])
		if err := admins[0].ClusterMeet(ctx, host, port).Err(); err != nil {
			t.Fatalf("CLUSTER MEET %s: %v", addrs[i], err)
		}
	}
	waitClusterOK(t, ctx, admins...)
	return addrs, cs
}

// waitClusterOK waits until every node says cluster_state:ok and knows all
// the others.
func waitClusterOK(t *testing.T, ctx context.Context, admins ...*redis.Client) {
	t.Helper()
	n := len(admins)
	poll(t, 30*time.Second, "cluster_state:ok on every node", func() bool {
		for _, a := range admins {
			info, err := a.ClusterInfo(ctx).Result()
			if err != nil || !strings.Contains(info, "cluster_state:ok") ||
				!strings.Contains(info, "cluster_known_nodes:"+strconv.Itoa(n)+"\r") {
				return false
			}
		}
		return true
	})
}

func newClusterClient(t testing.TB, addrs []string) *redis.ClusterClient {
	rdb := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:       addrs,
		DialTimeout: time.Second,
		MaxRetries:  -1,
	})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// shardSubscribers returns, per cluster node address, how many connections
// SSUBSCRIBEd channel there.
func shardSubscribers(t testing.TB, ctx context.Context, nodes map[string]*redis.Client, channel string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for addr, c := range nodes {
		res, err := c.PubSubShardNumSub(ctx, channel).Result()
		if err != nil {
			t.Fatalf("PUBSUB SHARDNUMSUB on %s: %v", addr, err)
		}
		out[addr] = res[channel]
	}
	return out
}

// TestMongoRedisCluster3 runs the suite against a three-master Redis
// Cluster, checks that every shard channel is subscribed only on the master
// owning its slot, and moves a subscribed stream's slot to another master:
// the nodes follow it, and deliveries go on in offset order.
func TestMongoRedisCluster3(t *testing.T) {
	addrs, containers := startRedisCluster(t, 3)
	rdb := newClusterClient(t, addrs)
	nodes := map[string]*redis.Client{}
	for _, a := range addrs {
		c := redis.NewClient(&redis.Options{Addr: a, DialTimeout: time.Second, MaxRetries: -1})
		t.Cleanup(func() { c.Close() })
		nodes[a] = c
	}

	t.Run("Conformance", func(t *testing.T) {
		scalertest.Run(t, func(t *testing.T) scaler.Scaler {
			name := randomName("c")
			s, err := mongoredis.New(rdb, nil, mongoredis.WithPrefix(name+":"),
				mongoredis.WithLogger(testLogger(t)), mongoredis.WithPresenceTTL(time.Second))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		})
	})

	prefix := randomName("p") + ":"
	s, err := mongoredis.New(rdb, nil, mongoredis.WithPrefix(prefix), mongoredis.WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	n1, h1, rec1 := joinNode(t, s, "n1")
	n2, _, rec2 := joinNode(t, s, "n2")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	var streams []string
	for i := range 24 {
		st := fmt.Sprintf("s%d", i)
		streams = append(streams, st)
		for _, n := range []scaler.Node{n1, n2} {
			if err := n.Subscribe(ctx, st); err != nil {
				t.Fatalf("Subscribe %s: %v", st, err)
			}
		}
	}
	// The names are the scaler's documented ones (doc.go).
	streamCh := func(st string) string { return prefix + "{" + st + "}" }
	nodeCh := func(id string) string { return prefix + "node:{" + id + "}" }

	// checkPlacement wants every channel subscribed want times on the
	// master owning its slot, and nowhere else; it returns the masters
	// used.
	checkPlacement := func(t *testing.T, want map[string]int64) map[string]bool {
		t.Helper()
		used := map[string]bool{}
		for ch, w := range want {
			m, err := rdb.MasterForKey(ctx, ch)
			if err != nil {
				t.Fatalf("MasterForKey(%q): %v", ch, err)
			}
			owner := m.Options().Addr
			used[owner] = true
			got := shardSubscribers(t, ctx, nodes, ch)
			for addr, k := range got {
				if addr == owner && k != w {
					t.Errorf("%q: %d shard subscribers on its master %s, want %d", ch, k, addr, w)
				}
				if addr != owner && k != 0 {
					t.Errorf("%q: %d shard subscribers on %s, which does not own its slot (%s does)", ch, k, addr, owner)
				}
			}
		}
		return used
	}
	want := map[string]int64{nodeCh("n1"): 1, nodeCh("n2"): 1}
	for _, st := range streams {
		want[streamCh(st)] = 2
	}
	t.Run("Placement", func(t *testing.T) {
		if used := checkPlacement(t, want); len(used) != 3 {
			t.Errorf("channels on %d masters, want all 3", len(used))
		}
		// A publication on every stream reaches both nodes.
		for _, st := range streams {
			publishN(t, n1, st, 1, 1)
		}
		for _, rec := range []*recorder{rec1, rec2} {
			poll(t, 5*time.Second, "a delivery per stream", func() bool {
				for _, st := range streams {
					if len(rec.on(st)) != 1 {
						return false
					}
				}
				return true
			})
		}
		// Send reaches a node on any master, and reports a node that is
		// not attached: SPUBLISH counts the subscribers of the shard.
		if err := n1.Send(ctx, "n2", []byte("hi")); err != nil {
			t.Errorf("Send: %v", err)
		}
		poll(t, 5*time.Second, "the message", func() bool { return len(rec2.messages()) == 1 })
		if err := n1.Send(ctx, "nobody", []byte("x")); err == nil {
			t.Error("Send to a node that is not attached: nil, want ErrUnknownNode")
		}
	})

	t.Run("SlotMigration", func(t *testing.T) {
		st := streams[0]
		ch := streamCh(st)
		slot, err := rdb.ClusterKeySlot(ctx, ch).Result()
		if err != nil {
			t.Fatal(err)
		}
		m, err := rdb.MasterForKey(ctx, ch)
		if err != nil {
			t.Fatal(err)
		}
		src := m.Options().Addr
		var dst string
		for _, a := range addrs {
			if a != src {
				dst = a
				break
			}
		}
		id := func(addr string) string {
			v, err := nodes[addr].ClusterMyID(ctx).Result()
			if err != nil {
				t.Fatalf("CLUSTER MYID on %s: %v", addr, err)
			}
			return v
		}
		srcID, dstID := id(src), id(dst)
		do := func(addr string, args ...any) {
			t.Helper()
			if err := nodes[addr].Do(ctx, args...).Err(); err != nil {
				t.Fatalf("%v on %s: %v", args, addr, err)
			}
		}
		publishN(t, n1, st, 2, 5)
		do(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", srcID)
		do(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dstID)
		keys, err := nodes[src].ClusterGetKeysInSlot(ctx, int(slot), 100).Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) > 0 {
			host, port, _ := net.SplitHostPort(dst)
			args := []any{"MIGRATE", host, port, "", 0, 5000, "KEYS"}
			for _, k := range keys {
				args = append(args, k)
			}
			do(src, args...)
		}
		for _, a := range append([]string{dst, src}, addrs...) {
			do(a, "CLUSTER", "SETSLOT", slot, "NODE", dstID)
		}
		// Redis drops the shard channels of a slot it gave away, telling
		// the subscribers with a sunsubscribe push; the nodes resubscribe
		// on the new owner.
		poll(t, 10*time.Second, "both nodes subscribed on the new owner", func() bool {
			return shardSubscribers(t, ctx, nodes, ch)[dst] == 2
		})
		publishN(t, n1, st, 6, 10)
		for _, rec := range []*recorder{rec1, rec2} {
			poll(t, 5*time.Second, "offset 10", func() bool {
				ds := rec.on(st)
				return len(ds) > 0 && ds[len(ds)-1].Offset == 10
			})
			ds := rec.on(st)
			for i := 1; i < len(ds); i++ {
				if ds[i].Offset <= ds[i-1].Offset {
					t.Fatalf("deliveries out of order: offset %d after %d", ds[i].Offset, ds[i-1].Offset)
				}
			}
		}
		// History moved with the slot.
		entries, top, err := h1.Since(ctx, st, scaler.Position{}, 100)
		if err != nil || top.Offset != 10 || len(entries) != 10 {
			t.Errorf("Since after the move: %d entries, top %+v, %v; want 10 and offset 10", len(entries), top, err)
		}
		// Every channel, moved or not, is where its slot is, once.
		poll(t, 10*time.Second, "placement settled", func() bool {
			for ch, w := range want {
				m, err := rdb.MasterForKey(ctx, ch)
				if err != nil || shardSubscribers(t, ctx, nodes, ch)[m.Options().Addr] != w {
					return false
				}
			}
			return true
		})
		checkPlacement(t, want)
	})

	// A master restarts (empty, as it runs without persistence), quicker
	// than the cluster's node timeout: the shards connected to it break,
	// the nodes resubscribe there once it is back, and publications on its
	// streams reach them again (in a new epoch).
	t.Run("MasterRestart", func(t *testing.T) {
		st := streams[1]
		ch := streamCh(st)
		m, err := rdb.MasterForKey(ctx, ch)
		if err != nil {
			t.Fatal(err)
		}
		owner := m.Options().Addr
		var c testcontainers.Container
		for i, a := range addrs {
			if a == owner {
				c = containers[i]
			}
		}
		stopContainer(t, c)
		if err := n1.Publish(ctx, &scaler.Publication{Channel: st, Data: []byte("0")}); err == nil {
			t.Error("Publish while the stream's master is down: nil, want an error")
		}
		sctx, cancel := context.WithTimeout(ctx, readyTimeout)
		defer cancel()
		if err := c.Start(sctx); err != nil {
			t.Fatalf("start %s again: %v", owner, err)
		}
		admins := make([]*redis.Client, 0, len(nodes))
		for _, a := range addrs {
			admins = append(admins, nodes[a])
		}
		waitClusterOK(t, ctx, admins...)
		poll(t, 15*time.Second, "both nodes subscribed again", func() bool {
			return shardSubscribers(t, ctx, nodes, ch)[owner] == 2
		})
		before1, before2 := len(rec1.on(st)), len(rec2.on(st))
		publishN(t, n1, st, 1, 1)
		poll(t, 5*time.Second, "a delivery after the restart", func() bool {
			return len(rec1.on(st)) == before1+1 && len(rec2.on(st)) == before2+1
		})
		if d := rec1.on(st)[before1]; d.Offset != 1 {
			t.Errorf("first delivery after the restart: offset %d, want 1 (new epoch)", d.Offset)
		}
		poll(t, 15*time.Second, "placement settled", func() bool {
			for ch, w := range want {
				m, err := rdb.MasterForKey(ctx, ch)
				if err != nil || shardSubscribers(t, ctx, nodes, ch)[m.Options().Addr] != w {
					return false
				}
			}
			return true
		})
		checkPlacement(t, want)
	})
}
