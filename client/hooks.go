package client

import (
	"fmt"
	"runtime/debug"
)

// Hooks are the client's callbacks, given once to Dial with WithHooks so
// that they see everything from the first connection attempt on; they do
// not change afterwards. Each may be nil.
//
// They run one at a time, in the order of the events, on the client's
// handler goroutine (the one that runs message handlers, in order with
// them), never on the goroutine that reads the connection: they may call any
// method of the Client, including Ask and Close. A panic in one is recovered
// and reported to OnError.
type Hooks struct {
	// OnStatusChange runs when the client's status changes.
	OnStatusChange func(s, old Status)

	// OnDrop runs when a link dropped (not one ended by Close), with the
	// reason: a *CloseError when the server closed it (4006: it could not
	// keep a channel exact; the client resumes, and OnRecover and OnGap
	// tell the outcome), ErrLinkTimeout when it went silent,
	// ErrSlowConsumer, a network error. The status then becomes
	// Reconnecting, or Closed if the reason is final (Client.Err tells).
	OnDrop func(err error)

	// OnReconnect runs after a successful reconnection, once every
	// subscription was restored or reported refused, and after the outcomes
	// of their catch-up (OnRecover, OnGap).
	OnReconnect func(info ConnInfo)

	// OnError runs for errors that belong to no request: an error frame
	// about the connection, a tell handler's error, a handler's panic, a
	// tell with no handler, ErrSlowConsumer.
	OnError func(err error)

	// OnRefused runs for a subscription the server refused to restore after
	// a reconnect (access revoked, say). The subscription is then in status
	// SubRefused and no longer held.
	OnRefused func(sub *Subscription, err error)

	// OnUserMessage receives the publications to the user's channel (sss
	// Server.PublishUser), which every connection of a user holds.
	OnUserMessage func(Message)

	// OnSessionMessage receives the publications to the session's channel
	// (sss Server.PublishSession).
	OnSessionMessage func(Message)

	// OnSubscribed runs for a subscription the client did not make in this
	// process: one the server made (sss Server.Subscribe, or a channel named
	// at login), or one restored from the session store (WithRestore). It
	// runs before any of its publications: set its handlers here
	// (Subscription.HandleMessage, HandleEvent).
	OnSubscribed func(sub *Subscription)

	// OnUnsubscribed runs when the server ended a subscription (sss
	// Server.Unsubscribe); it is then in status SubUnsubscribed. A server
	// subscription ended while the client was disconnected is reported
	// here too, after the reconnect (not to OnRefused).
	OnUnsubscribed func(sub *Subscription)

	// OnBroadcast receives the server's broadcasts (sss Server.Broadcast),
	// on the reserved channel "$all". They are transient: one made while
	// the client is disconnected is not caught up.
	OnBroadcast func(Message)

	// OnRecover runs with the outcome of each channel's catch-up after a
	// reconnect: every restored subscription, and the user and session
	// channels when they are the same as on the previous connection. It
	// runs before any publication delivered on the new connection, and
	// before OnReconnect. See RecoverInfo.Recovered.
	OnRecover func(RecoverInfo)

	// OnGap runs when publications were lost on a channel, a subscription
	// or the user or session channel (info.Kind): after a reconnect whose
	// catch-up could not be exact (history trimmed past the client's
	// position, the backend lost its history, or the server kept none), or
	// when a publication comes from an unexpected epoch. The application
	// should reload what it derives from that channel from its source of
	// truth. It runs after OnRecover and the subscription's SubHooks.OnGap,
	// and before the publications that follow the gap are delivered.
	OnGap func(RecoverInfo)
}

// handlerPanic is called on the handler goroutine when a handler or callback
// panicked; the client goes on.
func (c *Client) handlerPanic(v any) {
	c.log.Error("sss: handler panicked", "panic", v, "stack", string(debug.Stack()))
	c.callOnError(&pkgError{msg: "handler panicked", detail: fmt.Sprint(v)})
}

// callOnError calls the OnError hook; on the handler goroutine only.
func (c *Client) callOnError(err error) {
	fn := c.hooks.OnError
	if fn == nil {
		return
	}
	defer func() {
		if v := recover(); v != nil {
			c.log.Error("sss: OnError hook panicked", "panic", v)
		}
	}()
	fn(err)
}

// emitError queues a call of the OnError hook.
func (c *Client) emitError(err error) {
	c.d.push(func() { c.callOnError(err) })
}
