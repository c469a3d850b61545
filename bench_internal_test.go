package sss

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/superscaled/sss/scaler"
)

// Benchmarks of the hot paths without sockets; bench_test.go has those
// with, and cmd/sss-bench measures a server from outside.

// BenchmarkDecodeFrame decodes a client frame: the fast path (ask,
// publish, subscribe) and encoding/json (resume, and a frame with an
// escaped string).
func BenchmarkDecodeFrame(b *testing.B) {
	for _, bc := range []struct{ name, frame string }{
		{"ask", `{"type":"ask","id":4,"name":"echo","data":{"n":1,"text":"round trip"}}`},
		{"publish", `{"type":"publish","id":3,"channel":"chat.room1","event":"message","data":{"text":"hi"}}`},
		{"subscribe", `{"type":"subscribe","id":1,"channel":"news.uk"}`},
		{"resume/json", `{"type":"resume","id":6,"subscriptions":[{"channel":"news","since":{"offset":41,"epoch":"dn1c-2"}}]}`},
		{"escaped/json", `{"type":"ask","id":4,"name":"echo","data":null,"event":"a\"b"}`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			frame := []byte(bc.frame)
			b.ReportAllocs()
			b.SetBytes(int64(len(frame)))
			for b.Loop() {
				if _, _, e := decodeFrame(frame); e != nil {
					b.Fatal(e)
				}
			}
		})
	}
}

// BenchmarkChannelMatch is the per-delivery check of a connection that
// holds nested subscriptions (a deep hierarchy, many subscriptions): is a
// more specific subscription of it matching the channel?
func BenchmarkChannelMatch(b *testing.B) {
	srv, err := New()
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	c := newConn(srv, &Session{}, false, nil, nil, "")
	defer c.cancel()
	srv.cfg.maxSubs = 1 << 20
	levels := make([]string, 12)
	for i := range levels {
		levels[i] = fmt.Sprintf("l%d", i)
	}
	// 12 levels deep, with 20 siblings at each level: 240 subscriptions.
	for depth := 1; depth <= len(levels); depth++ {
		for sib := range 20 {
			name := strings.Join(levels[:depth-1], ".")
			if name != "" {
				name += "."
			}
			name += fmt.Sprintf("l%d", depth-1)
			if sib > 0 {
				name += fmt.Sprintf("s%d", sib)
			}
			c.addSub(&sub{c: c, channel: name})
		}
	}
	channel := strings.Join(levels, ".") + ".leaf"
	b.ReportAllocs()
	for b.Loop() {
		if !c.holdsDeeper("l0", channel) {
			b.Fatal("no deeper subscription found")
		}
	}
}

// BenchmarkDeliverLocal fans one publication out to 10,000 local
// subscribers of a stream: encoding once, the checks, and queueing on each
// connection (their writers are corked: no socket is written). ns/op is
// per publication; ns/delivery divides it by the subscribers.
func BenchmarkDeliverLocal(b *testing.B) {
	const subscribers = 10000
	srv, err := New(WithSendQueue(1<<16, 1<<30))
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()
	conns := make([]*Conn, subscribers)
	for i := range conns {
		c := newConn(srv, &Session{}, false, nil, nil, "")
		c.corked = 1 // nothing is written
		sb := &sub{c: c, channel: "bench"}
		if !c.addSub(sb) {
			b.Fatal("addSub")
		}
		if err := srv.attach(ctx, sb); err != nil {
			b.Fatal(err)
		}
		conns[i] = c
	}
	defer func() {
		for _, c := range conns {
			c.cancel()
		}
	}()
	pub := &scaler.Publication{Channel: "bench.acme", Event: "tick", Data: []byte(`{"price":101.25,"symbol":"ACME"}`), Time: 1700000000000}
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		n++
		srv.deliver(scaler.Delivery{Stream: "bench", Pub: pub, Offset: uint64(n), Epoch: "e"})
		if n%512 == 0 {
			b.StopTimer()
			for _, c := range conns {
				c.qmu.Lock()
				c.queue, c.qbytes = c.queue[:0], 0
				c.qmu.Unlock()
			}
			b.StartTimer()
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n)/subscribers, "ns/delivery")
}
