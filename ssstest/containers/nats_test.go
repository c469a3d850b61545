package containers_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/client"
	"github.com/superscaled/sss/scaler"
	natsscaler "github.com/superscaled/sss/scaler/nats"
	"github.com/superscaled/sss/ssstest"
	"github.com/superscaled/sss/ssstest/containers"
)

// Two instances on the scaler NATS returns: a publication on one reaches a
// client of the other, with a position (JetStream numbers it); NATS
// stopped: publishing fails with ErrUnavailable, and what failed is never
// stored later; started again (its
// storage kept, on a new host port): the scaler follows it, the history
// goes on where it was; the URL works for a scaler of another process.
func TestNATS(t *testing.T) {
	const prefix = "app"
	sc, n := containers.NATS(t, containers.WithNATSScalerOptions(natsscaler.WithCallTimeout(2*time.Second), natsscaler.WithPrefix(prefix)))
	cl := ssstest.NewCluster(t, 2, ssstest.WithScaler(sc), ssstest.WithServerOptions(sss.WithSessionParser(byHeader)))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	got := make(chan client.Message, 16)
	c := cl.Dial(t, 1, client.WithHeader(http.Header{"X-User": {"ann"}}))
	if _, err := c.Subscribe(ctx, "feed", client.WithMessageHandler(func(m client.Message) { got <- m })); err != nil {
		t.Fatal(err)
	}
	if err := cl.Servers[0].Publish(ctx, "feed", "n", 1); err != nil {
		t.Fatal(err)
	}
	m := <-got
	if string(m.Data) != "1" || m.Offset != 1 || m.Epoch == "" {
		t.Fatalf("got %+v, want 1 at offset 1 of an epoch", m)
	}
	epoch := m.Epoch

	before := n.Addr()
	n.Stop(t)
	if err := cl.Servers[0].Publish(ctx, "feed", "n", 0); !errors.Is(err, sss.ErrUnavailable) {
		t.Fatalf("publish while NATS is down: %v, want ErrUnavailable", err)
	}
	n.Start(t)
	t.Logf("NATS moved from %s to %s", before, n.Addr())
	for {
		err := cl.Servers[0].Publish(ctx, "feed", "n", 2)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("publish after NATS restarted: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The publication whose call failed never arrives: it was made while
	// NATS was down, and Dial keeps no reconnect buffer that would send
	// it once connected again.
	const want = uint64(2)
	if m = <-got; string(m.Data) != "2" || m.Offset != want || m.Epoch != epoch {
		t.Fatalf("got %+v, want 2 at offset %d of epoch %s: JetStream kept the history, and nothing else was stored", m, want, epoch)
	}

	if !strings.HasPrefix(n.URL(), "nats://127.0.0.1:") {
		t.Fatalf("URL %s", n.URL())
	}
	other, err := natsscaler.Dial(ctx, n.URL(), natsscaler.WithPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	node, err := other.Join(ctx, "other", nopHandler{})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	// The same streams as the cluster's.
	if _, pos, err := node.(scaler.History).Since(ctx, "feed", scaler.Position{}, 0); err != nil || pos.Offset != want || pos.Epoch != epoch {
		t.Fatalf("feed from another process: %+v, %v; want offset %d of %s", pos, err, want, epoch)
	}
}

// An application's test across two instances on a real NATS server, in
// your _test.go file with your server options. Without Docker it skips
// (fails with SSS_REQUIRE_DOCKER=1).
func ExampleNATS() {
	testFanout := func(t *testing.T) {
		sc, _ := containers.NATS(t)
		cl := ssstest.NewCluster(t, 2, ssstest.WithScaler(sc))
		ctx := context.Background()
		bob := cl.Dial(t, 1)
		got := make(chan client.Message, 1)
		if _, err := bob.Subscribe(ctx, "news", client.WithMessageHandler(func(m client.Message) { got <- m })); err != nil {
			t.Fatal(err)
		}
		// Published by instance 0, delivered to bob on instance 1 through NATS.
		if err := cl.Servers[0].Publish(ctx, "news", "headline", "hello"); err != nil {
			t.Fatal(err)
		}
		if m := <-got; m.Offset != 1 {
			t.Fatalf("bob got %s at %d", m.Data, m.Offset)
		}
	}
	_ = testFanout
}
