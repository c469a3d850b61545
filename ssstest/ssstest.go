// Package ssstest runs sss clusters inside tests: N sss.Servers on
// httptest servers sharing one scaler (in memory unless you give one), Go
// clients dialled to them, and an instance dying as a killed process
// would. Everything is cleaned up through t.Cleanup.
//
//	func TestChatAcrossInstances(t *testing.T) {
//		cl := ssstest.NewCluster(t, 2, ssstest.WithServerOptions(myapp.Options()...))
//		alice := cl.Dial(t, 0, client.WithHeader(...))
//		bob := cl.Dial(t, 1, client.WithHeader(...))
//		...
//	}
//
// Package ssstest/containers starts Redis and MongoDB with
// testcontainers-go and returns a ready scaler (WithScaler), for tests
// against the real backends; it is separate so that these helpers do not
// bring testcontainers into your build.
package ssstest

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/client"
	"github.com/superscaled/sss/scaler"
	"github.com/superscaled/sss/scaler/memory"
)

// Option configures NewCluster.
type Option func(*config)

type config struct {
	scaler  scaler.Scaler
	memory  []memory.Option
	servers []sss.Option
	path    string
}

// WithScaler makes the instances share sc (e.g. from package
// ssstest/containers) instead of a fresh in-memory scaler. The cluster
// does not close it.
func WithScaler(sc scaler.Scaler) Option { return func(c *config) { c.scaler = sc } }

// WithMemoryOptions configures the in-memory scaler (e.g. a short
// memory.WithPresenceTTL, so that a killed instance's clients are
// announced gone quickly).
func WithMemoryOptions(opts ...memory.Option) Option {
	return func(c *config) { c.memory = append(c.memory, opts...) }
}

// WithServerOptions gives every instance these options (parsers, hooks,
// presence, limits): typically your application's.
func WithServerOptions(opts ...sss.Option) Option {
	return func(c *config) { c.servers = append(c.servers, opts...) }
}

// WithPath mounts the servers at path (default "/").
func WithPath(path string) Option { return func(c *config) { c.path = path } }

// Cluster is a running cluster of sss.Servers.
type Cluster struct {
	// Servers are the instances, each behind its own httptest server.
	Servers []*sss.Server
	// Memory is the in-memory scaler they share, nil WithScaler: its Cut,
	// Heal and Crash break an instance's link to the others.
	Memory *memory.Scaler

	t         testing.TB
	https     []*httptest.Server
	listeners []*listener
	path      string
	mu        sync.Mutex
	dead      []bool
}

// NewCluster starts n instances. It fails the test on error; everything
// stops when the test ends.
func NewCluster(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	cfg := config{path: "/"}
	for _, o := range opts {
		o(&cfg)
	}
	cl := &Cluster{t: t, path: cfg.path, dead: make([]bool, n)}
	sc := cfg.scaler
	if sc == nil {
		m, err := memory.New(cfg.memory...)
		if err != nil {
			t.Fatal(err)
		}
		cl.Memory, sc = m, m
	}
	for range n {
		srv, err := sss.New(append([]sss.Option{sss.WithScaler(sc)}, cfg.servers...)...)
		if err != nil {
			t.Fatalf("ssstest: sss.New: %v", err)
		}
		mux := http.NewServeMux()
		mux.Handle(cfg.path, srv)
		hs := httptest.NewUnstartedServer(mux)
		ln := &listener{Listener: hs.Listener}
		hs.Listener = ln
		hs.Start()
		cl.Servers = append(cl.Servers, srv)
		cl.https = append(cl.https, hs)
		cl.listeners = append(cl.listeners, ln)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for i, srv := range cl.Servers {
			srv.Shutdown(ctx)
			cl.https[i].Close()
		}
		if cl.Memory != nil {
			cl.Memory.Close()
		}
	})
	return cl
}

// URL is instance i's WebSocket URL.
func (cl *Cluster) URL(i int) string {
	return "ws" + strings.TrimPrefix(cl.https[i].URL, "http") + cl.path
}

// URLs lists every instance's URL, starting from instance first: give
// them to client.WithURLs so that a client fails over to the others.
func (cl *Cluster) URLs(first int) []string {
	out := make([]string, 0, len(cl.https))
	for i := range cl.https {
		out = append(out, cl.URL((first+i)%len(cl.https)))
	}
	return out
}

// Dial connects a Go client to instance i, with the other instances as
// its fallbacks and a short reconnect delay, and waits for its welcome. It
// is closed when the test ends.
func (cl *Cluster) Dial(t testing.TB, i int, opts ...client.Option) *client.Client {
	t.Helper()
	urls := cl.URLs(i)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, urls[0], append([]client.Option{
		client.WithURLs(urls[1:]...), client.WithReconnectDelay(20*time.Millisecond, 500*time.Millisecond),
	}, opts...)...)
	if err != nil {
		t.Fatalf("ssstest: dial instance %d: %v", i, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Kill makes instance i die as a killed process does: its clients'
// connections drop at once without a close frame, it accepts no more, and
// with the in-memory scaler its node is crashed (its presence entries
// expire, reported gone by the survivors) before it says anything more to
// the others. Its clients reconnect to the other instances.
func (cl *Cluster) Kill(i int) {
	cl.mu.Lock()
	if cl.dead[i] {
		cl.mu.Unlock()
		return
	}
	cl.dead[i] = true
	cl.mu.Unlock()
	if cl.Memory != nil {
		cl.Memory.Crash(cl.Servers[i].NodeID())
	}
	cl.listeners[i].kill()
	cl.Servers[i].Close()
}

// listener keeps the connections it accepted and not yet closed, so that
// Kill can drop them all at once.
type listener struct {
	net.Listener
	mu    sync.Mutex
	conns map[*trackedConn]struct{}
	dead  bool
}

type trackedConn struct {
	net.Conn
	l    *listener
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead {
		c.Close()
		return nil, net.ErrClosed
	}
	if l.conns == nil {
		l.conns = make(map[*trackedConn]struct{})
	}
	tc := &trackedConn{Conn: c, l: l}
	l.conns[tc] = struct{}{}
	return tc, nil
}

func (l *listener) kill() {
	l.mu.Lock()
	l.dead = true
	conns := l.conns
	l.conns = nil
	l.mu.Unlock()
	l.Listener.Close()
	for c := range conns {
		c.Conn.Close()
	}
}
