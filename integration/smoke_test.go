package integration

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// TestRedisContainer checks that the Redis image serves what sss needs
// (commands and pub/sub) and that the stop/start helpers work.
func TestRedisContainer(t *testing.T) {
	c, addr := runRedis(t)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	rdb := newRedisClient(t, addr)

	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING: %v", err)
	}
	if err := rdb.Set(ctx, "greeting", "hello", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if got, err := rdb.Get(ctx, "greeting").Result(); err != nil || got != "hello" {
		t.Fatalf("GET = %q, %v; want %q", got, err, "hello")
	}

	sub := rdb.Subscribe(ctx, "sss-smoke")
	defer sub.Close()
	// Receive the subscription confirmation first: a message published before
	// the server registered the subscription would be lost.
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatalf("SUBSCRIBE: %v", err)
	}
	if n, err := rdb.Publish(ctx, "sss-smoke", "ping").Result(); err != nil || n != 1 {
		t.Fatalf("PUBLISH = %d receivers, %v; want 1", n, err)
	}
	msg, err := sub.ReceiveMessage(ctx)
	if err != nil {
		t.Fatalf("receive message: %v", err)
	}
	if msg.Channel != "sss-smoke" || msg.Payload != "ping" {
		t.Fatalf("got message %q on %q; want %q on %q", msg.Payload, msg.Channel, "ping", "sss-smoke")
	}

	stopContainer(t, c)
	if err := rdb.Ping(ctx).Err(); err == nil {
		t.Fatal("PING succeeded while the container was stopped")
	}

	newAddr := startContainer(t, c, redisPort)
	t.Logf("redis address before restart %s, after %s", addr, newAddr)

	rdb2 := newRedisClient(t, newAddr)
	if err := rdb2.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after restart: %v", err)
	}
	// The server runs without persistence, so a restart starts empty.
	if err := rdb2.Get(ctx, "greeting").Err(); err != redis.Nil {
		t.Fatalf("GET after restart: err = %v; want redis.Nil", err)
	}
}

func newRedisClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{
		Addr: addr,
		// Fail fast while the server is stopped instead of retrying.
		MaxRetries:  -1,
		DialTimeout: 2 * time.Second,
	})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// TestMongoContainer checks the MongoDB operations a scaler relies on against
// whichever MongoDB-wire server SSS_MONGO_IMAGE selects.
func TestMongoContainer(t *testing.T) {
	uri := startMongo(t)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	client, err := mongo.Connect(options.Client().ApplyURI(uri).SetTimeout(30 * time.Second))
	if err != nil {
		t.Fatalf("connect %s: %v", uri, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = client.Disconnect(ctx)
	})
	if err := client.Ping(ctx, nil); err != nil {
		t.Fatalf("ping: %v", err)
	}

	db := client.Database("sss_smoke")

	t.Run("InsertFind", func(t *testing.T) {
		coll := db.Collection("insert_find")
		if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "a"}, {Key: "n", Value: 1}}); err != nil {
			t.Fatalf("insert: %v", err)
		}
		if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "b"}, {Key: "n", Value: 2}}); err != nil {
			t.Fatalf("insert: %v", err)
		}

		var one struct {
			ID string `bson:"_id"`
			N  int    `bson:"n"`
		}
		if err := coll.FindOne(ctx, bson.D{{Key: "n", Value: 2}}).Decode(&one); err != nil {
			t.Fatalf("findOne: %v", err)
		}
		if one.ID != "b" {
			t.Fatalf("findOne = %+v; want _id b", one)
		}

		cur, err := coll.Find(ctx, bson.D{{Key: "n", Value: bson.D{{Key: "$gte", Value: 1}}}},
			options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}))
		if err != nil {
			t.Fatalf("find: %v", err)
		}
		var all []bson.M
		if err := cur.All(ctx, &all); err != nil {
			t.Fatalf("find all: %v", err)
		}
		if len(all) != 2 || all[0]["_id"] != "a" || all[1]["_id"] != "b" {
			t.Fatalf("find = %v; want _id a, b", all)
		}
	})

	t.Run("UpsertAddToSetPull", func(t *testing.T) {
		coll := db.Collection("members")
		filter := bson.D{{Key: "_id", Value: "room-1"}}
		upsert := options.UpdateOne().SetUpsert(true)

		for _, member := range []string{"node-a", "node-b", "node-a"} {
			update := bson.D{{Key: "$addToSet", Value: bson.D{{Key: "nodes", Value: member}}}}
			if _, err := coll.UpdateOne(ctx, filter, update, upsert); err != nil {
				t.Fatalf("upsert $addToSet %s: %v", member, err)
			}
		}
		assertNodes(ctx, t, coll, filter, "node-a", "node-b")

		pull := bson.D{{Key: "$pull", Value: bson.D{{Key: "nodes", Value: "node-a"}}}}
		res, err := coll.UpdateOne(ctx, filter, pull)
		if err != nil {
			t.Fatalf("$pull: %v", err)
		}
		if res.ModifiedCount != 1 {
			t.Fatalf("$pull modified %d documents; want 1", res.ModifiedCount)
		}
		assertNodes(ctx, t, coll, filter, "node-b")
	})

	t.Run("UniqueIndex", func(t *testing.T) {
		coll := db.Collection("unique")
		_, err := coll.Indexes().CreateOne(ctx, mongo.IndexModel{
			Keys:    bson.D{{Key: "key", Value: 1}},
			Options: options.Index().SetUnique(true),
		})
		if err != nil {
			t.Fatalf("create unique index: %v", err)
		}
		if _, err := coll.InsertOne(ctx, bson.D{{Key: "key", Value: "k1"}}); err != nil {
			t.Fatalf("first insert: %v", err)
		}
		_, err = coll.InsertOne(ctx, bson.D{{Key: "key", Value: "k1"}})
		if !mongo.IsDuplicateKeyError(err) {
			t.Fatalf("second insert with the same key: err = %v; want a duplicate key error", err)
		}
	})

	t.Run("FindOneAndUpdateUpsertInc", func(t *testing.T) {
		coll := db.Collection("counters")
		opts := options.FindOneAndUpdate().
			SetUpsert(true).
			SetReturnDocument(options.After)
		filter := bson.D{{Key: "_id", Value: "seq"}}
		inc := bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: int64(1)}}}}

		for want := int64(1); want <= 3; want++ {
			var doc struct {
				N int64 `bson:"n"`
			}
			if err := coll.FindOneAndUpdate(ctx, filter, inc, opts).Decode(&doc); err != nil {
				t.Fatalf("findOneAndUpdate #%d: %v", want, err)
			}
			if doc.N != want {
				t.Fatalf("findOneAndUpdate #%d returned n = %d; want %d", want, doc.N, want)
			}
		}
	})
}

func assertNodes(ctx context.Context, t *testing.T, coll *mongo.Collection, filter any, want ...string) {
	t.Helper()
	var doc struct {
		Nodes []string `bson:"nodes"`
	}
	if err := coll.FindOne(ctx, filter).Decode(&doc); err != nil {
		t.Fatalf("findOne: %v", err)
	}
	if len(doc.Nodes) != len(want) {
		t.Fatalf("nodes = %v; want %v", doc.Nodes, want)
	}
	for i := range want {
		if doc.Nodes[i] != want[i] {
			t.Fatalf("nodes = %v; want %v", doc.Nodes, want)
		}
	}
}
