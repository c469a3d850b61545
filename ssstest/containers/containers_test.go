package containers_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/client"
	"github.com/superscaled/sss/scaler"
	"github.com/superscaled/sss/scaler/mongoredis"
	"github.com/superscaled/sss/ssstest"
	"github.com/superscaled/sss/ssstest/containers"
)

func TestMain(m *testing.M) {
	// Ryuk, testcontainers' reaper, needs an image of its own that an
	// offline machine lacks; the helpers remove their containers
	// themselves. Loopback only, whatever the Docker host looks like.
	for k, v := range map[string]string{"TESTCONTAINERS_RYUK_DISABLED": "true", "TESTCONTAINERS_HOST_OVERRIDE": "127.0.0.1"} {
		if _, ok := os.LookupEnv(k); !ok {
			os.Setenv(k, v)
		}
	}
	goleak.VerifyTestMain(m)
}

func byHeader(r *http.Request) (*sss.Session, error) {
	return &sss.Session{UserID: r.Header.Get("X-User")}, nil
}

// Two instances on the scaler MongoRedis returns: a publication on one
// reaches a client of the other, with a position (Redis numbers it); Redis
// restarted (empty, on a new host port): the scaler follows it, the client
// is told of the gap and receives what comes next; the URLs work for a
// scaler of another process.
func TestMongoRedis(t *testing.T) {
	sc, b := containers.MongoRedis(t, containers.WithScalerOptions(mongoredis.WithCallTimeout(2*time.Second)))
	cl := ssstest.NewCluster(t, 2, ssstest.WithScaler(sc), ssstest.WithServerOptions(sss.WithSessionParser(byHeader)))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	got := make(chan client.Message, 16)
	gaps := make(chan client.RecoverInfo, 16)
	c := cl.Dial(t, 1, client.WithHeader(http.Header{"X-User": {"ann"}}),
		client.WithHooks(client.Hooks{OnGap: func(i client.RecoverInfo) { gaps <- i }}))
	if _, err := c.Subscribe(ctx, "feed", client.WithMessageHandler(func(m client.Message) { got <- m })); err != nil {
		t.Fatal(err)
	}
	if err := cl.Servers[0].Publish(ctx, "feed", "n", 1); err != nil {
		t.Fatal(err)
	}
	if m := <-got; string(m.Data) != "1" || m.Offset != 1 || m.Epoch == "" {
		t.Fatalf("got %+v, want 1 at offset 1 of an epoch", m)
	}

	before := b.Redis.Addr()
	b.Redis.Stop(t)
	if err := cl.Servers[0].Publish(ctx, "feed", "n", 0); !errors.Is(err, sss.ErrUnavailable) {
		t.Fatalf("publish while Redis is down: %v, want ErrUnavailable", err)
	}
	b.Redis.Start(t)
	t.Logf("Redis moved from %s to %s", before, b.Redis.Addr())
	for {
		err := cl.Servers[0].Publish(ctx, "feed", "n", 2)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("publish after Redis restarted: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	select {
	case g := <-gaps:
		if g.Channel != "feed" || g.Recovered {
			t.Fatalf("gap %+v", g)
		}
	case <-ctx.Done():
		t.Fatal("no gap reported: Redis lost the history")
	}
	if m := <-got; string(m.Data) != "2" {
		t.Fatalf("got %s, want 2", m.Data)
	}

	if !strings.HasPrefix(b.Redis.URL(), "redis://127.0.0.1:") || !strings.HasPrefix(b.Mongo.URL(), "mongodb://127.0.0.1:") {
		t.Fatalf("URLs %s %s", b.Redis.URL(), b.Mongo.URL())
	}
	other, err := mongoredis.Dial(ctx, b.Redis.URL(), b.Mongo.URL(), b.Database, mongoredis.WithPrefix(b.Prefix))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	node, err := other.Join(ctx, "other", nopHandler{})
	if err != nil {
		t.Fatal(err)
	}
	// The same streams as the cluster's: feed is at offset 1 of its new epoch.
	if _, pos, err := node.(scaler.History).Since(ctx, "feed", scaler.Position{}, 0); err != nil || pos.Offset != 1 {
		t.Fatalf("feed from another process: %+v, %v; want offset 1", pos, err)
	}
	node.Close()
}

type nopHandler struct{}

func (nopHandler) HandleDelivery(scaler.Delivery) {}
func (nopHandler) HandleMessage(string, []byte)   {}
func (nopHandler) HandleMissed(string)            {}

// An application's chat test across two instances on real Redis and
// MongoDB, in your _test.go file with your server options. Without Docker
// it skips (fails with SSS_REQUIRE_DOCKER=1).
func ExampleMongoRedis() {
	testChat := func(t *testing.T) {
		sc, _ := containers.MongoRedis(t)
		cl := ssstest.NewCluster(t, 2, ssstest.WithScaler(sc),
			ssstest.WithServerOptions(sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
				return &sss.Session{UserID: r.Header.Get("X-User")}, nil
			})))
		for _, srv := range cl.Servers {
			srv.HandleAsk("send", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
				return nil, srv.Publish(ctx, "room.1", "message", map[string]any{"from": c.UserID(), "text": data})
			})
		}
		ctx := context.Background()
		alice := cl.Dial(t, 0, client.WithHeader(http.Header{"X-User": {"alice"}}))
		bob := cl.Dial(t, 1, client.WithHeader(http.Header{"X-User": {"bob"}}))
		got := make(chan client.Message, 1)
		if _, err := bob.Subscribe(ctx, "room.1", client.WithMessageHandler(func(m client.Message) { got <- m })); err != nil {
			t.Fatal(err)
		}
		// Alice's message, published by instance 0, reaches bob on instance 1 through Redis.
		if err := alice.Ask(ctx, "send", "hi bob", nil); err != nil {
			t.Fatal(err)
		}
		if m := <-got; m.Offset != 1 {
			t.Fatalf("bob got %s at %d", m.Data, m.Offset)
		}
	}
	_ = testChat
}
