package integration

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/superscaled/sss/scaler"
	"github.com/superscaled/sss/scaler/mongoredis"
)

// BenchmarkRedisPublishCost measures what one publication costs Redis, the
// resource every instance of a cluster shares: Redis CPU time per
// publication (from INFO commandstats, so the Go side's time does not
// count), on a flat channel and on a channel three levels deep (numbered
// in three streams), with history on (1000 entries, 5 minutes).
//
//	go test -run '^$' -bench RedisPublishCost ./integration/
func BenchmarkRedisPublishCost(b *testing.B) {
	requireDocker(b)
	_, addr := runRedis(b)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	for _, channel := range []string{"flat", "a.b.c"} {
		b.Run(channel, func(b *testing.B) {
			ctx := context.Background()
			s, err := mongoredis.New(rdb, nil, mongoredis.WithPrefix(randomName("bench")+":"))
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			n, err := s.Join(ctx, "bench", nopHandler{})
			if err != nil {
				b.Fatal(err)
			}
			defer n.Close()
			pub := &scaler.Publication{Channel: channel, Event: "e", Data: []byte(`{"text":"` + strings.Repeat("x", 200) + `"}`)}
			for range 2000 { // past the history's size: trimming runs too
				n.Publish(ctx, pub)
			}
			before := redisUsec(b, rdb)
			b.ResetTimer()
			for range b.N {
				if err := n.Publish(ctx, pub); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(redisUsec(b, rdb)-before)/float64(b.N), "redis-µs/pub")
		})
	}
}

// redisUsec returns the CPU time Redis spent in commands so far, in µs.
func redisUsec(b *testing.B, rdb *redis.Client) int64 {
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total int64
	for _, line := range strings.Split(info, "\n") {
		if !strings.HasPrefix(line, "cmdstat_") || strings.HasPrefix(line, "cmdstat_info:") {
			continue
		}
		for _, field := range strings.Split(strings.TrimSpace(line[strings.Index(line, ":")+1:]), ",") {
			if v, ok := strings.CutPrefix(field, "usec="); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				total += n
			}
		}
	}
	return total
}

type nopHandler struct{}

func (nopHandler) HandleDelivery(scaler.Delivery) {}
func (nopHandler) HandleMessage(string, []byte)   {}
func (nopHandler) HandleMissed(string)            {}

// BenchmarkRedisPresenceCost measures what a presence join plus leave
// costs Redis (CPU per pair, from INFO commandstats) in a channel that
// already holds 0 or 10,000 entries: the cost must not grow with the
// channel.
//
//	go test -run '^$' -bench RedisPresenceCost ./integration/
func BenchmarkRedisPresenceCost(b *testing.B) {
	requireDocker(b)
	_, addr := runRedis(b)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	for _, present := range []int{0, 10000, 40000} {
		b.Run(strconv.Itoa(present), func(b *testing.B) {
			ctx := context.Background()
			s, err := mongoredis.New(rdb, nil, mongoredis.WithPrefix(randomName("bench")+":"))
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			n, err := s.Join(ctx, "bench", nopHandler{})
			if err != nil {
				b.Fatal(err)
			}
			defer n.Close()
			p := n.(scaler.Presence)
			for i := range present {
				if err := p.Join(ctx, "room", scaler.ClientInfo{Conn: "c" + strconv.Itoa(i), User: "u" + strconv.Itoa(i%500)}); err != nil {
					b.Fatal(err)
				}
			}
			info := []byte(`{"name":"Alice"}`)
			before := redisUsec(b, rdb)
			b.ResetTimer()
			for i := range b.N {
				c := scaler.ClientInfo{Conn: "x" + strconv.Itoa(i), User: "alice", Info: info}
				if err := p.Join(ctx, "room", c); err != nil {
					b.Fatal(err)
				}
				if err := p.Leave(ctx, "room", c.Conn); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(redisUsec(b, rdb)-before)/float64(b.N), "redis-µs/join+leave")
		})
	}
}
