package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/client"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	secret = "test-secret-test-secret-test-secret"
	apiKey = "k3y"
)

// started is a running sss-server.
type started struct {
	base string // http://127.0.0.1:port
	ws   string // ws://127.0.0.1:port/ws
	stop func() error
}

// start runs the server with args (and the environment env) until the
// test ends.
func start(t *testing.T, env map[string]string, args ...string) *started {
	t.Helper()
	cfg, err := parseConfig(append([]string{"-addr", "127.0.0.1:0", "-drain-timeout", "3s", "-log-level", "error"}, args...),
		func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, func(a string) { addr <- a }) }()
	var a string
	select {
	case a = <-addr:
	case err := <-done:
		cancel()
		t.Fatalf("run: %v", err)
	}
	s := &started{base: "http://" + a, ws: "ws://" + a + cfg.path}
	var once atomic.Bool
	s.stop = func() error {
		if once.Swap(true) {
			return nil
		}
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			return errors.New("run did not return")
		}
	}
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return s
}

// token signs a connection token for user with the given claims.
func token(t *testing.T, user string, exp time.Duration, extra map[string]any) string {
	t.Helper()
	claims := jwt.MapClaims{"sub": user, "exp": time.Now().Add(exp).Unix()}
	for k, v := range extra {
		claims[k] = v
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// call posts to the HTTP API; it returns the status and the decoded body.
func call(t *testing.T, s *started, key, method string, body any) (int, map[string]any) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, s.base+"/api/"+method, bytes.NewReader(b))
	if key != "" {
		req.Header.Set("Authorization", "apikey "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s: answer %q is not a JSON object", method, raw)
	}
	return resp.StatusCode, out
}

func code(out map[string]any) string {
	e, _ := out["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

func dialToken(t *testing.T, s *started, tok func(context.Context) (string, error), opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.Dial(ctxT(t), s.ws, append([]client.Option{client.WithToken(tok), client.WithReconnectDelay(50*time.Millisecond, time.Second)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// A token's claims decide who the connection is and where it may go; the
// HTTP API publishes to it, reads history and presence, and refuses what
// it must.
func TestTokensAndAPI(t *testing.T) {
	s := start(t, nil, "-jwt-secret", secret, "-api-key", apiKey, "-join-leave", "room.*", "-public", "news")
	tok := token(t, "alice", time.Hour, map[string]any{"sid": "tab1", "channels": []string{"room.*"}, "publish": []string{"room.1"}, "info": map[string]string{"name": "Alice"}})
	c := dialToken(t, s, func(context.Context) (string, error) { return tok, nil })
	ctx := ctxT(t)
	if ci := c.Conn(); ci.User != "alice" || ci.Session != "tab1" {
		t.Fatalf("conn %+v", ci)
	}
	got := make(chan client.Message, 8)
	joins := make(chan client.ClientInfo, 8)
	if _, err := c.Subscribe(ctx, "room.1", client.WithMessageHandler(func(m client.Message) { got <- m }),
		client.WithJoinHandler(func(ci client.ClientInfo) { joins <- ci })); err != nil {
		t.Fatal(err)
	}
	if ci := <-joins; string(ci.Info) != `{"name":"Alice"}` {
		t.Fatalf("join %+v", ci)
	}
	if _, err := c.Subscribe(ctx, "news"); err != nil {
		t.Fatalf("public channel: %v", err)
	}
	if _, err := c.Subscribe(ctx, "secret"); !errors.Is(err, client.ErrForbidden) {
		t.Fatalf("channel outside the token: %v", err)
	}
	if err := c.Publish(ctx, "room.1", "msg", "hi"); err != nil {
		t.Fatalf("publish allowed by the token: %v", err)
	}
	if err := c.Publish(ctx, "room.2", "msg", "hi"); !errors.Is(err, client.ErrForbidden) {
		t.Fatalf("publish outside the token: %v", err)
	}
	if m := <-got; m.From.User != "alice" {
		t.Fatalf("own publication %+v", m)
	}

	// The API.
	if st, out := call(t, s, apiKey, "publish", map[string]any{"channel": "room.1", "event": "news", "data": map[string]int{"n": 1}}); st != 200 {
		t.Fatalf("publish: %d %v", st, out)
	}
	if m := <-got; m.Event != "news" || string(m.Data) != `{"n":1}` {
		t.Fatalf("published %+v", m)
	}
	st, out := call(t, s, apiKey, "history", map[string]any{"channel": "room.1", "limit": 10})
	if pubs, _ := out["publications"].([]any); st != 200 || len(pubs) != 2 {
		t.Fatalf("history: %d %v", st, out)
	}
	st, out = call(t, s, apiKey, "presence", map[string]any{"channel": "room.1"})
	if cl, _ := out["clients"].([]any); st != 200 || len(cl) != 1 || cl[0].(map[string]any)["session"] != "tab1" {
		t.Fatalf("presence: %d %v", st, out)
	}
	if st, out = call(t, s, apiKey, "presence_counts", map[string]any{"channel": "room.1"}); st != 200 || out["Clients"] == nil && out["clients"] == nil {
		t.Fatalf("presence counts: %d %v", st, out)
	}
	for _, tc := range []struct {
		key, method string
		body        any
		status      int
		code        string
	}{
		{"wrong", "publish", map[string]any{"channel": "room.1"}, 401, "unauthorized"},
		{"", "publish", map[string]any{"channel": "room.1"}, 401, "unauthorized"},
		{apiKey, "publish", map[string]any{"channel": "bad..name"}, 400, "bad_request"},
		{apiKey, "publish", map[string]any{"channel": "room.1", "bogus": 1}, 400, "bad_request"},
		{apiKey, "presence", map[string]any{"channel": "news"}, 501, "not_supported"},
		{apiKey, "tell", map[string]any{"name": "x"}, 400, "bad_request"},
		{apiKey, "ask", map[string]any{"conn": "nobody.x", "name": "x"}, 404, "not_found"},
		{apiKey, "history", map[string]any{"channel": "room.1", "since": map[string]any{"offset": 1, "epoch": "gone"}}, 404, "not_found"},
	} {
		if st, out := call(t, s, tc.key, tc.method, tc.body); st != tc.status || code(out) != tc.code {
			t.Errorf("%s %v with key %q: %d %v, want %d %s", tc.method, tc.body, tc.key, st, out, tc.status, tc.code)
		}
	}
	resp, err := http.Get(s.base + "/api/publish")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET: %d", resp.StatusCode)
	}

	// A tell to the user, then a disconnect of the session: final, so the
	// client stops.
	told := make(chan json.RawMessage, 1)
	c.HandleTell("note", func(ctx context.Context, data json.RawMessage) error { told <- data; return nil })
	if st, out := call(t, s, apiKey, "tell", map[string]any{"user": "alice", "name": "note", "data": "hello"}); st != 200 {
		t.Fatalf("tell: %d %v", st, out)
	}
	if d := <-told; string(d) != `"hello"` {
		t.Fatalf("told %s", d)
	}
	if st, out := call(t, s, apiKey, "disconnect", map[string]any{"user": "alice", "session": "tab1", "reason": "bye", "final": true}); st != 200 {
		t.Fatalf("disconnect: %d %v", st, out)
	}
	waitFor(t, "the client to stop", func() bool { return c.Status() == client.StatusClosed })
}

// Refused credentials: none, a bad signature, expired, another method; a
// token in the query string or a cookie works like the header.
func TestTokenRefusals(t *testing.T) {
	s := start(t, nil, "-jwt-secret", secret, "-public", "*")
	dial := func(u string, h http.Header) int {
		ws, resp, err := websocket.Dial(ctxT(t), u, &websocket.DialOptions{HTTPHeader: h, Subprotocols: []string{sss.Subprotocol}})
		if err == nil {
			ws.CloseNow()
			return 101
		}
		if resp == nil {
			t.Fatalf("dial: %v", err)
		}
		return resp.StatusCode
	}
	bearer := func(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }
	other, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "x", "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte("another-secret"))
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"sub": "x", "exp": time.Now().Add(time.Hour).Unix()}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	noExp, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "x"}).SignedString([]byte(secret))
	for name, h := range map[string]http.Header{
		"no credentials": nil,
		"bad signature":  bearer(other),
		"alg none":       bearer(none),
		"no exp":         bearer(noExp),
		"expired":        bearer(token(t, "x", -time.Minute, nil)),
		"no sub":         bearer(token(t, "", time.Hour, nil)),
		"bad pattern":    bearer(token(t, "x", time.Hour, map[string]any{"channels": []string{"$u.bob"}})),
	} {
		if st := dial(s.ws, h); st != http.StatusUnauthorized {
			t.Errorf("%s: %d, want 401", name, st)
		}
	}
	good := token(t, "x", time.Hour, nil)
	if st := dial(s.ws, bearer(good)); st != 101 {
		t.Errorf("header: %d", st)
	}
	if st := dial(s.ws+"?token="+url.QueryEscape(good), nil); st != 101 {
		t.Errorf("query: %d", st)
	}
	if st := dial(s.ws, http.Header{"Cookie": {TokenCookie + "=" + good}}); st != 101 {
		t.Errorf("cookie: %d", st)
	}
}

// A token that expires closes the connection with 4007; the client takes a
// fresh one and is back at once, its subscription resumed.
func TestTokenExpiry(t *testing.T) {
	s := start(t, nil, "-jwt-secret", secret, "-api-key", apiKey, "-public", "news")
	var issued atomic.Int32
	back := make(chan struct{}, 4)
	c := dialToken(t, s, func(context.Context) (string, error) {
		exp := 2 * time.Second // jwt's exp has a 1s resolution
		if issued.Add(1) > 1 {
			exp = time.Hour
		}
		return token(t, "bob", exp, nil), nil
	}, client.WithHooks(client.Hooks{OnReconnect: func(client.ConnInfo) { back <- struct{}{} }}))
	got := make(chan client.Message, 4)
	if _, err := c.Subscribe(ctxT(t), "news", client.WithMessageHandler(func(m client.Message) { got <- m })); err != nil {
		t.Fatal(err)
	}
	select {
	case <-back:
	case <-time.After(10 * time.Second):
		t.Fatal("no reconnect after the token expired")
	}
	call(t, s, apiKey, "publish", map[string]any{"channel": "news", "event": "e", "data": 1})
	if m := <-got; string(m.Data) != "1" {
		t.Fatalf("%+v", m)
	}
}

// -connect-url: the app's endpoint gets the upgrade's cookies and names
// the user, or refuses.
func TestConnectEndpoint(t *testing.T) {
	var seen atomic.Value
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ck, err := r.Cookie("app_session")
		if err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		seen.Store(ck.Value)
		switch ck.Value {
		case "banned":
			w.WriteHeader(http.StatusForbidden)
		case "broken":
			w.WriteHeader(http.StatusInternalServerError)
		default:
			json.NewEncoder(w).Encode(map[string]any{"user": "carol", "session": "s1", "channels": []string{"team.*"}})
		}
	}))
	defer app.Close()
	s := start(t, nil, "-connect-url", app.URL)
	status := func(cookie string) int {
		h := http.Header{}
		if cookie != "" {
			h.Set("Cookie", "app_session="+cookie)
		}
		ws, resp, err := websocket.Dial(ctxT(t), s.ws, &websocket.DialOptions{HTTPHeader: h, Subprotocols: []string{sss.Subprotocol}})
		if err == nil {
			ws.CloseNow()
			return 101
		}
		return resp.StatusCode
	}
	for cookie, want := range map[string]int{"": 401, "banned": 403, "broken": 503, "good": 101} {
		if got := status(cookie); got != want {
			t.Errorf("cookie %q: %d, want %d", cookie, got, want)
		}
	}
	c, err := client.Dial(ctxT(t), s.ws, client.WithCookies(&http.Cookie{Name: "app_session", Value: "good"}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ci := c.Conn(); ci.User != "carol" || ci.Session != "s1" {
		t.Fatalf("conn %+v", ci)
	}
	if _, err := c.Subscribe(ctxT(t), "team.ops"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Subscribe(ctxT(t), "other"); !errors.Is(err, client.ErrForbidden) {
		t.Fatalf("outside the grant: %v", err)
	}
}

// Probes, metrics, and a drain on shutdown: clients are told to go
// elsewhere (4000).
func TestProbesAndDrain(t *testing.T) {
	s := start(t, nil, "-anonymous", "-public", "*")
	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ready", "/metrics": "sss_connections"} {
		resp, err := http.Get(s.base + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("%s: %d %.200s", path, resp.StatusCode, b)
		}
	}
	ws, _, err := websocket.Dial(ctxT(t), s.ws, &websocket.DialOptions{Subprotocols: []string{sss.Subprotocol}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	ws.Read(ctxT(t)) // the welcome
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	for {
		if _, _, err = ws.Read(ctxT(t)); err != nil {
			break
		}
	}
	if st := websocket.CloseStatus(err); st != 4000 {
		t.Fatalf("close status %d (%v), want 4000", st, err)
	}
}

// Configuration: the environment, flags over it, and refusals.
func TestConfig(t *testing.T) {
	env := map[string]string{"SSS_ADDR": ":9999", "SSS_API_KEY": "fromenv", "SSS_ANONYMOUS": "true", "SSS_PRESENCE": "room.*, lobby"}
	cfg, err := parseConfig([]string{"-addr", ":7777"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.addr != ":7777" || cfg.apiKey != "fromenv" || !cfg.anonymous || len(cfg.presence) != 2 || cfg.presence[1] != "lobby" {
		t.Fatalf("config %+v", cfg)
	}
	cfg, err = parseConfig([]string{"-anonymous"}, func(k string) string { return map[string]string{"SSS_NATS_URL": "nats://a:4222,nats://b:4222"}[k] })
	if err != nil || cfg.natsURL != "nats://a:4222,nats://b:4222" || cfg.natsPrefix != "sss" {
		t.Fatalf("SSS_NATS_URL: config %+v, %v", cfg, err)
	}
	for _, args := range [][]string{
		{}, // no authentication
		{"-anonymous", "-mongo-url", "mongodb://x"}, // mongo without redis
		{"-jwt-secret", "a", "-jwt-public-key", "b"},
		{"-anonymous", "-public", "bad..name"},
		{"-anonymous", "-path", "ws"},
		{"-anonymous", "-log-level", "loud"},
		{"-anonymous", "stray"},
		{"-anonymous", "-nats-url", "nats://x:4222", "-redis-url", "redis://y:6379"}, // two scalers
		{"-anonymous", "-nats-url", "nats://x:4222", "-nats-history-messages", "0"},
	} {
		if _, err := parseConfig(args, func(string) string { return "" }); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	if _, err := parseConfig(nil, func(k string) string {
		if k == "SSS_MAX_MESSAGE" {
			return "lots"
		}
		return ""
	}); err == nil {
		t.Error("a bad environment value accepted")
	}
}

func TestPatterns(t *testing.T) {
	for _, tc := range []struct {
		p, ch string
		want  bool
	}{
		{"*", "a", true}, {"*", "$u.x", false}, {"a", "a", true}, {"a", "a.b", false},
		{"a.*", "a", false}, {"a.*", "a.b", true}, {"a.*", "a.b.c", true}, {"a.*", "ab.c", false},
	} {
		if got := match(tc.p, tc.ch); got != tc.want {
			t.Errorf("match(%q, %q) = %v", tc.p, tc.ch, got)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
