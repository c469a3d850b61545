// Command sss is the sss target of the side-by-side bench: an sss.Server
// at /ws (in-memory scaler, or Redis+MongoDB with -redis and -mongo, for
// the cross scenario), an "echo" ask handler and the control API.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/bench/internal/control"
	"github.com/superscaled/sss/scaler/mongoredis"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8401", "listen address")
	redisAddr := flag.String("redis", "", "Redis address: use the mongoredis scaler (with -mongo)")
	mongoURI := flag.String("mongo", "", "MongoDB URI (with -redis)")
	flag.Parse()

	opts := []sss.Option{
		sss.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))),
		// Room for a back-to-back burst to every subscriber.
		sss.WithSendQueue(1<<14, 8<<20),
	}
	if *redisAddr != "" {
		mc, err := mongo.Connect(options.Client().ApplyURI(*mongoURI))
		if err != nil {
			log.Fatal(err)
		}
		sc, err := mongoredis.New(redis.NewClient(&redis.Options{Addr: *redisAddr}), mc.Database("sssbench"))
		if err != nil {
			log.Fatal(err)
		}
		opts = append(opts, sss.WithScaler(sc))
	}
	srv, err := sss.New(opts...)
	if err != nil {
		log.Fatal(err)
	}
	srv.HandleAsk("echo", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		return data, nil
	})
	mux := http.NewServeMux()
	mux.Handle("/ws", srv)
	mux.Handle("/", control.Handler(func(ctx context.Context, channel string, data []byte) error {
		return srv.Publish(ctx, channel, "t", json.RawMessage(data))
	}))
	hs := &http.Server{Addr: *addr, Handler: mux}
	go func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
		<-ch
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		hs.Shutdown(ctx)
	}()
	if err := hs.ListenAndServe(); err != http.ErrServerClosed {
		log.Fatal(err)
	}
}
