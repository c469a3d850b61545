// Package client is the Go client of sss ("Super Scaled Sockets"). It speaks
// the sss.v1 wire protocol (docs/protocol.md) and nothing else: it shares no
// code with the server.
//
// A Client keeps one WebSocket to one server of a cluster. When the link
// drops it reconnects by itself (with backoff and full jitter, failing over
// between the URLs it knows, from a random one so that the clients of a dead
// instance spread over the others: see WithURLs), restores its
// subscriptions with one resume request, and reports each step through its
// hooks. When the server keeps history, the resume catches up exactly: every
// publication missed on each subscription and on the user and session
// channels is delivered once, in order, before the live ones; when that is
// impossible (history trimmed or lost), Hooks.OnGap says so (see
// RecoverInfo, Position). Requests in flight when the link drops fail with
// ErrDisconnected; new ones wait for the next link within their context (or
// fail fast, with WithFailFast).
//
// # Configuration
//
// Dial takes Options and Subscribe takes SubscribeOptions; an invalid value
// fails the call with an error that matches ErrInvalidConfig. The names
// follow the server's options where they mean the same thing
// (WithMaxMessageSize, WithConcurrency; WithReceiveQueue is the client's
// side of the server's WithSendQueue).
//
// # Hooks and handlers
//
// Callbacks come in two kinds, given the same way on a Client and on a
// Subscription:
//
//   - Hooks report the life of the connection or subscription (status
//     changes, drops, gaps, the user and session channels' publications).
//     They are given once, when the object is made (WithHooks to Dial,
//     WithSubHooks to Subscribe), and never change: nothing happens before
//     they are in place.
//   - Handlers receive what is addressed by name (the server's asks and
//     tells, a subscription's events). They are given as options too
//     (WithAskHandler, WithTellHandler, WithEventHandler,
//     WithMessageHandler), so that the first ones are not missed, and may be
//     changed later with the Handle methods (HandleAsk, HandleTell,
//     HandleEvent, HandleMessage).
//
// Hooks and handlers run one at a time, in order, on a goroutine of the
// client's own, never on the goroutine that reads the connection: they may
// call any method of the Client, including Ask and Close. Server asks are
// the exception: each runs on its own goroutine, as an answer may take a
// while.
//
// # Errors
//
// Errors are values to test with errors.Is and errors.As: a server refusal
// is an *Error that matches its code's sentinel (ErrNotFound, ...); a
// refused handshake is a *HandshakeError, a close frame a *CloseError; and
// ErrClosed, ErrDisconnected and the other sentinels wrap their cause. Their
// messages start with "sss: " once, however deep the chain: `sss: ask "x":
// client closed: handshake refused: 401 Unauthorized`.
package client

// For maintainers, where things are:
// client.go holds the Client and its life (Dial, status, Close);
// reconnect.go the connection attempts, the URL order and the resume;
// link.go one WebSocket connection; requests.go Ask, Tell and Publish;
// subscription.go subscriptions; route.go the routing of publications and
// tells; handlers.go the server's asks and tells; recover.go positions and
// catch-up outcomes; hooks.go the hooks; dispatch.go the goroutine that runs
// them; options.go the options; errors.go the errors; frame.go the wire
// frames; stats.go the counters; backoff.go the reconnection delays.
