package sss_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/superscaled/sss"
)

// An idle connection's reader waits for its client on a shallow stack
// (socket.go), not under coder/websocket's reader, whose depth would keep
// an 8 KB stack per idle connection; and once the connection's setup is
// over, it goes on in a fresh goroutine, whose stack starts small
// (Conn.shed).
func TestIdleReaderWaitsShallow(t *testing.T) {
	cl := newCluster(t, 1)
	c := cl.dial(0, nil)
	c.Subscribe("news")
	var stack string
	eventually(t, "the reader to wait in socket.wait", func() bool {
		stack = goroutineRunning("sss.(*Server).read(")
		return strings.Contains(stack, "(*socket).wait")
	})
	if strings.Contains(stack, "coder/websocket") {
		t.Fatalf("the idle reader waits inside coder/websocket:\n%s", stack)
	}
	eventually(t, "the reader to move to a fresh goroutine", func() bool {
		stack = goroutineRunning("sss.(*Server).read(")
		return strings.Contains(stack, "created by github.com/superscaled/sss.(*Server).read")
	})
	// And it still reads, what is already there and what comes next.
	c.Subscribe("sport")
	c.Subscribe("weather")
}

// A reader woken to move to a fresh goroutine (after each pong: pings
// every 20 ms here) while its client keeps sending loses and reorders
// nothing.
func TestShedUnderTraffic(t *testing.T) {
	cl := newCluster(t, 1, sss.WithPing(20*time.Millisecond, 10*time.Millisecond))
	c := cl.dial(0, nil)
	for i := range 300 {
		ch := fmt.Sprintf("c%d", i%7)
		c.Ack(map[string]any{"type": "subscribe", "channel": ch})
		time.Sleep(time.Duration(i%3) * time.Millisecond)
		c.Ack(map[string]any{"type": "unsubscribe", "channel": ch})
	}
}

// goroutineRunning returns the stack of a goroutine with fn on it.
func goroutineRunning(fn string) string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, fn) {
			return g
		}
	}
	return ""
}

// Whatever way the client's bytes are cut, the server reads every frame:
// a frame sent with the upgrade request (read ahead by net/http), several
// in one write, one cut inside its header, and one larger than a read
// ahead, cut in three with pauses between.
func TestFramesCutAnyWay(t *testing.T) {
	_, hs := echoServer(t, httptest.NewServer)
	ask := func(id int, data string) []byte {
		return maskedFrame(fmt.Sprintf(`{"type":"ask","id":%d,"name":"echo","data":%q}`, id, data))
	}
	nc, br := rawUpgrade(t, hs.Listener.Addr().String(), ask(1, "with the upgrade"))

	want := map[int]string{1: "with the upgrade"}
	var three []byte
	for id := 2; id <= 4; id++ {
		want[id] = fmt.Sprintf("together %d", id)
		three = append(three, ask(id, want[id])...)
	}
	write := func(b []byte) {
		if _, err := nc.Write(b); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // the reader waits again
	}
	write(three)
	want[5] = "cut in its header"
	f := ask(5, want[5])
	write(f[:1])
	write(f[1:])
	want[6] = strings.Repeat("large ", 3000) // 18 KB
	f = ask(6, want[6])
	write(f[:100])
	write(f[100:9000])
	write(f[9000:])

	got := map[int]string{}
	for len(got) < len(want) {
		msg := readServerMessage(t, br)
		for _, line := range bytes.Split(msg, []byte("\n")) {
			var fr struct {
				Type   string
				ID     int
				Result string
			}
			if err := json.Unmarshal(line, &fr); err != nil {
				t.Fatalf("frame %q: %v", line, err)
			}
			if fr.Type == "ack" {
				got[fr.ID] = fr.Result
			}
		}
	}
	for id, data := range want {
		if got[id] != data {
			t.Errorf("ask %d: echoed %.40q, want %.40q", id, got[id], data)
		}
	}
}

// echoServer serves an sss.Server with an "echo" ask handler through
// start (httptest.NewServer or NewTLSServer), both closed at the end.
func echoServer(t *testing.T, start func(http.Handler) *httptest.Server) (*sss.Server, *httptest.Server) {
	t.Helper()
	srv, err := sss.New(sss.WithScaler(newMemory(t)))
	if err != nil {
		t.Fatal(err)
	}
	srv.HandleAsk("echo", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) {
		return data, nil
	})
	hs := start(srv)
	t.Cleanup(func() { srv.Close(); hs.Close() })
	return srv, hs
}

// rawUpgrade opens a TCP connection to addr, sends the upgrade request and
// first (client frames, possibly none) in one write, and reads the 101.
func rawUpgrade(t *testing.T, addr string, first []byte) (net.Conn, *bufio.Reader) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	upgrade := "GET / HTTP/1.1\r\nHost: " + addr + "\r\n" +
		"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: " + sss.Subprotocol + "\r\n\r\n"
	if _, err := nc.Write(append([]byte(upgrade), first...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %s", resp.Status)
	}
	return nc, br
}

// A client that goes away while its reader waits in socket.wait (a reset,
// then plain end of stream) ends its connection: the failed read ahead is
// what the next read reports.
func TestClientGoneWhileWaiting(t *testing.T) {
	for _, reset := range []bool{false, true} {
		srv, hs := echoServer(t, httptest.NewServer)
		nc, br := rawUpgrade(t, hs.Listener.Addr().String(), nil)
		readServerMessage(t, br) // the welcome
		eventually(t, "the reader to wait in socket.wait", func() bool {
			return strings.Contains(goroutineRunning("sss.(*Server).read("), "(*socket).wait")
		})
		if reset {
			nc.(*net.TCPConn).SetLinger(0) // close sends a reset
		}
		nc.Close()
		eventually(t, "the connection to end", func() bool { return srv.Stats().Connections == 0 })
	}
}

// maskedFrame is a client's text message of one frame.
func maskedFrame(payload string) []byte {
	b := []byte{0x81}
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n < 1<<16:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	key := [4]byte{0x12, 0x34, 0x56, 0x78}
	b = append(b, key[:]...)
	for i := range len(payload) {
		b = append(b, payload[i]^key[i%4])
	}
	return b
}

// readServerMessage reads one unfragmented, unmasked message.
func readServerMessage(t *testing.T, br *bufio.Reader) []byte {
	t.Helper()
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		t.Fatal(err)
	}
	if h[0] != 0x81 {
		t.Fatalf("frame header %#x: want a final text frame", h[0])
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var x [2]byte
		io.ReadFull(br, x[:])
		n = uint64(binary.BigEndian.Uint16(x[:]))
	case 127:
		var x [8]byte
		io.ReadFull(br, x[:])
		n = binary.BigEndian.Uint64(x[:])
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(br, msg); err != nil {
		t.Fatal(err)
	}
	return msg
}

// coder/websocket's control frames and sss's own messages share the socket
// without interleaving: a client pinging while it receives a stream of
// publications gets every pong and every publication intact.
func TestPongsBetweenMessages(t *testing.T) {
	const n = 3000
	cl := newCluster(t, 1, sss.WithSendQueue(2*n, 16<<20))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, cl.url(0), &websocket.DialOptions{Subprotocols: []string{sss.Subprotocol}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	ws.SetReadLimit(1 << 24)
	pubs := make(chan int, n)
	readErr := make(chan error, 1)
	go func() {
		for {
			_, msg, err := ws.Read(ctx)
			if err != nil {
				readErr <- err
				return
			}
			for _, line := range bytes.Split(msg, []byte("\n")) {
				var f struct{ Type string }
				if err := json.Unmarshal(line, &f); err != nil {
					readErr <- fmt.Errorf("frame %.80q: %w", line, err)
					return
				}
				if f.Type == "pub" {
					pubs <- 1
				}
			}
		}
	}()
	if err := ws.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","id":1,"channel":"room"}`)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	pinged := make(chan error, 1)
	go func() {
		for range 200 {
			if err := ws.Ping(ctx); err != nil {
				pinged <- err
				return
			}
		}
		pinged <- nil
	}()
	pad := strings.Repeat("p", 100)
	for i := range n {
		if err := cl.servers[0].Publish(ctx, "room", "e", map[string]any{"i": i, "pad": pad}); err != nil {
			t.Fatal(err)
		}
	}
	for got := 0; got < n; got++ {
		select {
		case <-pubs:
		case err := <-readErr:
			t.Fatalf("after %d publications: %v", got, err)
		case <-ctx.Done():
			t.Fatalf("%d publications of %d arrived", got, n)
		}
	}
	if err := <-pinged; err != nil {
		t.Fatalf("ping: %v", err)
	}
}

// Over TLS terminated by net/http the hijacked connection has no
// descriptor to wait on: the reader waits inside coder/websocket, and
// asks, replies and the close handshake work the same.
func TestTLSConnection(t *testing.T) {
	_, hs := echoServer(t, httptest.NewTLSServer)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "wss"+strings.TrimPrefix(hs.URL, "https"),
		&websocket.DialOptions{HTTPClient: hs.Client(), Subprotocols: []string{sss.Subprotocol}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	for i := range 3 {
		msg := fmt.Sprintf(`{"type":"ask","id":%d,"name":"echo","data":"over TLS %d"}`, i+1, i)
		if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	got := 0
	for got < 3 {
		_, msg, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("after %d replies: %v", got, err)
		}
		got += bytes.Count(msg, []byte(`"type":"ack"`))
	}
	if err := ws.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatalf("close handshake: %v", err)
	}
}
