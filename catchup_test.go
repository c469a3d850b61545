package sss_test

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/internal/wstest"
	"github.com/superscaled/sss/scaler"
	"github.com/superscaled/sss/scaler/memory"
)

type subAck struct {
	Channel   string
	Offset    *uint64
	Epoch     string
	Recovered *bool
	Reason    string
	Error     *struct{ Code string }
}

func ackResult(t testing.TB, f wstest.Frame) subAck {
	t.Helper()
	var r subAck
	if err := json.Unmarshal(f.Result, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func resumeResults(t testing.TB, f wstest.Frame) map[string]subAck {
	t.Helper()
	var r struct{ Subscriptions []subAck }
	if err := json.Unmarshal(f.Result, &r); err != nil {
		t.Fatal(err)
	}
	out := map[string]subAck{}
	for _, s := range r.Subscriptions {
		out[s.Channel] = s
	}
	return out
}

// nextPub returns the next frame that is not a ping, failing the test
// unless it is a pub; ok is false if none came within d.
func nextPub(t testing.TB, w *wstest.Client, d time.Duration) (wstest.Frame, bool) {
	t.Helper()
	for {
		f, ok := w.Next(d)
		if !ok {
			return wstest.Frame{}, false
		}
		if f.Type == "ping" {
			continue
		}
		if f.Type != "pub" {
			t.Fatalf("got %+v, want a pub", f)
		}
		return f, true
	}
}

// A subscriber is cut off again and again while another instance publishes
// at full speed; every time it resumes on another instance from its last
// position. It must end with every message once, in order.
func TestCatchUpIsExact(t *testing.T) {
	midStream, slow := 0, 0
	for run := 0; run < 4; run++ {
		cl := newClusterWith(t, newMemory(t, memory.WithHistory(20000, time.Minute)), 3)
		const total = 10000
		w := cl.dial(0, nil)
		ack := ackResult(t, w.Ack(map[string]any{"type": "subscribe", "channel": "feed"}))
		pos := wstest.Position{Offset: *ack.Offset, Epoch: ack.Epoch}

		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := 1; i <= total; i++ {
				if err := cl.servers[1].Publish(context.Background(), "feed.items", "n", i); err != nil {
					t.Errorf("publish %d: %v", i, err)
					return
				}
				// Even runs publish at full speed; odd ones pause now and
				// then, so that the random cuts fall while publishing.
				if run%2 == 1 && i%50 == 0 {
					time.Sleep(time.Millisecond)
				}
			}
		}()
		want := 1
		instance := 0
		for want <= total {
			// Read a random number of messages, then cut the connection.
			cut := want + rand.IntN(total/4)
			for want <= total && want < cut {
				p, ok := nextPub(t, w, 10*time.Second)
				if !ok {
					select {
					case <-w.Done():
						// Cut off as a slow consumer (the publisher outruns
						// this test's client): resume like any other cut.
						if code := sss.CloseCode(w.CloseStatus()); code != sss.CloseSlowConsumer {
							t.Fatalf("run %d: connection closed (%d) waiting for %d", run, code, want)
						}
						slow++
						cut = want
						continue
					default:
					}
					t.Fatalf("run %d: stalled waiting for %d; stats %+v", run, want, cl.servers[instance].Stats())
				}
				var n int
				json.Unmarshal(p.Data, &n)
				if n != want {
					t.Fatalf("run %d: got %d, want %d", run, n, want)
				}
				if p.Epoch != pos.Epoch || p.Offset != pos.Offset+1 {
					t.Fatalf("run %d: position %d/%s after %d/%s", run, p.Offset, p.Epoch, pos.Offset, pos.Epoch)
				}
				pos.Offset = p.Offset
				want++
			}
			if want > total {
				break
			}
			select {
			case <-done:
			default:
				midStream++
			}
			w.CloseNow()
			instance = (instance + 1) % 3
			w = cl.dial(instance, nil)
			res := resumeResults(t, w.Ack(map[string]any{"type": "resume", "subscriptions": []map[string]any{
				{"channel": "feed", "since": pos},
			}}))["feed"]
			if res.Recovered == nil || !*res.Recovered || *res.Offset != pos.Offset {
				t.Fatalf("run %d: resume %+v", run, res)
			}
		}
		<-done
		w.Nothing(50 * time.Millisecond)
	}
	t.Logf("%d of the cuts happened while the publisher was still sending, %d as a slow consumer", midStream, slow)
	if midStream+slow == 0 {
		t.Fatal("no cut happened mid-stream: the test proved nothing")
	}
}

func TestCatchUpLost(t *testing.T) {
	cl := newClusterWith(t, newMemory(t, memory.WithHistory(10, time.Minute)), 2)
	ctx := context.Background()
	w := cl.dial(0, nil)
	ack := ackResult(t, w.Ack(map[string]any{"type": "subscribe", "channel": "feed"}))
	w.CloseNow()
	for i := 0; i < 100; i++ {
		cl.servers[1].Publish(ctx, "feed", "n", i)
	}
	w = cl.dial(1, nil)
	res := resumeResults(t, w.Ack(map[string]any{"type": "resume", "subscriptions": []map[string]any{
		{"channel": "feed", "since": wstest.Position{Offset: *ack.Offset, Epoch: ack.Epoch}},
	}}))["feed"]
	if res.Recovered == nil || *res.Recovered || res.Reason == "" || *res.Offset != 100 {
		t.Fatalf("trimmed history: %+v", res)
	}
	w.Nothing(50 * time.Millisecond) // nothing replayed: the client reloads instead
	cl.servers[0].Publish(ctx, "feed", "n", "live")
	if p, _ := nextPub(t, w, 5*time.Second); p.Offset != 101 {
		t.Fatalf("live after loss: %+v", p)
	}

	// A different epoch (the backend lost its history) is lost too.
	w.CloseNow()
	w = cl.dial(0, nil)
	res = ackResult(t, w.Ack(map[string]any{"type": "subscribe", "channel": "feed", "since": wstest.Position{Offset: 5, Epoch: "another-epoch"}}))
	if res.Recovered == nil || *res.Recovered || res.Epoch != ack.Epoch {
		t.Fatalf("epoch change: %+v", res)
	}
	// A position from the future is not trusted either.
	res = resumeResults(t, w.Ack(map[string]any{"type": "resume", "subscriptions": []map[string]any{
		{"channel": "other", "since": wstest.Position{Offset: 5, Epoch: "whatever"}},
	}}))["other"]
	if res.Recovered == nil || *res.Recovered {
		t.Fatalf("future position: %+v", res)
	}
}

// The seed library hangs on an empty channel; here every start works.
func TestCatchUpEmptyChannel(t *testing.T) {
	cl := newCluster(t, 1)
	w := cl.dial(0, nil)
	ack := ackResult(t, w.Ack(map[string]any{"type": "subscribe", "channel": "empty"}))
	if ack.Offset == nil || *ack.Offset != 0 || ack.Epoch == "" || ack.Recovered != nil {
		t.Fatalf("first subscribe: %+v", ack)
	}
	w.CloseNow()
	w = cl.dial(0, nil)
	res := resumeResults(t, w.Ack(map[string]any{"type": "resume", "subscriptions": []map[string]any{
		{"channel": "empty", "since": wstest.Position{Offset: 0, Epoch: ack.Epoch}},
		{"channel": "fresh"},
	}}))
	if r := res["empty"]; r.Recovered == nil || !*r.Recovered {
		t.Fatalf("resume of an empty channel: %+v", r)
	}
	if r := res["fresh"]; r.Recovered != nil || r.Offset == nil {
		t.Fatalf("resume without position: %+v", r)
	}
	w.Nothing(50 * time.Millisecond)
}

func TestCatchUpUserChannel(t *testing.T) {
	cl := newCluster(t, 2, sss.WithSessionParser(userParser))
	ctx := context.Background()
	w := cl.dial(0, as("alice", "s1"))
	cl.servers[1].PublishUser(ctx, "alice", "n", 1)
	p, ok := nextPub(t, w, 5*time.Second)
	if !ok || p.Channel != "$u.alice" || p.Offset != 1 {
		t.Fatalf("first user pub %+v", p)
	}
	w.CloseNow()
	for i := 2; i <= 50; i++ {
		cl.servers[1].PublishUser(ctx, "alice", "n", i)
	}
	w = cl.dial(1, as("alice", "s1"))
	res := resumeResults(t, w.Ack(map[string]any{"type": "resume", "subscriptions": []map[string]any{
		{"channel": "$u.alice", "since": wstest.Position{Offset: p.Offset, Epoch: p.Epoch}},
	}}))
	if r := res["$u.alice"]; r.Recovered == nil || !*r.Recovered {
		t.Fatalf("user channel resume: %+v", r)
	}
	for i := 2; i <= 50; i++ {
		p, ok := nextPub(t, w, 5*time.Second)
		var n int
		json.Unmarshal(p.Data, &n)
		if !ok || n != i || p.Offset != uint64(i) {
			t.Fatalf("user catch-up: got %+v, want %d", p, i)
		}
	}
	// Another user's channel cannot be resumed: it is refused like a subscribe.
	res = resumeResults(t, w.Ack(map[string]any{"type": "resume", "subscriptions": []map[string]any{
		{"channel": "$u.bob", "since": wstest.Position{Offset: 1, Epoch: p.Epoch}},
	}}))
	if r := res["$u.bob"]; r.Error == nil || r.Error.Code != "forbidden" {
		t.Fatalf("other user's channel: %+v", r)
	}
}

// Publications sent to a user while a fresh connection is being set up are
// held, not lost, until the client's first request.
func TestUserChannelHeldUntilFirstRequest(t *testing.T) {
	cl := newCluster(t, 1, sss.WithSessionParser(userParser))
	w := cl.dial(0, as("carol", "s"))
	cl.servers[0].PublishUser(context.Background(), "carol", "early", nil)
	w.Ack(map[string]any{"type": "subscribe", "channel": "x"})
	if p, ok := nextPub(t, w, 5*time.Second); !ok || p.Event != "early" {
		t.Fatalf("held user pub %+v", p)
	}
}

// A client with nothing to resume sends "ready": its user channel goes live
// at once, without the hold, and what was held is delivered.
func TestReadyEndsHold(t *testing.T) {
	cl := newCluster(t, 1, sss.WithSessionParser(userParser), sss.WithPing(time.Hour, time.Hour))
	w := cl.dial(0, as("erin", "s"))
	cl.servers[0].PublishUser(context.Background(), "erin", "held", nil)
	w.SendRaw(`{"type":"ready"}`)
	if p, ok := nextPub(t, w, 500*time.Millisecond); !ok || p.Event != "held" {
		t.Fatalf("held user pub after ready: %+v", p)
	}
	cl.servers[0].PublishUser(context.Background(), "erin", "live", nil)
	if p, ok := nextPub(t, w, 500*time.Millisecond); !ok || p.Event != "live" {
		t.Fatalf("live user pub after ready: %+v", p)
	}
	w.SendRaw(`{"type":"ready"}`) // later ones are harmless and unanswered
	w.Nothing(50 * time.Millisecond)
}

// A scaler that loses deliveries to one node, like Redis pub/sub across a
// reconnect: the server notices the jump in offsets and fills it from
// history.
func TestGapRepair(t *testing.T) {
	m := newMemory(t)
	lossy := &dropScaler{Scaler: m}
	a, _ := sss.New(sss.WithScaler(lossy))
	b, _ := sss.New(sss.WithScaler(m))
	ts := httptest.NewServer(a)
	t.Cleanup(func() { a.Close(); b.Close(); ts.Close(); m.Close() })
	w := wstest.Dial(t, wsURL(ts), nil)
	w.Ack(map[string]any{"type": "subscribe", "channel": "feed"})
	ctx := context.Background()
	lossy.drop.Store(3) // the third to the ninth deliveries never arrive
	for i := 1; i <= 20; i++ {
		b.Publish(ctx, "feed", "n", i)
	}
	for i := 1; i <= 20; i++ {
		p, ok := nextPub(t, w, 5*time.Second)
		var n int
		json.Unmarshal(p.Data, &n)
		if !ok || n != i {
			t.Fatalf("got %+v, want %d", p, i)
		}
	}
	if a.Stats().Gaps == 0 {
		t.Fatal("gap not counted")
	}
	w.Nothing(50 * time.Millisecond)
}

// dropScaler loses deliveries to its nodes: from the drop-th on, count of
// them (7 when count is 0).
type dropScaler struct {
	*memory.Scaler
	drop  atomic.Int64
	count atomic.Int64
}

func (d *dropScaler) Join(ctx context.Context, id string, h scaler.Handler) (scaler.Node, error) {
	return d.Scaler.Join(ctx, id, &dropHandler{Handler: h, d: d})
}

type dropHandler struct {
	scaler.Handler
	d  *dropScaler
	mu sync.Mutex
	n  int
}

func (h *dropHandler) HandleDelivery(del scaler.Delivery) {
	h.mu.Lock()
	h.n++
	n := h.n
	h.mu.Unlock()
	count := int(h.d.count.Load())
	if count == 0 {
		count = 7
	}
	if from := int(h.d.drop.Load()); from > 0 && n >= from && n < from+count {
		return
	}
	h.Handler.HandleDelivery(del)
}

// Catching up on a channel and its ancestor gives each publication once,
// through the most specific subscription, as live delivery does.
func TestCatchUpHierarchy(t *testing.T) {
	cl := newCluster(t, 2)
	ctx := context.Background()
	w := cl.dial(0, nil)
	top := ackResult(t, w.Ack(map[string]any{"type": "subscribe", "channel": "news"}))
	uk := ackResult(t, w.Ack(map[string]any{"type": "subscribe", "channel": "news.uk"}))
	w.CloseNow()
	for i := 0; i < 10; i++ {
		cl.servers[1].Publish(ctx, "news.uk.x", "uk", i)
		cl.servers[1].Publish(ctx, "news.y", "y", i)
	}
	w = cl.dial(1, nil)
	w.Ack(map[string]any{"type": "resume", "subscriptions": []map[string]any{
		{"channel": "news", "since": wstest.Position{Offset: *top.Offset, Epoch: top.Epoch}},
		{"channel": "news.uk", "since": wstest.Position{Offset: *uk.Offset, Epoch: uk.Epoch}},
	}})
	got := map[string]int{}
	for i := 0; i < 20; i++ {
		p, ok := nextPub(t, w, 5*time.Second)
		if !ok {
			t.Fatalf("after %d: %v", i, got)
		}
		got[p.Channel+" via "+p.Sub]++
	}
	if got["news.uk.x via news.uk"] != 10 || got["news.y via news"] != 10 {
		t.Fatalf("deliveries %v", got)
	}
	w.Nothing(100 * time.Millisecond)
	// Live publications after the resume too.
	cl.servers[0].Publish(ctx, "news.uk.z", "uk", nil)
	if p, _ := nextPub(t, w, 5*time.Second); p.Sub != "news.uk" {
		t.Fatalf("live %+v", p)
	}
	w.Nothing(50 * time.Millisecond)
}

// A session store that is down (its calls hang until their deadline) does
// not hold up subscriptions: they work locally at once, the failure is
// counted, a resume that needs the stored list is refused rather than
// answered from a stale one, and once the store is back the stored list
// converges on the session's subscriptions, with the changes made during
// the outage.
func TestSessionStoreDown(t *testing.T) {
	m := newMemory(t)
	down := &downStore{Scaler: m}
	down.down.Store(true)
	srv, _ := sss.New(sss.WithScaler(down), sss.WithSessionParser(userParser))
	ts := httptest.NewServer(srv)
	t.Cleanup(func() { srv.Close(); ts.Close(); m.Close() })
	w := wstest.Dial(t, wsURL(ts), as("dave", "sd"))
	start := time.Now()
	w.Subscribe("a")
	w.Subscribe("b")
	w.Subscribe("c")
	w.Ack(map[string]any{"type": "unsubscribe", "channel": "a"})
	if d := time.Since(start); d > time.Second {
		t.Fatalf("subscribing took %v: requests waited for the store", d)
	}
	srv.Publish(context.Background(), "b", "e", 1)
	if p, ok := nextPub(t, w, 5*time.Second); !ok || p.Channel != "b" {
		t.Fatalf("pub %+v", p)
	}
	eventually(t, "a store failure counted", func() bool { return srv.Stats().ScalerErrors >= 1 })
	w.Fails(map[string]any{"type": "resume"}, "unavailable")
	if n := down.calls.Load(); n > 10 {
		t.Fatalf("%d store calls during the outage: writes are not coalesced or backed off", n)
	}

	down.down.Store(false)
	probe, err := m.Join(context.Background(), "probe", nopHandler{})
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	eventually(t, "the stored list to converge", func() bool {
		list, err := probe.(scaler.SessionStore).Subscriptions(context.Background(), "4:dave:sd")
		return err == nil && len(list) == 2 && list[0].Channel == "b" && list[1].Channel == "c"
	})
	w.Subscribe("d")
	w2 := wstest.Dial(t, wsURL(ts), as("dave", "sd"))
	res := w2.Ack(map[string]any{"type": "resume"})
	if !strings.Contains(string(res.Result), `"d"`) || strings.Contains(string(res.Result), `"a"`) {
		t.Fatalf("resume from the store gave %s, want b, c and d", res.Result)
	}
}

// downStore is a scaler whose session store hangs until its deadline while
// down is set.
type downStore struct {
	*memory.Scaler
	down  atomic.Bool
	calls atomic.Int64
}

func (d *downStore) Join(ctx context.Context, id string, h scaler.Handler) (scaler.Node, error) {
	n, err := d.Scaler.Join(ctx, id, h)
	if err != nil {
		return nil, err
	}
	return downNode{Node: n, History: n.(scaler.History), st: n.(scaler.SessionStore), d: d}, nil
}

type downNode struct {
	scaler.Node
	scaler.History
	st scaler.SessionStore
	d  *downStore
}

// hang fails like a store that does not answer, while down.
func (n downNode) hang(ctx context.Context) error {
	if !n.d.down.Load() {
		return nil
	}
	n.d.calls.Add(1)
	<-ctx.Done()
	return ctx.Err()
}

func (n downNode) AddSubscription(ctx context.Context, s string, sub scaler.StoredSubscription) error {
	if err := n.hang(ctx); err != nil {
		return err
	}
	return n.st.AddSubscription(ctx, s, sub)
}
func (n downNode) RemoveSubscription(ctx context.Context, s, ch string) error {
	if err := n.hang(ctx); err != nil {
		return err
	}
	return n.st.RemoveSubscription(ctx, s, ch)
}
func (n downNode) Subscriptions(ctx context.Context, s string) ([]scaler.StoredSubscription, error) {
	if err := n.hang(ctx); err != nil {
		return nil, err
	}
	return n.st.Subscriptions(ctx, s)
}
func (n downNode) TouchSession(ctx context.Context, s string) error {
	if err := n.hang(ctx); err != nil {
		return err
	}
	return n.st.TouchSession(ctx, s)
}

// Unsubscribing while a long catch-up is under way stops it: nothing of the
// channel arrives after the unsubscribe's ack.
func TestUnsubscribeStopsCatchUp(t *testing.T) {
	// Long enough that the worker serves the unsubscribe before the
	// catch-up's goroutine is through, however the two are scheduled.
	const n = 20000
	cl := newClusterWith(t, newMemory(t, memory.WithHistory(n, time.Minute)), 1)
	ctx := context.Background()
	w := cl.dial(0, nil)
	ack := ackResult(t, w.Ack(map[string]any{"type": "subscribe", "channel": "feed"}))
	w.CloseNow()
	for i := range n {
		cl.servers[0].Publish(ctx, "feed", "n", i)
	}
	w = cl.dial(0, nil)
	w.SendRaw(`{"type":"resume","id":1,"subscriptions":[{"channel":"feed","since":{"offset":` +
		strconv.FormatUint(*ack.Offset, 10) + `,"epoch":"` + ack.Epoch + `"}}]}` + "\n" +
		`{"type":"unsubscribe","id":2,"channel":"feed"}`)
	pubs := 0
	for {
		f := w.Expect("")
		if f.Type == "pub" {
			pubs++
			continue
		}
		if f.Type == "ack" && f.ID == 2 {
			break
		}
	}
	if pubs >= n {
		t.Fatalf("the whole catch-up (%d) came before the unsubscribe was served", pubs)
	}
	w.Nothing(200 * time.Millisecond)
}
