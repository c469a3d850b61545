package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/testcontainers/testcontainers-go"
	tcnetwork "github.com/testcontainers/testcontainers-go/network"

	"github.com/superscaled/sss/scaler"
	natsscaler "github.com/superscaled/sss/scaler/nats"
	"github.com/superscaled/sss/scaler/scalertest"
	"github.com/superscaled/sss/ssstest/containers"
)

// runNATS starts a NATS server with JetStream (storage in the container,
// so it survives a stop and start) and returns it and its host:port.
func runNATS(t testing.TB, args ...string) (testcontainers.Container, string) {
	t.Helper()
	n := containers.StartNATS(t, containers.WithNATSFlags(args...))
	return n.Container, n.Addr()
}

// runNATSCluster starts three NATS servers with JetStream on a Docker
// network of their own, routed to each other, and returns them and their
// host:port addresses. They advertise no addresses to clients: clients
// use the mapped ports they are given.
func runNATSCluster(t testing.TB) ([]testcontainers.Container, []string) {
	t.Helper()
	requireDocker(t)
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	nw, err := tcnetwork.New(ctx)
	testcontainers.CleanupNetwork(t, nw)
	if err != nil {
		t.Fatalf("docker network: %v", err)
	}
	names := []string{"nats-a", "nats-b", "nats-c"}
	var routes []string
	for _, n := range names {
		routes = append(routes, "nats://"+n+":6222")
	}
	var cs []testcontainers.Container
	var addrs []string
	for _, n := range names {
		s := containers.StartNATS(t, containers.WithNetwork(nw.Name, n),
			containers.WithNATSFlags("-n", n, "--cluster_name", "sss", "--cluster", "nats://0.0.0.0:6222",
				"--routes", strings.Join(routes, ","), "--no_advertise"))
		cs = append(cs, s.Container)
		addrs = append(addrs, s.Addr())
	}
	return cs, addrs
}

// natsOpts are the connection options of every scaler in these tests:
// quick reconnects, and only the addresses given (never the container
// addresses a cluster would advertise).
func natsOpts(extra ...nats.Option) []nats.Option {
	return append([]nats.Option{
		nats.ReconnectWait(100 * time.Millisecond), nats.IgnoreDiscoveredServers(), nats.DontRandomize(),
		nats.ReconnectJitter(50*time.Millisecond, 50*time.Millisecond),
	}, extra...)
}

// dialNATS returns a NATS Scaler that is closed when the test ends. It
// retries for a while: a cluster elects its JetStream leader after its
// servers say they are ready.
func dialNATS(t testing.TB, urls string, opts ...natsscaler.Option) *natsscaler.Scaler {
	t.Helper()
	var (
		s   *natsscaler.Scaler
		err error
	)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err = natsscaler.Dial(ctx, urls, append([]natsscaler.Option{natsscaler.WithCallTimeout(3 * time.Second)}, opts...)...)
		cancel()
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("nats scaler: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func natsURLs(addrs ...string) string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = "nats://" + a
	}
	return strings.Join(out, ",")
}

// TestNATSConformance runs the conformance suite against one NATS server
// shared by every subtest.
func TestNATSConformance(t *testing.T) {
	_, addr := runNATS(t)
	prefix := randomName("c")
	scalertest.Run(t, func(t *testing.T) scaler.Scaler {
		return dialNATS(t, natsURLs(addr), natsscaler.WithPrefix(prefix),
			natsscaler.WithPresenceTTL(time.Second), natsscaler.WithNATSOptions(natsOpts()...))
	})
}

// TestNATSConformanceCluster runs it against a three-node NATS cluster,
// with the stream and buckets replicated three times and each scaler
// connected to a different node first: catch-up reads are served by
// whichever node leads the stream, not the one a publication came in by.
func TestNATSConformanceCluster(t *testing.T) {
	_, addrs := runNATSCluster(t)
	prefix := randomName("cc")
	i := 0
	scalertest.Run(t, func(t *testing.T) scaler.Scaler {
		i++
		first := i % len(addrs)
		rotated := append(append([]string{}, addrs[first:]...), addrs[:first]...)
		return dialNATS(t, natsURLs(rotated...), natsscaler.WithPrefix(prefix), natsscaler.WithReplicas(3),
			natsscaler.WithPresenceTTL(time.Second), natsscaler.WithNATSOptions(natsOpts()...))
	})
}

// offsetsContiguous reads a stream's whole retained history through h and
// checks that its offsets run 1..n with no hole and no repeat.
func offsetsContiguous(t *testing.T, h scaler.History, stream string) int {
	t.Helper()
	ctx := ctxT(t)
	var pos scaler.Position
	n := 0
	for {
		entries, top, err := h.Since(ctx, stream, pos, 100)
		if err != nil {
			t.Fatalf("Since(%q, %+v): %v", stream, pos, err)
		}
		for _, e := range entries {
			if e.Offset != uint64(n+1) {
				t.Fatalf("stream %q: offset %d after %d", stream, e.Offset, n)
			}
			n++
		}
		pos = scaler.Position{Offset: uint64(n), Epoch: top.Epoch}
		if len(entries) == 0 || pos.Offset == top.Offset {
			if top.Offset != uint64(n) {
				t.Fatalf("stream %q: read %d entries, its position is %+v", stream, n, top)
			}
			return n
		}
	}
}

// natsHistory joins a probe node to s and returns its History. Join is
// retried for a while: after a NATS node died, the replicated buckets may
// still be electing their leaders.
func natsHistory(t *testing.T, s *natsscaler.Scaler) scaler.History {
	t.Helper()
	var (
		n   scaler.Node
		err error
	)
	poll(t, 30*time.Second, "a probe node to join", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		n, err = s.Join(ctx, "probe-"+randomName(""), &recorder{})
		if err != nil {
			t.Logf("probe join: %v", err)
		}
		return err == nil
	})
	t.Cleanup(func() { n.Close() })
	return n.(scaler.History)
}

// TestNATSPresenceRestartEmpty restarts NATS with its storage lost: the
// nodes write their presence entries again by themselves (their heartbeat
// finds their key gone), so the list is whole again without any client
// doing anything.
func TestNATSPresenceRestartEmpty(t *testing.T) {
	s, srv := containers.NATS(t, containers.WithNATSTmpfs(), containers.WithNATSScalerOptions(
		natsscaler.WithPresenceTTL(time.Second), natsscaler.WithCallTimeout(3*time.Second)))
	var ps []scaler.Presence
	for _, id := range []string{"a", "b"} {
		n, err := s.Join(ctxT(t), id, &recorder{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		ps = append(ps, n.(scaler.Presence))
	}
	want := scaler.ClientInfo{Conn: "c1", User: "alice", Info: []byte(`"here"`)}
	if err := ps[0].Join(ctxT(t), "room", want); err != nil {
		t.Fatal(err)
	}
	srv.Stop(t)
	srv.Start(t)
	start := time.Now()
	poll(t, 20*time.Second, "node a's entry to be written again", func() bool {
		list, err := ps[1].Present(ctxT(t), "room")
		return err == nil && len(list) == 1 && list[0].Conn == want.Conn && string(list[0].Info) == `"here"`
	})
	t.Logf("entry back %v after NATS restarted empty", time.Since(start).Round(time.Millisecond))
}
