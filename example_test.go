package sss_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/coder/websocket"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/scaler/memory"
)

// rawDial connects with the documented protocol and returns a function
// reading the next non-ping frame as a string. The Go client in
// github.com/superscaled/sss/client does all this for you.
func rawDial(url string, header http.Header) (*websocket.Conn, func() string) {
	c, _, err := websocket.Dial(context.Background(), url, &websocket.DialOptions{
		Subprotocols: []string{sss.Subprotocol}, HTTPHeader: header,
	})
	if err != nil {
		log.Fatal(err)
	}
	var pending []string
	next := func() string {
		for {
			for len(pending) > 0 {
				f := pending[0]
				pending = pending[1:]
				if f != `{"type":"ping"}` {
					return f
				}
			}
			_, msg, err := c.Read(context.Background())
			if err != nil {
				return "closed: " + err.Error()
			}
			pending = strings.Split(string(msg), "\n")
		}
	}
	return c, next
}

func wsURL(ts *httptest.Server) string { return "ws" + strings.TrimPrefix(ts.URL, "http") }

func ExampleNew() {
	sc, err := memory.New() // or a Redis+MongoDB scaler
	if err != nil {
		log.Fatal(err)
	}
	srv, err := sss.New(
		sss.WithScaler(sc),
		sss.WithSubscriptionParser(func(ctx context.Context, c *sss.Conn, channel string, query json.RawMessage) error {
			if strings.HasPrefix(channel, "admin") {
				return sss.Errorf(sss.CodeForbidden, "admins only")
			}
			return nil
		}),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	ts := httptest.NewServer(srv)
	defer ts.Close()

	c, next := rawDial(wsURL(ts), nil)
	defer c.CloseNow()
	next() // welcome
	c.Write(context.Background(), websocket.MessageText, []byte(`{"type":"subscribe","id":1,"channel":"admin.logs"}`))
	fmt.Println(next())
	// Output:
	// {"type":"error","id":1,"error":{"code":"forbidden","message":"admins only"}}
}

// A Server is an http.Handler: mount it at any path of any router.
func ExampleServer_ServeHTTP() {
	srv, err := sss.New()
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ws", srv)
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })
	ts := httptest.NewServer(mux)
	defer ts.Close()

	c, next := rawDial(wsURL(ts)+"/ws", nil)
	var welcome struct{ Type string }
	json.Unmarshal([]byte(next()), &welcome)
	fmt.Println(welcome.Type)
	c.CloseNow()

	// Shutdown closes every connection with 4000 (reconnect elsewhere) and
	// waits for handlers in progress.
	srv.Shutdown(context.Background())
	// Output:
	// welcome
}

func ExampleServer_HandleAsk() {
	srv, _ := sss.New()
	defer srv.Close()
	srv.HandleAsk("add", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		var xs []float64
		if err := json.Unmarshal(data, &xs); err != nil {
			return nil, sss.Errorf(sss.CodeBadRequest, "want a list of numbers")
		}
		sum := 0.0
		for _, x := range xs {
			sum += x
		}
		return sum, nil
	})
	ts := httptest.NewServer(srv)
	defer ts.Close()

	c, next := rawDial(wsURL(ts), nil)
	defer c.CloseNow()
	next() // welcome
	c.Write(context.Background(), websocket.MessageText, []byte(`{"type":"ask","id":1,"name":"add","data":[1,2,3.5]}`))
	fmt.Println(next())
	c.Write(context.Background(), websocket.MessageText, []byte(`{"type":"ask","id":2,"name":"add","data":"two"}`))
	fmt.Println(next())
	// Output:
	// {"type":"ack","id":1,"result":6.5}
	// {"type":"error","id":2,"error":{"code":"bad_request","message":"want a list of numbers"}}
}

// Two servers on one scaler are a cluster: a publication on one reaches
// subscribers on the other, through every ancestor channel.
func ExampleServer_Publish() {
	m, _ := memory.New()
	a, _ := sss.New(sss.WithScaler(m))
	b, _ := sss.New(sss.WithScaler(m))
	defer a.Close()
	defer b.Close()
	ts := httptest.NewServer(b)
	defer ts.Close()

	c, next := rawDial(wsURL(ts), nil)
	defer c.CloseNow()
	next() // welcome
	c.Write(context.Background(), websocket.MessageText, []byte(`{"type":"subscribe","id":1,"channel":"news"}`))
	var ack struct {
		Type   string
		Result struct {
			Channel string
			Offset  uint64 // where the channel's history stands
		}
	}
	json.Unmarshal([]byte(next()), &ack)
	fmt.Println(ack.Type, ack.Result.Channel, ack.Result.Offset)

	if err := a.Publish(context.Background(), "news.uk", "article", map[string]string{"title": "Hello"}); err != nil {
		log.Fatal(err)
	}
	var pub struct {
		Type, Channel, Sub, Event string
		Data                      json.RawMessage
		Offset                    uint64 // in the stream of "news"
	}
	json.Unmarshal([]byte(next()), &pub)
	fmt.Println(pub.Type, pub.Channel, pub.Sub, pub.Event, string(pub.Data), pub.Offset)
	// Output:
	// ack news 0
	// pub news.uk news article {"title":"Hello"} 1
}

// A session parser authenticates the upgrade request. Refusals are HTTP
// statuses; the socket is never upgraded. The session id it names is
// public (the welcome frame and the session channel's name carry it), so it
// is never the secret the cookie holds.
func ExampleSessionParser() {
	type login struct{ user, sessionID string }
	logins := map[string]login{"t0k3n": {"alice", "s-81f"}} // your session store: secret → who
	parser := func(r *http.Request) (*sss.Session, error) {
		cookie, err := r.Cookie("session")
		if err != nil {
			return nil, sss.ErrUnauthorized // 401
		}
		l, ok := logins[cookie.Value]
		if !ok {
			return nil, &sss.StatusError{Status: http.StatusForbidden, Message: "unknown session"}
		}
		return &sss.Session{UserID: l.user, SessionID: l.sessionID}, nil
	}
	srv, _ := sss.New(sss.WithSessionParser(parser))
	defer srv.Close()
	ts := httptest.NewServer(srv)
	defer ts.Close()

	_, resp, err := websocket.Dial(context.Background(), wsURL(ts), &websocket.DialOptions{Subprotocols: []string{sss.Subprotocol}})
	fmt.Println(resp.StatusCode, err != nil)

	h := http.Header{}
	h.Set("Cookie", "session=t0k3n")
	c, next := rawDial(wsURL(ts), h)
	defer c.CloseNow()
	var welcome struct{ User, Session string }
	json.Unmarshal([]byte(next()), &welcome)
	fmt.Println(welcome.User, welcome.Session)

	// Tell every connection of alice, on every instance.
	srv.Tell(context.Background(), sss.ToUser("alice"), "notify", "you have mail")
	fmt.Println(next())
	// Output:
	// 401 true
	// alice s-81f
	// {"type":"tell","name":"notify","data":"you have mail"}
}

func ExampleError() {
	err := fmt.Errorf("loading room: %w", sss.Errorf(sss.CodeNotFound, "no room 42"))
	fmt.Println(errors.Is(err, sss.ErrNotFound))
	var e *sss.Error
	if errors.As(err, &e) {
		fmt.Println(e.Code, e.Message)
	}
	// Output:
	// true
	// not_found no room 42
}

// The server asks a client a question and waits for its reply, wherever in
// the cluster the client is connected.
func ExampleServer_Ask() {
	m, _ := memory.New()
	a, _ := sss.New(sss.WithScaler(m))
	b, _ := sss.New(sss.WithScaler(m))
	defer a.Close()
	defer b.Close()
	ts := httptest.NewServer(b)
	defer ts.Close()

	c, next := rawDial(wsURL(ts), nil)
	defer c.CloseNow()
	var welcome struct{ Conn string }
	json.Unmarshal([]byte(next()), &welcome)

	go func() { // the client: answer the ask
		var ask struct{ ID int }
		json.Unmarshal([]byte(next()), &ask)
		c.Write(context.Background(), websocket.MessageText, []byte(fmt.Sprintf(`{"type":"reply","id":%d,"result":"yes"}`, ask.ID)))
	}()
	answer, err := a.Ask(context.Background(), sss.ToConn(welcome.Conn), "confirm", "Delete the draft?")
	fmt.Println(string(answer), err)
	// Output:
	// "yes" <nil>
}

// Disconnect closes every connection of a user, on every instance.
func ExampleServer_Disconnect() {
	srv, _ := sss.New(sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
		return &sss.Session{UserID: r.Header.Get("X-User")}, nil
	}))
	defer srv.Close()
	ts := httptest.NewServer(srv)
	defer ts.Close()

	h := http.Header{}
	h.Set("X-User", "mallory")
	c, next := rawDial(wsURL(ts), h)
	defer c.CloseNow()
	next() // welcome
	srv.Disconnect(context.Background(), sss.ToUser("mallory"), "banned", true)
	_, _, err := c.Read(context.Background())
	fmt.Println(websocket.CloseStatus(err))
	// Output:
	// StatusCode(4501)
}

// A tell reaches every connection of a user (or a session, or one
// connection) on every instance; the client acknowledges nothing.
func ExampleServer_Tell() {
	srv, _ := sss.New(sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
		return &sss.Session{UserID: r.Header.Get("X-User"), SessionID: "laptop"}, nil
	}))
	defer srv.Close()
	ts := httptest.NewServer(srv)
	defer ts.Close()

	h := http.Header{}
	h.Set("X-User", "alice")
	c, next := rawDial(wsURL(ts), h)
	defer c.CloseNow()
	next() // welcome
	srv.Tell(context.Background(), sss.ToUser("alice"), "notify", "you have mail")
	fmt.Println(next())
	srv.Tell(context.Background(), sss.ToSession("alice", "laptop"), "notify", "this device only")
	fmt.Println(next())
	// Output:
	// {"type":"tell","name":"notify","data":"you have mail"}
	// {"type":"tell","name":"notify","data":"this device only"}
}

// A client's tell is acknowledged on receipt; its handler runs after, on a
// goroutine of the connection.
func ExampleServer_HandleTell() {
	srv, _ := sss.New()
	defer srv.Close()
	liked := make(chan string, 1)
	srv.HandleTell("liked", func(ctx context.Context, c *sss.Conn, data json.RawMessage) error {
		liked <- string(data)
		return nil
	})
	ts := httptest.NewServer(srv)
	defer ts.Close()

	c, next := rawDial(wsURL(ts), nil)
	defer c.CloseNow()
	next() // welcome
	c.Write(context.Background(), websocket.MessageText, []byte(`{"type":"tell","id":1,"name":"liked","data":{"post":42}}`))
	fmt.Println(next())
	fmt.Println(<-liked)
	// Output:
	// {"type":"ack","id":1}
	// {"post":42}
}

// PublishUser reaches every connection of a user, on its user channel.
func ExampleServer_PublishUser() {
	srv, _ := sss.New(sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
		return &sss.Session{UserID: "bob"}, nil
	}))
	defer srv.Close()
	ts := httptest.NewServer(srv)
	defer ts.Close()

	c, next := rawDial(wsURL(ts), nil)
	defer c.CloseNow()
	next()                                                                           // welcome
	c.Write(context.Background(), websocket.MessageText, []byte(`{"type":"ready"}`)) // nothing to resume
	srv.PublishUser(context.Background(), "bob", "invoice", map[string]int{"amount": 12})
	var pub struct{ Channel, Event string }
	json.Unmarshal([]byte(next()), &pub)
	fmt.Println(pub.Channel, pub.Event)
	// Output:
	// $u.bob invoice
}

// A subscription parser decides, with the query the client sent, who may
// subscribe. Allowing a channel allows its whole subtree.
func ExampleWithSubscriptionParser() {
	srv, _ := sss.New(sss.WithSubscriptionParser(func(ctx context.Context, c *sss.Conn, channel string, query json.RawMessage) error {
		if strings.HasPrefix(channel, "vip") && string(query) != `"s3cret"` {
			return sss.Errorf(sss.CodeForbidden, "wrong password")
		}
		return nil
	}))
	defer srv.Close()
	ts := httptest.NewServer(srv)
	defer ts.Close()

	c, next := rawDial(wsURL(ts), nil)
	defer c.CloseNow()
	next() // welcome
	c.Write(context.Background(), websocket.MessageText, []byte(`{"type":"subscribe","id":1,"channel":"vip.lounge","query":"guess"}`))
	fmt.Println(next())
	c.Write(context.Background(), websocket.MessageText, []byte(`{"type":"subscribe","id":2,"channel":"vip.lounge","query":"s3cret"}`))
	var ack struct {
		Type string
		ID   int
	}
	json.Unmarshal([]byte(next()), &ack)
	fmt.Println(ack.Type, ack.ID)
	// Output:
	// {"type":"error","id":1,"error":{"code":"forbidden","message":"wrong password"}}
	// ack 2
}

// Clients may publish only through a publish parser; the server stamps the
// sender.
func ExampleWithPublishParser() {
	srv, _ := sss.New(sss.WithPublishParser(func(ctx context.Context, c *sss.Conn, channel, event string, data json.RawMessage) error {
		if !strings.HasPrefix(channel, "chat.") {
			return sss.Errorf(sss.CodeForbidden, "chat rooms only")
		}
		return nil
	}))
	defer srv.Close()
	ts := httptest.NewServer(srv)
	defer ts.Close()

	c, next := rawDial(wsURL(ts), nil)
	defer c.CloseNow()
	next() // welcome
	c.Write(context.Background(), websocket.MessageText, []byte(`{"type":"subscribe","id":1,"channel":"chat.lobby"}`+"\n"+
		`{"type":"publish","id":2,"channel":"chat.lobby","event":"message","data":{"text":"hi"}}`))
	next() // the subscribe's ack
	var pub struct {
		Channel string
		From    struct{ Conn string }
	}
	json.Unmarshal([]byte(next()), &pub) // delivered to the publisher too
	fmt.Println(pub.Channel, pub.From.Conn != "")
	fmt.Println(next())
	// Output:
	// chat.lobby true
	// {"type":"ack","id":2}
}

// Hooks see the life of connections and channels; OnDisconnect's reason
// says why a connection ended.
func ExampleWithHooks() {
	ended := make(chan error, 1)
	srv, _ := sss.New(sss.WithHooks(sss.Hooks{
		OnConnect:    func(c *sss.Conn) { fmt.Println("connected") },
		OnDisconnect: func(c *sss.Conn, reason error) { ended <- reason },
	}))
	defer srv.Close()
	ts := httptest.NewServer(srv)
	defer ts.Close()

	c, next := rawDial(wsURL(ts), nil)
	next() // welcome
	c.Close(websocket.StatusNormalClosure, "bye")
	fmt.Println(errors.Is(<-ended, sss.ErrClientClosed))
	// Output:
	// connected
	// true
}

func ExampleValidChannel() {
	for _, name := range []string{"news.uk", "news..uk", "chat:room-1", "café"} {
		fmt.Println(name, sss.ValidChannel(name) == nil)
	}
	// Output:
	// news.uk true
	// news..uk false
	// chat:room-1 true
	// café false
}

// The server puts a user into a room on every instance; the user's later
// connections get it too. No subscription parser runs, and the client
// cannot leave it.
func ExampleServer_Subscribe() {
	srv, _ := sss.New(sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
		return &sss.Session{UserID: "alice", SessionID: "s1"}, nil
	}))
	defer srv.Close()
	ts := httptest.NewServer(srv)
	defer ts.Close()

	c, next := rawDial(wsURL(ts), nil)
	defer c.CloseNow()
	next() // welcome
	c.Write(context.Background(), websocket.MessageText, []byte(`{"type":"ready"}`))
	srv.Subscribe(context.Background(), sss.ToUser("alice"), "team.ops")
	var f struct {
		Type, Channel string
		Server        bool
	}
	json.Unmarshal([]byte(next()), &f)
	fmt.Println(f.Type, f.Channel, f.Server)
	// Output:
	// subscribed team.ops true
}

// A page shows the last messages of a room, then goes on live from where
// they end: no gap, no duplicate.
func ExampleServer_History() {
	srv, _ := sss.New()
	defer srv.Close()
	ctx := context.Background()
	for _, text := range []string{"hi", "hello", "how are you?"} {
		srv.Publish(ctx, "chat.lobby", "message", text)
	}
	last, pos, err := srv.History(ctx, "chat.lobby", sss.Last(2))
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range last {
		fmt.Println(e.Position.Offset, string(e.Data))
	}
	fmt.Println("subscribe since offset", pos.Offset)
	// Output:
	// 2 "hello"
	// 3 "how are you?"
	// subscribe since offset 3
}

// A broadcast reaches every connection of the cluster.
func ExampleServer_Broadcast() {
	srv, _ := sss.New()
	defer srv.Close()
	ts := httptest.NewServer(srv)
	defer ts.Close()

	c, next := rawDial(wsURL(ts), nil)
	defer c.CloseNow()
	next() // welcome
	srv.Broadcast(context.Background(), "maintenance", "at 22:00")
	var pub struct{ Channel, Event string }
	json.Unmarshal([]byte(next()), &pub)
	fmt.Println(pub.Channel, pub.Event)
	// Output:
	// $all maintenance
}

// Presence: rooms list who is in them, on every instance, and announce
// comings and goings; the session parser gives each connection a public
// name.
func ExampleWithPresence() {
	srv, _ := sss.New(
		sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
			user := r.Header.Get("X-User")
			return &sss.Session{UserID: user, Info: map[string]string{"name": strings.ToTitle(user)}}, nil
		}),
		sss.WithPresence(func(channel string) sss.ChannelPresence {
			return sss.ChannelPresence{JoinLeave: strings.HasPrefix(channel, "room.")}
		}),
	)
	defer srv.Close()
	ts := httptest.NewServer(srv)
	defer ts.Close()

	c, next := rawDial(wsURL(ts), http.Header{"X-User": {"alice"}})
	defer c.CloseNow()
	next() // welcome
	c.Write(context.Background(), websocket.MessageText, []byte(`{"type":"subscribe","id":1,"channel":"room.lobby"}`))
	next() // the ack
	var join struct {
		Type   string
		Client struct{ User, Info json.RawMessage }
	}
	json.Unmarshal([]byte(next()), &join)
	fmt.Println(join.Type, string(join.Client.User), string(join.Client.Info))

	who, _ := srv.Presence(context.Background(), "room.lobby")
	n, _ := srv.PresenceCounts(context.Background(), "room.lobby")
	fmt.Println(len(who), who[0].User, n.Clients, n.Users)
	// Output:
	// join "alice" {"name":"ALICE"}
	// 1 alice 1 1
}
