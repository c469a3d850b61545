// Command asktell shows the sss Go client against an in-process server: an
// ask, a tell, a subscription fed by a server publish, a server push to the
// user, and a dropped link after which the client resumes and catches up on
// what it missed. It starts everything on 127.0.0.1 and exits by itself.
//
//	go run ./examples/asktell
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/client"
)

func main() {
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// The server. Its session parser trusts an X-User header: a real one
	// would check a cookie or a token.
	conns := make(chan *sss.Conn, 2)
	srv, err := sss.New(
		sss.WithHooks(sss.Hooks{OnConnect: func(c *sss.Conn) { conns <- c }}),
		sss.WithLogger(slog.New(slog.DiscardHandler)),
		sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
			user := r.Header.Get("X-User")
			if user == "" {
				return nil, sss.ErrUnauthorized
			}
			return &sss.Session{UserID: user}, nil
		}),
	)
	if err != nil {
		return err
	}
	told := make(chan string, 1)
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
	srv.HandleTell("liked", func(ctx context.Context, c *sss.Conn, data json.RawMessage) error {
		told <- fmt.Sprintf("%s liked %s", c.UserID(), data)
		return nil
	})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: srv}
	go hs.Serve(ln)
	defer func() {
		srv.Shutdown(context.Background())
		hs.Close()
	}()
	url := "ws://" + ln.Addr().String() + "/"
	fmt.Println("server listening on", url)

	// The client. The handlers of what the server pushes and the hooks are
	// Dial options, so they are in place before the first frame arrives.
	pushed := make(chan string, 1)
	resumed := make(chan client.RecoverInfo, 2)
	c, err := client.Dial(ctx, url,
		client.WithHeader(http.Header{"X-User": {"alice"}}),
		client.WithTellHandler("notify", func(ctx context.Context, data json.RawMessage) error {
			pushed <- string(data)
			return nil
		}),
		client.WithHooks(client.Hooks{
			// After a reconnect, each channel's catch-up is reported: a gap
			// (Recovered false) means the application must reload its state.
			OnRecover: func(info client.RecoverInfo) { resumed <- info },
			OnGap: func(info client.RecoverInfo) {
				log.Printf("publications lost on %s: %s", info.Channel, info.Reason)
			},
		}),
	)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Printf("connected as %s, connection %s\n", c.Conn().User, c.ID())

	// Ask: a request with an answer.
	var sum int
	if err := c.Ask(ctx, "add", []int{1, 2, 3}, &sum); err != nil {
		return err
	}
	fmt.Println("ask add [1 2 3] ->", sum)
	err = c.Ask(ctx, "divide", []int{1, 0}, nil)
	fmt.Printf("ask divide -> %v (not found: %t)\n", err, errors.Is(err, client.ErrNotFound))

	// Tell: fire and acknowledge; the handler runs on the server after.
	if err := c.Tell(ctx, "liked", map[string]int{"post": 42}); err != nil {
		return err
	}
	fmt.Println("tell liked -> acknowledged; server saw:", <-told)

	// Subscribe, then the server publishes.
	articles := make(chan client.Message, 1)
	if _, err := c.Subscribe(ctx, "news", client.WithEventHandler("article", func(m client.Message) { articles <- m })); err != nil {
		return err
	}
	if err := srv.Publish(ctx, "news.uk", "article", map[string]string{"title": "Hello"}); err != nil {
		return err
	}
	m := <-articles
	fmt.Printf("pub %s on %s (subscription %s, offset %d): %s\n", m.Event, m.Channel, m.Sub, m.Offset, m.Data)

	// The link drops (here the server disconnects the client, close code
	// 4005) and an article is published meanwhile. The client reconnects
	// and resumes from its positions: the article arrives, once.
	(<-conns).Close("demo", false)
	if err := srv.Publish(ctx, "news.uk", "article", map[string]string{"title": "While you were away"}); err != nil {
		return err
	}
	for range 2 { // the subscription, then the user channel
		info := <-resumed
		fmt.Printf("resumed %s (%s) from offset %d: recovered %t\n", info.Channel, info.Kind, info.Since.Offset, info.Recovered)
	}
	m = <-articles
	fmt.Printf("pub %s on %s (subscription %s, offset %d): %s\n", m.Event, m.Channel, m.Sub, m.Offset, m.Data)

	// A server push to every connection of the user, wherever they are.
	if err := srv.Tell(ctx, sss.ToUser("alice"), "notify", map[string]string{"text": "you have mail"}); err != nil {
		return err
	}
	fmt.Println("server tell notify ->", <-pushed)

	// Close says goodbye with a normal close frame; the client does not
	// reconnect after it.
	if err := c.Close(); err != nil {
		return err
	}
	fmt.Println("client", c.Status())
	return nil
}
