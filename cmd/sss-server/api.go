package main

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/superscaled/sss"
)

// The HTTP API (docs/http-api.md): an application that is not written in
// Go publishes, tells, disconnects, and reads history and presence
// through it. Every call is a POST of a JSON object to /api/<method>,
// authenticated by the API key; answers are JSON, errors
// {"error":{"code":...,"message":...}} with the protocol's codes.

// maxAPIBody bounds a request's body.
const maxAPIBody = 1 << 20

type api struct {
	srv *sss.Server
	key []byte
	log *slog.Logger
	// timeout bounds each call to the cluster.
	timeout time.Duration
}

// target names connections in a request: a user, a user's session (user
// may be empty for anonymous sessions), or one connection.
type target struct {
	User    string `json:"user"`
	Session string `json:"session"`
	Conn    string `json:"conn"`
}

func (t target) resolve() (sss.Target, error) {
	switch {
	case t.Conn != "" && t.User == "" && t.Session == "":
		return sss.ToConn(t.Conn), nil
	case t.Session != "" && t.Conn == "":
		return sss.ToSession(t.User, t.Session), nil
	case t.User != "" && t.Conn == "":
		return sss.ToUser(t.User), nil
	}
	return sss.Target{}, sss.Errorf(sss.CodeBadRequest, `name a "user", a "session" (with its "user") or a "conn"`)
}

type apiRequest struct {
	target
	Channel string          `json:"channel"`
	Event   string          `json:"event"`
	Name    string          `json:"name"`
	Data    json.RawMessage `json:"data"`
	Except  string          `json:"except"`
	Reason  string          `json:"reason"`
	Final   bool            `json:"final"`
	Limit   int             `json:"limit"`
	Since   *sss.Position   `json:"since"`
	Timeout string          `json:"timeout"` // ask: a Go duration, at most the server's ask timeout
}

func (a *api) routes(mux *http.ServeMux) {
	for name, h := range map[string]func(context.Context, apiRequest) (any, error){
		"publish":         a.publish,
		"broadcast":       a.broadcast,
		"publish_user":    a.publishUser,
		"tell":            a.tell,
		"ask":             a.ask,
		"disconnect":      a.disconnect,
		"subscribe":       a.subscribe,
		"unsubscribe":     a.unsubscribe,
		"history":         a.history,
		"presence":        a.presence,
		"presence_counts": a.presenceCounts,
	} {
		mux.Handle("/api/"+name, a.handler(name, h))
	}
}

func (a *api) handler(name string, h func(context.Context, apiRequest) (any, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			writeError(w, http.StatusMethodNotAllowed, sss.Errorf(sss.CodeBadRequest, "use POST"))
			return
		}
		if !a.authorized(r) {
			w.Header().Set("WWW-Authenticate", `apikey realm="sss"`)
			writeError(w, http.StatusUnauthorized, sss.Errorf(sss.CodeUnauthorized, "a valid API key is required"))
			return
		}
		var req apiRequest
		dec := json.NewDecoder(io.LimitReader(r.Body, maxAPIBody+1))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, sss.Errorf(sss.CodeBadRequest, "the body must be a JSON object of the documented fields: %v", err))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), a.timeout)
		defer cancel()
		res, err := h(ctx, req)
		if err != nil {
			e := wireError(err)
			if e.Code == sss.CodeInternal || e.Code == sss.CodeUnavailable {
				a.log.Warn("sss-server: API call failed", "method", name, "err", err)
			}
			writeError(w, statusOf(e.Code), e)
			return
		}
		if res == nil {
			res = struct{}{}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(res)
	})
}

// authorized checks the API key: "Authorization: apikey <key>" or
// "X-API-Key: <key>", compared in constant time.
func (a *api) authorized(r *http.Request) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "apikey ")
	if !ok {
		got = r.Header.Get("X-API-Key")
	}
	return got != "" && subtle.ConstantTimeCompare([]byte(got), a.key) == 1
}

func data(d json.RawMessage) any {
	if len(d) == 0 {
		return nil
	}
	return d
}

func (a *api) publish(ctx context.Context, r apiRequest) (any, error) {
	var opts []sss.PublishOption
	if r.Except != "" {
		opts = append(opts, sss.Except(r.Except))
	}
	return nil, a.srv.Publish(ctx, r.Channel, r.Event, data(r.Data), opts...)
}

func (a *api) broadcast(ctx context.Context, r apiRequest) (any, error) {
	return nil, a.srv.Broadcast(ctx, r.Event, data(r.Data))
}

func (a *api) publishUser(ctx context.Context, r apiRequest) (any, error) {
	if r.Session != "" {
		return nil, a.srv.PublishSession(ctx, r.User, r.Session, r.Event, data(r.Data))
	}
	return nil, a.srv.PublishUser(ctx, r.User, r.Event, data(r.Data))
}

func (a *api) tell(ctx context.Context, r apiRequest) (any, error) {
	t, err := r.resolve()
	if err != nil {
		return nil, err
	}
	return nil, a.srv.Tell(ctx, t, r.Name, data(r.Data))
}

func (a *api) ask(ctx context.Context, r apiRequest) (any, error) {
	t, err := r.resolve()
	if err != nil {
		return nil, err
	}
	if r.Timeout != "" {
		d, err := time.ParseDuration(r.Timeout)
		if err != nil || d <= 0 {
			return nil, sss.Errorf(sss.CodeBadRequest, "timeout must be a positive duration such as \"2s\"")
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	res, err := a.srv.Ask(ctx, t, r.Name, data(r.Data))
	if err != nil {
		return nil, err
	}
	return map[string]json.RawMessage{"result": res}, nil
}

func (a *api) disconnect(ctx context.Context, r apiRequest) (any, error) {
	t, err := r.resolve()
	if err != nil {
		return nil, err
	}
	return nil, a.srv.Disconnect(ctx, t, r.Reason, r.Final)
}

func (a *api) subscribe(ctx context.Context, r apiRequest) (any, error) {
	t, err := r.resolve()
	if err != nil {
		return nil, err
	}
	return nil, a.srv.Subscribe(ctx, t, r.Channel)
}

func (a *api) unsubscribe(ctx context.Context, r apiRequest) (any, error) {
	t, err := r.resolve()
	if err != nil {
		return nil, err
	}
	return nil, a.srv.Unsubscribe(ctx, t, r.Channel)
}

// historyEntry is a publication as the API returns it: a pub frame's
// fields (docs/protocol.md).
type historyEntry struct {
	Channel string          `json:"channel"`
	Event   string          `json:"event"`
	Data    json.RawMessage `json:"data"`
	From    *sss.Sender     `json:"from,omitempty"`
	Time    int64           `json:"time,omitempty"`
	Offset  uint64          `json:"offset"`
	Epoch   string          `json:"epoch"`
}

func (a *api) history(ctx context.Context, r apiRequest) (any, error) {
	var opts []sss.HistoryOption
	if r.Limit != 0 {
		opts = append(opts, sss.Last(r.Limit))
	}
	if r.Since != nil {
		opts = append(opts, sss.After(*r.Since))
	}
	entries, pos, err := a.srv.History(ctx, r.Channel, opts...)
	if err != nil {
		return nil, err
	}
	out := make([]historyEntry, len(entries))
	for i, e := range entries {
		out[i] = historyEntry{Channel: e.Channel, Event: e.Event, Data: e.Data, Offset: e.Position.Offset, Epoch: e.Position.Epoch}
		if e.From != (sss.Sender{}) {
			from := e.From
			out[i].From = &from
		}
		if !e.Time.IsZero() {
			out[i].Time = e.Time.UnixMilli()
		}
	}
	return map[string]any{"publications": out, "position": pos}, nil
}

func (a *api) presence(ctx context.Context, r apiRequest) (any, error) {
	list, err := a.srv.Presence(ctx, r.Channel)
	if err != nil {
		return nil, err
	}
	type client struct {
		Conn    string          `json:"conn"`
		User    string          `json:"user,omitempty"`
		Session string          `json:"session,omitempty"`
		Info    json.RawMessage `json:"info,omitempty"`
	}
	out := make([]client, len(list))
	for i, c := range list {
		out[i] = client{Conn: c.Conn, User: c.User, Session: c.Session, Info: c.Info}
	}
	return map[string]any{"clients": out}, nil
}

func (a *api) presenceCounts(ctx context.Context, r apiRequest) (any, error) {
	return a.srv.PresenceCounts(ctx, r.Channel)
}

// wireError is what a caller of the API may see of err: its protocol code
// and message, or internal without details.
func wireError(err error) *sss.Error {
	var e *sss.Error
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, context.DeadlineExceeded):
		return sss.Errorf(sss.CodeTimeout, "deadline exceeded")
	case errors.Is(err, sss.ErrServerClosed):
		return sss.Errorf(sss.CodeUnavailable, "the server is shutting down")
	}
	return &sss.Error{Code: sss.CodeInternal, Message: "internal error"}
}

// statusOf maps protocol codes to HTTP statuses.
func statusOf(c sss.Code) int {
	switch c {
	case sss.CodeBadRequest:
		return http.StatusBadRequest
	case sss.CodeUnauthorized:
		return http.StatusUnauthorized
	case sss.CodeForbidden:
		return http.StatusForbidden
	case sss.CodeNotFound:
		return http.StatusNotFound
	case sss.CodeConflict:
		return http.StatusConflict
	case sss.CodeTimeout:
		return http.StatusGatewayTimeout
	case sss.CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case sss.CodeRateLimited:
		return http.StatusTooManyRequests
	case sss.CodeLimitExceeded:
		return http.StatusUnprocessableEntity
	case sss.CodeUnavailable:
		return http.StatusServiceUnavailable
	case sss.CodeNotSupported:
		return http.StatusNotImplemented
	}
	return http.StatusInternalServerError
}

func writeError(w http.ResponseWriter, status int, e *sss.Error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]*sss.Error{"error": e})
}
