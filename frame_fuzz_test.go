package sss

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"unicode/utf8"

	"github.com/superscaled/sss/scaler"
)

// FuzzDecodeFrame feeds arbitrary client messages to the decoder: it must
// never panic, every error must have a code, an accepted frame must be of a
// known type with a valid id, and the error reply must be valid JSON.
func FuzzDecodeFrame(f *testing.F) {
	for _, s := range []string{
		`{"type":"subscribe","id":1,"channel":"news","query":{"pw":"x"}}`,
		`{"type":"unsubscribe","id":2,"channel":"news"}`,
		`{"type":"publish","id":3,"channel":"chat","event":"m","data":[1,2]}`,
		`{"type":"ask","id":4,"name":"time","data":null}`,
		`{"type":"tell","id":5,"name":"like","data":"x"}`,
		`{"type":"resume","id":6,"subscriptions":[{"channel":"a","query":1}]}`,
		`{"type":"reply","id":7,"error":{"code":"forbidden","message":"no"}}`,
		`{"type":"pong"}`,
		`{"type":"subscribe","id":1e400}`,
		`{"id":"x","type":5}`,
		"{\"type\":\"ask\",\"id\":1,\"name\":\"\xff\"}",
		`[{"type":"pong"}]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, id, e := decodeFrame(b)
		if e != nil {
			if e.Code == "" {
				t.Fatalf("error without code for %q", b)
			}
			if !json.Valid(encodeError(id, e)) {
				t.Fatalf("invalid error frame for %q", b)
			}
			if id > maxID {
				t.Fatalf("id %d out of range", id)
			}
			return
		}
		switch fr.Type {
		case typePong, typeReady:
		case typeSubscribe, typeUnsubscribe, typePublish, typeAsk, typeTell, typeResume, typeReply:
			if fr.ID == 0 || fr.ID > maxID {
				t.Fatalf("accepted %s with id %d", fr.Type, fr.ID)
			}
		default:
			t.Fatalf("accepted unknown type %q", fr.Type)
		}
		ack := encodeAck(fr.ID, nil)
		pub := encodePub(&scaler.Publication{Channel: fr.Channel, Event: fr.Event, Sender: Sender{User: fr.Name}, Time: int64(fr.ID)}, fr.Channel, fr.ID, fr.Name)
		if !json.Valid(ack) || !json.Valid(pub) {
			t.Fatalf("invalid encoding for %q", b)
		}
	})
}

// Frame encoders must produce valid JSON for any string.
func FuzzEncodeStrings(f *testing.F) {
	f.Add("news", "e\n\"x\"", "u\x00")
	f.Fuzz(func(t *testing.T, ch, event, user string) {
		for _, b := range [][]byte{
			encodePub(&scaler.Publication{Channel: ch, Event: event, Data: []byte(`{"a":1}`), Sender: Sender{User: user, Conn: event}, Time: 1}, ch, 7, user),
			encodeTell(event, nil),
			encodeServerAsk(1, event, []byte(`1`)),
			encodeError(1, &Error{Code: Code(ch), Message: event}),
		} {
			if !json.Valid(b) {
				t.Fatalf("invalid JSON %q", b)
			}
			var m map[string]any
			json.Unmarshal(b, &m)
		}
	})
}

// FuzzDecodeFast checks the fast decoder against encoding/json: whatever
// it accepts, json.Unmarshal accepts too and decodes to the same rawFrame.
func FuzzDecodeFast(f *testing.F) {
	for _, s := range []string{
		`{"type":"ask","id":4,"name":"time","data":null}`,
		`{"type":"ask","id":4,"name":"time","data":{"a":[1,"}",{"b":"\"x"}]}}`,
		` { "type" : "publish" , "id" : 3 , "channel" : "chat" , "event" : "m" , "data" : [1, 2] } `,
		`{"type":"subscribe","id":1,"channel":"news","query":"pw"}`,
		`{"type":"reply","id":7,"result":-1.5e3}`,
		`{"type":"pong"}`,
		`{}`,
		`{"type":"ask","type":"tell","id":1,"name":"x"}`,
		`{"type":"ask","id":01,"name":"x"}`,
		`{"Type":"ask","id":1,"name":"x"}`,
		`{"type":"ask","id":1,"name":"x","data":tru}`,
		`{"type":"ask","id":1,"name":"x\u0041"}`,
		`{"type":"ask","id":1,"name":"x",}`,
		`{"type":"ask","id":1,"data":1 2}`,
		"{\"type\":\"ask\",\"id\":1,\"name\":\"\xff\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var fast rawFrame
		if !decodeFast(b, &fast) {
			return
		}
		var slow rawFrame
		if err := json.Unmarshal(b, &slow); err != nil {
			t.Fatalf("fast path accepted %q, encoding/json refused it: %v", b, err)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("fast path decoded %q as %+v, encoding/json as %+v", b, fast, slow)
		}
	})
}

// FuzzCompactJSON checks compactJSON against json.Compact: the same bytes
// for valid JSON (returned as is when already compact, spaces inside strings
// included), an error for invalid JSON or UTF-8, and never a raw newline.
func FuzzCompactJSON(f *testing.F) {
	for _, s := range []string{`{"n":1,"text":"round trip"}`, "{\n  \"a\": 1\n}", `"a\"b c"`, `[1, 2]`, `{"a":"\\"}`, `"x`, " 1 ", "\"\t\""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := compactJSON(b)
		if len(b) == 0 {
			return
		}
		var want bytes.Buffer
		werr := json.Compact(&want, b)
		if !utf8.Valid(b) {
			if err == nil {
				t.Fatalf("%q: invalid UTF-8 accepted", b)
			}
			return
		}
		if (err != nil) != (werr != nil) {
			t.Fatalf("%q: error %v, json.Compact's %v", b, err, werr)
		}
		if err == nil && !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("%q: %q, json.Compact gives %q", b, got, want.Bytes())
		}
		if bytes.ContainsAny(got, "\n\r") {
			t.Fatalf("%q: a raw newline in %q", b, got)
		}
	})
}
