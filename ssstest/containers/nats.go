package containers

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/nats-io/nats.go"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"

	natsscaler "github.com/superscaled/sss/scaler/nats"
)

// NATS image and port.
const (
	NATSImageEnv     = "SSS_NATS_IMAGE"
	DefaultNATSImage = "nats:2"
	NATSPort         = "4222/tcp"
)

// NATSImage is the NATS image used: $SSS_NATS_IMAGE or nats:2.
func NATSImage() string { return envDefault(NATSImageEnv, DefaultNATSImage) }

// WithNATSFlags adds nats-server flags after the defaults (-js -sd /data),
// e.g. the cluster flags of one node of a NATS cluster.
func WithNATSFlags(flags ...string) Option {
	return func(c *config) { c.natsFlags = append(c.natsFlags, flags...) }
}

// WithNATSTmpfs keeps JetStream's storage in a tmpfs: a stopped or killed
// server comes back empty (no stream, no bucket), as one rescheduled
// without a volume would. Without it the storage is in the container's
// filesystem and survives Stop, Kill and Start.
func WithNATSTmpfs() Option {
	return func(c *config) { c.natsTmpfs = true }
}

// WithNATSScalerOptions configures the scaler NATS returns (history,
// presence TTL, call timeout...). It has its own prefix unless these
// options choose another.
func WithNATSScalerOptions(opts ...natsscaler.Option) Option {
	return func(c *config) { c.natsScaler = append(c.natsScaler, opts...) }
}

// NATSServer is a NATS server with JetStream in a container.
type NATSServer struct{ Server }

// URL is the server's nats:// URL on the host, as of its last start.
func (n *NATSServer) URL() string { return "nats://" + n.Addr() }

// Dial implements nats.CustomDialer: like DialContext, it dials the
// server's current address whatever address it is asked for, so that a
// connection given nats.SetCustomDialer(n) follows the server across
// restarts.
func (n *NATSServer) Dial(network, _ string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return n.DialContext(ctx, network, "")
}

// StartNATS starts nats-server with JetStream (-js -sd /data); it is
// removed when the test ends. Its storage survives Stop, Kill and Start
// unless WithNATSTmpfs puts it in memory.
func StartNATS(t testing.TB, opts ...Option) *NATSServer {
	t.Helper()
	cfg := configure(opts)
	req := testcontainers.ContainerRequest{
		Image:        NATSImage(),
		ExposedPorts: []string{NATSPort},
		// Arguments only: the official image's entrypoint and sss's
		// offline image's are both the server binary.
		Cmd: append([]string{"-js", "-sd", "/data"}, cfg.natsFlags...),
		WaitingFor: wait.ForAll(
			ForLogEachStart("Server is ready"),
			wait.ForListeningPort(NATSPort).SkipInternalCheck(),
		).WithDeadline(readyTimeout),
		HostConfigModifier: func(hc *container.HostConfig) {
			bindLoopback(NATSPort)(hc)
			if cfg.natsTmpfs {
				hc.Tmpfs = map[string]string{"/data": ""}
			}
		},
	}
	cfg.attach(&req)
	return &NATSServer{Server: *run(t, req, NATSPort)}
}

// NATS starts a NATS server with JetStream and returns a nats scaler on
// it, ready (its stream and buckets exist), with a random prefix: another
// scaler with the same prefix (WithNATSScalerOptions(natsscaler.WithPrefix
// (...)), or a second process of your app) shares the cluster. Several
// sss.Servers may share the scaler (ssstest.WithScaler), each joining as
// its own node. The scaler and the container are closed when the test
// ends. With WithNetwork, the server is "nats" on that network (the
// option's aliases are not used), for your containers to reach it.
//
// The scaler's connection dials the server's current address, reconnects
// forever and quickly (every 100 ms), so it follows the container across
// Stop/Kill/Start; calls made while the server is down fail with errors
// wrapping scaler.ErrUnavailable, and the scaler recovers by itself.
func NATS(t testing.TB, opts ...Option) (*natsscaler.Scaler, *NATSServer) {
	t.Helper()
	cfg := configure(opts)
	var nets []netAttach
	for _, n := range cfg.networks {
		nets = append(nets, netAttach{name: n.name, aliases: []string{"nats"}})
	}
	srv := StartNATS(t, append(opts, func(c *config) { c.networks = nets })...)
	var r [5]byte
	rand.Read(r[:])
	sopts := append([]natsscaler.Option{
		natsscaler.WithPrefix("t" + hex.EncodeToString(r[:])),
		natsscaler.WithNATSOptions(
			nats.SetCustomDialer(srv),
			nats.ReconnectWait(100*time.Millisecond),
			nats.ReconnectJitter(50*time.Millisecond, 50*time.Millisecond),
		),
	}, cfg.natsScaler...)
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	// Not dialled as such: the custom dialer follows the container.
	sc, err := natsscaler.Dial(ctx, "nats://nats:4222", sopts...)
	if err != nil {
		t.Fatalf("containers: natsscaler.Dial: %v", err)
	}
	t.Cleanup(func() { sc.Close() })
	return sc, srv
}
