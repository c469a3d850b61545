// Package sss (Super Scaled Sockets) is a framework for real-time WebSocket
// applications that run on many server instances at once.
//
// A [Server] is an [net/http.Handler]: mount it at any path. Clients connect
// with the sss.v1 protocol (docs/protocol.md), subscribe to hierarchical
// channels, publish where allowed, and ask or tell the server; the server
// publishes to channels, users and sessions, and tells or asks any
// connection wherever in the cluster it is. A [scaler.Scaler] joins the
// instances: the default is in-process (package scaler/memory); the
// Redis+MongoDB backend is package scaler/mongoredis, and package scaler
// documents the contract for writing your own.
//
// Where to look, by file: server.go (upgrade, connection lifecycle,
// shutdown), request.go (a client's requests: subscribe, unsubscribe,
// publish), catchup.go (resume and catch-up from history), asktell.go (ask
// and tell both ways), publish.go (server publications), hub.go (this
// instance's connections and subscribers, fan-out), conn.go (one
// connection: send queue, writer, liveness), store.go (the session store's
// write-behind), frame.go (the wire format).
// docs/architecture.md draws the arrows between them.
//
// WebSockets are served by github.com/coder/websocket, the maintained
// continuation of nhooyr.io/websocket.
package sss

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/superscaled/sss/scaler"
	"github.com/superscaled/sss/scaler/memory"
)

// Subprotocol is the WebSocket subprotocol of protocol v1.
const Subprotocol = "sss.v1"

// Server is an sss server: an http.Handler for WebSocket upgrades plus the
// API to publish, tell and ask. Create it with New.
type Server struct {
	cfg    config
	log    *slog.Logger
	nodeID string

	// hub owns this instance's connections and their subscriptions.
	hub hub

	// The scaler, joined on first use (server.go).
	joinMu  sync.Mutex
	node    scaler.Node
	nodeRef atomic.Pointer[scaler.Node] // lock-free read of node
	store   *storeWriter                // nil when the scaler does not persist sessions
	// The goroutines that live as long as the node (hub.go's checkMissed).
	stopNode context.CancelFunc
	nodeWG   sync.WaitGroup

	hmu   sync.RWMutex
	asks  map[string]AskHandler
	tells map[string]TellHandler

	// Lifecycle (server.go): requests being served, and closing.
	lmu     sync.Mutex
	closing bool
	active  int           // requests being served
	idle    chan struct{} // closed when closing and active == 0
	closed  atomic.Bool   // set once Shutdown or Close began

	// Server asks awaiting a reply (asktell.go).
	pending struct {
		mu  sync.Mutex
		seq uint64
		m   map[uint64]chan nodeMsg
	}

	// workers runs the connections' short-lived goroutines (workers.go).
	workers workers

	// lateParsers counts session parser calls past their deadline (session.go).
	lateParsers atomic.Int32

	stats counters
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
	if err := cfg.validate(); err != nil {
		return nil, err
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
		idle:   make(chan struct{}),
	}
	s.hub.init()
	s.pending.m = make(map[uint64]chan nodeMsg)
	return s, nil
}

// checkPayload refuses data larger than the payload limit.
func (s *Server) checkPayload(what string, data []byte) *Error {
	if len(data) > s.cfg.maxPayload {
		return Errorf(CodeTooLarge, "%s of %d bytes exceeds the limit of %d", what, len(data), s.cfg.maxPayload)
	}
	return nil
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
	// OnDisconnect runs when the connection has ended; reason says why
	// (errors.Is with ErrClientClosed, ErrServerClosed, ErrPingTimeout,
	// ErrSlowConsumer, ErrWriteFailed, ErrKicked, ErrResync,
	// ErrMessageTooBig, ErrSessionExpired, or a network error).
	OnDisconnect func(c *Conn, reason error)
	// OnSubscribe and OnUnsubscribe run after a subscription (the client's
	// or the server's) was made or ended. OnUnsubscribe also runs for each
	// subscription a connection held when it ended, before OnDisconnect
	// (where Conn.Subscriptions still lists them).
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
