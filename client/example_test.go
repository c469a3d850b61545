package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/client"
)

// exampleServer starts an sss server whose session parser trusts the
// X-User header (do not do that in production).
func exampleServer(opts ...sss.Option) (*sss.Server, string, func()) {
	srv, err := sss.New(append([]sss.Option{
		sss.WithLogger(quiet),
		sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
			user := r.Header.Get("X-User")
			if user == "" {
				return nil, sss.ErrUnauthorized
			}
			return &sss.Session{UserID: user}, nil
		}),
	}, opts...)...)
	if err != nil {
		panic(err)
	}
	hs := httptest.NewServer(srv)
	return srv, "ws" + strings.TrimPrefix(hs.URL, "http"), func() {
		srv.Close()
		hs.Close()
	}
}

func ExampleDial() {
	_, url, stop := exampleServer()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	c, err := client.Dial(ctx, url, client.WithHeader(http.Header{"X-User": {"alice"}}))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	fmt.Println(c.Status(), "as", c.Conn().User, "on", c.Conn().UserChannel)

	// A refused session is an error to stop on, not to retry.
	_, err = client.Dial(ctx, url)
	fmt.Println(errors.Is(err, client.ErrUnauthorized))
	// Output:
	// connected as alice on $u.alice
	// true
}

func ExampleClient_Ask() {
	srv, url, stop := exampleServer()
	defer stop()
	srv.HandleAsk("add", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		var xs []int
		if err := json.Unmarshal(data, &xs); err != nil {
			return nil, sss.Errorf(sss.CodeBadRequest, "want a list of numbers")
		}
		sum := 0
		for _, x := range xs {
			sum += x
		}
		return sum, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, url, client.WithHeader(http.Header{"X-User": {"alice"}}))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	var sum int
	if err := c.Ask(ctx, "add", []int{1, 2, 3}, &sum); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("sum:", sum)

	err = c.Ask(ctx, "add", "one", &sum)
	fmt.Println(errors.Is(err, client.ErrBadRequest), err)
	err = c.Ask(ctx, "multiply", []int{2, 3}, &sum)
	fmt.Println(errors.Is(err, client.ErrNotFound))
	// Output:
	// sum: 6
	// true sss: ask "add": bad_request: want a list of numbers
	// true
}

func ExampleClient_Subscribe() {
	srv, url, stop := exampleServer()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, url, client.WithHeader(http.Header{"X-User": {"alice"}}))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	got := make(chan client.Message, 1)
	sub, err := c.Subscribe(ctx, "news", client.WithEventHandler("article", func(m client.Message) { got <- m }))
	if err != nil {
		fmt.Println(err)
		return
	}
	// A subscription to "news" receives "news.uk" too.
	if err := srv.Publish(ctx, "news.uk", "article", map[string]string{"title": "Hello"}); err != nil {
		fmt.Println(err)
		return
	}
	m := <-got
	var article struct{ Title string }
	if err := m.Decode(&article); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%s on %s via %s: %s\n", m.Event, m.Channel, m.Sub, article.Title)
	if err := sub.Unsubscribe(ctx); err != nil {
		fmt.Println(err)
	}
	fmt.Println(sub.Status())
	// Output:
	// article on news.uk via news: Hello
	// unsubscribed
}

func ExampleWithHooks() {
	srv, url, stop := exampleServer()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	// Hooks are in place before the first connection attempt: the first
	// status change is seen too. They run one at a time, in order.
	mail := make(chan struct{})
	c, err := client.Dial(ctx, url,
		client.WithHeader(http.Header{"X-User": {"alice"}}),
		client.WithHooks(client.Hooks{
			OnStatusChange: func(s, old client.Status) { fmt.Println("status:", old, "->", s) },
			OnUserMessage: func(m client.Message) {
				fmt.Printf("%s on %s: %s\n", m.Event, m.Sub, m.Data)
				close(mail)
			},
		}))
	if err != nil {
		fmt.Println(err)
		return
	}
	// A publication to every connection of alice, wherever they are.
	if err := srv.PublishUser(ctx, "alice", "mail", "you have mail"); err != nil {
		fmt.Println(err)
		return
	}
	<-mail
	c.Close() // returns once the hooks it fired have run
	// Output:
	// status: connecting -> connected
	// mail on $u.alice: "you have mail"
	// status: connected -> closed
}

func ExampleClient_Tell() {
	srv, url, stop := exampleServer()
	defer stop()
	liked := make(chan string, 1)
	srv.HandleTell("liked", func(ctx context.Context, c *sss.Conn, data json.RawMessage) error {
		liked <- fmt.Sprintf("%s liked %s", c.UserID(), data)
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, url, client.WithHeader(http.Header{"X-User": {"alice"}}))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	// Tell returns once the server acknowledged; its handler runs after.
	if err := c.Tell(ctx, "liked", map[string]int{"post": 42}); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(<-liked)
	// Output:
	// alice liked {"post":42}
}

func ExampleClient_Publish() {
	// Clients may publish only where the server's publish parser allows.
	_, url, stop := exampleServer(sss.WithPublishParser(func(ctx context.Context, c *sss.Conn, channel, event string, data json.RawMessage) error {
		if strings.HasPrefix(channel, "chat.") {
			return nil
		}
		return sss.Errorf(sss.CodeForbidden, "read-only channel")
	}))
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, url, client.WithHeader(http.Header{"X-User": {"alice"}}))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	got := make(chan client.Message, 1)
	if _, err := c.Subscribe(ctx, "chat.lobby", client.WithMessageHandler(func(m client.Message) { got <- m })); err != nil {
		fmt.Println(err)
		return
	}
	if err := c.Publish(ctx, "chat.lobby", "say", "hi all"); err != nil {
		fmt.Println(err)
		return
	}
	m := <-got
	fmt.Printf("%s from %s: %s\n", m.Event, m.From.User, m.Data)

	err = c.Publish(ctx, "news", "say", "hi")
	fmt.Println(errors.Is(err, client.ErrForbidden), err)
	// Output:
	// say from alice: "hi all"
	// true sss: publish to "news": forbidden: read-only channel
}

func ExampleClient_HandleAsk() {
	srv, url, stop := exampleServer()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// A handler needed from the first connection on is given to Dial with
	// WithAskHandler; HandleAsk sets or changes one later.
	c, err := client.Dial(ctx, url, client.WithHeader(http.Header{"X-User": {"alice"}}))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	c.HandleAsk("confirm", func(ctx context.Context, data json.RawMessage) (any, error) {
		var question string
		if err := json.Unmarshal(data, &question); err != nil {
			return nil, client.Errorf(client.CodeBadRequest, "want a question")
		}
		fmt.Println("server asks:", question)
		return true, nil // a real client would ask its user
	})

	// The server asks the connection, wherever in the cluster it is.
	res, err := srv.Ask(ctx, sss.ToConn(c.ID()), "confirm", "Delete the draft?")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("answer:", string(res))
	// Output:
	// server asks: Delete the draft?
	// answer: true
}

// Presence in a room: who is there, and who comes and goes.
func ExampleClient_Presence() {
	_, url, stop := exampleServer(sss.WithPresence(func(channel string) sss.ChannelPresence {
		return sss.ChannelPresence{JoinLeave: true}
	}))
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	alice, err := client.Dial(ctx, url, client.WithHeader(http.Header{"X-User": {"alice"}}))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer alice.Close()
	joined := make(chan client.ClientInfo, 4)
	if _, err := alice.Subscribe(ctx, "room", client.WithJoinHandler(func(ci client.ClientInfo) { joined <- ci })); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("joined:", (<-joined).User) // herself

	bob, err := client.Dial(ctx, url, client.WithHeader(http.Header{"X-User": {"bob"}}))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer bob.Close()
	if _, err := bob.Subscribe(ctx, "room"); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("joined:", (<-joined).User)

	_, n, err := alice.Presence(ctx, "room")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(n.Clients, "clients,", n.Users, "users")
	// Output:
	// joined: alice
	// joined: bob
	// 2 clients, 2 users
}
