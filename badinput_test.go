package sss_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/superscaled/sss"
)

// Every malformed frame gets an error reply (with the request id when the
// server could read one) and the connection stays up.
func TestBadInput(t *testing.T) {
	cl := newCluster(t, 1, sss.WithMaxMessageSize(8<<10))
	cl.servers[0].HandleAsk("ok", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) { return "ok", nil })
	victim := cl.dial(0, nil)
	victim.Subscribe("room")
	w := cl.dial(0, nil)
	w.Subscribe("mine")

	for _, tc := range []struct {
		frame  string
		code   string
		wantID uint64
	}{
		{`not json`, "bad_request", 0},
		{`{"type":"subscribe","id":1,"channel":`, "bad_request", 0},
		{`[]`, "bad_request", 0},
		{`"subscribe"`, "bad_request", 0},
		{`null`, "bad_request", 0},
		{`{}`, "bad_request", 0},
		{`{"id":7}`, "bad_request", 7},
		{`{"type":"launch","id":8}`, "bad_request", 8},
		{`{"type":"subscribe"}`, "bad_request", 0},
		{`{"type":"subscribe","id":9}`, "bad_request", 9},
		{`{"type":"subscribe","id":10,"channel":5}`, "bad_request", 10},
		{`{"type":"subscribe","id":"11","channel":"a"}`, "bad_request", 0},
		{`{"type":"subscribe","id":-1,"channel":"a"}`, "bad_request", 0},
		{`{"type":"subscribe","id":1.5,"channel":"a"}`, "bad_request", 0},
		{`{"type":"subscribe","id":1e300,"channel":"a"}`, "bad_request", 0},
		{`{"type":"subscribe","id":99999999999999999999999999,"channel":"a"}`, "bad_request", 0},
		{`{"type":"subscribe","id":9007199254740992,"channel":"a"}`, "bad_request", 0},
		{`{"type":"subscribe","id":0,"channel":"a"}`, "bad_request", 0},
		{`{"type":"subscribe","id":12,"channel":""}`, "bad_request", 12},
		{`{"type":"subscribe","id":13,"channel":"a..b"}`, "bad_request", 13},
		{`{"type":"subscribe","id":14,"channel":"` + strings.Repeat("a", 300) + `"}`, "too_large", 14},
		{`{"type":"subscribe","id":15,"channel":"$u.victim"}`, "forbidden", 15},
		{`{"type":"subscribe","id":16,"channel":"mine"}`, "conflict", 16},
		{`{"type":"subscribe","id":17,"channel":"x","query":{bad}}`, "bad_request", 0},
		{`{"type":"unsubscribe","id":18,"channel":"room"}`, "not_found", 18},
		{`{"type":"unsubscribe","id":19}`, "bad_request", 19},
		{`{"type":"unsubscribe","id":20,"channel":"` + strings.Repeat("a", 300) + `"}`, "too_large", 20},
		{`{"type":"ask","id":21}`, "bad_request", 21},
		{`{"type":"ask","id":22,"name":""}`, "bad_request", 22},
		{`{"type":"ask","id":23,"name":7}`, "bad_request", 23},
		{`{"type":"ask","id":24,"name":"` + strings.Repeat("n", 300) + `"}`, "too_large", 24},
		{`{"type":"ask","id":25,"name":"missing"}`, "not_found", 25},
		{`{"type":"tell","id":26,"name":"missing"}`, "not_found", 26},
		{`{"type":"publish","id":27,"channel":"room","event":"x"}`, "forbidden", 27},
		{`{"type":"resume","id":28,"subscriptions":"all"}`, "bad_request", 28},
		{`{"type":"reply"}`, "bad_request", 0},
		{`{"type":"ask","id":29,"name":"ok","data":` + strings.Repeat("[", 5000) + `}`, "bad_request", 0},
	} {
		w.SendRaw(tc.frame)
		f := w.Expect("error")
		if f.Error == nil || f.Error.Code != tc.code || f.ID != tc.wantID {
			t.Errorf("%.60s: got id %d %+v, want id %d code %s", tc.frame, f.ID, f.Error, tc.wantID, tc.code)
		}
	}

	// A binary message.
	w.SendBinary([]byte{0, 1, 2})
	if f := w.Expect("error"); f.Error.Code != "bad_request" {
		t.Fatalf("binary: %+v", f.Error)
	}
	// Frames that need no reply: pong, a reply to nothing.
	w.SendRaw(`{"type":"pong"}` + "\n" + `{"type":"reply","id":5,"result":1}`)
	// A batch with a bad frame in the middle: the others are served.
	w.SendRaw(`{"type":"ask","id":100,"name":"ok"}` + "\n\nnonsense\n" + `{"type":"ask","id":101,"name":"ok"}`)
	got := map[string]bool{}
	for i := 0; i < 3; i++ {
		f := w.Expect("")
		got[f.Type+":"+strings.TrimSpace(string(rune('0'+f.ID%10)))] = true
	}
	if !got["ack:0"] || !got["ack:1"] || !got["error:0"] {
		t.Fatalf("batch replies %v", got)
	}

	// Still up, and nobody else was affected.
	w.Ack(map[string]any{"type": "ask", "name": "ok"})
	cl.servers[0].Publish(context.Background(), "room", "e", 1)
	victim.Expect("pub")
	if st := cl.servers[0].Stats(); st.Connections != 2 || st.BadFrames == 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestRateLimit(t *testing.T) {
	cl := newCluster(t, 1, sss.WithRateLimit(1, 5))
	w := cl.dial(0, nil)
	limited := 0
	for i := 0; i < 20; i++ {
		f := w.Request(map[string]any{"type": "subscribe", "channel": "c" + strings.Repeat("x", i)})
		if f.Type == "error" && f.Error.Code == "rate_limited" {
			limited++
		}
	}
	if limited < 10 {
		t.Fatalf("only %d of 20 frames rate limited", limited)
	}
}

// A flood of frames from one client does not starve or corrupt another.
func TestFlood(t *testing.T) {
	cl := newCluster(t, 1)
	cl.servers[0].HandleAsk("ok", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) { return 1, nil })
	flooder := cl.dial(0, nil)
	other := cl.dial(0, nil)
	batch := strings.Repeat(`{"type":"subscribe","id":1,"channel":"bad channel"}`+"\n", 200)
	for i := 0; i < 50; i++ {
		flooder.SendRaw(batch)
	}
	other.Ack(map[string]any{"type": "ask", "name": "ok"})
	// The flooder gets every reply, unless its replies outran its reading
	// and it was cut off as a slow consumer: both are correct.
	for i := 0; i < 10000; i++ {
		f, ok := flooder.Next(5 * time.Second)
		if !ok {
			if code := sss.CloseCode(flooder.CloseStatus()); code != sss.CloseSlowConsumer {
				t.Fatalf("flooder closed with %d after %d replies", code, i)
			}
			break
		}
		if f.Type == "error" && f.Error.Code != "bad_request" {
			t.Fatalf("flood reply %+v", f.Error)
		}
	}
	other.Ack(map[string]any{"type": "ask", "name": "ok"})
}
