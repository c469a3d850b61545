package nats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/superscaled/sss/scaler"
)

// Sessions live in the sessions bucket, one key per session and channel,
// "<session>.<channel>" (each escaped as one token), the value a JSON
// storedSub. The bucket's TTL (WithSessionTTL) expires each key that long
// after it was last written; TouchSession writes the session's keys again.

type storedSub struct {
	Channel string          `json:"c"`
	Query   json.RawMessage `json:"q,omitempty"`
	Offset  uint64          `json:"o,omitempty"`
	Epoch   string          `json:"e,omitempty"`
}

func sessionKey(session, channel string) string {
	return escapeToken(session) + "." + escapeToken(channel)
}

func encodeSub(sub scaler.StoredSubscription) ([]byte, error) {
	v := storedSub{Channel: sub.Channel, Offset: sub.Position.Offset, Epoch: sub.Position.Epoch}
	if len(sub.Query) > 0 {
		if !json.Valid(sub.Query) {
			return nil, fmt.Errorf("nats scaler: query of %q is not JSON", sub.Channel)
		}
		v.Query = sub.Query
	}
	return json.Marshal(v)
}

func decodeSub(b []byte) (scaler.StoredSubscription, error) {
	var v storedSub
	if err := json.Unmarshal(b, &v); err != nil {
		return scaler.StoredSubscription{}, err
	}
	sub := scaler.StoredSubscription{Channel: v.Channel, Position: scaler.Position{Offset: v.Offset, Epoch: v.Epoch}}
	if len(v.Query) > 0 {
		sub.Query = []byte(v.Query)
	}
	return sub, nil
}

func (n *node) AddSubscription(ctx context.Context, session string, sub scaler.StoredSubscription) error {
	if err := n.check(ctx); err != nil {
		return err
	}
	key := sessionKey(session, sub.Channel)
	if err := checkSubject(key); err != nil {
		return err
	}
	v, err := encodeSub(sub)
	if err != nil {
		return err
	}
	cctx, cancel := n.s.call(ctx)
	defer cancel()
	if _, err := n.s.sessions.Put(cctx, key, v); err != nil {
		return n.s.failed(ctx, "add subscription", err)
	}
	return nil
}

func (n *node) RemoveSubscription(ctx context.Context, session, channel string) error {
	if err := n.check(ctx); err != nil {
		return err
	}
	key := sessionKey(session, channel)
	if err := checkSubject(key); err != nil {
		return err
	}
	cctx, cancel := n.s.call(ctx)
	defer cancel()
	if err := n.s.sessions.Delete(cctx, key); err != nil {
		return n.s.failed(ctx, "remove subscription", err)
	}
	return nil
}

// entries returns the current values of the keys of kv matching filter.
//
// A watcher's consumer may be served by a replica that lags behind the
// stream's leader, and would then announce the end of the current values
// too early. So entries first asks the leader for the last message
// matching filter, and reads the watcher until it has seen that message
// (or, should it have been purged meanwhile, until the leader's last one
// is no later than what was seen).
func (s *Scaler) entries(ctx context.Context, kv jetstream.KeyValue, filter string) ([]jetstream.KeyValueEntry, error) {
	st := s.kvStreams[kv.Bucket()]
	lastSeq := func() (uint64, error) {
		m, err := st.GetLastMsgForSubject(ctx, s.kvSubject(kv, filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		return m.Sequence, nil
	}
	want, err := lastSeq()
	if err != nil || want == 0 {
		return nil, err
	}
	w, err := kv.Watch(ctx, filter)
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	cur := make(map[string]jetstream.KeyValueEntry)
	var seen uint64
	initial := false
	recheck := time.NewTicker(50 * time.Millisecond)
	defer recheck.Stop()
	for !initial || seen < want {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-recheck.C:
			if initial {
				if want, err = lastSeq(); err != nil {
					return nil, err
				}
			}
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("watcher stopped")
			}
			if e == nil { // the consumer's view of the current values ends
				initial = true
				continue
			}
			seen = max(seen, e.Revision())
			if e.Operation() == jetstream.KeyValuePut {
				cur[e.Key()] = e
			} else {
				delete(cur, e.Key())
			}
		}
	}
	out := make([]jetstream.KeyValueEntry, 0, len(cur))
	for _, e := range cur {
		out = append(out, e)
	}
	return out, nil
}

func (n *node) sessionEntries(ctx context.Context, session string) ([]jetstream.KeyValueEntry, error) {
	filter := escapeToken(session) + ".*"
	if err := checkSubject(filter); err != nil {
		return nil, err
	}
	return n.s.entries(ctx, n.s.sessions, filter)
}

func (n *node) Subscriptions(ctx context.Context, session string) ([]scaler.StoredSubscription, error) {
	if err := n.check(ctx); err != nil {
		return nil, err
	}
	cctx, cancel := n.s.call(ctx)
	defer cancel()
	es, err := n.sessionEntries(cctx, session)
	if err != nil {
		return nil, n.s.failed(ctx, "subscriptions", err)
	}
	out := make([]scaler.StoredSubscription, 0, len(es))
	for _, e := range es {
		sub, err := decodeSub(e.Value())
		if err != nil {
			continue // not written by this package
		}
		out = append(out, sub)
	}
	slices.SortFunc(out, func(a, b scaler.StoredSubscription) int { return strings.Compare(a.Channel, b.Channel) })
	return out, nil
}

// TouchSession writes the session's keys again, each only if unchanged
// since read (a concurrent write already renewed it).
func (n *node) TouchSession(ctx context.Context, session string) error {
	if err := n.check(ctx); err != nil {
		return err
	}
	cctx, cancel := n.s.call(ctx)
	defer cancel()
	es, err := n.sessionEntries(cctx, session)
	if err != nil {
		return n.s.failed(ctx, "touch session", err)
	}
	for _, e := range es {
		if _, err := n.s.sessions.Update(cctx, e.Key(), e.Value(), e.Revision()); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			return n.s.failed(ctx, "touch session", err)
		}
	}
	return nil
}

// UpdatePosition rewrites the entry only if it is there, with a
// compare-and-set on its revision so that a concurrent removal wins.
func (n *node) UpdatePosition(ctx context.Context, session, channel string, pos scaler.Position) error {
	if err := n.check(ctx); err != nil {
		return err
	}
	key := sessionKey(session, channel)
	if err := checkSubject(key); err != nil {
		return err
	}
	cctx, cancel := n.s.call(ctx)
	defer cancel()
	for {
		e, err := n.s.sessions.Get(cctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			return nil
		}
		if err != nil {
			return n.s.failed(ctx, "update position", err)
		}
		sub, err := decodeSub(e.Value())
		if err != nil {
			return nil
		}
		sub.Position = pos
		v, err := encodeSub(sub)
		if err != nil {
			return err
		}
		_, err = n.s.sessions.Update(cctx, key, v, e.Revision())
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return n.s.failed(ctx, "update position", err)
		}
	}
}

var (
	_ scaler.SessionStore    = (*node)(nil)
	_ scaler.PositionUpdater = (*node)(nil)
)
