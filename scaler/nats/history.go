package nats

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/superscaled/sss/scaler"
)

// Publish stores a publication in the history stream with its offset and
// epoch in each of its streams; NATS then republishes it to the nodes
// subscribed to them. A transient publication goes straight to the
// delivery subject.
func (n *node) Publish(ctx context.Context, pub *scaler.Publication) error {
	if err := n.check(ctx); err != nil {
		return err
	}
	if pub == nil {
		return errors.New("nats scaler: nil publication")
	}
	body := encodePub(pub)
	if pub.Transient {
		subj := channelSubject(n.s.dRoot, pub.Channel)
		if err := checkSubject(subj); err != nil {
			return err
		}
		if !n.s.nc.IsConnected() {
			return fail(ctx, "publish", nats.ErrConnectionReconnecting)
		}
		if err := n.s.nc.Publish(subj, body); err != nil {
			return fail(ctx, "publish", err)
		}
		// Accepted once the server answered a ping sent after it.
		cctx, cancel := n.s.call(ctx)
		defer cancel()
		if err := n.s.nc.FlushWithContext(cctx); err != nil {
			return fail(ctx, "publish", err)
		}
		return nil
	}
	return n.s.publishStored(ctx, pub.Channel, body)
}

// publishStored appends to the history with optimistic concurrency on the
// channel's root stream: it knows (reads, or remembers from its own last
// publication) the last stored publication of each of the channel's
// streams, numbers the new one after each, and has JetStream store it only
// if the last sequence matching the root stream's filter is still the one
// it knows (Nats-Expected-Last-Subject-Sequence with the root stream's
// subject filter). Every publication of a stream is also one of its
// root's, so none of the channel's streams moved in between; on a conflict
// it reads again and retries.
//
// Within one Scaler, publications on one root stream take turns (rootState),
// so they never conflict with each other, and each remembers what it
// stored: as long as no other Scaler publishes on the root, a publication
// is a single round trip.
func (s *Scaler) publishStored(ctx context.Context, channel string, body []byte) error {
	streams := scaler.Streams(channel)
	subj := channelSubject(s.hRoot, channel)
	if err := checkSubject(subj); err != nil {
		return err
	}
	rs := s.rootState(streams[0])
	select {
	case rs.turn <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("nats scaler: publish: %w", ctx.Err())
	}
	defer func() { <-rs.turn }()
	// The epochs this publication starts streams in, kept across retries:
	// starting one retires its epoch in the bucket, and a retry that drew
	// another would move the stream to an epoch its subscribers have not
	// seen.
	started := make(map[string]string)
	for attempt := 0; ; attempt++ {
		err := s.tryPublish(ctx, rs, streams, subj, body, started)
		if err == nil {
			return nil
		}
		rs.forget()
		if !wrongLastSeq(err) {
			return s.failed(ctx, "publish", err)
		}
		if cerr := ctx.Err(); cerr != nil {
			return fmt.Errorf("nats scaler: publish: %w", cerr)
		}
		// Another Scaler appended first: back off a little, at random,
		// so that contenders do not keep colliding.
		if attempt > 2 {
			t := time.NewTimer(time.Duration(mrand.IntN(min(attempt, 20))+1) * time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("nats scaler: publish: %w", ctx.Err())
			case <-t.C:
			}
		}
	}
}

// rootState is what a Scaler knows of a root stream's history, valid
// while every publication on the root since it was read was its own.
// Holding turn (a one-slot semaphore) gives the right to publish on the
// root and to use the rest.
type rootState struct {
	turn  chan struct{}
	known bool   // seq and last are up to date
	seq   uint64 // last sequence matching the root's filter
	last  map[string]scaler.Position
}

// maxRoots and maxKnownStreams bound what a Scaler remembers; past them it
// forgets, and reads again.
const (
	maxRoots        = 4096
	maxKnownStreams = 256
)

func (s *Scaler) rootState(root string) *rootState {
	s.rootsMu.Lock()
	defer s.rootsMu.Unlock()
	rs := s.roots[root]
	if rs == nil {
		if len(s.roots) >= maxRoots {
			// Forget one at random. A publisher still holding it goes
			// on; at worst two of ours then conflict and retry.
			for k := range s.roots {
				delete(s.roots, k)
				break
			}
		}
		rs = &rootState{turn: make(chan struct{}, 1), last: make(map[string]scaler.Position)}
		s.roots[root] = rs
	}
	return rs
}

func (rs *rootState) forget() {
	rs.known = false
	clear(rs.last)
}

func (s *Scaler) tryPublish(ctx context.Context, rs *rootState, streams []string, subj string, body []byte, started map[string]string) error {
	cctx, cancel := s.call(ctx)
	defer cancel()
	if !rs.known {
		root, err := s.lastIn(cctx, streamFilter(s.hRoot, streams[0]))
		if err != nil {
			return err
		}
		rs.seq = 0
		if root != nil {
			p, err := positionOf(root, 0)
			if err != nil {
				return err
			}
			rs.seq, rs.last[streams[0]] = root.Sequence, p
		}
		rs.known = true
	}
	if len(rs.last) > maxKnownStreams {
		rs.forget()
		return s.tryPublish(ctx, rs, streams, subj, body, started)
	}
	ps := positions{offsets: make([]uint64, len(streams)), epochs: make([]string, len(streams))}
	for i, st := range streams {
		last, ok := rs.last[st]
		if !ok && rs.seq != 0 { // an empty root has empty descendants
			// Not known yet: read it (consistent with seq, or the publish
			// below fails).
			m, err := s.lastIn(cctx, streamFilter(s.hRoot, st))
			if err != nil {
				return err
			}
			if m != nil {
				if last, err = positionOf(m, i); err != nil {
					return err
				}
				ok = true
			}
		}
		if !ok {
			ep, again := started[st]
			if !again {
				var err error
				if ep, err = s.startEpoch(cctx, st); err != nil {
					return err
				}
				started[st] = ep
			}
			ps.offsets[i], ps.epochs[i] = 1, ep
			continue
		}
		ps.offsets[i], ps.epochs[i] = last.Offset+1, last.Epoch
	}
	msg := nats.NewMsg(subj)
	msg.Data = body
	off, ep := ps.headers()
	msg.Header.Set(hdrOffsets, off)
	msg.Header.Set(hdrEpochs, ep)
	msg.Header.Set(jetstream.ExpectedLastSubjSeqSubjHeader, streamFilter(s.hRoot, streams[0]))
	msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(rs.seq, 10))
	ack, err := s.js.PublishMsg(cctx, msg)
	if err != nil {
		return err
	}
	rs.seq = ack.Sequence
	for i, st := range streams {
		rs.last[st], _ = ps.at(i)
	}
	return nil
}

func wrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return false
}

// positionOf reads the position at depth i of a stored publication.
func positionOf(m *jetstream.RawStreamMsg, i int) (scaler.Position, error) {
	ps, err := parsePositions(m.Header.Get(hdrOffsets), m.Header.Get(hdrEpochs))
	if err != nil {
		return scaler.Position{}, fmt.Errorf("message %d: %w", m.Sequence, err)
	}
	p, ok := ps.at(i)
	if !ok {
		return scaler.Position{}, fmt.Errorf("message %d: no position at depth %d: %w", m.Sequence, i, errBadWire)
	}
	return p, nil
}

// lastIn returns the last stored publication matching filter, nil if none.
// It asks the stream's leader, never a replica that may lag.
func (s *Scaler) lastIn(ctx context.Context, filter string) (*jetstream.RawStreamMsg, error) {
	m, err := s.hist.GetLastMsgForSubject(ctx, filter)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	return m, err
}

// nextIn returns the first stored publication matching filter with a
// sequence of at least seq, nil if none.
func (s *Scaler) nextIn(ctx context.Context, filter string, seq uint64) (*jetstream.RawStreamMsg, error) {
	m, err := s.hist.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(filter))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	return m, err
}

// Epochs. A stream with publications in the history takes its epoch from
// them. A stream with none (never published, or all trimmed) has the epoch
// stored under its name in the epochs bucket, created at random when
// absent. The first publication of such a stream uses that epoch and first
// replaces it with a new random one, so that if the stream's history ever
// empties again its offsets restart in an epoch never used before.

func epochKey(stream string) string { return escapeToken(stream) }

func newEpoch() string {
	v, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	return v.Text(36)
}

// currentEpoch returns the epoch of a stream with an empty history. On a
// replicated bucket a create can be refused while another one for the
// same key is still being replicated, before a read can see it: it
// retries, briefly, until it reads or creates the value.
func (s *Scaler) currentEpoch(ctx context.Context, stream string) (string, uint64, error) {
	key := epochKey(stream)
	for attempt := 1; ; attempt++ {
		e, err := s.epochs.Get(ctx, key)
		if err == nil {
			return string(e.Value()), e.Revision(), nil
		}
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			return "", 0, err
		}
		ep := newEpoch()
		rev, err := s.epochs.Create(ctx, key, []byte(ep))
		if err == nil {
			return ep, rev, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return "", 0, err
		}
		t := time.NewTimer(time.Duration(min(attempt, 20)) * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return "", 0, ctx.Err()
		case <-t.C:
		}
	}
}

// startEpoch returns the epoch for the first publication of a stream with
// an empty history, retiring it for any later restart.
func (s *Scaler) startEpoch(ctx context.Context, stream string) (string, error) {
	ep, rev, err := s.currentEpoch(ctx, stream)
	if err != nil {
		return "", err
	}
	if _, err := s.epochs.Update(ctx, epochKey(stream), []byte(newEpoch()), rev); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return "", err
	}
	return ep, nil
}

// Since reads the history of stream. Its publications are those matching
// the stream's subject filter; their offsets in the stream grow with their
// sequence in the JetStream stream, which lets Since find an offset's
// message by a search over sequences.
func (n *node) Since(ctx context.Context, stream string, pos scaler.Position, limit int) ([]scaler.Entry, scaler.Position, error) {
	if err := n.check(ctx); err != nil {
		return nil, scaler.Position{}, err
	}
	s := n.s
	filter := streamFilter(s.hRoot, stream)
	if err := checkSubject(filter); err != nil {
		return nil, scaler.Position{}, err
	}
	d := depth(stream)
	cctx, cancel := s.call(ctx)
	defer cancel()
	last, err := s.lastIn(cctx, filter)
	if err != nil {
		return nil, scaler.Position{}, s.failed(ctx, "since", err)
	}
	var top scaler.Position
	if last == nil {
		ep, _, err := s.currentEpoch(cctx, stream)
		if err != nil {
			return nil, scaler.Position{}, s.failed(ctx, "since", err)
		}
		top = scaler.Position{Epoch: ep}
	} else if top, err = positionOf(last, d); err != nil {
		return nil, scaler.Position{}, s.failed(ctx, "since", err)
	}
	if pos.Epoch != "" && (pos.Epoch != top.Epoch || pos.Offset > top.Offset) {
		return nil, top, fmt.Errorf("nats scaler: since %+v, stream at %+v: %w", pos, top, scaler.ErrPositionLost)
	}
	if limit <= 0 || top.Offset == 0 || (pos.Epoch != "" && pos.Offset == top.Offset) {
		return nil, top, nil
	}
	var m *jetstream.RawStreamMsg
	if pos.Epoch == "" {
		m, err = s.nextIn(cctx, filter, 1)
	} else {
		m, err = s.findOffset(cctx, filter, d, pos.Offset+1, last.Sequence, top.Offset)
	}
	if err != nil {
		return nil, top, s.failed(ctx, "since", err)
	}
	if m == nil {
		return nil, top, fmt.Errorf("nats scaler: since %+v: trimmed: %w", pos, scaler.ErrPositionLost)
	}
	var (
		entries []scaler.Entry
		buf     []*jetstream.RawStreamMsg // read ahead in bulk
		bulk    bool
	)
	for m != nil {
		p, err := positionOf(m, d)
		if err != nil {
			return nil, top, s.failed(ctx, "since", err)
		}
		if p.Epoch != top.Epoch || (len(entries) > 0 && p.Offset != entries[len(entries)-1].Offset+1) {
			break // a hole: the caller will find the next position lost
		}
		pub, err := decodePub(m.Data)
		if err != nil {
			return nil, top, s.failed(ctx, "since", err)
		}
		entries = append(entries, scaler.Entry{Offset: p.Offset, Pub: pub})
		if len(entries) == limit || m.Sequence >= last.Sequence {
			break
		}
		if want := min(limit-len(entries), int(min(top.Offset-p.Offset, uint64(limit)))); !bulk && want > bulkAbove {
			// Many to read: in one go, rather than a request each.
			bulk = true
			buf = s.readBulk(cctx, filter, m.Sequence+1, want)
		}
		if len(buf) > 0 {
			m, buf = buf[0], buf[1:]
		} else if m, err = s.nextIn(cctx, filter, m.Sequence+1); err != nil {
			return nil, top, s.failed(ctx, "since", err)
		}
	}
	if len(entries) == 0 {
		return nil, top, fmt.Errorf("nats scaler: since %+v: %w", pos, scaler.ErrPositionLost)
	}
	return entries, top, nil
}

// bulkAbove is how many publications Since reads one request each before
// it reads the rest through a consumer (three requests whatever their
// number).
const bulkAbove = 8

// bulkTimeout bounds a bulk read; past it, Since reads one at a time.
const bulkTimeout = time.Second

// readBulk returns up to n stored publications matching filter from
// sequence from on, through a short-lived consumer. It returns what it
// could, none on error: the caller reads the rest one at a time. The
// consumer sends only what its server already has (it may lag behind the
// leader; the caller then reads on from the leader).
func (s *Scaler) readBulk(ctx context.Context, filter string, from uint64, n int) []*jetstream.RawStreamMsg {
	// A bounded share of the call's time: a consumer placed on a server
	// that is down (a cluster that lost a node) must not use it all up.
	ctx, cancel := context.WithTimeout(ctx, min(s.o.callTimeout/4, bulkTimeout))
	defer cancel()
	cons, err := s.hist.CreateConsumer(ctx, jetstream.ConsumerConfig{
		FilterSubject: filter, DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: from,
		AckPolicy: jetstream.AckNonePolicy, InactiveThreshold: 30 * time.Second, MemoryStorage: true, Replicas: 1,
	})
	if err != nil {
		return nil
	}
	defer func() {
		// Briefly: should it fail, the server drops the consumer once it
		// has been idle for its inactive threshold.
		dctx, cancel := context.WithTimeout(context.Background(), bulkTimeout/4)
		_ = s.hist.DeleteConsumer(dctx, cons.CachedInfo().Name)
		cancel()
	}()
	batch, err := cons.FetchNoWait(n)
	if err != nil {
		return nil
	}
	out := make([]*jetstream.RawStreamMsg, 0, n)
	for msg := range batch.Messages() {
		md, err := msg.Metadata()
		if err != nil {
			break
		}
		out = append(out, &jetstream.RawStreamMsg{Subject: msg.Subject(), Sequence: md.Sequence.Stream, Header: msg.Headers(), Data: msg.Data()})
	}
	return out
}

// findOffset returns the publication of the stream (filter, depth d) at
// offset want, given its last one (lastSeq, lastOff); nil if it was
// trimmed. Offsets grow with sequences, so the message at want is at
// lastSeq-(lastOff-want) or before: the search gallops down from there,
// usually a single read when the stream is busy, then bisects.
func (s *Scaler) findOffset(ctx context.Context, filter string, d int, want, lastSeq, lastOff uint64) (*jetstream.RawStreamMsg, error) {
	if lastOff-want >= lastSeq {
		return nil, nil
	}
	lo, hi := uint64(1), lastSeq-(lastOff-want)
	probe, step, galloping := hi, uint64(1), true
	for lo <= hi {
		if !galloping {
			probe = lo + (hi-lo)/2
		}
		m, err := s.nextIn(ctx, filter, probe)
		if err != nil || m == nil {
			return nil, err
		}
		p, err := positionOf(m, d)
		if err != nil {
			return nil, err
		}
		switch {
		case p.Offset == want:
			return m, nil
		case p.Offset < want: // below it: bisect what is left
			lo, galloping = m.Sequence+1, false
		default:
			hi = probe - 1
			if galloping {
				probe, step = max(1, probe-step), step*2
			}
		}
	}
	return nil, nil
}
