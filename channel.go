package sss

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"strings"
	"sync"

	"github.com/superscaled/sss/scaler"
)

// MaxChannelLen is the longest channel name, in bytes.
const MaxChannelLen = 255

// ValidChannel reports whether name is a valid channel name: levels of
// A-Z a-z 0-9 _ - : @ = + / separated by single dots. Reserved names
// (starting with "$") are valid names but not for clients.
func ValidChannel(name string) error {
	if name == "" {
		return Errorf(CodeBadRequest, "empty channel name")
	}
	if len(name) > MaxChannelLen {
		return Errorf(CodeTooLarge, "channel name longer than %d bytes", MaxChannelLen)
	}
	body := strings.TrimPrefix(name, scaler.ReservedPrefix)
	prev := byte('.')
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case c == '.':
			if prev == '.' {
				return Errorf(CodeBadRequest, "channel %q has an empty level", name)
			}
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '_', c == '-', c == ':', c == '@', c == '=', c == '+', c == '/':
		default:
			return Errorf(CodeBadRequest, "channel %q has an invalid character %q", name, c)
		}
		prev = c
	}
	if prev == '.' {
		return Errorf(CodeBadRequest, "channel %q has an empty level", name)
	}
	return nil
}

// clientChannel validates a channel named by a client.
func clientChannel(name string) error {
	if strings.HasPrefix(name, scaler.ReservedPrefix) {
		return Errorf(CodeForbidden, "channel %q is reserved", truncate(name, MaxChannelLen))
	}
	return ValidChannel(name)
}

// registry holds this instance's local subscribers per stream. It is sharded
// so that deliveries on different channels never contend on one lock.
type registry struct {
	seed   maphash.Seed
	shards [64]shard
	// interest serialises the scaler calls per stream (striped), so that a
	// subscribe and an unsubscribe racing on one stream converge.
	interest [64]struct {
		sync.Mutex
		on map[string]bool
	}
}

type shard struct {
	mu sync.RWMutex
	m  map[string]*channel
}

// channel is one stream's local subscribers.
type channel struct {
	name string
	refs int // connections subscribed or subscribing; guarded by shard.mu

	mu   sync.RWMutex
	subs map[*Conn]*sub

	// last is the position of the last delivery, to notice deliveries the
	// scaler lost (a jump in offsets) or an epoch change.
	pmu  sync.Mutex
	last scaler.Position
}

func (r *registry) init() {
	r.seed = maphash.MakeSeed()
	for i := range r.shards {
		r.shards[i].m = make(map[string]*channel)
		r.interest[i].on = make(map[string]bool)
	}
}

func (r *registry) index(name string) int {
	return int(maphash.String(r.seed, name) % uint64(len(r.shards)))
}

func (r *registry) get(name string) *channel {
	sh := &r.shards[r.index(name)]
	sh.mu.RLock()
	ch := sh.m[name]
	sh.mu.RUnlock()
	return ch
}

// acquire reserves a place on the stream and returns its channel.
func (r *registry) acquire(name string) *channel {
	sh := &r.shards[r.index(name)]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	ch := sh.m[name]
	if ch == nil {
		ch = &channel{name: name, subs: make(map[*Conn]*sub)}
		sh.m[name] = ch
	}
	ch.refs++
	return ch
}

// release gives back a reservation; the last one forgets the stream.
func (r *registry) release(ch *channel) {
	sh := &r.shards[r.index(ch.name)]
	sh.mu.Lock()
	ch.refs--
	if ch.refs == 0 && sh.m[ch.name] == ch {
		delete(sh.m, ch.name)
	}
	sh.mu.Unlock()
}

func (r *registry) count() (channels int) {
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.RLock()
		channels += len(sh.m)
		sh.mu.RUnlock()
	}
	return channels
}

// syncInterest makes the scaler's interest in a stream match whether this
// instance has local subscribers, firing the open/close hooks on change.
// Because it reads the wanted state under the stripe lock, concurrent calls
// converge on the latest state.
func (s *Server) syncInterest(ctx context.Context, node scaler.Node, name string) error {
	st := &s.channels.interest[s.channels.index(name)]
	st.Lock()
	defer st.Unlock()
	want := s.channels.get(name) != nil
	if st.on[name] == want {
		return nil
	}
	var err error
	if want {
		err = node.Subscribe(ctx, name)
		// A backend that is down still records the interest (the contract);
		// anything else means we are not subscribed.
		if err != nil && !errors.Is(err, scaler.ErrUnavailable) {
			return err
		}
		st.on[name] = true
		if h := s.cfg.hooks.OnChannelOpen; h != nil && !strings.HasPrefix(name, scaler.ReservedPrefix) {
			s.hook("OnChannelOpen", func() { h(name) })
		}
	} else {
		err = node.Unsubscribe(ctx, name)
		delete(st.on, name)
		if h := s.cfg.hooks.OnChannelClose; h != nil && !strings.HasPrefix(name, scaler.ReservedPrefix) {
			s.hook("OnChannelClose", func() { h(name) })
		}
	}
	if err != nil {
		s.stats.scalerErrors.Add(1)
		s.log.Warn("sss: scaler interest", "channel", name, "subscribe", want, "err", err)
	}
	return nil
}

// attach subscribes sb's connection to its stream locally and in the
// scaler. sb should be held: deliveries are buffered until start.
func (s *Server) attach(ctx context.Context, sb *sub) error {
	node, err := s.join(ctx)
	if err != nil {
		return err
	}
	ch := s.channels.acquire(sb.channel)
	if err := s.syncInterest(ctx, node, sb.channel); err != nil {
		s.channels.release(ch)
		s.stats.scalerErrors.Add(1)
		return Errorf(CodeUnavailable, "cannot subscribe: %v", err)
	}
	ch.mu.Lock()
	ch.subs[sb.c] = sb
	ch.mu.Unlock()
	return nil
}

// detach removes c from a stream; the last local subscriber withdraws the
// instance's interest.
func (s *Server) detach(ctx context.Context, c *Conn, name string) {
	ch := s.channels.get(name)
	if ch == nil {
		return
	}
	ch.mu.Lock()
	_, ok := ch.subs[c]
	delete(ch.subs, c)
	ch.mu.Unlock()
	if !ok {
		return
	}
	s.channels.release(ch)
	if node := s.joined(); node != nil {
		s.syncInterest(ctx, node, name)
	}
}

// deliver fans a publication out to the local subscribers of one stream,
// encoding it once.
func (s *Server) deliver(d scaler.Delivery) {
	ch := s.channels.get(d.Stream)
	if ch == nil || d.Pub == nil {
		return
	}
	s.stats.delivered.Add(1)
	gap, from := false, scaler.Position{}
	if d.Offset > 0 {
		var dup bool
		if dup, gap, from = ch.track(d); dup {
			return
		}
	}
	pub := d.Pub
	if pub.Transient && pub.Event == disconnectTell {
		ch.mu.RLock()
		for c := range ch.subs {
			c.obey(pub.Event, pub.Data)
		}
		ch.mu.RUnlock()
		return
	}
	frame := encodeDelivery(d)
	lossy := !pub.Transient && s.cfg.lossy != nil && s.cfg.lossy(pub.Channel)
	nested := pub.Channel != d.Stream
	ch.mu.RLock()
	defer ch.mu.RUnlock()
	if gap {
		s.repair(ch, d, from)
	}
	for c, sb := range ch.subs {
		// A held subscription buffers everything, to see its offsets
		// without holes; the filter below applies when it is released.
		if sb.held.Load() && sb.hold(d) {
			continue
		}
		// A connection subscribed at several levels gets one copy, through
		// its most specific subscription.
		if nested && c.holdsDeeper(d.Stream, pub.Channel) {
			continue
		}
		c.send(frame, lossy)
	}
}

// track records a delivery's position. It reports a duplicate to drop, or a
// gap: deliveries after from that this node did not receive.
func (ch *channel) track(d scaler.Delivery) (dup, gap bool, from scaler.Position) {
	ch.pmu.Lock()
	defer ch.pmu.Unlock()
	last := ch.last
	switch {
	case last.Epoch == d.Epoch && d.Offset <= last.Offset:
		return true, false, last
	case last.Epoch == "", last.Epoch == d.Epoch && d.Offset == last.Offset+1:
	default:
		gap, from = true, last
	}
	ch.last = scaler.Position{Offset: d.Offset, Epoch: d.Epoch}
	return false, gap, from
}

// repair handles deliveries this node missed (its link to the backend
// broke): every live subscriber is held and caught up from history. After
// an epoch change nothing can be recovered, so subscribers are asked to
// reconnect, and their resume reports recovered: false. Callers hold ch.mu.
func (s *Server) repair(ch *channel, d scaler.Delivery, from scaler.Position) {
	s.stats.gaps.Add(1)
	s.log.Warn("sss: missed deliveries", "channel", ch.name, "after", from.Offset, "got", d.Offset, "epoch_changed", from.Epoch != d.Epoch)
	for c, sb := range ch.subs {
		if from.Epoch != d.Epoch {
			c.close(CloseResync, "channel history reset", nil)
			continue
		}
		// A subscription held already catches up by itself.
		if !sb.held.Swap(true) {
			s.catchUpLater(sb, from)
		}
	}
}

// Sender identifies the client that published a message.
type Sender = scaler.Sender

// Publish sends an event to every subscriber of channel (and of its
// ancestors) on every instance. data is encoded with encoding/json. It
// returns once the scaler accepted the publication.
func (s *Server) Publish(ctx context.Context, channel, event string, data any) error {
	if err := ValidChannel(channel); err != nil {
		return err
	}
	return s.publish(ctx, channel, event, data)
}

// PublishUser publishes to every connection of a user, on every instance.
func (s *Server) PublishUser(ctx context.Context, userID, event string, data any) error {
	if userID == "" {
		return Errorf(CodeBadRequest, "empty user id")
	}
	return s.publish(ctx, UserChannel(userID), event, data)
}

// PublishSession publishes to every connection of a session, on every
// instance.
func (s *Server) PublishSession(ctx context.Context, sessionID, event string, data any) error {
	if sessionID == "" {
		return Errorf(CodeBadRequest, "empty session id")
	}
	return s.publish(ctx, SessionChannel(sessionID), event, data)
}

func (s *Server) publish(ctx context.Context, channel, event string, data any) error {
	raw, err := encodeData(data)
	if err != nil {
		return err
	}
	return s.publishRaw(ctx, &scaler.Publication{Channel: channel, Event: event, Data: raw})
}

func (s *Server) publishRaw(ctx context.Context, pub *scaler.Publication) error {
	node, err := s.join(ctx)
	if err != nil {
		return err
	}
	if err := node.Publish(ctx, pub); err != nil {
		s.stats.scalerErrors.Add(1)
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	s.stats.published.Add(1)
	return nil
}
