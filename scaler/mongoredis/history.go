package mongoredis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/superscaled/sss/scaler"
)

// Redis is the sequencer: the publish script gets or creates each of a
// publication's streams' epoch, takes its next offset, appends to its
// bounded history and publishes the delivery, atomically. Redis runs
// scripts one at a time, so the deliveries of a stream leave Redis in
// offset order, for every node.
//
// What a publication costs Redis is what the whole cluster shares, so the
// script does the least that correctness allows: one call for all of a
// publication's streams (with a single Redis; Redis Cluster needs one per
// stream, as streams live in different slots), history trimmed by count on
// every append (XADD MAXLEN, one entry) and by age at most every history
// age / 64, reading the oldest entries only then.

// luaCommon is shared by both scripts. The history stream's entry ids are
// "<offset>-0", so offsets map to ids directly; field t is the Redis server
// time in ms (one clock for every node), p the publication body. The meta
// hash holds e (epoch), o (last offset) and a (when age was last trimmed).
const luaCommon = `
local function nowms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function idoff(id)
  return tonumber(string.match(id, '^(%d+)'))
end

-- getEpoch returns the stream's epoch, last offset and last age trim,
-- creating the epoch (and dropping any history left from an earlier one)
-- when there is none.
local function getEpoch(meta, hist, candidate, ttl)
  local m = redis.call('HMGET', meta, 'e', 'o', 'a')
  local epoch, last = m[1], tonumber(m[2])
  if not epoch then
    epoch, last = candidate, 0
    redis.call('DEL', hist)
    redis.call('HSET', meta, 'e', epoch, 'o', 0)
  end
  redis.call('PEXPIRE', meta, ttl)
  return epoch, last or 0, tonumber(m[3]) or 0
end

-- trimAge drops entries older than age ms, at most once per age / 64 (so
-- an entry outlives the age by that much at most). Entries are in time
-- order: it reads the oldest first, and stops at the first fresh one.
local function trimAge(meta, hist, now, age, trimmed)
  if age <= 0 or now - trimmed < math.max(age / 64, 50) then return end
  redis.call('HSET', meta, 'a', now)
  local cutoff = now - age
  while true do
    local batch = redis.call('XRANGE', hist, '-', '+', 'COUNT', 16)
    if #batch == 0 then return end
    for i = 1, #batch do
      if tonumber(batch[i][2][2]) >= cutoff then
        if i > 1 then redis.call('XTRIM', hist, 'MINID', batch[i][1]) end
        return
      end
    end
    redis.call('XTRIM', hist, 'MINID', string.format('%d-0', idoff(batch[#batch][1]) + 1))
  end
end
`

// publishScript publishes one publication to n streams. KEYS meta 1,
// history 1, ..., meta n, history n. ARGV body, epoch candidate, history
// size, history age ms, meta ttl ms, history ttl ms, publish command
// (PUBLISH, or SPUBLISH with Cluster: a stream's channel carries its keys'
// hash tag, so it is in the script's slot), channel 1, ..., channel n.
// A stream created now takes the candidate and its index as its epoch.
// Returns {Redis time in ms, offset 1, epoch 1, ..., offset n, epoch n}:
// where the publication went, for the archive.
var publishScript = redis.NewScript(luaCommon + `
local body, size, age = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = nowms()
local out = {now}
for i = 1, #KEYS / 2 do
  local meta, hist = KEYS[2 * i - 1], KEYS[2 * i]
  local epoch, last, trimmed = getEpoch(meta, hist, ARGV[2] .. string.format('%x', i), ARGV[5])
  local off = redis.call('HINCRBY', meta, 'o', 1)
  if size > 0 then
    redis.call('XADD', hist, 'MAXLEN', size, string.format('%d-0', off),
      't', string.format('%d', now), 'p', body)
    trimAge(meta, hist, now, age, trimmed)
    redis.call('PEXPIRE', hist, ARGV[6])
  end
  redis.call(ARGV[7], ARGV[7 + i], '\1' .. string.format('%d', off) .. '\n' .. epoch .. '\n' .. body)
  out[#out + 1] = off
  out[#out + 1] = epoch
end
return out
`)

// sinceScript: KEYS meta, history. ARGV after offset, count, epoch
// candidate, history age ms, meta ttl ms. Returns {epoch, last offset,
// first retained offset, id, body, id, body, ...}.
var sinceScript = redis.NewScript(luaCommon + `
local epoch, last, trimmed = getEpoch(KEYS[1], KEYS[2], ARGV[3], ARGV[5])
trimAge(KEYS[1], KEYS[2], nowms(), tonumber(ARGV[4]), trimmed)
local first = last + 1
local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #head > 0 then first = idoff(head[1][1]) end
local out = {epoch, string.format('%d', last), string.format('%d', first)}
local count = tonumber(ARGV[2])
if count > 0 then
  local from = string.format('%d-0', tonumber(ARGV[1]) + 1)
  for _, e in ipairs(redis.call('XRANGE', KEYS[2], from, '+', 'COUNT', count)) do
    out[#out + 1] = e[1]
    out[#out + 1] = e[2][4]
  end
end
return out
`)

func (s *Scaler) metaKey(stream string) string { return s.cfg.prefix + "{" + hashTag(stream) + "}:m" }
func (s *Scaler) histKey(stream string) string { return s.cfg.prefix + "{" + hashTag(stream) + "}:h" }

// streamChannel is the Redis channel of a stream's deliveries. It carries
// the same hash tag as the stream's keys: with Cluster it is a shard channel
// in the keys' slot.
func (s *Scaler) streamChannel(stream string) string {
	return s.cfg.prefix + "{" + hashTag(stream) + "}"
}

// nodeChannel is the Redis channel of a node's messages. With Cluster it is
// a shard channel hashed on the node id; "node:" before the brace keeps it
// apart from every stream channel ("<prefix>{...}").
func (s *Scaler) nodeChannel(id string) string {
	if s.cluster {
		return s.cfg.prefix + "node:{" + hashTag(id) + "}"
	}
	return s.cfg.prefix + "node:" + id
}

// publishCmd is the command that publishes deliveries.
func (s *Scaler) publishCmd() string {
	if s.cluster {
		return "SPUBLISH"
	}
	return "PUBLISH"
}

// publishRaw publishes without a script (tells).
func (s *Scaler) publishRaw(ctx context.Context, c redis.Cmdable, channel string, msg []byte) *redis.IntCmd {
	if s.cluster {
		return c.SPublish(ctx, channel, msg)
	}
	return c.Publish(ctx, channel, msg)
}

// newEpoch returns a random epoch candidate. It must come from here: Redis
// seeds Lua's random generator identically on every start.
func newEpoch() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// placed is where the publish script put a publication in one stream.
type placed struct {
	stream string
	offset uint64
	epoch  string
	at     int64 // Redis time, ms
}

// parsePlaced reads the publish script's reply for streams.
func parsePlaced(streams []string, c *redis.Cmd) ([]placed, error) {
	v, err := c.Slice()
	if err != nil {
		return nil, err
	}
	if len(v) != 1+2*len(streams) {
		return nil, fmt.Errorf("mongoredis: publish: unexpected reply of %d elements", len(v))
	}
	at, ok := v[0].(int64)
	if !ok {
		return nil, fmt.Errorf("mongoredis: publish: malformed reply %v", v)
	}
	out := make([]placed, len(streams))
	for i, st := range streams {
		off, ok1 := v[1+2*i].(int64)
		epoch, ok2 := v[2+2*i].(string)
		if !ok1 || !ok2 || off <= 0 || epoch == "" {
			return nil, fmt.Errorf("mongoredis: publish: malformed reply %v", v)
		}
		out[i] = placed{stream: st, offset: uint64(off), epoch: epoch, at: at}
	}
	return out, nil
}

// publish runs the publish script for the publication's streams (one call
// for all of them with a single Redis, one per stream pipelined with
// Cluster), or for a transient publication plain PUBLISHes. It returns the
// publication's body and, when it is not transient, where it went in each
// stream.
func (s *Scaler) publish(ctx context.Context, node string, pub *scaler.Publication) ([]byte, []placed, error) {
	streams := scaler.Streams(pub.Channel)
	body := appendBody(make([]byte, 0, 64+len(pub.Channel)+len(pub.Event)+len(pub.Data)), node, pub)
	if pub.Transient {
		frame := appendFrame(make([]byte, 0, len(body)+4), 0, "", body)
		if len(streams) == 1 {
			return body, nil, s.publishRaw(ctx, s.rdb, s.streamChannel(streams[0]), frame).Err()
		}
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, st := range streams {
				s.publishRaw(ctx, p, s.streamChannel(st), frame)
			}
			return nil
		})
		return body, nil, err
	}
	call := func(sts []string) ([]string, []any) {
		keys := make([]string, 0, 2*len(sts))
		args := []any{
			body, newEpoch(), s.cfg.historySize, s.cfg.historyAge.Milliseconds(),
			s.cfg.streamTTL.Milliseconds(), s.cfg.historyTTL().Milliseconds(), s.publishCmd(),
		}
		for _, st := range sts {
			keys = append(keys, s.metaKey(st), s.histKey(st))
			args = append(args, s.streamChannel(st))
		}
		return keys, args
	}
	if !s.cluster || len(streams) == 1 {
		// Run tries EVALSHA and falls back to EVAL when Redis lost the script.
		keys, args := call(streams)
		pls, err := parsePlaced(streams, publishScript.Run(ctx, s.rdb, keys, args...))
		return body, pls, err
	}
	cmds, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, st := range streams {
			keys, args := call([]string{st})
			publishScript.EvalSha(ctx, p, keys, args...)
		}
		return nil
	})
	if err != nil {
		// A pipeline cannot fall back by itself: rerun, with the script's
		// body, the streams whose EVALSHA found no script. Nothing ran for
		// those, so their order is kept.
		var retry []int
		for i, c := range cmds {
			if cerr := c.Err(); cerr != nil {
				if !redis.HasErrorPrefix(cerr, "NOSCRIPT") {
					return body, nil, cerr
				}
				retry = append(retry, i)
			}
		}
		again, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, i := range retry {
				keys, args := call(streams[i : i+1])
				publishScript.Eval(ctx, p, keys, args...)
			}
			return nil
		})
		if err != nil {
			return body, nil, err
		}
		for k, i := range retry {
			cmds[i] = again[k]
		}
	}
	out := make([]placed, 0, len(streams))
	for i, c := range cmds {
		rc, ok := c.(*redis.Cmd)
		if !ok {
			return body, nil, fmt.Errorf("mongoredis: publish: unexpected pipeline reply %T", c)
		}
		pl, err := parsePlaced(streams[i:i+1], rc)
		if err != nil {
			return body, nil, err
		}
		out = append(out, pl...)
	}
	return body, out, nil
}

// since implements scaler.History.
func (s *Scaler) since(ctx context.Context, stream string, pos scaler.Position, limit int) ([]scaler.Entry, scaler.Position, error) {
	if limit < 0 {
		limit = 0
	}
	after := pos.Offset
	res, err := sinceScript.Run(ctx, s.rdb, []string{s.metaKey(stream), s.histKey(stream)},
		after, limit, newEpoch(), s.cfg.historyAge.Milliseconds(), s.cfg.streamTTL.Milliseconds()).Slice()
	if err != nil {
		return nil, scaler.Position{}, err
	}
	if len(res) < 3 || len(res)%2 != 1 {
		return nil, scaler.Position{}, fmt.Errorf("mongoredis: since: unexpected reply of %d elements", len(res))
	}
	epoch, _ := res[0].(string)
	last, err1 := strconv.ParseUint(fmt.Sprint(res[1]), 10, 64)
	first, err2 := strconv.ParseUint(fmt.Sprint(res[2]), 10, 64)
	if epoch == "" || err1 != nil || err2 != nil {
		return nil, scaler.Position{}, fmt.Errorf("mongoredis: since: malformed reply %v", res[:3])
	}
	top := scaler.Position{Offset: last, Epoch: epoch}
	trimmed := false
	if pos.Epoch != "" {
		switch {
		case pos.Epoch != epoch:
			return nil, top, fmt.Errorf("mongoredis: stream %q: epoch %q is not the current %q: %w", stream, pos.Epoch, epoch, scaler.ErrPositionLost)
		case pos.Offset > last:
			return nil, top, fmt.Errorf("mongoredis: stream %q: offset %d is beyond the last %d: %w", stream, pos.Offset, last, scaler.ErrPositionLost)
		case pos.Offset < last && pos.Offset+1 < first:
			if s.store == nil || !s.cfg.archive() {
				return nil, top, fmt.Errorf("mongoredis: stream %q: publications %d to %d were trimmed: %w", stream, pos.Offset+1, first-1, scaler.ErrPositionLost)
			}
			trimmed = true
		}
	}
	entries := make([]scaler.Entry, 0, (len(res)-3)/2)
	for i := 3; i+1 < len(res); i += 2 {
		id, _ := res[i].(string)
		raw, _ := res[i+1].(string)
		off, err := strconv.ParseUint(strings.TrimSuffix(id, "-0"), 10, 64)
		if err != nil {
			return nil, top, fmt.Errorf("mongoredis: since: malformed entry id %q", id)
		}
		_, pub, err := parseBody([]byte(raw))
		if err != nil {
			return nil, top, fmt.Errorf("mongoredis: since: entry %d of %q: %w", off, stream, err)
		}
		entries = append(entries, scaler.Entry{Offset: off, Pub: pub})
	}
	if !trimmed {
		return entries, top, nil
	}
	// Redis no longer has pos.Offset+1 .. first-1: the archive must.
	arch, err := s.store.archived(ctx, stream, epoch, pos.Offset, first-1, limit)
	if err != nil {
		return nil, top, err
	}
	if limit == 0 {
		return nil, top, nil
	}
	if len(arch) < limit {
		// The archive reached first-1 (archived checked it): go on with
		// what Redis retains, which starts at first.
		if len(entries) > 0 && entries[0].Offset != first {
			return nil, top, fmt.Errorf("mongoredis: stream %q: history starts at %d, not %d: %w", stream, entries[0].Offset, first, scaler.ErrPositionLost)
		}
		arch = append(arch, entries[:min(len(entries), limit-len(arch))]...)
	}
	return arch, top, nil
}
