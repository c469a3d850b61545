package sss_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/superscaled/sss"
)

// The write timeout bounds each write, not the connection's idle time: a
// connection idle for longer than it still answers a WebSocket ping
// (coder/websocket writes the pong itself, through the same socket and its
// write deadline) and still gets its replies.
func TestIdleLongerThanWriteTimeout(t *testing.T) {
	cl := newCluster(t, 1, sss.WithWriteTimeout(100*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, cl.url(0), &websocket.DialOptions{Subprotocols: []string{sss.Subprotocol}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if _, _, err := c.Read(ctx); err != nil { // welcome
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond) // idle: four write timeouts
	// Ping needs a reader for its pong: read the next message meanwhile.
	got := make(chan string, 1)
	go func() {
		_, msg, err := c.Read(ctx)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(msg)
	}()
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("no pong after an idle period: %v", err)
	}
	if err := c.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","id":1,"channel":"news"}`)); err != nil {
		t.Fatal(err)
	}
	if msg := <-got; !strings.Contains(msg, `"type":"ack"`) {
		t.Fatalf("after an idle period: %s", msg)
	}
}
