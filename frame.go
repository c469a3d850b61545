package sss

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/superscaled/sss/scaler"
)

// Frame types of protocol v1 (docs/protocol.md).
const (
	typeSubscribe   = "subscribe"
	typeUnsubscribe = "unsubscribe"
	typePublish     = "publish"
	typeAsk         = "ask"
	typeTell        = "tell"
	typeResume      = "resume"
	typeReply       = "reply"
	typePong        = "pong"
	typeReady       = "ready"
	typeHistory     = "history"
	typePresence    = "presence"
)

// maxID is the largest request id: the largest integer a JSON number in
// every language (IEEE double) holds exactly.
const maxID = 1<<53 - 1

// maxNameLen bounds event and handler names.
const maxNameLen = 255

// subRequest is one entry of a resume frame.
type subRequest struct {
	Channel string           `json:"channel"`
	Query   json.RawMessage  `json:"query,omitempty"`
	Since   *scaler.Position `json:"since,omitempty"`
	Server  bool             `json:"server,omitempty"` // the server made it
}

// inFrame is a decoded client frame. Fields unused by its type are ignored.
type inFrame struct {
	Type          string
	ID            uint64
	Channel       string
	Query         json.RawMessage
	Event         string
	Name          string
	Data          json.RawMessage
	Result        json.RawMessage
	Error         *Error
	Subscriptions []subRequest
	HasSubs       bool             // resume: "subscriptions" present (even empty)
	Since         *scaler.Position // subscribe: catch up from here
	ExceptSelf    bool             // publish: not to the publishing connection
	Limit         *int             // history: how many
	Counts        bool             // presence: the counts only
}

// rawFrame mirrors the JSON shape; pointer and raw fields tell "absent" from
// "zero" and let the id be validated by hand.
type rawFrame struct {
	Type          string           `json:"type"`
	ID            json.RawMessage  `json:"id"`
	Channel       *string          `json:"channel"`
	Query         json.RawMessage  `json:"query"`
	Event         string           `json:"event"`
	Name          *string          `json:"name"`
	Data          json.RawMessage  `json:"data"`
	Result        json.RawMessage  `json:"result"`
	Error         *Error           `json:"error"`
	Subscriptions *[]subRequest    `json:"subscriptions"`
	Since         *scaler.Position `json:"since"`
	ExceptSelf    bool             `json:"exceptSelf"`
	Limit         *int             `json:"limit"`
	Counts        bool             `json:"counts"`
}

// decodeFrame parses one client frame. On failure it returns the request id
// when one could be read, so the error reply can carry it.
func decodeFrame(b []byte) (inFrame, uint64, *Error) {
	var raw rawFrame
	if !decodeFast(b, &raw) {
		raw = rawFrame{}
		if err := json.Unmarshal(b, &raw); err != nil {
			return inFrame{}, salvageID(b), &Error{Code: CodeBadRequest, Message: "invalid frame: " + jsonProblem(err)}
		}
	}
	f := inFrame{Type: raw.Type, Event: raw.Event, Query: nullToNil(raw.Query), Result: raw.Result, Error: raw.Error, Since: raw.Since, ExceptSelf: raw.ExceptSelf, Limit: raw.Limit, Counts: raw.Counts}
	if raw.ID != nil {
		id, ok := parseID(raw.ID)
		if !ok {
			return inFrame{}, 0, &Error{Code: CodeBadRequest, Message: "id must be an integer from 1 to 2^53-1"}
		}
		f.ID = id
	}
	if raw.Channel != nil {
		f.Channel = *raw.Channel
	}
	if raw.Name != nil {
		f.Name = *raw.Name
	}
	f.Data = raw.Data
	if raw.Subscriptions != nil {
		f.HasSubs, f.Subscriptions = true, *raw.Subscriptions
	}
	bad := func(msg string) (inFrame, uint64, *Error) {
		return inFrame{}, f.ID, &Error{Code: CodeBadRequest, Message: msg}
	}
	switch f.Type {
	case typePong, typeReady:
		return f, 0, nil
	case typeReply:
		if f.ID == 0 {
			return inFrame{}, 0, &Error{Code: CodeBadRequest, Message: "reply needs an id"}
		}
		return f, f.ID, nil
	case typeSubscribe, typeUnsubscribe, typePublish, typeAsk, typeTell, typeResume, typeHistory, typePresence:
	case "":
		return bad("missing frame type")
	default:
		return bad("unknown frame type " + strconv.Quote(truncate(f.Type, 32)))
	}
	if f.ID == 0 {
		return bad(f.Type + " needs an id")
	}
	switch f.Type {
	case typeSubscribe, typeUnsubscribe, typePublish, typeHistory, typePresence:
		if raw.Channel == nil {
			return bad(f.Type + " needs a channel")
		}
	case typeAsk, typeTell:
		if raw.Name == nil || f.Name == "" {
			return bad(f.Type + " needs a name")
		}
		if len(f.Name) > maxNameLen {
			return inFrame{}, f.ID, &Error{Code: CodeTooLarge, Message: "name longer than 255 bytes"}
		}
	}
	if f.Since != nil && !validPosition(*f.Since) {
		return bad("since needs an epoch of at most 64 bytes")
	}
	for _, r := range f.Subscriptions {
		if r.Since != nil && !validPosition(*r.Since) {
			return bad("since needs an epoch of at most 64 bytes")
		}
	}
	if len(f.Subscriptions) > maxResume {
		return inFrame{}, f.ID, &Error{Code: CodeTooLarge, Message: "too many subscriptions in one resume"}
	}
	if f.Type == typePublish && len(f.Event) > maxNameLen {
		return inFrame{}, f.ID, &Error{Code: CodeTooLarge, Message: "event longer than 255 bytes"}
	}
	return f, f.ID, nil
}

// maxResume bounds the subscriptions one resume may name.
const maxResume = 1024

func validPosition(p scaler.Position) bool { return p.Epoch != "" && len(p.Epoch) <= 64 }

func parseID(b json.RawMessage) (uint64, bool) {
	id, err := strconv.ParseUint(string(b), 10, 64)
	if err != nil || id == 0 || id > maxID {
		return 0, false
	}
	return id, true
}

// salvageID reads just the id of a frame whose other fields are mistyped.
// A reply's id is the server's, so an error about it carries none.
func salvageID(b []byte) uint64 {
	var v struct {
		Type any             `json:"type"`
		ID   json.RawMessage `json:"id"`
	}
	if json.Unmarshal(b, &v) != nil || v.ID == nil || v.Type == typeReply {
		return 0
	}
	id, _ := parseID(v.ID)
	return id
}

func jsonProblem(err error) string {
	switch e := err.(type) {
	case *json.UnmarshalTypeError:
		return "field " + strconv.Quote(e.Field) + " must be " + jsonKind(e.Type)
	case *json.SyntaxError:
		return "invalid JSON at offset " + strconv.FormatInt(e.Offset, 10)
	}
	return "invalid JSON"
}

// jsonKind names what JSON value a Go type decodes from, for error
// messages a client author can act on (not Go type names).
func jsonKind(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Struct, reflect.Map:
		return "an object"
	}
	return "another JSON value"
}

func nullToNil(b json.RawMessage) json.RawMessage {
	if string(b) == "null" {
		return nil
	}
	return b
}

// truncate cuts s to at most n bytes, on a character boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// splitFrames calls f for each newline-separated frame in a message. A
// message that is one valid JSON value is one frame, even if a lenient
// client pretty-printed it.
func splitFrames(msg []byte, f func([]byte)) {
	if len(bytes.TrimSpace(msg)) == 0 {
		return // an empty message is an empty line: ignored
	}
	if bytes.IndexByte(msg, '\n') < 0 || json.Valid(msg) {
		f(msg)
		return
	}
	for len(msg) > 0 {
		i := bytes.IndexByte(msg, '\n')
		var line []byte
		if i < 0 {
			line, msg = msg, nil
		} else {
			line, msg = msg[:i], msg[i+1:]
		}
		if len(bytes.TrimSpace(line)) > 0 {
			f(line)
		}
	}
}

// compactJSON returns data as compact JSON (no raw newline may reach a batch)
// or nil for absent data. JSON text is UTF-8 (RFC 8259), and a browser
// closes a WebSocket that receives invalid UTF-8, so data with invalid
// UTF-8 inside a string is refused: json.Valid does not check it.
func compactJSON(data json.RawMessage) (json.RawMessage, error) {
	if len(data) == 0 {
		return nil, nil
	}
	if !utf8.Valid(data) {
		return nil, errInvalidUTF8
	}
	if isCompact(data) && json.Valid(data) {
		return data, nil
	}
	var buf bytes.Buffer
	buf.Grow(len(data))
	if err := json.Compact(&buf, data); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// isCompact reports whether JSON text has no whitespace outside its
// strings: json.Compact would return it as it is (spaces inside strings,
// as in most text, stay).
func isCompact(b []byte) bool {
	in, esc := false, false
	for _, c := range b {
		switch {
		case esc:
			esc = false
		case in:
			if c == '\\' {
				esc = true
			} else if c == '"' {
				in = false
			}
		case c == '"':
			in = true
		case c == ' ', c == '\t', c == '\r', c == '\n':
			return false
		}
	}
	return true
}

// encodeData encodes application data for the wire: a json.RawMessage is
// checked and compacted, anything else marshalled.
func encodeData(data any) ([]byte, error) {
	switch d := data.(type) {
	case nil:
		return nil, nil
	case json.RawMessage:
		raw, err := compactJSON(d)
		if err != nil {
			return nil, Errorf(CodeBadRequest, "data is not valid JSON: %v", err)
		}
		return raw, nil
	}
	raw, err := json.Marshal(data)
	if err != nil {
		return nil, Errorf(CodeBadRequest, "cannot encode data: %v", err)
	}
	return raw, nil
}

var errInvalidUTF8 = errors.New("invalid UTF-8")

// Encoding of server frames. Hot frames are appended by hand so a
// publication is encoded once for all its local subscribers.

// welcomeFrame is the first frame of every connection.
type welcomeFrame struct {
	Type      string                     `json:"type"`
	Version   int                        `json:"version"`
	Conn      string                     `json:"conn"`
	Session   string                     `json:"session"`
	User      string                     `json:"user"`
	Channels  welcomeChannels            `json:"channels"`
	Positions map[string]scaler.Position `json:"positions,omitempty"`
	Ping      int64                      `json:"ping"`
	Pong      int64                      `json:"pong"`
	Limits    welcomeLimits              `json:"limits"`
}

type welcomeChannels struct {
	User    string `json:"user,omitempty"`
	Session string `json:"session"`
}

type welcomeLimits struct {
	MaxMessage       int64 `json:"maxMessage"`
	MaxPayload       int   `json:"maxPayload"`
	MaxSubscriptions int   `json:"maxSubscriptions"`
	Concurrency      int   `json:"concurrency"`
}

func encodeWelcome(c *Conn) []byte {
	cfg := &c.srv.cfg
	w := welcomeFrame{
		Type: "welcome", Version: 1, Conn: c.id, Session: c.session.SessionID, User: c.session.UserID,
		Channels: welcomeChannels{Session: SessionChannel(c.session.UserID, c.session.SessionID)},
		Ping:     cfg.pingInterval.Milliseconds(), Pong: cfg.pongTimeout.Milliseconds(),
		Limits: welcomeLimits{MaxMessage: cfg.maxMessage, MaxPayload: cfg.maxPayload, MaxSubscriptions: cfg.maxSubs, Concurrency: cfg.concurrency},
	}
	if c.session.UserID != "" {
		w.Channels.User = UserChannel(c.session.UserID)
	}
	for _, o := range c.own {
		if o.pos.Epoch != "" {
			if w.Positions == nil {
				w.Positions = make(map[string]scaler.Position)
			}
			w.Positions[o.sb.channel] = o.pos
		}
	}
	b, _ := json.Marshal(w)
	return b
}

// subResult is what an ack says of a subscription: the result of a
// subscribe, or one entry of a resume's (docs/protocol.md).
type subResult struct {
	Channel string `json:"channel"`
	Server  bool   `json:"server,omitempty"` // made by the server
	// Query, for a resume without a list: what the stored subscription
	// was made with, for the client to send again later.
	Query     json.RawMessage `json:"query,omitempty"`
	Offset    *uint64         `json:"offset,omitempty"` // with Epoch, when the server keeps history
	Epoch     string          `json:"epoch,omitempty"`
	Recovered *bool           `json:"recovered,omitempty"`
	Reason    string          `json:"reason,omitempty"`
	Error     *Error          `json:"error,omitempty"`
}

func encodeSubscribeAck(id uint64, r subResult) []byte {
	b, _ := json.Marshal(r)
	return encodeAck(id, b)
}

// encodeSubscribed tells the client of a server subscription.
func encodeSubscribed(r subResult) []byte {
	r.Server = true
	b, _ := json.Marshal(struct {
		Type string `json:"type"`
		subResult
	}{"subscribed", r})
	return b
}

func encodeUnsubscribed(channel string) []byte {
	b, _ := json.Marshal(struct {
		Type    string `json:"type"`
		Channel string `json:"channel"`
	}{"unsubscribed", channel})
	return b
}

func encodeResumeAck(id uint64, results []subResult) []byte {
	b, _ := json.Marshal(struct {
		Subscriptions []subResult `json:"subscriptions"`
	}{results})
	return encodeAck(id, b)
}

// encodeHistoryAck answers a history request: the publications (pub
// frames' fields but type and sub), and the position to go on from. At most
// budget bytes of publications (at least one): beyond, "more" says to read
// again from the position given.
func encodeHistoryAck(id uint64, entries []scaler.Entry, now scaler.Position, budget int) []byte {
	b := make([]byte, 0, 256)
	b = append(b, `{"type":"ack","id":`...)
	b = strconv.AppendUint(b, id, 10)
	b = append(b, `,"result":{"publications":[`...)
	more := false
	for i, e := range entries {
		if i > 0 && len(b) > budget {
			more = true
			now.Offset = entries[i-1].Offset
			break
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '{')
		b = appendPubFields(b, e.Pub, "", e.Offset, now.Epoch)
		b = append(b, '}')
	}
	b = append(b, `],"position":{"offset":`...)
	b = strconv.AppendUint(b, now.Offset, 10)
	b = append(b, `,"epoch":`...)
	b = appendString(b, now.Epoch)
	b = append(b, '}')
	if more {
		b = append(b, `,"more":true`...)
	}
	return append(b, `}}`...)
}

// encodeDelivery encodes a publication delivered through stream d.Stream:
// a pub frame, or a tell frame for the server's tells to a user or session.
func encodeDelivery(d scaler.Delivery) []byte {
	if d.Pub.Transient && reserved(d.Pub.Event) {
		if name, ok := strings.CutPrefix(d.Pub.Event, tellPrefix); ok {
			return encodeTell(name, d.Pub.Data)
		}
		switch d.Pub.Event {
		case joinEvent:
			return encodePresenceEvent("join", d.Pub.Channel, d.Pub.Data)
		case leaveEvent:
			return encodePresenceEvent("leave", d.Pub.Channel, d.Pub.Data)
		}
	}
	return encodePub(d.Pub, d.Stream, d.Offset, d.Epoch)
}

func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

func appendData(b []byte, data []byte) []byte {
	if len(data) == 0 {
		return append(b, "null"...)
	}
	return append(b, data...)
}

// encodePub encodes a publication delivered through stream sub, at offset
// in epoch (zero without history).
func encodePub(pub *scaler.Publication, sub string, offset uint64, epoch string) []byte {
	b := make([]byte, 0, 112+len(pub.Channel)+len(sub)+len(pub.Event)+len(pub.Data)+len(epoch))
	b = append(b, `{"type":"pub",`...)
	b = appendPubFields(b, pub, sub, offset, epoch)
	return append(b, '}')
}

// appendPubFields appends a publication's fields, without braces; sub is
// left out when empty.
func appendPubFields(b []byte, pub *scaler.Publication, sub string, offset uint64, epoch string) []byte {
	b = append(b, `"channel":`...)
	b = appendString(b, pub.Channel)
	if sub != "" {
		b = append(b, `,"sub":`...)
		b = appendString(b, sub)
	}
	b = append(b, `,"event":`...)
	b = appendString(b, pub.Event)
	b = append(b, `,"data":`...)
	b = appendData(b, pub.Data)
	if from := pub.Sender; from.User != "" || from.Conn != "" {
		b = append(b, `,"from":{"user":`...)
		b = appendString(b, from.User)
		b = append(b, `,"conn":`...)
		b = appendString(b, from.Conn)
		b = append(b, '}')
	}
	if pub.Time > 0 {
		b = append(b, `,"time":`...)
		b = strconv.AppendInt(b, pub.Time, 10)
	}
	if offset > 0 {
		b = append(b, `,"offset":`...)
		b = strconv.AppendUint(b, offset, 10)
		b = append(b, `,"epoch":`...)
		b = appendString(b, epoch)
	}
	return b
}

// encodePresenceEvent encodes a join or leave frame; client is what
// encodeClient made.
func encodePresenceEvent(typ, channel string, client []byte) []byte {
	b := make([]byte, 0, 40+len(channel)+len(client))
	b = append(b, `{"type":"`...)
	b = append(b, typ...)
	b = append(b, `","channel":`...)
	b = appendString(b, channel)
	b = append(b, `,"client":`...)
	b = appendData(b, client)
	return append(b, '}')
}

// encodePresenceAck answers a presence request: the counts and, with
// list, the clients, at most budget bytes of them (then "more" says the
// list was cut; the counts are still whole).
func encodePresenceAck(id uint64, list []ClientInfo, n PresenceCounts, withList bool, budget int) []byte {
	b := make([]byte, 0, 128)
	b = append(b, `{"type":"ack","id":`...)
	b = strconv.AppendUint(b, id, 10)
	b = append(b, `,"result":{"counts":{"clients":`...)
	b = strconv.AppendInt(b, int64(n.Clients), 10)
	b = append(b, `,"users":`...)
	b = strconv.AppendInt(b, int64(n.Users), 10)
	b = append(b, '}')
	if withList {
		b = append(b, `,"clients":[`...)
		more := false
		for i, ci := range list {
			if i > 0 && len(b) > budget {
				more = true
				break
			}
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, encodeClient(ci)...)
		}
		b = append(b, ']')
		if more {
			b = append(b, `,"more":true`...)
		}
	}
	return append(b, `}}`...)
}

func encodeTell(name string, data []byte) []byte {
	b := make([]byte, 0, 40+len(name)+len(data))
	b = append(b, `{"type":"tell","name":`...)
	b = appendString(b, name)
	b = append(b, `,"data":`...)
	b = appendData(b, data)
	return append(b, '}')
}

func encodeServerAsk(id uint64, name string, data []byte) []byte {
	b := make([]byte, 0, 48+len(name)+len(data))
	b = append(b, `{"type":"ask","id":`...)
	b = strconv.AppendUint(b, id, 10)
	b = append(b, `,"name":`...)
	b = appendString(b, name)
	b = append(b, `,"data":`...)
	b = appendData(b, data)
	return append(b, '}')
}

func encodeAck(id uint64, result []byte) []byte {
	b := make([]byte, 0, 32+len(result))
	b = append(b, `{"type":"ack","id":`...)
	b = strconv.AppendUint(b, id, 10)
	if len(result) > 0 {
		b = append(b, `,"result":`...)
		b = append(b, result...)
	}
	return append(b, '}')
}

func encodeError(id uint64, e *Error) []byte {
	b := make([]byte, 0, 64+len(e.Message))
	b = append(b, `{"type":"error",`...)
	if id != 0 {
		b = append(b, `"id":`...)
		b = strconv.AppendUint(b, id, 10)
		b = append(b, ',')
	}
	b = append(b, `"error":{"code":`...)
	b = appendString(b, string(e.Code))
	if e.Message != "" {
		b = append(b, `,"message":`...)
		b = appendString(b, e.Message)
	}
	return append(b, `}}`...)
}

var pingFrame = []byte(`{"type":"ping"}`)

// Fast decoding of the common frames.
//
// decodeFast fills raw from a frame made only of the fields the hot frames
// use (type, id, channel, name, event, data, query, result), in compact or
// spaced JSON, each once, with plain strings (no escapes) and a positive
// integer id: what every client sends for asks, tells, publishes and
// subscribes. It reports false for anything else, which encoding/json then
// decodes: the fast path never decides what a frame means differently
// (FuzzDecodeFast checks that it fills raw exactly as json.Unmarshal does).
// It copies what it keeps: the message buffer is reused.
func decodeFast(b []byte, raw *rawFrame) bool {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false
	}
	i = skipSpace(b, i+1)
	var seen uint8
	for first := true; ; first = false {
		if i >= len(b) {
			return false
		}
		if b[i] == '}' {
			if !first {
				return false // "{...,}" or the like: not JSON
			}
			break
		}
		key, j, ok := plainString(b, i)
		if !ok {
			return false
		}
		i = skipSpace(b, j)
		if i >= len(b) || b[i] != ':' {
			return false
		}
		i = skipSpace(b, i+1)
		var bit uint8
		switch string(key) {
		case "type", "channel", "name", "event":
			v, j, ok := plainString(b, i)
			if !ok {
				return false
			}
			str := string(v)
			switch key[0] {
			case 't':
				bit, raw.Type = 1, str
			case 'c':
				bit, raw.Channel = 2, &str
			case 'n':
				bit, raw.Name = 4, &str
			default:
				bit, raw.Event = 8, str
			}
			i = j
		case "id":
			bit = 16
			j := i
			for j < len(b) && b[j] >= '0' && b[j] <= '9' {
				j++
			}
			if j == i || b[i] == '0' || j-i > 16 {
				return false
			}
			raw.ID, i = bytes.Clone(b[i:j]), j
		case "data", "query", "result":
			j, ok := skipValue(b, i)
			if !ok || !json.Valid(b[i:j]) {
				return false
			}
			v := json.RawMessage(bytes.Clone(b[i:j]))
			switch key[0] {
			case 'd':
				bit, raw.Data = 32, v
			case 'q':
				bit, raw.Query = 64, v
			default:
				bit, raw.Result = 128, v
			}
			i = j
		default:
			return false
		}
		if seen&bit != 0 {
			return false // a duplicate: encoding/json keeps the last
		}
		seen |= bit
		i = skipSpace(b, i)
		if i < len(b) && b[i] == ',' {
			i = skipSpace(b, i+1)
			if i < len(b) && b[i] == '}' {
				return false
			}
			continue
		}
		if i < len(b) && b[i] == '}' {
			break
		}
		return false
	}
	return skipSpace(b, i+1) == len(b)
}

// skipSpace skips JSON whitespace from i.
func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// plainString reads the string at i when it has no escape, no control
// character and is valid UTF-8 (what encoding/json would take unchanged),
// and returns its content and the index after it.
func plainString(b []byte, i int) ([]byte, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, 0, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			s := b[i+1 : j]
			return s, j + 1, utf8.Valid(s)
		case c == '\\' || c < 0x20:
			return nil, 0, false
		}
	}
	return nil, 0, false
}

// skipValue returns the index after the JSON value at i, assuming it is
// valid (the caller checks with json.Valid): strings, nesting and escapes
// are followed, a literal or number ends at a delimiter.
func skipValue(b []byte, i int) (int, bool) {
	depth := 0
	for j := i; j < len(b); j++ {
		switch b[j] {
		case '"':
			for j++; j < len(b) && b[j] != '"'; j++ {
				if b[j] == '\\' {
					j++
				}
			}
			if j >= len(b) {
				return 0, false
			}
			if depth == 0 {
				return j + 1, true
			}
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return j, j > i
			}
			depth--
			if depth == 0 {
				return j + 1, true
			}
		case ',', ' ', '\t', '\n', '\r':
			if depth == 0 {
				return j, j > i
			}
		}
	}
	return len(b), depth == 0 && len(b) > i
}
