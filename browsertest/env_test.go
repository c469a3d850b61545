package browsertest

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/scaler/memory"
)

// An instance is one sss.Server with its HTTP server on a loopback port,
// serving what the JS client tests need: the harness page, the client
// script, and the server at /ws.
type instance struct {
	t        *testing.T
	shutdown func(context.Context) error
	srv      *sss.Server
	hs       *http.Server
	addr     string // host:port
	rec      *record
	done     chan struct{} // Serve returned
}

// record is what a test server saw: subscription queries, tells, the
// connections and why they ended.
type record struct {
	mu      sync.Mutex
	queries map[string][]string // channel → queries the subscription parser saw
	tells   []string
	conns   map[string]*sss.Conn // user → last connection
	reasons []error
	revoked atomic.Bool // the channel "revocable" is refused
}

func (r *record) query(channel string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.queries[channel]...)
}

func (r *record) conn(user string) *sss.Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conns[user]
}

func (r *record) disconnects() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]error(nil), r.reasons...)
}

// newMemory returns a memory scaler closed at the end of the test.
func newMemory(t *testing.T) *memory.Scaler {
	t.Helper()
	m, err := memory.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// freeAddr returns a loopback address nothing listens on (any more).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// startInstance starts a test server on m at addr ("" for any port). The
// session parser names the user and the session from the URL's query
// (?user=...&sid=...&name=..., name the public Info), since a page's script
// cannot set headers.
func startInstance(t *testing.T, m *memory.Scaler, addr string, opts ...sss.Option) *instance {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	rec := &record{queries: map[string][]string{}, conns: map[string]*sss.Conn{}}
	base := []sss.Option{
		sss.WithScaler(m),
		sss.WithLogger(slog.New(slog.DiscardHandler)),
		// The harness page of one instance connects to the others too.
		sss.WithOriginPatterns("127.0.0.1:*"),
		sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
			q := r.URL.Query()
			sess := &sss.Session{UserID: q.Get("user"), SessionID: q.Get("sid")}
			if name := q.Get("name"); name != "" {
				sess.Info = map[string]string{"name": name} // public: shown in presence
			}
			return sess, nil
		}),
		sss.WithSubscriptionParser(func(ctx context.Context, c *sss.Conn, channel string, query json.RawMessage) error {
			rec.mu.Lock()
			rec.queries[channel] = append(rec.queries[channel], string(query))
			rec.mu.Unlock()
			if channel == "private" && string(query) != `{"pw":"open sesame"}` {
				return sss.Errorf(sss.CodeForbidden, "wrong password")
			}
			if channel == "revocable" && rec.revoked.Load() {
				return sss.Errorf(sss.CodeForbidden, "access revoked")
			}
			return nil
		}),
		sss.WithPublishParser(func(ctx context.Context, c *sss.Conn, channel, event string, data json.RawMessage) error {
			if channel == "open" || len(channel) > 5 && channel[:5] == "open." {
				return nil
			}
			return sss.Errorf(sss.CodeForbidden, "publish only under open")
		}),
		sss.WithHooks(sss.Hooks{
			OnConnect: func(c *sss.Conn) {
				rec.mu.Lock()
				rec.conns[c.UserID()] = c
				rec.mu.Unlock()
			},
			OnDisconnect: func(c *sss.Conn, reason error) {
				rec.mu.Lock()
				rec.reasons = append(rec.reasons, reason)
				rec.mu.Unlock()
			},
		}),
	}
	srv, err := sss.New(append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	srv.HandleAsk("echo", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		return data, nil
	})
	srv.HandleAsk("slow", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	srv.HandleAsk("teapot", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		return nil, sss.Errorf("teapot", "short and stout")
	})
	srv.HandleAsk("forbid", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		return nil, sss.Errorf(sss.CodeForbidden, "not you")
	})
	srv.HandleTell("note", func(ctx context.Context, c *sss.Conn, data json.RawMessage) error {
		rec.mu.Lock()
		rec.tells = append(rec.tells, string(data))
		rec.mu.Unlock()
		return nil
	})
	mux := http.NewServeMux()
	mux.Handle("/sss.js", sss.ClientScript())
	mux.HandleFunc("/harness.html", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, "testdata/harness.html")
	})
	mux.HandleFunc("/harness.js", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, "testdata/harness.js")
	})
	mux.Handle("/ws", srv)
	in := serve(t, addr, srv.Shutdown, mux)
	in.srv, in.rec = srv, rec
	return in
}

// serve listens on addr and serves h until stop (or the test's end), which
// calls shutdown.
func serve(t *testing.T, addr string, shutdown func(context.Context) error, h http.Handler) *instance {
	t.Helper()
	var ln net.Listener
	var err error
	// A port just freed may take a moment to be free again.
	for deadline := time.Now().Add(5 * time.Second); ; {
		ln, err = net.Listen("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	in := &instance{t: t, shutdown: shutdown, addr: ln.Addr().String(), done: make(chan struct{})}
	in.hs = &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		defer close(in.done)
		if err := in.hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve %s: %v", in.addr, err)
		}
	}()
	t.Cleanup(func() { in.stop() })
	return in
}

// stop shuts the instance down as a deploy would: the server closes its
// connections with 4000 and leaves the cluster; the listener closes.
func (in *instance) stop() {
	select {
	case <-in.done:
		return
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := in.shutdown(ctx); err != nil {
		in.t.Errorf("shut down %s: %v", in.addr, err)
	}
	in.hs.Shutdown(ctx)
	in.hs.Close()
	<-in.done
}

func (in *instance) url(path string) string { return "http://" + in.addr + path }

// waitConn waits until user's connection on this instance is a new one
// (not old), and returns it.
func (in *instance) waitConn(user string, old *sss.Conn) *sss.Conn {
	in.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		if c := in.rec.conn(user); c != nil && c != old {
			return c
		}
		if time.Now().After(deadline) {
			in.t.Fatalf("timed out waiting for a connection of %q on %s", user, in.addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// quietLogger keeps the servers' logs out of the test output.
var quietLogger = slog.New(slog.DiscardHandler)
