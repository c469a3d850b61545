package main

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/superscaled/sss"
)

// Authentication of connections. A connection brings a token (a JWT signed
// with -jwt-secret or the key of -jwt-public-key), or the app's endpoint
// (-connect-url) vouches for its cookies, or, with -anonymous, it comes as
// nobody. What it may subscribe and publish to is its grant.

// grant is what a connection's credentials allow, kept as Session.Data.
type grant struct {
	channels []string // patterns it may subscribe to (and read the history of)
	publish  []string // patterns it may publish to
}

// tokenClaims are a connection token's claims: the registered ones (sub is
// the user id, exp the expiry) and sss's own.
type tokenClaims struct {
	jwt.RegisteredClaims
	// Session names the session (tabs sharing one get each other's
	// subscriptions back); a random one when absent.
	Session string `json:"sid,omitempty"`
	// Channels are the patterns the connection may subscribe to.
	Channels []string `json:"channels,omitempty"`
	// Publish are the patterns it may publish to.
	Publish []string `json:"publish,omitempty"`
	// Info is public data shown to others in presence (a display name).
	Info json.RawMessage `json:"info,omitempty"`
}

// TokenCookie is the cookie a browser may carry its token in.
const TokenCookie = "sss_token"

// authenticator builds the session parser from the configuration.
type authenticator struct {
	cfg     *config
	log     *slog.Logger
	key     any // HMAC secret or public key; nil without JWT
	methods []string
	client  *http.Client
}

func newAuthenticator(cfg *config, log *slog.Logger) (*authenticator, error) {
	a := &authenticator{cfg: cfg, log: log, client: &http.Client{Timeout: cfg.askTimeout}}
	switch {
	case cfg.jwtSecret != "":
		a.key = []byte(cfg.jwtSecret)
		a.methods = []string{"HS256", "HS384", "HS512"}
	case cfg.jwtKeyFile != "":
		pem, err := os.ReadFile(cfg.jwtKeyFile)
		if err != nil {
			return nil, fmt.Errorf("-jwt-public-key: %w", err)
		}
		key, methods, err := parsePublicKey(pem)
		if err != nil {
			return nil, fmt.Errorf("-jwt-public-key %s: %w", cfg.jwtKeyFile, err)
		}
		a.key, a.methods = key, methods
	}
	for _, pats := range [][]string{cfg.publicChans, cfg.clientPub} {
		for _, p := range pats {
			if err := validPattern(p); err != nil {
				return nil, err
			}
		}
	}
	return a, nil
}

// parsePublicKey reads an RSA, ECDSA or Ed25519 public key (or a
// certificate's) in PEM, and the signing methods that go with it.
func parsePublicKey(pem []byte) (crypto.PublicKey, []string, error) {
	if k, err := jwt.ParseRSAPublicKeyFromPEM(pem); err == nil {
		return k, []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}, nil
	}
	if k, err := jwt.ParseECPublicKeyFromPEM(pem); err == nil {
		return k, []string{"ES256", "ES384", "ES512"}, nil
	}
	if k, err := jwt.ParseEdPublicKeyFromPEM(pem); err == nil {
		return k, []string{"EdDSA"}, nil
	}
	return nil, nil, errors.New("not an RSA, ECDSA or Ed25519 public key in PEM")
}

// tokenOf finds a connection's token: an Authorization: Bearer header
// (programs), a "token" query parameter or the sss_token cookie (browsers,
// which cannot set headers on a WebSocket).
func tokenOf(r *http.Request) string {
	if t, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return strings.TrimSpace(t)
	}
	if t := r.URL.Query().Get("token"); t != "" {
		return t
	}
	if c, err := r.Cookie(TokenCookie); err == nil {
		return c.Value
	}
	return ""
}

// parseSession is the server's session parser.
func (a *authenticator) parseSession(r *http.Request) (*sss.Session, error) {
	if tok := tokenOf(r); tok != "" && a.key != nil {
		return a.fromToken(tok)
	}
	if a.cfg.connectURL != "" {
		return a.fromApp(r)
	}
	if a.cfg.anonymous {
		return &sss.Session{Data: &grant{}}, nil
	}
	return nil, sss.Errorf(sss.CodeUnauthorized, "credentials required")
}

// fromToken verifies a JWT: signature (only the configured key's methods),
// exp (required), nbf, iss and aud when configured, and a non-empty sub.
func (a *authenticator) fromToken(tok string) (*sss.Session, error) {
	opts := []jwt.ParserOption{jwt.WithValidMethods(a.methods), jwt.WithExpirationRequired(), jwt.WithLeeway(5 * time.Second)}
	if a.cfg.jwtIssuer != "" {
		opts = append(opts, jwt.WithIssuer(a.cfg.jwtIssuer))
	}
	if a.cfg.jwtAudience != "" {
		opts = append(opts, jwt.WithAudience(a.cfg.jwtAudience))
	}
	var claims tokenClaims
	_, err := jwt.ParseWithClaims(tok, &claims, func(*jwt.Token) (any, error) { return a.key, nil }, opts...)
	if err != nil {
		// The reason is for the log: a client learns only that it was refused.
		a.log.Debug("sss-server: token refused", "err", err)
		return nil, sss.Errorf(sss.CodeUnauthorized, "invalid token")
	}
	if claims.Subject == "" {
		return nil, sss.Errorf(sss.CodeUnauthorized, "the token names no user (sub)")
	}
	for _, pats := range [][]string{claims.Channels, claims.Publish} {
		for _, p := range pats {
			if validPattern(p) != nil {
				return nil, sss.Errorf(sss.CodeUnauthorized, "the token has an invalid channel pattern")
			}
		}
	}
	s := &sss.Session{
		UserID: claims.Subject, SessionID: claims.Session,
		ExpiresAt: claims.ExpiresAt.Time,
		Data:      &grant{channels: claims.Channels, publish: claims.Publish},
	}
	if len(claims.Info) > 0 {
		s.Info = claims.Info
	}
	return s, nil
}

// connectAnswer is what the app's -connect-url endpoint returns for a
// connection it accepts.
type connectAnswer struct {
	User     string          `json:"user"`
	Session  string          `json:"session"`
	Channels []string        `json:"channels"`
	Publish  []string        `json:"publish"`
	Info     json.RawMessage `json:"info"`
	// ExpiresAt, Unix seconds: when the connection must authenticate
	// again; 0 for -connect-session-ttl (or never).
	ExpiresAt int64 `json:"expiresAt"`
}

// forwarded are the upgrade's headers the app's endpoint gets.
var forwarded = []string{"Cookie", "Authorization", "Origin", "User-Agent", "X-Forwarded-For", "X-Real-Ip"}

// fromApp asks the app's endpoint who the connection is: a POST with the
// upgrade's cookies and headers and {"remoteAddr": ...}; 200 with a
// connectAnswer accepts, 401 or 403 refuses, anything else is an outage
// (503: the client retries).
func (a *authenticator) fromApp(r *http.Request) (*sss.Session, error) {
	body, _ := json.Marshal(map[string]string{"remoteAddr": r.RemoteAddr, "path": r.URL.Path})
	req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, a.cfg.connectURL, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	for _, h := range forwarded {
		for _, v := range r.Header.Values(h) {
			req.Header.Add(h, v)
		}
	}
	resp, err := a.client.Do(req)
	if err != nil {
		a.log.Warn("sss-server: connect endpoint unreachable", "url", a.cfg.connectURL, "err", err)
		return nil, &sss.StatusError{Status: http.StatusServiceUnavailable, Message: "authentication unavailable"}
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		return nil, sss.Errorf(sss.CodeUnauthorized, "refused by the application")
	case resp.StatusCode == http.StatusForbidden:
		return nil, sss.Errorf(sss.CodeForbidden, "refused by the application")
	case resp.StatusCode != http.StatusOK:
		a.log.Warn("sss-server: connect endpoint failed", "url", a.cfg.connectURL, "status", resp.StatusCode)
		return nil, &sss.StatusError{Status: http.StatusServiceUnavailable, Message: "authentication unavailable"}
	}
	var ans connectAnswer
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&ans); err != nil {
		a.log.Warn("sss-server: connect endpoint answered invalid JSON", "url", a.cfg.connectURL, "err", err)
		return nil, &sss.StatusError{Status: http.StatusServiceUnavailable, Message: "authentication unavailable"}
	}
	for _, pats := range [][]string{ans.Channels, ans.Publish} {
		for _, p := range pats {
			if err := validPattern(p); err != nil {
				a.log.Warn("sss-server: connect endpoint answered an invalid pattern", "err", err)
				return nil, &sss.StatusError{Status: http.StatusServiceUnavailable, Message: "authentication unavailable"}
			}
		}
	}
	s := &sss.Session{UserID: ans.User, SessionID: ans.Session, Data: &grant{channels: ans.Channels, publish: ans.Publish}}
	if len(ans.Info) > 0 && string(ans.Info) != "null" {
		s.Info = ans.Info
	}
	switch {
	case ans.ExpiresAt > 0:
		s.ExpiresAt = time.Unix(ans.ExpiresAt, 0)
	case a.cfg.connectTTL > 0:
		s.ExpiresAt = time.Now().Add(a.cfg.connectTTL)
	}
	return s, nil
}

func grantOf(c *sss.Conn) *grant {
	if g, ok := c.Session().Data.(*grant); ok {
		return g
	}
	return &grant{}
}

// canSubscribe is the subscription parser: public channels, or the
// connection's grant.
func (a *authenticator) canSubscribe(ctx context.Context, c *sss.Conn, channel string, _ json.RawMessage) error {
	if matchAny(a.cfg.publicChans, channel) || matchAny(grantOf(c).channels, channel) {
		return nil
	}
	return sss.Errorf(sss.CodeForbidden, "not allowed to subscribe to %q", channel)
}

// canPublish is the publish parser.
func (a *authenticator) canPublish(ctx context.Context, c *sss.Conn, channel, _ string, _ json.RawMessage) error {
	if matchAny(a.cfg.clientPub, channel) || matchAny(grantOf(c).publish, channel) {
		return nil
	}
	return sss.Errorf(sss.CodeForbidden, "not allowed to publish to %q", channel)
}
