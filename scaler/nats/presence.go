package nats

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/superscaled/sss/scaler"
)

// Presence. Each node has an incarnation, a random id it draws when it
// joins and again whenever it must rewrite its entries. The nodes bucket
// holds one key per live incarnation, "<node>.<incarnation>", which the node
// rewrites every presence TTL / 3 (a compare-and-set on its revision: the
// heartbeat). The presence bucket holds one key per entry,
// "<channel>.<node>.<incarnation>.<conn>" (each part escaped as one token),
// the value the JSON ClientInfo.
//
// Every node also reaps: each heartbeat it lists the nodes bucket and
// notes, for every other incarnation, the revision it saw and since when
// (its own clock: no clock is compared between machines). An incarnation
// whose revision has not moved for a presence TTL is dead; the first node
// to claim it (compare-and-set of its key to a claim) lists its entries,
// purges them, reports them per channel through PresenceHandler.HandleGone
// and purges its key. A reaper that dies mid-way leaves the claim, which
// stops moving too and is claimed again a TTL later.
//
// A node whose heartbeat finds its key claimed or gone, or whose writes
// failed while NATS was unreachable, takes a new incarnation: it writes its
// entries (kept in memory) under the new one, then purges what the old one
// left.
//
// Entries are removed by purging their subject in the bucket's stream, so
// a departed connection leaves no delete marker: the buckets hold only
// what is present.

type presenceState struct {
	// wmu is held shared by Join and Leave and exclusively while the
	// incarnation changes, so no write lands under a retired one.
	wmu sync.RWMutex

	mu      sync.Mutex
	entries map[string]map[string]scaler.ClientInfo
	inc     string
	rev     uint64
	dirty   bool

	// seen is the reaper's view (heartbeat goroutine only).
	seen map[string]seenKey
}

type seenKey struct {
	rev   uint64
	since time.Time
}

func (p *presenceState) markDirty() {
	p.mu.Lock()
	p.dirty = true
	p.mu.Unlock()
}

type nodeValue struct {
	Node    string `json:"node"`
	Reaper  string `json:"reaper,omitempty"`
	Claimed int64  `json:"claimed,omitempty"`
}

func (n *node) incKey(inc string) string { return escapeToken(n.id) + "." + inc }

func (n *node) entryKey(channel, inc, conn string) string {
	return escapeToken(channel) + "." + n.incKey(inc) + "." + escapeToken(conn)
}

// kvSubject is the subject of key (or of the keys a filter matches) in
// the stream under kv.
func (s *Scaler) kvSubject(kv jetstream.KeyValue, key string) string {
	return "$KV." + kv.Bucket() + "." + key
}

func (n *node) startPresence(ctx context.Context) error {
	n.pres.entries = make(map[string]map[string]scaler.ClientInfo)
	n.pres.seen = make(map[string]seenKey)
	inc := newEpoch()
	v, _ := json.Marshal(nodeValue{Node: n.id})
	rev, err := n.s.nodesKV.Create(ctx, n.incKey(inc), v)
	if err != nil {
		return err
	}
	n.pres.mu.Lock()
	n.pres.inc, n.pres.rev = inc, rev
	n.pres.mu.Unlock()
	return nil
}

func (n *node) Join(ctx context.Context, channel string, c scaler.ClientInfo) error {
	if err := n.check(ctx); err != nil {
		return err
	}
	if c.Conn == "" {
		return errors.New("nats scaler: presence entry without a connection id")
	}
	c.Info = append([]byte(nil), c.Info...)
	if len(c.Info) == 0 {
		c.Info = nil
	}
	v, err := json.Marshal(c)
	if err != nil {
		return err
	}
	n.pres.wmu.RLock()
	defer n.pres.wmu.RUnlock()
	// Again under wmu: Close removes the entries holding it, and an entry
	// written after that would belong to no live incarnation.
	if err := n.check(ctx); err != nil {
		return err
	}
	n.pres.mu.Lock()
	m := n.pres.entries[channel]
	if m == nil {
		m = make(map[string]scaler.ClientInfo)
		n.pres.entries[channel] = m
	}
	m[c.Conn] = c
	key := n.entryKey(channel, n.pres.inc, c.Conn)
	n.pres.mu.Unlock()
	if err := checkSubject(key); err != nil {
		return err
	}
	cctx, cancel := n.s.call(ctx)
	defer cancel()
	if _, err := n.s.presence.Put(cctx, key, v); err != nil {
		n.pres.markDirty()
		return n.s.failed(ctx, "presence join", err)
	}
	return nil
}

func (n *node) Leave(ctx context.Context, channel, conn string) error {
	if err := n.check(ctx); err != nil {
		return err
	}
	n.pres.wmu.RLock()
	defer n.pres.wmu.RUnlock()
	if err := n.check(ctx); err != nil {
		return err
	}
	n.pres.mu.Lock()
	if m := n.pres.entries[channel]; m != nil {
		delete(m, conn)
		if len(m) == 0 {
			delete(n.pres.entries, channel)
		}
	}
	key := n.entryKey(channel, n.pres.inc, conn)
	n.pres.mu.Unlock()
	if err := checkSubject(key); err != nil {
		return err
	}
	cctx, cancel := n.s.call(ctx)
	defer cancel()
	if err := n.s.presenceStream.Purge(cctx, jetstream.WithPurgeSubject(n.s.kvSubject(n.s.presence, key))); err != nil {
		n.pres.markDirty()
		return n.s.failed(ctx, "presence leave", err)
	}
	return nil
}

// present lists the entries of channel on every node.
func (n *node) present(ctx context.Context, channel string) ([]scaler.ClientInfo, error) {
	if err := n.check(ctx); err != nil {
		return nil, err
	}
	filter := escapeToken(channel) + ".>"
	if err := checkSubject(filter); err != nil {
		return nil, err
	}
	cctx, cancel := n.s.call(ctx)
	defer cancel()
	es, err := n.s.entries(cctx, n.s.presence, filter)
	if err != nil {
		return nil, n.s.failed(ctx, "presence", err)
	}
	out := make([]scaler.ClientInfo, 0, len(es))
	for _, e := range es {
		var c scaler.ClientInfo
		if json.Unmarshal(e.Value(), &c) == nil {
			out = append(out, c)
		}
	}
	return out, nil
}

func (n *node) Present(ctx context.Context, channel string) ([]scaler.ClientInfo, error) {
	return n.present(ctx, channel)
}

// Counts reads the channel's entries: O(n) in them (see the package doc).
func (n *node) Counts(ctx context.Context, channel string) (scaler.PresenceCounts, error) {
	list, err := n.present(ctx, channel)
	if err != nil {
		return scaler.PresenceCounts{}, err
	}
	users := make(map[string]struct{})
	for _, c := range list {
		if c.User != "" {
			users[c.User] = struct{}{}
		}
	}
	return scaler.PresenceCounts{Clients: len(list), Users: len(users)}, nil
}

// heartbeat keeps the node's incarnation alive and reaps dead ones, until
// the node stops.
func (n *node) heartbeat() {
	defer n.wg.Done()
	t := time.NewTicker(n.s.o.presenceTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-n.stopCx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(n.stopCx, n.s.o.presenceTTL/3)
		n.beat(ctx)
		n.reap(ctx)
		cancel()
	}
}

func (n *node) beat(ctx context.Context) {
	n.pres.mu.Lock()
	inc, rev, dirty := n.pres.inc, n.pres.rev, n.pres.dirty
	n.pres.mu.Unlock()
	v, _ := json.Marshal(nodeValue{Node: n.id})
	newRev, err := n.s.nodesKV.Update(ctx, n.incKey(inc), v, rev)
	if err == nil {
		n.pres.mu.Lock()
		n.pres.rev = newRev
		n.pres.mu.Unlock()
		if !dirty {
			return
		}
	} else if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyNotFound) {
		n.pres.markDirty() // unreachable or gone: rewrite once it answers
		n.s.repair(err)
		return
	}
	n.reincarnate(ctx)
}

// reincarnate writes the node's entries under a new incarnation and
// removes those of the old one.
func (n *node) reincarnate(ctx context.Context) {
	n.pres.wmu.Lock()
	defer n.pres.wmu.Unlock()
	n.pres.mu.Lock()
	old := n.pres.inc
	all := make(map[string][]scaler.ClientInfo, len(n.pres.entries))
	for ch, m := range n.pres.entries {
		for _, c := range m {
			all[ch] = append(all[ch], c)
		}
	}
	n.pres.mu.Unlock()
	inc := newEpoch()
	v, _ := json.Marshal(nodeValue{Node: n.id})
	rev, err := n.s.nodesKV.Create(ctx, n.incKey(inc), v)
	if err != nil {
		return
	}
	for ch, list := range all {
		for _, c := range list {
			cv, _ := json.Marshal(c)
			if _, err := n.s.presence.Put(ctx, n.entryKey(ch, inc, c.Conn), cv); err != nil {
				n.purgeIncarnation(ctx, inc)
				return
			}
		}
	}
	n.pres.mu.Lock()
	n.pres.inc, n.pres.rev, n.pres.dirty = inc, rev, false
	n.pres.mu.Unlock()
	n.purgeIncarnation(ctx, old)
}

// purgeIncarnation removes an incarnation's entries and key: two purges
// whatever the number of entries.
func (n *node) purgeIncarnation(ctx context.Context, inc string) {
	s := n.s
	_ = s.presenceStream.Purge(ctx, jetstream.WithPurgeSubject(s.kvSubject(s.presence, "*."+n.incKey(inc)+".*")))
	_ = s.nodesStream.Purge(ctx, jetstream.WithPurgeSubject(s.kvSubject(s.nodesKV, n.incKey(inc))))
}

func (n *node) removePresence(ctx context.Context) {
	n.pres.wmu.Lock()
	defer n.pres.wmu.Unlock()
	n.pres.mu.Lock()
	inc := n.pres.inc
	n.pres.mu.Unlock()
	if inc != "" {
		n.purgeIncarnation(ctx, inc)
	}
}

// reap looks for dead incarnations and reaps those it claims.
func (n *node) reap(ctx context.Context) {
	es, err := n.s.entries(ctx, n.s.nodesKV, ">")
	if err != nil {
		return
	}
	n.pres.mu.Lock()
	own := n.incKey(n.pres.inc)
	n.pres.mu.Unlock()
	now := time.Now()
	keep := make(map[string]bool, len(es))
	for _, e := range es {
		key := e.Key()
		keep[key] = true
		if key == own {
			continue
		}
		s, ok := n.pres.seen[key]
		if !ok || s.rev != e.Revision() {
			n.pres.seen[key] = seenKey{rev: e.Revision(), since: now}
			continue
		}
		if now.Sub(s.since) < n.s.o.presenceTTL {
			continue
		}
		var nv nodeValue
		_ = json.Unmarshal(e.Value(), &nv)
		nv.Reaper, nv.Claimed = n.id, now.UnixMilli()
		v, _ := json.Marshal(nv)
		rev, err := n.s.nodesKV.Update(ctx, key, v, e.Revision())
		if err != nil {
			continue // another node claimed it, or it came back
		}
		n.pres.seen[key] = seenKey{rev: rev, since: now}
		n.reapIncarnation(ctx, key)
	}
	for key := range n.pres.seen {
		if !keep[key] {
			delete(n.pres.seen, key)
		}
	}
}

// reapIncarnation removes a dead incarnation's entries and reports them.
func (n *node) reapIncarnation(ctx context.Context, incKey string) {
	s := n.s
	es, err := s.entries(ctx, s.presence, "*."+incKey+".*")
	if err != nil {
		return // claimed: reaped again a TTL later
	}
	gone := make(map[string][]scaler.ClientInfo)
	for _, e := range es {
		chTok, _, _ := strings.Cut(e.Key(), ".")
		ch, err := unescapeToken(chTok)
		if err != nil {
			continue
		}
		var c scaler.ClientInfo
		if json.Unmarshal(e.Value(), &c) == nil {
			gone[ch] = append(gone[ch], c)
		}
	}
	if err := s.presenceStream.Purge(ctx, jetstream.WithPurgeSubject(s.kvSubject(s.presence, "*."+incKey+".*"))); err != nil {
		return
	}
	_ = s.nodesStream.Purge(ctx, jetstream.WithPurgeSubject(s.kvSubject(s.nodesKV, incKey)))
	ph, ok := n.h.(scaler.PresenceHandler)
	if !ok {
		return
	}
	for ch, list := range gone {
		ph.HandleGone(ctx, ch, list)
	}
}

var _ scaler.Presence = (*node)(nil)
