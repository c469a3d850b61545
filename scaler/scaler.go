// Package scaler defines the contract between an sss.Server and the backend
// that joins many server instances into one cluster: cross-instance fan-out
// of publications, node-to-node messages (used to route tells and asks to a
// connection wherever it is), and the persistence of each session's
// subscriptions.
//
// The contract is split into small interfaces so a backend can be written a
// piece at a time:
//
//   - [Scaler] attaches server instances ("nodes") to the backend.
//   - [Broker] is the part every backend must have: publish, per-node
//     interest in streams, and node-to-node messages.
//   - [SessionStore] is optional: a [Node] that also implements it persists
//     subscriptions per session, so a client that reconnects to any instance
//     gets them back.
//   - [History] is optional: a [Node] that also implements it numbers the
//     publications of every stream and keeps a bounded history of them, so
//     a client that reconnects catches up on what it missed, exactly once
//     and in order.
//   - [Presence] is optional: a [Node] that also implements it keeps, per
//     channel, who is subscribed on every node, and removes the entries of
//     a node that died without a goodbye within a bounded time.
//
// The package scalertest checks an implementation against all of this; run
// it from your backend's tests.
//
// # Streams and hierarchy
//
// Channels are hierarchical: levels are separated by '.'. A publication on
// "news.uk.london" belongs to three streams: "news", "news.uk" and
// "news.uk.london". A node that subscribed to stream "news" receives it once,
// tagged with Stream "news"; a node subscribed to both "news" and "news.uk"
// receives it twice, once per stream (the server de-duplicates per
// connection). Channels that start with [ReservedPrefix] are flat: they
// belong only to their own stream, so user and session channels never leak
// into each other whatever characters their ids hold.
//
// # Guarantees a backend must give
//
//   - Per-stream order: all nodes observe the publications of one stream in
//     the same order, and publications made by one goroutine through one node
//     are delivered in the order Publish returned.
//   - Publish returns nil only once the backend has accepted the publication
//     for delivery; when the backend is unreachable it returns an error
//     (wrapping [ErrUnavailable]) instead of silently losing it.
//   - Subscribe and Unsubscribe are idempotent per node and stream (the server
//     reference-counts its local subscribers and calls Subscribe once per
//     stream). Deliveries for a stream start at the latest when Subscribe
//     returns and stop at the latest when Unsubscribe returns. A backend that
//     loses its link keeps the node's interests and re-establishes them by
//     itself when the link returns, then calls Handler.HandleMissed for each
//     (deliveries may have been lost meanwhile); Subscribe may report the
//     outage with an error, but the interest is still recorded.
//   - Handler methods are called from goroutines owned by the backend, never
//     concurrently for the same stream on the same node, and must not block:
//     the server only enqueues.
//   - After Node.Close, the node receives nothing more and its methods return
//     [ErrClosed].
package scaler

import (
	"context"
	"errors"
	"strings"
)

// ReservedPrefix starts the names of channels that clients cannot subscribe
// or publish to: user, session and internal channels. Such channels are flat.
const ReservedPrefix = "$"

// Errors a backend returns. Wrap them (fmt.Errorf("...: %w", ErrUnavailable))
// to add detail; callers test with errors.Is.
var (
	// ErrClosed is returned by every method of a closed Node or Scaler.
	ErrClosed = errors.New("scaler: closed")
	// ErrUnavailable means the backend cannot be reached now; the caller may
	// retry later. The node keeps its interests and recovers by itself.
	ErrUnavailable = errors.New("scaler: backend unavailable")
	// ErrUnknownNode is returned by Send when the backend knows that no node
	// with that id is attached. Backends that cannot know return nil.
	ErrUnknownNode = errors.New("scaler: unknown node")
	// ErrPositionLost is returned by History.Since when the publications
	// after a position cannot all be returned: the epoch changed or they
	// were trimmed. The client must reload its state from elsewhere.
	ErrPositionLost = errors.New("scaler: position lost")
)

// Sender identifies the client connection that published, stamped by the
// server so it cannot be forged. It is zero for server-side publications.
type Sender struct {
	User string `json:"user,omitempty"`
	Conn string `json:"conn,omitempty"`
}

// Publication is one message published to a channel. Data is the JSON
// encoding of the payload, compact (it never contains a raw newline).
// Backends must treat a Publication as immutable once passed to Publish or a
// Handler: the server shares it between goroutines.
//
// A backend carries every field as it is, without interpreting Event,
// Data, Sender, Time or Except; the server gives its own meaning to events
// that start with [ReservedPrefix] (tells to a user or session, disconnect
// orders).
type Publication struct {
	Channel string
	Event   string
	Data    []byte
	Sender  Sender
	// Time is when the server accepted the publication, in milliseconds
	// since the Unix epoch.
	Time int64
	// Except is a connection id the publication is not delivered to (a
	// sender who does not want its own message back); empty for none.
	Except string
	// Transient publications reach the nodes subscribed at the time of
	// Publish and nothing else: a backend with History gives them no offset
	// and does not keep them, so a node that missed one cannot know. The
	// server uses them for what only matters to connections that are there
	// now (a tell to a user's connections, an order to disconnect them).
	Transient bool
}

// Delivery is one publication arriving at a node through one stream it is
// subscribed to.
type Delivery struct {
	// Stream is the stream the node subscribed to: Pub.Channel itself or, for
	// a hierarchical channel, one of its ancestors.
	Stream string
	Pub    *Publication
	// Offset and Epoch place the publication in Stream's history (see
	// History). Both are zero for transient publications and for backends
	// without History.
	Offset uint64
	Epoch  string
}

// Position is a place in a stream's history: the offset of the last
// publication seen (0: none yet) in the stream's epoch.
type Position struct {
	Offset uint64 `json:"offset"`
	Epoch  string `json:"epoch"`
}

// Entry is one publication kept in a stream's history.
type Entry struct {
	Offset uint64
	Pub    *Publication
}

// History numbers publications and keeps them per stream. A Node may
// implement it; the server then offers exact catch-up on reconnect.
//
// A backend with History must also guarantee:
//
//   - Every publication that is not Transient gets, in each of its
//     streams, the next offset of that stream (1, 2, 3, ...), and is
//     delivered with it. Appending to a stream's history and delivering it
//     are atomic with respect to other publishers: deliveries of one stream
//     reach every node in offset order. A node may miss deliveries while its
//     link to the backend is broken, but must never receive them out of
//     order, and must be told with Handler.HandleMissed once the link is
//     back (the server then fills what it missed from Since, as it does
//     when it notices a jump in offsets).
//   - Each stream has an epoch, an opaque non-empty string that changes
//     whenever offsets could restart or history could have been lost other
//     than by trimming: the backend restarted empty, the stream's metadata
//     expired, it was recreated. Offsets only mean something within an epoch.
//   - History is bounded per stream by count and by age (backend options);
//     trimming never changes the epoch.
type History interface {
	// Since returns up to limit entries of stream with offsets greater than
	// pos.Offset, in order, and the stream's current position (the offset
	// of its last publication). With limit 0 it returns only the position.
	// A zero pos (no epoch) asks from the start of the current epoch's
	// retained history without checking continuity. Since returns an error
	// wrapping ErrPositionLost if pos.Epoch is not the current epoch, or if
	// entries right after pos.Offset were trimmed (or pos.Offset is beyond
	// the stream's); the current position is returned with that error too.
	// A stream nobody ever published to has offset 0 and a stable epoch.
	Since(ctx context.Context, stream string, pos Position, limit int) ([]Entry, Position, error)
}

// Handler receives what the backend delivers to a node. Its methods must be
// fast and must not block; they are never called after Node.Close returns.
type Handler interface {
	// HandleDelivery is called once per publication per stream the node is
	// subscribed to.
	HandleDelivery(d Delivery)
	// HandleMessage is called with a message another node (or this one) sent
	// to this node with Send.
	HandleMessage(from string, msg []byte)
	// HandleMissed says that deliveries of stream may have been lost: the
	// node's link to the backend broke and was re-established, and the
	// stream's deliveries flow again. A backend calls it for each stream
	// the node is subscribed to on that link, once the stream is subscribed
	// again. The server then compares the stream's position in History with
	// the last delivery it received, and fills the difference. A backend
	// whose nodes cannot lose deliveries never calls it.
	HandleMissed(stream string)
}

// Scaler attaches server instances to a backend. One Scaler value may be
// shared by several servers in one process: each joins as its own node, and
// they behave exactly as if they ran on different machines.
type Scaler interface {
	// Join attaches a node with a unique id. Deliveries and messages for the
	// node go to h until the returned Node is closed.
	Join(ctx context.Context, nodeID string, h Handler) (Node, error)
}

// Node is one server instance's handle on the backend.
type Node interface {
	Broker
	// Close detaches the node: its interests are dropped and its handler is
	// no longer called once Close returns. Close is idempotent.
	Close() error
}

// Broker carries publications and node-to-node messages.
type Broker interface {
	// Publish delivers pub to every node subscribed to one of its streams,
	// this node included, once per such stream.
	Publish(ctx context.Context, pub *Publication) error
	// Subscribe declares this node's interest in a stream.
	Subscribe(ctx context.Context, stream string) error
	// Unsubscribe withdraws it. Unsubscribing a stream not subscribed is a
	// no-op.
	Unsubscribe(ctx context.Context, stream string) error
	// Send delivers msg to the node with the given id (this node included),
	// at most once. Messages from one sender to one node arrive in order.
	Send(ctx context.Context, nodeID string, msg []byte) error
}

// StoredSubscription is a subscription persisted for a session.
type StoredSubscription struct {
	Channel string
	// Query is the JSON query the client subscribed with (nil when none), so
	// the subscription can be authorised again when restored.
	Query []byte
	// Position is where the session last stood on the channel (zero when
	// unknown), so that a restored subscription catches up from there.
	Position Position
}

// ClientInfo is one connection present on a channel.
type ClientInfo struct {
	Conn    string `json:"conn"`
	User    string `json:"user,omitempty"`
	Session string `json:"session,omitempty"`
	// Info is public data the application attached to the connection (a
	// display name, a status), compact JSON; nil for none.
	Info []byte `json:"info,omitempty"`
}

// PresenceCounts summarises a channel's presence.
type PresenceCounts struct {
	// Clients is the number of connections present.
	Clients int `json:"clients"`
	// Users is the number of distinct non-empty user ids among them
	// (anonymous connections are not counted).
	Users int `json:"users"`
}

// Presence keeps, per channel, the connections present on it on every
// node. A Node may implement it; the server then answers presence reads
// and, with PresenceHandler, announces the clients of dead nodes as gone.
//
// Entries belong to the node that joined them. A backend with Presence
// must also guarantee:
//
//   - Join and Leave cost O(1) in the number of entries of the channel
//     (a channel with 10,000 present clients must not make each join
//     scan them); Counts is O(1) too; Present is O(n) in the channel's
//     entries.
//   - A node that is unreachable still records its Joins and Leaves
//     locally (returning an error wrapping ErrUnavailable) and writes them
//     once its link returns, as it does with Subscribe.
//   - The entries of a node that stopped without Close (its process died,
//     it was cut off) disappear within a bounded time the backend
//     documents (its presence TTL, kept alive by a heartbeat), and each is
//     then reported once, through PresenceHandler.HandleGone, to one node
//     still alive. A node that comes back after its entries were removed
//     writes them again.
//   - Close removes the node's entries without reporting them: the server
//     left its channels before closing.
type Presence interface {
	// Join records c as present on channel, replacing an entry with the
	// same connection id. It is idempotent.
	Join(ctx context.Context, channel string, c ClientInfo) error
	// Leave removes the entry of connection conn from channel; an absent
	// entry is not an error.
	Leave(ctx context.Context, channel, conn string) error
	// Present lists the channel's entries, in no particular order.
	Present(ctx context.Context, channel string) ([]ClientInfo, error)
	// Counts summarises the channel's entries.
	Counts(ctx context.Context, channel string) (PresenceCounts, error)
}

// PresenceHandler is implemented by a Handler that wants to hear of
// presence entries removed because their node died. The server's does: it
// publishes a leave event for each.
type PresenceHandler interface {
	// HandleGone reports entries of channel removed because their node
	// stopped heartbeating. Unlike the Handler's methods it may block,
	// up to ctx: a backend calls it from its own reaping goroutine, not
	// from a delivery path.
	HandleGone(ctx context.Context, channel string, gone []ClientInfo)
}

// SessionStore persists the subscriptions of each session so that a client
// reconnecting to any node can have them restored. A Node may implement it.
// A session is named by an opaque key the server chooses (it joins the user
// id and the session id, so that two users never share one); a backend
// stores it as it is.
type SessionStore interface {
	// AddSubscription records sub for the session, replacing any entry for
	// the same channel. It is idempotent.
	AddSubscription(ctx context.Context, session string, sub StoredSubscription) error
	// RemoveSubscription deletes the session's entry for channel; removing
	// an absent entry is not an error.
	RemoveSubscription(ctx context.Context, session, channel string) error
	// Subscriptions lists the session's entries, ordered by channel. An
	// unknown session has none.
	Subscriptions(ctx context.Context, session string) ([]StoredSubscription, error)
	// TouchSession marks the session as alive, pushing back its expiry.
	// A backend deletes what it stores for a session once it has not been
	// touched (nor added to) for a time of its choosing (its session TTL).
	TouchSession(ctx context.Context, session string) error
}

// Pinger is implemented by a Node that can check its backend is reachable,
// for readiness probes.
type Pinger interface {
	// Ping returns nil when the backend answers, an error wrapping
	// ErrUnavailable when it cannot be reached, ErrClosed after Close.
	Ping(ctx context.Context) error
}

// PositionUpdater is an optional extension of SessionStore: a store that
// implements it records where a session stands on a channel in one write,
// without the read the server makes otherwise.
type PositionUpdater interface {
	// UpdatePosition sets the position of the session's entry for channel
	// if there is one; it never creates an entry (a newer connection of
	// the session may have removed it).
	UpdatePosition(ctx context.Context, session, channel string, pos Position) error
}

// Streams returns the streams a publication on channel belongs to, from the
// root down: "a.b.c" gives ["a", "a.b", "a.b.c"]; a reserved channel gives
// only itself.
func Streams(channel string) []string {
	if strings.HasPrefix(channel, ReservedPrefix) {
		return []string{channel}
	}
	out := make([]string, 0, strings.Count(channel, ".")+1)
	for i := 0; i < len(channel); i++ {
		if channel[i] == '.' {
			out = append(out, channel[:i])
		}
	}
	return append(out, channel)
}
