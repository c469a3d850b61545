package nats

import (
	"context"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/superscaled/sss/scaler"
	"github.com/superscaled/sss/scaler/scalertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestConformanceLocal runs the conformance suite against the NATS server
// at $SSS_NATS_URL (with JetStream), for a quick run during development;
// integration/ runs it against a container it starts.
func TestConformanceLocal(t *testing.T) {
	url := os.Getenv("SSS_NATS_URL")
	if url == "" {
		t.Skip("SSS_NATS_URL not set (integration/ runs this suite against a container)")
	}
	scalertest.Run(t, func(t *testing.T) scaler.Scaler {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := Dial(ctx, url, WithPresenceTTL(2*time.Second), WithPrefix("sst"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}
