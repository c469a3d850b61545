package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	dockerclient "github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	tcnetwork "github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/superscaled/sss/client"
	"github.com/superscaled/sss/ssstest/containers"
)

// The failover suite: three sss-server processes (cmd/sss-server, in
// containers) on Redis and a MongoDB-wire server, Go clients in this
// process, a publisher on the HTTP API, and the faults an orchestrator
// and a network inflict: an instance killed, a rolling restart, the link
// between one instance and Redis cut, Redis restarted with its
// append-only file and replaced by an empty one. After each, every client
// must be connected with its subscriptions, and every publication the
// publisher was told succeeded must have reached every subscriber once, in
// order, or its loss must have been reported to the client as a gap.
//
// Networks: "back" is internal (no way out, so Docker never routes the
// published ports through it): Redis is "redis" there and the servers
// reach it by that name only; "front" carries the servers' published
// ports and MongoDB ("mongo"). Disconnecting a server from "back" cuts it
// from Redis and from nothing else. The servers' host ports are picked
// once and bound fixed, so the clients' URL list stays valid across
// restarts, as a DNS name or a load balancer's would.
//
// TestFailoverNATS runs the same clients, publisher, checks and instance
// faults with the servers on one NATS server with JetStream ("nats" on
// "back", its storage in the container) instead of Redis and MongoDB: the
// link cut is between one instance and NATS, and NATS is killed and
// restarted with its storage, then replaced by an empty one.

const (
	serverImageEnv     = "SSS_SERVER_IMAGE"
	defaultServerImage = "sss-test/sss-server:dev"
	// failoverClientsEnv sets the number of Go clients of both runs
	// (default defaultFailoverClients on Redis, defaultNATSFailoverClients
	// on NATS: half, to keep CI time down; the instance faults are the
	// same for both backends, and their cost is in the clients).
	failoverClientsEnv         = "SSS_FAILOVER_CLIENTS"
	defaultFailoverClients     = 300
	defaultNATSFailoverClients = 150

	serverPort    = "8000/tcp"
	failoverJWT   = "failover-secret"
	failoverKey   = "failover-key"
	failoverRooms = 10
	// publishEvery is the publisher's tick: one publication to feed.*,
	// one to a room and one to a user per tick.
	publishEvery = 40 * time.Millisecond
)

// fbackend is what the servers scale on.
type fbackend int

const (
	onRedis fbackend = iota // Redis + a MongoDB-wire server
	onNATS                  // NATS with JetStream
)

func (b fbackend) String() string { return [...]string{"Redis", "NATS"}[b] }

// fcluster is the cluster under test.
type fcluster struct {
	t           *testing.T
	backend     fbackend
	front, back *testcontainers.DockerNetwork
	redis       *containers.Redis
	redisFlags  []string
	mongo       *containers.Mongo
	nats        *containers.NATSServer
	// spare is a container on front only, that takes the back address of
	// the instance whose link is cut (MongoDB on Redis; on NATS, a NATS
	// server of its own that nothing uses).
	spare   testcontainers.Container
	servers []testcontainers.Container
	ports   []int
	docker  *testcontainers.DockerClient
}

func (fc *fcluster) wsURL(i int) string  { return fmt.Sprintf("ws://127.0.0.1:%d/ws", fc.ports[i]) }
func (fc *fcluster) apiURL(i int) string { return fmt.Sprintf("http://127.0.0.1:%d/api/", fc.ports[i]) }

// freePorts returns n ports free on 127.0.0.1 now (held together while
// picked, so they differ).
func freePorts(t *testing.T, n int) []int {
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

func newFailoverCluster(t *testing.T, backend fbackend) *fcluster {
	t.Helper()
	requireDocker(t)
	image := envDefault(serverImageEnv, defaultServerImage)
	fc := &fcluster{t: t, backend: backend, redisFlags: []string{"--appendonly", "yes", "--appendfsync", "always"}}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	cli, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	fc.docker = cli
	if _, err := cli.ImageInspect(ctx, image); err != nil {
		// No registry has it: it is built from this checkout. Missing, it
		// skips like a missing Docker, and fails where Docker is required.
		msg := fmt.Sprintf("image %s: %v (build it with integration/images/build.sh, which sets %s)", image, err, serverImageEnv)
		if os.Getenv(containers.RequireDockerEnv) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}

	fc.front, err = tcnetwork.New(ctx)
	testcontainers.CleanupNetwork(t, fc.front)
	if err != nil {
		t.Fatal(err)
	}
	fc.back, err = tcnetwork.New(ctx, tcnetwork.WithInternal())
	testcontainers.CleanupNetwork(t, fc.back)
	if err != nil {
		t.Fatal(err)
	}
	switch backend {
	case onRedis:
		fc.startRedis(t)
		fc.mongo = containers.StartMongo(t, containers.WithNetwork(fc.front.Name, "mongo"))
		fc.spare = fc.mongo.Container
	case onNATS:
		fc.startNATS(t)
		fc.spare = containers.StartNATS(t, containers.WithNetwork(fc.front.Name)).Container
	}

	fc.ports = freePorts(t, 3)
	for i := range 3 {
		fc.servers = append(fc.servers, fc.startServer(t, image, i))
	}
	// Registered after the containers, so it runs before they are
	// removed: what the servers said, when something went wrong.
	t.Cleanup(func() {
		if t.Failed() {
			for i := range fc.servers {
				t.Logf("server %d's log (end):\n%s", i, fc.serverLog(i, 60))
			}
		}
	})
	return fc
}

// startRedis starts Redis (with its append-only file, every write synced)
// as "redis" on the back network; on the front one too, which carries
// its published port. It is removed when the whole suite ends, even when
// a phase (a subtest) started it.
func (fc *fcluster) startRedis(t *testing.T) {
	fc.redis = containers.StartRedis(outliving{TB: t, owner: fc.t}, containers.WithRedisFlags(fc.redisFlags...),
		containers.WithNetwork(fc.back.Name, "redis"), containers.WithNetwork(fc.front.Name))
}

// startNATS starts NATS with JetStream, its storage in the container's
// filesystem (kept across a kill and a start), as "nats" on the back
// network, and on the front one for its published port. Like Redis, it
// is removed when the whole suite ends.
func (fc *fcluster) startNATS(t *testing.T) {
	fc.nats = containers.StartNATS(outliving{TB: t, owner: fc.t},
		containers.WithNetwork(fc.back.Name, "nats"), containers.WithNetwork(fc.front.Name))
}

// startServer starts instance i: sss-server configured by its
// environment, on both networks, its port bound to fc.ports[i] on the
// host; ready once it logged that it listens and /readyz answers (Redis
// and MongoDB, or NATS, reachable).
func (fc *fcluster) startServer(t *testing.T, image string, i int) testcontainers.Container {
	t.Helper()
	port := fc.ports[i]
	req := testcontainers.ContainerRequest{
		Image:        image,
		ExposedPorts: []string{serverPort},
		Env: map[string]string{
			"SSS_ADDR":          ":8000",
			"SSS_JWT_SECRET":    failoverJWT,
			"SSS_API_KEY":       failoverKey,
			"SSS_DRAIN_TIMEOUT": "5s",
		},
		// front first: the container is created on it, then joins back.
		Networks: []string{fc.front.Name, fc.back.Name},
		WaitingFor: wait.ForAll(
			containers.ForLogEachStart("sss-server: listening"),
			wait.ForHTTP("/readyz").WithPort(serverPort),
		).WithDeadline(readyTimeout),
		HostConfigModifier: func(hc *container.HostConfig) {
			hc.PortBindings = network.PortMap{network.MustParsePort(serverPort): []network.PortBinding{
				{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: strconv.Itoa(port)},
			}}
		},
	}
	switch fc.backend {
	case onRedis:
		req.Env["SSS_REDIS_URL"] = "redis://redis:6379/0"
		req.Env["SSS_MONGO_URL"] = "mongodb://mongo:27017/"
		req.Env["SSS_MONGO_DB"] = "failover"
	case onNATS:
		req.Env["SSS_NATS_URL"] = "nats://nats:4222"
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	c, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{
		ContainerRequest: req, Started: true, Logger: tclog.TestLogger(t),
	})
	testcontainers.CleanupContainer(t, c)
	if err != nil {
		t.Fatalf("start server %d: %v", i, err)
	}
	return c
}

// serverLog returns the last lines of server i's log.
func (fc *fcluster) serverLog(i, lines int) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, err := fc.servers[i].Logs(ctx)
	if err != nil {
		return err.Error()
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// grepLog returns the lines of server i's log that contain s.
func (fc *fcluster) grepLog(i int, s string) string {
	var out []string
	for _, l := range strings.Split(fc.serverLog(i, 1<<30), "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// countLog counts the lines of server i's log that contain s.
func (fc *fcluster) countLog(i int, s string) int {
	return strings.Count(fc.serverLog(i, 1<<30), s)
}

// restartServer starts server i again after a kill or a stop, on its
// port, and waits until it is ready.
func (fc *fcluster) restartServer(t *testing.T, i int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout+30*time.Second)
	defer cancel()
	if err := fc.servers[i].Start(ctx); err != nil {
		t.Fatalf("start server %d again: %v", i, err)
	}
}

// outliving is a subtest's t whose cleanups run when owner ends.
type outliving struct {
	testing.TB
	owner testing.TB
}

func (o outliving) Cleanup(f func()) { o.owner.Cleanup(f) }

// token signs a connection token for user.
func token(user string) (string, error) {
	return jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub":      user,
		"sid":      user + "-s",
		"exp":      time.Now().Add(time.Hour).Unix(),
		"channels": []string{"feed", "room.*"},
	}).SignedString([]byte(failoverJWT))
}

// fclient is one Go client and what it received, per stream: "feed"
// (its subscription to the parent of feed.a and feed.b), its room and
// "$user" (its user channel).
type fclient struct {
	c     *client.Client
	user  string
	room  string
	recvs map[string]*received

	mu         sync.Mutex
	reconnects []time.Time
}

func (c *fclient) reconnected() []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.reconnects)
}

// dialFailoverClient dials client i: user u<i> on instance i%3 first, in
// room i%10.
func dialFailoverClient(ctx context.Context, fc *fcluster, i int) (*fclient, error) {
	fcl := &fclient{
		user: fmt.Sprint("u", i), room: fmt.Sprint("room.", i%failoverRooms),
		recvs: map[string]*received{"feed": {}, "$user": {}},
	}
	fcl.recvs[fcl.room] = &received{}
	record := func(key string) func(client.Message) {
		r := fcl.recvs[key]
		return func(m client.Message) {
			var n int
			json.Unmarshal(m.Data, &n)
			r.add(n)
		}
	}
	first := i % len(fc.ports)
	var others []string
	for j := 1; j < len(fc.ports); j++ {
		others = append(others, fc.wsURL((first+j)%len(fc.ports)))
	}
	c, err := client.Dial(ctx, fc.wsURL(first), client.WithURLs(others...),
		client.WithToken(func(context.Context) (string, error) { return token(fcl.user) }),
		// Shorter than the default (250 ms to 30 s), to bound the test.
		client.WithReconnectDelay(100*time.Millisecond, 5*time.Second),
		client.WithHooks(client.Hooks{
			OnUserMessage: record("$user"),
			OnGap: func(info client.RecoverInfo) {
				switch info.Kind {
				case client.KindUser:
					fcl.recvs["$user"].add(-1)
				case client.KindSubscription:
					if r := fcl.recvs[info.Channel]; r != nil {
						r.add(-1)
					}
				}
			},
			OnReconnect: func(client.ConnInfo) {
				fcl.mu.Lock()
				fcl.reconnects = append(fcl.reconnects, time.Now())
				fcl.mu.Unlock()
			},
		}))
	if err != nil {
		return nil, fmt.Errorf("client %d: %w", i, err)
	}
	fcl.c = c
	for _, ch := range []string{"feed", fcl.room} {
		if _, err := c.Subscribe(ctx, ch, client.WithMessageHandler(record(ch))); err != nil {
			c.Close()
			return nil, fmt.Errorf("client %d: subscribe %s: %w", i, ch, err)
		}
	}
	return fcl, nil
}

// dialFailoverClients dials n clients, spread over the instances, a few
// at a time.
func dialFailoverClients(t *testing.T, fc *fcluster, n int) []*fclient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out := make([]*fclient, n)
	errs := make([]error, n)
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out[i], errs[i] = dialFailoverClient(ctx, fc, i)
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		// Together: each Close waits for the server's close frame.
		var wg sync.WaitGroup
		for _, c := range out {
			if c != nil {
				wg.Go(func() { c.c.Close() })
			}
		}
		wg.Wait()
	})
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// hpublisher publishes numbered publications through the HTTP API: per
// stream ("feed", a room, "$user:<user>") its own numbers, each number
// published once: an attempt that fails is not retried with the same
// number (it may have been delivered all the same), the next one goes to
// the next instance with the next number.
type hpublisher struct {
	fc    *fcluster
	hc    *http.Client
	users []string

	mu    sync.Mutex
	next  map[string]int   // stream → last number used
	acked map[string][]int // stream → numbers acknowledged this phase
	fails int              // attempts that failed this phase
	inst  int              // instance of the next attempt

	stop, done chan struct{}
}

func newPublisher(t *testing.T, fc *fcluster, users []string) *hpublisher {
	tr := &http.Transport{MaxIdleConnsPerHost: 4}
	t.Cleanup(tr.CloseIdleConnections)
	return &hpublisher{
		fc: fc, users: users,
		hc:    &http.Client{Transport: tr, Timeout: 2 * time.Second},
		next:  map[string]int{},
		acked: map[string][]int{},
	}
}

// publishOnce makes one attempt at the next number of stream, on the next
// instance.
func (p *hpublisher) publishOnce(ctx context.Context, stream string) error {
	p.mu.Lock()
	p.next[stream]++
	n := p.next[stream]
	inst := p.inst
	p.inst = (p.inst + 1) % len(p.fc.ports)
	p.mu.Unlock()

	method, body := "publish", map[string]any{"event": "n", "data": n}
	switch {
	case stream == "feed":
		body["channel"] = []string{"feed.a", "feed.b"}[n%2]
	case strings.HasPrefix(stream, "$user:"):
		method, body["user"] = "publish_user", strings.TrimPrefix(stream, "$user:")
	default:
		body["channel"] = stream
	}
	b, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.fc.apiURL(inst)+method, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "apikey "+failoverKey)
	resp, err := p.hc.Do(req)
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("instance %d: %s %s: HTTP %d", inst, method, stream, resp.StatusCode)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.fails++
		return err
	}
	p.acked[stream] = append(p.acked[stream], n)
	return nil
}

// publish tries the instances in turn (up to one round), a new number
// each time.
func (p *hpublisher) publish(ctx context.Context, stream string) bool {
	for range len(p.fc.ports) {
		if p.publishOnce(ctx, stream) == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
	}
	return false
}

// start publishes continuously, every publishEvery: feed.*, the rooms in
// turn and the users in turn.
func (p *hpublisher) start() {
	p.stop, p.done = make(chan struct{}), make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-p.stop
		cancel()
	}()
	go func() {
		defer close(p.done)
		tick := time.NewTicker(publishEvery)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			p.publish(ctx, "feed")
			p.publish(ctx, fmt.Sprint("room.", i%failoverRooms))
			p.publish(ctx, "$user:"+p.users[i%len(p.users)])
		}
	}()
}

// halt stops the publisher if it runs.
func (p *hpublisher) halt() {
	if p.stop == nil {
		return
	}
	close(p.stop)
	<-p.done
	p.stop = nil
}

func (p *hpublisher) ackedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.acked["feed"])
}

// flush publishes one more number to every stream, each until one attempt
// succeeds, so that every client has a last publication to wait for.
func (p *hpublisher) flush(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	streams := []string{"feed"}
	for r := range failoverRooms {
		streams = append(streams, fmt.Sprint("room.", r))
	}
	for _, u := range p.users {
		streams = append(streams, "$user:"+u)
	}
	for _, s := range streams {
		for !p.publish(ctx, s) {
			if ctx.Err() != nil {
				t.Fatalf("flush: no instance accepts a publication to %s", s)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// phase takes what was acknowledged since the last phase and starts anew.
func (p *hpublisher) phase() (acked map[string][]int, fails int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	acked, fails = p.acked, p.fails
	p.acked, p.fails = map[string][]int{}, 0
	return acked, fails
}

// take returns what r received and forgets it.
func (r *received) take() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	ev := r.events
	r.events = nil
	return ev
}

// verifyStream checks what a client received on one stream against the
// numbers acknowledged: each received at most once; the acknowledged ones
// in increasing order; each acknowledged one received, or a gap reported
// in its place (after the last one received before it). A number whose
// publish failed may arrive or not, anywhere. It returns the problems, and
// how many acknowledged numbers were missing and gaps reported.
func verifyStream(events, acked []int) (problems []string, missing, gaps int) {
	isAcked := make(map[int]bool, len(acked))
	for _, a := range acked {
		isAcked[a] = true
	}
	seen := map[int]bool{}
	j, prev, gapSince := 0, 0, false
	lost := func(a, next int) {
		missing++
		if !gapSince {
			problems = append(problems, fmt.Sprintf("%d lost silently (after %d, before %d)", a, prev, next))
		}
	}
	for _, n := range events {
		if n < 0 {
			gaps++
			gapSince = true
			continue
		}
		if seen[n] {
			problems = append(problems, fmt.Sprintf("%d received twice", n))
			continue
		}
		seen[n] = true
		if !isAcked[n] {
			continue
		}
		if n < prev {
			problems = append(problems, fmt.Sprintf("%d received after %d", n, prev))
			continue
		}
		for ; j < len(acked) && acked[j] < n; j++ {
			lost(acked[j], n)
		}
		j++
		prev, gapSince = n, false
	}
	for ; j < len(acked); j++ {
		lost(acked[j], -1)
	}
	return problems, missing, gaps
}

// stream names a client's stream (a key of recvs) as the publisher does.
func (c *fclient) stream(key string) string {
	if key == "$user" {
		return "$user:" + c.user
	}
	return key
}

// settle ends a phase: the publisher stops, every stream gets one more
// publication, every client must be connected with its subscriptions and
// receive it; then what each received is verified. It returns the
// acknowledged numbers missing and the gaps reported, over all clients.
func settle(t *testing.T, p *hpublisher, clients []*fclient) (missing, gaps int) {
	t.Helper()
	p.halt()
	p.flush(t)
	acked, fails := p.phase()
	last := func(c *fclient, key string) int {
		a := acked[c.stream(key)]
		return a[len(a)-1]
	}
	deadline := time.Now().Add(time.Minute)
	for _, c := range clients {
		for key, r := range c.recvs {
			want := last(c, key)
			for r.last() != want {
				if time.Now().After(deadline) {
					t.Fatalf("%s: %s: last received %d, want %d; status %v, conn %+v", c.user, key, r.last(), want, c.c.Status(), c.c.Conn())
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	var silent int
	for _, c := range clients {
		if st := c.c.Status(); st != client.StatusConnected {
			t.Errorf("%s: status %v", c.user, st)
		}
		subs := c.c.Subscriptions()
		if len(subs) != 2 {
			t.Errorf("%s: %d subscriptions, want 2", c.user, len(subs))
		}
		for _, s := range subs {
			if s.Status() != client.SubSubscribed {
				t.Errorf("%s: %s: %v (%v)", c.user, s.Channel(), s.Status(), s.Err())
			}
		}
		if d := c.c.Stats().Duplicates; d != 0 {
			t.Errorf("%s: the server sent %d duplicates", c.user, d)
		}
		for key, r := range c.recvs {
			problems, m, g := verifyStream(r.take(), acked[c.stream(key)])
			missing, gaps = missing+m, gaps+g
			silent += len(problems)
			for i, pr := range problems {
				if i == 5 {
					t.Errorf("%s: %s: %d more problems", c.user, key, len(problems)-5)
					break
				}
				t.Errorf("%s: %s: %s", c.user, key, pr)
			}
		}
	}
	var total int
	for _, a := range acked {
		total += len(a)
	}
	t.Logf("%d publications acknowledged, %d attempts failed; over %d clients: %d missing (reported as gaps), %d gaps reported, %d problems",
		total, fails, len(clients), missing, gaps, silent)
	return missing, gaps
}

// waitBack waits until every client in victims reconnected once more
// than before says, and logs the delays since since.
func waitBack(t *testing.T, what string, since time.Time, victims []*fclient, before map[*fclient]int) {
	t.Helper()
	if len(victims) == 0 {
		t.Logf("%s: no client to move", what)
		return
	}
	deadline := time.Now().Add(time.Minute)
	var delays []time.Duration
	for _, c := range victims {
		for {
			r := c.reconnected()
			if len(r) > before[c] {
				delays = append(delays, r[before[c]].Sub(since))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %s not back after a minute (status %v)", what, c.user, c.c.Status())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	slices.Sort(delays)
	ms := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	t.Logf("%s -> all %d clients back and resubscribed: p50 %v, p99 %v, max %v",
		what, len(delays), ms(delays[len(delays)/2]), ms(delays[len(delays)*99/100]), ms(delays[len(delays)-1]))
}

// on returns the clients connected to instance i now, and how many
// reconnections each had.
func on(fc *fcluster, clients []*fclient, i int) ([]*fclient, map[*fclient]int) {
	var out []*fclient
	before := map[*fclient]int{}
	for _, c := range clients {
		if c.c.Conn().URL == fc.wsURL(i) {
			out = append(out, c)
			before[c] = len(c.reconnected())
		}
	}
	return out, before
}

// flowing waits until publications are acknowledged again after the
// backend (Redis or NATS) was killed, and logs how long that took.
func flowing(t *testing.T, fc *fcluster, p *hpublisher, killed time.Time) {
	t.Helper()
	back := time.Now()
	start := p.ackedCount()
	poll(t, time.Minute, "publications to be accepted again", func() bool { return p.ackedCount() > start })
	t.Logf("%v killed, started again %v later; publications accepted again %v after it was up",
		fc.backend, back.Sub(killed).Round(time.Millisecond), time.Since(back).Round(time.Millisecond))
}

// publishFor lets the publisher run until n more feed publications were
// acknowledged.
func publishFor(t *testing.T, p *hpublisher, n int) {
	t.Helper()
	start := p.ackedCount()
	poll(t, time.Minute, fmt.Sprintf("%d more publications", n), func() bool { return p.ackedCount() >= start+n })
}

// setBack connects server i to the back network or disconnects it.
func (fc *fcluster) setBack(t *testing.T, i int, connected bool) {
	t.Helper()
	fc.setNetwork(t, fc.servers[i], fc.back, connected)
}

// setNetwork connects c to nw or disconnects it.
func (fc *fcluster) setNetwork(t *testing.T, c testcontainers.Container, nw *testcontainers.DockerNetwork, connected bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id := c.GetContainerID()
	var err error
	if connected {
		_, err = fc.docker.NetworkConnect(ctx, nw.ID, dockerclient.NetworkConnectOptions{Container: id, EndpointConfig: &network.EndpointSettings{}})
	} else {
		_, err = fc.docker.NetworkDisconnect(ctx, nw.ID, dockerclient.NetworkDisconnectOptions{Container: id, Force: true})
	}
	if err != nil {
		t.Fatalf("container %.12s, network connected=%v: %v", id, connected, err)
	}
}

// backIP is server i's address on the back network.
func (fc *fcluster) backIP(t *testing.T, i int) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	info, err := fc.docker.ContainerInspect(ctx, fc.servers[i].GetContainerID(), dockerclient.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ep := info.Container.NetworkSettings.Networks[fc.back.Name]; ep != nil {
		return ep.IPAddress.String()
	}
	return "none"
}

func failoverClients(t *testing.T, def int) int {
	if s := os.Getenv(failoverClientsEnv); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 3 {
			t.Fatalf("%s=%q: want a number of clients, at least 3", failoverClientsEnv, s)
		}
		return n
	}
	return def
}

// TestFailover runs the suite on Redis and a MongoDB-wire server.
func TestFailover(t *testing.T) { failover(t, onRedis) }

// TestFailoverNATS runs it on NATS.
func TestFailoverNATS(t *testing.T) { failover(t, onNATS) }

func failover(t *testing.T, backend fbackend) {
	began := time.Now()
	fc := newFailoverCluster(t, backend)
	n := failoverClients(t, map[fbackend]int{onRedis: defaultFailoverClients, onNATS: defaultNATSFailoverClients}[backend])
	clients := dialFailoverClients(t, fc, n)
	var users []string
	for _, c := range clients {
		users = append(users, c.user)
	}
	p := newPublisher(t, fc, users)
	t.Logf("setup: 3 sss-server containers on %v, %d clients: %v", backend, n, time.Since(began).Round(time.Millisecond))

	// Each phase starts with the publisher running and ends with settle.
	phase := func(name string, fault func(t *testing.T)) {
		t.Run(name, func(t *testing.T) {
			began := time.Now()
			// A phase starts afresh even if the previous one failed.
			p.phase()
			for _, c := range clients {
				for _, r := range c.recvs {
					r.take()
				}
			}
			p.start()
			defer p.halt()
			publishFor(t, p, 25)
			fault(t)
			publishFor(t, p, 25)
			missing, gaps := settle(t, p, clients)
			if !strings.HasSuffix(name, "ReplacedEmpty") && missing > 0 {
				t.Errorf("%d publications missing (reported as %d gaps) although history kept them", missing, gaps)
			}
			t.Logf("%s took %v", name, time.Since(began).Round(time.Millisecond))
		})
	}

	phase("InstanceKill", func(t *testing.T) {
		victims, before := on(fc, clients, 0)
		killed := time.Now()
		if err := containers.Kill(context.Background(), fc.servers[0]); err != nil {
			t.Fatal(err)
		}
		waitBack(t, "docker kill", killed, victims, before)
		publishFor(t, p, 25)
		fc.restartServer(t, 0)
	})

	phase("RollingRestart", func(t *testing.T) {
		for _, i := range []int{1, 2, 0} {
			victims, before := on(fc, clients, i)
			stopped := time.Now()
			stopContainerAfter(t, fc.servers[i], 15*time.Second)
			waitBack(t, fmt.Sprintf("SIGTERM to instance %d", i), stopped, victims, before)
			fc.restartServer(t, i)
			publishFor(t, p, 10)
		}
	})

	phase(backend.String()+"LinkCut", func(t *testing.T) {
		// The instance with the most clients.
		cut, most := 0, -1
		for i := range fc.servers {
			if v, _ := on(fc, clients, i); len(v) > most {
				cut, most = i, len(v)
			}
		}
		restoredSince := fc.linkWatch(t, p, cut)
		ip := fc.backIP(t, cut)
		fc.setBack(t, cut, false)
		// The spare container takes the address the instance had on the
		// back network meanwhile, so that the instance comes back with
		// another one: its TCP connections to the backend do not resume
		// when the network does, they are dead without a reset, as behind
		// a NAT or firewall that forgot them; only the instance's own
		// checks can tell.
		fc.setNetwork(t, fc.spare, fc.back, true)
		time.Sleep(5 * time.Second)
		fc.setBack(t, cut, true)
		fc.setNetwork(t, fc.spare, fc.back, false)
		restored := time.Now()
		if now := fc.backIP(t, cut); now == ip {
			// Docker gave the address back: the connections resume.
			t.Logf("instance %d (%d clients) cut from %v for 5s, back on the network with the same address %s", cut, most, backend, ip)
			return
		}
		poll(t, time.Minute, "the instance to notice its dead connection and replace it", restoredSince)
		t.Logf("instance %d (%d clients) cut from %v for 5s, back on the network as %s (was %s): its link restored %v later",
			cut, most, backend, fc.backIP(t, cut), ip, time.Since(restored).Round(time.Millisecond))
	})

	// The backend killed and started again with what it stored (Redis's
	// append-only file, every write synced; JetStream's files, written
	// before each publication is acknowledged, which a killed process
	// does not lose), then killed and replaced by a new container with the
	// same name on the network and nothing in it, as an orchestrator
	// reschedules one without a volume (the scalers create what they need
	// again).
	var server *containers.Server
	var start func(*testing.T)
	switch backend {
	case onRedis:
		server, start = &fc.redis.Server, fc.startRedis
	case onNATS:
		server, start = &fc.nats.Server, fc.startNATS
	}
	phase(backend.String()+"Restart", func(t *testing.T) {
		killed := time.Now()
		server.Kill(t)
		time.Sleep(time.Second)
		server.Start(t)
		flowing(t, fc, p, killed)
	})
	phase(backend.String()+"ReplacedEmpty", func(t *testing.T) {
		killed := time.Now()
		server.Kill(t)
		if err := testcontainers.TerminateContainer(server.Container); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		start(t)
		flowing(t, fc, p, killed)
	})
	t.Logf("the failover suite took %v", time.Since(began).Round(time.Millisecond))
}

// linkWatch returns what tells that instance cut has a working link to
// the backend again, once it was cut. On Redis: its log says "Redis
// pub/sub link restored" once more than now (the mongoredis scaler logs
// it when it replaced its pub/sub connection). The NATS scaler logs
// nothing: a publication to a channel no client reads, through the
// instance's HTTP API, is acknowledged again (a JetStream publish needs
// the connection both ways). On failure it logs what the instance said.
func (fc *fcluster) linkWatch(t *testing.T, p *hpublisher, cut int) func() bool {
	switch fc.backend {
	case onRedis:
		ups := fc.countLog(cut, "Redis pub/sub link restored")
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("instance %d's log, about Redis:\n%s", cut, fc.grepLog(cut, "mongoredis"))
			}
		})
		return func() bool { return fc.countLog(cut, "Redis pub/sub link restored") > ups }
	default:
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("instance %d's log, about NATS:\n%s", cut, fc.grepLog(cut, "nats"))
			}
		})
		return func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, fc.apiURL(cut)+"publish",
				strings.NewReader(`{"channel":"probe","event":"n","data":0}`))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", "apikey "+failoverKey)
			resp, err := p.hc.Do(req)
			if err != nil {
				return false
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		}
	}
}

// stopContainerAfter stops c with SIGTERM, and SIGKILL after timeout.
func stopContainerAfter(t *testing.T, c testcontainers.Container, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout+30*time.Second)
	defer cancel()
	if err := c.Stop(ctx, &timeout); err != nil {
		t.Fatalf("stop container: %v", err)
	}
}

// The checker itself: what it must accept and what it must catch.
func TestVerifyStream(t *testing.T) {
	for _, tc := range []struct {
		name          string
		events, acked []int
		problems      int
		missing, gaps int
	}{
		{"all in order", []int{1, 2, 3}, []int{1, 2, 3}, 0, 0, 0},
		{"failed publish arrived", []int{1, 2, 3}, []int{1, 3}, 0, 0, 0},
		{"failed publish arrived late", []int{1, 3, 2}, []int{1, 3}, 0, 0, 0},
		{"failed publish missing", []int{1, 3}, []int{1, 3}, 0, 0, 0},
		{"loss reported", []int{1, -1, 4}, []int{1, 2, 3, 4}, 0, 2, 1},
		{"loss at the end reported", []int{1, -1}, []int{1, 2}, 0, 1, 1},
		{"silent loss", []int{1, 3}, []int{1, 2, 3}, 1, 1, 0},
		{"silent loss at the end", []int{1}, []int{1, 2}, 1, 1, 0},
		{"gap before the wrong publication", []int{1, 2, -1, 4}, []int{1, 2, 3, 4}, 0, 1, 1},
		{"gap too early", []int{1, -1, 2, 4}, []int{1, 2, 3, 4}, 1, 1, 1},
		{"duplicate", []int{1, 2, 2, 3}, []int{1, 2, 3}, 1, 0, 0},
		{"duplicate of a failed one", []int{1, 2, 2, 3}, []int{1, 3}, 1, 0, 0},
		{"out of order", []int{1, 3, 2}, []int{1, 2, 3}, 2, 1, 0},
	} {
		problems, missing, gaps := verifyStream(tc.events, tc.acked)
		if len(problems) != tc.problems || missing != tc.missing || gaps != tc.gaps {
			t.Errorf("%s: %d problems %q, %d missing, %d gaps; want %d, %d, %d",
				tc.name, len(problems), problems, missing, gaps, tc.problems, tc.missing, tc.gaps)
		}
	}
}
