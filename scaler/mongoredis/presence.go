package mongoredis

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/superscaled/sss/scaler"
)

// Presence lives in Redis, next to each channel's streams (package doc,
// "Presence"). Every entry is owned by a node incarnation, "<node id>#<n>":
// the node's heartbeat keeps its owner alive in a sorted set scored by
// expiry (Redis time), and any node reaps the entries of owners whose
// score passed, reporting them gone. A node that finds it was reaped (a
// partition, a pause longer than the TTL) takes a new incarnation and
// writes its entries again under it, so that a reaper still busy with the
// old one never removes them.

// luaPresence decodes an entry: "<len>:<owner><len>:<user><len>:<session>"
// then the info JSON.
const luaPresence = `
local function field(v, at)
  local colon = string.find(v, ':', at, true)
  local n = tonumber(string.sub(v, at, colon - 1))
  return string.sub(v, colon + 1, colon + n), colon + n + 1
end
local function ownerUser(v)
  local owner, at = field(v, 1)
  local user = field(v, at)
  return owner, user
end
local function uncount(users, user)
  if user ~= '' and redis.call('HINCRBY', users, user, -1) <= 0 then
    redis.call('HDEL', users, user)
  end
end
`

// presenceJoinScript: KEYS entries hash, users hash. ARGV conn, entry,
// user. Replaces the connection's entry, keeping the user counts.
var presenceJoinScript = redis.NewScript(luaPresence + `
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local _, user = ownerUser(old)
  uncount(KEYS[2], user)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('HINCRBY', KEYS[2], ARGV[3], 1) end
return 1
`)

// presenceLeaveScript: KEYS entries hash, users hash. ARGV conn, owner.
// Removes the connection's entry if that owner holds it; returns the entry
// removed, or nil.
var presenceLeaveScript = redis.NewScript(luaPresence + `
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return false end
local owner, user = ownerUser(v)
if owner ~= ARGV[2] then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
uncount(KEYS[2], user)
return v
`)

// heartbeatScript: KEYS owners, reaping. ARGV owner, ttl ms. Returns -1
// when a reaper claimed the owner (the node must take a new incarnation),
// 1 when the owner was not there (its entries may be gone: write them
// again), 0 otherwise.
var heartbeatScript = redis.NewScript(`
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return -1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
`)

// claimScript: KEYS owners, reaping. ARGV lease ms, max. Moves owners whose
// heartbeat expired to reaping with a lease, and takes over the owners
// whose reaper's lease expired (it died midway); returns them.
var claimScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease, max = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for _, key in ipairs({KEYS[1], KEYS[2]}) do
  for _, owner in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, max)) do
    redis.call('ZREM', KEYS[1], owner)
    redis.call('ZADD', KEYS[2], now + lease, owner)
    out[#out + 1] = owner
  end
end
return out
`)

func (s *Scaler) presenceKey(channel string) string {
	return s.cfg.prefix + "{" + hashTag(channel) + "}:p"
}
func (s *Scaler) presenceUsersKey(channel string) string {
	return s.cfg.prefix + "{" + hashTag(channel) + "}:pu"
}
func (s *Scaler) ownerKey(owner string) string { return s.cfg.prefix + "po:{" + hashTag(owner) + "}" }

// The owners' sorted sets share a hash tag, so that one script uses both
// with Redis Cluster.
func (s *Scaler) ownersKey() string  { return s.cfg.prefix + "{$presence}:owners" }
func (s *Scaler) reapingKey() string { return s.cfg.prefix + "{$presence}:reaping" }

// presenceMember names an entry in its owner's set.
func presenceMember(channel, conn string) string {
	return strconv.Itoa(len(channel)) + ":" + channel + conn
}

func parseMember(m string) (channel, conn string, ok bool) {
	i := strings.IndexByte(m, ':')
	if i < 0 {
		return "", "", false
	}
	n, err := strconv.Atoi(m[:i])
	if err != nil || n < 0 || i+1+n > len(m) {
		return "", "", false
	}
	return m[i+1 : i+1+n], m[i+1+n:], true
}

func appendField(b []byte, s string) []byte {
	b = strconv.AppendInt(b, int64(len(s)), 10)
	b = append(b, ':')
	return append(b, s...)
}

func encodeEntry(owner string, c scaler.ClientInfo) string {
	b := make([]byte, 0, 16+len(owner)+len(c.User)+len(c.Session)+len(c.Info))
	b = appendField(b, owner)
	b = appendField(b, c.User)
	b = appendField(b, c.Session)
	return string(append(b, c.Info...))
}

func decodeEntry(conn, v string) (scaler.ClientInfo, bool) {
	c := scaler.ClientInfo{Conn: conn}
	var f [3]string
	for i := range f {
		j := strings.IndexByte(v, ':')
		if j < 0 {
			return c, false
		}
		n, err := strconv.Atoi(v[:j])
		if err != nil || n < 0 || j+1+n > len(v) {
			return c, false
		}
		f[i], v = v[j+1:j+1+n], v[j+1+n:]
	}
	c.User, c.Session = f[1], f[2]
	if v != "" {
		c.Info = []byte(v)
	}
	return c, true
}

// presence is a node's side of presence: its entries (to write them again
// when Redis lost them) and its incarnation.
type presence struct {
	// gen is held for reading across a Join's or Leave's Redis calls, and
	// for writing while the incarnation changes, so that no entry is
	// written under an owner being reaped.
	gen   sync.RWMutex
	owner string
	inc   int

	mu      sync.Mutex
	entries map[string]map[string]scaler.ClientInfo // channel → conn → entry
	n       int                                     // entries in all
	dirty   bool                                    // a write failed: reconcile on the next beat

	crashed atomic.Bool   // Crash: Close leaves the entries behind
	done    chan struct{} // closed when the heartbeat stopped (Close ends it)
}

// startPresence beats once (so that the node's entries can be reaped
// should it die at once) and starts the heartbeat. Redis is reachable: the
// node just joined.
func (n *node) startPresence(ctx context.Context) error {
	p := &n.presence
	p.owner = n.id + "#0"
	p.entries = make(map[string]map[string]scaler.ClientInfo)
	p.done = make(chan struct{})
	if _, err := n.beat(ctx); err != nil {
		close(p.done)
		return err
	}
	go n.heartbeat()
	return nil
}

// beat refreshes the owner's expiry; it reports what heartbeatScript says.
func (n *node) beat(ctx context.Context) (int64, error) {
	p := &n.presence
	p.gen.RLock()
	owner := p.owner
	p.gen.RUnlock()
	s := n.s
	return heartbeatScript.Run(ctx, s.rdb, []string{s.ownersKey(), s.reapingKey()}, owner, s.cfg.presenceTTL.Milliseconds()).Int64()
}

// heartbeat runs every third of the presence TTL (with jitter): it keeps
// the node alive, writes its entries again when Redis lost them, and reaps
// dead owners.
func (n *node) heartbeat() {
	p := &n.presence
	defer close(p.done)
	ctx := n.ctx
	period := n.s.cfg.presenceTTL / 3
	t := time.NewTimer(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		t.Reset(period - period/8 + rand.N(period/4+1))
		cctx, ccancel := n.s.callCtx(ctx)
		n.tick(cctx)
		ccancel()
		n.reapDead(ctx)
	}
}

// tick beats and repairs what the beat says is missing.
func (n *node) tick(ctx context.Context) {
	p := &n.presence
	r, err := n.beat(ctx)
	if err != nil {
		p.mu.Lock()
		p.dirty = true
		p.mu.Unlock()
		n.s.cfg.logger.Debug("mongoredis: presence heartbeat failed", "node", n.id, "err", err)
		return
	}
	p.mu.Lock()
	dirty := p.dirty || r != 0
	p.dirty = false
	p.mu.Unlock()
	if r < 0 {
		p.gen.Lock()
		p.inc++
		p.owner = n.id + "#" + strconv.Itoa(p.inc)
		p.gen.Unlock()
		n.s.cfg.logger.Warn("mongoredis: this node's presence was reaped (it missed heartbeats); writing it again", "node", n.id)
		if _, err := n.beat(ctx); err != nil {
			n.markDirty()
			return
		}
	}
	if dirty {
		if err := n.reconcile(ctx); err != nil {
			n.markDirty()
			n.s.cfg.logger.Debug("mongoredis: presence reconcile failed", "node", n.id, "err", err)
		}
	}
}

func (n *node) markDirty() {
	n.presence.mu.Lock()
	n.presence.dirty = true
	n.presence.mu.Unlock()
}

// reconcile makes Redis hold exactly the node's entries: it writes every
// one again, then removes those its owner set lists that the node no
// longer has (leaves that failed).
func (n *node) reconcile(ctx context.Context) error {
	p := &n.presence
	p.gen.RLock()
	defer p.gen.RUnlock()
	p.mu.Lock()
	type item struct {
		channel string
		c       scaler.ClientInfo
	}
	all := make([]item, 0, p.n)
	for ch, m := range p.entries {
		for _, c := range m {
			all = append(all, item{ch, c})
		}
	}
	p.mu.Unlock()
	s := n.s
	for len(all) > 0 {
		batch := all[:min(len(all), presenceBatch)]
		all = all[len(batch):]
		calls := make([]scriptCall, len(batch))
		for i, it := range batch {
			calls[i] = n.joinCall(it.channel, it.c)
		}
		if _, err := s.evalAll(ctx, presenceJoinScript, calls, func(pp redis.Pipeliner) {
			for _, it := range batch {
				pp.SAdd(ctx, s.ownerKey(p.owner), presenceMember(it.channel, it.c.Conn))
			}
		}); err != nil {
			return err
		}
	}
	var cursor uint64
	for {
		members, next, err := s.rdb.SScan(ctx, s.ownerKey(p.owner), cursor, "", presenceBatch).Result()
		if err != nil {
			return err
		}
		var calls []scriptCall
		var stale []any
		p.mu.Lock()
		for _, m := range members {
			ch, conn, ok := parseMember(m)
			if _, have := p.entries[ch][conn]; ok && have {
				continue
			}
			stale = append(stale, m)
			if ok {
				calls = append(calls, scriptCall{keys: []string{s.presenceKey(ch), s.presenceUsersKey(ch)}, args: []any{conn, p.owner}})
			}
		}
		p.mu.Unlock()
		if len(stale) > 0 {
			if _, err := s.evalAll(ctx, presenceLeaveScript, calls, func(pp redis.Pipeliner) {
				pp.SRem(ctx, s.ownerKey(p.owner), stale...)
			}); err != nil {
				return err
			}
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
}

// presenceBatch bounds the commands of one pipeline.
const presenceBatch = 500

func (n *node) joinCall(channel string, c scaler.ClientInfo) scriptCall {
	s := n.s
	return scriptCall{
		keys: []string{s.presenceKey(channel), s.presenceUsersKey(channel)},
		args: []any{c.Conn, encodeEntry(n.presence.owner, c), c.User},
	}
}

// reapDead claims the owners whose heartbeat expired and reaps them.
func (n *node) reapDead(ctx context.Context) {
	s := n.s
	cctx, cancel := s.callCtx(ctx)
	owners, err := claimScript.Run(cctx, s.rdb, []string{s.ownersKey(), s.reapingKey()}, s.cfg.presenceTTL.Milliseconds(), 16).StringSlice()
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			s.cfg.logger.Debug("mongoredis: presence claim failed", "node", n.id, "err", err)
		}
		return
	}
	for _, owner := range owners {
		if err := n.reap(ctx, owner); err != nil && ctx.Err() == nil {
			// Its lease expires and a reaper takes it over.
			s.cfg.logger.Warn("mongoredis: cannot reap a dead node's presence yet", "owner", owner, "err", err)
		}
	}
}

// reap removes a dead owner's entries, a batch at a time, and reports
// each batch to the handler. An entry removed is reported by the reaper
// that removed it, once.
func (n *node) reap(ctx context.Context, owner string) error {
	s := n.s
	ph, _ := n.h.(scaler.PresenceHandler)
	key := s.ownerKey(owner)
	var cursor uint64
	for {
		cctx, cancel := s.callCtx(ctx)
		members, next, err := s.rdb.SScan(cctx, key, cursor, "", presenceBatch).Result()
		if err != nil {
			cancel()
			return err
		}
		calls := make([]scriptCall, 0, len(members))
		var chans []string
		for _, m := range members {
			if ch, conn, ok := parseMember(m); ok {
				calls = append(calls, scriptCall{keys: []string{s.presenceKey(ch), s.presenceUsersKey(ch)}, args: []any{conn, owner}})
				chans = append(chans, ch)
			}
		}
		cmds, err := s.evalAll(cctx, presenceLeaveScript, calls, nil)
		cancel()
		if err != nil {
			return err
		}
		gone := make(map[string][]scaler.ClientInfo)
		var order []string
		for i, c := range cmds {
			v, err := c.Text()
			if err != nil { // nil: not this owner's any more, or gone already
				continue
			}
			conn := calls[i].args[0].(string)
			if ci, ok := decodeEntry(conn, v); ok {
				if _, seen := gone[chans[i]]; !seen {
					order = append(order, chans[i])
				}
				gone[chans[i]] = append(gone[chans[i]], ci)
			}
		}
		if ph != nil {
			for _, ch := range order {
				ph.HandleGone(ctx, ch, gone[ch])
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	cctx, cancel := s.callCtx(ctx)
	defer cancel()
	if err := s.rdb.Del(cctx, key).Err(); err != nil {
		return err
	}
	return s.rdb.ZRem(cctx, s.reapingKey(), owner).Err()
}

// Join implements scaler.Presence: one pipelined round trip, O(1).
func (n *node) Join(ctx context.Context, channel string, c scaler.ClientInfo) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if n.isClosed() {
		return scaler.ErrClosed
	}
	p := &n.presence
	p.mu.Lock()
	m := p.entries[channel]
	if m == nil {
		m = make(map[string]scaler.ClientInfo)
		p.entries[channel] = m
	}
	if _, had := m[c.Conn]; !had {
		p.n++
	}
	c.Info = append([]byte(nil), c.Info...)
	m[c.Conn] = c
	p.mu.Unlock()
	p.gen.RLock()
	defer p.gen.RUnlock()
	s := n.s
	cctx, cancel := s.callCtx(ctx)
	defer cancel()
	_, err := s.evalAll(cctx, presenceJoinScript, []scriptCall{n.joinCall(channel, c)}, func(pp redis.Pipeliner) {
		pp.SAdd(cctx, s.ownerKey(p.owner), presenceMember(channel, c.Conn))
	})
	if err != nil {
		n.markDirty()
		return s.redisErr(ctx, "presence join "+strconv.Quote(channel), err)
	}
	return nil
}

// Leave implements scaler.Presence: one pipelined round trip, O(1).
func (n *node) Leave(ctx context.Context, channel, conn string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if n.isClosed() {
		return scaler.ErrClosed
	}
	p := &n.presence
	p.mu.Lock()
	if _, had := p.entries[channel][conn]; had {
		delete(p.entries[channel], conn)
		if len(p.entries[channel]) == 0 {
			delete(p.entries, channel)
		}
		p.n--
	}
	p.mu.Unlock()
	p.gen.RLock()
	defer p.gen.RUnlock()
	s := n.s
	cctx, cancel := s.callCtx(ctx)
	defer cancel()
	call := scriptCall{keys: []string{s.presenceKey(channel), s.presenceUsersKey(channel)}, args: []any{conn, p.owner}}
	_, err := s.evalAll(cctx, presenceLeaveScript, []scriptCall{call}, func(pp redis.Pipeliner) {
		pp.SRem(cctx, s.ownerKey(p.owner), presenceMember(channel, conn))
	})
	if err != nil {
		n.markDirty()
		return s.redisErr(ctx, "presence leave "+strconv.Quote(channel), err)
	}
	return nil
}

// Present implements scaler.Presence: HGETALL, O(n).
func (n *node) Present(ctx context.Context, channel string) ([]scaler.ClientInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if n.isClosed() {
		return nil, scaler.ErrClosed
	}
	cctx, cancel := n.s.callCtx(ctx)
	defer cancel()
	all, err := n.s.rdb.HGetAll(cctx, n.s.presenceKey(channel)).Result()
	if err != nil {
		return nil, n.s.redisErr(ctx, "presence of "+strconv.Quote(channel), err)
	}
	out := make([]scaler.ClientInfo, 0, len(all))
	for conn, v := range all {
		if c, ok := decodeEntry(conn, v); ok {
			out = append(out, c)
		}
	}
	return out, nil
}

// Counts implements scaler.Presence: two HLENs, O(1).
func (n *node) Counts(ctx context.Context, channel string) (scaler.PresenceCounts, error) {
	if err := ctx.Err(); err != nil {
		return scaler.PresenceCounts{}, err
	}
	if n.isClosed() {
		return scaler.PresenceCounts{}, scaler.ErrClosed
	}
	cctx, cancel := n.s.callCtx(ctx)
	defer cancel()
	var clients, users *redis.IntCmd
	n.s.rdb.Pipelined(cctx, func(p redis.Pipeliner) error {
		clients = p.HLen(cctx, n.s.presenceKey(channel))
		users = p.HLen(cctx, n.s.presenceUsersKey(channel))
		return nil
	})
	if err := errors.Join(clients.Err(), users.Err()); err != nil {
		return scaler.PresenceCounts{}, n.s.redisErr(ctx, "presence counts of "+strconv.Quote(channel), err)
	}
	return scaler.PresenceCounts{Clients: int(clients.Val()), Users: int(users.Val())}, nil
}

// closePresence stops the heartbeat and, unless the node crashed, removes
// its entries and its owner (best effort: if Redis cannot be reached, the
// other nodes reap them after the TTL, reporting them gone).
func (n *node) closePresence() {
	p := &n.presence
	if p.done == nil {
		return
	}
	<-p.done // n.ctx is cancelled
	if p.crashed.Load() {
		return
	}
	s := n.s
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.callTimeout)
	defer cancel()
	p.mu.Lock()
	var calls []scriptCall
	for ch, m := range p.entries {
		for conn := range m {
			calls = append(calls, scriptCall{keys: []string{s.presenceKey(ch), s.presenceUsersKey(ch)}, args: []any{conn, p.owner}})
		}
	}
	p.entries, p.n = nil, 0
	p.mu.Unlock()
	for len(calls) > 0 {
		batch := calls[:min(len(calls), presenceBatch)]
		calls = calls[len(batch):]
		if _, err := s.evalAll(ctx, presenceLeaveScript, batch, nil); err != nil {
			s.cfg.logger.Warn("mongoredis: cannot remove this node's presence; others reap it after the presence TTL", "node", n.id, "err", err)
			return
		}
	}
	s.rdb.Pipelined(ctx, func(pp redis.Pipeliner) error {
		pp.Del(ctx, s.ownerKey(p.owner))
		return nil
	})
	s.rdb.ZRem(ctx, s.ownersKey(), p.owner)
}

// Crash stops a node as if its process died, for tests of node death:
// it closes without removing its presence entries or its heartbeat, which
// expires, so that the other nodes reap its entries within the presence
// TTL and report them gone. It reports whether the node was joined.
func (s *Scaler) Crash(nodeID string) bool {
	s.mu.Lock()
	n := s.nodes[nodeID]
	s.mu.Unlock()
	if n == nil {
		return false
	}
	n.presence.crashed.Store(true)
	n.Close()
	return true
}

// scriptCall is one run of a script in a pipeline.
type scriptCall struct {
	keys []string
	args []any
}

// evalAll runs calls of sc in one pipeline with the commands extra adds,
// and runs again with the script's body those Redis did not have loaded
// (NOSCRIPT: a pipeline cannot fall back by itself). A script that
// returns nil is not an error.
func (s *Scaler) evalAll(ctx context.Context, sc *redis.Script, calls []scriptCall, extra func(redis.Pipeliner)) ([]*redis.Cmd, error) {
	cmds := make([]*redis.Cmd, len(calls))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, c := range calls {
			cmds[i] = sc.EvalSha(ctx, p, c.keys, c.args...)
		}
		if extra != nil {
			extra(p)
		}
		return nil
	})
	if err == nil || errors.Is(err, redis.Nil) {
		return cmds, nil
	}
	var retry []int
	for i, c := range cmds {
		switch cerr := c.Err(); {
		case cerr == nil, errors.Is(cerr, redis.Nil):
		case redis.HasErrorPrefix(cerr, "NOSCRIPT"):
			retry = append(retry, i)
		default:
			return nil, cerr
		}
	}
	if len(retry) == 0 {
		return nil, err // one of extra's commands failed
	}
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, i := range retry {
			cmds[i] = sc.Eval(ctx, p, calls[i].keys, calls[i].args...)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	return cmds, nil
}

var _ scaler.Presence = (*node)(nil)
