package client

import (
	"encoding/json"
	"strconv"
)

// The client defines its own frames from docs/protocol.md instead of sharing
// the server's: it proves the document is enough to write a client.

const subprotocol = "sss.v1"

// inFrame is any frame the server sends; which fields are set depends on Type.
// Unknown fields are ignored, as the protocol asks.
type inFrame struct {
	Type string `json:"type"`
	ID   uint64 `json:"id"` // 0 when absent: ids start at 1

	// ack, reply
	Result json.RawMessage `json:"result"`
	// error
	Error *Error `json:"error"`

	// welcome
	Version  int    `json:"version"`
	Conn     string `json:"conn"`
	Session  string `json:"session"`
	User     string `json:"user"`
	Channels struct {
		User    string `json:"user"`
		Session string `json:"session"`
	} `json:"channels"`
	// Positions of the user and session channels, when the server keeps
	// history.
	Positions map[string]Position `json:"positions"`
	Ping      int64               `json:"ping"`
	Pong      int64               `json:"pong"`
	Limits    Limits              `json:"limits"`

	// pub
	Channel string          `json:"channel"`
	Sub     string          `json:"sub"`
	Event   string          `json:"event"`
	Data    json.RawMessage `json:"data"`
	From    Sender          `json:"from"`
	// Offset and Epoch, when the server keeps history: the publication's
	// position in the stream of Sub.
	Offset *uint64 `json:"offset"`
	Epoch  string  `json:"epoch"`
	// Time the server accepted the publication, ms since the Unix epoch.
	Time int64 `json:"time"`
	// join, leave: the client that came or went.
	Client json.RawMessage `json:"client"`

	// tell, ask (from the server)
	Name string `json:"name"`

	// subscribed (Channel, Offset, Epoch too)
	Server bool `json:"server"`
}

// subscribeFrame carries "since" only with WithSince: otherwise a new
// subscription starts from the channel's current position (the ack's).
type subscribeFrame struct {
	Type    string          `json:"type"` // "subscribe"
	ID      uint64          `json:"id"`
	Channel string          `json:"channel"`
	Query   json.RawMessage `json:"query,omitempty"`
	Since   *Position       `json:"since,omitempty"`
}

type unsubscribeFrame struct {
	Type    string `json:"type"` // "unsubscribe"
	ID      uint64 `json:"id"`
	Channel string `json:"channel"`
}

type publishFrame struct {
	Type       string          `json:"type"` // "publish"
	ID         uint64          `json:"id"`
	Channel    string          `json:"channel"`
	Event      string          `json:"event"`
	Data       json.RawMessage `json:"data"`
	ExceptSelf bool            `json:"exceptSelf,omitempty"`
}

// callFrame is an ask or a tell from the client.
type callFrame struct {
	Type string          `json:"type"` // "ask" or "tell"
	ID   uint64          `json:"id"`
	Name string          `json:"name"`
	Data json.RawMessage `json:"data"`
}

type resumeFrame struct {
	Type          string        `json:"type"` // "resume"
	ID            uint64        `json:"id"`
	Subscriptions []resumeEntry `json:"subscriptions"` // never nil: present means authoritative
}

// resumeEntry is one channel in a resume request: a subscription, or the
// user or session channel (with Since only).
type resumeEntry struct {
	Channel string          `json:"channel"`
	Query   json.RawMessage `json:"query,omitempty"`
	Since   *Position       `json:"since,omitempty"` // catch up after this position
	Server  bool            `json:"server,omitempty"`
}

// restoreFrame is a resume without a list: the server restores what it
// stored for the session.
type restoreFrame struct {
	Type string `json:"type"` // "resume"
	ID   uint64 `json:"id"`
}

func (f *restoreFrame) setID(id uint64) { f.ID = id }

// subResult is what an ack says of a subscription: the result of a
// subscribe, or one entry of a resume's.
type subResult struct {
	Channel string `json:"channel"`
	// Offset and Epoch (when the server keeps history): where the client
	// stands when the publications that follow begin.
	Offset *uint64 `json:"offset"`
	Epoch  string  `json:"epoch"`
	// Recovered is present when a position was sent: whether every
	// publication after it follows. Reason says why not.
	Recovered *bool  `json:"recovered"`
	Reason    string `json:"reason"`
	Error     *Error `json:"error"` // resume: this subscription was refused
	// Server: the server made it. Query: a resume restored it from the
	// session store, with this query.
	Server bool            `json:"server"`
	Query  json.RawMessage `json:"query"`
}

// position returns the result's position, zero when it has none.
func (r *subResult) position() Position {
	if r.Offset == nil || r.Epoch == "" {
		return Position{}
	}
	return Position{Offset: *r.Offset, Epoch: r.Epoch}
}

type resumeResult struct {
	Subscriptions []subResult `json:"subscriptions"`
}

type replyFrame struct {
	Type   string          `json:"type"` // "reply"
	ID     uint64          `json:"id"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

var pongFrame = []byte(`{"type":"pong"}`)

// readyFrame ends the server's hold of the user and session channels on a
// link that does not resume (docs/protocol.md, "ready"). It has no id and
// gets no reply.
var readyFrame = []byte(`{"type":"ready"}`)

// request is an outgoing frame that carries an id.
type request interface{ setID(uint64) }

func (f *subscribeFrame) setID(id uint64)   { f.ID = id }
func (f *unsubscribeFrame) setID(id uint64) { f.ID = id }
func (f *publishFrame) setID(id uint64)     { f.ID = id }
func (f *callFrame) setID(id uint64)        { f.ID = id }
func (f *resumeFrame) setID(id uint64)      { f.ID = id }

// Limits are the server's limits for a connection, from its welcome frame.
type Limits struct {
	// MaxMessage is the largest WebSocket message the server accepts, in
	// bytes. The client refuses larger frames with ErrTooLarge itself.
	MaxMessage int `json:"maxMessage"`
	// MaxPayload is the largest data of a publication, tell or ask, and of
	// an ask's result, in bytes of JSON; the server refuses larger with
	// ErrTooLarge.
	MaxPayload int `json:"maxPayload"`
	// MaxSubscriptions is the number of subscriptions allowed on a
	// connection (user and session channels not counted).
	MaxSubscriptions int `json:"maxSubscriptions"`
	// Concurrency is the number of asks and tells that may be in flight at
	// once; the client waits for a free slot instead of exceeding it.
	Concurrency int `json:"concurrency"`
}

// Position is a place in a channel's stream (docs/protocol.md, "Positions
// and catch-up"): the offset of the last publication seen, in an epoch, an
// opaque string that changes when the stream's history was lost. Offsets
// only compare within one epoch. The zero Position means unknown: the server
// keeps no history.
type Position struct {
	Offset uint64 `json:"offset"`
	Epoch  string `json:"epoch"`
}

// IsZero reports whether p is unknown.
func (p Position) IsZero() bool { return p.Epoch == "" }

// String returns "offset@epoch", or "none" for the zero Position.
func (p Position) String() string {
	if p.IsZero() {
		return "none"
	}
	return strconv.FormatUint(p.Offset, 10) + "@" + p.Epoch
}

// Sender identifies the client connection that published a message, stamped
// by the server. It is zero for publications made by the server.
type Sender struct {
	User string `json:"user,omitempty"`
	Conn string `json:"conn,omitempty"`
}
