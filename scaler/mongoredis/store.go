package mongoredis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/superscaled/sss/scaler"
)

// store keeps sessions in two collections (see the package documentation).
// It uses only single-document operations, so it works without
// transactions and on MongoDB-compatible servers such as FerretDB. The hot
// paths (AddSubscription, RemoveSubscription) address documents by _id
// alone, which every server looks up by index; where two writes must go
// together, their order is chosen so that a failure between them leaves
// nothing a reader would take for live data.
type store struct {
	s        *Scaler
	sessions *mongo.Collection
	subs     *mongo.Collection
	hist     *mongo.Collection // the archive (WithArchive)

	imu     sync.Mutex
	indexed bool
}

func newStore(s *Scaler, db *mongo.Database) *store {
	return &store{
		s:        s,
		sessions: db.Collection(s.cfg.collPrefix + "sessions"),
		subs:     db.Collection(s.cfg.collPrefix + "subscriptions"),
		hist:     db.Collection(s.cfg.collPrefix + "history"),
	}
}

type sessionDoc struct {
	ID   string    `bson:"_id"`
	Seen time.Time `bson:"seen"`
	N    int64     `bson:"n"`
}

type subDoc struct {
	Channel string `bson:"channel"`
	Query   []byte `bson:"query"`
	Offset  int64  `bson:"offset"`
	Epoch   string `bson:"epoch"`
}

// subID is the _id of a session's entry for a channel: the session's
// length first makes it unambiguous whatever bytes either holds.
func subID(session, channel string) string {
	return strconv.Itoa(len(session)) + ":" + session + channel
}

// ensureIndexes creates the indexes once.
func (st *store) ensureIndexes(ctx context.Context) error {
	st.imu.Lock()
	defer st.imu.Unlock()
	if st.indexed {
		return nil
	}
	_, err := st.subs.Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys:    bson.D{{Key: "session", Value: 1}, {Key: "channel", Value: 1}},
		Options: options.Index().SetUnique(true).SetName("session_channel"),
	})
	if err == nil {
		_, err = st.sessions.Indexes().CreateOne(ctx, mongo.IndexModel{
			Keys:    bson.D{{Key: "seen", Value: 1}},
			Options: options.Index().SetName("seen"),
		})
	}
	if err == nil && st.s.cfg.archive() {
		_, err = st.hist.Indexes().CreateOne(ctx, mongo.IndexModel{
			Keys:    bson.D{{Key: "at", Value: 1}},
			Options: options.Index().SetName("at"),
		})
	}
	if err != nil && !mongoUnavailable(err) {
		// The server refused (e.g. an index of that name but another
		// shape exists): work without ours rather than fail every call.
		// Only the listing's and the sweep's speed depend on them.
		st.s.cfg.logger.Warn("mongoredis: cannot create MongoDB indexes; going on without them", "err", err)
		err = nil
	}
	if err != nil {
		return err
	}
	st.indexed = true
	return nil
}

// cutoff is the oldest "seen" time of a live session; zero without TTL.
func (st *store) cutoff(now time.Time) time.Time {
	if st.s.cfg.sessionTTL <= 0 {
		return time.Time{}
	}
	return now.Add(-st.s.cfg.sessionTTL)
}

// storeNode is a node with a session store: what Join returns when the
// Scaler has a database.
type storeNode struct{ *node }

// call runs one store operation with the checks every method makes.
func (sn storeNode) call(ctx context.Context, op string, f func(ctx context.Context, st *store) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if sn.isClosed() {
		return scaler.ErrClosed
	}
	st := sn.s.store
	cctx, cancel := sn.s.callCtx(ctx)
	defer cancel()
	err := st.ensureIndexes(cctx)
	if err == nil {
		err = f(cctx, st)
	}
	if err != nil {
		var limit *limitError
		if errors.As(err, &limit) {
			return err
		}
		return sn.s.mongoErr(ctx, op, err)
	}
	return nil
}

// Ping implements scaler.Pinger for a node with a store: Redis, then
// MongoDB.
func (sn storeNode) Ping(ctx context.Context) error {
	if err := sn.node.Ping(ctx); err != nil {
		return err
	}
	return sn.call(ctx, "ping mongo", func(ctx context.Context, st *store) error {
		return st.sessions.Database().Client().Ping(ctx, nil)
	})
}

// limitError is AddSubscription beyond the per-session bound.
type limitError struct {
	session string
	max     int
}

func (e *limitError) Error() string {
	return fmt.Sprintf("mongoredis: session %q has %d subscriptions, the maximum", e.session, e.max)
}

// retryDup retries f when a concurrent upsert of the same document won the
// race to insert it (a duplicate key error): the retry then updates it.
func retryDup(f func() error) error {
	var err error
	for range 5 {
		if err = f(); !mongo.IsDuplicateKeyError(err) {
			return err
		}
	}
	return err
}

func byID(id string) bson.D { return bson.D{{Key: "_id", Value: id}} }

// UpdatePosition implements scaler.PositionUpdater: one update by _id,
// which creates nothing.
func (sn storeNode) UpdatePosition(ctx context.Context, session, channel string, pos scaler.Position) error {
	return sn.call(ctx, "update position", func(ctx context.Context, st *store) error {
		_, err := st.subs.UpdateOne(ctx, byID(subID(session, channel)),
			bson.D{{Key: "$set", Value: bson.D{
				{Key: "offset", Value: int64(pos.Offset)}, {Key: "epoch", Value: pos.Epoch},
				{Key: "updated", Value: time.Now()},
			}}})
		return err
	})
}

func (sn storeNode) AddSubscription(ctx context.Context, session string, sub scaler.StoredSubscription) error {
	return sn.call(ctx, "add subscription", func(ctx context.Context, st *store) error {
		now := time.Now()
		id := subID(session, sub.Channel)
		var query any // nil stores null
		if sub.Query != nil {
			query = slices.Clone(sub.Query)
		}
		// The entry first: if touching the session then fails, the entry
		// is invisible (no session) or belongs to a live one.
		var res *mongo.UpdateResult
		err := retryDup(func() error {
			var err error
			res, err = st.subs.UpdateOne(ctx, byID(id),
				bson.D{{Key: "$set", Value: bson.D{
					{Key: "session", Value: session}, {Key: "channel", Value: sub.Channel},
					{Key: "query", Value: query}, {Key: "updated", Value: now},
					{Key: "offset", Value: int64(sub.Position.Offset)}, {Key: "epoch", Value: sub.Position.Epoch},
				}}},
				options.UpdateOne().SetUpsert(true))
			return err
		})
		if err != nil {
			return err
		}
		added := res.UpsertedCount > 0
		inc := 0
		if added {
			inc = 1
		}
		// Touch (or create) the session, counting the new entry, and learn
		// what the session was before.
		var prev sessionDoc
		err = retryDup(func() error {
			return st.sessions.FindOneAndUpdate(ctx, byID(session),
				bson.D{
					{Key: "$set", Value: bson.D{{Key: "seen", Value: now}}},
					{Key: "$inc", Value: bson.D{{Key: "n", Value: inc}}},
				},
				options.FindOneAndUpdate().SetUpsert(true).SetReturnDocument(options.Before)).Decode(&prev)
		})
		fresh := errors.Is(err, mongo.ErrNoDocuments)
		if err != nil && !fresh {
			return err
		}
		cutoff := st.cutoff(now)
		if fresh || (!cutoff.IsZero() && prev.Seen.Before(cutoff)) {
			// The session had expired, or was swept: what is left of it is
			// stale. Its entries were all written before its last "seen",
			// hence before cutoff; entries added now, here or by concurrent
			// calls, are newer and stay.
			if !cutoff.IsZero() {
				if _, err := st.subs.DeleteMany(ctx, bson.D{{Key: "session", Value: session}, {Key: "updated", Value: bson.D{{Key: "$lt", Value: cutoff}}}}); err != nil {
					return err
				}
			}
			if fresh && added {
				return nil // n counts this entry, the only one
			}
			return st.recount(ctx, session, id, added)
		}
		if added && prev.N+1 > int64(st.s.cfg.maxSubs) {
			return st.recount(ctx, session, id, added)
		}
		return nil
	})
}

// recount sets the session's entry count n to the exact number of its
// entries. n is otherwise only increased (RemoveSubscription leaves it, to
// stay a single write), so it is an upper bound; counting when it reaches
// the maximum keeps the bound exact at an amortised cost. If the session
// is over the bound and id was just added, id is taken back.
func (st *store) recount(ctx context.Context, session, id string, added bool) error {
	n, err := st.subs.CountDocuments(ctx, bson.D{{Key: "session", Value: session}})
	if err != nil {
		return err
	}
	over := added && n > int64(st.s.cfg.maxSubs)
	if over {
		// Concurrent adds at the bound may all back off; none exceeds it.
		if _, err := st.subs.DeleteOne(ctx, byID(id)); err != nil {
			return err
		}
		n--
	}
	if _, err := st.sessions.UpdateOne(ctx, byID(session), bson.D{{Key: "$set", Value: bson.D{{Key: "n", Value: n}}}}); err != nil {
		return err
	}
	if over {
		return &limitError{session: session, max: st.s.cfg.maxSubs}
	}
	return nil
}

func (sn storeNode) RemoveSubscription(ctx context.Context, session, channel string) error {
	return sn.call(ctx, "remove subscription", func(ctx context.Context, st *store) error {
		_, err := st.subs.DeleteOne(ctx, byID(subID(session, channel)))
		return err
	})
}

func (sn storeNode) Subscriptions(ctx context.Context, session string) ([]scaler.StoredSubscription, error) {
	var out []scaler.StoredSubscription
	err := sn.call(ctx, "list subscriptions", func(ctx context.Context, st *store) error {
		var sd sessionDoc
		err := st.sessions.FindOne(ctx, byID(session)).Decode(&sd)
		if errors.Is(err, mongo.ErrNoDocuments) {
			return nil
		}
		if err != nil {
			return err
		}
		if c := st.cutoff(time.Now()); !c.IsZero() && sd.Seen.Before(c) {
			return nil // expired, not swept yet
		}
		cur, err := st.subs.Find(ctx, bson.D{{Key: "session", Value: session}},
			options.Find().SetProjection(bson.D{{Key: "channel", Value: 1}, {Key: "query", Value: 1}, {Key: "offset", Value: 1}, {Key: "epoch", Value: 1}}))
		if err != nil {
			return err
		}
		var docs []subDoc
		if err := cur.All(ctx, &docs); err != nil {
			return err
		}
		out = make([]scaler.StoredSubscription, 0, len(docs))
		for _, d := range docs {
			out = append(out, scaler.StoredSubscription{Channel: d.Channel, Query: d.Query,
				Position: scaler.Position{Offset: uint64(max(d.Offset, 0)), Epoch: d.Epoch}})
		}
		// Byte order, whatever collation the server sorts with.
		slices.SortFunc(out, func(a, b scaler.StoredSubscription) int { return strings.Compare(a.Channel, b.Channel) })
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (sn storeNode) TouchSession(ctx context.Context, session string) error {
	return sn.call(ctx, "touch session", func(ctx context.Context, st *store) error {
		now := time.Now()
		filter := byID(session)
		if c := st.cutoff(now); !c.IsZero() {
			// An expired session is not revived: it is gone, as if swept.
			filter = append(filter, bson.E{Key: "seen", Value: bson.D{{Key: "$gte", Value: c}}})
		}
		_, err := st.sessions.UpdateOne(ctx, filter, bson.D{{Key: "$set", Value: bson.D{{Key: "seen", Value: now}}}})
		return err
	})
}

// sweepBatch bounds the sessions one sweep query handles.
const sweepBatch = 500

// sweep deletes sessions that expired, and their entries. It returns how
// many sessions it deleted.
func (st *store) sweep(ctx context.Context) (int, error) {
	cutoff := st.cutoff(time.Now())
	if cutoff.IsZero() {
		return 0, nil
	}
	total := 0
	for range 20 { // bounded work per tick; the next tick continues
		cur, err := st.sessions.Find(ctx, bson.D{{Key: "seen", Value: bson.D{{Key: "$lt", Value: cutoff}}}},
			options.Find().SetProjection(bson.D{{Key: "_id", Value: 1}}).SetLimit(sweepBatch))
		if err != nil {
			return total, err
		}
		var docs []sessionDoc
		if err := cur.All(ctx, &docs); err != nil {
			return total, err
		}
		if len(docs) == 0 {
			return total, nil
		}
		ids := make([]string, len(docs))
		for i, d := range docs {
			ids[i] = d.ID
		}
		// Entries first: if the second delete fails, an empty session is
		// left for the next sweep, never entries without their session.
		// Only entries older than the cutoff: a session revived meanwhile
		// keeps what it added since.
		if _, err := st.subs.DeleteMany(ctx, bson.D{
			{Key: "session", Value: bson.D{{Key: "$in", Value: ids}}},
			{Key: "updated", Value: bson.D{{Key: "$lt", Value: cutoff}}},
		}); err != nil {
			return total, err
		}
		res, err := st.sessions.DeleteMany(ctx, bson.D{
			{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}},
			{Key: "seen", Value: bson.D{{Key: "$lt", Value: cutoff}}},
		})
		if err != nil {
			return total, err
		}
		total += int(res.DeletedCount)
		if len(docs) < sweepBatch {
			return total, nil
		}
	}
	return total, nil
}

// sweeper runs store.sweep and store.sweepArchive periodically while the
// Scaler has nodes.
type sweeper struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func startSweeper(st *store) *sweeper {
	ctx, cancel := context.WithCancel(context.Background())
	sw := &sweeper{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(sw.done)
		interval := st.s.cfg.sweepInterval
		// Jitter, so that many servers started together do not sweep in step.
		t := time.NewTimer(interval/2 + rand.N(interval/2+1))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			cctx, ccancel := context.WithTimeout(ctx, max(st.s.cfg.callTimeout, interval))
			err := st.ensureIndexes(cctx)
			n, a := 0, 0
			if err == nil {
				n, err = st.sweep(cctx)
			}
			if err == nil {
				a, err = st.sweepArchive(cctx)
			}
			ccancel()
			switch {
			case err != nil && ctx.Err() == nil:
				st.s.cfg.logger.Warn("mongoredis: sweep failed", "err", err)
			case n > 0 || a > 0:
				st.s.cfg.logger.Debug("mongoredis: expired documents deleted", "sessions", n, "archived", a)
			}
			t.Reset(interval)
		}
	}()
	return sw
}

// stop stops the sweeper and waits for it; nil is a no-op.
func (sw *sweeper) stop() {
	if sw == nil {
		return
	}
	sw.cancel()
	<-sw.done
}

var (
	_ scaler.SessionStore    = storeNode{}
	_ scaler.PositionUpdater = storeNode{}
)
