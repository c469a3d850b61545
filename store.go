package sss

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/superscaled/sss/scaler"
)

// The session store (scaler.SessionStore, when the scaler has one) keeps
// each named session's subscriptions, so that a client that resumes without
// a list gets them back on any instance.
//
// No request waits for it: a subscribe, an unsubscribe or a resume queues
// its change here and replies at once. One goroutine writes the changes,
// coalesced per session (the latest change of a channel wins; an
// authoritative resume replaces the whole list), a few sessions at a time,
// and keeps what it could not write, retrying with backoff while the store
// is down, so that the stored lists converge on the truth once it is back;
// then it also writes again the subscriptions of every connection here, in
// case the store lost data meanwhile.
// A resume that reads a session's list first writes what is pending for it
// here, and fails (unavailable) rather than answer with a list it knows to
// be stale. Changes queued on another instance that cannot reach the store
// are not known here: they are written when that instance can.

// storeTimeout bounds one session's write, or one read.
const storeTimeout = 2 * time.Second

// storeWorkers is how many sessions are written at once: enough to keep up,
// few enough not to drain the store driver's connection pool.
const storeWorkers = 4

// maxStoreBacklog bounds the changes waiting to be written; beyond it new
// ones are dropped (counted in Stats.StoreDropped and logged).
const maxStoreBacklog = 1 << 17

// Backoff of the writer while the store is down.
const (
	storeRetryMin = 100 * time.Millisecond
	storeRetryMax = 5 * time.Second
)

// storeWriter is the write-behind queue of session store changes.
type storeWriter struct {
	s     *Server
	store scaler.SessionStore

	mu      sync.Mutex
	pending map[string]*sessionChanges // by session key
	queue   []string                   // keys in the order they became pending
	busy    map[string]chan struct{}   // keys being written; closed when done
	backlog int                        // channel changes pending in all
	wake    chan struct{}

	dropped       atomic.Uint64
	failing       atomic.Bool  // the last write failed: log only changes of state
	readDownUntil atomic.Int64 // unix nanos: a read failed, quickList waits till then
}

// A write of a session that is being written waits for it (busy), so that
// a session's changes reach the store in the order they were made.

// sessionChanges is what is pending for one session.
type sessionChanges struct {
	replace bool                // drop every stored subscription not in subs
	subs    map[string]subDelta // channel → its latest change
	touch   bool
}

// subDelta is a channel's latest change: added (with its query) or
// removed, or only a newer position for an entry if the store still has it.
type subDelta struct {
	add     bool
	query   []byte
	pos     scaler.Position
	posOnly bool // add only advances the position of a stored entry
}

func newStoreWriter(s *Server, st scaler.SessionStore) *storeWriter {
	return &storeWriter{
		s: s, store: st,
		pending: make(map[string]*sessionChanges),
		busy:    make(map[string]chan struct{}),
		wake:    make(chan struct{}, 1),
	}
}

// change records a change for a session, to be written later.
func (w *storeWriter) change(key string, f func(*sessionChanges)) {
	w.mu.Lock()
	if w.backlog >= maxStoreBacklog || len(w.pending) >= maxStoreBacklog {
		w.mu.Unlock()
		if n := w.dropped.Add(1); n&(n-1) == 0 { // the 1st, 2nd, 4th, 8th, ...
			w.s.log.Error("sss: session store backlog full; changes dropped", "dropped", n, "limit", maxStoreBacklog)
		}
		return
	}
	sc := w.pending[key]
	if sc == nil {
		sc = &sessionChanges{subs: make(map[string]subDelta)}
		w.pending[key] = sc
		w.queue = append(w.queue, key)
	}
	before := len(sc.subs)
	f(sc)
	w.backlog += len(sc.subs) - before
	w.mu.Unlock()
	signal(w.wake)
}

func (w *storeWriter) add(key, channel string, query []byte, pos scaler.Position) {
	w.change(key, func(sc *sessionChanges) {
		sc.subs[channel] = subDelta{add: true, query: query, pos: pos}
	})
}

// advance records where a session stands on a channel when a connection
// ends: it updates the stored entry's position if the entry is still
// there, and never brings back an entry that a newer connection of the
// session removed meanwhile (an old instance may notice a dropped
// connection long after the client resumed elsewhere). A store that is a
// scaler.PositionUpdater does it in one write; with another, the writer
// reads the session's list first, and keeps a position that is further on.
func (w *storeWriter) advance(key, channel string, query []byte, pos scaler.Position) {
	w.change(key, func(sc *sessionChanges) {
		switch d, ok := sc.subs[channel]; {
		case ok && d.add:
			if further(pos, d.pos) {
				d.pos = pos
				sc.subs[channel] = d
			}
		case !ok && !sc.replace:
			sc.subs[channel] = subDelta{add: true, query: query, pos: pos, posOnly: true}
		}
	})
}

// further reports whether a is a later position than b in the same epoch,
// or b is unknown.
func further(a, b scaler.Position) bool {
	return b.Epoch == "" || (a.Epoch == b.Epoch && a.Offset > b.Offset)
}

func (w *storeWriter) remove(key, channel string) {
	w.change(key, func(sc *sessionChanges) {
		if sc.replace {
			// Not in the list that replaces the stored one: removed anyway.
			delete(sc.subs, channel)
			return
		}
		sc.subs[channel] = subDelta{}
	})
}

// replace makes list the session's whole stored list.
func (w *storeWriter) replace(key string, list []scaler.StoredSubscription) {
	w.change(key, func(sc *sessionChanges) {
		clear(sc.subs)
		for _, sub := range list {
			sc.subs[sub.Channel] = subDelta{add: true, query: sub.Query, pos: sub.Position}
		}
		sc.replace = true
	})
}

func (w *storeWriter) touch(key string) {
	w.change(key, func(sc *sessionChanges) { sc.touch = true })
}

// run writes pending changes until ctx ends.
func (w *storeWriter) run(ctx context.Context) {
	pause := time.Duration(0)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if pause > 0 {
			timer.Reset(pause)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
		} else {
			select {
			case <-ctx.Done():
				return
			case <-w.wake:
			}
		}
		ok := w.writeSome(ctx)
		switch {
		case ok:
			pause = 0
		case pause == 0:
			pause = storeRetryMin
		default:
			pause = min(pause*2, storeRetryMax)
		}
		w.mu.Lock()
		more := len(w.queue) > 0
		w.mu.Unlock()
		if more && pause == 0 {
			signal(w.wake)
		}
	}
}

// writeSome writes up to storeWorkers sessions' changes at once; false
// means a write failed (the store is down) and the rest should wait.
func (w *storeWriter) writeSome(ctx context.Context) bool {
	var wg sync.WaitGroup
	var failed atomic.Bool
	for range storeWorkers {
		key, sc, done := w.take("")
		if sc == nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !w.write(ctx, key, sc, done) {
				failed.Store(true)
			}
		}()
	}
	wg.Wait()
	return !failed.Load()
}

// take removes the changes pending for a session (key, or the oldest
// pending one that is not being written when key is empty) and marks it
// busy; done must be called with the outcome.
func (w *storeWriter) take(key string) (string, *sessionChanges, func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if key == "" {
		// The oldest first; the few being written stay queued.
		for i, k := range w.queue {
			if _, busy := w.busy[k]; !busy {
				key = k
				w.queue = dropAt(w.queue, i)
				break
			}
		}
	} else if i := slices.Index(w.queue, key); i >= 0 {
		w.queue = dropAt(w.queue, i)
	}
	sc := w.pending[key]
	if sc == nil {
		return key, nil, nil
	}
	delete(w.pending, key)
	w.backlog -= len(sc.subs)
	ch := make(chan struct{})
	w.busy[key] = ch
	return key, sc, func() {
		w.mu.Lock()
		delete(w.busy, key)
		w.mu.Unlock()
		close(ch)
	}
}

// dropAt removes q[i], cheaply at the front.
func dropAt(q []string, i int) []string {
	if i == 0 {
		q[0] = ""
		return q[1:]
	}
	return slices.Delete(q, i, i+1)
}

// write applies one session's changes; on failure it puts them back under
// whatever changed since, and reports false.
func (w *storeWriter) write(ctx context.Context, key string, sc *sessionChanges, done func()) bool {
	defer done()
	cctx, cancel := context.WithTimeout(ctx, storeTimeout)
	err := w.apply(cctx, key, sc)
	cancel()
	if err == nil {
		if w.failing.Swap(false) {
			w.s.log.Info("sss: session store writes resumed")
			w.reconcile()
		}
		return true
	}
	if ctx.Err() != nil {
		// The writer is stopping (shutdown): its last flush is cut short,
		// which is no store failure.
		w.putBack(key, sc)
		return false
	}
	w.s.stats.scalerErrors.Add(1)
	if !w.failing.Swap(true) {
		w.s.log.Warn("sss: session store write failed; retrying", "err", err)
	}
	w.putBack(key, sc)
	return false
}

// apply writes a session's changes to the store.
func (w *storeWriter) apply(ctx context.Context, key string, sc *sessionChanges) error {
	st := w.store
	pu, _ := st.(scaler.PositionUpdater)
	var stored map[string]scaler.StoredSubscription
	if sc.replace || (pu == nil && slices.ContainsFunc(slices.Collect(maps.Values(sc.subs)), func(d subDelta) bool { return d.posOnly })) {
		list, err := st.Subscriptions(ctx, key)
		if err != nil {
			return err
		}
		stored = make(map[string]scaler.StoredSubscription, len(list))
		for _, sub := range list {
			stored[sub.Channel] = sub
		}
	}
	if sc.replace {
		for _, sub := range stored {
			if d, keep := sc.subs[sub.Channel]; !keep || !d.add {
				if err := st.RemoveSubscription(ctx, key, sub.Channel); err != nil {
					return err
				}
			}
		}
	}
	// In channel order, so that the writes of a session are repeatable.
	for _, ch := range slices.Sorted(maps.Keys(sc.subs)) {
		d := sc.subs[ch]
		if d.posOnly && pu != nil {
			if err := pu.UpdatePosition(ctx, key, ch, d.pos); err != nil {
				return err
			}
			continue
		}
		if d.posOnly {
			if old, ok := stored[ch]; !ok || !further(d.pos, old.Position) {
				continue
			}
			d.query = stored[ch].Query
		}
		var err error
		if d.add {
			err = st.AddSubscription(ctx, key, scaler.StoredSubscription{Channel: ch, Query: d.query, Position: d.pos})
		} else {
			err = st.RemoveSubscription(ctx, key, ch)
		}
		if err != nil {
			return err
		}
	}
	if sc.touch {
		return st.TouchSession(ctx, key)
	}
	return nil
}

// reconcile queues again every subscription of this instance's
// connections whose session is stored, after the store was unreachable: a
// store that lost data meanwhile (restarted empty, failed over to a lagging
// replica) converges on them. Adds are idempotent, so this costs writes,
// never correctness.
func (w *storeWriter) reconcile() {
	for _, c := range w.s.hub.all() {
		if !c.persist {
			continue
		}
		for _, sb := range c.clientSubs() {
			w.add(c.storeKey(), sb.channel, sb.query, w.s.hub.lastPosition(sb.channel))
		}
	}
}

// putBack requeues changes that could not be written, under those queued
// for the same session since.
func (w *storeWriter) putBack(key string, old *sessionChanges) {
	w.mu.Lock()
	defer w.mu.Unlock()
	sc := w.pending[key]
	if sc == nil {
		w.pending[key] = old
		w.queue = append([]string{key}, w.queue...)
		w.backlog += len(old.subs)
		return
	}
	// Newer changes win; a newer replace makes the older ones moot.
	w.backlog -= len(sc.subs)
	if !sc.replace {
		for ch, d := range old.subs {
			if _, newer := sc.subs[ch]; !newer {
				sc.subs[ch] = d
			}
		}
		sc.replace = sc.replace || old.replace
	}
	sc.touch = sc.touch || old.touch
	w.backlog += len(sc.subs)
}

// flush writes what is pending for one session now, waiting for a write of
// it in progress first; an error means the stored list may be stale.
func (w *storeWriter) flush(ctx context.Context, key string) error {
	for {
		w.mu.Lock()
		busy := w.busy[key]
		w.mu.Unlock()
		if busy == nil {
			break
		}
		select {
		case <-busy:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	_, sc, done := w.take(key)
	if sc == nil {
		return nil
	}
	if !w.write(ctx, key, sc, done) {
		signal(w.wake) // what was put back is the writer's again
		return ErrUnavailable
	}
	return nil
}

// flushAll writes everything pending, within ctx: on shutdown.
func (w *storeWriter) flushAll(ctx context.Context) {
	for ctx.Err() == nil {
		w.mu.Lock()
		empty := len(w.queue) == 0
		w.mu.Unlock()
		if empty || !w.writeSome(ctx) {
			return
		}
	}
}

// droppedCount returns the changes dropped for a full backlog.
func (w *storeWriter) droppedCount() uint64 {
	if w == nil {
		return 0
	}
	return w.dropped.Load()
}

// size returns the changes waiting to be written.
func (w *storeWriter) size() int {
	if w == nil {
		return 0
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.backlog
}

// storeQuickRead bounds the reads made when a connection starts, which
// hold up its first requests.
const storeQuickRead = 500 * time.Millisecond

// quickList is storedList for a connection that is starting: at once an
// error while the store is known to be failing (a write failed last, or a
// read did in the last storeRetryMax), else within storeQuickRead.
func (w *storeWriter) quickList(ctx context.Context, key string) ([]scaler.StoredSubscription, error) {
	if w.failing.Load() || time.Now().UnixNano() < w.readDownUntil.Load() {
		return nil, ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, storeQuickRead)
	defer cancel()
	return w.storedList(ctx, key)
}

// storedList reads a session's stored subscriptions, after writing what is
// pending for it.
func (w *storeWriter) storedList(ctx context.Context, key string) ([]scaler.StoredSubscription, error) {
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	if err := w.flush(ctx, key); err != nil {
		return nil, err
	}
	list, err := w.store.Subscriptions(ctx, key)
	if err != nil {
		w.readDownUntil.Store(time.Now().Add(storeRetryMax).UnixNano())
		w.s.stats.scalerErrors.Add(1)
		w.s.log.Warn("sss: cannot read a session's subscriptions", "err", err)
		if errors.Is(err, context.Canceled) {
			return nil, err
		}
		return nil, ErrUnavailable
	}
	return list, nil
}
