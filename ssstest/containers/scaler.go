package containers

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/superscaled/sss/scaler/mongoredis"
	natsscaler "github.com/superscaled/sss/scaler/nats"
)

type (
	scalerOption     = mongoredis.Option
	natsScalerOption = natsscaler.Option
)

// WithScalerOptions configures the scaler MongoRedis returns (history,
// presence TTL, call timeout...). It has its own key prefix and database
// unless these options choose others.
func WithScalerOptions(opts ...mongoredis.Option) Option {
	return func(c *config) { c.scaler = append(c.scaler, opts...) }
}

// Backend is what MongoRedis started.
type Backend struct {
	Redis *Redis
	Mongo *Mongo
	// Prefix and Database are the scaler's Redis key prefix and MongoDB
	// database, random per call: another scaler on the same servers (a
	// second process of your app) shares the cluster with these.
	Prefix, Database string
}

// MongoRedis starts Redis and a MongoDB-wire server and returns a
// mongoredis scaler on them, ready: Redis and MongoDB answered. Several
// sss.Servers may share it (ssstest.WithScaler), each joining as its own
// node, exactly as separate processes would. The scaler, its clients and
// the containers are closed when the test ends. With WithNetwork, Redis is
// "redis" and the MongoDB-wire server "mongo" on that network (the
// option's aliases are not used), for your containers to reach them.
//
// The scaler's clients dial the servers' current addresses, so they follow
// the containers across Backend.Redis.Stop/Kill/Start; calls made while a
// server is down fail with errors wrapping scaler.ErrUnavailable, and the
// scaler recovers by itself. Redis runs without persistence unless
// WithRedisFlags turns it on: restarted, it comes back empty (clients are
// told of the gap).
func MongoRedis(t testing.TB, opts ...Option) (*mongoredis.Scaler, *Backend) {
	t.Helper()
	cfg := configure(opts)
	// One network, two names: each container gets its own alias there.
	named := func(alias string) Option {
		return func(c *config) {
			c.networks = nil
			for _, n := range cfg.networks {
				c.networks = append(c.networks, netAttach{name: n.name, aliases: []string{alias}})
			}
		}
	}
	b := &Backend{}
	b.Redis = StartRedis(t, slices.Concat(opts, []Option{named("redis")})...)
	b.Mongo = StartMongo(t, slices.Concat(opts, []Option{named("mongo")})...)
	var r [5]byte
	rand.Read(r[:])
	name := "t" + hex.EncodeToString(r[:])
	b.Prefix, b.Database = name+":", name

	rdb := redis.NewClient(&redis.Options{
		Addr:   "redis:6379", // not dialled: Dialer follows the container
		Dialer: b.Redis.DialContext,
		// A retried publish script could run twice (two offsets for one
		// publication), and go-redis' five dial attempts would make every
		// call take half a second to fail while Redis is down.
		MaxRetries: -1, DialerRetries: 1,
		DialTimeout: time.Second, ReadTimeout: 3 * time.Second, WriteTimeout: 3 * time.Second,
	})
	t.Cleanup(func() { rdb.Close() })
	mc, err := mongo.Connect(options.Client().
		ApplyURI("mongodb://mongo:27017/"). // not dialled: SetDialer follows the container
		SetDialer(&b.Mongo.Server).
		SetDirect(true).
		SetConnectTimeout(time.Second).
		SetServerSelectionTimeout(2 * time.Second).
		SetHeartbeatInterval(500 * time.Millisecond))
	if err != nil {
		t.Fatalf("containers: mongo client: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		mc.Disconnect(ctx)
	})

	sc, err := mongoredis.New(rdb, mc.Database(b.Database),
		append([]mongoredis.Option{mongoredis.WithPrefix(b.Prefix)}, cfg.scaler...)...)
	if err != nil {
		t.Fatalf("containers: mongoredis.New: %v", err)
	}
	t.Cleanup(func() { sc.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("containers: Redis does not answer: %v", err)
	}
	if err := mc.Ping(ctx, nil); err != nil {
		t.Fatalf("containers: MongoDB does not answer: %v", err)
	}
	return sc, b
}
