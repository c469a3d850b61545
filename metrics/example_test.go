package metrics_test

import (
	"bufio"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/metrics"
)

func ExampleNewCollector() {
	srv, err := sss.New()
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	// Register the collector with a registry and serve it next to the
	// WebSocket endpoint.
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewCollector(srv))
	mux := http.NewServeMux()
	mux.Handle("/ws", srv)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))

	hs := httptest.NewServer(mux)
	defer hs.Close()
	resp, err := http.Get(hs.URL + "/metrics")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "sss_connections") {
			fmt.Println(line)
		}
	}
	// Output:
	// sss_connections 0
	// sss_connections_accepted_total 0
}
