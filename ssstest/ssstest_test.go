package ssstest_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/client"
	"github.com/superscaled/sss/scaler/memory"
	"github.com/superscaled/sss/ssstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// chatOptions is a small chat application's server configuration: users
// named by a header, messages sent with an ask that the server publishes
// under the sender's name, presence in rooms.
func chatOptions() []sss.Option {
	return []sss.Option{
		sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
			return &sss.Session{UserID: r.Header.Get("X-User")}, nil
		}),
		sss.WithPresence(func(string) sss.ChannelPresence { return sss.ChannelPresence{JoinLeave: true} }),
	}
}

func newChat(t *testing.T) *ssstest.Cluster {
	cl := ssstest.NewCluster(t, 2, ssstest.WithServerOptions(chatOptions()...),
		ssstest.WithMemoryOptions(memory.WithPresenceTTL(200*time.Millisecond)))
	for _, srv := range cl.Servers {
		srv.HandleAsk("send", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
			var m struct{ Room, Text string }
			if err := json.Unmarshal(data, &m); err != nil || m.Text == "" {
				return nil, sss.Errorf(sss.CodeBadRequest, "a room and a text")
			}
			return nil, srv.Publish(ctx, "room."+m.Room, "message", map[string]string{"from": c.UserID(), "text": m.Text})
		})
	}
	return cl
}

func user(name string) client.Option { return client.WithHeader(http.Header{"X-User": {name}}) }

// The chat across two instances, then one of them killed: alice's client
// fails over and catches up; bob sees her connection leave and join again.
func TestChatAcrossInstances(t *testing.T) {
	cl := newChat(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	alice, bob := cl.Dial(t, 0, user("alice")), cl.Dial(t, 1, user("bob"))
	got := make(chan client.Message, 16)
	leaves := make(chan client.ClientInfo, 4)
	if _, err := bob.Subscribe(ctx, "room.1", client.WithEventHandler("message", func(m client.Message) { got <- m }),
		client.WithLeaveHandler(func(ci client.ClientInfo) { leaves <- ci })); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Subscribe(ctx, "room.1"); err != nil {
		t.Fatal(err)
	}
	if err := alice.Ask(ctx, "send", map[string]string{"room": "1", "text": "hi"}, nil); err != nil {
		t.Fatal(err)
	}
	var m struct{ From, Text string }
	(<-got).Decode(&m)
	if m.From != "alice" || m.Text != "hi" {
		t.Fatalf("got %+v", m)
	}
	if err := alice.Ask(ctx, "send", map[string]string{"room": "1"}, nil); !errors.Is(err, client.ErrBadRequest) {
		t.Fatalf("empty message: %v", err)
	}

	// Instance 0 (alice's) dies: bob hears her leave; she comes back on
	// instance 1 and talks again.
	oldAlice := alice.Conn().ID
	cl.Kill(0)
	if ci := <-leaves; ci.Conn != oldAlice {
		t.Fatalf("leave of %+v, want alice's old connection %s", ci, oldAlice)
	}
	if err := alice.Ask(ctx, "send", map[string]string{"room": "1", "text": "still there?"}, nil); err != nil {
		t.Fatal(err)
	}
	(<-got).Decode(&m)
	if m.Text != "still there?" {
		t.Fatalf("after the kill: %+v", m)
	}
	if alice.Conn().ID == oldAlice || alice.Conn().URL != cl.URL(1) {
		t.Fatalf("alice is on %+v", alice.Conn())
	}
}

// An application's test across two instances: in your _test.go file,
// with your server options.
func ExampleNewCluster() {
	testChat := func(t *testing.T) {
		cl := ssstest.NewCluster(t, 2, ssstest.WithServerOptions(chatOptions()...))
		ctx := context.Background()
		alice := cl.Dial(t, 0, client.WithHeader(http.Header{"X-User": {"alice"}}))
		bob := cl.Dial(t, 1, client.WithHeader(http.Header{"X-User": {"bob"}}))
		got := make(chan client.Message, 1)
		if _, err := bob.Subscribe(ctx, "room.1", client.WithMessageHandler(func(m client.Message) { got <- m })); err != nil {
			t.Fatal(err)
		}
		// A publication on one instance reaches a subscriber on the other.
		if err := cl.Servers[0].Publish(ctx, "room.1", "message", "hello"); err != nil {
			t.Fatal(err)
		}
		if m := <-got; string(m.Data) != `"hello"` {
			t.Fatalf("bob got %s", m.Data)
		}
		_ = alice
		cl.Kill(1) // bob's instance dies: his client fails over to instance 0
	}
	_ = testChat
}
