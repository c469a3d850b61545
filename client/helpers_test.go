package client_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/client"
	"github.com/superscaled/sss/scaler/memory"
)

func TestMain(m *testing.M) {
	code := m.Run()
	// Failed handshakes (401, 503) leave keep-alive connections in the
	// default transport's pool: they are not the client's goroutines.
	http.DefaultClient.CloseIdleConnections()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// quiet keeps the servers' expected errors (panicking handlers) out of the
// test output.
var quiet = slog.New(slog.DiscardHandler)

// wsURL turns an httptest URL into a WebSocket one.
func wsURL(httpURL string) string { return "ws" + strings.TrimPrefix(httpURL, "http") }

// userSession is a session parser that takes the user from the X-User header
// and the session from X-Session (random when absent).
func userSession(r *http.Request) (*sss.Session, error) {
	return &sss.Session{UserID: r.Header.Get("X-User"), SessionID: r.Header.Get("X-Session")}, nil
}

func asUser(user string) client.Option {
	return client.WithHeader(http.Header{"X-User": {user}})
}

// testServer is one sss.Server behind httptest.
type testServer struct {
	srv *sss.Server
	hs  *httptest.Server
	url string
}

// newServer starts an sss server on m (a private scaler when nil), closed at
// the end of the test.
func newServer(t testing.TB, m *memory.Scaler, opts ...sss.Option) *testServer {
	t.Helper()
	opts = append([]sss.Option{sss.WithLogger(quiet)}, opts...)
	if m != nil {
		opts = append([]sss.Option{sss.WithScaler(m)}, opts...)
	}
	srv, err := sss.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	ts := &testServer{srv: srv, hs: hs, url: wsURL(hs.URL)}
	t.Cleanup(func() {
		srv.Close()
		hs.Close()
	})
	return ts
}

// restartable is an sss server that can be stopped and started again on the
// same address, as a redeployed instance would be.
type restartable struct {
	t     testing.TB
	addr  string
	url   string
	opts  []sss.Option
	setup func(*sss.Server) // registers handlers on each new server

	mu  sync.Mutex
	srv *sss.Server
	hs  *http.Server
	ln  net.Listener
}

func newRestartable(t testing.TB, setup func(*sss.Server), opts ...sss.Option) *restartable {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts = append([]sss.Option{sss.WithLogger(quiet)}, opts...)
	r := &restartable{t: t, addr: ln.Addr().String(), opts: opts, setup: setup}
	r.url = "ws://" + r.addr + "/"
	r.serve(ln)
	t.Cleanup(r.stop)
	return r
}

func (r *restartable) serve(ln net.Listener) {
	srv, err := sss.New(r.opts...)
	if err != nil {
		r.t.Fatal(err)
	}
	if r.setup != nil {
		r.setup(srv)
	}
	hs := &http.Server{Handler: srv}
	r.mu.Lock()
	r.srv, r.hs, r.ln = srv, hs, ln
	r.mu.Unlock()
	go hs.Serve(ln)
}

// stop shuts the server down gracefully: clients get close code 4000.
func (r *restartable) stop() {
	r.mu.Lock()
	srv, hs := r.srv, r.hs
	r.srv, r.hs = nil, nil
	r.mu.Unlock()
	if srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	hs.Close()
}

// start serves again on the same address with a new sss.Server.
func (r *restartable) start() {
	r.t.Helper()
	ln, err := net.Listen("tcp", r.addr)
	if err != nil {
		r.t.Fatal(err)
	}
	r.serve(ln)
}

func (r *restartable) server() *sss.Server {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.srv
}

// proxy is a loopback TCP proxy that can cut its connections (close both
// sides with no WebSocket close frame, like a dead NAT or a pulled cable) or
// freeze them (swallow everything, like a stalled link: only a ping timeout
// notices).
type proxy struct {
	ln     net.Listener
	target string
	url    string

	mu    sync.Mutex
	pairs map[*pair]struct{}
	wg    sync.WaitGroup
}

type pair struct {
	a, b   net.Conn
	mu     sync.Mutex
	frozen bool
}

func newProxy(t testing.TB, targetWS string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := strings.TrimPrefix(strings.TrimPrefix(targetWS, "ws://"), "http://")
	target, _, _ = strings.Cut(target, "/")
	p := &proxy{ln: ln, target: target, url: "ws://" + ln.Addr().String() + "/", pairs: make(map[*pair]struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		a, err := p.ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", p.target)
		if err != nil {
			a.Close()
			continue
		}
		pr := &pair{a: a, b: b}
		p.mu.Lock()
		p.pairs[pr] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(pr, a, b)
		go p.pipe(pr, b, a)
	}
}

func (p *proxy) pipe(pr *pair, src, dst net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			pr.mu.Lock()
			frozen := pr.frozen
			pr.mu.Unlock()
			if !frozen {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					err = werr
				}
			}
		}
		if err != nil {
			pr.a.Close()
			pr.b.Close()
			p.mu.Lock()
			delete(p.pairs, pr)
			p.mu.Unlock()
			return
		}
	}
}

// cut closes every current connection abruptly.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for pr := range p.pairs {
		pr.a.Close()
		pr.b.Close()
	}
}

// freeze makes every current connection swallow what it carries; new
// connections flow normally.
func (p *proxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for pr := range p.pairs {
		pr.mu.Lock()
		pr.frozen = true
		pr.mu.Unlock()
	}
}

func (p *proxy) close() {
	p.ln.Close()
	p.cut()
	p.wg.Wait()
}

// dial connects a client that is closed at the end of the test.
func dial(t testing.TB, url string, opts ...client.Option) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, url, opts...)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// recv waits for a value on ch.
func recv[T any](t testing.TB, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(15 * time.Second):
		t.Fatalf("timed out waiting for a %T", *new(T))
		panic("unreachable")
	}
}

// ctxT returns a context bounded for one step of a test.
func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// messages collects what a handler receives.
func messages() (func(client.Message), <-chan client.Message) {
	ch := make(chan client.Message, 1024)
	return func(m client.Message) { ch <- m }, ch
}

// statusLog records a client's status changes.
type statusLog struct {
	mu  sync.Mutex
	seq []client.Status
}

func (s *statusLog) record(st, _ client.Status) {
	s.mu.Lock()
	s.seq = append(s.seq, st)
	s.mu.Unlock()
}

func (s *statusLog) get() []client.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]client.Status(nil), s.seq...)
}

// logCounter is a slog handler that counts records by message.
type logCounter struct {
	mu     sync.Mutex
	counts map[string]int
}

func newLogCounter() *logCounter { return &logCounter{counts: make(map[string]int)} }

func (h *logCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h *logCounter) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.counts[r.Message]++
	h.mu.Unlock()
	return nil
}
func (h *logCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logCounter) WithGroup(string) slog.Handler      { return h }

func (h *logCounter) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.counts[msg]
}

// events is an ordered log of callback events.
type events struct {
	mu  sync.Mutex
	log []string
	ch  chan string
}

func newEvents() *events { return &events{ch: make(chan string, 1024)} }

func (e *events) add(s string) {
	e.mu.Lock()
	e.log = append(e.log, s)
	e.mu.Unlock()
	e.ch <- s
}

func (e *events) get() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.log...)
}

// waitEvent waits for the event want, skipping others.
func (e *events) waitEvent(t testing.TB, want string) {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case s := <-e.ch:
			if s == want {
				return
			}
		case <-timeout:
			t.Fatalf("timed out waiting for event %q; got %v", want, e.get())
		}
	}
}

func newMemory(t testing.TB, opts ...memory.Option) *memory.Scaler {
	t.Helper()
	m, err := memory.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// hooks gives Dial the hook sets as one WithHooks: each hook calls those of
// the sets that have it, in order.
func hooks(sets ...client.Hooks) client.Option {
	var h client.Hooks
	for _, s := range sets {
		h.OnStatusChange = chain2(h.OnStatusChange, s.OnStatusChange)
		h.OnDrop = chain1(h.OnDrop, s.OnDrop)
		h.OnReconnect = chain1(h.OnReconnect, s.OnReconnect)
		h.OnError = chain1(h.OnError, s.OnError)
		h.OnRefused = chain2(h.OnRefused, s.OnRefused)
		h.OnUserMessage = chain1(h.OnUserMessage, s.OnUserMessage)
		h.OnSessionMessage = chain1(h.OnSessionMessage, s.OnSessionMessage)
		h.OnBroadcast = chain1(h.OnBroadcast, s.OnBroadcast)
		h.OnSubscribed = chain1(h.OnSubscribed, s.OnSubscribed)
		h.OnUnsubscribed = chain1(h.OnUnsubscribed, s.OnUnsubscribed)
		h.OnRecover = chain1(h.OnRecover, s.OnRecover)
		h.OnGap = chain1(h.OnGap, s.OnGap)
	}
	return client.WithHooks(h)
}

func chain1[A any](f, g func(A)) func(A) {
	switch {
	case f == nil:
		return g
	case g == nil:
		return f
	}
	return func(a A) { f(a); g(a) }
}

func chain2[A, B any](f, g func(A, B)) func(A, B) {
	switch {
	case f == nil:
		return g
	case g == nil:
		return f
	}
	return func(a A, b B) { f(a, b); g(a, b) }
}
