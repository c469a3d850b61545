package nats

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/superscaled/sss/scaler"
)

// Scaler is a scaler.Scaler on NATS. Create it with Dial or New; close it
// with Close once the servers using it are closed.
type Scaler struct {
	nc  *nats.Conn
	own bool // Close closes nc
	js  jetstream.JetStream
	o   config

	// Subject roots.
	hRoot, dRoot, nRoot string

	hist     jetstream.Stream
	epochs   jetstream.KeyValue
	sessions jetstream.KeyValue
	presence jetstream.KeyValue
	nodesKV  jetstream.KeyValue
	// presenceStream is the stream under the presence bucket, purged by
	// subject so that removed entries leave no delete marker behind.
	presenceStream jetstream.Stream
	nodesStream    jetstream.Stream
	// kvStreams are the buckets' streams by bucket name.
	kvStreams map[string]jetstream.Stream

	prevReconnect nats.ConnHandler
	prevError     nats.ErrHandler

	// roots is what this Scaler knows of the root streams it publishes
	// on (history.go).
	rootsMu sync.Mutex
	roots   map[string]*rootState

	repairMu   sync.Mutex
	lastRepair time.Time

	mu     sync.Mutex
	closed bool
	nodes  map[string]*node
}

// Dial connects to the NATS servers at urls (comma-separated, as
// nats.Connect takes them) and returns a Scaler that owns the connection:
// it reconnects forever, pings every DefaultPingInterval (a connection
// that died silently is replaced after two unanswered pings), and Close
// closes it. Pass TLS and credentials with WithNATSOptions (which may
// override these settings too).
func Dial(ctx context.Context, urls string, opts ...Option) (*Scaler, error) {
	o := defaults()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	nopts := []nats.Option{nats.Name("sss"), nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond),
		// nats.go's default (a ping every 2 minutes, stale after 2 unanswered)
		// leaves a connection that died without a reset (a NAT or firewall
		// that forgot it, a peer gone from the network) in use for 4 to 6
		// minutes: the instance hears nothing and every call times out.
		// Writes do not fail on such a connection; only an unanswered ping
		// tells, here within 10 to 15 s, at the cost of one small frame
		// each way every 5 s.
		nats.PingInterval(DefaultPingInterval), nats.MaxPingsOutstanding(2),
		// No reconnect buffer: what is written while the connection is down
		// fails at once (ErrUnavailable) instead of waiting in nats.go's
		// buffer to be sent on reconnect, maybe minutes after its call
		// failed: a chat message reported unsent must not appear later.
		nats.ReconnectBufSize(-1)}
	if dl, ok := ctx.Deadline(); ok {
		nopts = append(nopts, nats.Timeout(time.Until(dl)))
	}
	nc, err := nats.Connect(urls, append(nopts, o.natsOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("nats scaler: connect: %w: %v", scaler.ErrUnavailable, err)
	}
	s, err := newScaler(ctx, nc, o)
	if err != nil {
		nc.Close()
		return nil, err
	}
	s.own = true
	return s, nil
}

// New returns a Scaler on the caller's connection, which it does not
// close. Give the connection nats.MaxReconnects(-1) (or a large number):
// once nats.go gives up reconnecting the Scaler is unavailable for good;
// and a ping interval of seconds (nats.PingInterval, as Dial does), or a
// connection that died without a reset stays in use for minutes.
// New chains its own reconnect and error handlers in front of the
// connection's, and Close puts the previous ones back: close several
// Scalers sharing one connection in the reverse order of their creation.
func New(ctx context.Context, nc *nats.Conn, opts ...Option) (*Scaler, error) {
	if nc == nil {
		return nil, errors.New("nats scaler: nil connection")
	}
	o := defaults()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	return newScaler(ctx, nc, o)
}

func newScaler(ctx context.Context, nc *nats.Conn, o config) (*Scaler, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("nats scaler: %w", err)
	}
	s := &Scaler{
		nc: nc, js: js, o: o,
		hRoot: o.prefix + ".h", dRoot: o.prefix + ".d", nRoot: o.prefix + ".n",
		nodes:     make(map[string]*node),
		kvStreams: make(map[string]jetstream.Stream),
		roots:     make(map[string]*rootState),
	}
	if err := s.setup(ctx); err != nil {
		return nil, err
	}
	s.prevReconnect = nc.Opts.ReconnectedCB
	s.prevError = nc.Opts.AsyncErrorCB
	nc.SetReconnectHandler(s.onReconnect)
	nc.SetErrorHandler(s.onAsyncError)
	return s, nil
}

func (s *Scaler) replicas() int {
	if s.o.replicas > 0 {
		return s.o.replicas
	}
	if s.nc.ConnectedClusterName() != "" && len(s.nc.Servers()) >= 3 {
		return 3
	}
	return 1
}

// setup creates or updates the history stream, creates the buckets if
// missing, and binds the Scaler's handles to them.
func (s *Scaler) setup(ctx context.Context) error { return s.ensure(ctx, true) }

// buckets are the key-value buckets: name, description, TTL.
func (s *Scaler) buckets() []bucketSpec {
	return []bucketSpec{
		{"epochs", "sss epochs of streams with empty histories", s.o.epochTTL},
		{"sessions", "sss stored subscriptions per session", s.o.sessionTTL},
		{"presence", "sss presence entries", 0},
		{"nodes", "sss node heartbeats", 0},
	}
}

type bucketSpec struct {
	name, desc string
	ttl        time.Duration
}

// ensure creates the stream and the buckets where missing and, when bind,
// sets the Scaler's handles on them. Handles name the stream and buckets,
// so once bound they survive their being created again (repair).
func (s *Scaler) ensure(ctx context.Context, bind bool) error {
	ctx, cancel := context.WithTimeout(ctx, 4*s.o.callTimeout)
	defer cancel()
	storage := jetstream.FileStorage
	if s.o.memory {
		storage = jetstream.MemoryStorage
	}
	r := s.replicas()
	hist, err := s.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        s.o.prefix + "-history",
		Description: "sss publications, numbered per stream",
		Subjects:    []string{s.hRoot + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxMsgs:     s.o.historyMsgs,
		MaxBytes:    s.o.historyBytes,
		MaxAge:      s.o.historyAge,
		Storage:     storage,
		Replicas:    r,
		// Deliveries: the server republishes each stored publication, in
		// stream order, to the delivery subjects nodes subscribe to.
		RePublish: &jetstream.RePublish{Source: s.hRoot + ".>", Destination: s.dRoot + ".>"},
	})
	if err != nil {
		return s.setupErr(ctx, "history stream", err)
	}
	bound := make([]jetstream.KeyValue, 0, 4)
	for _, spec := range s.buckets() {
		cfg := jetstream.KeyValueConfig{
			Bucket: s.o.prefix + "-" + spec.name, Description: spec.desc, TTL: spec.ttl, History: 1,
			Storage: jetstream.StorageType(storage), Replicas: r,
		}
		// Created only if missing: updating a bucket turns direct gets
		// back on (see leaderReads).
		b, err := s.js.KeyValue(ctx, cfg.Bucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			b, err = s.js.CreateKeyValue(ctx, cfg)
			if errors.Is(err, jetstream.ErrBucketExists) {
				b, err = s.js.KeyValue(ctx, cfg.Bucket)
			}
		}
		if err != nil {
			return s.setupErr(ctx, spec.name+" bucket", err)
		}
		b, st, err := s.leaderReads(ctx, b)
		if err != nil {
			return err
		}
		if bind {
			s.kvStreams[b.Bucket()] = st
		}
		bound = append(bound, b)
	}
	if bind {
		s.hist = hist
		s.epochs, s.sessions, s.presence, s.nodesKV = bound[0], bound[1], bound[2], bound[3]
		s.presenceStream = s.kvStreams[s.presence.Bucket()]
		s.nodesStream = s.kvStreams[s.nodesKV.Bucket()]
	}
	return nil
}

// repair creates the stream and buckets again when an error says they are
// gone (NATS restarted without its storage, an operator deleted them), at
// most once a second; the call that failed still fails, the next ones
// work. Offsets start again in new epochs: the epochs went with them.
func (s *Scaler) repair(err error) {
	if !errors.Is(err, jetstream.ErrStreamNotFound) && !errors.Is(err, jetstream.ErrNoStreamResponse) &&
		!errors.Is(err, jetstream.ErrBucketNotFound) && !errors.Is(err, nats.ErrNoResponders) {
		return
	}
	if !s.repairMu.TryLock() {
		return
	}
	defer s.repairMu.Unlock()
	if time.Since(s.lastRepair) < time.Second {
		return
	}
	s.lastRepair = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), s.o.callTimeout)
	defer cancel()
	_ = s.ensure(ctx, false)
}

// failed is fail, after a repair if the error says the stream or a bucket
// is gone.
func (s *Scaler) failed(ctx context.Context, op string, err error) error {
	s.repair(err)
	return fail(ctx, op, err)
}

// leaderReads turns off direct gets on a bucket's stream and binds the
// bucket again: with replicas, a direct get may be answered by a replica
// that lags, and the scaler's compare-and-set loops need the latest value.
func (s *Scaler) leaderReads(ctx context.Context, b jetstream.KeyValue) (jetstream.KeyValue, jetstream.Stream, error) {
	name := "KV_" + b.Bucket()
	for range 5 {
		st, err := s.js.Stream(ctx, name)
		if err != nil {
			return nil, nil, s.setupErr(ctx, b.Bucket()+" stream", err)
		}
		cfg := st.CachedInfo().Config
		if !cfg.AllowDirect && !cfg.MirrorDirect {
			// Bound now: the handles read the setting once.
			if b, err = s.js.KeyValue(ctx, b.Bucket()); err != nil {
				return nil, nil, s.setupErr(ctx, "bucket", err)
			}
			return b, st, nil
		}
		cfg.AllowDirect, cfg.MirrorDirect = false, false
		if _, err := s.js.UpdateStream(ctx, cfg); err != nil {
			return nil, nil, s.setupErr(ctx, b.Bucket()+" stream", err)
		}
	}
	return nil, nil, fmt.Errorf("nats scaler: %s: direct gets keep being turned on: %w", name, scaler.ErrUnavailable)
}

func (s *Scaler) setupErr(ctx context.Context, what string, err error) error {
	if ctx.Err() == nil && errors.Is(err, jetstream.ErrJetStreamNotEnabled) {
		return fmt.Errorf("nats scaler: %s: %w (JetStream is not enabled on the server: run it with -js)", what, scaler.ErrUnavailable)
	}
	return fmt.Errorf("nats scaler: %s: %w: %v", what, scaler.ErrUnavailable, err)
}

// Conn returns the NATS connection.
func (s *Scaler) Conn() *nats.Conn { return s.nc }

// Close closes the nodes still joined and, if Dial made it, the
// connection. It is idempotent.
func (s *Scaler) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	nodes := make([]*node, 0, len(s.nodes))
	for _, n := range s.nodes {
		nodes = append(nodes, n)
	}
	s.mu.Unlock()
	for _, n := range nodes {
		n.Close()
	}
	s.nc.SetReconnectHandler(s.prevReconnect)
	s.nc.SetErrorHandler(s.prevError)
	if s.own {
		s.nc.Close()
	}
	return nil
}

// Crash stops the node nodeID as if its process died: it receives nothing
// more, stops heartbeating, and its Close (which its owner still calls)
// leaves its presence entries for the other nodes to reap. For tests.
func (s *Scaler) Crash(nodeID string) bool {
	s.mu.Lock()
	n := s.nodes[nodeID]
	s.mu.Unlock()
	if n == nil {
		return false
	}
	n.crash()
	return true
}

// Join attaches a node.
func (s *Scaler) Join(ctx context.Context, nodeID string, h scaler.Handler) (scaler.Node, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if nodeID == "" || h == nil {
		return nil, errors.New("nats scaler: Join needs a node id and a handler")
	}
	subj := s.nRoot + "." + escapeToken(nodeID)
	if err := checkSubject(subj); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, scaler.ErrClosed
	}
	if s.nodes[nodeID] != nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("nats scaler: node %q already joined", nodeID)
	}
	n := newNode(s, nodeID, h)
	s.nodes[nodeID] = n
	s.mu.Unlock()
	if err := n.start(ctx, subj); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

func (s *Scaler) forget(n *node) {
	s.mu.Lock()
	if s.nodes[n.id] == n {
		delete(s.nodes, n.id)
	}
	s.mu.Unlock()
}

func (s *Scaler) liveNodes() []*node {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*node, 0, len(s.nodes))
	for _, n := range s.nodes {
		out = append(out, n)
	}
	return out
}

// onReconnect runs once nats.go is connected again and has sent the
// subscriptions anew: every stream may have missed deliveries meanwhile.
func (s *Scaler) onReconnect(nc *nats.Conn) {
	for _, n := range s.liveNodes() {
		n.reconnected()
	}
	if s.prevReconnect != nil {
		s.prevReconnect(nc)
	}
}

// onAsyncError hears of subscriptions whose pending buffer overflowed
// (nats.go dropped messages): their stream missed deliveries.
func (s *Scaler) onAsyncError(nc *nats.Conn, sub *nats.Subscription, err error) {
	if sub != nil && errors.Is(err, nats.ErrSlowConsumer) && strings.HasPrefix(sub.Subject, s.dRoot+".") {
		for _, n := range s.liveNodes() {
			n.dropped(sub)
		}
	}
	if s.prevError != nil {
		s.prevError(nc, sub, err)
	}
}

// call bounds one request to NATS by the call timeout.
func (s *Scaler) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.o.callTimeout)
}

// fail turns an error from NATS into one the caller can test: the caller's
// context error when it is done, otherwise ErrUnavailable.
func fail(ctx context.Context, op string, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("nats scaler: %s: %w", op, cerr)
	}
	return fmt.Errorf("nats scaler: %s: %w: %v", op, scaler.ErrUnavailable, err)
}

var _ scaler.Scaler = (*Scaler)(nil)
