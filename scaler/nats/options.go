package nats

import (
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// Defaults.
const (
	DefaultPrefix          = "sss"
	DefaultHistoryMessages = 1_000_000
	DefaultHistoryBytes    = 1 << 30
	DefaultHistoryAge      = 5 * time.Minute
	DefaultEpochTTL        = 24 * time.Hour
	DefaultSessionTTL      = 24 * time.Hour
	DefaultPresenceTTL     = 15 * time.Second
	DefaultCallTimeout     = 5 * time.Second
	// DefaultPingInterval is how often a connection made by Dial pings
	// its server; two pings unanswered and it reconnects.
	DefaultPingInterval = 5 * time.Second
)

// Option configures a Scaler.
type Option func(*config) error

type config struct {
	prefix       string
	historyMsgs  int64
	historyBytes int64
	historyAge   time.Duration
	epochTTL     time.Duration
	sessionTTL   time.Duration
	presenceTTL  time.Duration
	callTimeout  time.Duration
	replicas     int // 0: automatic
	memory       bool
	natsOpts     []nats.Option
}

func defaults() config {
	return config{
		prefix:       DefaultPrefix,
		historyMsgs:  DefaultHistoryMessages,
		historyBytes: DefaultHistoryBytes,
		historyAge:   DefaultHistoryAge,
		epochTTL:     DefaultEpochTTL,
		sessionTTL:   DefaultSessionTTL,
		presenceTTL:  DefaultPresenceTTL,
		callTimeout:  DefaultCallTimeout,
	}
}

// WithPrefix sets the first token of every subject and the start of every
// stream and bucket name (default "sss"), so several applications can
// share one NATS account. It must be letters, digits, '-' or '_'.
func WithPrefix(p string) Option {
	return func(c *config) error {
		if p == "" {
			return fmt.Errorf("nats scaler: empty prefix")
		}
		for i := 0; i < len(p); i++ {
			if !rawByte(p[i]) && p[i] != '_' {
				return fmt.Errorf("nats scaler: prefix %q: only letters, digits, '-' and '_'", p)
			}
		}
		c.prefix = p
		return nil
	}
}

// WithHistory bounds the history stream: at most messages publications
// (default 1,000,000), bytes bytes (default 1 GiB), none older than age
// (default 5m). The bounds hold for the stream as a whole and it drops its
// oldest publications first, so the history each sss stream keeps is
// always a gap-free run of its most recent offsets.
func WithHistory(messages, bytes int64, age time.Duration) Option {
	return func(c *config) error {
		if messages <= 0 || bytes <= 0 || age <= 0 {
			return fmt.Errorf("nats scaler: history bounds must be positive")
		}
		c.historyMsgs, c.historyBytes, c.historyAge = messages, bytes, age
		return nil
	}
}

// WithEpochTTL sets how long the epoch of a stream with no publication in
// its history is kept (default 24h). Past it, such a stream starts again
// in a new epoch: clients that recorded the old one are told their position
// is lost, never given wrong offsets.
func WithEpochTTL(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("nats scaler: epoch TTL must be positive")
		}
		c.epochTTL = d
		return nil
	}
}

// WithSessionTTL sets how long a session's stored subscriptions are kept
// after they were last written or touched (default 24h).
func WithSessionTTL(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("nats scaler: session TTL must be positive")
		}
		c.sessionTTL = d
		return nil
	}
}

// WithPresenceTTL sets how long a node may go without a heartbeat before
// other nodes remove its presence entries (default 15s, at least 1s). Nodes
// heartbeat every TTL/3.
func WithPresenceTTL(d time.Duration) Option {
	return func(c *config) error {
		if d < time.Second {
			return fmt.Errorf("nats scaler: presence TTL must be at least 1s")
		}
		c.presenceTTL = d
		return nil
	}
}

// WithCallTimeout bounds each request to NATS (default 5s) when the
// caller's context allows longer.
func WithCallTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("nats scaler: call timeout must be positive")
		}
		c.callTimeout = d
		return nil
	}
}

// WithReplicas sets the number of replicas of the JetStream stream and
// buckets (1 to 5). By default: 3 when the server belongs to a cluster of
// three or more, 1 otherwise.
func WithReplicas(n int) Option {
	return func(c *config) error {
		if n < 1 || n > 5 {
			return fmt.Errorf("nats scaler: replicas must be 1 to 5")
		}
		c.replicas = n
		return nil
	}
}

// WithMemoryStorage keeps the stream and buckets in memory instead of on
// disk: faster, but a NATS restart loses them (epochs change, sessions and
// presence are lost).
func WithMemoryStorage() Option {
	return func(c *config) error {
		c.memory = true
		return nil
	}
}

// WithNATSOptions adds options for the connection Dial makes (TLS,
// credentials, name...). New ignores them: its caller made the connection.
func WithNATSOptions(opts ...nats.Option) Option {
	return func(c *config) error {
		c.natsOpts = append(c.natsOpts, opts...)
		return nil
	}
}
