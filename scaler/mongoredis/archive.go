package mongoredis

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/superscaled/sss/scaler"
)

// The history archive (WithArchive): a write-behind copy of every stream's
// history in the collection <cp>history, one document per stream entry.
// Redis stays the sequencer; the archive only serves, within the current
// epoch, positions older than what Redis retains, and Since checks that
// what it returns from it is contiguous.

type archiveDoc struct {
	ID      string    `bson:"_id"`
	Stream  string    `bson:"stream"`
	Epoch   string    `bson:"epoch"`
	Offset  int64     `bson:"offset"`
	At      time.Time `bson:"at"`
	Channel string    `bson:"channel"`
	Event   string    `bson:"event"`
	P       []byte    `bson:"p"` // the publication body (wire.go)
}

// archivePrefix starts the _id of every archived entry of a stream in an
// epoch. The stream's length makes it unambiguous; epochs are hex.
func archivePrefix(stream, epoch string) string {
	return strconv.Itoa(len(stream)) + ":" + stream + "|" + epoch + "|"
}

// archiveID is the _id of an archived entry: the offset is zero-padded to
// 20 digits (any uint64), so byte order of _ids within one stream and epoch
// is offset order and a range of offsets is a range of _ids.
func archiveID(stream, epoch string, offset uint64) string {
	return fmt.Sprintf("%s%020d", archivePrefix(stream, epoch), offset)
}

// archiveError is a failure to read the archive (MongoDB, not Redis).
type archiveError struct{ err error }

func (e *archiveError) Error() string { return "archive: " + e.err.Error() }
func (e *archiveError) Unwrap() error { return e.err }

// ArchiveFailures returns how many stream entries could not be written to
// the archive since New, failed or skipped during the pause after a failure
// (always 0 without WithArchive).
func (s *Scaler) ArchiveFailures() uint64 { return s.archiveFailures.Load() }

// archivePause is how long archive writes are skipped after one failed.
const archivePause = time.Second

// archive writes the entries a publish just placed, best effort: the
// publication was delivered, so a failure is logged and counted, not
// returned. It runs even if ctx is cancelled once Redis accepted the
// publication (bounded by the call timeout), so that a caller giving up
// does not punch a hole in the archive.
func (s *Scaler) archive(ctx context.Context, node string, pub *scaler.Publication, body []byte, pls []placed) {
	if s.store == nil || !s.cfg.archive() || len(pls) == 0 {
		return
	}
	now := time.Now()
	if now.UnixNano() < s.archivePausedUntil.Load() {
		// A write failed a moment ago: do not make every Publish wait for
		// an unreachable MongoDB. Skipped entries are holes, like failures.
		s.archiveFailures.Add(uint64(len(pls)))
		return
	}
	actx, cancel := s.callCtx(context.WithoutCancel(ctx))
	defer cancel()
	err := s.store.insertArchive(actx, pub, body, pls)
	if err != nil {
		s.archivePausedUntil.Store(time.Now().Add(archivePause).UnixNano())
		s.archiveFailures.Add(uint64(len(pls)))
		lvl := s.cfg.logger.Debug
		if !s.archiveFailing.Swap(true) {
			lvl = s.cfg.logger.Warn
		}
		lvl("mongoredis: archive write failed; Since reports these positions lost once Redis trims them",
			"node", node, "channel", pub.Channel, "stream", pls[0].stream, "offset", pls[0].offset, "err", err)
		return
	}
	if s.archiveFailing.Swap(false) {
		s.cfg.logger.Info("mongoredis: archive writes succeed again", "node", node)
	}
	s.store.trimArchive(actx, pls)
}

func (st *store) insertArchive(ctx context.Context, pub *scaler.Publication, body []byte, pls []placed) error {
	docs := make([]any, len(pls))
	for i, pl := range pls {
		docs[i] = archiveDoc{
			ID: archiveID(pl.stream, pl.epoch, pl.offset), Stream: pl.stream, Epoch: pl.epoch,
			Offset: int64(pl.offset), At: time.UnixMilli(pl.at), Channel: pub.Channel, Event: pub.Event, P: body,
		}
	}
	var err error
	if len(docs) == 1 {
		_, err = st.hist.InsertOne(ctx, docs[0])
	} else {
		_, err = st.hist.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
	}
	if err != nil && onlyDuplicates(err) {
		return nil // already there (a retried write): same entry
	}
	return err
}

// onlyDuplicates reports whether every failure in err is a duplicate key.
func onlyDuplicates(err error) bool {
	var bwe mongo.BulkWriteException
	if errors.As(err, &bwe) {
		if bwe.WriteConcernError != nil || len(bwe.WriteErrors) == 0 {
			return false
		}
		for _, we := range bwe.WriteErrors {
			if we.Code != 11000 {
				return false
			}
		}
		return true
	}
	var we mongo.WriteException
	if errors.As(err, &we) {
		if we.WriteConcernError != nil || len(we.WriteErrors) == 0 {
			return false
		}
		for _, e := range we.WriteErrors {
			if e.Code != 11000 {
				return false
			}
		}
		return true
	}
	return false
}

// trimEvery is how often (in offsets) a publisher trims a stream's archive
// to its count bound: a stream holds at most maxPerStream+trimEvery-1
// entries of its current epoch between trims.
func (c *config) trimEvery() uint64 {
	return uint64(min(max(c.archivePerStream/4, 1), 256))
}

// trimArchive deletes, every trimEvery offsets, a stream's entries beyond
// the count bound: one range delete on _id, which MongoDB serves from the
// primary key. Failures only delay the trim.
func (st *store) trimArchive(ctx context.Context, pls []placed) {
	bound := uint64(st.s.cfg.archivePerStream)
	if bound == 0 {
		return
	}
	every := st.s.cfg.trimEvery()
	for _, pl := range pls {
		if pl.offset <= bound || pl.offset%every != 0 {
			continue
		}
		_, err := st.hist.DeleteMany(ctx, bson.D{{Key: "_id", Value: bson.D{
			{Key: "$gt", Value: archivePrefix(pl.stream, pl.epoch)},
			{Key: "$lte", Value: archiveID(pl.stream, pl.epoch, pl.offset-bound)},
		}}})
		if err != nil {
			st.s.cfg.logger.Debug("mongoredis: archive trim failed", "stream", pl.stream, "err", err)
			return
		}
	}
}

// archived returns the archived entries of stream in epoch with offsets
// after+1 .. upto, at most limit of them, in order, and fails with
// scaler.ErrPositionLost unless they are contiguous from after+1 and, when
// fewer than limit, reach upto. With limit 0 it only checks that after+1 is
// there.
func (st *store) archived(ctx context.Context, stream, epoch string, after, upto uint64, limit int) ([]scaler.Entry, error) {
	want := upto - after
	if limit == 0 {
		want = 1
	} else if uint64(limit) < want {
		want = uint64(limit)
	}
	cur, err := st.hist.Find(ctx, bson.D{{Key: "_id", Value: bson.D{
		{Key: "$gt", Value: archiveID(stream, epoch, after)},
		{Key: "$lte", Value: archiveID(stream, epoch, upto)},
	}}}, options.Find().
		SetSort(bson.D{{Key: "_id", Value: 1}}).
		SetLimit(int64(want)).
		SetProjection(bson.D{{Key: "offset", Value: 1}, {Key: "p", Value: 1}}))
	if err != nil {
		return nil, &archiveError{err}
	}
	var docs []archiveDoc
	if err := cur.All(ctx, &docs); err != nil {
		return nil, &archiveError{err}
	}
	out := make([]scaler.Entry, 0, len(docs))
	for i, d := range docs {
		next := after + 1 + uint64(i)
		if d.Offset != int64(next) {
			break
		}
		_, pub, err := parseBody(d.P)
		if err != nil {
			return nil, fmt.Errorf("mongoredis: archived entry %d of %q: %w", next, stream, err)
		}
		out = append(out, scaler.Entry{Offset: next, Pub: pub})
	}
	if uint64(len(out)) < want {
		return nil, fmt.Errorf("mongoredis: stream %q: publication %d was trimmed from Redis and is not in the archive: %w",
			stream, after+1+uint64(len(out)), scaler.ErrPositionLost)
	}
	if limit == 0 {
		return nil, nil
	}
	return out, nil
}

// sweepArchive deletes archived entries older than the archive age.
func (st *store) sweepArchive(ctx context.Context) (int, error) {
	if !st.s.cfg.archive() {
		return 0, nil
	}
	res, err := st.hist.DeleteMany(ctx, bson.D{{Key: "at", Value: bson.D{{Key: "$lt", Value: time.Now().Add(-st.s.cfg.archiveAge)}}}})
	if err != nil {
		return 0, err
	}
	return int(res.DeletedCount), nil
}
