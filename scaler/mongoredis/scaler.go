package mongoredis

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/superscaled/sss/scaler"
)

// Scaler is a scaler.Scaler on Redis and MongoDB. Create it with New or
// Dial; it is safe for concurrent use, and several nodes may join one
// Scaler.
type Scaler struct {
	cfg     config
	rdb     redis.UniversalClient
	cluster bool // Redis Cluster: sharded pub/sub (SPUBLISH, SSUBSCRIBE)
	// inexactSend: a publish's receiver count does not cover every
	// subscriber (a ClusterClient subscribing on replicas).
	inexactSend bool
	store       *store

	// Clients Dial created, closed by Close.
	ownRedis redis.UniversalClient
	ownMongo *mongo.Client

	// archiveFailures counts publications whose archive write failed.
	archiveFailures atomic.Uint64
	archiveFailing  atomic.Bool // the last archive write failed: log only changes
	// archivePausedUntil (Unix ns): archive writes are skipped until then,
	// after a failure.
	archivePausedUntil atomic.Int64

	mu      sync.Mutex
	closed  bool
	nodes   map[string]*node // nil value: a Join in progress holds the id
	sweeper *sweeper
}

// New returns a Scaler that fans out and sequences through rdb (a single
// node, Sentinel failover or Cluster client) and stores sessions in db. A
// nil db gives a Scaler without a session store. New does no I/O; the
// Scaler does not close rdb or db's client.
func New(rdb redis.UniversalClient, db *mongo.Database, opts ...Option) (*Scaler, error) {
	if rdb == nil {
		return nil, errors.New("mongoredis: New with a nil Redis client")
	}
	if _, ring := rdb.(*redis.Ring); ring {
		// A Ring shards pub/sub by channel, so one PubSub per node cannot
		// hear every stream.
		return nil, errors.New("mongoredis: redis.Ring is not supported; use a Client, a failover Client or a ClusterClient")
	}
	cfg := defaults()
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Scaler{cfg: cfg, rdb: rdb, nodes: make(map[string]*node)}
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		s.cluster = true
		s.inexactSend = cc.Options().ReadOnly
	}
	if db != nil {
		s.store = newStore(s, db)
	} else if cfg.archive() {
		return nil, errors.New("mongoredis: WithArchive needs a MongoDB database")
	}
	return s, nil
}

// Dial connects to Redis (a redis:// or rediss:// URL, see redis.ParseURL)
// and MongoDB (a mongodb:// URI, database dbName) and returns a Scaler that
// owns both clients: Close closes them. It fails if either is unreachable.
// Unless the URL sets max_retries, the Redis client does not retry.
func Dial(ctx context.Context, redisURL, mongoURI, dbName string, opts ...Option) (*Scaler, error) {
	ropt, err := redis.ParseURL(redisURL)
	if err != nil {
		return nil, fmt.Errorf("mongoredis: redis URL: %w", err)
	}
	if ropt.MaxRetries == 0 {
		// A retried publish script could run twice: two offsets for one
		// publication. Unless the URL asks otherwise, fail instead.
		ropt.MaxRetries = -1
	}
	if ropt.DialerRetries == 0 {
		// go-redis dials 5 times, 100ms apart, before a call fails: every
		// publish would take half a second to fail while Redis is down.
		// The node's own loops retry with backoff already.
		ropt.DialerRetries = 1
	}
	rdb := redis.NewClient(ropt)
	mc, err := mongo.Connect(options.Client().ApplyURI(mongoURI).SetServerSelectionTimeout(DefaultCallTimeout))
	if err != nil {
		rdb.Close()
		return nil, fmt.Errorf("mongoredis: mongo URI: %w", err)
	}
	fail := func(err error) (*Scaler, error) {
		rdb.Close()
		mc.Disconnect(context.Background())
		return nil, err
	}
	s, err := New(rdb, mc.Database(dbName), opts...)
	if err != nil {
		return fail(err)
	}
	if err := rdb.Ping(ctx).Err(); err != nil {
		return fail(s.redisErr(ctx, "ping redis", err))
	}
	if err := mc.Ping(ctx, nil); err != nil {
		return fail(s.mongoErr(ctx, "ping mongo", err))
	}
	s.ownRedis, s.ownMongo = rdb, mc
	return s, nil
}

// Close closes every node joined through s, stops the session sweeper and,
// for a Scaler from Dial, closes the clients. Later calls return
// scaler.ErrClosed from Join. Close is idempotent.
func (s *Scaler) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	nodes := make([]*node, 0, len(s.nodes))
	for _, n := range s.nodes {
		if n != nil {
			nodes = append(nodes, n)
		}
	}
	s.mu.Unlock()
	for _, n := range nodes {
		n.Close()
	}
	s.mu.Lock()
	sw := s.sweeper
	s.sweeper = nil
	s.mu.Unlock()
	sw.stop()
	var err error
	if s.ownRedis != nil {
		err = s.ownRedis.Close()
	}
	if s.ownMongo != nil {
		err = errors.Join(err, s.ownMongo.Disconnect(context.Background()))
	}
	return err
}

// Join implements scaler.Scaler. It subscribes the node's message channel
// and returns once Redis confirmed it; it fails with an error wrapping
// scaler.ErrUnavailable if Redis cannot be reached.
func (s *Scaler) Join(ctx context.Context, nodeID string, h scaler.Handler) (scaler.Node, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if h == nil {
		return nil, errors.New("mongoredis: Join with a nil Handler")
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, scaler.ErrClosed
	}
	if _, dup := s.nodes[nodeID]; dup {
		s.mu.Unlock()
		return nil, fmt.Errorf("mongoredis: node %q already joined", nodeID)
	}
	s.nodes[nodeID] = nil // reserve the id while joining
	s.mu.Unlock()

	n, err := s.join(ctx, nodeID, h)

	s.mu.Lock()
	if err == nil && s.closed {
		err = scaler.ErrClosed
	}
	if err != nil {
		delete(s.nodes, nodeID)
		// Nodes that closed while this one joined left the sweeper to the
		// last one out, which may be this one.
		var sw *sweeper
		if len(s.nodes) == 0 {
			sw, s.sweeper = s.sweeper, nil
		}
		s.mu.Unlock()
		sw.stop()
		if n != nil {
			n.Close()
		}
		return nil, err
	}
	s.nodes[nodeID] = n
	if s.store != nil && (s.cfg.sessionTTL > 0 || s.cfg.archive()) && s.sweeper == nil {
		s.sweeper = startSweeper(s.store)
	}
	s.mu.Unlock()

	if s.store != nil {
		// Best effort: store calls create the indexes later if MongoDB is
		// down now, and report it then.
		cctx, cancel := s.callCtx(ctx)
		if err := s.store.ensureIndexes(cctx); err != nil {
			s.cfg.logger.Warn("mongoredis: cannot create MongoDB indexes yet", "err", err)
		}
		cancel()
		return storeNode{n}, nil
	}
	return n, nil
}

// removeNode forgets n; the last node leaving stops the sweeper.
func (s *Scaler) removeNode(n *node) {
	s.mu.Lock()
	if cur, ok := s.nodes[n.id]; ok && cur == n {
		delete(s.nodes, n.id)
	}
	var sw *sweeper
	if len(s.nodes) == 0 {
		sw, s.sweeper = s.sweeper, nil
	}
	s.mu.Unlock()
	sw.stop()
}

// callCtx bounds one backend call by the call timeout, unless ctx ends
// sooner anyway.
func (s *Scaler) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= s.cfg.callTimeout {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, s.cfg.callTimeout)
}

// redisErr wraps a Redis failure: the caller's own context error, or
// scaler.ErrUnavailable when Redis could not be reached or answered that it
// cannot serve now, or the error itself.
func (s *Scaler) redisErr(caller context.Context, op string, err error) error {
	if cerr := caller.Err(); cerr != nil {
		return fmt.Errorf("mongoredis: %s: %w (%v)", op, cerr, err)
	}
	if redisUnavailable(err) {
		return fmt.Errorf("mongoredis: %s: %w: %w", op, scaler.ErrUnavailable, err)
	}
	return fmt.Errorf("mongoredis: %s: %w", op, err)
}

func redisUnavailable(err error) bool {
	var re redis.Error
	if errors.As(err, &re) {
		// A reply from Redis: only these say "not now".
		for _, p := range []string{"LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "BUSY", "NOREPLICAS", "OOM"} {
			if strings.HasPrefix(re.Error(), p) {
				return true
			}
		}
		return false
	}
	// Network errors, timeouts (ours included), a closed client or pool.
	return true
}

// mongoErr is redisErr for MongoDB.
func (s *Scaler) mongoErr(caller context.Context, op string, err error) error {
	if cerr := caller.Err(); cerr != nil {
		return fmt.Errorf("mongoredis: %s: %w (%v)", op, cerr, err)
	}
	if mongoUnavailable(err) {
		return fmt.Errorf("mongoredis: %s: %w: %w", op, scaler.ErrUnavailable, err)
	}
	return fmt.Errorf("mongoredis: %s: %w", op, err)
}

func mongoUnavailable(err error) bool {
	if mongo.IsNetworkError(err) || mongo.IsTimeout(err) {
		return true
	}
	var se mongo.ServerError
	if errors.As(err, &se) {
		// A reply from the server: unavailable only if it says so.
		return se.HasErrorLabel("RetryableWriteError") || se.HasErrorLabel("TransientTransactionError") ||
			se.HasErrorCode(91) || se.HasErrorCode(189) || // shutting down, primary stepped down
			se.HasErrorCode(10107) || se.HasErrorCode(13435) || se.HasErrorCode(11600) || se.HasErrorCode(11602)
	}
	// Server selection errors, a disconnected client.
	return true
}

var _ scaler.Scaler = (*Scaler)(nil)
