package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/superscaled/sss/client"
)

// Invalid options and URLs fail Dial at once, before any connection
// attempt, with an error that matches ErrInvalidConfig and names the
// option.
func TestInvalidOptions(t *testing.T) {
	ts := newServer(t, nil)
	ask := func(context.Context, json.RawMessage) (any, error) { return nil, nil }
	tell := func(context.Context, json.RawMessage) error { return nil }
	for _, tc := range []struct {
		name string
		url  string // ts.url when empty
		opts []client.Option
		want string // in the message
	}{
		{"negative dial timeout", "", []client.Option{client.WithDialTimeout(-1)}, "WithDialTimeout(-1ns): must be positive"},
		{"zero dial timeout", "", []client.Option{client.WithDialTimeout(0)}, "WithDialTimeout(0s)"},
		{"zero min delay", "", []client.Option{client.WithReconnectDelay(0, time.Second)}, "WithReconnectDelay(0s, 1s)"},
		{"negative max delay", "", []client.Option{client.WithReconnectDelay(time.Second, -time.Second)}, "WithReconnectDelay"},
		{"min above max", "", []client.Option{client.WithReconnectDelay(2*time.Second, time.Second)}, "want 0 < min <= max"},
		{"negative max attempts", "", []client.Option{client.WithMaxAttempts(-1)}, "WithMaxAttempts(-1)"},
		{"zero message size", "", []client.Option{client.WithMaxMessageSize(0)}, "WithMaxMessageSize(0)"},
		{"negative message size", "", []client.Option{client.WithMaxMessageSize(-5)}, "WithMaxMessageSize(-5)"},
		{"zero receive queue", "", []client.Option{client.WithReceiveQueue(0)}, "WithReceiveQueue(0)"},
		{"zero concurrency", "", []client.Option{client.WithConcurrency(0)}, "WithConcurrency(0)"},
		{"negative concurrency", "", []client.Option{client.WithConcurrency(-3)}, "WithConcurrency(-3)"},
		{"negative rate-limit retries", "", []client.Option{client.WithRateLimitRetries(-1)}, "WithRateLimitRetries(-1)"},
		{"nil logger", "", []client.Option{client.WithLogger(nil)}, "WithLogger(nil)"},
		{"nil HTTP client", "", []client.Option{client.WithHTTPClient(nil)}, "WithHTTPClient(nil)"},
		{"nil cookie", "", []client.Option{client.WithCookies(nil)}, "WithCookies: nil cookie"},
		{"invalid cookie", "", []client.Option{client.WithCookies(&http.Cookie{Name: "bad name", Value: "x"})}, "WithCookies"},
		{"hooks twice", "", []client.Option{client.WithHooks(client.Hooks{}), client.WithHooks(client.Hooks{})}, "WithHooks given twice"},
		{"nil ask handler", "", []client.Option{client.WithAskHandler("a", nil)}, `WithAskHandler("a", nil)`},
		{"ask handler twice", "", []client.Option{client.WithAskHandler("a", ask), client.WithAskHandler("a", ask)}, `WithAskHandler("a") given twice`},
		{"unnamed ask handler", "", []client.Option{client.WithAskHandler("", ask)}, "WithAskHandler: empty name"},
		{"nil tell handler", "", []client.Option{client.WithTellHandler("t", nil)}, `WithTellHandler("t", nil)`},
		{"tell handler twice", "", []client.Option{client.WithTellHandler("t", tell), client.WithTellHandler("t", tell)}, `WithTellHandler("t") given twice`},
		{"unnamed tell handler", "", []client.Option{client.WithTellHandler("", tell)}, "WithTellHandler: empty name"},
		{"ftp URL", "", []client.Option{client.WithURLs("ftp://example.com/")}, `WithURLs: URL "ftp://example.com/": scheme must be ws, wss, http or https`},
		{"URL without host", "", []client.Option{client.WithURLs("ws:///path")}, `URL "ws:///path": no host`},
		{"unparsable URL", "", []client.Option{client.WithURLs("ws://a b/")}, `URL "ws://a b/"`},
		{"empty URL", "", []client.Option{client.WithURLs("")}, `URL "": scheme`},
		{"Dial URL scheme", "file:///etc/passwd", nil, `Dial: URL "file:///etc/passwd": scheme must be`},
		{"Dial URL empty", "-", nil, `Dial: URL ""`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := tc.url
			switch url {
			case "":
				url = ts.url
			case "-":
				url = ""
			}
			c, err := client.Dial(ctxT(t), url, tc.opts...)
			if c != nil {
				c.Close()
				t.Fatal("Dial accepted it")
			}
			if !errors.Is(err, client.ErrInvalidConfig) {
				t.Fatalf("err %v, want ErrInvalidConfig", err)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "sss: invalid configuration: ") || !strings.Contains(msg, tc.want) {
				t.Fatalf("message %q, want it to contain %q", msg, tc.want)
			}
		})
	}
	if n := ts.srv.Stats().Connections; n != 0 {
		t.Fatalf("%d connections: an invalid Dial connected", n)
	}
}

// The valid edges are accepted: zero max attempts (unlimited), zero
// rate-limit retries (none), min = max delay, every URL scheme.
func TestValidOptionEdges(t *testing.T) {
	ts := newServer(t, nil)
	httpURL := "http" + strings.TrimPrefix(ts.url, "ws")
	dial(t, httpURL,
		client.WithMaxAttempts(0),
		client.WithRateLimitRetries(0),
		client.WithReconnectDelay(time.Second, time.Second),
		client.WithURLs("wss://example.com/", "https://example.com/", "WS://example.com/"),
		client.WithHeader(nil),
		client.WithCookies(),
	)
}

// Invalid subscribe options fail Subscribe before anything is sent.
func TestInvalidSubscribeOptions(t *testing.T) {
	ts := newServer(t, nil)
	c := dial(t, ts.url)
	on := func(client.Message) {}
	for _, tc := range []struct {
		name string
		opts []client.SubscribeOption
		want string
	}{
		{"nil event handler", []client.SubscribeOption{client.WithEventHandler("e", nil)}, `WithEventHandler("e", nil)`},
		{"event handler twice", []client.SubscribeOption{client.WithEventHandler("e", on), client.WithEventHandler("e", on)}, `WithEventHandler("e") given twice`},
		{"nil message handler", []client.SubscribeOption{client.WithMessageHandler(nil)}, "WithMessageHandler(nil)"},
		{"message handler twice", []client.SubscribeOption{client.WithMessageHandler(on), client.WithMessageHandler(on)}, "WithMessageHandler given twice"},
		{"sub hooks twice", []client.SubscribeOption{client.WithSubHooks(client.SubHooks{}), client.WithSubHooks(client.SubHooks{})}, "WithSubHooks given twice"},
		{"query that does not encode", []client.SubscribeOption{client.WithQuery(make(chan int))}, "WithQuery: json: unsupported type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Subscribe(ctxT(t), "news", tc.opts...)
			if !errors.Is(err, client.ErrInvalidConfig) {
				t.Fatalf("err %v, want ErrInvalidConfig", err)
			}
			want := `sss: subscribe to "news": invalid configuration: `
			if msg := err.Error(); !strings.HasPrefix(msg, want) || !strings.Contains(msg, tc.want) {
				t.Fatalf("message %q, want %q...%q", msg, want, tc.want)
			}
		})
	}
	if n := ts.srv.Stats().Subscriptions; n != 0 {
		t.Fatalf("server holds %d subscriptions", n)
	}
}
