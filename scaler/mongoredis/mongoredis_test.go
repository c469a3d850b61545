package mongoredis

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.uber.org/goleak"

	"github.com/superscaled/sss/scaler"
)

// Tests against real Redis and MongoDB servers are in ../../integration, so
// that `go test ./...` needs no Docker. These cover what needs no server.

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestBodyRoundTrip(t *testing.T) {
	pubs := []*scaler.Publication{
		{Channel: "news.uk", Event: "article", Time: 1700000000123, Except: "n.c",
			Data:   []byte("{\"t\":\"h\u00e9llo\\nline\",\"n\":[1,null]}"),
			Sender: scaler.Sender{User: "alice", Conn: "node1.c1"}},
		{Channel: "$u.bob.smith", Event: "notify", Data: []byte(`"x"`), Transient: true},
		{Channel: "c"}, // no event, data, sender
		{Channel: "", Data: []byte("\n\x00\x01")}, // odd bytes survive
		{Channel: strings.Repeat("x", 300), Event: strings.Repeat("e", 200)},
	}
	for _, p := range pubs {
		body := appendBody(nil, "node-7", p)
		node, got, err := parseBody(body)
		if err != nil {
			t.Fatalf("parseBody(%+v): %v", p, err)
		}
		if node != "node-7" || got.Transient != p.Transient || got.Time != p.Time || got.Except != p.Except || got.Channel != p.Channel || got.Event != p.Event ||
			!bytes.Equal(got.Data, p.Data) || got.Sender != p.Sender {
			t.Errorf("round trip of %+v gave node %q, %+v", p, node, got)
		}
		if len(p.Data) == 0 && got.Data != nil {
			t.Errorf("empty data decoded as %q, want nil", got.Data)
		}
	}
}

func TestBodyMalformed(t *testing.T) {
	good := appendBody(nil, "n", &scaler.Publication{Channel: "abc", Event: "e", Data: []byte("d")})
	for _, b := range [][]byte{nil, {}, {2}, good[:3], good[:len(good)-3], {1, 0xff, 0xff, 0xff}} {
		if _, _, err := parseBody(b); !errors.Is(err, errMalformed) {
			t.Errorf("parseBody(%q) = %v, want errMalformed", b, err)
		}
	}
}

// The publish script builds the frame in Lua; appendFrame must produce the
// same bytes, and parseFrame must read both.
func TestFrame(t *testing.T) {
	body := appendBody(nil, "n1", &scaler.Publication{Channel: "a.b", Data: []byte("\n\n")})
	lua := "\x01" + "12345678901" + "\n" + "0123456789abcdef" + "\n" + string(body)
	if got := string(appendFrame(nil, 12345678901, "0123456789abcdef", body)); got != lua {
		t.Fatalf("appendFrame = %q, want %q", got, lua)
	}
	off, epoch, b, err := parseFrame(lua)
	if err != nil || off != 12345678901 || epoch != "0123456789abcdef" || !bytes.Equal(b, body) {
		t.Fatalf("parseFrame = %d, %q, %q, %v", off, epoch, b, err)
	}
	off, epoch, b, err = parseFrame(string(appendFrame(nil, 0, "", body))) // a tell
	if err != nil || off != 0 || epoch != "" || !bytes.Equal(b, body) {
		t.Fatalf("tell frame: %d, %q, %q, %v", off, epoch, b, err)
	}
	for _, bad := range []string{"", "x1\nE\nbody", "\x01", "\x0112", "\x01x\nE\nb", "\x0112\nE", "\x01-1\nE\nb"} {
		if _, _, _, err := parseFrame(bad); !errors.Is(err, errMalformed) {
			t.Errorf("parseFrame(%q) = %v, want errMalformed", bad, err)
		}
	}
}

func TestMessage(t *testing.T) {
	for _, tc := range []struct{ from, msg string }{{"n1", "hello"}, {"", ""}, {"node.with:odd{chars}", "\x00\n"}} {
		from, msg, err := parseMessage(string(appendMessage(nil, tc.from, []byte(tc.msg))))
		if err != nil || from != tc.from || string(msg) != tc.msg {
			t.Errorf("message (%q, %q) decoded as (%q, %q), %v", tc.from, tc.msg, from, msg, err)
		}
	}
	for _, bad := range []string{"", "\x02x", "\x01\x05ab"} {
		if _, _, err := parseMessage(bad); !errors.Is(err, errMalformed) {
			t.Errorf("parseMessage(%q) = %v, want errMalformed", bad, err)
		}
	}
}

// A stream's keys and channel share one hash tag; distinct streams get
// distinct names, whatever braces or percent signs they hold.
func TestNames(t *testing.T) {
	s, err := New(redis.NewClient(&redis.Options{}), nil, WithPrefix("p:"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.rdb.Close()
	streams := []string{"", "news", "a.b", "}", "{", "%", "%7D", "%25", "a}b", "a%7Db", "{x}", "%00"}
	seen := map[string]string{}
	for _, st := range streams {
		tag := hashTag(st)
		if tag == "" || strings.Contains(tag, "}") {
			t.Errorf("hashTag(%q) = %q: empty or holding '}'", st, tag)
		}
		for _, name := range []string{s.metaKey(st), s.histKey(st), s.streamChannel(st)} {
			if got := redisTag(name); got != tag {
				t.Errorf("%q hashes on %q, want %q", name, got, tag)
			}
		}
		if prev, dup := seen[tag]; dup {
			t.Errorf("streams %q and %q share the tag %q", prev, st, tag)
		}
		seen[tag] = st
	}
	if s.nodeChannel("n1") != "p:node:n1" || s.streamChannel("news") != "p:{news}" || s.metaKey("news") != "p:{news}:m" {
		t.Errorf("unexpected names %q %q %q", s.nodeChannel("n1"), s.streamChannel("news"), s.metaKey("news"))
	}
}

// redisTag is what Redis Cluster hashes: the content of the first {...},
// if non-empty.
func redisTag(key string) string {
	i := strings.IndexByte(key, '{')
	if i < 0 {
		return key
	}
	j := strings.IndexByte(key[i+1:], '}')
	if j <= 0 {
		return key
	}
	return key[i+1 : i+1+j]
}

func TestSubID(t *testing.T) {
	ids := map[string][2]string{}
	for _, p := range [][2]string{{"ab", "c"}, {"a", "bc"}, {"", "abc"}, {"abc", ""}, {"1:a", "b"}, {"1", ":ab"}} {
		id := subID(p[0], p[1])
		if prev, dup := ids[id]; dup {
			t.Errorf("subID(%q, %q) = subID(%q, %q) = %q", p[0], p[1], prev[0], prev[1], id)
		}
		ids[id] = p
	}
}

func TestArchiveID(t *testing.T) {
	// Within one stream and epoch, _id order is offset order.
	prev := ""
	for _, off := range []uint64{0, 1, 9, 10, 99, 100, 12345, 1 << 40, ^uint64(0)} {
		id := archiveID("a.b", "ep", off)
		if id <= prev {
			t.Errorf("archiveID(%d) = %q sorts before %q", off, id, prev)
		}
		prev = id
	}
	// Streams never share a range: the length prefix separates "a|x" and "a".
	if p, q := archivePrefix("a|x", "e"), archivePrefix("a", "x|e"); p == q {
		t.Errorf("prefixes collide: %q", p)
	}
	c := config{archivePerStream: 5}
	if c.trimEvery() != 1 {
		t.Errorf("trimEvery(5) = %d", c.trimEvery())
	}
	c.archivePerStream = 1 << 20
	if c.trimEvery() != 256 {
		t.Errorf("trimEvery(1M) = %d", c.trimEvery())
	}
}

func TestOptions(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{})
	defer rdb.Close()
	bad := map[string][]Option{
		"prefix with a brace":    {WithPrefix("a{b")},
		"collection prefix $":    {WithCollectionPrefix("a$")},
		"negative history":       {WithHistory(-1, 0)},
		"negative history age":   {WithHistory(1, -time.Second)},
		"sub-ms history age":     {WithHistory(1, time.Microsecond)},
		"zero stream TTL":        {WithStreamTTL(0)},
		"stream TTL < age":       {WithHistory(10, time.Hour), WithStreamTTL(time.Minute)},
		"negative session TTL":   {WithSessionTTL(-time.Second)},
		"zero sweep interval":    {WithSweepInterval(0)},
		"zero max subscriptions": {WithMaxSessionSubscriptions(0)},
		"zero call timeout":      {WithCallTimeout(0)},
		"nil logger":             {WithLogger(nil)},
		"archive without db":     {WithArchive(time.Hour, 10)},
		"zero archive age":       {WithArchive(0, 10)},
		"negative archive count": {WithArchive(time.Hour, -1)},
	}
	for name, opts := range bad {
		if _, err := New(rdb, nil, opts...); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
	s, err := New(rdb, nil, WithHistory(0, 0), WithStreamTTL(time.Millisecond), WithSessionTTL(0))
	if err != nil {
		t.Fatalf("valid options refused: %v", err)
	}
	if s.cfg.historyTTL() != time.Millisecond {
		t.Errorf("history TTL without age = %v, want the stream TTL", s.cfg.historyTTL())
	}
	mc, err := mongo.Connect(options.Client().ApplyURI("mongodb://127.0.0.1:1")) // no I/O yet
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Disconnect(context.Background())
	if _, err := New(rdb, mc.Database("x"), WithArchive(time.Hour, 0)); err != nil {
		t.Errorf("archive with a database refused: %v", err)
	}
	if _, err := New(nil, nil); err == nil {
		t.Error("New accepted a nil Redis client")
	}
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:1"}})
	defer ring.Close()
	if _, err := New(ring, nil); err == nil {
		t.Error("New accepted a redis.Ring")
	}
}

// fakeReply is a Redis error reply, as go-redis returns them.
type fakeReply string

func (e fakeReply) Error() string { return string(e) }
func (fakeReply) RedisError()     {}

func TestErrorClassification(t *testing.T) {
	s, err := New(redis.NewClient(&redis.Options{}), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.rdb.Close()
	ctx := context.Background()
	for _, e := range []error{io.EOF, &net.OpError{Op: "dial", Err: errors.New("refused")}, context.DeadlineExceeded,
		redis.ErrClosed, fakeReply("LOADING Redis is loading"), fakeReply("CLUSTERDOWN no"), fakeReply("READONLY replica")} {
		if err := s.redisErr(ctx, "op", e); !errors.Is(err, scaler.ErrUnavailable) || !errors.Is(err, e) {
			t.Errorf("redisErr(%v) = %v, want it wrapped with ErrUnavailable", e, err)
		}
	}
	for _, e := range []error{fakeReply("ERR syntax"), fakeReply("WRONGTYPE"), fakeReply("NOSCRIPT")} {
		if err := s.redisErr(ctx, "op", e); errors.Is(err, scaler.ErrUnavailable) || !errors.Is(err, e) {
			t.Errorf("redisErr(%v) = %v, want it wrapped without ErrUnavailable", e, err)
		}
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.redisErr(cancelled, "op", io.EOF); !errors.Is(err, context.Canceled) {
		t.Errorf("redisErr with the caller's context done = %v, want context.Canceled", err)
	}
	if err := s.mongoErr(ctx, "op", errors.New("server selection error")); !errors.Is(err, scaler.ErrUnavailable) {
		t.Errorf("mongoErr(selection) = %v, want ErrUnavailable", err)
	}
}

// With Redis unreachable, Join fails at once with ErrUnavailable and leaves
// no goroutine behind (goleak checks at the end).
func TestJoinUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
	defer rdb.Close()
	s, err := New(rdb, nil, WithCallTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	_, err = s.Join(context.Background(), "n1", handlerFunc(func(scaler.Delivery) {}))
	if !errors.Is(err, scaler.ErrUnavailable) {
		t.Fatalf("Join = %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Join took %v", d)
	}
	// The id is free again, and a closed Scaler refuses joins.
	s.Close()
	if _, err := s.Join(context.Background(), "n1", handlerFunc(func(scaler.Delivery) {})); !errors.Is(err, scaler.ErrClosed) {
		t.Errorf("Join after Close = %v, want ErrClosed", err)
	}
}

type handlerFunc func(scaler.Delivery)

func (f handlerFunc) HandleDelivery(d scaler.Delivery) { f(d) }
func (handlerFunc) HandleMessage(string, []byte)       {}
func (handlerFunc) HandleMissed(string)                {}

// With Redis Cluster a node's channel is a shard channel hashed on the node
// id, and never equal to a stream's channel.
func TestClusterNames(t *testing.T) {
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}})
	defer cc.Close()
	s, err := New(cc, nil, WithPrefix("p:"))
	if err != nil {
		t.Fatal(err)
	}
	if !s.cluster || s.inexactSend || s.publishCmd() != "SPUBLISH" {
		t.Errorf("cluster %v, inexactSend %v, publish command %q", s.cluster, s.inexactSend, s.publishCmd())
	}
	streams := []string{"", "n1", "node:n1", "node:{n1}", "{n1}", "%", "}"}
	for _, id := range []string{"n1", "", "a}b", "%"} {
		ch := s.nodeChannel(id)
		if !strings.HasPrefix(ch, "p:node:{") || redisTag(ch) != hashTag(id) {
			t.Errorf("nodeChannel(%q) = %q: tag %q, want %q", id, ch, redisTag(ch), hashTag(id))
		}
		for _, st := range append(streams, id, "node:"+id) {
			if s.streamChannel(st) == ch {
				t.Errorf("stream %q and node %q share the channel %q", st, id, ch)
			}
		}
	}
	ro := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}, ReadOnly: true})
	defer ro.Close()
	if s, _ := New(ro, nil); !s.inexactSend {
		t.Error("a ReadOnly ClusterClient: Send would report subscribed nodes as unknown")
	}
}
