package sss

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/superscaled/sss/scaler"
)

// Session is who a connection belongs to, as named by the SessionParser.
type Session struct {
	// UserID names the user; empty for anonymous connections. Every
	// connection of a user is subscribed to its user channel, so PublishUser
	// and Tell(ToUser) reach all of them on every instance.
	UserID string
	// SessionID names the session (e.g. a login, a browser). Subscriptions
	// are persisted per session, so a client reconnecting with the same
	// session can have them restored on any instance. Empty gets a random id.
	SessionID string
	// Channels are channels the server subscribes the connection to from
	// the start ("groups at login"), as server subscriptions: no
	// subscription parser runs for them, and the client cannot unsubscribe
	// them (see Server.Subscribe).
	Channels []string
	// Info is public data about the connection, shown to other clients in
	// presence lists and join and leave events (e.g. a display name, an
	// availability status): never put secrets here. It is encoded with
	// encoding/json once, at connect, and bounded by the payload limit.
	Info any
	// ExpiresAt, when not zero, is when the credentials the session parser
	// checked expire (a token's exp): the server then closes the
	// connection with 4007, and the client reconnects with fresh ones. A
	// session already expired is refused (401).
	ExpiresAt time.Time
	// Data is the application's own, available as Conn.Session().Data.
	// It is never sent to anyone.
	Data any

	info []byte // Info, encoded
}

// SessionParser authenticates the HTTP upgrade request: cookies, headers,
// Origin, remote address. Returning an error refuses the connection before
// the upgrade, with HTTP 401, or 403 for ErrForbidden, or the status of a
// *StatusError.
type SessionParser func(r *http.Request) (*Session, error)

// SubscriptionParser authorises a client's subscription to channel, with the
// query the client sent (nil when none). Return nil to allow; an *Error to
// choose the code the client sees (default forbidden).
type SubscriptionParser func(ctx context.Context, c *Conn, channel string, query json.RawMessage) error

// PublishParser authorises a client's publication. Return nil to allow.
type PublishParser func(ctx context.Context, c *Conn, channel, event string, data json.RawMessage) error

// Limits on ids named by the session parser: they become channel names.
const maxIDLen = 255

// UserChannel is the reserved channel every connection of a user is
// subscribed to.
func UserChannel(userID string) string { return scaler.ReservedPrefix + "u." + userID }

// SessionChannel is the reserved channel every connection of a session is
// subscribed to. A session belongs to its user: two users' sessions never
// share a channel, nor stored subscriptions, whatever ids the session parser
// gives them.
func SessionChannel(userID, sessionID string) string {
	return scaler.ReservedPrefix + "s." + sessionKey(userID, sessionID)
}

// sessionKey names a user's session in channel names and in the session
// store: the user id's length first makes it unambiguous whatever bytes
// the ids hold ("5:alice:tab-1").
func sessionKey(userID, sessionID string) string {
	return strconv.Itoa(len(userID)) + ":" + userID + ":" + sessionID
}

// parseSession runs the session parser, within the ask timeout, and
// validates what it returned. named says the parser named the session: only
// then are its subscriptions stored, since a random session is never seen
// again.
func (s *Server) parseSession(r *http.Request) (sess *Session, named bool, err error) {
	sess = &Session{}
	if p := s.cfg.sessionP; p != nil {
		sess, err = s.runSessionParser(p, r)
		if err != nil {
			return nil, false, err
		}
		if sess == nil {
			sess = &Session{}
		} else {
			cp := *sess // the parser may reuse its value
			sess = &cp
		}
	}
	if !sess.ExpiresAt.IsZero() && !time.Now().Before(sess.ExpiresAt) {
		return nil, false, &StatusError{Status: http.StatusUnauthorized, Message: "credentials expired"}
	}
	if len(sess.UserID) > maxIDLen || len(sess.SessionID) > maxIDLen {
		return nil, false, &StatusError{Status: http.StatusInternalServerError, Message: "session parser returned an id longer than 255 bytes"}
	}
	if !utf8.ValidString(sess.UserID) || !utf8.ValidString(sess.SessionID) {
		return nil, false, &StatusError{Status: http.StatusInternalServerError, Message: "session parser returned an id that is not valid UTF-8"}
	}
	for _, ch := range sess.Channels {
		if err := clientChannel(ch); err != nil {
			return nil, false, &StatusError{Status: http.StatusInternalServerError, Message: "session parser named an invalid channel"}
		}
	}
	if len(sess.Channels) > s.cfg.maxSubs {
		return nil, false, &StatusError{Status: http.StatusInternalServerError, Message: "session parser named more channels than a connection may hold"}
	}
	sess.Channels = slices.Clone(sess.Channels)
	if err := s.presenceInfo(sess); err != nil {
		s.log.Error("sss: session parser returned an Info that cannot be sent", "err", err)
		return nil, false, &StatusError{Status: http.StatusInternalServerError, Message: "session parser returned an invalid Info"}
	}
	named = sess.SessionID != ""
	if !named {
		sess.SessionID = randomID(12)
	}
	return sess, named, nil
}

// maxLateSessionParsers bounds the session parser calls still running past
// their deadline; beyond it upgrades are refused at once with 503.
const maxLateSessionParsers = 256

// errSessionTimeout answers an upgrade whose session parser did not return
// within the ask timeout: 503, so that clients retry with backoff.
var errSessionTimeout = &StatusError{Status: http.StatusServiceUnavailable, Message: "session check timed out"}

// runSessionParser calls p with the request's context bounded by the ask
// timeout, and answers at the deadline whether p returned or not.
func (s *Server) runSessionParser(p SessionParser, r *http.Request) (*Session, error) {
	if s.lateParsers.Load() >= maxLateSessionParsers {
		return nil, errSessionTimeout
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.askTimeout)
	defer cancel()
	r = r.WithContext(ctx)
	type result struct {
		sess *Session
		err  error
	}
	done := make(chan result, 1)
	go func() {
		defer func() {
			if rec := recover(); rec != nil {
				s.stats.panics.Add(1)
				s.log.Error("sss: session parser panicked", "panic", rec)
				done <- result{err: &StatusError{Status: http.StatusInternalServerError, Message: "session parser failed"}}
			}
		}()
		sess, err := p(r)
		done <- result{sess, err}
	}()
	select {
	case res := <-done:
		return res.sess, res.err
	case <-ctx.Done():
		// The goroutine ends when p returns; count it until then, so that a
		// parser that hangs cannot pile goroutines up without bound.
		s.lateParsers.Add(1)
		go func() {
			<-done
			s.lateParsers.Add(-1)
		}()
		s.log.Warn("sss: session parser timed out", "remote", r.RemoteAddr, "timeout", s.cfg.askTimeout)
		return nil, errSessionTimeout
	}
}
