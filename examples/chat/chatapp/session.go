package chatapp

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/superscaled/sss"
)

// Sessions. A person picks a name; the server answers with a cookie
//
//	sss_chat = base64url(name) "." sessionID "." base64url(HMAC-SHA256(secret, name "\x00" sessionID))
//
// The session parser checks the MAC and names the user (the name) and the
// session (the random id made at login). The session id is public (the
// welcome frame carries it, and so does the session channel's name); the
// secret part is the MAC, which only the servers can make. The cookie is
// HttpOnly, so the page's script never sees it: the browser sends it with
// the WebSocket handshake, which is all a session parser needs.

const (
	cookieName = "sss_chat"
	cookieAge  = 30 * 24 * time.Hour
)

// validName: letters, digits, "_" and "-", at most 24 characters.
var validName = regexp.MustCompile(`^[\p{L}\p{N}_-]{1,24}$`)

func (a *App) mac(name, sid string) []byte {
	h := hmac.New(sha256.New, a.cfg.Secret)
	h.Write([]byte(name))
	h.Write([]byte{0})
	h.Write([]byte(sid))
	return h.Sum(nil)
}

func (a *App) cookieValue(name, sid string) string {
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(name)) + "." + sid + "." + enc.EncodeToString(a.mac(name, sid))
}

// who checks the request's cookie and returns the name and session id.
func (a *App) who(r *http.Request) (name, sid string, ok bool) {
	ck, err := r.Cookie(cookieName)
	if err != nil {
		return "", "", false
	}
	parts := strings.Split(ck.Value, ".")
	if len(parts) != 3 {
		return "", "", false
	}
	enc := base64.RawURLEncoding
	n, err1 := enc.DecodeString(parts[0])
	mac, err2 := enc.DecodeString(parts[2])
	if err1 != nil || err2 != nil || !hmac.Equal(mac, a.mac(string(n), parts[1])) {
		return "", "", false
	}
	return string(n), parts[1], true
}

// parseSession is the sss session parser: a valid cookie, or 401.
func (a *App) parseSession(r *http.Request) (*sss.Session, error) {
	name, sid, ok := a.who(r)
	if !ok {
		return nil, sss.ErrUnauthorized
	}
	return &sss.Session{UserID: name, SessionID: sid}, nil
}

// me answers the page's "who am I": {"name": ...}, or 401.
func (a *App) me(w http.ResponseWriter, r *http.Request) {
	name, _, ok := a.who(r)
	if !ok {
		http.Error(w, "pick a name", http.StatusUnauthorized)
		return
	}
	writeJSON(w, map[string]string{"name": name})
}

// login gives a cookie for the name in the JSON body {"name": ...}.
func (a *App) login(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name string `json:"name"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1024)).Decode(&req); err != nil {
		http.Error(w, "want {\"name\": ...}", http.StatusBadRequest)
		return
	}
	name := strings.TrimSpace(req.Name)
	if !validName.MatchString(name) {
		http.Error(w, "a name is 1 to 24 letters, digits, _ or -", http.StatusBadRequest)
		return
	}
	sid := randomID()
	http.SetCookie(w, &http.Cookie{
		Name: cookieName, Value: a.cookieValue(name, sid), Path: "/",
		MaxAge: int(cookieAge / time.Second), HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: r.TLS != nil,
	})
	writeJSON(w, map[string]string{"name": name})
}

// logout forgets the cookie.
func (a *App) logout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteLaxMode})
	w.WriteHeader(http.StatusNoContent)
}

// equalSecret compares a given password with the room's in constant time.
func equalSecret(given, want string) bool {
	return subtle.ConstantTimeCompare([]byte(given), []byte(want)) == 1
}
