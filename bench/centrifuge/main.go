// Command centrifuge is the centrifuge target of the side-by-side bench:
// a centrifuge node (in-memory broker, or Redis with -redis, JSON protocol over its WebSocket
// handler at /ws), anonymous connections allowed to subscribe anywhere, an
// "echo" RPC and the control API.
package main

import (
	"context"
	"flag"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/centrifugal/centrifuge"

	"github.com/superscaled/sss/bench/internal/control"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8402", "listen address")
	history := flag.Int("history", 100, "publications kept per channel (0: none); sss keeps history and stamps offsets, so the comparison keeps it too")
	redisAddr := flag.String("redis", "", "Redis address: use centrifuge's Redis broker (the cross scenario)")
	flag.Parse()

	node, err := centrifuge.New(centrifuge.Config{LogLevel: centrifuge.LogLevelError})
	if err != nil {
		log.Fatal(err)
	}
	node.OnConnecting(func(ctx context.Context, e centrifuge.ConnectEvent) (centrifuge.ConnectReply, error) {
		return centrifuge.ConnectReply{Credentials: &centrifuge.Credentials{}}, nil
	})
	node.OnConnect(func(c *centrifuge.Client) {
		c.OnSubscribe(func(e centrifuge.SubscribeEvent, cb centrifuge.SubscribeCallback) {
			cb(centrifuge.SubscribeReply{}, nil)
		})
		c.OnRPC(func(e centrifuge.RPCEvent, cb centrifuge.RPCCallback) {
			cb(centrifuge.RPCReply{Data: e.Data}, nil)
		})
	})
	if *redisAddr != "" {
		shard, err := centrifuge.NewRedisShard(node, centrifuge.RedisShardConfig{Address: *redisAddr})
		if err != nil {
			log.Fatal(err)
		}
		broker, err := centrifuge.NewRedisBroker(node, centrifuge.RedisBrokerConfig{Shards: []*centrifuge.RedisShard{shard}})
		if err != nil {
			log.Fatal(err)
		}
		node.SetBroker(broker)
	}
	if err := node.Run(); err != nil {
		log.Fatal(err)
	}
	var popts []centrifuge.PublishOption
	if *history > 0 {
		popts = append(popts, centrifuge.WithHistory(*history, time.Minute))
	}
	mux := http.NewServeMux()
	mux.Handle("/ws", centrifuge.NewWebsocketHandler(node, centrifuge.WebsocketConfig{}))
	mux.Handle("/", control.Handler(func(ctx context.Context, channel string, data []byte) error {
		_, err := node.Publish(channel, data, popts...)
		return err
	}))
	hs := &http.Server{Addr: *addr, Handler: mux}
	go func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
		<-ch
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		node.Shutdown(ctx)
		hs.Shutdown(ctx)
	}()
	if err := hs.ListenAndServe(); err != http.ErrServerClosed {
		log.Fatal(err)
	}
}
