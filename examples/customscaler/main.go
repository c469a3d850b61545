// Command customscaler shows a hand-written scaler.Scaler: CountingScaler
// (counting.go) wraps the in-memory scaler and counts what crosses it. Two
// sss servers share it, so they form one cluster; two raw WebSocket clients
// speak the sss.v1 protocol (docs/protocol.md) to them. It runs everything
// on 127.0.0.1 and exits by itself.
//
//	go run ./examples/customscaler
//
// customscaler_test.go runs the scalertest conformance suite on
// CountingScaler: do the same for a scaler of your own.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/coder/websocket"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/scaler/memory"
)

func main() {
	if err := run(os.Stdout); err != nil {
		log.Fatal(err)
	}
}

func run(out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	mem, err := memory.New()
	if err != nil {
		return err
	}
	defer mem.Close()
	// The scaler's debug log goes to out, without timestamps, so each
	// publication and node message shows up in the transcript.
	logger := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{
		Level: slog.LevelDebug,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.Attr{}
			}
			return a
		},
	}))
	counting := NewCountingScaler(mem, logger)

	// Two instances of one cluster, as if on two machines.
	a, urlA, stopA, err := start(counting)
	if err != nil {
		return err
	}
	defer stopA()
	b, urlB, stopB, err := start(counting)
	if err != nil {
		return err
	}
	defer stopB()
	fmt.Fprintf(out, "instance A is node %s, instance B is node %s\n", a.NodeID(), b.NodeID())

	// One client on each instance.
	alice, err := dial(ctx, urlA, "client 1")
	if err != nil {
		return err
	}
	defer alice.close()
	bob, err := dial(ctx, urlB, "client 2")
	if err != nil {
		return err
	}
	defer bob.close()
	if err := alice.subscribe(ctx, "news"); err != nil {
		return err
	}
	if err := bob.subscribe(ctx, "news.uk"); err != nil {
		return err
	}
	fmt.Fprintln(out, "client 1 on A subscribed to news; client 2 on B subscribed to news.uk")

	// B publishes; the scaler carries it to A as well.
	if err := b.Publish(ctx, "news.uk.london", "article", map[string]string{"title": "Hello"}); err != nil {
		return err
	}
	for _, c := range []*rawClient{alice, bob} {
		f, err := c.next(ctx, "pub")
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "%s got pub on %s via %s: %s %s\n", c.name, f.Channel, f.Sub, f.Event, f.Data)
	}

	// A tells client 2, which is connected to B: a node-to-node message.
	if err := a.Tell(ctx, sss.ToConn(bob.conn), "notify", map[string]string{"text": "hi from A"}); err != nil {
		return err
	}
	f, err := bob.next(ctx, "tell")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s got tell %s: %s\n", bob.name, f.Name, f.Data)

	fmt.Fprintf(out, "scaler counted: published=%d delivered=%d sent=%d received=%d\n",
		counting.Published.Load(), counting.Delivered.Load(), counting.Sent.Load(), counting.Received.Load())
	return nil
}

// start serves a new sss.Server on a free port of 127.0.0.1. stop shuts it
// down: connections are closed, then the listener.
func start(s *CountingScaler) (srv *sss.Server, url string, stop func(), err error) {
	srv, err = sss.New(sss.WithScaler(s), sss.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		return nil, "", nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", nil, err
	}
	hs := &http.Server{Handler: srv}
	served := make(chan struct{})
	go func() {
		defer close(served)
		hs.Serve(ln)
	}()
	stop = func() {
		srv.Shutdown(context.Background())
		hs.Close()
		<-served
	}
	return srv, "ws://" + ln.Addr().String() + "/", stop, nil
}

// rawClient speaks sss.v1 over a bare WebSocket, to show the protocol; real
// Go programs use package client.
type rawClient struct {
	name    string
	ws      *websocket.Conn
	conn    string   // connection id, from the welcome frame
	pending [][]byte // frames read but not yet consumed
	lastID  int
}

// frame holds the fields of server frames this demo reads.
type frame struct {
	Type    string          `json:"type"`
	ID      int             `json:"id"`
	Conn    string          `json:"conn"`
	Channel string          `json:"channel"`
	Sub     string          `json:"sub"`
	Event   string          `json:"event"`
	Name    string          `json:"name"`
	Data    json.RawMessage `json:"data"`
	Error   json.RawMessage `json:"error"`
}

func dial(ctx context.Context, url, name string) (*rawClient, error) {
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{sss.Subprotocol}})
	if err != nil {
		return nil, err
	}
	c := &rawClient{name: name, ws: ws}
	w, err := c.next(ctx, "welcome")
	if err != nil {
		ws.CloseNow()
		return nil, err
	}
	c.conn = w.Conn
	return c, nil
}

func (c *rawClient) subscribe(ctx context.Context, channel string) error {
	c.lastID++
	req, _ := json.Marshal(map[string]any{"type": "subscribe", "id": c.lastID, "channel": channel})
	if err := c.ws.Write(ctx, websocket.MessageText, req); err != nil {
		return err
	}
	f, err := c.next(ctx, "ack", "error")
	if err != nil {
		return err
	}
	if f.Type == "error" {
		return fmt.Errorf("subscribe %s: %s", channel, f.Error)
	}
	return nil
}

// next returns the next frame of one of the given types, answering pings
// and skipping anything else.
func (c *rawClient) next(ctx context.Context, types ...string) (frame, error) {
	for {
		for len(c.pending) > 0 {
			b := c.pending[0]
			c.pending = c.pending[1:]
			var f frame
			if err := json.Unmarshal(b, &f); err != nil {
				return frame{}, fmt.Errorf("%s: bad frame %q: %w", c.name, b, err)
			}
			if f.Type == "ping" {
				if err := c.ws.Write(ctx, websocket.MessageText, []byte(`{"type":"pong"}`)); err != nil {
					return frame{}, err
				}
				continue
			}
			for _, t := range types {
				if f.Type == t {
					return f, nil
				}
			}
		}
		_, msg, err := c.ws.Read(ctx)
		if err != nil {
			return frame{}, fmt.Errorf("%s: %w", c.name, err)
		}
		// One message may batch several frames, one per line.
		for _, line := range bytes.Split(msg, []byte("\n")) {
			if len(line) > 0 {
				c.pending = append(c.pending, line)
			}
		}
	}
}

func (c *rawClient) close() { c.ws.Close(websocket.StatusNormalClosure, "bye") }
