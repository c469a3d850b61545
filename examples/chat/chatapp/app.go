// Package chatapp is the chat of examples/chat: an http.Handler that serves
// the page (embedded static files), the browser client (/sss.js), a small
// JSON API to pick a name, and an sss.Server at /ws.
//
// What it shows of sss:
//
//   - the session parser reads a signed cookie: the user id is the name the
//     person picked, the session id a random id given at login (public: it
//     travels in the welcome frame), never the cookie's secret part;
//   - rooms are channels, "room.<name>"; a locked room's subscription
//     parser checks the password the page sends as the subscription's
//     query;
//   - messages are sent with an ask ("send") that the server validates
//     and publishes with the sender's name, so that nobody can post under
//     another name; typing is a client publication ("typing.<name>"),
//     allowed by the publish parser to members only, and lossy
//     (WithLossyChannels);
//   - who is in a room is the server's presence (WithPresence): the page
//     reads the list when it joins and follows the join and leave events;
//   - a room's recent messages are a history read of its channel, and the
//     page subscribes from the position the read ends at: no gap, no
//     duplicate. History is the cluster's record: after a server restart
//     on a scaler that kept it, the page catches up exactly; on a
//     restarted in-memory scaler the page is told messages may have been
//     missed, and reloads what there is.
package chatapp

import (
	"context"
	"crypto/rand"
	"embed"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/scaler"
)

//go:embed static
var static embed.FS

// Room is a chat room: the channel "room.<Name>". A room with a Password is
// locked: joining it needs the password.
type Room struct {
	Name     string `json:"name"`
	Title    string `json:"title"`
	Password string `json:"-"`
}

// DefaultRooms are the rooms of the example; "secret" is locked with
// password.
func DefaultRooms(password string) []Room {
	return []Room{
		{Name: "lobby", Title: "Lobby"},
		{Name: "random", Title: "Random"},
		{Name: "secret", Title: "Secret", Password: password},
	}
}

// Config configures an App.
type Config struct {
	// Scaler joins this instance to the others. Required.
	Scaler scaler.Scaler
	// Secret signs the session cookies: at least 16 bytes, the same on
	// every instance (a person logged in on one is logged in on all).
	Secret []byte
	// Rooms are the rooms; default DefaultRooms("sesame").
	Rooms []Room
	// Peers are the base URLs of the other instances (http://host:port).
	// Pages fail over to them when this instance goes away, and pages they
	// served may connect here.
	Peers []string
	// Logger; default slog.Default().
	Logger *slog.Logger
	// ServerOptions are added to the sss.Server's (tests shorten timers).
	ServerOptions []sss.Option
}

// App is one instance of the chat.
type App struct {
	cfg   Config
	rooms map[string]Room
	srv   *sss.Server
	mux   *http.ServeMux
	log   *slog.Logger
}

// maxText bounds a message, in runes.
const maxText = 1000

// New returns an App on cfg.Scaler. ctx bounds nothing yet: the server
// joins the cluster with its first connection.
func New(ctx context.Context, cfg Config) (*App, error) {
	if cfg.Scaler == nil {
		return nil, errors.New("chatapp: no scaler")
	}
	if len(cfg.Secret) < 16 {
		return nil, errors.New("chatapp: the secret must be at least 16 bytes")
	}
	if cfg.Rooms == nil {
		cfg.Rooms = DefaultRooms("sesame")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	a := &App{cfg: cfg, rooms: make(map[string]Room), log: cfg.Logger}
	for _, r := range cfg.Rooms {
		if err := sss.ValidChannel("room." + r.Name); err != nil || strings.Contains(r.Name, ".") {
			return nil, fmt.Errorf("chatapp: invalid room name %q", r.Name)
		}
		a.rooms[r.Name] = r
	}
	var origins []string
	for _, p := range cfg.Peers {
		u, err := url.Parse(p)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("chatapp: peer %q: want a URL such as http://localhost:8081", p)
		}
		origins = append(origins, u.Host)
	}
	opts := []sss.Option{
		sss.WithScaler(cfg.Scaler),
		sss.WithLogger(cfg.Logger),
		sss.WithSessionParser(a.parseSession),
		sss.WithSubscriptionParser(a.authorize),
		sss.WithPublishParser(a.allowPublish),
		sss.WithLossyChannels(func(ch string) bool { return strings.HasPrefix(ch, "typing.") }),
		// Who is in each room, on every instance, with join and leave
		// events for the pages.
		sss.WithPresence(func(ch string) sss.ChannelPresence {
			return sss.ChannelPresence{JoinLeave: strings.HasPrefix(ch, "room.")}
		}),
		sss.WithAskTimeout(5 * time.Second),
	}
	if len(origins) > 0 {
		opts = append(opts, sss.WithOriginPatterns(origins...))
	}
	srv, err := sss.New(append(opts, cfg.ServerOptions...)...)
	if err != nil {
		return nil, err
	}
	a.srv = srv
	srv.HandleAsk("send", a.send)

	files, _ := fs.Sub(static, "static")
	a.mux = http.NewServeMux()
	a.mux.Handle("GET /", http.FileServerFS(files))
	a.mux.Handle("GET /sss.js", sss.ClientScript())
	a.mux.Handle("GET /ws", srv)
	a.mux.HandleFunc("GET /api/config", a.config)
	a.mux.HandleFunc("GET /api/me", a.me)
	a.mux.HandleFunc("POST /api/login", a.login)
	a.mux.HandleFunc("POST /api/logout", a.logout)
	return a, nil
}

// Handler serves the chat.
func (a *App) Handler() http.Handler { return a.mux }

// Server is the App's sss.Server.
func (a *App) Server() *sss.Server { return a.srv }

// Shutdown closes the connections with 4000 (pages reconnect at once,
// elsewhere if they can), waits for handlers within ctx, and leaves the
// cluster.
func (a *App) Shutdown(ctx context.Context) error { return a.srv.Shutdown(ctx) }

// Close drops the connections at once and leaves the cluster.
func (a *App) Close() error { return a.srv.Close() }

// randomID is a random session id, in lower-case base32.
func randomID() string {
	b := make([]byte, 10)
	rand.Read(b)
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(v)
}

// roomOf returns the room of a channel "room.<name>" or "typing.<name>".
func (a *App) roomOf(channel string) (Room, string, bool) {
	kind, name, ok := strings.Cut(channel, ".")
	if !ok || (kind != "room" && kind != "typing") {
		return Room{}, "", false
	}
	r, ok := a.rooms[name]
	return r, kind, ok
}

// authorize is the subscription parser, which also authorises history
// reads: a room's messages and typing, and for a locked room only with its
// password as the query {"password": "..."}. Parents ("room") are refused,
// since allowing a channel allows its subtree.
func (a *App) authorize(ctx context.Context, c *sss.Conn, channel string, query json.RawMessage) error {
	r, _, ok := a.roomOf(channel)
	if !ok {
		return sss.Errorf(sss.CodeForbidden, "no such room")
	}
	if r.Password == "" {
		return nil
	}
	var q struct {
		Password string `json:"password"`
	}
	if len(query) > 0 {
		json.Unmarshal(query, &q)
	}
	if !equalSecret(q.Password, r.Password) {
		return sss.Errorf(sss.CodeForbidden, "wrong password")
	}
	return nil
}

// allowPublish is the publish parser: "typing" in a room the connection
// has joined, with no data.
func (a *App) allowPublish(ctx context.Context, c *sss.Conn, channel, event string, data json.RawMessage) error {
	if _, kind, ok := a.roomOf(channel); !ok || kind != "typing" {
		return sss.Errorf(sss.CodeForbidden, "clients publish typing only; send messages with the ask \"send\"")
	}
	if event != "typing" {
		return sss.Errorf(sss.CodeBadRequest, "unknown event %q", event)
	}
	if d := strings.TrimSpace(string(data)); d != "" && d != "null" && d != "{}" {
		return sss.Errorf(sss.CodeBadRequest, "typing carries no data")
	}
	if !joined(c, channel) {
		return sss.Errorf(sss.CodeForbidden, "join the room first")
	}
	return nil
}

// joined reports whether c holds the subscription to channel: it passed the
// subscription parser (and the room's password).
func joined(c *sss.Conn, channel string) bool {
	for _, s := range c.Subscriptions() {
		if s == channel {
			return true
		}
	}
	return false
}

// Message is what a room's channel carries (event "message").
type Message struct {
	Name string `json:"name"`
	Text string `json:"text"`
	At   int64  `json:"at"` // Unix ms, stamped by the server
}

// send is the ask "send" {room, text}: it checks the text and that the
// sender joined the room, and publishes the message under the sender's
// name, which the client cannot choose.
func (a *App) send(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
	var req struct {
		Room string `json:"room"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(data, &req); err != nil {
		return nil, sss.Errorf(sss.CodeBadRequest, "want {room, text}")
	}
	text := strings.TrimSpace(req.Text)
	switch n := utf8.RuneCountInString(text); {
	case n == 0:
		return nil, sss.Errorf(sss.CodeBadRequest, "empty message")
	case n > maxText:
		return nil, sss.Errorf(sss.CodeTooLarge, "messages are at most %d characters", maxText)
	}
	channel := "room." + req.Room
	if !joined(c, channel) {
		return nil, sss.Errorf(sss.CodeForbidden, "join the room first")
	}
	m := Message{Name: c.UserID(), Text: text, At: time.Now().UnixMilli()}
	if err := a.srv.Publish(ctx, channel, "message", m); err != nil {
		return nil, err // unavailable: the page says so and keeps the text
	}
	return map[string]bool{"ok": true}, nil
}

// config tells the page the rooms and the other instances' WebSocket URLs.
func (a *App) config(w http.ResponseWriter, r *http.Request) {
	type room struct {
		Name   string `json:"name"`
		Title  string `json:"title"`
		Locked bool   `json:"locked"`
	}
	var out struct {
		Rooms []room   `json:"rooms"`
		Peers []string `json:"peers"`
	}
	for _, rm := range a.cfg.Rooms {
		out.Rooms = append(out.Rooms, room{Name: rm.Name, Title: rm.Title, Locked: rm.Password != ""})
	}
	out.Peers = []string{}
	for _, p := range a.cfg.Peers {
		out.Peers = append(out.Peers, strings.TrimSuffix(p, "/")+"/ws")
	}
	writeJSON(w, out)
}
