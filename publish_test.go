package sss_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/internal/wstest"
)

// Every publication carries the time it was accepted, live and from
// history alike (history keeps it).
func TestPublicationTime(t *testing.T) {
	cl := newCluster(t, 2)
	w := cl.dial(0, nil)
	var ack struct {
		Offset uint64
		Epoch  string
	}
	json.Unmarshal(w.Subscribe("news").Result, &ack)
	before := time.Now().UnixMilli()
	if err := cl.servers[1].Publish(context.Background(), "news.uk", "e", 1); err != nil {
		t.Fatal(err)
	}
	after := time.Now().UnixMilli()
	live, _ := nextPub(t, w, 5*time.Second)
	if live.Time < before || live.Time > after {
		t.Fatalf("time %d, want between %d and %d", live.Time, before, after)
	}
	late := cl.dial(1, nil)
	late.Ack(map[string]any{"type": "subscribe", "channel": "news", "since": map[string]any{"offset": ack.Offset, "epoch": ack.Epoch}})
	if hist, _ := nextPub(t, late, 5*time.Second); hist.Time != live.Time {
		t.Fatalf("from history: time %d, want %d", hist.Time, live.Time)
	}
}

// A publication can leave one connection out: the client's own ("everyone
// but me"), or any one the server names.
func TestPublishExcept(t *testing.T) {
	cl := newCluster(t, 2, sss.WithPublishParser(allowAll))
	a := cl.dial(0, nil)
	b := cl.dial(1, nil)
	for _, w := range []*wstest.Client{a, b} {
		w.Subscribe("chat.room")
	}
	a.Ack(map[string]any{"type": "publish", "channel": "chat.room", "event": "m", "data": "from a", "exceptSelf": true})
	if p, _ := nextPub(t, b, 5*time.Second); string(p.Data) != `"from a"` || p.From == nil || p.From.Conn != a.Welcome.Conn {
		t.Fatalf("b got %v", p)
	}
	if err := cl.servers[1].Publish(context.Background(), "chat.room", "m", "not b", sss.Except(b.Welcome.Conn)); err != nil {
		t.Fatal(err)
	}
	if p, _ := nextPub(t, a, 5*time.Second); string(p.Data) != `"not b"` {
		t.Fatalf("a got %v", p)
	}
	a.Nothing(100 * time.Millisecond)
	b.Nothing(50 * time.Millisecond)
}
