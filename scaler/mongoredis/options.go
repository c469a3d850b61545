package mongoredis

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Option configures a Scaler. Invalid values make New fail.
type Option func(*config) error

type config struct {
	prefix        string
	collPrefix    string
	historySize   int
	historyAge    time.Duration
	streamTTL     time.Duration
	sessionTTL    time.Duration
	sweepInterval time.Duration
	maxSubs       int
	callTimeout   time.Duration
	presenceTTL   time.Duration
	logger        *slog.Logger

	// The MongoDB history archive (WithArchive); off when archiveAge is 0.
	archiveAge       time.Duration
	archivePerStream int
}

// Defaults.
const (
	DefaultPrefix           = "sss:"
	DefaultCollectionPrefix = "sss_"
	DefaultHistorySize      = 1000
	DefaultHistoryAge       = 5 * time.Minute
	DefaultStreamTTL        = 24 * time.Hour
	DefaultSessionTTL       = 24 * time.Hour
	DefaultSweepInterval    = time.Minute
	DefaultMaxSubscriptions = 1024
	DefaultCallTimeout      = 5 * time.Second
	DefaultPresenceTTL      = 30 * time.Second
)

func defaults() config {
	return config{
		prefix:        DefaultPrefix,
		collPrefix:    DefaultCollectionPrefix,
		historySize:   DefaultHistorySize,
		historyAge:    DefaultHistoryAge,
		streamTTL:     DefaultStreamTTL,
		sessionTTL:    DefaultSessionTTL,
		sweepInterval: DefaultSweepInterval,
		maxSubs:       DefaultMaxSubscriptions,
		callTimeout:   DefaultCallTimeout,
		presenceTTL:   DefaultPresenceTTL,
		logger:        slog.Default(),
	}
}

// WithPrefix sets the prefix of every Redis key and channel (default
// "sss:"), so several applications can share one Redis. It must not contain
// '{' or '}', which Redis Cluster reads as a hash tag.
func WithPrefix(p string) Option {
	return func(c *config) error {
		if strings.ContainsAny(p, "{}") {
			return fmt.Errorf("mongoredis: WithPrefix(%q): must not contain '{' or '}'", p)
		}
		c.prefix = p
		return nil
	}
}

// WithCollectionPrefix sets the prefix of the MongoDB collections (default
// "sss_").
func WithCollectionPrefix(p string) Option {
	return func(c *config) error {
		if strings.ContainsAny(p, "$\x00") {
			return fmt.Errorf("mongoredis: WithCollectionPrefix(%q): invalid collection name", p)
		}
		c.collPrefix = p
		return nil
	}
}

// WithHistory bounds each stream's history: at most size publications
// (default 1000), none older than age (default 5m; 0 keeps them until
// trimmed by count or until the stream's metadata expires). Size 0 keeps
// no publications: offsets and epochs still work, and Since can only report
// positions.
func WithHistory(size int, age time.Duration) Option {
	return func(c *config) error {
		if size < 0 || age < 0 {
			return fmt.Errorf("mongoredis: WithHistory(%d, %v): must not be negative", size, age)
		}
		if age > 0 && age < time.Millisecond {
			return fmt.Errorf("mongoredis: WithHistory(%d, %v): age below the millisecond", size, age)
		}
		c.historySize, c.historyAge = size, age
		return nil
	}
}

// WithStreamTTL sets how long a stream's epoch and offset survive without
// a publication or a Since call (default 24h). When they expire, the stream
// starts a new epoch. It must be at least the history age.
func WithStreamTTL(d time.Duration) Option {
	return func(c *config) error {
		if d < time.Millisecond {
			return fmt.Errorf("mongoredis: WithStreamTTL(%v): must be at least 1ms", d)
		}
		c.streamTTL = d
		return nil
	}
}

// WithSessionTTL sets how long a session's stored subscriptions survive
// without TouchSession or AddSubscription (default 24h). Zero keeps them
// for ever.
func WithSessionTTL(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("mongoredis: WithSessionTTL(%v): must not be negative", d)
		}
		c.sessionTTL = d
		return nil
	}
}

// WithSweepInterval sets how often expired sessions (and, with WithArchive,
// expired archived publications) are deleted from MongoDB (default 1m).
// Expired sessions already look empty before that.
func WithSweepInterval(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("mongoredis: WithSweepInterval(%v): must be positive", d)
		}
		c.sweepInterval = d
		return nil
	}
}

// WithMaxSessionSubscriptions bounds the subscriptions stored per session
// (default 1024); AddSubscription beyond it fails.
func WithMaxSessionSubscriptions(n int) Option {
	return func(c *config) error {
		if n <= 0 {
			return fmt.Errorf("mongoredis: WithMaxSessionSubscriptions(%d): must be positive", n)
		}
		c.maxSubs = n
		return nil
	}
}

// WithCallTimeout bounds each call to Redis or MongoDB when the caller's
// context has no earlier deadline (default 5s). A call that times out
// returns an error wrapping scaler.ErrUnavailable.
func WithCallTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("mongoredis: WithCallTimeout(%v): must be positive", d)
		}
		c.callTimeout = d
		return nil
	}
}

// WithPresenceTTL sets how long a node's presence entries outlive its last
// heartbeat (default 30s; at least 300ms). Each node beats every third of
// it, so the entries of a node that died disappear, and are reported
// gone, between the TTL and 4/3 of it after its last beat (plus one
// call's time). A node cut off from Redis for longer is taken for dead.
func WithPresenceTTL(d time.Duration) Option {
	return func(c *config) error {
		if d < 300*time.Millisecond {
			return fmt.Errorf("mongoredis: WithPresenceTTL(%v): at least 300ms", d)
		}
		c.presenceTTL = d
		return nil
	}
}

// WithLogger sets the logger for outages, recoveries and dropped payloads
// (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("mongoredis: WithLogger(nil)")
		}
		c.logger = l
		return nil
	}
}

// WithArchive turns on the write-behind history archive in MongoDB (off by
// default; New fails without a database): every publication numbered by
// Redis is also written to the collection <cp>history, so that Since can
// serve positions older than the Redis history retains, within the same
// epoch. Archived publications are deleted once older than maxAge (which
// must be positive) by the sweeper, and each stream keeps about its last
// maxPerStream (0: no count bound). Archive writes are best effort: a
// failed one is logged and counted (ArchiveFailures) and does not fail
// Publish; Since then reports the hole as scaler.ErrPositionLost. See the
// package documentation.
func WithArchive(maxAge time.Duration, maxPerStream int) Option {
	return func(c *config) error {
		if maxAge < time.Millisecond || maxPerStream < 0 {
			return fmt.Errorf("mongoredis: WithArchive(%v, %d): the age must be at least 1ms and the count not negative", maxAge, maxPerStream)
		}
		c.archiveAge, c.archivePerStream = maxAge, maxPerStream
		return nil
	}
}

func (c *config) archive() bool { return c.archiveAge > 0 }

func (c *config) validate() error {
	if c.historyAge > 0 && c.streamTTL < c.historyAge {
		return fmt.Errorf("mongoredis: stream TTL %v is shorter than the history age %v", c.streamTTL, c.historyAge)
	}
	return nil
}

// historyTTL is the expiry of a stream's history key, refreshed on publish:
// once the newest entry is older than the history age, all of them are.
func (c *config) historyTTL() time.Duration {
	if c.historyAge > 0 {
		return c.historyAge
	}
	return c.streamTTL
}
