package nats

import (
	"testing"

	"go.uber.org/goleak"
)

// The conformance suite and the failure tests run against real NATS
// servers in containers, in integration/; this package's own tests are
// those that need no server.

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
