package client

import (
	"log/slog"
	"net/http"
	"time"
)

// Option configures a Client; pass them to Dial.
type Option func(*options)

type options struct {
	header      http.Header
	httpClient  *http.Client
	dialTimeout time.Duration
	minDelay    time.Duration
	maxDelay    time.Duration
	maxAttempts int
	logger      *slog.Logger
	urls        []string
	failFast    bool
	readLimit   int64
	msgBuffer   int
	maxAsks     int
	init        []func(*Client)
}

func defaultOptions() options {
	return options{
		header:      http.Header{},
		dialTimeout: 10 * time.Second,
		minDelay:    250 * time.Millisecond,
		maxDelay:    30 * time.Second,
		readLimit:   16 << 20,
		msgBuffer:   1024,
		maxAsks:     64,
	}
}

// WithHeader adds HTTP headers to every handshake request, for the server's
// session parser (an Authorization header, say). It may be given several
// times.
func WithHeader(h http.Header) Option {
	return func(o *options) {
		for k, vs := range h {
			for _, v := range vs {
				o.header.Add(k, v)
			}
		}
	}
}

// WithCookies sends cookies with every handshake request, for the server's
// session parser. For cookies that change, use WithHTTPClient with a Jar.
func WithCookies(cookies ...*http.Cookie) Option {
	return func(o *options) {
		for _, ck := range cookies {
			o.header.Add("Cookie", ck.String())
		}
	}
}

// WithHTTPClient sets the HTTP client used for handshakes (its Transport,
// TLS configuration, cookie Jar, ...). Its Timeout, if any, bounds each
// handshake. The default is http.DefaultClient.
func WithHTTPClient(hc *http.Client) Option {
	return func(o *options) { o.httpClient = hc }
}

// WithDialTimeout bounds one connection attempt: handshake, welcome and,
// after a reconnect, the restoring of subscriptions. Default 10s.
func WithDialTimeout(d time.Duration) Option {
	return func(o *options) { o.dialTimeout = d }
}

// WithReconnectDelay sets the backoff between reconnection attempts: before
// retry n the client waits a random duration in [0, min(max, min·2ⁿ)] ("full
// jitter", which spreads a crowd of clients dropped together). Defaults 250ms
// and 30s. A server shutting down (close code 4000) is left at once, without
// delay, for the next URL.
func WithReconnectDelay(min, max time.Duration) Option {
	return func(o *options) {
		o.minDelay, o.maxDelay = min, max
		if o.maxDelay < o.minDelay {
			o.maxDelay = o.minDelay
		}
	}
}

// WithMaxAttempts bounds the consecutive failed attempts of one
// reconnection; then the client closes with the last error. Default 0:
// unlimited.
func WithMaxAttempts(n int) Option {
	return func(o *options) { o.maxAttempts = n }
}

// WithLogger sets where the client logs connection events. Default: nowhere.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// WithURLs adds server URLs (instances of one cluster) to fail over between.
// Dial tries the URL it is given first, then these; each later attempt goes
// to the next URL of the list, round robin.
func WithURLs(urls ...string) Option {
	return func(o *options) { o.urls = append(o.urls, urls...) }
}

// WithFailFast makes Ask, Tell, Publish and Subscribe fail at once with
// ErrDisconnected while the client is reconnecting. By default they wait for
// the link within their context.
func WithFailFast() Option {
	return func(o *options) { o.failFast = true }
}

// WithReadLimit bounds one WebSocket message from the server, in bytes
// (default 16 MiB); a larger one drops the link.
func WithReadLimit(n int64) Option {
	return func(o *options) { o.readLimit = n }
}

// WithMessageBuffer bounds the publications and tells received but not yet
// handled (default 1024). The connection is read on regardless, so replies
// are never stuck behind slow handlers; if the handlers fall further behind,
// the client drops the link with ErrSlowConsumer and resumes, as the server
// does with a client that does not keep up: it reconnects once the handlers
// are down to half the buffer, and the resume catches up on what was not
// handed to them.
func WithMessageBuffer(n int) Option {
	return func(o *options) { o.msgBuffer = max(n, 1) }
}

// WithMaxServerAsks bounds the server's asks being handled at once (default
// 64); more are answered rate_limited.
func WithMaxServerAsks(n int) Option {
	return func(o *options) { o.maxAsks = max(n, 1) }
}

// WithInit runs fn on the new Client before its first connection attempt.
// Handlers and callbacks registered there (HandleTell, OnStatusChange,
// OnUserMessage, ...) see everything, from the first connection's events and
// the tells or asks the server sends right after its welcome. Several
// WithInit run in order.
func WithInit(fn func(*Client)) Option {
	return func(o *options) { o.init = append(o.init, fn) }
}
