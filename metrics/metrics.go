// Package metrics exports an sss.Server's counters ([sss.Server.Stats]) as
// Prometheus metrics.
//
//	reg := prometheus.NewRegistry()
//	reg.MustRegister(metrics.NewCollector(srv))
//	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// The collector reads one Stats snapshot per scrape, so it costs nothing
// between scrapes. With the default namespace the metrics are:
//
//	sss_connections                  gauge    WebSocket connections open now
//	sss_subscriptions                gauge    client subscriptions held now
//	sss_channels                     gauge    streams with local subscribers now
//	sss_connections_accepted_total   counter  connections accepted
//	sss_frames_in_total              counter  WebSocket messages read
//	sss_frames_out_total             counter  WebSocket messages written
//	sss_bad_frames_total             counter  frames refused as malformed
//	sss_published_total              counter  publications accepted by the scaler
//	sss_delivered_total              counter  stream deliveries from the scaler
//	sss_asks_total                   counter  client asks handled
//	sss_tells_total                  counter  client tells handled
//	sss_dropped_frames_total         counter  frames dropped on lossy channels
//	sss_slow_consumers_total         counter  connections closed as slow consumers
//	sss_panics_total                 counter  handler or parser panics recovered
//	sss_scaler_errors_total          counter  failed scaler or session store calls
//	sss_gaps_total                   counter  offset jumps repaired from history
//	sss_store_backlog                gauge    session store changes waiting to be written
//	sss_store_dropped_total          counter  session store changes dropped (backlog full)
//
// To export several servers through one registry, tell them apart with a
// constant label, e.g. WithConstLabels(prometheus.Labels{"node": srv.NodeID()}).
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/superscaled/sss"
)

// Option configures a collector.
type Option func(*config)

type config struct {
	namespace string
	labels    prometheus.Labels
}

// WithNamespace sets the prefix of every metric name (default "sss"). An
// empty namespace leaves the names bare.
func WithNamespace(ns string) Option { return func(c *config) { c.namespace = ns } }

// WithConstLabels adds labels with fixed values to every metric.
func WithConstLabels(l prometheus.Labels) Option {
	return func(c *config) {
		if c.labels == nil {
			c.labels = prometheus.Labels{}
		}
		for k, v := range l {
			c.labels[k] = v
		}
	}
}

// stat is one exported field of sss.Stats.
type stat struct {
	field string // the sss.Stats field, checked by the tests
	name  string
	help  string
	typ   prometheus.ValueType
	value func(*sss.Stats) float64
}

const (
	gauge   = prometheus.GaugeValue
	counter = prometheus.CounterValue
)

var stats = []stat{
	{"Connections", "connections", "WebSocket connections open now.", gauge,
		func(s *sss.Stats) float64 { return float64(s.Connections) }},
	{"Subscriptions", "subscriptions", "Client subscriptions held now, user and session channels excluded.", gauge,
		func(s *sss.Stats) float64 { return float64(s.Subscriptions) }},
	{"Channels", "channels", "Streams with local subscribers now, user and session channels included.", gauge,
		func(s *sss.Stats) float64 { return float64(s.Channels) }},
	{"Accepted", "connections_accepted_total", "WebSocket connections accepted.", counter,
		func(s *sss.Stats) float64 { return float64(s.Accepted) }},
	{"FramesIn", "frames_in_total", "WebSocket messages read.", counter,
		func(s *sss.Stats) float64 { return float64(s.FramesIn) }},
	{"FramesOut", "frames_out_total", "WebSocket messages written; each may batch several frames.", counter,
		func(s *sss.Stats) float64 { return float64(s.FramesOut) }},
	{"BadFrames", "bad_frames_total", "Frames refused as malformed.", counter,
		func(s *sss.Stats) float64 { return float64(s.BadFrames) }},
	{"Published", "published_total", "Publications accepted by the scaler from this server.", counter,
		func(s *sss.Stats) float64 { return float64(s.Published) }},
	{"Delivered", "delivered_total", "Stream deliveries received from the scaler.", counter,
		func(s *sss.Stats) float64 { return float64(s.Delivered) }},
	{"Asks", "asks_total", "Client asks handled.", counter,
		func(s *sss.Stats) float64 { return float64(s.Asks) }},
	{"Tells", "tells_total", "Client tells handled.", counter,
		func(s *sss.Stats) float64 { return float64(s.Tells) }},
	{"Dropped", "dropped_frames_total", "Frames dropped for lossy channels.", counter,
		func(s *sss.Stats) float64 { return float64(s.Dropped) }},
	{"SlowConsumers", "slow_consumers_total", "Connections closed for overflowing their send queue.", counter,
		func(s *sss.Stats) float64 { return float64(s.SlowConsumers) }},
	{"Panics", "panics_total", "Handler or parser panics recovered.", counter,
		func(s *sss.Stats) float64 { return float64(s.Panics) }},
	{"ScalerErrors", "scaler_errors_total", "Failed scaler or session store calls.", counter,
		func(s *sss.Stats) float64 { return float64(s.ScalerErrors) }},
	{"Gaps", "gaps_total", "Jumps in a stream's offsets: deliveries the scaler lost, repaired from history.", counter,
		func(s *sss.Stats) float64 { return float64(s.Gaps) }},
	{"StoreBacklog", "store_backlog", "Session store changes waiting to be written.", gauge,
		func(s *sss.Stats) float64 { return float64(s.StoreBacklog) }},
	{"StoreDropped", "store_dropped_total", "Session store changes dropped because the backlog was full.", counter,
		func(s *sss.Stats) float64 { return float64(s.StoreDropped) }},
}

// NewCollector returns a collector of srv's Stats. Register it with a
// prometheus.Registerer; srv must not be nil.
func NewCollector(srv *sss.Server, opts ...Option) prometheus.Collector {
	if srv == nil {
		panic("metrics: NewCollector(nil)")
	}
	cfg := config{namespace: "sss"}
	for _, o := range opts {
		o(&cfg)
	}
	c := &collector{srv: srv, descs: make([]*prometheus.Desc, len(stats))}
	for i, s := range stats {
		c.descs[i] = prometheus.NewDesc(prometheus.BuildFQName(cfg.namespace, "", s.name), s.help, nil, cfg.labels)
	}
	return c
}

type collector struct {
	srv   *sss.Server
	descs []*prometheus.Desc // parallel to stats
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// Collect implements prometheus.Collector. One snapshot per scrape keeps
// the values of one scrape consistent with each other.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.srv.Stats()
	for i, s := range stats {
		ch <- prometheus.MustNewConstMetric(c.descs[i], s.typ, s.value(&st))
	}
}
