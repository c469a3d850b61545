package integration

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/superscaled/sss/scaler"
	"github.com/superscaled/sss/scaler/mongoredis"
	natsscaler "github.com/superscaled/sss/scaler/nats"
)

// BenchmarkScalerFanout measures cross-instance fan-out through each real
// backend, the same way for both: two nodes on two Scalers (two
// connections, as two instances would have), one publishing and one
// subscribed, history on.
//
//   - latency: one publication at a time, from Publish until the other
//     node's handler has it (ns/op is that latency).
//   - rate: 8 goroutines publish on the first node; pubs/s is how many
//     publications per second reach the second node.
//   - rate3: three publishing nodes (three Scalers), 4 goroutines each,
//     on the same channel: publishers on several instances contending.
//
// Channels: "flat" (one stream) and "a.b.c" with the subscriber on "a"
// (numbered in three streams).
//
//	go test -run '^$' -bench ScalerFanout -benchtime 2000x ./integration/
func BenchmarkScalerFanout(b *testing.B) {
	requireDocker(b)
	_, raddr := runRedis(b)
	_, naddr := runNATS(b)
	rdb := redis.NewClient(&redis.Options{Addr: raddr})
	defer rdb.Close()
	backends := []struct {
		name string
		new  func(b *testing.B, prefix string) scaler.Scaler
	}{
		{"mongoredis", func(b *testing.B, prefix string) scaler.Scaler {
			s, err := mongoredis.New(rdb, nil, mongoredis.WithPrefix(prefix+":"))
			if err != nil {
				b.Fatal(err)
			}
			return s
		}},
		{"nats", func(b *testing.B, prefix string) scaler.Scaler {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s, err := natsscaler.Dial(ctx, natsURLs(naddr), natsscaler.WithPrefix(prefix))
			if err != nil {
				b.Fatal(err)
			}
			return s
		}},
	}
	for _, be := range backends {
		for _, ch := range []struct{ channel, stream string }{{"flat", "flat"}, {"a.b.c", "a"}} {
			b.Run(be.name+"/"+ch.channel+"/latency", func(b *testing.B) {
				pubNode, got := fanoutPair(b, be.new, ch.stream)
				pub := &scaler.Publication{Channel: ch.channel, Event: "e", Data: []byte(`{"text":"hello"}`)}
				ctx := context.Background()
				b.ResetTimer()
				for range b.N {
					if err := pubNode.Publish(ctx, pub); err != nil {
						b.Fatal(err)
					}
					<-got
				}
			})
			b.Run(be.name+"/"+ch.channel+"/rate3", func(b *testing.B) {
				// Three publishing instances (three Scalers) at once, 4
				// goroutines each, contending for the same streams.
				prefix := randomName("bench")
				var pubs []scaler.Node
				var got <-chan struct{}
				for i := range 3 {
					p, g := fanoutPairPrefix(b, be.new, ch.stream, prefix, i == 0)
					pubs = append(pubs, p)
					if i == 0 {
						got = g
					}
				}
				pub := &scaler.Publication{Channel: ch.channel, Event: "e", Data: []byte(`{"text":"hello"}`)}
				var next atomic.Int64
				var wg sync.WaitGroup
				start := time.Now()
				b.ResetTimer()
				for i := range 12 {
					wg.Go(func() {
						for next.Add(1) <= int64(b.N) {
							if err := pubs[i%3].Publish(context.Background(), pub); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				for range b.N {
					<-got
				}
				b.StopTimer()
				wg.Wait()
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "pubs/s")
			})
			b.Run(be.name+"/"+ch.channel+"/rate", func(b *testing.B) {
				pubNode, got := fanoutPair(b, be.new, ch.stream)
				pub := &scaler.Publication{Channel: ch.channel, Event: "e", Data: []byte(`{"text":"hello"}`)}
				var next atomic.Int64
				var wg sync.WaitGroup
				start := time.Now()
				b.ResetTimer()
				for range 8 {
					wg.Go(func() {
						for next.Add(1) <= int64(b.N) {
							if err := pubNode.Publish(context.Background(), pub); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				for range b.N {
					<-got
				}
				b.StopTimer()
				wg.Wait()
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "pubs/s")
			})
		}
	}
}

// fanoutPair joins a publishing node and a node subscribed to stream, on
// two Scalers on one prefix, and returns the publisher and the deliveries' signal.
func fanoutPair(b *testing.B, newScaler func(*testing.B, string) scaler.Scaler, stream string) (scaler.Node, <-chan struct{}) {
	b.Helper()
	return fanoutPairPrefix(b, newScaler, stream, randomName("bench"), true)
}

// fanoutPairPrefix is fanoutPair on a given prefix; without subscriber, it
// joins only the publisher.
func fanoutPairPrefix(b *testing.B, newScaler func(*testing.B, string) scaler.Scaler, stream, prefix string, subscriber bool) (scaler.Node, <-chan struct{}) {
	b.Helper()
	ctx := context.Background()
	got := make(chan struct{}, 1<<16)
	var nodes []scaler.Node
	handlers := []scaler.Handler{nopHandler{}, signalHandler(got)}
	if !subscriber {
		handlers = handlers[:1]
	}
	for i, h := range handlers {
		s := newScaler(b, prefix)
		b.Cleanup(func() { s.(interface{ Close() error }).Close() })
		n, err := s.Join(ctx, randomName("n"), h)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { n.Close() })
		if i == 1 {
			if err := n.Subscribe(ctx, stream); err != nil {
				b.Fatal(err)
			}
		}
		nodes = append(nodes, n)
	}
	return nodes[0], got
}

type signalHandler chan struct{}

func (h signalHandler) HandleDelivery(scaler.Delivery) { h <- struct{}{} }
func (signalHandler) HandleMessage(string, []byte)     {}
func (signalHandler) HandleMissed(string)              {}

// BenchmarkNATSSince measures a catch-up read of 100 publications (one
// page of the server's catch-up) from the NATS history.
//
//	go test -run '^$' -bench NATSSince ./integration/
func BenchmarkNATSSince(b *testing.B) {
	requireDocker(b)
	_, addr := runNATS(b)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := natsscaler.Dial(ctx, natsURLs(addr), natsscaler.WithPrefix(randomName("bench")))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	n, err := s.Join(ctx, "bench", nopHandler{})
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	pub := &scaler.Publication{Channel: "room.a", Event: "e", Data: []byte(`{"text":"hello"}`)}
	for range 1000 {
		if err := n.Publish(ctx, pub); err != nil {
			b.Fatal(err)
		}
	}
	h := n.(scaler.History)
	_, top, err := h.Since(ctx, "room", scaler.Position{}, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		entries, _, err := h.Since(ctx, "room", scaler.Position{Offset: 500, Epoch: top.Epoch}, 100)
		if err != nil || len(entries) != 100 {
			b.Fatalf("Since: %d entries, %v", len(entries), err)
		}
	}
}
