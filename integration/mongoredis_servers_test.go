package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/internal/wstest"
	"github.com/superscaled/sss/scaler"
	"github.com/superscaled/sss/scaler/mongoredis"
)

// cluster is several sss.Servers, each with its own mongoredis Scaler on
// the same Redis and database, as separate processes would be.
type cluster struct {
	name    string // key prefix and database name
	scalers []*mongoredis.Scaler
	servers []*sss.Server
	urls    []string
}

// sessionFromHeaders names the user and the session from request headers,
// so tests choose them (a stable session id enables persistence).
func sessionFromHeaders(r *http.Request) (*sss.Session, error) {
	return &sss.Session{UserID: r.Header.Get("X-User"), SessionID: r.Header.Get("X-Session")}, nil
}

func who(user, session string) http.Header {
	h := http.Header{}
	h.Set("X-User", user)
	h.Set("X-Session", session)
	return h
}

func newCluster(t *testing.T, b *backend, n int, opts ...mongoredis.Option) *cluster {
	t.Helper()
	cl := &cluster{name: randomName("srv")}
	db := b.mc.Database(cl.name)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		db.Drop(ctx)
	})
	for range n {
		sc, err := mongoredis.New(b.rdb, db, append([]mongoredis.Option{
			mongoredis.WithPrefix(cl.name + ":"),
			mongoredis.WithLogger(testLogger(t)),
			mongoredis.WithCallTimeout(2 * time.Second),
		}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sc.Close() })
		srv, err := sss.New(
			sss.WithScaler(sc),
			sss.WithSessionParser(sessionFromHeaders),
			sss.WithPublishParser(func(context.Context, *sss.Conn, string, string, json.RawMessage) error { return nil }),
			sss.WithLogger(testLogger(t)),
			sss.WithAskTimeout(5*time.Second),
		)
		if err != nil {
			t.Fatal(err)
		}
		hs := httptest.NewServer(srv)
		t.Cleanup(hs.Close)
		t.Cleanup(func() { srv.Close() }) // runs before hs.Close
		cl.scalers = append(cl.scalers, sc)
		cl.servers = append(cl.servers, srv)
		cl.urls = append(cl.urls, "ws"+strings.TrimPrefix(hs.URL, "http"))
	}
	return cl
}

// store returns a session store on the cluster's database, through a node
// of its own: what any instance would read.
func (cl *cluster) store(t *testing.T, b *backend) scaler.SessionStore {
	t.Helper()
	sc, err := mongoredis.New(b.rdb, b.mc.Database(cl.name), mongoredis.WithPrefix(cl.name+":"), mongoredis.WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Close() })
	n, _, _ := joinNode(t, sc, "probe-"+randomName(""))
	return n.(scaler.SessionStore)
}

// TestMongoRedisServers runs three servers, each with its own Scaler, and
// raw WebSocket clients spread over them.
func TestMongoRedisServers(t *testing.T) {
	b := newBackend(t)
	cl := newCluster(t, b, 3)
	ctx := ctxT(t)

	t.Run("PublishReachesAll", func(t *testing.T) {
		var cs []*wstest.Client
		for i, url := range cl.urls {
			c := wstest.Dial(t, url, who(fmt.Sprint("u", i), ""), wstest.Name(fmt.Sprint("c", i)))
			c.Ack(map[string]any{"type": "subscribe", "channel": "news"})
			cs = append(cs, c)
		}
		if err := cl.servers[1].Publish(ctx, "news.uk", "article", map[string]int{"n": 1}); err != nil {
			t.Fatal(err)
		}
		cs[2].Ack(map[string]any{"type": "publish", "channel": "news", "event": "chat", "data": "hi"})
		for i, c := range cs {
			if got := c.WaitPubs("news.uk", 1); got[0] != `{"n":1}` {
				t.Errorf("c%d got %v", i, got)
			}
			c.WaitPubs("news", 1)
			f := c.Wait("pub with a position", func(f wstest.Frame) bool { return f.Type == "pub" && f.Channel == "news" })
			if f.Offset == 0 || f.Epoch == "" || f.Sub != "news" {
				t.Errorf("c%d: pub %+v lacks its position in stream news", i, f)
			}
		}
	})

	t.Run("TellUserAcrossInstances", func(t *testing.T) {
		a0 := wstest.Dial(t, cl.urls[0], who("alice", ""), wstest.Name("alice@0"))
		a1 := wstest.Dial(t, cl.urls[1], who("alice", ""), wstest.Name("alice@1"))
		other := wstest.Dial(t, cl.urls[2], who("bob", ""), wstest.Name("bob@2"))
		// The user channel goes live on the first request (or after 1s).
		for _, c := range []*wstest.Client{a0, a1, other} {
			c.Ack(map[string]any{"type": "subscribe", "channel": "warmup"})
		}
		if err := cl.servers[2].Tell(ctx, sss.ToUser("alice"), "notify", map[string]string{"text": "hi"}); err != nil {
			t.Fatal(err)
		}
		for i, c := range []*wstest.Client{a0, a1} {
			f := c.Wait("tell", func(f wstest.Frame) bool { return f.Type == "tell" && f.Name == "notify" })
			if string(f.Data) != `{"text":"hi"}` {
				t.Errorf("alice@%d: tell data %s", i, f.Data)
			}
		}
		time.Sleep(100 * time.Millisecond) // a misrouted tell would have arrived by now
		if _, ok := other.Find(func(f wstest.Frame) bool { return f.Type == "tell" }); ok {
			t.Errorf("bob received alice's tell")
		}
	})

	t.Run("AskAcrossInstances", func(t *testing.T) {
		bob := wstest.Dial(t, cl.urls[1], who("bob", ""), wstest.Name("bob@1"))
		bob.AnswerAsks(func(name string, data json.RawMessage) any {
			return map[string]any{"name": name, "echo": data}
		})
		res, err := cl.servers[0].Ask(ctx, sss.ToConn(bob.Welcome.Conn), "confirm", "delete?")
		if err != nil {
			t.Fatalf("Ask from server 0 to a connection on server 1: %v", err)
		}
		if string(res) != `{"echo":"delete?","name":"confirm"}` {
			t.Errorf("Ask result %s", res)
		}
		// A connection id on an instance that does not exist: not found,
		// at once (the scaler knows no node has that id).
		if _, err := cl.servers[2].Ask(ctx, sss.ToConn("nosuchnode.conn"), "confirm", nil); !errors.Is(err, sss.ErrNotFound) {
			t.Errorf("Ask to a connection on an unknown node: %v, want not_found", err)
		}
		// A tell to it is not an error: a target with no connection.
		if err := cl.servers[2].Tell(ctx, sss.ToConn("nosuchnode.conn"), "note", nil); err != nil {
			t.Errorf("Tell to a connection on an unknown node: %v, want nil", err)
		}
	})

	t.Run("ResumeOnAnotherInstance", func(t *testing.T) {
		st := cl.store(t, b)
		c := wstest.Dial(t, cl.urls[0], who("carol", "carol-session"), wstest.Name("carol@0"))
		c.Ack(map[string]any{"type": "subscribe", "channel": "room.a"})
		c.Ack(map[string]any{"type": "subscribe", "channel": "room.b", "query": map[string]string{"pw": "x"}})
		poll(t, 10*time.Second, "carol's subscriptions to be stored", func() bool {
			subs, err := st.Subscriptions(ctx, "5:carol:carol-session")
			return err == nil && len(subs) == 2
		})
		c.Close()

		// Carol's client reconnects to another instance and resumes
		// without a list: the server restores what it stored.
		c2 := wstest.Dial(t, cl.urls[2], who("carol", "carol-session"), wstest.Name("carol@2"))
		res := c2.Ack(map[string]any{"type": "resume"})
		var r struct {
			Subscriptions []struct {
				Channel string          `json:"channel"`
				Error   json.RawMessage `json:"error"`
			} `json:"subscriptions"`
		}
		if err := json.Unmarshal(res.Result, &r); err != nil {
			t.Fatal(err)
		}
		if len(r.Subscriptions) != 2 || r.Subscriptions[0].Channel != "room.a" || r.Subscriptions[1].Channel != "room.b" ||
			r.Subscriptions[0].Error != nil || r.Subscriptions[1].Error != nil {
			t.Fatalf("resume restored %s; want room.a and room.b", res.Result)
		}
		if err := cl.servers[1].Publish(ctx, "room.b", "msg", "after resume"); err != nil {
			t.Fatal(err)
		}
		if got := c2.WaitPubs("room.b", 1); got[0] != `"after resume"` {
			t.Errorf("got %v", got)
		}
	})
}
