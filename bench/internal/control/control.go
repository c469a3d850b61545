// Package control is the control API every bench target serves next to its
// WebSocket endpoint, for cmd/sss-bench: POST /publish publishes numbered,
// timestamped publications through the target's own library; GET /stats
// reports goroutines (after a garbage collection with gc=1); /debug/pprof/
// serves profiles.
package control

import (
	"context"
	"fmt"
	"net/http"
	"net/http/pprof"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

// Publisher publishes data on channel through a target's library.
type Publisher func(ctx context.Context, channel string, data []byte) error

// Handler serves the control API.
func Handler(publish Publisher) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /publish", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		channel := q.Get("channel")
		n, err1 := strconv.Atoi(q.Get("n"))
		rate, err2 := strconv.Atoi(q.Get("rate"))
		size, err3 := strconv.Atoi(q.Get("size"))
		if channel == "" || err1 != nil || err2 != nil || err3 != nil || n < 0 || rate < 0 || size < 0 || size > 1<<16 {
			http.Error(w, "want channel, n, rate and size", http.StatusBadRequest)
			return
		}
		pad := strings.Repeat("x", size)
		var tick *time.Ticker
		if rate > 0 {
			tick = time.NewTicker(time.Second / time.Duration(rate))
			defer tick.Stop()
		}
		for i := range n {
			if tick != nil && i > 0 {
				select {
				case <-tick.C:
				case <-r.Context().Done():
					return
				}
			}
			data := fmt.Appendf(nil, `{"seq":%d,"ts":%d,"pad":"%s"}`, i, time.Now().UnixNano(), pad)
			if err := publish(r.Context(), channel, data); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
		}
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("gc") == "1" {
			runtime.GC()
			debug.FreeOSMemory()
		}
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		fmt.Fprintf(w, `{"goroutines":%d,"heap_inuse":%d,"stack_inuse":%d}`, runtime.NumGoroutine(), m.HeapInuse, m.StackInuse)
	})
	// Profiles of the target under load (loopback only, like the rest).
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	return mux
}
