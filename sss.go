// Package sss (Super Scaled Sockets) is a framework for real-time WebSocket
// applications that run on many server instances at once.
//
// A [Server] is an [net/http.Handler]: mount it at any path. Clients connect
// with the sss.v1 protocol (docs/protocol.md), subscribe to hierarchical
// channels, publish where allowed, and ask or tell the server; the server
// publishes to channels, users and sessions, and tells or asks any
// connection wherever in the cluster it is. A [scaler.Scaler] joins the
// instances: the default is in-process (scaler/memory); Redis+MongoDB and
// NATS backends live under scaler/.
//
// WebSockets are served by github.com/coder/websocket, the maintained
// continuation of nhooyr.io/websocket.
package sss

import (
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/superscaled/sss/scaler"
	"github.com/superscaled/sss/scaler/memory"
)

// Subprotocol is the WebSocket subprotocol of protocol v1.
const Subprotocol = "sss.v1"

// Option configures a Server.
type Option func(*config) error

type config struct {
	scaler       scaler.Scaler
	ownScaler    bool
	sessionP     SessionParser
	subscriptP   SubscriptionParser
	publishP     PublishParser
	logger       *slog.Logger
	origins      []string
	hooks        Hooks
	lossy        func(channel string) bool
	maxMessage   int64
	sendQueue    int
	sendBytes    int
	maxSubs      int
	pingInterval time.Duration
	pongTimeout  time.Duration
	writeTimeout time.Duration
	askTimeout   time.Duration
	concurrency  int
	maxPending   int
	rate         float64
	burst        int
}

func defaults() config {
	return config{
		logger:       slog.Default(),
		maxMessage:   64 << 10,
		sendQueue:    1024,
		sendBytes:    1 << 20,
		maxSubs:      256,
		pingInterval: 25 * time.Second,
		pongTimeout:  10 * time.Second,
		writeTimeout: 10 * time.Second,
		askTimeout:   10 * time.Second,
		concurrency:  16,
		maxPending:   64,
	}
}

// WithScaler sets the backend that joins this server to the others. The
// default is a private in-memory scaler: a cluster of one.
func WithScaler(s scaler.Scaler) Option {
	return func(c *config) error {
		if s == nil {
			return errors.New("sss: WithScaler(nil)")
		}
		c.scaler = s
		return nil
	}
}

// WithSessionParser authenticates each HTTP upgrade. Without one every
// connection is anonymous, with a random session id.
func WithSessionParser(p SessionParser) Option {
	return func(c *config) error { c.sessionP = p; return nil }
}

// WithSubscriptionParser authorises each subscription. Without one every
// valid, non-reserved channel may be subscribed.
func WithSubscriptionParser(p SubscriptionParser) Option {
	return func(c *config) error { c.subscriptP = p; return nil }
}

// WithPublishParser enables client publish: each one is allowed when p
// returns nil. Without it clients cannot publish.
func WithPublishParser(p PublishParser) Option {
	return func(c *config) error { c.publishP = p; return nil }
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("sss: WithLogger(nil)")
		}
		c.logger = l
		return nil
	}
}

// WithOriginPatterns authorises cross-origin browsers whose Origin host
// matches one of the patterns (path.Match syntax). Same-origin requests are
// always allowed.
func WithOriginPatterns(patterns ...string) Option {
	return func(c *config) error { c.origins = append(c.origins, patterns...); return nil }
}

// WithHooks installs lifecycle callbacks.
func WithHooks(h Hooks) Option {
	return func(c *config) error { c.hooks = h; return nil }
}

// WithLossyChannels marks channels whose publications may be dropped for a
// connection whose send queue is full, instead of disconnecting it (the
// default slow-consumer policy). They may fill three quarters of the queue,
// so replies still fit. Drops are counted in Stats.
func WithLossyChannels(isLossy func(channel string) bool) Option {
	return func(c *config) error { c.lossy = isLossy; return nil }
}

// WithMaxMessageSize bounds an incoming WebSocket message (default 64 KiB);
// a larger one closes the connection with 1009.
func WithMaxMessageSize(n int64) Option {
	return positive("WithMaxMessageSize", n, func(c *config) { c.maxMessage = n })
}

// WithSendQueue bounds each connection's queue of outgoing frames, in frames
// (default 1024) and bytes (default 1 MiB). A connection that overflows it is
// a slow consumer: it is closed with 4002.
func WithSendQueue(frames, bytes int) Option {
	return func(c *config) error {
		if frames <= 0 || bytes <= 0 {
			return fmt.Errorf("sss: WithSendQueue(%d, %d): both must be positive", frames, bytes)
		}
		c.sendQueue, c.sendBytes = frames, bytes
		return nil
	}
}

// WithMaxSubscriptions bounds subscriptions per connection (default 256).
func WithMaxSubscriptions(n int) Option {
	return positive("WithMaxSubscriptions", n, func(c *config) { c.maxSubs = n })
}

// WithPing sets how often the server pings (default 25s) and how long after
// that it waits for any frame before closing the connection with 4001
// (default 10s).
func WithPing(interval, timeout time.Duration) Option {
	return func(c *config) error {
		if interval <= 0 || timeout <= 0 {
			return fmt.Errorf("sss: WithPing(%v, %v): both must be positive", interval, timeout)
		}
		c.pingInterval, c.pongTimeout = interval, timeout
		return nil
	}
}

// WithWriteTimeout bounds one write to a connection (default 10s); a write
// that takes longer closes the connection with 4003.
func WithWriteTimeout(d time.Duration) Option {
	return positive("WithWriteTimeout", d, func(c *config) { c.writeTimeout = d })
}

// WithAskTimeout bounds ask handlers, parsers, and server asks to clients
// (default 10s).
func WithAskTimeout(d time.Duration) Option {
	return positive("WithAskTimeout", d, func(c *config) { c.askTimeout = d })
}

// WithConcurrency bounds the ask and tell handlers running at once for one
// connection (default 16); requests beyond it get rate_limited.
func WithConcurrency(n int) Option {
	return positive("WithConcurrency", n, func(c *config) { c.concurrency = n })
}

// WithRateLimit bounds the frames one connection may send, per second with a
// burst (default: unlimited). Frames beyond it get rate_limited.
func WithRateLimit(perSecond float64, burst int) Option {
	return func(c *config) error {
		if perSecond <= 0 || burst <= 0 {
			return fmt.Errorf("sss: WithRateLimit(%v, %d): both must be positive", perSecond, burst)
		}
		c.rate, c.burst = perSecond, burst
		return nil
	}
}

func positive[T int | int64 | time.Duration](name string, v T, set func(*config)) Option {
	return func(c *config) error {
		if v <= 0 {
			return fmt.Errorf("sss: %s(%v): must be positive", name, v)
		}
		set(c)
		return nil
	}
}

// New returns a Server. It joins the scaler lazily, on the first connection
// or server-side call.
func New(opts ...Option) (*Server, error) {
	cfg := defaults()
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if cfg.scaler == nil {
		m, err := memory.New()
		if err != nil {
			return nil, err
		}
		cfg.scaler, cfg.ownScaler = m, true
	}
	s := &Server{
		cfg:    cfg,
		log:    cfg.logger,
		nodeID: randomID(8),
		asks:   make(map[string]AskHandler),
		tells:  make(map[string]TellHandler),
		conns:  make(map[string]*Conn),
	}
	s.channels.init()
	s.pending.m = make(map[uint64]chan nodeMsg)
	s.idle = make(chan struct{})
	return s, nil
}

// Server is an sss server: an http.Handler for WebSocket upgrades plus the
// API to publish, tell and ask.
type Server struct {
	cfg    config
	log    *slog.Logger
	nodeID string

	joinMu  sync.Mutex
	node    scaler.Node
	nodeRef atomic.Pointer[scaler.Node] // lock-free read of node
	store   scaler.SessionStore         // nil when the scaler does not persist
	// storeDownUntil (unix nanos) skips store calls for a while after one failed.
	storeDownUntil atomic.Int64

	hmu   sync.RWMutex
	asks  map[string]AskHandler
	tells map[string]TellHandler

	cmu      sync.RWMutex
	conns    map[string]*Conn
	closing  bool
	active   int           // connections being served
	idle     chan struct{} // closed when closing and active == 0
	channels registry

	pending struct {
		mu  sync.Mutex
		seq uint64
		m   map[uint64]chan nodeMsg
	}

	stats counters
}

// NodeID is this instance's id in the cluster. Connection ids start with it.
func (s *Server) NodeID() string { return s.nodeID }

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

func randomID(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return idEncoding.EncodeToString(b)
}

// Hooks are lifecycle callbacks. Each may be nil. They run synchronously on
// the connection's goroutine: keep them fast. A panic in one is recovered
// and logged.
type Hooks struct {
	// OnConnect runs after the welcome frame was queued.
	OnConnect func(c *Conn)
	// OnDisconnect runs when the connection has ended; reason says why.
	OnDisconnect func(c *Conn, reason error)
	// OnSubscribe and OnUnsubscribe run after a client subscription changed.
	OnSubscribe   func(c *Conn, channel string)
	OnUnsubscribe func(c *Conn, channel string)
	// OnChannelOpen runs when this instance gets its first local subscriber
	// to a channel, OnChannelClose when it loses the last one.
	OnChannelOpen  func(channel string)
	OnChannelClose func(channel string)
}

func (s *Server) hook(name string, f func()) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("sss: hook panicked", "hook", name, "panic", r)
		}
	}()
	f()
}

var _ http.Handler = (*Server)(nil)
