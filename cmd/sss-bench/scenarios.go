package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// result is one scenario's JSON line.
type result struct {
	Target   string `json:"target"`
	Scenario string `json:"scenario"`

	Conns   int     `json:"conns"`
	Msgs    int     `json:"msgs,omitempty"`
	Rate    int     `json:"rate,omitempty"`
	Ops     int     `json:"ops"` // deliveries or round trips
	Lost    int     `json:"lost"`
	Dup     int     `json:"dup"`
	OOO     int     `json:"ooo"`
	Elapsed float64 `json:"elapsed_s"`
	// Published is how long publishing took: a burst whose publisher
	// finishes long before its deliveries waits in the queues, and its
	// latency measures that wait.
	Published float64 `json:"published_s,omitempty"`

	PerSec    float64 `json:"per_s"`
	CPUPerOp  float64 `json:"cpu_us_per_op"`
	CPU       float64 `json:"cpu_s"`
	ClientCPU float64 `json:"client_cpu_s"` // this tool's own: near elapsed × its cores, the tool was the bottleneck
	RedisCPU  float64 `json:"redis_cpu_us_per_pub,omitempty"`
	P50       float64 `json:"p50_ms"`
	P90       float64 `json:"p90_ms"`
	P99       float64 `json:"p99_ms"`
	Max       float64 `json:"max_ms"`
	RSSPer    float64 `json:"rss_kb_per_conn,omitempty"`
	GoPer     float64 `json:"goroutines_per_conn,omitempty"`
}

func (r *result) summary() string {
	switch r.Scenario {
	case "idle":
		return fmt.Sprintf("%-10s %-6s %d conns: %.1f KB RSS and %.2f goroutines per connection",
			r.Target, r.Scenario, r.Conns, r.RSSPer, r.GoPer)
	case "ask":
		return fmt.Sprintf("%-10s %-6s %d clients: %.0f round trips/s, CPU %.2f µs per round trip, p50 %.2f ms, p99 %.2f ms",
			r.Target, r.Scenario, r.Conns, r.PerSec, r.CPUPerOp, r.P50, r.P99)
	}
	return fmt.Sprintf("%-10s %-6s %d subs × %d: %.0f deliveries/s, CPU %.2f µs per delivery, p50 %.1f p90 %.1f p99 %.1f max %.1f ms, lost %d dup %d ooo %d",
		r.Target, r.Scenario, r.Conns, r.Msgs, r.PerSec, r.CPUPerOp, r.P50, r.P90, r.P99, r.Max, r.Lost, r.Dup, r.OOO)
}

// dialAll opens n connections to u, each subscribed to the channels
// chans(i) returns, cfg.dialPar at a time.
func dialAll(ctx context.Context, cfg *config, u string, n int, chans func(i int) []string) ([]*websocket.Conn, error) {
	conns := make([]*websocket.Conn, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, cfg.dialPar)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{Subprotocols: cfg.proto.subprotocols()})
			if err != nil {
				errs <- err
				return
			}
			c.SetReadLimit(1 << 20)
			conns[i] = c
			if err := cfg.proto.handshake(ctx, c); err != nil {
				errs <- err
				return
			}
			if chs := chans(i); len(chs) > 0 {
				if err := cfg.proto.subscribe(ctx, c, chs); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		closeAll(conns)
		return nil, err
	}
	return conns, nil
}

func closeAll(conns []*websocket.Conn) {
	for _, c := range conns {
		if c != nil {
			c.CloseNow()
		}
	}
}

// subscriber is one fanout subscriber's account of what it received.
type subscriber struct {
	seen     []bool
	unique   int
	dup, ooo int
	last     int64
	lat      []int32 // microseconds
	lastRecv time.Time
}

// readPubs reads publications until every one of msgs arrived or ctx
// ends (the caller then closes c, which ends the read in progress). It
// does no JSON decoding: two byte searches per frame; and it reads without
// a context, for which coder/websocket would register and clear an
// AfterFunc per message.
func readPubs(ctx context.Context, p proto, c *websocket.Conn, s *subscriber, msgs int, done *atomic.Int32) {
	var buf bytes.Buffer
	finished := false
	for ctx.Err() == nil {
		_, r, err := c.Reader(context.Background())
		if err != nil {
			break
		}
		buf.Reset()
		if _, err := buf.ReadFrom(r); err != nil {
			break
		}
		now := time.Now()
		frames(buf.Bytes(), func(f []byte) {
			if pong := p.pong(f); pong != nil {
				c.Write(ctx, websocket.MessageText, pong)
				return
			}
			seq, ok := intAfter(f, `"seq":`)
			if !ok || seq < 0 || seq >= int64(msgs) {
				return
			}
			if s.seen[seq] {
				s.dup++
				return
			}
			if seq < s.last {
				s.ooo++
			}
			s.seen[seq] = true
			s.unique++
			s.last = seq
			s.lastRecv = now
			if ts, ok := intAfter(f, `"ts":`); ok {
				s.lat = append(s.lat, int32(now.Sub(time.Unix(0, ts))/time.Microsecond))
			}
		})
		if s.unique == msgs && !finished {
			finished = true
			done.Add(1)
		}
	}
}

// fanout runs fanout (rate 0), paced and cross.
func fanout(ctx context.Context, cfg *config, u string, pid, rate int) (*result, error) {
	msgs := cfg.msgs
	if rate > 0 {
		msgs = max(1, int(float64(rate)*cfg.duration.Seconds()))
	}
	conns, err := dialAll(ctx, cfg, u, cfg.subs, func(int) []string { return []string{"bench"} })
	if err != nil {
		return nil, err
	}
	defer closeAll(conns)
	// A moment for the subscriptions to settle everywhere (cross: through
	// the scaler).
	time.Sleep(500 * time.Millisecond)

	rctx, rcancel := context.WithCancel(ctx)
	var done atomic.Int32
	subs := make([]*subscriber, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		subs[i] = &subscriber{seen: make([]bool, msgs), last: -1, lat: make([]int32, 0, msgs)}
		wg.Add(1)
		go func() {
			defer wg.Done()
			readPubs(rctx, cfg.proto, c, subs[i], msgs, &done)
		}()
	}
	cpu0, err := cpuTime(pid)
	if err != nil {
		rcancel()
		return nil, err
	}
	self0, _ := cpuTime(os.Getpid())
	var redis0 time.Duration
	if cfg.redisPID > 0 {
		redis0, _ = cpuTime(cfg.redisPID)
	}
	start := time.Now()
	if err := control(ctx, cfg.control, fmt.Sprintf("/publish?channel=bench&n=%d&rate=%d&size=%d", msgs, rate, cfg.size), nil); err != nil {
		rcancel()
		wg.Wait()
		return nil, err
	}
	published := time.Since(start)
	// Wait for every subscriber, at most a grace period after the last
	// publication.
	grace := time.NewTimer(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
wait:
	for int(done.Load()) < len(conns) {
		select {
		case <-tick.C:
		case <-grace.C:
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	grace.Stop()
	tick.Stop()
	cpu1, _ := cpuTime(pid)
	self1, _ := cpuTime(os.Getpid())
	var redis1 time.Duration
	if cfg.redisPID > 0 {
		redis1, _ = cpuTime(cfg.redisPID)
	}
	rcancel()
	closeAll(conns)
	wg.Wait()

	res := &result{Conns: len(conns), Msgs: msgs, Rate: rate}
	end := start
	var lat []int32
	for _, s := range subs {
		res.Ops += s.unique
		res.Lost += msgs - s.unique
		res.Dup += s.dup
		res.OOO += s.ooo
		if s.lastRecv.After(end) {
			end = s.lastRecv
		}
		lat = append(lat, s.lat...)
	}
	res.Elapsed = end.Sub(start).Seconds()
	res.Published = published.Seconds()
	if res.Elapsed > 0 {
		res.PerSec = float64(res.Ops) / res.Elapsed
	}
	res.CPU = (cpu1 - cpu0).Seconds()
	res.ClientCPU = (self1 - self0).Seconds()
	if res.Ops > 0 {
		res.CPUPerOp = float64((cpu1 - cpu0).Microseconds()) / float64(res.Ops)
	}
	if cfg.redisPID > 0 {
		res.RedisCPU = float64((redis1 - redis0).Microseconds()) / float64(msgs)
	}
	res.P50, res.P90, res.P99, res.Max = percentiles(lat)
	return res, nil
}

// percentiles returns p50, p90, p99 and max of microsecond samples, in ms.
func percentiles(lat []int32) (p50, p90, p99, maxv float64) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	at := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))]) / 1000 }
	return at(0.50), at(0.90), at(0.99), float64(lat[len(lat)-1]) / 1000
}

// ask runs cfg.clients clients asking back to back for cfg.duration.
func ask(ctx context.Context, cfg *config) (*result, error) {
	conns, err := dialAll(ctx, cfg, cfg.url, cfg.clients, func(int) []string { return nil })
	if err != nil {
		return nil, err
	}
	defer closeAll(conns)
	cpu0, err := cpuTime(cfg.pid)
	if err != nil {
		return nil, err
	}
	self0, _ := cpuTime(os.Getpid())
	actx, acancel := context.WithTimeout(ctx, cfg.duration)
	defer acancel()
	start := time.Now()
	lats := make([][]int32, len(conns))
	var failed atomic.Int64
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lats[i] = askLoop(actx, cfg.proto, c, &failed)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu1, _ := cpuTime(cfg.pid)
	self1, _ := cpuTime(os.Getpid())
	if n := failed.Load(); n > 0 {
		return nil, fmt.Errorf("%d asks failed", n)
	}
	res := &result{Conns: len(conns), Elapsed: elapsed.Seconds()}
	var lat []int32
	for _, l := range lats {
		lat = append(lat, l...)
	}
	res.Ops = len(lat)
	res.PerSec = float64(res.Ops) / elapsed.Seconds()
	res.ClientCPU = (self1 - self0).Seconds()
	res.CPU = (cpu1 - cpu0).Seconds()
	if res.Ops > 0 {
		res.CPUPerOp = float64((cpu1 - cpu0).Microseconds()) / float64(res.Ops)
	}
	res.P50, res.P90, res.P99, res.Max = percentiles(lat)
	return res, nil
}

// askLoop asks until ctx ends and returns each round trip's time.
func askLoop(ctx context.Context, p proto, c *websocket.Conn, failed *atomic.Int64) []int32 {
	var lat []int32
	var out []byte
	var in bytes.Buffer
	data := []byte(`{"n":1,"text":"round trip"}`)
	for id := uint64(1); ctx.Err() == nil; id++ {
		out = p.ask(out[:0], id, data)
		t0 := time.Now()
		if err := c.Write(context.Background(), websocket.MessageText, out); err != nil {
			failed.Add(1)
			return lat
		}
		got := false
		for !got {
			// Reads are not bounded by ctx: the round trip in flight
			// completes, and the server stays up for the whole run.
			_, r, err := c.Reader(context.Background())
			if err != nil {
				failed.Add(1)
				return lat
			}
			in.Reset()
			if _, err := in.ReadFrom(r); err != nil {
				failed.Add(1)
				return lat
			}
			frames(in.Bytes(), func(f []byte) {
				if pong := p.pong(f); pong != nil {
					c.Write(context.Background(), websocket.MessageText, pong)
				} else if rid, ok := p.reply(f); ok && rid == id {
					got = true
				}
			})
		}
		lat = append(lat, int32(time.Since(t0)/time.Microsecond))
	}
	return lat
}

// idle opens cfg.conns connections with two subscriptions each (one shared
// channel, one of their own) and reports the server's RSS and goroutines
// per connection.
func idle(ctx context.Context, cfg *config) (*result, error) {
	g0, err := serverStats(ctx, cfg.control)
	if err != nil {
		return nil, err
	}
	time.Sleep(200 * time.Millisecond)
	rss0, err := rss(cfg.pid)
	if err != nil {
		return nil, err
	}
	conns, err := dialAll(ctx, cfg, cfg.url, cfg.conns, func(i int) []string {
		return []string{"idle-all", fmt.Sprintf("idle-%d", i)}
	})
	if err != nil {
		return nil, err
	}
	defer closeAll(conns)
	// Readers answer pings, as a live client does.
	rctx, rcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				_, msg, err := c.Read(rctx)
				if err != nil {
					return
				}
				frames(msg, func(f []byte) {
					if pong := cfg.proto.pong(f); pong != nil {
						c.Write(rctx, websocket.MessageText, pong)
					}
				})
			}
		}()
	}
	defer func() { rcancel(); closeAll(conns); wg.Wait() }()
	time.Sleep(cfg.settle)
	g1, err := serverStats(ctx, cfg.control)
	if err != nil {
		return nil, err
	}
	time.Sleep(200 * time.Millisecond)
	rss1, err := rss(cfg.pid)
	if err != nil {
		return nil, err
	}
	n := float64(len(conns))
	return &result{
		Conns:  len(conns),
		RSSPer: float64(rss1-rss0) / 1024 / n,
		GoPer:  float64(g1-g0) / n,
	}, nil
}

// control calls the target's control API.
func control(ctx context.Context, base, path string, out any) error {
	method := http.MethodGet
	if len(path) > 8 && path[:8] == "/publish" {
		method = http.MethodPost
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s%s: %s: %s", base, path, resp.Status, bytes.TrimSpace(body))
	}
	if out != nil {
		return json.Unmarshal(body, out)
	}
	return nil
}

// serverStats collects the server's garbage and returns its goroutines.
func serverStats(ctx context.Context, base string) (int, error) {
	var st struct {
		Goroutines int `json:"goroutines"`
	}
	err := control(ctx, base, "/stats?gc=1", &st)
	return st.Goroutines, err
}

// waitUp waits until the control API answers.
func waitUp(ctx context.Context, base string) error {
	for {
		if _, err := serverStats(ctx, base); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.New("the server did not come up")
		case <-time.After(50 * time.Millisecond):
		}
	}
}
