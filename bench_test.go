package sss_test

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/superscaled/sss"
)

// BenchmarkFanout publishes to a channel with 100 WebSocket subscribers on
// loopback and waits until every subscriber has every message: the
// end-to-end cost of one delivery, encoding, queueing, batching and writing
// included. deliveries/s is the figure to compare.
func BenchmarkFanout(b *testing.B) {
	const subscribers = 100
	srv, _ := sss.New(sss.WithSendQueue(1<<16, 64<<20))
	ts := httptest.NewServer(srv)
	defer func() { srv.Close(); ts.Close() }()
	url := "ws" + strings.TrimPrefix(ts.URL, "http")
	ctx := context.Background()

	var wg sync.WaitGroup
	conns := make([]*websocket.Conn, subscribers)
	for i := range conns {
		c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{sss.Subprotocol}})
		if err != nil {
			b.Fatal(err)
		}
		c.SetReadLimit(1 << 20)
		conns[i] = c
		c.Read(ctx) // welcome
		c.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","id":1,"channel":"bench"}`))
		c.Read(ctx) // ack
	}
	defer func() {
		for _, c := range conns {
			c.CloseNow()
		}
	}()
	payload := map[string]any{"price": 101.25, "symbol": "ACME"}
	b.ReportAllocs()
	b.ResetTimer()
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got := 0
			for got < b.N {
				_, msg, err := c.Read(ctx)
				if err != nil {
					b.Error(err)
					return
				}
				got += strings.Count(string(msg), `"type":"pub"`)
			}
		}()
	}
	for i := 0; i < b.N; i++ {
		if err := srv.Publish(ctx, "bench.acme", "tick", payload); err != nil {
			b.Fatal(err)
		}
	}
	wg.Wait()
	b.ReportMetric(float64(b.N*subscribers)/b.Elapsed().Seconds(), "deliveries/s")
}

// BenchmarkAsk measures a client ask round trip on loopback.
func BenchmarkAsk(b *testing.B) {
	srv, _ := sss.New()
	srv.HandleAsk("echo", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) { return data, nil })
	ts := httptest.NewServer(srv)
	defer func() { srv.Close(); ts.Close() }()
	ctx := context.Background()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(ts.URL, "http"), &websocket.DialOptions{Subprotocols: []string{sss.Subprotocol}})
	if err != nil {
		b.Fatal(err)
	}
	defer c.CloseNow()
	c.Read(ctx) // welcome
	req := []byte(`{"type":"ask","id":1,"name":"echo","data":{"x":1}}`)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c.Write(ctx, websocket.MessageText, req)
		if _, _, err := c.Read(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkIdleConnections reports the memory an idle connection costs: the
// server's side and the test client's side together (both run in this
// process), heap and goroutine stacks, after a GC.
func BenchmarkIdleConnections(b *testing.B) {
	const n = 500
	srv, _ := sss.New(sss.WithPing(time.Hour, time.Hour))
	ts := httptest.NewServer(srv)
	defer func() { srv.Close(); ts.Close() }()
	url := "ws" + strings.TrimPrefix(ts.URL, "http")
	ctx := context.Background()
	settle := func(want int64) {
		for srv.Stats().Connections != want || srv.Stats().Subscriptions != want {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(1100 * time.Millisecond) // user and session channels released
	}
	for i := 0; i < b.N; i++ {
		settle(0)
		before := memInUse()
		conns := make([]*websocket.Conn, n)
		for j := range conns {
			c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{sss.Subprotocol}})
			if err != nil {
				b.Fatal(err)
			}
			c.Read(ctx) // welcome
			c.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","id":1,"channel":"idle"}`))
			c.Read(ctx)
			conns[j] = c
		}
		settle(n)
		after := memInUse()
		b.ReportMetric(float64(after-before)/n, "B/conn-pair")
		for _, c := range conns {
			c.CloseNow()
		}
	}
}

func memInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}
