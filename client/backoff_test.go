package client

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	const base, max = 100 * time.Millisecond, time.Second
	for n, ceil := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		ceil *= time.Millisecond
		var top time.Duration
		for range 2000 {
			d := backoff(n, base, max)
			if d < 0 || d > ceil {
				t.Fatalf("backoff(%d) = %v, outside [0, %v]", n, d, ceil)
			}
			top = maxDur(top, d)
		}
		// Full jitter uses the whole window, not just its top.
		if top < ceil*9/10 {
			t.Errorf("backoff(%d) never above %v of %v", n, top, ceil)
		}
	}
	if d := backoff(1000, base, max); d > max {
		t.Fatalf("backoff(1000) = %v", d)
	}
	if d := backoff(3, 0, 0); d != 0 {
		t.Fatalf("zero base gives %v", d)
	}
}

func maxDur(a, b time.Duration) time.Duration {
	if a > b {
		return a
	}
	return b
}

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
