package client_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/client"
)

// 100 clients dropped at the same instant spread their reconnection
// attempts over the first backoff window (full jitter), instead of coming
// back in one burst.
//
// The spread is checked on the delays each client drew (seen through a
// test hook), which a loaded machine cannot skew; the wall clock only has
// to agree that no attempt started before its delay was up. When each
// attempt started (in the dialer of its HTTP client) and when the server
// saw it are logged.
func TestReconnectSpread(t *testing.T) {
	const (
		n    = 100
		base = 250 * time.Millisecond // the default first window
	)
	var (
		mu        sync.Mutex
		recording atomic.Bool
		dials     = make(map[string]time.Time)     // by user: when the client started the attempt
		drawn     = make(map[string]time.Duration) // by user: the delay it drew
		drops     = make(map[string]time.Time)     // by user: when the client saw the drop
		served    []time.Time                      // when the server saw the attempts
	)
	stamp := func(m map[string]time.Time, user string) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if _, dup := m[user]; dup {
			t.Errorf("second attempt or drop for %s", user)
		}
		m[user] = now
	}
	ts := newServer(t, nil, sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
		if recording.Load() {
			now := time.Now()
			mu.Lock()
			served = append(served, now)
			mu.Unlock()
		}
		return userSession(r)
	}))
	p := newProxy(t, ts.url)
	var reconnected atomic.Int32
	for i := range n {
		user := fmt.Sprint("u", i)
		var d net.Dialer
		hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if recording.Load() {
				stamp(dials, user)
			}
			return d.DialContext(ctx, network, addr)
		}}}
		dial(t, p.url, asUser(user), client.WithHTTPClient(hc), client.WithReconnectDelay(base, 30*time.Second),
			client.WithHooks(client.Hooks{
				OnDrop:      func(error) { stamp(drops, user) },
				OnReconnect: func(client.ConnInfo) { reconnected.Add(1) },
			}),
			client.WithBackoffObserver(func(d time.Duration) {
				if !recording.Load() {
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if _, dup := drawn[user]; dup {
					t.Errorf("second delay drawn for %s", user)
				}
				drawn[user] = d
			}))
	}

	recording.Store(true)
	cutAt := time.Now()
	p.cut()
	waitFor(t, "every client to reconnect", func() bool { return reconnected.Load() == n })

	mu.Lock()
	var offsets, delays, seen, draws []time.Duration
	for user, at := range dials {
		offsets = append(offsets, at.Sub(cutAt))
		delays = append(delays, at.Sub(drops[user]))
		d, ok := drawn[user]
		if !ok {
			t.Errorf("%s reconnected without drawing a delay", user)
		}
		if at.Sub(cutAt) < d {
			t.Errorf("%s started its attempt %v after the cut, before its delay %v was up", user, at.Sub(cutAt), d)
		}
		draws = append(draws, d)
	}
	for _, at := range served {
		seen = append(seen, at.Sub(cutAt))
	}
	mu.Unlock()
	if len(offsets) != n || len(seen) != n {
		t.Fatalf("%d attempts started, %d served; want %d", len(offsets), len(seen), n)
	}
	for _, l := range [][]time.Duration{offsets, delays, seen, draws} {
		slices.Sort(l)
	}
	busiest := func(ts []time.Duration) int { // the most within any 10ms
		most := 0
		for i := range ts {
			j := i
			for j < len(ts) && ts[j]-ts[i] < 10*time.Millisecond {
				j++
			}
			most = max(most, j-i)
		}
		return most
	}
	ms := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	t.Logf("delays drawn: min %v, median %v, max %v, busiest 10ms: %d",
		ms(draws[0]), ms(draws[n/2]), ms(draws[n-1]), busiest(draws))
	t.Logf("attempts started after the cut: first %v, median %v, last %v (span %v), busiest 10ms: %d",
		ms(offsets[0]), ms(offsets[n/2]), ms(offsets[n-1]), ms(offsets[n-1]-offsets[0]), busiest(offsets))
	t.Logf("drop-to-attempt delay: min %v, median %v, max %v", ms(delays[0]), ms(delays[n/2]), ms(delays[n-1]))
	t.Logf("server saw them: first %v, median %v, last %v, busiest 10ms: %d",
		ms(seen[0]), ms(seen[n/2]), ms(seen[n-1]), busiest(seen))

	// Full jitter over [0, 250ms]: ~4 per 10ms and a median of 125ms. A
	// burst (every client drawing alike, or no jitter) fails all three;
	// 100 uniform draws miss these bounds with odds below one in a million.
	if draws[n-1] > base {
		t.Errorf("a first delay of %v, beyond the window %v", draws[n-1], base)
	}
	if span := draws[n-1] - draws[0]; span < base/2 {
		t.Errorf("delays span %v, want most of %v", span, base)
	}
	if b := busiest(draws); b > 25 {
		t.Errorf("%d delays within 10ms of each other", b)
	}
	if med := draws[n/2]; med < base/4 || med > base*3/4 {
		t.Errorf("median delay %v, want about %v", med, base/2)
	}
}

// The clients of an instance that shuts down share one URL list, yet spread
// over the other instances instead of all moving to the next URL of the
// list: each reconnection starts at a random one.
func TestReconnectURLSpread(t *testing.T) {
	const n = 200
	m := newMemory(t)
	defer m.Close()
	x, a, b := newServer(t, m), newServer(t, m), newServer(t, m)
	var reconnected atomic.Int32
	clients := make([]*client.Client, n)
	for i := range clients {
		clients[i] = dial(t, x.url, client.WithURLs(a.url, b.url), client.WithReconnectDelay(time.Hour, time.Hour),
			client.WithHooks(client.Hooks{OnReconnect: func(client.ConnInfo) { reconnected.Add(1) }}))
	}
	if err := x.srv.Shutdown(ctxT(t)); err != nil { // close code 4000: reconnect at once
		t.Fatal(err)
	}
	waitFor(t, "every client to reconnect", func() bool { return reconnected.Load() == n })
	checkSpread(t, clients, a.url, b.url)
}

// Dial tries its own URL first; when that fails, the others from a random
// one, so a crowd whose first URL is down spreads too.
func TestDialURLSpread(t *testing.T) {
	const n = 200
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "ws://" + ln.Addr().String() + "/"
	ln.Close() // connection refused from now on
	a, b := newServer(t, nil), newServer(t, nil)
	clients := make([]*client.Client, n)
	for i := range clients {
		clients[i] = dial(t, dead, client.WithURLs(a.url, b.url))
	}
	checkSpread(t, clients, a.url, b.url)

	// A live first URL is the one Dial connects to.
	if u := dial(t, b.url, client.WithURLs(a.url)).Conn().URL; u != b.url {
		t.Fatalf("connected to %s, want the Dial URL %s", u, b.url)
	}
}

// checkSpread checks that the clients are connected to a or b, neither with
// more than 70% of them (an even split expects 50% ± 3.5%).
func checkSpread(t *testing.T, clients []*client.Client, a, b string) {
	t.Helper()
	count := map[string]int{}
	for _, c := range clients {
		count[c.Conn().URL]++
	}
	t.Logf("a: %d, b: %d, elsewhere: %d", count[a], count[b], len(clients)-count[a]-count[b])
	if count[a]+count[b] != len(clients) {
		t.Fatalf("%d clients connected elsewhere than a and b: %v", len(clients)-count[a]-count[b], count)
	}
	if most := max(count[a], count[b]); most*10 > len(clients)*7 {
		t.Fatalf("%d of %d clients on one URL", most, len(clients))
	}
}
