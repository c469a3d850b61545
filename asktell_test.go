package sss_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/internal/wstest"
)

func TestAsk(t *testing.T) {
	cl := newCluster(t, 1, sss.WithAskTimeout(300*time.Millisecond), sss.WithConcurrency(2))
	srv := cl.servers[0]
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	srv.HandleAsk("echo", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		return data, nil
	})
	srv.HandleAsk("add", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		var xs []int
		if err := json.Unmarshal(data, &xs); err != nil {
			return nil, sss.Errorf(sss.CodeBadRequest, "want a list of numbers")
		}
		sum := 0
		for _, x := range xs {
			sum += x
		}
		return sum, nil
	})
	srv.HandleAsk("secret", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		return nil, fmt.Errorf("wrapped: %w", sss.ErrForbidden)
	})
	srv.HandleAsk("leaky", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		return nil, errors.New("password=hunter2")
	})
	srv.HandleAsk("panic", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		panic("boom")
	})
	srv.HandleAsk("stuck", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		<-block // ignores ctx: the server still answers at the deadline
		return "late", nil
	})
	srv.HandleAsk("unencodable", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		return func() {}, nil
	})
	w := cl.dial(0, nil)
	if f := w.Ack(map[string]any{"type": "ask", "name": "echo", "data": map[string]int{"a": 1}}); string(f.Result) != `{"a":1}` {
		t.Fatalf("echo: %s", f.Result)
	}
	if f := w.Ack(map[string]any{"type": "ask", "name": "add", "data": []int{1, 2, 3}}); string(f.Result) != "6" {
		t.Fatalf("add: %s", f.Result)
	}
	w.Fails(map[string]any{"type": "ask", "name": "add", "data": "x"}, "bad_request")
	w.Fails(map[string]any{"type": "ask", "name": "secret"}, "forbidden")
	if f := w.Fails(map[string]any{"type": "ask", "name": "leaky"}, "internal"); f.Error.Message != "internal error" {
		t.Fatalf("internal error leaked %q", f.Error.Message)
	}
	w.Fails(map[string]any{"type": "ask", "name": "panic"}, "internal")
	w.Fails(map[string]any{"type": "ask", "name": "unencodable"}, "internal")
	w.Fails(map[string]any{"type": "ask", "name": "nope"}, "not_found")
	w.Fails(map[string]any{"type": "ask", "name": "stuck"}, "timeout")
	// The stuck handler holds one of two slots; a second stuck one the other.
	w.Fails(map[string]any{"type": "ask", "name": "stuck"}, "timeout")
	w.Fails(map[string]any{"type": "ask", "name": "echo"}, "rate_limited")
	if p := srv.Stats().Panics; p != 1 {
		t.Fatalf("panics %d", p)
	}
}

func TestTell(t *testing.T) {
	cl := newCluster(t, 1)
	got := make(chan string, 10)
	cl.servers[0].HandleTell("liked", func(ctx context.Context, c *sss.Conn, data json.RawMessage) error {
		got <- string(data)
		return nil
	})
	cl.servers[0].HandleTell("panic", func(ctx context.Context, c *sss.Conn, data json.RawMessage) error {
		panic("boom")
	})
	w := cl.dial(0, nil)
	w.Ack(map[string]any{"type": "tell", "name": "liked", "data": 42})
	if v := <-got; v != "42" {
		t.Fatalf("tell data %s", v)
	}
	w.Ack(map[string]any{"type": "tell", "name": "panic"})
	w.Fails(map[string]any{"type": "tell", "name": "nope"}, "not_found")
	w.Ack(map[string]any{"type": "tell", "name": "liked", "data": "still alive"})
	<-got
}

func TestServerTellAcrossInstances(t *testing.T) {
	cl := newCluster(t, 3, sss.WithSessionParser(userParser))
	ctx := context.Background()
	a0 := cl.dial(0, as("alice", "phone"))
	a2 := cl.dial(2, as("alice", "laptop"))
	b1 := cl.dial(1, as("bob", "b"))

	if err := cl.servers[1].Tell(ctx, sss.ToUser("alice"), "notify", "mail"); err != nil {
		t.Fatal(err)
	}
	for _, w := range []*wstest.Client{a0, a2} {
		if f := w.Expect("tell"); f.Name != "notify" || string(f.Data) != `"mail"` {
			t.Fatalf("user tell %+v", f)
		}
	}
	if err := cl.servers[0].Tell(ctx, sss.ToSession("alice", "laptop"), "s", nil); err != nil {
		t.Fatal(err)
	}
	a2.Expect("tell")
	if err := cl.servers[2].Tell(ctx, sss.ToConn(b1.Welcome.Conn), "direct", 1); err != nil {
		t.Fatal(err)
	}
	if f := b1.Expect("tell"); f.Name != "direct" {
		t.Fatalf("conn tell %+v", f)
	}
	a0.Nothing(50 * time.Millisecond)
	if err := cl.servers[0].Tell(ctx, sss.ToUser(""), "x", nil); !errors.Is(err, sss.ErrBadRequest) {
		t.Fatalf("empty target: %v", err)
	}
}

func TestServerAskAcrossInstances(t *testing.T) {
	cl := newCluster(t, 3, sss.WithAskTimeout(time.Second))
	ctx := context.Background()
	w := cl.dial(2, nil)
	type result struct {
		raw json.RawMessage
		err error
	}
	ask := func(from int, conn, name string) chan result {
		ch := make(chan result, 1)
		go func() {
			raw, err := cl.servers[from].Ask(ctx, sss.ToConn(conn), name, map[string]string{"q": "sure?"})
			ch <- result{raw, err}
		}()
		return ch
	}
	res := ask(0, w.Welcome.Conn, "confirm")
	f := w.Expect("ask")
	if f.Name != "confirm" || string(f.Data) != `{"q":"sure?"}` {
		t.Fatalf("ask frame %+v", f)
	}
	w.Send(map[string]any{"type": "reply", "id": f.ID, "result": true})
	if r := <-res; r.err != nil || string(r.raw) != "true" {
		t.Fatalf("ask: %s %v", r.raw, r.err)
	}

	// The client answers with an error.
	res = ask(1, w.Welcome.Conn, "confirm")
	f = w.Expect("ask")
	w.Send(map[string]any{"type": "reply", "id": f.ID, "error": map[string]string{"code": "forbidden", "message": "no"}})
	if r := <-res; !errors.Is(r.err, sss.ErrForbidden) {
		t.Fatalf("error reply: %v", r.err)
	}

	// Local ask, client never answers: timeout; a late reply is ignored.
	res = ask(2, w.Welcome.Conn, "confirm")
	f = w.Expect("ask")
	if r := <-res; !errors.Is(r.err, sss.ErrTimeout) {
		t.Fatalf("unanswered ask: %v", r.err)
	}
	w.Send(map[string]any{"type": "reply", "id": f.ID, "result": "late"})
	w.Send(map[string]any{"type": "reply", "id": 123456, "result": "unknown"})

	// Unknown connection on a live node, and on a node that does not exist.
	if r := <-ask(0, cl.servers[1].NodeID()+".nobody", "x"); !errors.Is(r.err, sss.ErrNotFound) {
		t.Fatalf("unknown conn: %v", r.err)
	}
	if r := <-ask(0, "nonode.nobody", "x"); !errors.Is(r.err, sss.ErrNotFound) {
		t.Fatalf("unknown node: %v", r.err)
	}

	// The connection drops while asked: the asker learns at once.
	res = ask(0, w.Welcome.Conn, "confirm")
	w.Expect("ask")
	w.CloseNow()
	select {
	case r := <-res:
		if !errors.Is(r.err, sss.ErrNotFound) {
			t.Fatalf("ask to a dropped conn: %v", r.err)
		}
	case <-time.After(900 * time.Millisecond):
		t.Fatal("ask to a dropped connection waited for its timeout")
	}
}

func TestResumeOnAnotherInstance(t *testing.T) {
	var denied atomic.Bool
	cl := newCluster(t, 2, sss.WithSessionParser(userParser),
		sss.WithSubscriptionParser(func(ctx context.Context, c *sss.Conn, channel string, query json.RawMessage) error {
			if channel == "vip" && (denied.Load() || string(query) != `"gold"`) {
				return sss.ErrForbidden
			}
			return nil
		}))
	ctx := context.Background()
	w := cl.dial(0, as("alice", "tab1"))
	w.Subscribe("news")
	w.Ack(map[string]any{"type": "subscribe", "channel": "vip", "query": "gold"})
	w.Subscribe("tmp")
	w.Ack(map[string]any{"type": "unsubscribe", "channel": "tmp"})
	w.CloseNow()

	// Same session, other instance: restore the persisted list.
	w2 := cl.dial(1, as("alice", "tab1"))
	f := w2.Ack(map[string]any{"type": "resume"})
	if got := resumed(f.Result); got != "news vip" {
		t.Fatalf("resume result %s", f.Result)
	}
	cl.servers[0].Publish(ctx, "vip", "e", 1)
	if f := w2.Expect("pub"); f.Channel != "vip" {
		t.Fatalf("%+v", f)
	}

	// Access revoked meanwhile, and the client's list is authoritative.
	denied.Store(true)
	w2.CloseNow()
	w3 := cl.dial(0, as("alice", "tab1"))
	f = w3.Ack(map[string]any{"type": "resume", "subscriptions": []map[string]any{{"channel": "vip", "query": "gold"}, {"channel": "sports"}, {"channel": "$u.bob"}}})
	var res struct {
		Subscriptions []struct {
			Channel string
			Error   *struct{ Code string }
		}
	}
	json.Unmarshal(f.Result, &res)
	if len(res.Subscriptions) != 3 || res.Subscriptions[0].Error == nil || res.Subscriptions[0].Error.Code != "forbidden" ||
		res.Subscriptions[1].Error != nil || res.Subscriptions[2].Error == nil {
		t.Fatalf("resume result %s", f.Result)
	}
	w3.CloseNow()
	// "news" was dropped from the session by the authoritative list.
	w4 := cl.dial(1, as("alice", "tab1"))
	if f := w4.Ack(map[string]any{"type": "resume"}); resumed(f.Result) != "sports" {
		t.Fatalf("resume after authoritative list: %s", f.Result)
	}
}

// resumed lists the channels a resume restored without error.
func resumed(result json.RawMessage) string {
	var res struct {
		Subscriptions []struct {
			Channel string
			Error   *struct{ Code string }
		}
	}
	json.Unmarshal(result, &res)
	var out []string
	for _, s := range res.Subscriptions {
		if s.Error == nil {
			out = append(out, s.Channel)
		}
	}
	return strings.Join(out, " ")
}

func TestDisconnectAcrossInstances(t *testing.T) {
	cl := newCluster(t, 3, sss.WithSessionParser(userParser))
	ctx := context.Background()
	phone := cl.dial(0, as("alice", "phone"))
	laptop := cl.dial(1, as("alice", "laptop"))
	bob := cl.dial(1, as("bob", "b"))
	if err := cl.servers[2].Disconnect(ctx, sss.ToUser("alice"), "banned", true); err != nil {
		t.Fatal(err)
	}
	for _, w := range []*wstest.Client{phone, laptop} {
		if code := sss.CloseCode(w.CloseStatus()); code != sss.CloseForbidden {
			t.Fatalf("close code %d, want %d", code, sss.CloseForbidden)
		}
	}
	bob.Ack(map[string]any{"type": "subscribe", "channel": "still-here"})
	if err := cl.servers[0].Disconnect(ctx, sss.ToConn(bob.Welcome.Conn), "moved", false); err != nil {
		t.Fatal(err)
	}
	if code := sss.CloseCode(bob.CloseStatus()); code != sss.CloseKicked {
		t.Fatalf("close code %d, want %d", code, sss.CloseKicked)
	}
	// The order's name is reserved: applications cannot send it as a tell.
	if err := cl.servers[0].Tell(ctx, sss.ToUser("x"), "$disconnect", nil); !errors.Is(err, sss.ErrBadRequest) {
		t.Fatalf("reserved tell name: %v", err)
	}
}
