package sss

import (
	"context"
	"errors"
	"fmt"
	"net/http"
)

// Code is a stable error code sent to clients in error frames. The table in
// docs/protocol.md describes each one.
type Code string

// Error codes of protocol v1.
const (
	CodeBadRequest    Code = "bad_request"
	CodeUnauthorized  Code = "unauthorized"
	CodeForbidden     Code = "forbidden"
	CodeNotFound      Code = "not_found"
	CodeConflict      Code = "conflict"
	CodeTimeout       Code = "timeout"
	CodeTooLarge      Code = "too_large"
	CodeRateLimited   Code = "rate_limited"
	CodeLimitExceeded Code = "limit_exceeded"
	CodeUnavailable   Code = "unavailable"
	CodeNotSupported  Code = "not_supported"
	CodeInternal      Code = "internal"
)

// Error is an error with a protocol code. Handlers and parsers return one
// (directly or wrapped) to choose the code the client sees; any other error
// reaches the client as "internal" with a generic message, and is logged.
//
// errors.Is(err, sss.ErrForbidden) is true for every *Error with code
// forbidden, whatever its message.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message,omitempty"`
}

// Errorf returns an *Error with the code and a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "sss: " + string(e.Code)
	}
	return "sss: " + string(e.Code) + ": " + e.Message
}

// Is matches any *Error with the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Sentinels for errors.Is, one per code.
var (
	ErrBadRequest    = &Error{Code: CodeBadRequest}
	ErrUnauthorized  = &Error{Code: CodeUnauthorized}
	ErrForbidden     = &Error{Code: CodeForbidden}
	ErrNotFound      = &Error{Code: CodeNotFound}
	ErrConflict      = &Error{Code: CodeConflict}
	ErrTimeout       = &Error{Code: CodeTimeout}
	ErrTooLarge      = &Error{Code: CodeTooLarge}
	ErrRateLimited   = &Error{Code: CodeRateLimited}
	ErrLimitExceeded = &Error{Code: CodeLimitExceeded}
	ErrUnavailable   = &Error{Code: CodeUnavailable}
	ErrNotSupported  = &Error{Code: CodeNotSupported}
	ErrInternal      = &Error{Code: CodeInternal}
)

// errInternal is what a client sees of a failure it cannot be told about.
var errInternal = &Error{Code: CodeInternal, Message: "internal error"}

// ErrServerClosed is returned by the methods of a Server after Shutdown or
// Close began, and is the disconnect reason of the connections they closed.
var ErrServerClosed = errors.New("sss: server closed")

// Why a connection ended: the reason Hooks.OnDisconnect receives (possibly
// wrapped; test with errors.Is). Each is a distinct value, matched by
// nothing else.
var (
	// ErrClientClosed: the client closed the connection normally (1000, 1001).
	ErrClientClosed = errors.New("sss: client closed the connection")
	// ErrPingTimeout: the client sent nothing for ping+pong (close 4001).
	ErrPingTimeout = errors.New("sss: ping timeout")
	// ErrSlowConsumer: the connection's send queue overflowed: the client
	// did not read fast enough (close 4002).
	ErrSlowConsumer = errors.New("sss: slow consumer")
	// ErrWriteFailed: a write to the connection failed or timed out (close
	// 4003); it wraps the cause.
	ErrWriteFailed = errors.New("sss: write failed")
	// ErrKicked: the application closed the connection, with Conn.Close or
	// Server.Disconnect (close 4005 or 4501).
	ErrKicked = errors.New("sss: disconnected by the application")
	// ErrResync: the server could not keep a channel exact for the client
	// (its history was reset mid-stream, or a catch-up failed), and asked it
	// to reconnect and resume (close 4006).
	ErrResync = errors.New("sss: channel could not be kept exact")
	// ErrMessageTooBig: the client sent a message larger than
	// WithMaxMessageSize (close 1009).
	ErrMessageTooBig = errors.New("sss: message too big")
	// ErrSessionExpired: the session reached its ExpiresAt (close 4007);
	// the client reconnects with fresh credentials.
	ErrSessionExpired = errors.New("sss: session expired")
)

// toWire turns any error into what the client may see. Unclassified errors
// become "internal" without their text, which may hold secrets.
func toWire(err error) *Error {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Code: CodeTimeout, Message: "deadline exceeded"}
	default:
		return errInternal
	}
}

// StatusError refuses an HTTP upgrade with a given status. A session parser
// returns one to pick the status; ErrForbidden gives 403, any other error 401.
type StatusError struct {
	Status  int
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("sss: refused with HTTP %d: %s", e.Status, e.Message)
}

// httpStatus maps a session parser's error to the status of the refusal.
func httpStatus(err error) (int, string) {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Status, se.Message
	}
	var e *Error
	if errors.As(err, &e) {
		switch e.Code {
		case CodeForbidden:
			return http.StatusForbidden, e.Message
		case CodeRateLimited:
			return http.StatusTooManyRequests, e.Message
		case CodeUnavailable:
			return http.StatusServiceUnavailable, e.Message
		case CodeBadRequest:
			return http.StatusBadRequest, e.Message
		}
		return http.StatusUnauthorized, e.Message
	}
	return http.StatusUnauthorized, "unauthorized"
}
