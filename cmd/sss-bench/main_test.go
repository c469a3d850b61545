package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/superscaled/sss"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestFramesAndIntAfter(t *testing.T) {
	var got []string
	frames([]byte("a\n\nbc\nd"), func(f []byte) { got = append(got, string(f)) })
	if strings.Join(got, ",") != "a,bc,d" {
		t.Fatalf("frames: %q", got)
	}
	if n, ok := intAfter([]byte(`{"data":{"seq":42,"ts":-7}}`), `"seq":`); !ok || n != 42 {
		t.Fatalf("seq: %d %v", n, ok)
	}
	if n, ok := intAfter([]byte(`{"data":{"seq":42,"ts":-7}}`), `"ts":`); !ok || n != -7 {
		t.Fatalf("ts: %d %v", n, ok)
	}
	if _, ok := intAfter([]byte(`{"x":1}`), `"seq":`); ok {
		t.Fatal("found a missing key")
	}
	for p, f := range map[proto]string{
		sssProto{}:        `{"type":"ack","id":7,"result":{}}`,
		centrifugeProto{}: `{"id":7,"rpc":{"data":{}}}`,
		bareProto{}:       `{"id":7,"result":{}}`,
	} {
		if id, ok := p.reply([]byte(f)); !ok || id != 7 {
			t.Fatalf("%s: reply id %d %v", p.name(), id, ok)
		}
		if _, ok := p.reply([]byte(`{"push":{}}`)); ok {
			t.Fatalf("%s: a push taken for a reply", p.name())
		}
	}
}

func TestLoopbackOnly(t *testing.T) {
	for _, u := range []string{"ws://127.0.0.1:1/ws", "ws://localhost:1/ws", "ws://[::1]:1/ws", ""} {
		if err := loopbackOnly(u); err != nil {
			t.Errorf("%s refused: %v", u, err)
		}
	}
	for _, u := range []string{"ws://10.0.0.1/ws", "ws://example.com/ws", "ws://192.168.1.1:80/ws"} {
		if loopbackOnly(u) == nil {
			t.Errorf("%s allowed", u)
		}
	}
}

// An sss server with the control API, in this process: the scenarios run
// against it with small counts and must see every publication once, in
// order.
func TestScenariosAgainstSSS(t *testing.T) {
	srv, err := sss.New(sss.WithSendQueue(1<<12, 8<<20))
	if err != nil {
		t.Fatal(err)
	}
	srv.HandleAsk("echo", func(ctx context.Context, c *sss.Conn, data json.RawMessage) (any, error) { return data, nil })
	mux := http.NewServeMux()
	mux.Handle("/ws", srv)
	mux.HandleFunc("POST /publish", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		n, _ := strconv.Atoi(q.Get("n"))
		rate, _ := strconv.Atoi(q.Get("rate"))
		for i := range n {
			if rate > 0 && i > 0 {
				time.Sleep(time.Second / time.Duration(rate))
			}
			data := fmt.Appendf(nil, `{"seq":%d,"ts":%d}`, i, time.Now().UnixNano())
			if err := srv.Publish(r.Context(), q.Get("channel"), "t", json.RawMessage(data)); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
		}
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, `{"goroutines":1}`) })
	ts := httptest.NewServer(mux)
	defer func() {
		http.DefaultClient.CloseIdleConnections()
		ts.Close()
		srv.Close()
	}()
	cfg := &config{
		target: "sss", proto: sssProto{}, url: "ws" + strings.TrimPrefix(ts.URL, "http") + "/ws", control: ts.URL,
		pid: os.Getpid(), subs: 5, msgs: 50, rate: 50, duration: 200 * time.Millisecond,
		conns: 5, clients: 3, dialPar: 4, settle: 50 * time.Millisecond,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	for _, rate := range []int{0, cfg.rate} {
		res, err := fanout(ctx, cfg, cfg.url, cfg.pid, rate)
		if err != nil {
			t.Fatal(err)
		}
		want := res.Msgs * cfg.subs
		if res.Ops != want || res.Lost != 0 || res.Dup != 0 || res.OOO != 0 {
			t.Fatalf("rate %d: %d deliveries of %d, lost %d dup %d ooo %d", rate, res.Ops, want, res.Lost, res.Dup, res.OOO)
		}
		if res.P50 <= 0 || res.Max < res.P99 || res.P99 < res.P50 {
			t.Fatalf("rate %d: latencies out of order: %+v", rate, res)
		}
	}
	res, err := ask(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Ops == 0 || res.PerSec <= 0 {
		t.Fatalf("ask: %+v", res)
	}
	res, err = idle(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Conns != cfg.conns {
		t.Fatalf("idle: %+v", res)
	}
}

func TestReport(t *testing.T) {
	path := filepath.Join(t.TempDir(), "runs.jsonl")
	lines := `{"target":"centrifuge","scenario":"ask","cpu_us_per_op":20,"per_s":100}
{"target":"sss","scenario":"ask","cpu_us_per_op":10,"per_s":300}
{"target":"sss","scenario":"ask","cpu_us_per_op":12,"per_s":200}
{"target":"sss","scenario":"ask","cpu_us_per_op":14,"per_s":100}
`
	if err := os.WriteFile(path, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := report(&out, path); err != nil {
		t.Fatal(err)
	}
	// sss's median CPU is 12 against centrifuge's 20, its rate 200 to 100.
	for _, want := range []string{"0.60×", "2.00×", "12 (10–14) n=3"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}
