package client

import "encoding/json"

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
	Ping   int64  `json:"ping"`
	Pong   int64  `json:"pong"`
	Limits Limits `json:"limits"`

	// pub
	Channel string          `json:"channel"`
	Sub     string          `json:"sub"`
	Event   string          `json:"event"`
	Data    json.RawMessage `json:"data"`
	From    Sender          `json:"from"`
	// Offset and Epoch are not sent by protocol v1; a later version adds them
	// per channel for resume with catch-up. Decoded now so positions can be
	// kept per subscription (see Subscription.pos).
	Offset *uint64 `json:"offset"`
	Epoch  string  `json:"epoch"`

	// tell, ask (from the server)
	Name string `json:"name"`
}

type subscribeFrame struct {
	Type    string          `json:"type"` // "subscribe"
	ID      uint64          `json:"id"`
	Channel string          `json:"channel"`
	Query   json.RawMessage `json:"query,omitempty"`
}

type unsubscribeFrame struct {
	Type    string `json:"type"` // "unsubscribe"
	ID      uint64 `json:"id"`
	Channel string `json:"channel"`
}

type publishFrame struct {
	Type    string          `json:"type"` // "publish"
	ID      uint64          `json:"id"`
	Channel string          `json:"channel"`
	Event   string          `json:"event"`
	Data    json.RawMessage `json:"data"`
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

// resumeEntry is one subscription in a resume request and its reply. When
// the protocol adds history, the subscription's position (Subscription.pos)
// goes here.
type resumeEntry struct {
	Channel string          `json:"channel"`
	Query   json.RawMessage `json:"query,omitempty"`
	Error   *Error          `json:"error,omitempty"` // in the reply only
}

type resumeResult struct {
	Subscriptions []resumeEntry `json:"subscriptions"`
}

type replyFrame struct {
	Type   string          `json:"type"` // "reply"
	ID     uint64          `json:"id"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

var pongFrame = []byte(`{"type":"pong"}`)

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
	// MaxSubscriptions is the number of subscriptions allowed on a
	// connection (user and session channels not counted).
	MaxSubscriptions int `json:"maxSubscriptions"`
	// Concurrency is the number of asks and tells that may be in flight at
	// once; the client waits for a free slot instead of exceeding it.
	Concurrency int `json:"concurrency"`
}

// Sender identifies the client connection that published a message, stamped
// by the server. It is zero for publications made by the server.
type Sender struct {
	User string `json:"user,omitempty"`
	Conn string `json:"conn,omitempty"`
}
