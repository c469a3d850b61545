package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
)

func TestErrors(t *testing.T) {
	e := &Error{Code: CodeNotFound, Message: "no handler"}
	wrapped := fmt.Errorf("ask: %w", e)
	if !errors.Is(wrapped, ErrNotFound) || errors.Is(wrapped, ErrInternal) || errors.Is(wrapped, ErrForbidden) {
		t.Fatal("code matching")
	}
	if e.Error() != "not_found: no handler" || ErrTimeout.Error() != "timeout" {
		t.Fatalf("messages %q %q", e.Error(), ErrTimeout.Error())
	}
	if odd := (&Error{Code: "teapot"}); !errors.Is(odd, ErrInternal) || errors.Is(odd, ErrNotFound) {
		t.Fatal("unknown codes are internal")
	}

	for _, tc := range []struct {
		err       error
		is        error
		permanent bool
	}{
		{&HandshakeError{StatusCode: http.StatusUnauthorized}, ErrUnauthorized, true},
		{&HandshakeError{StatusCode: http.StatusForbidden}, ErrForbidden, true},
		{&HandshakeError{StatusCode: http.StatusBadRequest}, nil, true},
		{&HandshakeError{StatusCode: http.StatusServiceUnavailable}, nil, false},
		{&CloseError{Code: 4500}, ErrUnauthorized, true},
		{&CloseError{Code: 4501}, ErrForbidden, true},
		{&CloseError{Code: 4999}, nil, true},
		{&CloseError{Code: 4000}, nil, false},
		{&CloseError{Code: 4499}, nil, false},
		{&CloseError{Code: 1000}, nil, false},
		{errWrongSubprotocol, ErrProtocol, true},
		{ErrLinkTimeout, nil, false},
	} {
		err := fmt.Errorf("wrapped: %w", tc.err)
		if tc.is != nil && !errors.Is(err, tc.is) {
			t.Errorf("%v is not %v", tc.err, tc.is)
		}
		if errors.Is(err, ErrInternal) {
			t.Errorf("%v is internal", tc.err)
		}
		if permanent(err) != tc.permanent {
			t.Errorf("permanent(%v) = %v", tc.err, !tc.permanent)
		}
	}
}

// Whatever the depth, a message starts with "sss: " once, and each error of
// the chain stays reachable.
func TestErrorMessages(t *testing.T) {
	refused := &HandshakeError{StatusCode: http.StatusUnauthorized}
	closed := &CloseError{Code: 4501, Reason: "banned"}
	notFound := &Error{Code: CodeNotFound, Message: "no handler"}
	for _, tc := range []struct {
		err  error
		want string
		is   []error
	}{
		{ErrClosed, "sss: client closed", []error{ErrClosed}},
		{refused, "sss: handshake refused: 401 Unauthorized", []error{ErrUnauthorized}},
		{&HandshakeError{StatusCode: 503, Body: "busy"}, "sss: handshake refused: 503 Service Unavailable: busy", nil},
		{closed, "sss: closed by the server with 4501: banned", []error{ErrForbidden}},
		{&CloseError{Code: 4000}, "sss: closed by the server with 4000", nil},
		{notFound, "not_found: no handler", []error{ErrNotFound}},
		{wrap(notFound, "ask %q", "x"), `sss: ask "x": not_found: no handler`, []error{ErrNotFound}},
		{wrap(withCause(ErrClosed, refused), "ask %q", "x"), `sss: ask "x": client closed: handshake refused: 401 Unauthorized`,
			[]error{ErrClosed, ErrUnauthorized}},
		{wrap(withCause(ErrDisconnected, closed), "tell %q", "t"), `sss: tell "t": disconnected: closed by the server with 4501: banned`,
			[]error{ErrDisconnected, ErrForbidden}},
		{wrap(withCause(ErrDisconnected, ErrLinkTimeout), "subscribe to %q", "news"),
			`sss: subscribe to "news": disconnected: no frame from the server within ping+pong`, []error{ErrDisconnected, ErrLinkTimeout}},
		{wrap(context.DeadlineExceeded, "waiting for welcome from %s", "ws://a"), "sss: waiting for welcome from ws://a: context deadline exceeded",
			[]error{context.DeadlineExceeded}},
		{withDetail(ErrProtocol, "binary message"), "sss: protocol violation: binary message", []error{ErrProtocol}},
		{wrap(errWrongSubprotocol, "resume"), "sss: resume: protocol violation: server did not select subprotocol sss.v1", []error{ErrProtocol}},
		{wrap(wrap(errors.New("EOF"), "read"), "gave up reconnecting after %d attempts", 3), "sss: gave up reconnecting after 3 attempts: read: EOF", nil},
		{&pkgError{errs: []error{wrap(errors.New("refused"), "dial ws://a"), &HandshakeError{StatusCode: 503}}, list: true},
			"sss: dial ws://a: refused; handshake refused: 503 Service Unavailable", nil},
		{invalid("WithConcurrency(%d): must be positive", 0), "sss: invalid configuration: WithConcurrency(0): must be positive", []error{ErrInvalidConfig}},
		// An application's error with the prefix of its own keeps it: only
		// this package's errors are known to carry one.
		{wrap(fmt.Errorf("load: %w", ErrClosed), "tell handler %q", "t"), `sss: tell handler "t": load: sss: client closed`, []error{ErrClosed}},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("message\n got %s\nwant %s", got, tc.want)
		}
		for _, target := range tc.is {
			if !errors.Is(tc.err, target) {
				t.Errorf("%v is not %v", tc.err, target)
			}
		}
	}
	// errors.As reaches the typed errors through the chains.
	var he *HandshakeError
	if err := wrap(withCause(ErrClosed, refused), "ask %q", "x"); !errors.As(err, &he) || he != refused {
		t.Error("As HandshakeError")
	}
	var ce *CloseError
	if err := wrap(withCause(ErrDisconnected, closed), "tell %q", "t"); !errors.As(err, &ce) || ce != closed {
		t.Error("As CloseError")
	}
	var e *Error
	if err := wrap(notFound, "ask %q", "x"); !errors.As(err, &e) || e != notFound {
		t.Error("As Error")
	}
	if permanent(wrap(withCause(ErrClosed, refused), "x")) != true || permanent(wrap(withCause(ErrDisconnected, &CloseError{Code: 4000}), "x")) {
		t.Error("permanent through chains")
	}
}
