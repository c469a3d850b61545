package sss_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/superscaled/sss"
)

// FuzzOutputFrames feeds arbitrary bytes through every path that puts
// application data on the wire (a publication's data and event, a tell's
// data and name, an ask handler's raw result, a client's publish and ask)
// and checks that every frame the server writes is valid UTF-8 and valid
// JSON: a browser closes a WebSocket that receives anything else.
func FuzzOutputFrames(f *testing.F) {
	for _, seed := range []string{`{"text":"hi"}`, `"h\u00e9"`, "\"hi \xff\xfe\xc0\xaf\"", `{"a":"\ud800"}`, "null", "", "[1,2", "\"\x00\"", "1\n{\"type\":\"ask\"", "\"\u2028\""} {
		f.Add([]byte(seed), "ev\xff")
	}
	result := make(chan []byte, 1)
	srv, err := sss.New(
		sss.WithPublishParser(func(context.Context, *sss.Conn, string, string, json.RawMessage) error { return nil }),
		sss.WithSessionParser(func(*http.Request) (*sss.Session, error) { return &sss.Session{UserID: "u"}, nil }),
	)
	if err != nil {
		f.Fatal(err)
	}
	srv.HandleAsk("raw", func(context.Context, *sss.Conn, json.RawMessage) (any, error) {
		return json.RawMessage(<-result), nil
	})
	srv.HandleAsk("echo", func(_ context.Context, _ *sss.Conn, data json.RawMessage) (any, error) {
		return data, nil
	})
	ts := httptest.NewServer(srv)
	defer func() { srv.Close(); ts.Close() }()
	ctx := context.Background()
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(ts.URL, "http"), &websocket.DialOptions{Subprotocols: []string{sss.Subprotocol}})
	if err != nil {
		f.Fatal(err)
	}
	defer ws.CloseNow()
	ws.SetReadLimit(1 << 22)
	frames := make(chan []byte, 256)
	go func() {
		defer close(frames)
		for {
			_, msg, err := ws.Read(ctx)
			if err != nil {
				return
			}
			for _, fr := range bytes.Split(msg, []byte("\n")) {
				frames <- fr
			}
		}
	}()
	// until reads frames, checking each, up to the reply with id.
	until := func(t testing.TB, id int) {
		t.Helper()
		for {
			select {
			case fr, ok := <-frames:
				if !ok {
					t.Fatal("connection closed")
				}
				if !utf8.Valid(fr) || !json.Valid(fr) {
					t.Fatalf("the server wrote a frame that is not valid UTF-8 JSON: %q", fr)
				}
				var r struct {
					Type string
					ID   int
				}
				json.Unmarshal(fr, &r)
				if r.ID == id && (r.Type == "ack" || r.Type == "error") {
					return
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("no reply to request %d", id)
			}
		}
	}
	write := func(t testing.TB, msg string) {
		t.Helper()
		if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	write(f, `{"type":"subscribe","id":1,"channel":"fz"}`)
	until(f, 1)

	id := 1
	f.Fuzz(func(t *testing.T, data []byte, name string) {
		// The application's data, event and tell name.
		srv.Publish(ctx, "fz", name, json.RawMessage(data))
		srv.Tell(ctx, sss.ToUser("u"), "t"+name, json.RawMessage(data))
		// An ask handler's raw result.
		result <- data
		id += 4
		write(t, `{"type":"ask","id":`+strconv.Itoa(id)+`,"name":"raw"}`)
		until(t, id)
		// A client's own bytes, published and echoed: one text message,
		// refused as a whole if it is not UTF-8.
		write(t, `{"type":"publish","id":`+strconv.Itoa(id+1)+`,"channel":"fz","event":"e","data":`+string(data)+"}\n"+
			`{"type":"ask","id":`+strconv.Itoa(id+2)+`,"name":"echo","data":`+string(data)+`}`)
		// Everything queued so far is read before this one's reply, but for
		// the asks' replies, which any later iteration reads and checks.
		write(t, `{"type":"publish","id":`+strconv.Itoa(id+3)+`,"channel":"fz","event":"sync"}`)
		until(t, id+3)
	})
}
