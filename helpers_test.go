package sss_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/superscaled/sss"
	"github.com/superscaled/sss/internal/wstest"
	"github.com/superscaled/sss/scaler/memory"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Until the Go client is used here, tests speak the documented protocol over
// raw WebSocket connections with internal/wstest.

// cluster is n servers sharing one memory scaler, each behind httptest.
type cluster struct {
	t       testing.TB
	servers []*sss.Server
	https   []*httptest.Server
}

func newCluster(t testing.TB, n int, opts ...sss.Option) *cluster {
	t.Helper()
	return newClusterWith(t, newMemory(t), n, opts...)
}

// newClusterWith is newCluster on the scaler m, which it closes at the end.
func newClusterWith(t testing.TB, m *memory.Scaler, n int, opts ...sss.Option) *cluster {
	t.Helper()
	cl := &cluster{t: t}
	for i := 0; i < n; i++ {
		srv, err := sss.New(append([]sss.Option{sss.WithScaler(m)}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		cl.servers = append(cl.servers, srv)
		cl.https = append(cl.https, httptest.NewServer(srv))
	}
	t.Cleanup(func() {
		for i := range cl.servers {
			cl.servers[i].Close()
			cl.https[i].Close()
		}
		m.Close()
	})
	return cl
}

func (cl *cluster) url(i int) string { return "ws" + strings.TrimPrefix(cl.https[i].URL, "http") }

// dial connects a raw protocol client to server i and waits for its welcome.
func (cl *cluster) dial(i int, header http.Header, opts ...wstest.Option) *wstest.Client {
	cl.t.Helper()
	return wstest.Dial(cl.t, cl.url(i), header, opts...)
}

// eventually polls cond until it holds or 5s pass.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func newMemory(t testing.TB, opts ...memory.Option) *memory.Scaler {
	t.Helper()
	m, err := memory.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
