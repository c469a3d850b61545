package scalertest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"

	"github.com/superscaled/sss/scaler"
)

var historyTests = []test{
	{"OffsetsPerStream", testHistOffsets},
	{"TransientNotKept", testHistTells},
	{"Since", testHistSince},
	{"SinceSharedAcrossNodes", testHistShared},
	{"UnpublishedStream", testHistUnpublished},
	{"PositionLost", testHistLost},
	{"ConcurrentPublishers", testHistConcurrent},
	{"ClosedAndContext", testHistClosed},
}

// histories joins n nodes and returns their History, skipping the test when
// the backend keeps none.
func histories(t *testing.T, ns func(*testing.T) scaler.Scaler, n int) (*env, []*member, []scaler.History) {
	t.Helper()
	return joinAs[scaler.History](t, ns, n)
}

func since(t *testing.T, h scaler.History, stream string, pos scaler.Position, limit int) ([]scaler.Entry, scaler.Position) {
	t.Helper()
	ctx, cancel := callCtx(t)
	defer cancel()
	entries, top, err := h.Since(ctx, stream, pos, limit)
	if err != nil {
		t.Fatalf("Since(%q, %+v, %d): %v", stream, pos, limit, err)
	}
	return entries, top
}

// deliveriesOn returns the deliveries recorded on stream, in order.
func deliveriesOn(r *recorder, stream string) []scaler.Delivery {
	var out []scaler.Delivery
	for _, d := range r.all() {
		if d.Stream == stream {
			out = append(out, d)
		}
	}
	return out
}

// checkOffsets checks that ds carry offsets first, first+1, ... in one
// non-empty epoch, and returns that epoch.
func checkOffsets(t *testing.T, who, stream string, ds []scaler.Delivery, first uint64) string {
	t.Helper()
	if len(ds) == 0 {
		return ""
	}
	epoch := ds[0].Epoch
	if epoch == "" {
		t.Errorf("%s: delivery on %q has an empty epoch", who, stream)
	}
	for i, d := range ds {
		if d.Offset != first+uint64(i) || d.Epoch != epoch {
			t.Errorf("%s: delivery %d on %q has position (%d, %q), want (%d, %q)", who, i, stream, d.Offset, d.Epoch, first+uint64(i), epoch)
			break
		}
	}
	return epoch
}

// Each stream numbers its own publications 1, 2, 3...: a publication on
// a.b.c gets the next offset of a, of a.b and of a.b.c, and each delivery
// carries the offset of its stream. Every node sees the same positions.
func testHistOffsets(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, n, _ := histories(t, ns, 2)
	a, ab, abc := e.ch("a"), e.ch("a.b"), e.ch("a.b.c")
	for _, m := range n {
		m.subscribe(a, ab, abc)
	}
	n[0].publish(pub(abc, "e", `1`), pub(a, "e", `2`), pub(ab, "e", `3`))
	n[1].publish(pub(abc, "e", `4`))
	epochs := map[string]string{}
	for _, m := range n {
		m.rec.waitStream(t, a, 4)
		m.rec.waitStream(t, ab, 3)
		m.rec.waitStream(t, abc, 2)
		for _, s := range []string{a, ab, abc} {
			ep := checkOffsets(t, m.id, s, deliveriesOn(m.rec, s), 1)
			if prev, ok := epochs[s]; ok && prev != ep {
				t.Errorf("%s: stream %q has epoch %q here but %q on another node", m.id, s, ep, prev)
			}
			epochs[s] = ep
		}
	}
}

// Transient publications are delivered with a zero position, not numbered (the
// next publication takes the next offset) and not returned by Since.
func testHistTells(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, n, h := histories(t, ns, 2)
	s := e.res("tells")
	n[1].subscribe(s)
	tell := pub(s, "notify", `"x"`)
	tell.Transient = true
	n[0].publish(pub(s, "e", `1`), tell, pub(s, "e", `2`))
	n[1].rec.waitStream(t, s, 3)
	ds := deliveriesOn(n[1].rec, s)
	if ds[1].Offset != 0 || ds[1].Epoch != "" {
		t.Errorf("a tell was delivered at position (%d, %q), want the zero position", ds[1].Offset, ds[1].Epoch)
	}
	checkOffsets(t, n[1].id, s, []scaler.Delivery{ds[0], ds[2]}, 1)
	entries, top := since(t, h[0], s, scaler.Position{}, 10)
	if len(entries) != 2 || top.Offset != 2 {
		t.Errorf("Since returned %d entries up to offset %d, want the 2 publications (the tell is not kept)", len(entries), top.Offset)
	}
}

// Since returns what was published after a position, in order and intact,
// bounded by limit, with the stream's current position.
func testHistSince(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, n, h := histories(t, ns, 1)
	s := e.ch("since")
	n[0].subscribe(s)
	var pubs []*scaler.Publication
	for i := range 5 {
		p := pub(s+".x", "ev"+strconv.Itoa(i), fmt.Sprintf(`{"i":%d}`, i))
		p.Sender = scaler.Sender{User: "u", Conn: "n.c"}
		pubs = append(pubs, p)
	}
	n[0].publish(pubs...)
	n[0].rec.waitStream(t, s, 5)
	epoch := deliveriesOn(n[0].rec, s)[0].Epoch

	check := func(pos scaler.Position, limit int, wantFrom, wantN int) {
		t.Helper()
		entries, top := since(t, h[0], s, pos, limit)
		if top != (scaler.Position{Offset: 5, Epoch: epoch}) {
			t.Errorf("Since(%+v, %d): position %+v, want {5 %q}", pos, limit, top, epoch)
		}
		if len(entries) != wantN {
			t.Errorf("Since(%+v, %d): %d entries, want %d", pos, limit, len(entries), wantN)
			return
		}
		for i, en := range entries {
			off := wantFrom + i
			if en.Offset != uint64(off) || en.Pub == nil || !samePub(en.Pub, pubs[off-1]) {
				t.Errorf("Since(%+v, %d): entry %d = (%d, %s), want (%d, %s)", pos, limit, i, en.Offset, fmtPub(en.Pub), off, fmtPub(pubs[off-1]))
			}
		}
	}
	check(scaler.Position{}, 100, 1, 5)                        // zero position: all retained
	check(scaler.Position{Offset: 0, Epoch: epoch}, 100, 1, 5) // from the start, checked
	check(scaler.Position{Offset: 2, Epoch: epoch}, 100, 3, 3)
	check(scaler.Position{Offset: 2, Epoch: epoch}, 2, 3, 2) // limit
	check(scaler.Position{Offset: 5, Epoch: epoch}, 100, 0, 0)
	check(scaler.Position{Offset: 1, Epoch: epoch}, 0, 0, 0) // limit 0: position only
}

// History is the stream's, not the node's: one node reads what another
// published, at the positions the deliveries carried.
func testHistShared(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, n, h := histories(t, ns, 3)
	s := e.ch("shared")
	n[2].subscribe(s)
	n[0].publish(pub(s, "e", `1`))
	n[1].publish(pub(s, "e", `2`))
	n[2].rec.waitStream(t, s, 2)
	ds := deliveriesOn(n[2].rec, s)
	for i, hist := range h {
		entries, top := since(t, hist, s, scaler.Position{Offset: 0, Epoch: ds[0].Epoch}, 10)
		if top.Offset != 2 || top.Epoch != ds[0].Epoch || len(entries) != 2 ||
			entries[0].Offset != ds[0].Offset || entries[1].Offset != ds[1].Offset ||
			!samePub(entries[0].Pub, ds[0].Pub) || !samePub(entries[1].Pub, ds[1].Pub) {
			t.Errorf("%s: Since = %d entries up to %+v; want the 2 publications delivered at (1, %q), (2, %q)",
				n[i].id, len(entries), top, ds[0].Epoch, ds[0].Epoch)
		}
	}
}

// A stream nobody published to is at offset 0 in a stable epoch, and the
// first publications continue that epoch, so a client that recorded the
// empty position catches up on them.
func testHistUnpublished(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, n, h := histories(t, ns, 2)
	s := e.ch("empty")
	_, top := since(t, h[0], s, scaler.Position{}, 10)
	if top.Offset != 0 || top.Epoch == "" {
		t.Fatalf("position of an unpublished stream = %+v, want offset 0 and a non-empty epoch", top)
	}
	if _, again := since(t, h[1], s, scaler.Position{}, 10); again != top {
		t.Errorf("position of an unpublished stream changed from %+v to %+v", top, again)
	}
	n[0].publish(pub(s, "e", `1`))
	entries, now := since(t, h[1], s, top, 10)
	if now.Epoch != top.Epoch || now.Offset != 1 || len(entries) != 1 || entries[0].Offset != 1 {
		t.Errorf("after one publication Since(%+v) = %d entries, position %+v; want 1 entry at (1, %q)", top, len(entries), now, top.Epoch)
	}
}

// A position from another epoch, or beyond the stream's end, is lost; the
// error comes with the current position.
func testHistLost(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, n, h := histories(t, ns, 1)
	s := e.ch("lost")
	n[0].publish(pub(s, "e", `1`), pub(s, "e", `2`))
	_, cur := since(t, h[0], s, scaler.Position{}, 0)
	ctx, cancel := callCtx(t)
	defer cancel()
	for _, pos := range []scaler.Position{
		{Offset: 1, Epoch: cur.Epoch + "-other"},
		{Offset: 0, Epoch: "no-such-epoch"},
		{Offset: cur.Offset + 1, Epoch: cur.Epoch},
	} {
		entries, top, err := h[0].Since(ctx, s, pos, 10)
		if !errors.Is(err, scaler.ErrPositionLost) {
			t.Errorf("Since(%+v) with current position %+v: %v; want an error wrapping ErrPositionLost", pos, cur, err)
		}
		if len(entries) != 0 || top != cur {
			t.Errorf("Since(%+v) returned %d entries and position %+v with its error; want none and %+v", pos, len(entries), top, cur)
		}
	}
}

// Concurrent publishers on different nodes: every node receives the stream
// at offsets 1..N in order, one epoch, matching what Since returns.
func testHistConcurrent(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	const per = 100
	e, n, h := histories(t, ns, 3)
	s := e.ch("conc")
	for _, m := range n {
		m.subscribe(s)
	}
	var wg sync.WaitGroup
	for _, m := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			defer cancel()
			for i := range per {
				if err := m.node.Publish(ctx, pub(s+".p", m.id, strconv.Itoa(i))); err != nil {
					t.Errorf("%s: Publish: %v", m.id, err)
					return
				}
			}
		})
	}
	wg.Wait()
	total := per * len(n)
	for _, m := range n {
		m.rec.waitStream(t, s, total)
	}
	ref := deliveriesOn(n[0].rec, s)
	epoch := checkOffsets(t, n[0].id, s, ref, 1)
	for _, m := range n[1:] {
		checkOffsets(t, m.id, s, deliveriesOn(m.rec, s), 1)
	}
	entries, top := since(t, h[1], s, scaler.Position{Offset: 0, Epoch: epoch}, total)
	if top.Offset != uint64(total) || len(entries) != total {
		t.Fatalf("Since: %d entries up to %+v, want %d", len(entries), top, total)
	}
	for i, en := range entries {
		if en.Offset != ref[i].Offset || !samePub(en.Pub, ref[i].Pub) {
			t.Errorf("Since entry %d = (%d, %s), but offset %d was delivered as %s", i, en.Offset, fmtPub(en.Pub), ref[i].Offset, fmtPub(ref[i].Pub))
			break
		}
	}
}

// Since follows the rules of every other method on a closed node and with a
// done context.
func testHistClosed(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e, n, h := histories(t, ns, 2)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := h[0].Since(ctx, e.ch("x"), scaler.Position{}, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("Since with a cancelled context: %v; want context.Canceled", err)
	}
	n[1].close()
	if _, _, err := h[1].Since(t.Context(), e.ch("x"), scaler.Position{}, 1); !errors.Is(err, scaler.ErrClosed) {
		t.Errorf("Since on a closed node: %v; want ErrClosed", err)
	}
}
