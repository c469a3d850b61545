package client

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// Requests from the client: Ask, Tell and Publish (Subscribe and
// Unsubscribe are in subscription.go), and how a request finds a link.

// Ask calls the server's ask handler name with req (encoded with
// encoding/json) and decodes its result into resp (unless resp is nil). A
// refusal is an *Error: test it with errors.Is(err, ErrNotFound) and the
// like. ctx bounds the whole call, including the wait for a link and for a
// free concurrency slot.
//
// An ask refused with rate_limited is sent again after a short jittered
// delay, up to 8 times by default (WithRateLimitRetries), within ctx: the
// server ran nothing, and that refusal can come although the client keeps
// to the server's concurrency limit, because the server frees a slot a
// moment after its reply. When the retries run out, the error matches
// ErrRateLimited.
//
// An ask in flight when the link drops fails with ErrDisconnected: it may
// or may not have run, so it is not sent again.
func (c *Client) Ask(ctx context.Context, name string, req, resp any) error {
	data, err := json.Marshal(req)
	if err != nil {
		return wrap(err, "ask %q: encode request", name)
	}
	res, err := c.do(ctx, &callFrame{Type: "ask", Name: name, Data: data}, true, nil)
	if err != nil {
		return wrap(err, "ask %q", name)
	}
	if resp != nil && len(res) > 0 {
		if err := json.Unmarshal(res, resp); err != nil {
			return wrap(err, "ask %q: decode result", name)
		}
	}
	return nil
}

// Tell sends data to the server's tell handler name and returns once the
// server acknowledged it (the handler runs after).
//
// A tell refused with rate_limited is sent again as an ask is (see Ask and
// WithRateLimitRetries): the server holds a concurrency slot while a tell's
// handler runs after the ack, which a client cannot see, so tells to slow
// handlers meet that refusal now and then. A tell in flight when the link
// drops fails with ErrDisconnected, as an ask does.
func (c *Client) Tell(ctx context.Context, name string, data any) error {
	b, err := json.Marshal(data)
	if err != nil {
		return wrap(err, "tell %q: encode", name)
	}
	if _, err := c.do(ctx, &callFrame{Type: "tell", Name: name, Data: b}, true, nil); err != nil {
		return wrap(err, "tell %q", name)
	}
	return nil
}

// Publish publishes an event to a channel and returns once the cluster
// accepted it. The server must allow client publications (its publish
// parser), else the error matches ErrForbidden. A publication in flight
// when the link drops fails with ErrDisconnected: it may or may not have
// been accepted.
func (c *Client) Publish(ctx context.Context, channel, event string, data any, opts ...PublishOption) error {
	b, err := json.Marshal(data)
	if err != nil {
		return wrap(err, "publish to %q: encode", channel)
	}
	f := &publishFrame{Type: "publish", Channel: channel, Event: event, Data: b}
	for _, o := range opts {
		o(f)
	}
	if _, err := c.do(ctx, f, false, nil); err != nil {
		return wrap(err, "publish to %q", channel)
	}
	return nil
}

// PublishOption changes how a publication is delivered.
type PublishOption func(*publishFrame)

// ExceptSelf leaves this connection out of the publication's live
// delivery: everyone but the sender.
func ExceptSelf() PublishOption { return func(f *publishFrame) { f.ExceptSelf = true } }

// do sends a request on the current link, waiting for one per the options,
// and returns the server's result. counted requests (asks and tells) take a
// concurrency slot and are retried after rate_limited (see Ask).
func (c *Client) do(ctx context.Context, req request, counted bool, onAck func(*link, json.RawMessage, bool)) (json.RawMessage, error) {
	for retries := 0; ; {
		l, err := c.waitLink(ctx)
		if err != nil {
			return nil, err
		}
		res, err := l.roundTrip(ctx, req, counted, onAck)
		if errors.Is(err, errNotSent) {
			continue // the link died first; the next one may take it
		}
		if counted && errors.Is(err, ErrRateLimited) && retries < c.opts.rateRetries {
			d := backoff(retries, rateRetryMin, rateRetryMax)
			retries++
			c.log.Debug("sss: rate_limited, retrying", "retry", retries, "delay", d)
			t := time.NewTimer(d)
			select {
			case <-t.C:
				continue
			case <-ctx.Done():
				t.Stop()
			}
		}
		return res, err
	}
}

// The delays between retries of a request refused with rate_limited.
const (
	rateRetryMin = 5 * time.Millisecond
	rateRetryMax = time.Second
)

// waitLink returns the current link, waiting for one unless failing fast.
func (c *Client) waitLink(ctx context.Context) (*link, error) {
	for {
		c.mu.Lock()
		if c.status == StatusClosed {
			err := c.err
			c.mu.Unlock()
			if errors.Is(err, ErrClosed) {
				return nil, ErrClosed
			}
			return nil, withCause(ErrClosed, err)
		}
		if l := c.ready; l != nil {
			c.mu.Unlock()
			return l, nil
		}
		if c.opts.failFast {
			c.mu.Unlock()
			return nil, ErrDisconnected
		}
		ch := c.readyCh
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
