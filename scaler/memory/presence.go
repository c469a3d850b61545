package memory

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/superscaled/sss/scaler"
)

// Presence. Entries live in the Scaler, shared by its nodes, each owned by
// the node that joined it. A node in one process cannot die without the
// others, so the only way a node stops without Close is Crash, for tests:
// its entries are removed a presence TTL later and reported as gone to one
// live node, as a backend reaps the entries of a node whose heartbeat
// stopped.
//
// Costs: Join, Leave and Counts are O(1); Present is O(n) in the channel's
// entries; reaping a crashed node is O(its entries).

// DefaultPresenceTTL is how long a crashed node's presence entries outlive
// it.
const DefaultPresenceTTL = 30 * time.Second

// WithPresenceTTL sets how long the presence entries of a crashed node
// (Crash) remain before they are removed and reported as gone (default
// 30s).
func WithPresenceTTL(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("memory: WithPresenceTTL(%v): must be positive", d)
		}
		c.presenceTTL = d
		return nil
	}
}

// presence is the Scaler's presence state.
type presence struct {
	mu       sync.Mutex
	channels map[string]*presentSet
	reapers  map[*node]*time.Timer // crashed nodes awaiting their reap
}

// presentSet is one channel's entries, with a count per user so that
// Counts is O(1).
type presentSet struct {
	entries map[string]presentEntry // by connection id
	users   map[string]int          // entries per non-empty user id
}

type presentEntry struct {
	owner *node
	c     scaler.ClientInfo
}

func (p *presence) init() {
	p.channels = make(map[string]*presentSet)
	p.reapers = make(map[*node]*time.Timer)
}

// Join implements scaler.Presence.
func (n *node) Join(ctx context.Context, channel string, c scaler.ClientInfo) error {
	if err := n.presenceCall(ctx); err != nil {
		return err
	}
	c.Info = slices.Clone(c.Info)
	p := &n.s.presence
	p.mu.Lock()
	defer p.mu.Unlock()
	set := p.channels[channel]
	if set == nil {
		set = &presentSet{entries: make(map[string]presentEntry), users: make(map[string]int)}
		p.channels[channel] = set
	}
	if old, ok := set.entries[c.Conn]; ok {
		set.unCount(old.c.User)
	}
	set.entries[c.Conn] = presentEntry{owner: n, c: c}
	if c.User != "" {
		set.users[c.User]++
	}
	return n.down()
}

// Leave implements scaler.Presence.
func (n *node) Leave(ctx context.Context, channel, conn string) error {
	if err := n.presenceCall(ctx); err != nil {
		return err
	}
	p := &n.s.presence
	p.mu.Lock()
	defer p.mu.Unlock()
	p.removeLocked(channel, conn)
	return n.down()
}

// Present implements scaler.Presence.
func (n *node) Present(ctx context.Context, channel string) ([]scaler.ClientInfo, error) {
	if err := n.presenceRead(ctx); err != nil {
		return nil, err
	}
	p := &n.s.presence
	p.mu.Lock()
	defer p.mu.Unlock()
	set := p.channels[channel]
	if set == nil {
		return nil, nil
	}
	out := make([]scaler.ClientInfo, 0, len(set.entries))
	for _, e := range set.entries {
		c := e.c
		c.Info = slices.Clone(c.Info)
		out = append(out, c)
	}
	return out, nil
}

// Counts implements scaler.Presence.
func (n *node) Counts(ctx context.Context, channel string) (scaler.PresenceCounts, error) {
	if err := n.presenceRead(ctx); err != nil {
		return scaler.PresenceCounts{}, err
	}
	p := &n.s.presence
	p.mu.Lock()
	defer p.mu.Unlock()
	set := p.channels[channel]
	if set == nil {
		return scaler.PresenceCounts{}, nil
	}
	return scaler.PresenceCounts{Clients: len(set.entries), Users: len(set.users)}, nil
}

// presenceCall admits a write: a crashed node makes none (a dead process
// calls nothing); a cut one records it and reports the outage.
func (n *node) presenceCall(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if n.isClosed() {
		return scaler.ErrClosed
	}
	if n.crashed.Load() {
		return n.down()
	}
	return nil
}

func (n *node) presenceRead(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if n.isClosed() {
		return scaler.ErrClosed
	}
	return n.down()
}

func (set *presentSet) unCount(user string) {
	if user == "" {
		return
	}
	if set.users[user]--; set.users[user] <= 0 {
		delete(set.users, user)
	}
}

// removeLocked deletes one entry; an emptied channel is forgotten.
func (p *presence) removeLocked(channel, conn string) (presentEntry, bool) {
	set := p.channels[channel]
	if set == nil {
		return presentEntry{}, false
	}
	e, ok := set.entries[conn]
	if !ok {
		return presentEntry{}, false
	}
	delete(set.entries, conn)
	set.unCount(e.c.User)
	if len(set.entries) == 0 {
		delete(p.channels, channel)
	}
	return e, true
}

// dropNode removes every entry n owns and returns them by channel. It scans
// all entries: it runs once per node, at Close or a crashed node's reap.
func (p *presence) dropNode(n *node) map[string][]scaler.ClientInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	if t := p.reapers[n]; t != nil {
		t.Stop()
		delete(p.reapers, n)
	}
	var gone map[string][]scaler.ClientInfo
	for name, set := range p.channels {
		for conn, e := range set.entries {
			if e.owner != n {
				continue
			}
			p.removeLocked(name, conn)
			if gone == nil {
				gone = make(map[string][]scaler.ClientInfo)
			}
			gone[name] = append(gone[name], e.c)
		}
	}
	return gone
}

// Crash stops a node as if its process died, for tests: from now on it
// receives nothing, its calls fail with scaler.ErrUnavailable (its
// presence writes are not recorded: a dead process makes none), Heal does
// not revive it, and a presence TTL later (WithPresenceTTL) its presence
// entries are removed and reported as gone, through
// scaler.PresenceHandler, to one live node. Its Close still works and
// must still be called. Crash reports whether the node exists.
func (s *Scaler) Crash(nodeID string) bool {
	s.mu.RLock()
	n := s.nodes[nodeID]
	s.mu.RUnlock()
	if n == nil || n.crashed.Swap(true) {
		return n != nil
	}
	n.cut.Store(true)
	p := &s.presence
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reapers[n] = time.AfterFunc(s.presenceTTL, func() { s.reap(n) })
	return true
}

// reap removes a crashed node's entries and reports them to a live node.
func (s *Scaler) reap(dead *node) {
	gone := s.presence.dropNode(dead)
	if len(gone) == 0 {
		return
	}
	witness := s.liveNode()
	if witness == nil {
		return
	}
	defer witness.leave()
	ph, ok := witness.h.(scaler.PresenceHandler)
	if !ok {
		return
	}
	names := make([]string, 0, len(gone))
	for name := range gone {
		names = append(names, name)
	}
	slices.Sort(names)
	ctx, cancel := context.WithTimeout(context.Background(), s.presenceTTL+10*time.Second)
	defer cancel()
	for _, name := range names {
		ph.HandleGone(ctx, name, gone[name])
	}
}

// liveNode returns a node neither crashed, cut nor closed (the one with
// the smallest id), entered: the caller must call leave.
func (s *Scaler) liveNode() *node {
	s.mu.RLock()
	ids := make([]string, 0, len(s.nodes))
	for id, n := range s.nodes {
		if !n.cut.Load() {
			ids = append(ids, id)
		}
	}
	slices.SortFunc(ids, strings.Compare)
	nodes := make([]*node, 0, len(ids))
	for _, id := range ids {
		nodes = append(nodes, s.nodes[id])
	}
	s.mu.RUnlock()
	for _, n := range nodes {
		if n.enter() {
			return n
		}
	}
	return nil
}

var _ scaler.Presence = (*node)(nil)
