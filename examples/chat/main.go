// Command chat is a chat in the browser on sss: pick a name, join rooms (one
// needs a password), talk, see who is online and typing. Pages reconnect by
// themselves when a server restarts.
//
//	go run ./examples/chat                     # http://localhost:8080, in-memory scaler
//
// Two instances on Redis and MongoDB share their rooms: the demo of
// horizontal scaling.
//
//	go run ./examples/chat -addr localhost:8080 -peers http://localhost:8081 -redis redis://localhost:6379 -mongo mongodb://localhost:27017
//	go run ./examples/chat -addr localhost:8081 -peers http://localhost:8080 -redis redis://localhost:6379 -mongo mongodb://localhost:27017
//
// Every flag may be given as an environment variable instead: CHAT_ADDR,
// CHAT_REDIS, CHAT_MONGO, CHAT_DB, CHAT_PEERS, CHAT_SECRET,
// CHAT_ROOM_PASSWORD.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/superscaled/sss/examples/chat/chatapp"
	"github.com/superscaled/sss/scaler"
	"github.com/superscaled/sss/scaler/memory"
	"github.com/superscaled/sss/scaler/mongoredis"
)

// demoSecret signs the session cookies unless -secret says otherwise. It is
// public, so anyone could forge a cookie: fine for a demo on localhost, not
// for anything else.
const demoSecret = "sss-chat-demo-secret-not-for-production"

type flags struct {
	addr, redis, mongo, db, peers, secret, password string
}

func main() {
	var f flags
	flag.StringVar(&f.addr, "addr", env("CHAT_ADDR", "localhost:8080"), "listen address")
	flag.StringVar(&f.redis, "redis", env("CHAT_REDIS", ""), "Redis URL (with -mongo: the Redis+MongoDB scaler), e.g. redis://localhost:6379")
	flag.StringVar(&f.mongo, "mongo", env("CHAT_MONGO", ""), "MongoDB URI (with -redis), e.g. mongodb://localhost:27017")
	flag.StringVar(&f.db, "db", env("CHAT_DB", "sss_chat"), "MongoDB database")
	flag.StringVar(&f.peers, "peers", env("CHAT_PEERS", ""), "comma-separated base URLs of the other instances, for the pages to fail over to, e.g. http://localhost:8081")
	flag.StringVar(&f.secret, "secret", env("CHAT_SECRET", ""), "secret signing the session cookies (the same on every instance; default: a public demo secret)")
	flag.StringVar(&f.password, "room-password", env("CHAT_ROOM_PASSWORD", "sesame"), "password of the room #secret")
	flag.Parse()
	if err := run(f); err != nil {
		log.Fatal(err)
	}
}

func env(name, dflt string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return dflt
}

func run(f flags) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.Default()

	sc, closeScaler, what, err := newScaler(ctx, f)
	if err != nil {
		return err
	}
	defer closeScaler()
	secret := f.secret
	if secret == "" {
		secret = demoSecret
		logger.Warn("chat: signing cookies with the public demo secret; set -secret (or CHAT_SECRET) for anything but a local demo")
	}
	var peers []string
	for _, p := range strings.Split(f.peers, ",") {
		if p = strings.TrimSpace(p); p != "" {
			peers = append(peers, p)
		}
	}
	app, err := chatapp.New(ctx, chatapp.Config{
		Scaler: sc,
		Secret: []byte(secret),
		Rooms:  chatapp.DefaultRooms(f.password),
		Peers:  peers,
		Logger: logger,
	})
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		app.Close()
		return err
	}
	hs := &http.Server{
		Handler:           app.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       time.Minute,
	}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	fmt.Printf("chat on %s, scaler: %s\nopen http://%s (password of #secret: %q)\n", ln.Addr(), what, f.addr, f.password)

	select {
	case err = <-served:
	case <-ctx.Done():
		// Pages get close code 4000 and reconnect at once: to a peer if
		// there is one, else to this address once it is back.
		fmt.Println("shutting down")
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return errors.Join(ignoreClosed(err), app.Shutdown(sctx), hs.Shutdown(sctx))
}

func ignoreClosed(err error) error {
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// newScaler picks the backend that joins the instances, from the flags, and
// returns it with its closer and a word for the log.
//
// To add a backend (NATS comes next): give it its flags in main, and a case
// here before the default.
func newScaler(ctx context.Context, f flags) (scaler.Scaler, func() error, string, error) {
	switch {
	case f.redis != "" || f.mongo != "":
		if f.redis == "" || f.mongo == "" {
			return nil, nil, "", errors.New("-redis and -mongo go together")
		}
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		sc, err := mongoredis.Dial(dctx, f.redis, f.mongo, f.db)
		if err != nil {
			return nil, nil, "", err
		}
		return sc, sc.Close, "Redis+MongoDB (catch-up survives a restart)", nil
	// case f.nats != "": the NATS scaler, once it exists.
	default:
		// History of 1000 messages per room, kept as long as the process
		// lives; a restart starts empty, and pages say so.
		sc, err := memory.New(memory.WithHistory(1000, 24*time.Hour))
		if err != nil {
			return nil, nil, "", err
		}
		return sc, sc.Close, "in-memory (one process; history lost on restart)", nil
	}
}
