package metrics

import (
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/internal/wstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newServer(t *testing.T) *sss.Server {
	t.Helper()
	srv, err := sss.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// Every field of sss.Stats is exported, once: a field added to Stats fails
// here until it gets a metric.
func TestEveryStatsField(t *testing.T) {
	var fields, covered []string
	for f := range reflect.TypeFor[sss.Stats]().Fields() {
		fields = append(fields, f.Name)
	}
	for _, s := range stats {
		covered = append(covered, s.field)
	}
	slices.Sort(fields)
	slices.Sort(covered)
	if !slices.Equal(fields, covered) {
		t.Errorf("sss.Stats fields %v\nexported as metrics %v", fields, covered)
	}
	// Each value function reads its own field: set every field to a
	// distinct number and check what comes out.
	var st sss.Stats
	v := reflect.ValueOf(&st).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		switch f.Kind() {
		case reflect.Int, reflect.Int64:
			f.SetInt(int64(i + 1))
		case reflect.Uint64:
			f.SetUint(uint64(i + 1))
		default:
			t.Fatalf("sss.Stats.%s has kind %s: teach this test about it", v.Type().Field(i).Name, f.Kind())
		}
	}
	for _, s := range stats {
		f, _ := v.Type().FieldByName(s.field)
		if got, want := s.value(&st), float64(f.Index[0]+1); got != want {
			t.Errorf("metric %s reads %v, want field %s (%v)", s.name, got, s.field, want)
		}
		if strings.HasSuffix(s.name, "_total") != (s.typ == counter) {
			t.Errorf("metric %s: counters, and only they, end in _total", s.name)
		}
	}
}

func TestCount(t *testing.T) {
	c := NewCollector(newServer(t))
	if got, want := testutil.CollectAndCount(c), reflect.TypeFor[sss.Stats]().NumField(); got != want {
		t.Errorf("collected %d metrics, want %d", got, want)
	}
}

func TestLint(t *testing.T) {
	for _, opts := range [][]Option{nil, {WithNamespace("app"), WithConstLabels(prometheus.Labels{"node": "a"})}} {
		problems, err := testutil.CollectAndLint(NewCollector(newServer(t), opts...))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
}

// A fresh server, with a namespace and constant labels: every metric, its
// help and type.
func TestCompareFresh(t *testing.T) {
	c := NewCollector(newServer(t), WithNamespace("app"), WithConstLabels(prometheus.Labels{"node": "a"}), WithConstLabels(prometheus.Labels{"zone": "z1"}))
	want := `
# HELP app_asks_total Client asks handled.
# TYPE app_asks_total counter
app_asks_total{node="a",zone="z1"} 0
# HELP app_bad_frames_total Frames refused as malformed.
# TYPE app_bad_frames_total counter
app_bad_frames_total{node="a",zone="z1"} 0
# HELP app_channels Streams with local subscribers now, user and session channels included.
# TYPE app_channels gauge
app_channels{node="a",zone="z1"} 0
# HELP app_connections WebSocket connections open now.
# TYPE app_connections gauge
app_connections{node="a",zone="z1"} 0
# HELP app_connections_accepted_total WebSocket connections accepted.
# TYPE app_connections_accepted_total counter
app_connections_accepted_total{node="a",zone="z1"} 0
# HELP app_delivered_total Stream deliveries received from the scaler.
# TYPE app_delivered_total counter
app_delivered_total{node="a",zone="z1"} 0
# HELP app_dropped_frames_total Frames dropped for lossy channels.
# TYPE app_dropped_frames_total counter
app_dropped_frames_total{node="a",zone="z1"} 0
# HELP app_frames_in_total WebSocket messages read.
# TYPE app_frames_in_total counter
app_frames_in_total{node="a",zone="z1"} 0
# HELP app_frames_out_total WebSocket messages written; each may batch several frames.
# TYPE app_frames_out_total counter
app_frames_out_total{node="a",zone="z1"} 0
# HELP app_gaps_total Jumps in a stream's offsets: deliveries the scaler lost, repaired from history.
# TYPE app_gaps_total counter
app_gaps_total{node="a",zone="z1"} 0
# HELP app_panics_total Handler or parser panics recovered.
# TYPE app_panics_total counter
app_panics_total{node="a",zone="z1"} 0
# HELP app_published_total Publications accepted by the scaler from this server.
# TYPE app_published_total counter
app_published_total{node="a",zone="z1"} 0
# HELP app_scaler_errors_total Failed scaler or session store calls.
# TYPE app_scaler_errors_total counter
app_scaler_errors_total{node="a",zone="z1"} 0
# HELP app_slow_consumers_total Connections closed for overflowing their send queue.
# TYPE app_slow_consumers_total counter
app_slow_consumers_total{node="a",zone="z1"} 0
# HELP app_store_backlog Session store changes waiting to be written.
# TYPE app_store_backlog gauge
app_store_backlog{node="a",zone="z1"} 0
# HELP app_store_dropped_total Session store changes dropped because the backlog was full.
# TYPE app_store_dropped_total counter
app_store_dropped_total{node="a",zone="z1"} 0
# HELP app_subscriptions Client subscriptions held now, user and session channels excluded.
# TYPE app_subscriptions gauge
app_subscriptions{node="a",zone="z1"} 0
# HELP app_tells_total Client tells handled.
# TYPE app_tells_total counter
app_tells_total{node="a",zone="z1"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

// The metrics follow the server: one client subscribes, the server
// publishes, the client leaves.
func TestLiveValues(t *testing.T) {
	srv := newServer(t)
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	c := NewCollector(srv)

	w := wstest.Dial(t, "ws"+strings.TrimPrefix(hs.URL, "http"), nil)
	w.Subscribe("news")
	if err := srv.Publish(t.Context(), "news.uk", "article", map[string]string{"title": "Hello"}); err != nil {
		t.Fatal(err)
	}
	w.Expect("pub")

	// Channels counts the connection's session channel too.
	want := `
# HELP sss_connections WebSocket connections open now.
# TYPE sss_connections gauge
sss_connections 1
# HELP sss_subscriptions Client subscriptions held now, user and session channels excluded.
# TYPE sss_subscriptions gauge
sss_subscriptions 1
# HELP sss_channels Streams with local subscribers now, user and session channels included.
# TYPE sss_channels gauge
sss_channels 2
# HELP sss_connections_accepted_total WebSocket connections accepted.
# TYPE sss_connections_accepted_total counter
sss_connections_accepted_total 1
# HELP sss_frames_in_total WebSocket messages read.
# TYPE sss_frames_in_total counter
sss_frames_in_total 1
# HELP sss_published_total Publications accepted by the scaler from this server.
# TYPE sss_published_total counter
sss_published_total 1
# HELP sss_delivered_total Stream deliveries received from the scaler.
# TYPE sss_delivered_total counter
sss_delivered_total 1
`
	names := []string{"sss_connections", "sss_subscriptions", "sss_channels", "sss_connections_accepted_total",
		"sss_frames_in_total", "sss_published_total", "sss_delivered_total"}
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}

	w.Close()
	deadline := time.Now().Add(5 * time.Second)
	for srv.Stats().Connections != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	gone := `
# HELP sss_connections WebSocket connections open now.
# TYPE sss_connections gauge
sss_connections 0
# HELP sss_connections_accepted_total WebSocket connections accepted.
# TYPE sss_connections_accepted_total counter
sss_connections_accepted_total 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(gone), "sss_connections", "sss_connections_accepted_total"); err != nil {
		t.Error(err)
	}
}

// Two servers in one registry need a label to tell them apart.
func TestTwoServersOneRegistry(t *testing.T) {
	a, b := newServer(t), newServer(t)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(a, WithConstLabels(prometheus.Labels{"node": a.NodeID()})))
	reg.MustRegister(NewCollector(b, WithConstLabels(prometheus.Labels{"node": b.NodeID()})))
	if err := reg.Register(NewCollector(a)); err == nil {
		t.Error("registering an unlabelled collector next to labelled ones succeeded; want an inconsistency error")
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if len(mf.GetMetric()) != 2 {
			t.Errorf("%s has %d series, want one per server", mf.GetName(), len(mf.GetMetric()))
		}
	}
}
