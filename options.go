package sss

import (
	"errors"
	"fmt"
	"log/slog"
	"path"
	"time"

	"github.com/superscaled/sss/scaler"
)

// Option configures a Server. Invalid values make New fail.
type Option func(*config) error

type config struct {
	scaler       scaler.Scaler
	ownScaler    bool // New made it: Close closes it
	sessionP     SessionParser
	subscriptP   SubscriptionParser
	publishP     PublishParser
	presence     func(channel string) ChannelPresence
	presenceP    PresenceParser
	logger       *slog.Logger
	origins      []string
	hooks        Hooks
	lossy        func(channel string) bool
	maxMessage   int64
	maxPayload   int
	payloadSet   bool // WithMaxPayloadSize was given
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

// Defaults of the options.
const (
	DefaultMaxMessageSize   = 64 << 10
	DefaultMaxPayloadSize   = 64 << 10
	DefaultSendQueueFrames  = 1024
	DefaultSendQueueBytes   = 1 << 20
	DefaultMaxSubscriptions = 256
	DefaultPingInterval     = 25 * time.Second
	DefaultPongTimeout      = 10 * time.Second
	DefaultWriteTimeout     = 10 * time.Second
	DefaultAskTimeout       = 10 * time.Second
	DefaultConcurrency      = 16
	// maxPendingAsks bounds the server asks awaiting one client's reply.
	maxPendingAsks = 64
)

func defaults() config {
	return config{
		logger:       slog.Default(),
		maxMessage:   DefaultMaxMessageSize,
		maxPayload:   DefaultMaxPayloadSize,
		sendQueue:    DefaultSendQueueFrames,
		sendBytes:    DefaultSendQueueBytes,
		maxSubs:      DefaultMaxSubscriptions,
		pingInterval: DefaultPingInterval,
		pongTimeout:  DefaultPongTimeout,
		writeTimeout: DefaultWriteTimeout,
		askTimeout:   DefaultAskTimeout,
		concurrency:  DefaultConcurrency,
		maxPending:   maxPendingAsks,
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
	return func(c *config) error {
		if p == nil {
			return errors.New("sss: WithSessionParser(nil)")
		}
		c.sessionP = p
		return nil
	}
}

// WithSubscriptionParser authorises each subscription. Without one every
// valid, non-reserved channel may be subscribed.
func WithSubscriptionParser(p SubscriptionParser) Option {
	return func(c *config) error {
		if p == nil {
			return errors.New("sss: WithSubscriptionParser(nil)")
		}
		c.subscriptP = p
		return nil
	}
}

// WithPublishParser enables client publish: each one is allowed when p
// returns nil. Without it clients cannot publish.
func WithPublishParser(p PublishParser) Option {
	return func(c *config) error {
		if p == nil {
			return errors.New("sss: WithPublishParser(nil)")
		}
		c.publishP = p
		return nil
	}
}

// WithPresence turns presence on for the channels f says (see
// ChannelPresence): their subscribers are listed in Server.Presence and
// clients' presence requests, and, with JoinLeave, announced to each other
// as they come and go. f is called on every subscribe and unsubscribe:
// keep it fast (a prefix test). Reserved channels never keep presence.
// The scaler must implement scaler.Presence (memory and mongoredis do).
func WithPresence(f func(channel string) ChannelPresence) Option {
	return func(c *config) error {
		if f == nil {
			return errors.New("sss: WithPresence(nil)")
		}
		c.presence = f
		return nil
	}
}

// WithPresenceParser decides which clients may read a channel's presence.
// Without one only the channel's subscribers may.
func WithPresenceParser(p PresenceParser) Option {
	return func(c *config) error {
		if p == nil {
			return errors.New("sss: WithPresenceParser(nil)")
		}
		c.presenceP = p
		return nil
	}
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
// matches one of the patterns (path.Match syntax, e.g. "*.example.com").
// Same-origin requests are always allowed.
func WithOriginPatterns(patterns ...string) Option {
	return func(c *config) error {
		for _, p := range patterns {
			if _, err := path.Match(p, ""); err != nil {
				return fmt.Errorf("sss: WithOriginPatterns(%q): %w", p, err)
			}
		}
		c.origins = append(c.origins, patterns...)
		return nil
	}
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
	return func(c *config) error {
		if isLossy == nil {
			return errors.New("sss: WithLossyChannels(nil)")
		}
		c.lossy = isLossy
		return nil
	}
}

// WithMaxMessageSize bounds a WebSocket message the server reads (default
// 64 KiB); a larger one closes the connection with 1009.
func WithMaxMessageSize(n int64) Option {
	return positive("WithMaxMessageSize", n, func(c *config) { c.maxMessage = n })
}

// WithMaxPayloadSize bounds the data of a publication, a tell, an ask and an
// ask's result, in bytes of compact JSON (default 64 KiB), wherever it
// enters: Publish, PublishUser, PublishSession, Tell and Ask return
// ErrTooLarge, and a client's publish or an ask handler's result beyond it
// gets a too_large error. So that every frame the server sends fits a
// connection's send queue, the limit must be at most half the queue's bytes
// (WithSendQueue); without this option it is lowered to that if needed.
func WithMaxPayloadSize(n int) Option {
	return positive("WithMaxPayloadSize", n, func(c *config) { c.maxPayload, c.payloadSet = n, true })
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

// validate checks the options against each other.
func (c *config) validate() error {
	if !c.payloadSet {
		c.maxPayload = max(1, min(c.maxPayload, c.sendBytes/2))
	}
	if c.maxPayload > max(1, c.sendBytes/2) {
		return fmt.Errorf("sss: the payload limit (%d bytes) must be at most half the send queue's bytes (%d)", c.maxPayload, c.sendBytes)
	}
	return nil
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
