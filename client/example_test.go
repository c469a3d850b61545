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
func exampleServer() (*sss.Server, string, func()) {
	srv, err := sss.New(
		sss.WithLogger(quiet),
		sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
			user := r.Header.Get("X-User")
			if user == "" {
				return nil, sss.ErrUnauthorized
			}
			return &sss.Session{UserID: user}, nil
		}),
	)
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
