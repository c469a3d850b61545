package sss

import (
	"context"
	"encoding/json"
	"net/http"

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
	// Data is the application's own, available as Conn.Session().Data.
	Data any
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
// subscribed to.
func SessionChannel(sessionID string) string { return scaler.ReservedPrefix + "s." + sessionID }

// parseSession runs the session parser and validates what it returned.
func (s *Server) parseSession(r *http.Request) (*Session, error) {
	sess := &Session{}
	if p := s.cfg.sessionP; p != nil {
		var err error
		sess, err = safeSessionParse(p, r)
		if err != nil {
			return nil, err
		}
		if sess == nil {
			sess = &Session{}
		} else {
			cp := *sess // the parser may reuse its value
			sess = &cp
		}
	}
	if len(sess.UserID) > maxIDLen || len(sess.SessionID) > maxIDLen {
		return nil, &StatusError{Status: http.StatusInternalServerError, Message: "session parser returned an id longer than 255 bytes"}
	}
	if sess.SessionID == "" {
		sess.SessionID = "anon-" + randomID(12)
	}
	return sess, nil
}

func safeSessionParse(p SessionParser, r *http.Request) (sess *Session, err error) {
	defer func() {
		if rec := recover(); rec != nil {
			err = &StatusError{Status: http.StatusInternalServerError, Message: "session parser panicked"}
		}
	}()
	return p(r)
}
