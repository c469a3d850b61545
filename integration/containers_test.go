package integration

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	"github.com/testcontainers/testcontainers-go/wait"
	"go.uber.org/goleak"
)

// Environment variables that choose the images. The defaults are the official
// images, pulled from a registry as usual; integration/images/build.sh builds
// offline stand-ins and prints the values that select them.
const (
	redisImageEnv = "SSS_REDIS_IMAGE"
	mongoImageEnv = "SSS_MONGO_IMAGE"

	defaultRedisImage = "redis:7"
	defaultMongoImage = "mongo:7"

	// requireDockerEnv=1 turns "Docker is not reachable" from a skip into a
	// failure, so that CI cannot pass by silently skipping everything.
	requireDockerEnv = "SSS_REQUIRE_DOCKER"
)

const (
	redisPort = "6379/tcp"
	mongoPort = "27017/tcp"

	// startTimeout bounds creating and starting a container, including an
	// image pull when a registry is used.
	startTimeout = 5 * time.Minute
	// readyTimeout bounds waiting for a started server to accept connections.
	readyTimeout = 60 * time.Second
	// stopTimeout is how long a stopped server gets to exit before SIGKILL.
	stopTimeout = 5 * time.Second
)

func TestMain(m *testing.M) {
	// Ryuk (the reaper container) needs its own image, which is not there
	// without a registry; CleanupContainer removes our containers instead.
	setenvDefault("TESTCONTAINERS_RYUK_DISABLED", "true")
	// Talk to mapped ports on loopback only, whatever testcontainers would
	// infer from the Docker host or the default gateway.
	setenvDefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")

	goleak.VerifyTestMain(m)
}

func setenvDefault(key, value string) {
	if _, ok := os.LookupEnv(key); !ok {
		os.Setenv(key, value)
	}
}

func envDefault(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// dockerHealth pings the Docker daemon once per test binary.
var dockerHealth = sync.OnceValue(func() (err error) {
	// Older testcontainers versions panic when no Docker host can be found.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("docker provider panicked: %v", r)
		}
	}()

	p, err := testcontainers.NewDockerProvider()
	if err != nil {
		return fmt.Errorf("docker provider: %w", err)
	}
	defer p.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Health(ctx); err != nil {
		return fmt.Errorf("docker health: %w", err)
	}
	return nil
})

// requireDocker skips the test when Docker is not reachable, or fails it when
// SSS_REQUIRE_DOCKER=1.
func requireDocker(t testing.TB) {
	t.Helper()
	err := dockerHealth()
	if err == nil {
		return
	}
	if os.Getenv(requireDockerEnv) == "1" {
		t.Fatalf("Docker is not reachable and %s=1: %v", requireDockerEnv, err)
	}
	t.Skipf("Docker is not reachable, skipping (set %s=1 to fail instead): %v", requireDockerEnv, err)
}

// runRedis starts a Redis container for the test and returns it and its
// host:port address. It is removed when the test ends.
func runRedis(t testing.TB) (testcontainers.Container, string) {
	t.Helper()
	return runRedisWith(t)
}

// runRedisWith is runRedis with extra redis-server flags, e.g.
// "--cluster-enabled", "yes".
func runRedisWith(t testing.TB, flags ...string) (testcontainers.Container, string) {
	t.Helper()
	requireDocker(t)

	req := testcontainers.ContainerRequest{
		Image:        envDefault(redisImageEnv, defaultRedisImage),
		ExposedPorts: []string{redisPort},
		// Flags only: the local image's entrypoint is redis-server, and the
		// official image's docker-entrypoint.sh prepends redis-server when the
		// first argument starts with "-". Protected mode must be off for
		// clients coming through the port mapping; no persistence keeps
		// restarts fast and state-free.
		Cmd: append([]string{"--protected-mode", "no", "--save", "", "--appendonly", "no"}, flags...),
		WaitingFor: wait.ForAll(
			forLogEachStart("Ready to accept connections"),
			// Scratch-like images have no shell for the internal check.
			wait.ForListeningPort(redisPort).SkipInternalCheck(),
		).WithDeadline(readyTimeout),
		HostConfigModifier: bindLoopback(redisPort),
	}

	c := runContainer(t, req)
	return c, containerAddr(t, c, redisPort)
}

// runMongo starts a MongoDB-wire container (official MongoDB or the local
// FerretDB image) and returns it and its host:port address.
func runMongo(t testing.TB) (testcontainers.Container, string) {
	t.Helper()
	requireDocker(t)

	image := envDefault(mongoImageEnv, defaultMongoImage)
	// Each server announces readiness differently: mongod logs "Waiting for
	// connections"; our FerretDB wrapper logs FerretDB's own
	// "Listening on TCP 0.0.0.0:27017..." once its listener is bound.
	readyLine, dataDir := "Waiting for connections", "/data/db"
	if strings.Contains(strings.ToLower(image), "ferretdb") {
		readyLine, dataDir = "Listening on TCP", "/data"
	}

	req := testcontainers.ContainerRequest{
		Image:        image,
		ExposedPorts: []string{mongoPort},
		WaitingFor: wait.ForAll(
			forLogEachStart(readyLine),
			wait.ForListeningPort(mongoPort).SkipInternalCheck(),
		).WithDeadline(readyTimeout),
		HostConfigModifier: func(hc *container.HostConfig) {
			bindLoopback(mongoPort)(hc)
			// Data in memory: FerretDB's SQLite syncs every commit to disk,
			// which made writes several times slower. A restarted server
			// therefore comes back empty, like the Redis one.
			hc.Tmpfs = map[string]string{dataDir: ""}
		},
	}

	c := runContainer(t, req)
	return c, containerAddr(t, c, mongoPort)
}

// startMongo starts a MongoDB-wire container and returns its connection URI.
func startMongo(t testing.TB) (uri string) {
	t.Helper()
	_, addr := runMongo(t)
	return mongoURI(addr)
}

func mongoURI(addr string) string { return "mongodb://" + addr + "/" }

func runContainer(t testing.TB, req testcontainers.ContainerRequest) testcontainers.Container {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()

	c, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{
		ContainerRequest: req,
		Started:          true,
		Logger:           tclog.TestLogger(t),
	})
	// Registered before the error check: a container that was created but
	// failed to become ready must be removed too.
	testcontainers.CleanupContainer(t, c)
	if err != nil {
		t.Fatalf("start %s: %v (without a registry, build local images with integration/images/build.sh and set %s/%s)",
			req.Image, err, redisImageEnv, mongoImageEnv)
	}
	return c
}

// stopContainer stops c (SIGTERM, then SIGKILL after stopTimeout) without
// removing it, e.g. to cut a server off mid-stream.
func stopContainer(t testing.TB, c testcontainers.Container) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout+30*time.Second)
	defer cancel()

	timeout := stopTimeout
	if err := c.Stop(ctx, &timeout); err != nil {
		t.Fatalf("stop container: %v", err)
	}
}

// startContainer starts a stopped c again, waits until it is ready, and
// returns the host:port address for port. Docker allocates a new host port
// on every start, so the address usually differs from the previous one:
// clients must be pointed at the returned address.
func startContainer(t testing.TB, c testcontainers.Container, port string) (addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout+30*time.Second)
	defer cancel()

	// Start runs the request's wait strategy again.
	if err := c.Start(ctx); err != nil {
		t.Fatalf("start container: %v", err)
	}
	return containerAddr(t, c, port)
}

// containerAddr returns the host:port at which port of c is reachable.
func containerAddr(t testing.TB, c testcontainers.Container, port string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	host, err := c.Host(ctx)
	if err != nil {
		t.Fatalf("container host: %v", err)
	}
	mapped, err := c.MappedPort(ctx, port)
	if err != nil {
		t.Fatalf("mapped port %s: %v", port, err)
	}
	return net.JoinHostPort(host, mapped.Port())
}

// bindLoopback publishes port on 127.0.0.1 only, instead of on every host
// interface, when testcontainers is told to reach containers there (as
// TestMain does by default). Tests never need the servers to be reachable
// from elsewhere.
func bindLoopback(port string) func(*container.HostConfig) {
	return func(hc *container.HostConfig) {
		if os.Getenv("TESTCONTAINERS_HOST_OVERRIDE") != "127.0.0.1" {
			return
		}
		p := network.MustParsePort(port)
		if hc.PortBindings == nil {
			hc.PortBindings = network.PortMap{}
		}
		// An empty HostPort makes Docker pick a free port on each start.
		hc.PortBindings[p] = []network.PortBinding{{HostIP: netip.MustParseAddr("127.0.0.1")}}
	}
}

// logEachStart waits for a log line that the server prints once per start.
//
// Docker keeps a container's log across stop and start, and testcontainers
// runs the wait strategy again on Start, so a plain wait.ForLog would be
// satisfied at once by the previous run's line; the port check alone is no
// better, since Docker's userland proxy accepts connections before the server
// listens. logEachStart therefore wants one more occurrence on every start.
type logEachStart struct {
	line string

	mu     sync.Mutex
	starts int
}

func forLogEachStart(line string) *logEachStart { return &logEachStart{line: line} }

// WaitUntilReady implements wait.Strategy.
func (s *logEachStart) WaitUntilReady(ctx context.Context, target wait.StrategyTarget) error {
	s.mu.Lock()
	s.starts++
	n := s.starts
	s.mu.Unlock()

	err := wait.ForLog(s.line).
		WithOccurrence(n).
		WithStartupTimeout(readyTimeout).
		WaitUntilReady(ctx, target)
	if err != nil {
		return fmt.Errorf("wait for log %q (start #%d): %w", s.line, n, err)
	}
	return nil
}

// String implements fmt.Stringer, used by testcontainers' logs.
func (s *logEachStart) String() string {
	return fmt.Sprintf("log %q once per start", s.line)
}
