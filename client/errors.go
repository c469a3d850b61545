package client

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Error codes of protocol v1 (docs/protocol.md, "Error codes").
const (
	CodeBadRequest    = "bad_request"
	CodeUnauthorized  = "unauthorized"
	CodeForbidden     = "forbidden"
	CodeNotFound      = "not_found"
	CodeConflict      = "conflict"
	CodeTimeout       = "timeout"
	CodeTooLarge      = "too_large"
	CodeRateLimited   = "rate_limited"
	CodeLimitExceeded = "limit_exceeded"
	CodeUnavailable   = "unavailable"
	CodeNotSupported  = "not_supported"
	CodeInternal      = "internal"
)

// Sentinels for errors.Is, one per code: errors.Is(err, ErrNotFound) is true
// for every *Error with code not_found, whatever its message. ErrUnauthorized
// and ErrForbidden also match a refused handshake (HTTP 401/403) and the
// close codes 4500/4501.
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

var (
	// ErrDisconnected is returned by a request that could not complete because
	// the link to the server dropped (or was down, with WithFailFast). A
	// request that fails with it may or may not have reached the server. It
	// wraps the reason of the drop when there is one.
	ErrDisconnected = newError("disconnected")
	// ErrClosed is returned by the methods of a Client that is closed, by
	// Close or for good by the server; Client.Err tells why, and the error
	// wraps that reason when it is not Close.
	ErrClosed = newError("client closed")
	// ErrLinkTimeout is the reason of a drop when nothing was received for
	// the welcome's ping+pong window.
	ErrLinkTimeout = newError("no frame from the server within ping+pong")
	// ErrSlowConsumer is the reason of a drop when the handlers fell more
	// than WithReceiveQueue messages behind. The client reconnects and
	// resumes, as when the server drops a slow consumer.
	ErrSlowConsumer = newError("handlers too slow, receive queue full")
	// ErrProtocol reports a server that does not speak sss.v1 as documented.
	ErrProtocol = newError("protocol violation")
	// ErrInvalidConfig is returned by Dial for an invalid option or URL, and
	// by Subscribe for an invalid SubscribeOption. Nothing was sent.
	ErrInvalidConfig = newError("invalid configuration")
)

// The messages of this package's errors start with "sss: " once: an error
// that wraps another of the package includes the inner one's message
// without it, so a chain reads `sss: ask "x": client closed: handshake
// refused: 401 Unauthorized` and a sentinel alone reads "sss: client
// closed". Each link of the chain stays reachable with errors.Is and
// errors.As.
const prefix = "sss: "

// bareError is implemented by the errors of this package: bare returns the
// message without the prefix, for an outer error to include.
type bareError interface{ bare() string }

// bareMsg returns err's message without the package prefix.
func bareMsg(err error) string {
	if b, ok := err.(bareError); ok {
		return b.bare()
	}
	return err.Error()
}

// pkgError is the package's general error: what failed (msg), its causes,
// and a detail, read in that order and separated by ": ".
type pkgError struct {
	msg    string  // may be empty: the message then starts with the first cause
	errs   []error // the causes, outermost first; errors.Is and As see each
	detail string  // words after the causes, such as what exactly was wrong
	list   bool    // the causes are alternatives (one per URL): joined with "; "
}

// newError returns an error with msg alone: a sentinel.
func newError(msg string) error { return &pkgError{msg: msg} }

// wrap returns an error that says what failed (format) because of err.
func wrap(err error, format string, args ...any) error {
	return &pkgError{msg: fmt.Sprintf(format, args...), errs: []error{err}}
}

// withCause returns kind (a sentinel) wrapping its cause: "client closed:
// handshake refused: ...". Both match with errors.Is.
func withCause(kind, cause error) error {
	return &pkgError{errs: []error{kind, cause}}
}

// withDetail returns kind (a sentinel) with what exactly happened:
// "protocol violation: binary message".
func withDetail(kind error, format string, args ...any) error {
	return &pkgError{errs: []error{kind}, detail: fmt.Sprintf(format, args...)}
}

func (e *pkgError) Error() string { return prefix + e.bare() }

func (e *pkgError) bare() string {
	var b strings.Builder
	b.WriteString(e.msg)
	for i, err := range e.errs {
		switch {
		case i > 0 && e.list:
			b.WriteString("; ")
		case b.Len() > 0:
			b.WriteString(": ")
		}
		b.WriteString(bareMsg(err))
	}
	if e.detail != "" {
		if b.Len() > 0 {
			b.WriteString(": ")
		}
		b.WriteString(e.detail)
	}
	return b.String()
}

func (e *pkgError) Unwrap() []error { return e.errs }

// knownCodes lists the codes of protocol v1; others are treated as internal.
var knownCodes = map[string]bool{
	CodeBadRequest: true, CodeUnauthorized: true, CodeForbidden: true,
	CodeNotFound: true, CodeConflict: true, CodeTimeout: true,
	CodeTooLarge: true, CodeRateLimited: true, CodeLimitExceeded: true,
	CodeUnavailable: true, CodeNotSupported: true, CodeInternal: true,
}

// Error is an error with a protocol code: what the server answered to a
// request, or what an AskHandler returns to choose the code of its reply.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message,omitempty"`
}

// Errorf returns an *Error with the code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Error returns "code: message", without the "sss: " prefix: it is the
// server's answer, and requests wrap it with what failed (`sss: ask "x":
// not_found: ...`).
func (e *Error) Error() string {
	if e.Message == "" {
		return e.Code
	}
	return e.Code + ": " + e.Message
}

// Is matches any *Error with the same code. A code this client does not know
// matches ErrInternal, as the protocol asks.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	if t.Code == e.Code {
		return true
	}
	return t.Code == CodeInternal && !knownCodes[e.Code]
}

// HandshakeError is a refusal of the WebSocket upgrade: a plain HTTP
// response. 401 matches ErrUnauthorized and 403 ErrForbidden with errors.Is.
// Any 4xx stops the client for good; 5xx is retried.
type HandshakeError struct {
	StatusCode int
	// Body is the beginning of the response body, for diagnostics.
	Body string
}

// Error returns "sss: handshake refused: 401 Unauthorized", with the body
// when there is one.
func (e *HandshakeError) Error() string { return prefix + e.bare() }

func (e *HandshakeError) bare() string {
	s := fmt.Sprintf("handshake refused: %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	if e.Body != "" {
		s += ": " + e.Body
	}
	return s
}

// Is matches ErrUnauthorized for 401 and ErrForbidden for 403.
func (e *HandshakeError) Is(target error) bool {
	switch e.StatusCode {
	case http.StatusUnauthorized:
		return target == ErrUnauthorized
	case http.StatusForbidden:
		return target == ErrForbidden
	}
	return false
}

func (e *HandshakeError) permanent() bool { return e.StatusCode >= 400 && e.StatusCode < 500 }

// CloseError is a WebSocket close frame received from the server: the link
// ended with Code and Reason. 4500 matches ErrUnauthorized and 4501
// ErrForbidden with errors.Is.
type CloseError struct {
	Code   int
	Reason string
}

// Error returns "sss: closed by the server with 4501: banned", without the
// reason when there is none.
func (e *CloseError) Error() string { return prefix + e.bare() }

func (e *CloseError) bare() string {
	if e.Reason == "" {
		return fmt.Sprintf("closed by the server with %d", e.Code)
	}
	return fmt.Sprintf("closed by the server with %d: %s", e.Code, e.Reason)
}

// Is matches ErrUnauthorized for 4500 and ErrForbidden for 4501.
func (e *CloseError) Is(target error) bool {
	switch e.Code {
	case 4500:
		return target == ErrUnauthorized
	case 4501:
		return target == ErrForbidden
	}
	return false
}

// Close codes of the protocol that the client acts on.
const (
	closeShutdown = 4000 // reconnect at once, elsewhere if possible
	closeExpired  = 4007 // the credentials expired: reconnect at once, with fresh ones
)

// Permanent reports whether the close code tells the client not to reconnect
// (4500–4999).
func (e *CloseError) Permanent() bool { return e.Code >= 4500 && e.Code <= 4999 }

// permanent reports whether err ends the client for good instead of leading
// to another connection attempt.
func permanent(err error) bool {
	var he *HandshakeError
	if errors.As(err, &he) {
		return he.permanent()
	}
	var ce *CloseError
	if errors.As(err, &ce) {
		return ce.Permanent()
	}
	return errors.Is(err, errWrongSubprotocol) || errors.Is(err, ErrUnauthorized) || errors.Is(err, ErrForbidden)
}

// errWrongSubprotocol: the server did not agree to sss.v1. It is not an sss
// server (or a proxy strips the header): retrying cannot help.
var errWrongSubprotocol = withDetail(ErrProtocol, "server did not select subprotocol %s", subprotocol)

// closeCode returns the close code in err, or 0.
func closeCode(err error) int {
	var ce *CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return 0
}
