package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// wsClient is a raw sss.v1 client (docs/protocol.md): it records every frame
// the server sends, answers pings, and answers asks with replyAsk.
type wsClient struct {
	t    *testing.T
	name string
	ws   *websocket.Conn
	done chan struct{}

	mu      sync.Mutex
	frames  []frame
	nextID  uint64
	closeCd websocket.StatusCode
	notify  chan struct{}
	// replyAsk answers server asks; nil leaves them unanswered.
	replyAsk func(name string, data json.RawMessage) any
}

// frame is any server frame; fields a type does not use stay empty.
type frame struct {
	Type    string          `json:"type"`
	ID      uint64          `json:"id"`
	Conn    string          `json:"conn"`
	Channel string          `json:"channel"`
	Sub     string          `json:"sub"`
	Event   string          `json:"event"`
	Name    string          `json:"name"`
	Data    json.RawMessage `json:"data"`
	Result  json.RawMessage `json:"result"`
	Error   *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Offset uint64 `json:"offset"`
	Epoch  string `json:"epoch"`
}

// dialWS connects to an sss server; header carries what the test's session
// parser reads. The connection is closed when the test ends.
func dialWS(t *testing.T, url, name string, header http.Header) *wsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{"sss.v1"}, HTTPHeader: header})
	if err != nil {
		t.Fatalf("%s: dial %s: %v", name, url, err)
	}
	ws.SetReadLimit(1 << 20)
	c := &wsClient{t: t, name: name, ws: ws, done: make(chan struct{}), notify: make(chan struct{}, 1)}
	go c.read()
	t.Cleanup(c.close)
	c.wait("welcome", func(f frame) bool { return f.Type == "welcome" })
	return c
}

func (c *wsClient) read() {
	defer close(c.done)
	for {
		_, msg, err := c.ws.Read(context.Background())
		if err != nil {
			c.mu.Lock()
			c.closeCd = websocket.CloseStatus(err)
			c.mu.Unlock()
			c.signal()
			return
		}
		for _, line := range bytes.Split(msg, []byte("\n")) {
			if len(line) == 0 {
				continue
			}
			var f frame
			if err := json.Unmarshal(line, &f); err != nil {
				continue
			}
			switch f.Type {
			case "ping":
				c.send(map[string]any{"type": "pong"})
				continue
			case "ask":
				c.mu.Lock()
				reply := c.replyAsk
				c.mu.Unlock()
				if reply != nil {
					c.send(map[string]any{"type": "reply", "id": f.ID, "result": reply(f.Name, f.Data)})
				}
			}
			c.mu.Lock()
			c.frames = append(c.frames, f)
			c.mu.Unlock()
			c.signal()
		}
	}
}

func (c *wsClient) signal() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

func (c *wsClient) send(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.ws.Write(ctx, websocket.MessageText, b) // a failure shows as a missing reply
}

// request sends a request with a fresh id and waits for its ack or error.
func (c *wsClient) request(req map[string]any) frame {
	c.t.Helper()
	c.mu.Lock()
	c.nextID++
	id := c.nextID
	c.mu.Unlock()
	req["id"] = id
	c.send(req)
	return c.wait(fmt.Sprintf("reply to %v", req), func(f frame) bool {
		return (f.Type == "ack" || f.Type == "error") && f.ID == id
	})
}

// ack is request that fails the test on an error reply.
func (c *wsClient) ack(req map[string]any) frame {
	c.t.Helper()
	f := c.request(req)
	if f.Type != "ack" {
		c.t.Fatalf("%s: %v: got %s %+v", c.name, req, f.Type, f.Error)
	}
	return f
}

// wait returns the first recorded frame matching match, waiting up to 10s.
func (c *wsClient) wait(what string, match func(frame) bool) frame {
	c.t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		if f, ok := c.find(match); ok {
			return f
		}
		select {
		case <-c.notify:
		case <-c.done:
			if f, ok := c.find(match); ok {
				return f
			}
			c.t.Fatalf("%s: connection closed (%d) while waiting for %s; got %s", c.name, c.closeCode(), what, c.summary())
		case <-deadline.C:
			c.t.Fatalf("%s: no %s within 10s; got %s", c.name, what, c.summary())
		}
	}
}

func (c *wsClient) find(match func(frame) bool) (frame, bool) {
	c.mu.Lock()
	frames := append([]frame(nil), c.frames...)
	c.mu.Unlock()
	for _, f := range frames {
		if match(f) {
			return f, true
		}
	}
	return frame{}, false
}

func (c *wsClient) closeCode() websocket.StatusCode {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeCd
}

// pubs returns the data of the pub frames received on channel, in order.
func (c *wsClient) pubs(channel string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, f := range c.frames {
		if f.Type == "pub" && f.Channel == channel {
			out = append(out, string(f.Data))
		}
	}
	return out
}

func (c *wsClient) waitPubs(channel string, n int) []string {
	c.t.Helper()
	c.wait(fmt.Sprintf("%d pubs on %q", n, channel), func(frame) bool { return len(c.pubs(channel)) >= n })
	return c.pubs(channel)
}

func (c *wsClient) summary() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var types []string
	for _, f := range c.frames {
		types = append(types, f.Type+":"+f.Channel+f.Name)
	}
	return "[" + strings.Join(types, " ") + "]"
}

func (c *wsClient) close() {
	c.ws.Close(websocket.StatusNormalClosure, "")
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		c.ws.CloseNow()
		<-c.done
	}
}
