package wstest

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// server is a fake sss server: it sends a welcome, then runs script on
// the connection. Frames the script reads come back decoded.
func server(t *testing.T, script func(ctx context.Context, ws *websocket.Conn, read func() map[string]any)) string {
	t.Helper()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{subprotocol}})
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		defer ws.CloseNow()
		ctx := r.Context()
		ws.Write(ctx, websocket.MessageText, []byte(`{"type":"welcome","version":1,"conn":"n.c","session":"s","user":"u",`+
			`"channels":{"user":"$u.u","session":"$s.s"},"positions":{"$u.u":{"offset":3,"epoch":"e"}},`+
			`"ping":25000,"pong":10000,"limits":{"maxMessage":65536,"maxSubscriptions":256,"concurrency":16}}`))
		script(ctx, ws, func() map[string]any {
			_, b, err := ws.Read(ctx)
			if err != nil {
				return nil
			}
			var m map[string]any
			json.Unmarshal(b, &m)
			return m
		})
	}))
	t.Cleanup(ts.Close)
	return "ws" + strings.TrimPrefix(ts.URL, "http")
}

func TestQueueAndRecord(t *testing.T) {
	got := make(chan []string, 1)
	url := server(t, func(ctx context.Context, ws *websocket.Conn, read func() map[string]any) {
		req := read()
		id, _ := json.Marshal(req["id"])
		// A pub and a ping before the ack, a pub after it, in one batch.
		ws.Write(ctx, websocket.MessageText, []byte(`{"type":"pub","channel":"a","sub":"a","data":1,"from":{"user":"x","conn":"y"},"offset":4,"epoch":"e"}`+"\n"+
			`{"type":"ping"}`+"\n"+`{"type":"ack","id":`+string(id)+`,"result":{"channel":"a"}}`+"\n"+`{"type":"pub","channel":"a","sub":"a","data":2}`))
		var types []string
		for range 2 { // the pong, then the request that follows
			types = append(types, read()["type"].(string))
		}
		got <- types
		read()
	})
	c := Dial(t, url, nil, Name("c"))
	if w := c.Welcome; w.User != "u" || w.Channels.Session != "$s.s" || w.Positions["$u.u"] != (Position{3, "e"}) || w.Limits.Concurrency != 16 || w.Ping != 25000 {
		t.Fatalf("welcome %v", w)
	}
	if f := c.Subscribe("a"); f.ID <= idBase || string(f.Result) != `{"channel":"a"}` {
		t.Fatalf("ack %v", f)
	}
	if f := c.Expect("pub"); string(f.Data) != "1" || f.From == nil || f.From.Conn != "y" || f.Offset != 4 {
		t.Fatalf("first pub %v", f)
	}
	if f := c.Expect(""); string(f.Data) != "2" {
		t.Fatalf("second pub %v", f)
	}
	c.Nothing(20 * time.Millisecond)
	// The record keeps everything, the ping and the consumed frames too.
	if f := c.Wait("the first pub", func(f Frame) bool { return f.Type == "pub" }); string(f.Data) != "1" {
		t.Fatalf("recorded %v", f)
	}
	if _, ok := c.Find(func(f Frame) bool { return f.Type == "ping" }); !ok {
		t.Fatal("ping not recorded")
	}
	if p := c.WaitPubs("a", 2); !slices.Equal(p, []string{"1", "2"}) {
		t.Fatalf("pubs %v", p)
	}
	c.SendRaw(`{"type":"ready"}`)
	if types := <-got; !slices.Equal(types, []string{"pong", "ready"}) {
		t.Fatalf("server read %v", types)
	}
}

func TestAsksPingsAndClose(t *testing.T) {
	replies := make(chan map[string]any, 1)
	url := server(t, func(ctx context.Context, ws *websocket.Conn, read func() map[string]any) {
		read() // the test says when
		ws.Write(ctx, websocket.MessageText, []byte(`{"type":"ping"}`+"\n"+`{"type":"ask","id":7,"name":"confirm","data":"sure?"}`))
		replies <- read() // no pong first
		ws.Close(4002, "slow")
	})
	c := Dial(t, url, nil, NoPongs())
	c.AnswerAsks(func(name string, data json.RawMessage) any { return name + ":" + string(data) })
	c.Send(map[string]string{"type": "ready"})
	if f, ok := c.Next(Timeout); !ok || f.Type != "ping" {
		t.Fatalf("next %v %v", f, ok)
	}
	if f := c.Expect("ask"); f.ID != 7 || f.Name != "confirm" {
		t.Fatalf("ask %v", f)
	}
	if r := <-replies; r["type"] != "reply" || r["id"] != 7.0 || r["result"] != `confirm:"sure?"` {
		t.Fatalf("reply %v", r)
	}
	if code := c.CloseStatus(); code != 4002 {
		t.Fatalf("close status %d", code)
	}
	select {
	case <-c.Done():
	default:
		t.Fatal("Done not closed")
	}
	if _, ok := c.Next(time.Millisecond); ok {
		t.Fatal("a frame after the close")
	}
}
