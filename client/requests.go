package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Ask calls the server's ask handler name with req (encoded with
// encoding/json) and decodes its result into resp (unless resp is nil). A
// refusal is an *Error: test it with errors.Is(err, ErrNotFound) and the
// like. ctx bounds the whole call, including the wait for a link and for a
// free concurrency slot.
func (c *Client) Ask(ctx context.Context, name string, req, resp any) error {
	data, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("sss: ask %q: encode request: %w", name, err)
	}
	res, err := c.do(ctx, &callFrame{Type: "ask", Name: name, Data: data}, true, nil)
	if err != nil {
		return fmt.Errorf("sss: ask %q: %w", name, err)
	}
	if resp != nil && len(res) > 0 {
		if err := json.Unmarshal(res, resp); err != nil {
			return fmt.Errorf("sss: ask %q: decode result: %w", name, err)
		}
	}
	return nil
}

// Tell sends data to the server's tell handler name and returns once the
// server acknowledged it (the handler runs after).
func (c *Client) Tell(ctx context.Context, name string, data any) error {
	b, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("sss: tell %q: encode: %w", name, err)
	}
	if _, err := c.do(ctx, &callFrame{Type: "tell", Name: name, Data: b}, true, nil); err != nil {
		return fmt.Errorf("sss: tell %q: %w", name, err)
	}
	return nil
}

// Publish publishes an event to a channel and returns once the cluster
// accepted it. The server must allow client publications (its publish
// parser), else the error matches ErrForbidden.
func (c *Client) Publish(ctx context.Context, channel, event string, data any) error {
	b, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("sss: publish to %q: encode: %w", channel, err)
	}
	f := &publishFrame{Type: "publish", Channel: channel, Event: event, Data: b}
	if _, err := c.do(ctx, f, false, nil); err != nil {
		return fmt.Errorf("sss: publish to %q: %w", channel, err)
	}
	return nil
}

// do sends a request on the current link, waiting for one per the options,
// and returns the server's result.
//
// An ask or tell refused with rate_limited is sent again after a short
// jittered delay (at most maxRateRetries times, within ctx): the server ran
// nothing, and the refusal can come although the client keeps to the
// concurrency limit, because the server frees a slot a moment after its
// reply, and holds one while a tell's handler runs after the ack.
func (c *Client) do(ctx context.Context, req request, counted bool, onAck func(*link, json.RawMessage, bool)) (json.RawMessage, error) {
	for retries := 0; ; {
		l, err := c.link(ctx)
		if err != nil {
			return nil, err
		}
		res, err := l.roundTrip(ctx, req, counted, onAck)
		if errors.Is(err, errNotSent) {
			continue // the link died first; the next one may take it
		}
		if counted && errors.Is(err, ErrRateLimited) && retries < maxRateRetries {
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

// Retries of a request refused with rate_limited.
const (
	maxRateRetries = 8
	rateRetryMin   = 5 * time.Millisecond
	rateRetryMax   = time.Second
)

// link returns the current link, waiting for one unless failing fast.
func (c *Client) link(ctx context.Context) (*link, error) {
	for {
		c.mu.Lock()
		if c.status == StatusClosed {
			err := c.err
			c.mu.Unlock()
			if errors.Is(err, ErrClosed) {
				return nil, ErrClosed
			}
			return nil, fmt.Errorf("%w: %w", ErrClosed, err)
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
