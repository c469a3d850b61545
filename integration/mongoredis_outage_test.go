package integration

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/internal/wstest"
	"github.com/superscaled/sss/scaler"
	"github.com/superscaled/sss/scaler/mongoredis"
)

// bounded runs f and fails the test if it takes longer than d: nothing may
// hang while a backend is down.
func bounded(t *testing.T, d time.Duration, what string, f func() error) error {
	t.Helper()
	start := time.Now()
	err := f()
	if took := time.Since(start); took > d {
		t.Errorf("%s took %v, more than %v", what, took, d)
	}
	return err
}

func wantUnavailable(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, scaler.ErrUnavailable) {
		t.Errorf("%s while the backend is down: %v; want an error wrapping scaler.ErrUnavailable", what, err)
	}
}

// TestMongoRedisRedisOutage stops Redis mid-stream and starts it again
// (empty, on a new port): publishes fail with ErrUnavailable meanwhile,
// nothing hangs, deliveries resume in a new epoch, interests recorded
// during the outage take effect, and no goroutine is left behind.
func TestMongoRedisRedisOutage(t *testing.T) {
	b := newBackend(t)
	s, _ := b.newScaler(t, mongoredis.WithCallTimeout(time.Second))
	pubNode, _, _ := joinNode(t, s, "pub")
	subNode, hist, rec := joinNode(t, s, "sub")
	ctx := ctxT(t)
	for _, st := range []string{"live", "gone"} {
		if err := subNode.Subscribe(ctx, st); err != nil {
			t.Fatal(err)
		}
	}
	// Goroutines from here on must be gone once the outages are over.
	leaks := goleak.IgnoreCurrent()

	// A publisher runs throughout; while Redis is down its publications
	// fail, each with ErrUnavailable.
	var (
		mu               sync.Mutex
		published, fails int
		badErr           error
	)
	stop := make(chan struct{})
	var stopOnce sync.Once
	var wg sync.WaitGroup
	halt := func() { stopOnce.Do(func() { close(stop) }); wg.Wait() }
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := pubNode.Publish(pctx, &scaler.Publication{Channel: "live", Event: "e", Data: []byte(fmt.Sprint(i))})
			cancel()
			mu.Lock()
			switch {
			case err == nil:
				published++
			case errors.Is(err, scaler.ErrUnavailable):
				fails++
			default:
				badErr = err
			}
			mu.Unlock()
		}
	})
	counts := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return published, fails
	}
	t.Cleanup(halt)

	poll(t, 10*time.Second, "deliveries before the outage", func() bool { return len(rec.on("live")) >= 10 })
	before := rec.on("live")
	oldPos := scaler.Position{Offset: before[len(before)-1].Offset, Epoch: before[0].Epoch}

	for cycle := range 2 {
		stopContainer(t, b.redisC)
		poll(t, 10*time.Second, "a publish to fail", func() bool { _, f := counts(); return f > 0 })

		wantUnavailable(t, "Publish", bounded(t, 3*time.Second, "Publish", func() error {
			return pubNode.Publish(ctx, &scaler.Publication{Channel: "x", Data: []byte("1")})
		}))
		wantUnavailable(t, "Send", bounded(t, 3*time.Second, "Send", func() error {
			return pubNode.Send(ctx, "sub", []byte("m"))
		}))
		wantUnavailable(t, "Since", bounded(t, 3*time.Second, "Since", func() error {
			_, _, err := hist.Since(ctx, "live", scaler.Position{}, 10)
			return err
		}))
		// Interest changes while down: Subscribe reports the outage but
		// keeps the interest; Unsubscribe just drops it.
		wantUnavailable(t, "Subscribe", bounded(t, 3*time.Second, "Subscribe", func() error {
			return subNode.Subscribe(ctx, fmt.Sprint("while-down-", cycle))
		}))
		if err := bounded(t, 3*time.Second, "Unsubscribe", func() error { return subNode.Unsubscribe(ctx, "gone") }); err != nil {
			t.Errorf("Unsubscribe while down: %v", err)
		}
		wantUnavailable(t, "Join", bounded(t, 3*time.Second, "Join", func() error {
			n, err := s.Join(ctx, fmt.Sprint("late-", cycle), &recorder{})
			if err == nil {
				n.Close()
			}
			return err
		}))

		b.restartRedis(t)
		n := len(rec.on("live"))
		poll(t, 15*time.Second, "deliveries to resume", func() bool { return len(rec.on("live")) > n+10 })
		// Publishes may fail a moment longer (connections to the stopped
		// server still in the pool); then they all succeed.
		_, failsBefore := counts()
		n = len(rec.on("live"))
		poll(t, 15*time.Second, "publications to succeed again", func() bool {
			_, f := counts()
			if f != failsBefore {
				failsBefore, n = f, len(rec.on("live")) // start over
				return false
			}
			return len(rec.on("live")) > n+10
		})
		// The interest recorded while down is live now.
		ch := fmt.Sprint("while-down-", cycle)
		poll(t, 10*time.Second, "the interest recorded during the outage to take effect", func() bool {
			pubNode.Publish(ctx, &scaler.Publication{Channel: ch, Data: []byte("1")})
			return len(rec.on(ch)) > 0
		})
		if err := pubNode.Publish(ctx, &scaler.Publication{Channel: "gone", Data: []byte("1")}); err != nil {
			t.Fatal(err)
		}
	}
	halt()

	mu.Lock()
	if badErr != nil {
		t.Errorf("a publish failed with %v; want nil or ErrUnavailable", badErr)
	}
	mu.Unlock()
	if got := rec.on("gone"); len(got) != 0 {
		t.Errorf("%d deliveries on a stream unsubscribed during the outage", len(got))
	}

	// Within an epoch, offsets only grow; Redis came back empty, so the
	// epoch changed and the old position is lost.
	last := map[string]uint64{}
	epochs := 0
	for _, d := range rec.on("live") {
		if _, seen := last[d.Epoch]; !seen {
			epochs++
		}
		if d.Offset <= last[d.Epoch] {
			t.Fatalf("offset %d after %d in epoch %s: out of order", d.Offset, last[d.Epoch], d.Epoch)
		}
		last[d.Epoch] = d.Offset
	}
	if epochs != 3 {
		t.Errorf("deliveries came in %d epochs; want 3 (one per Redis start)", epochs)
	}
	if _, _, err := hist.Since(ctx, "live", oldPos, 10); !errors.Is(err, scaler.ErrPositionLost) {
		t.Errorf("Since(position before the restarts): %v; want ErrPositionLost", err)
	}

	// Messages flow again too.
	if err := pubNode.Send(ctx, "sub", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	poll(t, 5*time.Second, "a node message", func() bool { return len(rec.messages()) == 1 })

	// The receive loops reconnected without piling up goroutines.
	poll(t, 10*time.Second, "goroutines to settle", func() bool {
		return goleak.Find(leaks, goleak.IgnoreTopFunction("time.Sleep")) == nil
	})
	if err := goleak.Find(leaks); err != nil {
		t.Errorf("goroutines left after the outages: %v", err)
	}
}

// TestMongoRedisServerRedisOutage checks what a server sees of a Redis
// outage: Publish fails with ErrUnavailable, and works again afterwards.
func TestMongoRedisServerRedisOutage(t *testing.T) {
	b := newBackend(t)
	cl := newCluster(t, b, 1, mongoredis.WithCallTimeout(time.Second))
	srv := cl.servers[0]
	c := wstest.Dial(t, cl.urls[0], who("erin", ""), wstest.Name("erin"))
	c.Ack(map[string]any{"type": "subscribe", "channel": "feed"})
	ctx := ctxT(t)
	if err := srv.Publish(ctx, "feed", "e", 1); err != nil {
		t.Fatal(err)
	}
	c.WaitPubs("feed", 1)

	stopContainer(t, b.redisC)
	start := time.Now()
	err := bounded(t, 3*time.Second, "Server.Publish", func() error { return srv.Publish(ctx, "feed", "e", 2) })
	t.Logf("a publish failed in %v while Redis was down", time.Since(start).Round(time.Millisecond))
	if !errors.Is(err, sss.ErrUnavailable) || !errors.Is(err, scaler.ErrUnavailable) {
		t.Errorf("Server.Publish while Redis is down: %v; want ErrUnavailable", err)
	}
	b.restartRedis(t)
	poll(t, 15*time.Second, "Server.Publish to work again", func() bool { return srv.Publish(ctx, "other", "e", 3) == nil })
	if srv.Stats().ScalerErrors == 0 {
		t.Error("Stats().ScalerErrors did not count the failed publish")
	}
}

// TestMongoRedisMongoOutage stops MongoDB: subscriptions and deliveries go
// on, store errors are counted by the server and reported as
// ErrUnavailable, and the store works again once MongoDB is back.
func TestMongoRedisMongoOutage(t *testing.T) {
	b := newBackend(t)
	cl := newCluster(t, b, 1, mongoredis.WithCallTimeout(time.Second))
	srv := cl.servers[0]
	st := cl.store(t, b)
	ctx := ctxT(t)

	c := wstest.Dial(t, cl.urls[0], who("dave", "dave-session"), wstest.Name("dave"))
	c.Ack(map[string]any{"type": "subscribe", "channel": "m.before"})
	poll(t, 10*time.Second, "the subscription to be stored", func() bool {
		subs, err := st.Subscriptions(ctx, daveKey)
		return err == nil && len(subs) == 1
	})

	stopContainer(t, b.mongoC)
	errsBefore := srv.Stats().ScalerErrors
	if err := bounded(t, 4*time.Second, "subscribe", func() error {
		c.Ack(map[string]any{"type": "subscribe", "channel": "m.during"})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Publish(ctx, "m.during", "e", "still delivered"); err != nil {
		t.Fatal(err)
	}
	c.WaitPubs("m.during", 1)
	poll(t, 5*time.Second, "the failed store call to be counted", func() bool { return srv.Stats().ScalerErrors > errsBefore })
	wantUnavailable(t, "AddSubscription", bounded(t, 3*time.Second, "AddSubscription", func() error {
		return st.AddSubscription(ctx, daveKey, scaler.StoredSubscription{Channel: "x"})
	}))
	wantUnavailable(t, "Subscriptions", bounded(t, 3*time.Second, "Subscriptions", func() error {
		_, err := st.Subscriptions(ctx, daveKey)
		return err
	}))

	// Back (empty: the test server keeps its data in memory).
	b.restartMongo(t)
	poll(t, 20*time.Second, "the store to work again", func() bool {
		return st.TouchSession(ctx, daveKey) == nil
	})
	// The server wrote nothing while MongoDB was down, and MongoDB lost
	// what it had: once it is back, the stored list converges on the
	// connection's subscriptions, the one made during the outage and the
	// one made before it included, with no request from the client.
	poll(t, 20*time.Second, "the stored list to converge", func() bool {
		subs, err := st.Subscriptions(ctx, daveKey)
		return err == nil && len(subs) == 2 && subs[0].Channel == "m.before" && subs[1].Channel == "m.during"
	})
	// And new subscriptions are stored at once.
	c.Ack(map[string]any{"type": "subscribe", "channel": "m.after"})
	poll(t, 5*time.Second, "a new subscription to be stored", func() bool {
		subs, err := st.Subscriptions(ctx, daveKey)
		return err == nil && len(subs) == 3
	})
}

// daveKey is the session store's key of dave's session "dave-session": the
// server scopes sessions by user.
const daveKey = "4:dave:dave-session"
