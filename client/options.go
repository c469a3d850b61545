package client

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Option configures a Client; pass them to Dial. An option given an invalid
// value makes Dial fail with an error that matches ErrInvalidConfig, before
// any connection attempt.
//
// The options that take callbacks (WithHooks, WithAskHandler,
// WithTellHandler) put them in place before the first connection, so that
// no event, tell or ask is missed between Dial and a later registration.
type Option func(*options) error

type options struct {
	header      http.Header
	httpClient  *http.Client
	dialTimeout time.Duration
	minDelay    time.Duration
	// backoffDrawn, for tests (export_test.go), sees each backoff delay
	// as it is drawn, so that jitter is checked on the values and not
	// on a loaded machine's wall clock.
	backoffDrawn func(time.Duration)
	maxDelay     time.Duration
	maxAttempts  int
	logger       *slog.Logger
	urls         []string
	failFast     bool
	maxMessage   int64
	receiveQueue int
	concurrency  int
	rateRetries  int
	hooks        Hooks
	hooksSet     bool
	asks         map[string]AskHandler
	tells        map[string]TellHandler
	restore      bool
	token        func(ctx context.Context) (string, error)
}

func defaultOptions() options {
	return options{
		header:       http.Header{},
		httpClient:   http.DefaultClient,
		dialTimeout:  10 * time.Second,
		minDelay:     250 * time.Millisecond,
		maxDelay:     30 * time.Second,
		logger:       slog.New(slog.DiscardHandler),
		maxMessage:   16 << 20,
		receiveQueue: 1024,
		concurrency:  64,
		rateRetries:  8,
		asks:         make(map[string]AskHandler),
		tells:        make(map[string]TellHandler),
	}
}

// invalid returns the error of an option given an invalid value.
func invalid(format string, args ...any) error {
	return withDetail(ErrInvalidConfig, format, args...)
}

// positive is an option whose value must be above zero.
func positive[T int | int64 | time.Duration](name string, v T, set func(*options)) Option {
	return func(o *options) error {
		if v <= 0 {
			return invalid("%s(%v): must be positive", name, v)
		}
		set(o)
		return nil
	}
}

// WithHeader adds HTTP headers to every handshake request, for the server's
// session parser (an Authorization header, say). It may be given several
// times.
func WithHeader(h http.Header) Option {
	return func(o *options) error {
		for k, vs := range h {
			for _, v := range vs {
				o.header.Add(k, v)
			}
		}
		return nil
	}
}

// WithToken gives the client its credentials: before every handshake, the
// first and each reconnect, it calls token and sends the result as
// "Authorization: Bearer <token>", so that an expiring token (a JWT) is
// refreshed before it is needed. When the server closes the connection
// because the credentials expired (close code 4007) the client reconnects
// at once, with a fresh token. An error from token fails that attempt (the
// client retries with backoff); one matching ErrUnauthorized or
// ErrForbidden stops the client.
func WithToken(token func(ctx context.Context) (string, error)) Option {
	return func(o *options) error {
		if token == nil {
			return invalid("WithToken(nil)")
		}
		o.token = token
		return nil
	}
}

// WithCookies sends cookies with every handshake request, for the server's
// session parser. For cookies that change, use WithHTTPClient with a Jar.
// A nil or invalid cookie (http.Cookie.Valid) is an error.
func WithCookies(cookies ...*http.Cookie) Option {
	return func(o *options) error {
		for _, ck := range cookies {
			if ck == nil {
				return invalid("WithCookies: nil cookie")
			}
			if err := ck.Valid(); err != nil {
				return invalid("WithCookies: %v", err)
			}
			o.header.Add("Cookie", ck.String())
		}
		return nil
	}
}

// WithHTTPClient sets the HTTP client used for handshakes (its Transport,
// TLS configuration, cookie Jar, ...). Its Timeout, if any, bounds each
// handshake. The default is http.DefaultClient.
func WithHTTPClient(hc *http.Client) Option {
	return func(o *options) error {
		if hc == nil {
			return invalid("WithHTTPClient(nil)")
		}
		o.httpClient = hc
		return nil
	}
}

// WithDialTimeout bounds one connection attempt: handshake, welcome and,
// after a reconnect, the restoring of subscriptions. Default 10s.
func WithDialTimeout(d time.Duration) Option {
	return positive("WithDialTimeout", d, func(o *options) { o.dialTimeout = d })
}

// WithReconnectDelay sets the backoff between reconnection attempts: before
// retry n the client waits a random duration in [0, min(max, min·2ⁿ)] ("full
// jitter", which spreads a crowd of clients dropped together). Both must be
// positive and min at most max. Defaults 250ms and 30s. A server shutting
// down (close code 4000) is left at once, without delay, for another URL.
func WithReconnectDelay(min, max time.Duration) Option {
	return func(o *options) error {
		if min <= 0 || max <= 0 || min > max {
			return invalid("WithReconnectDelay(%v, %v): want 0 < min <= max", min, max)
		}
		o.minDelay, o.maxDelay = min, max
		return nil
	}
}

// WithMaxAttempts bounds the consecutive failed attempts of one
// reconnection; then the client closes with the last error. Default 0:
// unlimited. Negative is an error.
func WithMaxAttempts(n int) Option {
	return func(o *options) error {
		if n < 0 {
			return invalid("WithMaxAttempts(%d): must not be negative", n)
		}
		o.maxAttempts = n
		return nil
	}
}

// WithLogger sets where the client logs connection events. Default: nowhere.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) error {
		if l == nil {
			return invalid("WithLogger(nil)")
		}
		o.logger = l
		return nil
	}
}

// WithURLs adds server URLs (instances of one cluster) to fail over
// between; each must be a ws, wss, http or https URL. The client's list is
// the URL given to Dial followed by these, without repeats.
//
// Dial tries its own URL first: if that fails, it tries each of the others
// once, in list order from a random one. After a drop, each round of
// reconnection attempts goes through the other URLs in list order from a
// random one, then the URL whose link dropped, last. So the clients of an
// instance that dies spread evenly over the others, instead of all moving to
// the same next URL of their list.
func WithURLs(urls ...string) Option {
	return func(o *options) error {
		for _, u := range urls {
			if err := checkURL(u); err != nil {
				return invalid("WithURLs: %v", err)
			}
		}
		o.urls = append(o.urls, urls...)
		return nil
	}
}

// checkURL accepts the URLs a client can dial.
func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("URL %q: %v", s, err)
	}
	switch strings.ToLower(u.Scheme) {
	case "ws", "wss", "http", "https":
	default:
		return fmt.Errorf("URL %q: scheme must be ws, wss, http or https", s)
	}
	if u.Host == "" {
		return fmt.Errorf("URL %q: no host", s)
	}
	return nil
}

// WithFailFast makes Ask, Tell, Publish and Subscribe fail at once with
// ErrDisconnected while the client is reconnecting. By default they wait for
// the link within their context.
func WithFailFast() Option {
	return func(o *options) error {
		o.failFast = true
		return nil
	}
}

// WithMaxMessageSize bounds one WebSocket message the client reads from the
// server, in bytes (default 16 MiB); a larger one drops the link. It is the
// client's side of the server's option of the same name.
func WithMaxMessageSize(n int64) Option {
	return positive("WithMaxMessageSize", n, func(o *options) { o.maxMessage = n })
}

// WithReceiveQueue bounds the publications and tells received but not yet
// handled (default 1024). The connection is read on regardless, so replies
// are never stuck behind slow handlers; if the handlers fall further behind,
// the client drops the link with ErrSlowConsumer and resumes, as the server
// does with a client that does not keep up (its WithSendQueue): it
// reconnects once the handlers are down to half the queue, and the resume
// catches up on what was not handed to them.
func WithReceiveQueue(n int) Option {
	return positive("WithReceiveQueue", n, func(o *options) { o.receiveQueue = n })
}

// WithConcurrency bounds the server's asks being handled at once (default
// 64); more are answered rate_limited, as the server does with its own
// option of the same name.
func WithConcurrency(n int) Option {
	return positive("WithConcurrency", n, func(o *options) { o.concurrency = n })
}

// WithRateLimitRetries sets how many times an ask or tell refused with
// rate_limited is sent again (default 8; 0 turns the retries off). See
// Client.Ask. Negative is an error.
func WithRateLimitRetries(n int) Option {
	return func(o *options) error {
		if n < 0 {
			return invalid("WithRateLimitRetries(%d): must not be negative", n)
		}
		o.rateRetries = n
		return nil
	}
}

// WithRestore makes the first connection restore the subscriptions the
// server stored for the client's session (a process or page that starts
// with no state of its own), instead of starting with none: the server
// needs a session store and a session parser that names the session. Each
// restored subscription catches up from where the session last stood, and
// Hooks.OnSubscribed tells of it (set its handlers there).
func WithRestore() Option {
	return func(o *options) error {
		o.restore = true
		return nil
	}
}

// WithHooks sets the client's callbacks (see Hooks), in place before the
// first connection attempt. It may be given once.
func WithHooks(h Hooks) Option {
	return func(o *options) error {
		if o.hooksSet {
			return invalid("WithHooks given twice: pass one Hooks")
		}
		o.hooks, o.hooksSet = h, true
		return nil
	}
}

// WithAskHandler sets the handler for the server's asks named name, in
// place before the first connection: an ask the server sends right after its
// welcome finds it. Client.HandleAsk changes it later. A nil fn, an empty
// name, or a name given twice is an error.
func WithAskHandler(name string, fn AskHandler) Option {
	return func(o *options) error {
		if err := checkHandler("WithAskHandler", name, fn == nil, o.asks[name] != nil); err != nil {
			return err
		}
		o.asks[name] = fn
		return nil
	}
}

// WithTellHandler sets the handler for the server's tells named name, in
// place before the first connection: a tell the server sends right after
// its welcome finds it. Client.HandleTell changes it later. A nil fn, an
// empty name, or a name given twice is an error.
func WithTellHandler(name string, fn TellHandler) Option {
	return func(o *options) error {
		if err := checkHandler("WithTellHandler", name, fn == nil, o.tells[name] != nil); err != nil {
			return err
		}
		o.tells[name] = fn
		return nil
	}
}

func checkHandler(option, name string, nilFn, dup bool) error {
	switch {
	case name == "":
		return invalid("%s: empty name", option)
	case nilFn:
		return invalid("%s(%q, nil)", option, name)
	case dup:
		return invalid("%s(%q) given twice", option, name)
	}
	return nil
}
