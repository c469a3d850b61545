// Command sss-server is a standalone sss server: the WebSocket endpoint of
// protocol sss.v1 (docs/protocol.md) for browsers and programs in any
// language, an HTTP API for the application's backend (docs/http-api.md),
// health and readiness probes and Prometheus metrics. Several instances
// share a Redis (and MongoDB), or a NATS server or cluster, to form one
// cluster.
//
//	sss-server -jwt-secret "$SECRET" -api-key "$KEY" -redis-url redis://localhost:6379/0 -mongo-url mongodb://localhost:27017
//	sss-server -jwt-secret "$SECRET" -api-key "$KEY" -nats-url nats://localhost:4222
//
// Run sss-server -help for every flag; each is also an environment
// variable (SSS_REDIS_URL, ...).
//
// Endpoints: the WebSocket at -path (default /ws), the HTTP API at
// /api/<method>, /healthz (the process serves), /readyz (it can serve:
// not draining, its scaler answers), /metrics.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/metrics"
	"github.com/superscaled/sss/scaler"
	"github.com/superscaled/sss/scaler/memory"
	"github.com/superscaled/sss/scaler/mongoredis"
	natsscaler "github.com/superscaled/sss/scaler/nats"
)

func main() {
	cfg, err := parseConfig(os.Args[1:], os.Getenv)
	if errors.Is(err, errHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sss-server:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, cfg, nil); err != nil {
		fmt.Fprintln(os.Stderr, "sss-server:", err)
		os.Exit(1)
	}
}

// run serves until ctx ends, then drains. ready, if not nil, receives the
// listener's address once it listens (for tests).
func run(ctx context.Context, cfg *config, ready func(addr string)) error {
	log := newLogger(cfg.logLevel)
	sc, closeScaler, err := newScaler(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer closeScaler()
	srv, err := newServer(cfg, sc, log)
	if err != nil {
		return err
	}
	defer srv.Close()

	mux := http.NewServeMux()
	mux.Handle(cfg.path, srv)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		rctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := srv.Ready(rctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewCollector(srv), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if cfg.apiKey != "" {
		(&api{srv: srv, key: []byte(cfg.apiKey), log: log, timeout: cfg.askTimeout + 5*time.Second}).routes(mux)
	} else {
		log.Warn("sss-server: no -api-key: the HTTP API is off")
	}

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	log.Info("sss-server: listening", "addr", ln.Addr().String(), "path", cfg.path, "node", srv.NodeID())
	if ready != nil {
		ready(ln.Addr().String())
	}

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	// Drain: the clients are asked to reconnect elsewhere at once (4000),
	// handlers finish, then the HTTP server stops.
	log.Info("sss-server: draining", "timeout", cfg.drain)
	dctx, cancel := context.WithTimeout(context.Background(), cfg.drain)
	defer cancel()
	err = srv.Shutdown(dctx)
	hs.Shutdown(dctx)
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	log.Info("sss-server: stopped")
	return nil
}

func newLogger(level string) *slog.Logger {
	var l slog.Level
	l.UnmarshalText([]byte(level))
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

// newScaler returns the configured scaler and what closes it.
func newScaler(ctx context.Context, cfg *config, log *slog.Logger) (scaler.Scaler, func(), error) {
	if cfg.natsURL != "" {
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		s, err := natsscaler.Dial(dctx, cfg.natsURL, natsscaler.WithPrefix(cfg.natsPrefix),
			natsscaler.WithHistory(int64(cfg.natsMsgs), natsscaler.DefaultHistoryBytes, cfg.historyAge))
		if err != nil {
			return nil, nil, err
		}
		log.Info("sss-server: NATS scaler")
		return s, func() { s.Close() }, nil
	}
	if cfg.redisURL == "" {
		m, err := memory.New(memory.WithHistory(cfg.history, cfg.historyAge))
		if err != nil {
			return nil, nil, err
		}
		log.Info("sss-server: in-memory scaler: a cluster of one")
		return m, func() { m.Close() }, nil
	}
	opts := []mongoredis.Option{
		mongoredis.WithPrefix(cfg.prefix), mongoredis.WithHistory(cfg.history, cfg.historyAge),
		mongoredis.WithLogger(log),
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if cfg.mongoURL != "" {
		s, err := mongoredis.Dial(dctx, cfg.redisURL, cfg.mongoURL, cfg.mongoDB, opts...)
		if err != nil {
			return nil, nil, err
		}
		log.Info("sss-server: Redis+MongoDB scaler")
		return s, func() { s.Close() }, nil
	}
	ropt, err := redis.ParseURL(cfg.redisURL)
	if err != nil {
		return nil, nil, fmt.Errorf("-redis-url: %w", err)
	}
	if ropt.MaxRetries == 0 {
		ropt.MaxRetries = -1 // a retried publish could be numbered twice
	}
	if ropt.DialerRetries == 0 {
		ropt.DialerRetries = 1
	}
	rdb := redis.NewClient(ropt)
	s, err := mongoredis.New(rdb, nil, opts...)
	if err != nil {
		rdb.Close()
		return nil, nil, err
	}
	if err := rdb.Ping(dctx).Err(); err != nil {
		s.Close()
		rdb.Close()
		return nil, nil, fmt.Errorf("redis: %w", err)
	}
	log.Info("sss-server: Redis scaler, without a session store (no -mongo-url)")
	return s, func() { s.Close(); rdb.Close() }, nil
}

// newServer builds the sss.Server from the configuration.
func newServer(cfg *config, sc scaler.Scaler, log *slog.Logger) (*sss.Server, error) {
	auth, err := newAuthenticator(cfg, log)
	if err != nil {
		return nil, err
	}
	opts := []sss.Option{
		sss.WithScaler(sc),
		sss.WithLogger(log),
		sss.WithSessionParser(auth.parseSession),
		sss.WithSubscriptionParser(auth.canSubscribe),
		sss.WithPublishParser(auth.canPublish),
		sss.WithMaxMessageSize(int64(cfg.maxMessage)),
		sss.WithMaxSubscriptions(cfg.maxSubs),
		sss.WithPing(cfg.pingEvery, sss.DefaultPongTimeout),
		sss.WithAskTimeout(cfg.askTimeout),
	}
	if len(cfg.origins) > 0 {
		opts = append(opts, sss.WithOriginPatterns(cfg.origins...))
	}
	if cfg.rate > 0 {
		opts = append(opts, sss.WithRateLimit(cfg.rate, cfg.burst))
	}
	if len(cfg.presence) > 0 || len(cfg.joinLeave) > 0 {
		opts = append(opts, sss.WithPresence(func(channel string) sss.ChannelPresence {
			return sss.ChannelPresence{Track: matchAny(cfg.presence, channel), JoinLeave: matchAny(cfg.joinLeave, channel)}
		}))
	}
	if len(cfg.lossy) > 0 {
		opts = append(opts, sss.WithLossyChannels(func(channel string) bool { return matchAny(cfg.lossy, channel) }))
	}
	return sss.New(opts...)
}
