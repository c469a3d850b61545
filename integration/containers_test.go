package integration

import (
	"context"
	"net"
	"os"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
	"go.uber.org/goleak"

	"github.com/superscaled/sss/ssstest/containers"
)

// Redis and the MongoDB-wire server are started by package
// ssstest/containers, which applications use too: the same image
// variables (SSS_REDIS_IMAGE, SSS_MONGO_IMAGE; defaults redis:7 and
// mongo:7, integration/images/build.sh builds offline stand-ins) and the
// same skip-or-fail rule when Docker is missing (SSS_REQUIRE_DOCKER=1
// fails, as CI wants). This file keeps what only these tests need: the
// handles and addresses in the shape the tests use, and restarts; other
// containers (a Redis Cluster on host networking) start with
// containers.Run.
const (
	redisPort = containers.RedisPort
	mongoPort = containers.MongoPort

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

// requireDocker skips the test when Docker is not reachable, or fails it when
// SSS_REQUIRE_DOCKER=1.
func requireDocker(t testing.TB) {
	t.Helper()
	containers.RequireDocker(t)
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
	r := containers.StartRedis(t, containers.WithRedisFlags(flags...))
	return r.Container, r.Addr()
}

// runMongo starts a MongoDB-wire container (official MongoDB or the local
// FerretDB image), its data in memory, and returns it and its host:port
// address.
func runMongo(t testing.TB) (testcontainers.Container, string) {
	t.Helper()
	m := containers.StartMongo(t)
	return m.Container, m.Addr()
}

// startMongo starts a MongoDB-wire container and returns its connection URI.
func startMongo(t testing.TB) (uri string) {
	t.Helper()
	_, addr := runMongo(t)
	return mongoURI(addr)
}

func mongoURI(addr string) string { return "mongodb://" + addr + "/" }

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

// forLogEachStart waits for a log line that a server prints once per start
// (see containers.LogEachStart).
func forLogEachStart(line string) *containers.LogEachStart { return containers.ForLogEachStart(line) }
