// Command bare is the reference target of the side-by-side bench: the
// least a pub/sub server on github.com/coder/websocket does. A publication
// is encoded once (it is its own payload) and written once per subscriber
// by that subscriber's writer goroutine; {"sub":"channel"} subscribes
// (answered {"subscribed":"channel"}); {"id":N,"ask":"echo","data":D} is
// answered {"id":N,"result":D}. No history, no ordering guarantees beyond
// one writer per connection, no limits: a floor, not a product.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/superscaled/sss/bench/internal/control"
)

type conn struct {
	ws  *websocket.Conn
	out chan []byte // bounded: a subscriber that does not keep up loses publications
}

type hub struct {
	mu   sync.RWMutex
	subs map[string]map[*conn]struct{}
}

func (h *hub) publish(channel string, data []byte) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for c := range h.subs[channel] {
		select {
		case c.out <- data:
		default:
		}
	}
}

func (h *hub) sub(channel string, c *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := h.subs[channel]
	if m == nil {
		m = make(map[*conn]struct{})
		h.subs[channel] = m
	}
	m[c] = struct{}{}
}

func (h *hub) drop(c *conn, channels []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, ch := range channels {
		delete(h.subs[ch], c)
		if len(h.subs[ch]) == 0 {
			delete(h.subs, ch)
		}
	}
}

// smallHijack hands the WebSocket library smaller buffers than net/http's
// 4 KB + 4 KB, for the connection's whole life.
type smallHijack struct{ http.ResponseWriter }

func (w smallHijack) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	// What net/http read ahead (a client may send right after the 101,
	// which is written before the hijack) must stay in the buffer handed
	// on: the library takes only what is buffered.
	b, _ := rw.Reader.Peek(rw.Reader.Buffered())
	r := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(b), c), max(512, len(b)))
	if len(b) > 0 {
		r.Peek(len(b))
	}
	return c, bufio.NewReadWriter(r, bufio.NewWriterSize(c, 1024)), nil
}

func (h *hub) serve(w http.ResponseWriter, r *http.Request) {
	ws, err := websocket.Accept(smallHijack{w}, r, nil)
	if err != nil {
		return
	}
	c := &conn{ws: ws, out: make(chan []byte, 256)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for {
			select {
			case m := <-c.out:
				if ws.Write(ctx, websocket.MessageText, m) != nil {
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	var channels []string
	defer func() { h.drop(c, channels) }()
	for {
		_, msg, err := ws.Read(ctx)
		if err != nil {
			ws.CloseNow()
			return
		}
		for _, f := range bytes.Split(msg, []byte("\n")) {
			var req struct {
				ID   uint64          `json:"id"`
				Sub  string          `json:"sub"`
				Ask  string          `json:"ask"`
				Data json.RawMessage `json:"data"`
			}
			if json.Unmarshal(f, &req) != nil {
				continue
			}
			switch {
			case req.Sub != "":
				h.sub(req.Sub, c)
				channels = append(channels, req.Sub)
				b, _ := json.Marshal(map[string]string{"subscribed": req.Sub})
				ws.Write(ctx, websocket.MessageText, b)
			case req.Ask == "echo":
				b := append([]byte(`{"id":`), strconv.FormatUint(req.ID, 10)...)
				b = append(b, `,"result":`...)
				b = append(b, req.Data...)
				b = append(b, '}')
				ws.Write(ctx, websocket.MessageText, b)
			}
		}
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8403", "listen address")
	flag.Parse()
	h := &hub{subs: make(map[string]map[*conn]struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", h.serve)
	mux.Handle("/", control.Handler(func(ctx context.Context, channel string, data []byte) error {
		h.publish(channel, data)
		return nil
	}))
	hs := &http.Server{Addr: *addr, Handler: mux}
	go func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
		<-ch
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		hs.Shutdown(ctx)
		os.Exit(0)
	}()
	if err := hs.ListenAndServe(); err != http.ErrServerClosed {
		log.Fatal(err)
	}
}
