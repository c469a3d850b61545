package client

import (
	"fmt"
	"runtime/debug"
)

// OnStatusChange sets the callback for status changes.
func (c *Client) OnStatusChange(fn func(s, old Status)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onStatus = fn
}

// OnDrop sets the callback for a dropped link (not one ended by Close), with
// the reason: a *CloseError when the server closed it (4006: it could not
// keep a channel exact; the client resumes, and OnRecover and OnGap tell
// the outcome), ErrLinkTimeout when it went silent, a network error. The status then becomes Reconnecting, or
// Closed if the reason is final (Err tells).
func (c *Client) OnDrop(fn func(err error)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onDrop = fn
}

// OnReconnect sets the callback for a successful reconnection; it runs after
// every subscription was restored or reported refused, and after the
// outcomes of their catch-up (OnRecover, OnGap).
func (c *Client) OnReconnect(fn func(info ConnInfo)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onReconnect = fn
}

// OnError sets the callback for errors that belong to no request: an error
// frame about the connection, a tell handler's error, a handler's panic, a
// tell with no handler.
func (c *Client) OnError(fn func(err error)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onError = fn
}

// OnRefused sets the callback for a subscription the server refused to
// restore after a reconnect (access revoked, say). The subscription is then
// in status SubRefused and no longer held.
func (c *Client) OnRefused(fn func(sub *Subscription, err error)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onRefused = fn
}

// OnUserMessage sets the handler for publications to the user's channel
// (sss Server.PublishUser), which every connection of a user holds.
func (c *Client) OnUserMessage(fn func(Message)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onUser = fn
}

// OnSessionMessage sets the handler for publications to the session's
// channel (sss Server.PublishSession).
func (c *Client) OnSessionMessage(fn func(Message)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onSession = fn
}

// handlerPanic is called on the handler goroutine when a handler or callback
// panicked; the client goes on.
func (c *Client) handlerPanic(v any) {
	c.log.Error("sss: handler panicked", "panic", v, "stack", string(debug.Stack()))
	c.callOnError(fmt.Errorf("sss: handler panicked: %v", v))
}

// callOnError calls the OnError callback; on the handler goroutine only.
func (c *Client) callOnError(err error) {
	c.mu.Lock()
	fn := c.onError
	c.mu.Unlock()
	if fn == nil {
		return
	}
	defer func() {
		if v := recover(); v != nil {
			c.log.Error("sss: OnError callback panicked", "panic", v)
		}
	}()
	fn(err)
}

// emitError queues a call of the OnError callback.
func (c *Client) emitError(err error) {
	c.d.push(func() { c.callOnError(err) })
}

// OnRecover sets the callback for the outcome of each channel's catch-up
// after a reconnect: every restored subscription, and the user and session
// channels when they are the same as on the previous connection. It runs
// before any publication delivered on the new connection, and before
// OnReconnect. See RecoverInfo.Recovered.
func (c *Client) OnRecover(fn func(RecoverInfo)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onRecover = fn
}

// OnGap sets the callback for publications lost on a channel, a
// subscription or the user or session channel (info.Kind): after a
// reconnect whose catch-up could not be exact (history trimmed past the
// client's position, the backend lost its history, or the server kept
// none), or when a publication comes from an unexpected epoch. The
// application should reload what it derives from that channel from its
// source of truth. It runs before the publications that follow the gap are
// delivered.
func (c *Client) OnGap(fn func(RecoverInfo)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onGap = fn
}
