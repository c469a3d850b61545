package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
)

// Handlers of the server's tells and asks, by name: set at Dial with
// WithTellHandler and WithAskHandler, changed later with HandleTell and
// HandleAsk.

// TellHandler receives a tell from the server. ctx ends when the client
// closes. A returned error goes to the OnError hook.
type TellHandler func(ctx context.Context, data json.RawMessage) error

// AskHandler answers an ask from the server. The result is encoded with
// encoding/json (a json.RawMessage is sent as is). Return an *Error to choose
// the code the server sees; any other error is sent as internal. ctx ends
// when the link the ask came on drops, or the client closes.
type AskHandler func(ctx context.Context, data json.RawMessage) (any, error)

// HandleTell sets the handler for the server's tells named name, replacing
// any; a nil fn removes it. Tells run on the client's handler goroutine, in
// order with publications; a tell with no handler goes to the OnError hook
// as not_found. A handler needed from the first connection on is given to
// Dial with WithTellHandler: one set here after Dial may miss a tell the
// server sends right after its welcome.
func (c *Client) HandleTell(name string, fn TellHandler) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if fn == nil {
		delete(c.tells, name)
		return
	}
	c.tells[name] = fn
}

// HandleAsk sets the handler for the server's asks named name, replacing
// any; a nil fn removes it. Each ask runs on its own goroutine (an answer
// may take a while, such as a user's confirmation), at most WithConcurrency
// at once; an ask with no handler is answered not_found, a panicking handler
// internal. A handler needed from the first connection on is given to Dial
// with WithAskHandler.
func (c *Client) HandleAsk(name string, fn AskHandler) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if fn == nil {
		delete(c.asks, name)
		return
	}
	c.asks[name] = fn
}

// serveAsk answers a server ask on its own goroutine. The goroutines are
// bounded by askSlots and end with the link (the handler's ctx), not
// waited for by Close, so that a handler may call Close.
func (c *Client) serveAsk(l *link, f *inFrame) {
	id, name, data := f.ID, f.Name, f.Data
	c.mu.Lock()
	h := c.asks[name]
	c.mu.Unlock()
	if h == nil {
		l.send(encodeReply(id, nil, Errorf(CodeNotFound, "no ask handler %q", name)))
		return
	}
	select {
	case c.askSlots <- struct{}{}:
	default:
		l.send(encodeReply(id, nil, Errorf(CodeRateLimited, "more than %d server asks at once", cap(c.askSlots))))
		return
	}
	go func() {
		defer func() { <-c.askSlots }()
		res, err := c.runAsk(l.ctx, name, h, data)
		b := encodeReply(id, res, err)
		if max := l.info.Limits.MaxMessage; max > 0 && len(b) > max {
			b = encodeReply(id, nil, Errorf(CodeTooLarge, "reply of %d bytes exceeds the server's limit of %d", len(b), max))
		}
		l.send(b)
	}()
}

func (c *Client) runAsk(ctx context.Context, name string, h AskHandler, data json.RawMessage) (res any, err error) {
	defer func() {
		if v := recover(); v != nil {
			c.log.Error("sss: ask handler panicked", "name", name, "panic", v, "stack", string(debug.Stack()))
			res, err = nil, Errorf(CodeInternal, "ask handler panicked")
			c.d.push(func() {
				c.callOnError(&pkgError{msg: fmt.Sprintf("ask handler %q panicked", name), detail: fmt.Sprint(v)})
			})
		}
	}()
	return h(ctx, data)
}

// encodeReply encodes the reply to a server ask.
func encodeReply(id uint64, res any, err error) []byte {
	f := replyFrame{Type: "reply", ID: id}
	if err == nil {
		b, merr := json.Marshal(res)
		if merr == nil {
			f.Result = b
		} else {
			err = Errorf(CodeInternal, "cannot encode the result: %v", merr)
		}
	}
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			e = &Error{Code: CodeInternal, Message: err.Error()}
		}
		f.Error = e
	}
	b, _ := json.Marshal(&f)
	return b
}
