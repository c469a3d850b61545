// Package containers starts the backends of an sss cluster in Docker with
// testcontainers-go, for tests of applications built on sss against the
// real thing: Redis and a MongoDB-wire server, and a ready
// *mongoredis.Scaler on them (MongoRedis); or NATS with JetStream, and a
// ready *nats.Scaler from scaler/nats on it (NATS). Everything is removed
// through t.Cleanup.
//
//	func TestChatOnRedis(t *testing.T) {
//		sc, _ := containers.MongoRedis(t) // or: sc, _ := containers.NATS(t)
//		cl := ssstest.NewCluster(t, 2, ssstest.WithScaler(sc), ssstest.WithServerOptions(myapp.Options()...))
//		...
//	}
//
// It is a package of its own so that the in-memory helpers of package
// ssstest do not bring testcontainers into an application's build.
//
// Images: SSS_REDIS_IMAGE, SSS_MONGO_IMAGE and SSS_NATS_IMAGE choose them
// (defaults: the official redis:7, mongo:7 and nats:2), the variables sss's own integration tests
// honour; any image whose name contains "ferretdb" is taken for FerretDB
// (it announces readiness differently). When Docker cannot be reached the
// test is skipped, or fails if SSS_REQUIRE_DOCKER=1 (set it in CI, so that
// a CI run cannot pass by skipping).
//
// Containers can be stopped, killed and started again (Server.Stop, Kill,
// Start), to test what an application does while a backend is down. Docker
// maps a new host port on every start: Server.Addr follows it, and the
// scalers from MongoRedis and NATS dial the current address, as a DNS
// name would.
package containers

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
	dockerclient "github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	"github.com/testcontainers/testcontainers-go/wait"
)

// Environment variables that choose the images and whether a missing
// Docker skips or fails.
const (
	RedisImageEnv = "SSS_REDIS_IMAGE"
	MongoImageEnv = "SSS_MONGO_IMAGE"
	// RequireDockerEnv=1 turns "Docker is not reachable" from a skip into a
	// failure.
	RequireDockerEnv = "SSS_REQUIRE_DOCKER"

	DefaultRedisImage = "redis:7"
	DefaultMongoImage = "mongo:7"
)

// The ports the servers listen on inside their containers.
const (
	RedisPort = "6379/tcp"
	MongoPort = "27017/tcp"
)

const (
	// startTimeout bounds creating and starting a container, including an
	// image pull when a registry is used.
	startTimeout = 5 * time.Minute
	// readyTimeout bounds waiting for a started server to accept connections.
	readyTimeout = 60 * time.Second
	// stopTimeout is how long a stopped server gets to exit before SIGKILL.
	stopTimeout = 5 * time.Second
)

// Option configures StartRedis, StartMongo, MongoRedis, StartNATS and
// NATS; each takes the options that concern it and ignores the others.
type Option func(*config)

type config struct {
	redisFlags []string
	networks   []netAttach
	scaler     []scalerOption
	natsFlags  []string
	natsTmpfs  bool
	natsScaler []natsScalerOption
}

type netAttach struct {
	name    string
	aliases []string
}

// WithRedisFlags adds redis-server flags after the defaults (no
// persistence: --save "" --appendonly no); a later flag wins, so
// WithRedisFlags("--appendonly", "yes", "--appendfsync", "always") turns
// the append-only file on.
func WithRedisFlags(flags ...string) Option {
	return func(c *config) { c.redisFlags = append(c.redisFlags, flags...) }
}

// WithNetwork attaches the container to the Docker network named name
// (e.g. a testcontainers network.New's Name), reachable there by aliases,
// so that other containers (your server's) reach it by name. Give it more
// than once for several networks. The container is then on these
// networks only: its host port is published through one that is not
// internal, so give one (an internal network alone leaves it unreachable
// from the test, and the start fails).
func WithNetwork(name string, aliases ...string) Option {
	return func(c *config) { c.networks = append(c.networks, netAttach{name: name, aliases: aliases}) }
}

func envDefault(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// RedisImage is the Redis image used: $SSS_REDIS_IMAGE or redis:7.
func RedisImage() string { return envDefault(RedisImageEnv, DefaultRedisImage) }

// MongoImage is the MongoDB-wire image used: $SSS_MONGO_IMAGE or mongo:7.
func MongoImage() string { return envDefault(MongoImageEnv, DefaultMongoImage) }

// IsFerretDB reports whether the MongoDB-wire image is FerretDB, which
// lacks some of MongoDB's features (TTL indexes, change streams,
// transactions).
func IsFerretDB() bool { return strings.Contains(strings.ToLower(MongoImage()), "ferretdb") }

// dockerHealth pings the Docker daemon once per test binary.
var dockerHealth = sync.OnceValue(func() (err error) {
	// Some testcontainers versions panic when no Docker host can be found.
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

// RequireDocker skips the test when Docker is not reachable, or fails it
// when SSS_REQUIRE_DOCKER=1. The Start functions call it.
func RequireDocker(t testing.TB) {
	t.Helper()
	err := dockerHealth()
	if err == nil {
		return
	}
	if os.Getenv(RequireDockerEnv) == "1" {
		t.Fatalf("Docker is not reachable and %s=1: %v", RequireDockerEnv, err)
	}
	t.Skipf("Docker is not reachable, skipping (set %s=1 to fail instead): %v", RequireDockerEnv, err)
}

// Server is a started backend container.
type Server struct {
	// Container is the testcontainers handle, for what this type does not
	// do (logs, exec, networks).
	Container testcontainers.Container

	port string
	mu   sync.Mutex
	addr string
}

// Addr is the server's host:port on the host, as of its last start.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// DialContext dials the server's current address whatever address it is
// asked for, so that a client built with it (go-redis' Options.Dialer, the
// MongoDB driver's SetDialer) follows the server across restarts.
func (s *Server) DialContext(ctx context.Context, network, _ string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, s.Addr())
}

// Stop stops the server (SIGTERM, SIGKILL after 5 s) without removing it.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout+30*time.Second)
	defer cancel()
	timeout := stopTimeout
	if err := s.Container.Stop(ctx, &timeout); err != nil {
		t.Fatalf("stop container: %v", err)
	}
}

// Kill kills the server with SIGKILL, as kill -9 would (no chance to
// save), and waits until Docker sees it stopped.
func (s *Server) Kill(t testing.TB) {
	t.Helper()
	if err := Kill(context.Background(), s.Container); err != nil {
		t.Fatal(err)
	}
}

// Start starts a stopped or killed server again and waits until it
// accepts connections. Its host port is usually a new one: Addr follows.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout+30*time.Second)
	defer cancel()
	// Start runs the request's wait strategy again.
	if err := s.Container.Start(ctx); err != nil {
		t.Fatalf("start container: %v", err)
	}
	s.refresh(t)
}

func (s *Server) refresh(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	host, err := s.Container.Host(ctx)
	if err != nil {
		t.Fatalf("container host: %v", err)
	}
	mapped, err := s.Container.MappedPort(ctx, s.port)
	if err != nil {
		t.Fatalf("mapped port %s: %v", s.port, err)
	}
	s.mu.Lock()
	s.addr = net.JoinHostPort(host, mapped.Port())
	s.mu.Unlock()
}

// Kill sends SIGKILL to any container and waits until Docker sees it
// stopped, so that a Start afterwards starts it anew.
func Kill(ctx context.Context, c testcontainers.Container) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cli, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	if _, err := cli.ContainerKill(ctx, c.GetContainerID(), dockerclient.ContainerKillOptions{Signal: "SIGKILL"}); err != nil {
		return fmt.Errorf("kill container: %w", err)
	}
	for {
		info, err := cli.ContainerInspect(ctx, c.GetContainerID(), dockerclient.ContainerInspectOptions{})
		if err == nil && !info.Container.State.Running {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("container still running after SIGKILL: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Redis is a Redis server in a container.
type Redis struct{ Server }

// URL is the server's redis:// URL on the host (database 0), as of its
// last start.
func (r *Redis) URL() string { return "redis://" + r.Addr() + "/0" }

// StartRedis starts Redis (no persistence unless WithRedisFlags turns it
// on); it is removed when the test ends.
func StartRedis(t testing.TB, opts ...Option) *Redis {
	t.Helper()
	cfg := configure(opts)
	req := testcontainers.ContainerRequest{
		Image:        RedisImage(),
		ExposedPorts: []string{RedisPort},
		// Flags only: the official image's entrypoint prepends redis-server
		// when the first argument starts with "-" (sss's offline image's
		// entrypoint is redis-server). Protected mode off for clients
		// coming through the port mapping; no persistence keeps restarts
		// fast and state-free unless asked for.
		Cmd: append([]string{"--protected-mode", "no", "--save", "", "--appendonly", "no"}, cfg.redisFlags...),
		WaitingFor: wait.ForAll(
			ForLogEachStart("Ready to accept connections"),
			// Scratch-like images have no shell for the internal check.
			wait.ForListeningPort(RedisPort).SkipInternalCheck(),
		).WithDeadline(readyTimeout),
		HostConfigModifier: bindLoopback(RedisPort),
	}
	cfg.attach(&req)
	return &Redis{Server: *run(t, req, RedisPort)}
}

// Mongo is a MongoDB-wire server (MongoDB, or FerretDB) in a container.
type Mongo struct{ Server }

// URL is the server's mongodb:// URI on the host, as of its last start.
func (m *Mongo) URL() string { return "mongodb://" + m.Addr() + "/" }

// StartMongo starts a MongoDB-wire server with its data in memory (a
// tmpfs: a restarted server comes back empty); it is removed when the test
// ends.
func StartMongo(t testing.TB, opts ...Option) *Mongo {
	t.Helper()
	cfg := configure(opts)
	// mongod logs "Waiting for connections"; FerretDB "Listening on
	// TCP ..." once its listener is bound.
	readyLine, dataDir := "Waiting for connections", "/data/db"
	if IsFerretDB() {
		readyLine, dataDir = "Listening on TCP", "/data"
	}
	req := testcontainers.ContainerRequest{
		Image:        MongoImage(),
		ExposedPorts: []string{MongoPort},
		WaitingFor: wait.ForAll(
			ForLogEachStart(readyLine),
			wait.ForListeningPort(MongoPort).SkipInternalCheck(),
		).WithDeadline(readyTimeout),
		HostConfigModifier: func(hc *container.HostConfig) {
			bindLoopback(MongoPort)(hc)
			// FerretDB's SQLite syncs every commit to disk, several times
			// slower than in memory; MongoDB does not need the disk either.
			hc.Tmpfs = map[string]string{dataDir: ""}
		},
	}
	cfg.attach(&req)
	return &Mongo{Server: *run(t, req, MongoPort)}
}

func configure(opts []Option) *config {
	cfg := &config{}
	for _, o := range opts {
		o(cfg)
	}
	return cfg
}

func (cfg *config) attach(req *testcontainers.ContainerRequest) {
	for _, n := range cfg.networks {
		req.Networks = append(req.Networks, n.name)
		if len(n.aliases) > 0 {
			if req.NetworkAliases == nil {
				req.NetworkAliases = map[string][]string{}
			}
			req.NetworkAliases[n.name] = n.aliases
		}
	}
}

// Run starts any container (one the Start functions do not cover, such
// as a Redis Cluster node) as they do: Docker required (RequireDocker),
// logs through t, removed when the test ends, even if it never became
// ready.
func Run(t testing.TB, req testcontainers.ContainerRequest) testcontainers.Container {
	t.Helper()
	RequireDocker(t)
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
		t.Fatalf("start %s: %v (without a registry, build local images and set %s/%s/%s)",
			req.Image, err, RedisImageEnv, MongoImageEnv, NATSImageEnv)
	}
	return c
}

func run(t testing.TB, req testcontainers.ContainerRequest, port string) *Server {
	t.Helper()
	s := &Server{Container: Run(t, req), port: port}
	s.refresh(t)
	return s
}

// bindLoopback publishes port on 127.0.0.1 only, instead of on every host
// interface, when testcontainers is told to reach containers there
// (TESTCONTAINERS_HOST_OVERRIDE=127.0.0.1): tests never need the servers
// reachable from elsewhere.
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

// LogEachStart is a wait strategy for a log line that a server prints
// once per start.
//
// Docker keeps a container's log across stop and start, and
// testcontainers runs the wait strategy again on Start, so a plain
// wait.ForLog would be satisfied at once by the previous run's line; a
// port check alone is no better, since Docker's userland proxy accepts
// connections before the server listens. LogEachStart wants one more
// occurrence on every start. Use one value per container.
type LogEachStart struct {
	line string

	mu     sync.Mutex
	starts int
}

// ForLogEachStart waits for one more occurrence of line on every start.
func ForLogEachStart(line string) *LogEachStart { return &LogEachStart{line: line} }

// WaitUntilReady implements wait.Strategy.
func (s *LogEachStart) WaitUntilReady(ctx context.Context, target wait.StrategyTarget) error {
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
func (s *LogEachStart) String() string {
	return fmt.Sprintf("log %q once per start", s.line)
}
