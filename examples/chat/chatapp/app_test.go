package chatapp_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/superscaled/sss/client"
	"github.com/superscaled/sss/examples/chat/chatapp"
	"github.com/superscaled/sss/scaler/memory"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The chat's server side, through its HTTP API and the Go client. The
// page itself is tested in a browser by the browsertest module.

type env struct {
	t  *testing.T
	hs *httptest.Server
}

func newEnv(t *testing.T, peers ...string) *env {
	t.Helper()
	m, err := memory.New()
	if err != nil {
		t.Fatal(err)
	}
	app, err := chatapp.New(context.Background(), chatapp.Config{
		Scaler: m,
		Secret: []byte("app-test-secret-0123456789"),
		Peers:  peers,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(app.Handler())
	t.Cleanup(func() {
		app.Close()
		hs.Close()
		m.Close()
	})
	return &env{t: t, hs: hs}
}

// login picks name and returns the session cookie.
func (e *env) login(name string) *http.Cookie {
	e.t.Helper()
	resp, err := http.Post(e.hs.URL+"/api/login", "application/json", strings.NewReader(fmt.Sprintf(`{"name":%q}`, name)))
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		e.t.Fatalf("login %q: %d %s", name, resp.StatusCode, b)
	}
	for _, c := range resp.Cookies() {
		if c.Name == "sss_chat" {
			if !c.HttpOnly {
				e.t.Error("the session cookie is readable by scripts")
			}
			return c
		}
	}
	e.t.Fatal("no session cookie")
	return nil
}

func (e *env) dial(ck *http.Cookie) (*client.Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return client.Dial(ctx, "ws"+strings.TrimPrefix(e.hs.URL, "http")+"/ws", client.WithCookies(ck))
}

func (e *env) connect(name string) *client.Client {
	e.t.Helper()
	c, err := e.dial(e.login(name))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

func (e *env) get(path string, ck *http.Cookie) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.hs.URL+path, nil)
	if ck != nil {
		req.AddCookie(ck)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return c
}

// The cookie names the user and a session whose id is public and not the
// cookie's secret part; a tampered cookie is refused, at the API and at the
// WebSocket handshake.
func TestSession(t *testing.T) {
	e := newEnv(t)
	if code, _ := e.get("/api/me", nil); code != http.StatusUnauthorized {
		t.Errorf("/api/me without a cookie: %d", code)
	}
	ck := e.login("ada")
	if code, body := e.get("/api/me", ck); code != http.StatusOK || !strings.Contains(body, `"ada"`) {
		t.Errorf("/api/me: %d %s", code, body)
	}
	c, err := e.dial(ck)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	info := c.Conn()
	parts := strings.Split(ck.Value, ".")
	if info.User != "ada" || info.Session == "" || info.Session == ck.Value || strings.Contains(info.Session, parts[2]) || strings.Contains(parts[2], info.Session) {
		t.Errorf("user %q, session %q from cookie %q: the session id must not be the secret", info.User, info.Session, ck.Value)
	}
	for _, forged := range []string{
		parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2])), // another MAC
		"Ym9i." + parts[1] + "." + parts[2],                                  // another name, same MAC
		"garbage",
	} {
		bad := &http.Cookie{Name: ck.Name, Value: forged}
		if code, _ := e.get("/api/me", bad); code != http.StatusUnauthorized {
			t.Errorf("/api/me with %q: %d", forged, code)
		}
		_, err := e.dial(bad)
		var he *client.HandshakeError
		if !errors.As(err, &he) || he.StatusCode != http.StatusUnauthorized {
			t.Errorf("dial with %q: %v, want a 401 handshake refusal", forged, err)
		}
	}
	for _, name := range []string{"", "a b", "<script>", strings.Repeat("x", 25), "dot.name"} {
		resp, err := http.Post(e.hs.URL+"/api/login", "application/json", strings.NewReader(fmt.Sprintf(`{"name":%q}`, name)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("login %q: %d, want 400", name, resp.StatusCode)
		}
	}
}

// Rooms are channels; the locked one needs its password as the query.
func TestRooms(t *testing.T) {
	e := newEnv(t)
	c := e.connect("ada")
	if _, err := c.Subscribe(ctx(t), "room.lobby"); err != nil {
		t.Errorf("lobby: %v", err)
	}
	for _, tc := range []struct {
		channel string
		query   any
	}{
		{"room.secret", nil},
		{"room.secret", map[string]string{"password": "guess"}},
		{"typing.secret", map[string]string{"password": "guess"}},
		{"room", nil}, // the parent would allow every room
		{"room.nope", nil},
		{"news", nil},
	} {
		var opts []client.SubscribeOption
		if tc.query != nil {
			opts = append(opts, client.WithQuery(tc.query))
		}
		if _, err := c.Subscribe(ctx(t), tc.channel, opts...); !errors.Is(err, client.ErrForbidden) {
			t.Errorf("subscribe %s with %v: %v, want forbidden", tc.channel, tc.query, err)
		}
	}
	for _, ch := range []string{"room.secret", "typing.secret"} {
		if _, err := c.Subscribe(ctx(t), ch, client.WithQuery(map[string]string{"password": "sesame"})); err != nil {
			t.Errorf("%s with the password: %v", ch, err)
		}
	}
}

// Messages go through the ask "send": only to a joined room, under the
// sender's name; a newcomer reads the room's last messages from history,
// then subscribes from where they end.
func TestSendAndHistory(t *testing.T) {
	e := newEnv(t)
	ada := e.connect("ada")
	if err := ada.Ask(ctx(t), "send", map[string]string{"room": "lobby", "text": "hi"}, nil); !errors.Is(err, client.ErrForbidden) {
		t.Errorf("send before joining: %v, want forbidden", err)
	}
	got := make(chan chatapp.Message, 100)
	if _, err := ada.Subscribe(ctx(t), "room.lobby", client.WithEventHandler("message", func(m client.Message) {
		var msg chatapp.Message
		if err := m.Decode(&msg); err != nil {
			t.Error(err)
		}
		got <- msg
	})); err != nil {
		t.Fatal(err)
	}
	before := time.Now().UnixMilli()
	if err := ada.Ask(ctx(t), "send", map[string]string{"room": "lobby", "text": "  hello  ", "name": "mallory"}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m.Name != "ada" || m.Text != "hello" || m.At < before {
			t.Errorf("message %+v, want ada's, trimmed, stamped now", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no message")
	}
	for text, want := range map[string]error{"   ": client.ErrBadRequest, strings.Repeat("é", 1001): client.ErrTooLarge} {
		if err := ada.Ask(ctx(t), "send", map[string]string{"room": "lobby", "text": text}, nil); !errors.Is(err, want) {
			t.Errorf("send %d runes: %v, want %v", len(text), err, want)
		}
	}
	for i := 2; i <= 60; i++ {
		if err := ada.Ask(ctx(t), "send", map[string]string{"room": "lobby", "text": fmt.Sprint(i)}, nil); err != nil {
			t.Fatal(err)
		}
	}

	bo := e.connect("bo")
	last, pos, err := bo.History(ctx(t), "room.lobby")
	if err != nil {
		t.Fatal(err)
	}
	var first, end chatapp.Message
	if len(last) != 50 || last[0].Decode(&first) != nil || last[49].Decode(&end) != nil {
		t.Fatalf("history: %d messages, want the last 50", len(last))
	}
	if first.Text != "11" || end.Text != "60" || end.Name != "ada" || last[49].Offset != pos.Offset {
		t.Errorf("history from %+v to %+v, want 11 to 60 ending at offset %d", first, end, pos.Offset)
	}
	live := make(chan client.Message, 1)
	sub, err := bo.Subscribe(ctx(t), "room.lobby", client.WithSince(pos), client.WithMessageHandler(func(m client.Message) { live <- m }))
	if err != nil || !sub.Recovered() {
		t.Fatalf("subscribe from the history's end: %v (recovered %t)", err, err == nil && sub.Recovered())
	}
	if err := ada.Ask(ctx(t), "send", map[string]string{"room": "lobby", "text": "61"}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-live:
		if m.Offset != pos.Offset+1 {
			t.Errorf("the next message at offset %d, want %d", m.Offset, pos.Offset+1)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no live message")
	}
	// The secret room's history needs its password, as its subscription.
	if _, _, err := bo.History(ctx(t), "room.secret"); !errors.Is(err, client.ErrForbidden) {
		t.Errorf("history of the locked room: %v, want forbidden", err)
	}
	if _, _, err := bo.History(ctx(t), "room.secret", client.HistoryQuery(map[string]string{"password": "sesame"})); err != nil {
		t.Errorf("history of the locked room with its password: %v", err)
	}
}

// Clients publish "typing", with no data, to rooms they joined, and
// nothing else.
func TestTyping(t *testing.T) {
	e := newEnv(t)
	c := e.connect("ada")
	if err := c.Publish(ctx(t), "typing.lobby", "typing", nil); !errors.Is(err, client.ErrForbidden) {
		t.Errorf("typing before joining: %v, want forbidden", err)
	}
	seen := make(chan client.Message, 10)
	if _, err := c.Subscribe(ctx(t), "typing.lobby", client.WithMessageHandler(func(m client.Message) { seen <- m })); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx(t), "typing.lobby", "typing", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-seen:
		if m.Event != "typing" || m.From.User != "ada" {
			t.Errorf("typing %+v", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no typing event")
	}
	for _, tc := range []struct {
		channel, event string
		data           any
		want           error
	}{
		{"typing.lobby", "message", nil, client.ErrBadRequest},
		{"typing.lobby", "typing", map[string]string{"name": "mallory"}, client.ErrBadRequest},
		{"room.lobby", "message", map[string]string{"text": "forged"}, client.ErrForbidden},
	} {
		if err := c.Publish(ctx(t), tc.channel, tc.event, tc.data); !errors.Is(err, tc.want) {
			t.Errorf("publish %s %s %v: %v, want %v", tc.channel, tc.event, tc.data, err, tc.want)
		}
	}
}

// Who is in a room is the server's presence: a member reads the list, and
// sees others join and leave.
func TestPresence(t *testing.T) {
	e := newEnv(t)
	ada, bo := e.connect("ada"), e.connect("bo")
	joins, leaves := make(chan string, 4), make(chan string, 4)
	if _, err := ada.Subscribe(ctx(t), "room.lobby",
		client.WithJoinHandler(func(ci client.ClientInfo) { joins <- ci.User }),
		client.WithLeaveHandler(func(ci client.ClientInfo) { leaves <- ci.User })); err != nil {
		t.Fatal(err)
	}
	if _, _, err := bo.Presence(ctx(t), "room.lobby"); !errors.Is(err, client.ErrForbidden) {
		t.Errorf("presence of a room not joined: %v, want forbidden", err)
	}
	sub, err := bo.Subscribe(ctx(t), "room.lobby")
	if err != nil {
		t.Fatal(err)
	}
	list, counts, err := bo.Presence(ctx(t), "room.lobby")
	if err != nil || len(list) != 2 || counts.Users != 2 {
		t.Fatalf("presence %v %+v: %v, want ada and bo", list, counts, err)
	}
	for _, want := range []string{"ada", "bo"} {
		if got := recv(t, joins); got != want {
			t.Errorf("join of %q, want %q", got, want)
		}
	}
	if err := sub.Unsubscribe(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, leaves); got != "bo" {
		t.Errorf("leave of %q, want bo", got)
	}
}

func recv(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatal("nothing received")
		return ""
	}
}

// The page learns the rooms and the other instances' WebSocket URLs, and
// gets the page, its script and the client script.
func TestHTTP(t *testing.T) {
	e := newEnv(t, "http://localhost:8081/")
	code, body := e.get("/api/config", nil)
	var cfg struct {
		Rooms []struct {
			Name   string `json:"name"`
			Locked bool   `json:"locked"`
		} `json:"rooms"`
		Peers []string `json:"peers"`
	}
	if err := json.Unmarshal([]byte(body), &cfg); code != http.StatusOK || err != nil {
		t.Fatalf("/api/config: %d %s", code, body)
	}
	if len(cfg.Rooms) != 3 || cfg.Rooms[2].Name != "secret" || !cfg.Rooms[2].Locked || cfg.Rooms[0].Locked {
		t.Errorf("rooms %+v", cfg.Rooms)
	}
	if strings.Contains(body, "sesame") {
		t.Error("/api/config gives the password away")
	}
	if len(cfg.Peers) != 1 || cfg.Peers[0] != "http://localhost:8081/ws" {
		t.Errorf("peers %q", cfg.Peers)
	}
	for path, want := range map[string]string{"/": "<title>sss chat</title>", "/app.js": `from "/sss.js"`, "/sss.js": "export class Client", "/style.css": ".composer"} {
		if code, body := e.get(path, nil); code != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("GET %s: %d, want %q in the body", path, code, want)
		}
	}
}
