package sss_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/internal/wstest"
	"github.com/superscaled/sss/scaler/memory"
)

// A broadcast reaches every connection of the cluster, anonymous ones
// included, but the one it excepts.
func TestBroadcast(t *testing.T) {
	cl := newCluster(t, 2, sss.WithSessionParser(userParser))
	var ws []*wstest.Client
	for i := range 4 {
		ws = append(ws, cl.dial(i%2, as(fmt.Sprint("u", i), "")))
	}
	if err := cl.servers[1].Broadcast(context.Background(), "maintenance", "at 10:00"); err != nil {
		t.Fatal(err)
	}
	for i, w := range ws {
		f := w.Expect("pub")
		if f.Channel != "$all" || f.Sub != "$all" || f.Event != "maintenance" || string(f.Data) != `"at 10:00"` || f.Offset != 0 {
			t.Fatalf("client %d: %v", i, f)
		}
	}
	if err := cl.servers[0].Broadcast(context.Background(), "e", 1, sss.Except(ws[3].Welcome.Conn)); err != nil {
		t.Fatal(err)
	}
	for _, w := range ws[:3] {
		w.Expect("pub")
	}
	ws[3].Nothing(100 * time.Millisecond)
}

type histResult struct {
	Publications []struct {
		Channel, Event string
		Data           json.RawMessage
		Time           int64
		Offset         uint64
		Epoch          string
	}
	Position struct {
		Offset uint64
		Epoch  string
	}
	More bool
}

func readHistory(t *testing.T, w *wstest.Client, req map[string]any) histResult {
	t.Helper()
	req["type"] = "history"
	var r histResult
	if err := json.Unmarshal(w.Ack(req).Result, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// The server and clients read a channel's last publications, or those
// after a position, with their positions and times.
func TestHistoryRead(t *testing.T) {
	cl := newCluster(t, 2, sss.WithSubscriptionParser(func(ctx context.Context, c *sss.Conn, channel string, q json.RawMessage) error {
		if channel == "secret" {
			return sss.Errorf(sss.CodeForbidden, "no")
		}
		return nil
	}))
	ctx := context.Background()
	for i := 1; i <= 120; i++ {
		ch := "chat.r"
		if i%2 == 0 {
			ch = "chat.r.thread" // below it: in its history too
		}
		cl.servers[0].Publish(ctx, ch, "m", i)
	}
	entries, now, err := cl.servers[1].History(ctx, "chat.r", sss.Last(50))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 50 || now.Offset != 120 || entries[0].Position.Offset != 71 || entries[49].Position.Offset != 120 ||
		string(entries[0].Data) != "71" || entries[1].Channel != "chat.r.thread" || time.Since(entries[0].Time) > time.Minute {
		t.Fatalf("History: %d entries from %+v, now %+v", len(entries), entries[0], now)
	}
	after, now2, err := cl.servers[1].History(ctx, "chat.r", sss.After(sss.Position{Offset: 100, Epoch: now.Epoch}), sss.Last(5))
	if err != nil || len(after) != 5 || after[0].Position.Offset != 101 || now2.Offset != 105 {
		t.Fatalf("After: %v %+v %v", after, now2, err)
	}
	if _, _, err := cl.servers[1].History(ctx, "chat.r", sss.After(sss.Position{Offset: 1, Epoch: "gone"})); !errors.Is(err, sss.ErrNotFound) {
		t.Fatalf("After a lost position: %v", err)
	}

	w := cl.dial(1, nil)
	r := readHistory(t, w, map[string]any{"channel": "chat.r", "limit": 3})
	if len(r.Publications) != 3 || r.Publications[0].Offset != 118 || r.Position.Offset != 120 || r.Position.Epoch != now.Epoch ||
		r.Publications[2].Time == 0 || r.More {
		t.Fatalf("history request: %+v", r)
	}
	r = readHistory(t, w, map[string]any{"channel": "chat.r", "limit": 2, "since": map[string]any{"offset": 10, "epoch": now.Epoch}})
	// Cut by its limit: it ends at its last publication, and more is only
	// about a reply cut to fit the send queue (docs/protocol.md).
	if len(r.Publications) != 2 || r.Publications[0].Offset != 11 || r.Position.Offset != 12 || r.More {
		t.Fatalf("history since: %+v", r)
	}
	r = readHistory(t, w, map[string]any{"channel": "chat.r", "limit": 2, "since": map[string]any{"offset": 120, "epoch": now.Epoch}})
	if len(r.Publications) != 0 || r.Position.Offset != 120 || r.More {
		t.Fatalf("history since the end: %+v", r)
	}
	w.Fails(map[string]any{"type": "history", "channel": "secret"}, "forbidden")
	w.Fails(map[string]any{"type": "history", "channel": "chat.r", "limit": 5000}, "bad_request")
	w.Fails(map[string]any{"type": "history", "channel": "$u.x"}, "forbidden")
	w.Fails(map[string]any{"type": "history", "channel": "chat.r", "since": map[string]any{"offset": 1, "epoch": "gone"}}, "not_found")

	noHist := newClusterWith(t, newMemory(t, memory.WithHistory(0, 0)), 1)
	if _, _, err := noHist.servers[0].History(ctx, "chat.r"); !errors.Is(err, sss.ErrNotSupported) {
		t.Fatalf("History without history: %v", err)
	}
}

// The recipe of docs/protocol.md: read the last N, then subscribe from the
// position the read returned: every publication once, in order, although
// publishing goes on all the while.
func TestHistoryThenSubscribe(t *testing.T) {
	cl := newCluster(t, 2)
	ctx := context.Background()
	for i := 1; i <= 30; i++ {
		cl.servers[0].Publish(ctx, "feed", "m", i)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // publishing goes on while the page loads
		defer wg.Done()
		for i := 31; i <= 130; i++ {
			cl.servers[0].Publish(ctx, "feed", "m", i)
			time.Sleep(time.Millisecond)
		}
	}()
	w := cl.dial(1, nil)
	r := readHistory(t, w, map[string]any{"channel": "feed", "limit": 20})
	var got []string
	for _, p := range r.Publications {
		got = append(got, string(p.Data))
	}
	w.Ack(map[string]any{"type": "subscribe", "channel": "feed", "since": r.Position})
	wg.Wait()
	for len(got) < 20+130-int(r.Position.Offset) {
		p, ok := nextPub(t, w, 5*time.Second)
		if !ok {
			t.Fatalf("after %v", got)
		}
		got = append(got, string(p.Data))
	}
	first := int(r.Position.Offset) - 19
	for i, d := range got {
		if d != fmt.Sprint(first+i) {
			t.Fatalf("got %v, want %d.. once each, in order", got, first)
		}
	}
	w.Nothing(50 * time.Millisecond)
}

// A history reply larger than the connection's send queue allows is cut,
// and says so: the client reads on from the position it gives.
func TestHistoryReplyIsBounded(t *testing.T) {
	cl := newCluster(t, 1, sss.WithSendQueue(64, 64<<10))
	ctx := context.Background()
	big := strings.Repeat("x", 1000)
	for range 100 {
		cl.servers[0].Publish(ctx, "big", "m", big)
	}
	w := cl.dial(0, nil)
	r := readHistory(t, w, map[string]any{"channel": "big", "limit": 100})
	if !r.More || len(r.Publications) >= 100 || len(r.Publications) == 0 || r.Position.Offset != r.Publications[len(r.Publications)-1].Offset {
		t.Fatalf("%d publications, more %v, position %+v", len(r.Publications), r.More, r.Position)
	}
	total := len(r.Publications)
	for r.More {
		r = readHistory(t, w, map[string]any{"channel": "big", "limit": 100, "since": r.Position})
		total += len(r.Publications)
	}
	if total != 100 {
		t.Fatalf("read %d in all, want 100", total)
	}
}
