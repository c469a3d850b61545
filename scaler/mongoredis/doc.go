// Package mongoredis is a scaler.Scaler on Redis and MongoDB: Redis carries
// publications between server instances, numbers them and keeps a bounded
// history per stream; MongoDB persists each session's subscriptions and,
// optionally (WithArchive), an archive of the history that outlives Redis'.
//
// # Choosing it
//
// Use it when an application runs several sss.Server instances:
//
//	rdb := redis.NewClient(&redis.Options{Addr: "redis:6379"}) // or a failover or cluster client
//	mc, _ := mongo.Connect(options.Client().ApplyURI("mongodb://mongo:27017"))
//	sc, err := mongoredis.New(rdb, mc.Database("app"), mongoredis.WithHistory(500, 10*time.Minute))
//	if err != nil { ... }
//	defer sc.Close()
//	srv, err := sss.New(sss.WithScaler(sc))
//
// or let Dial create (and Close close) both clients:
//
//	sc, err := mongoredis.Dial(ctx, "redis://redis:6379/0", "mongodb://mongo:27017", "app")
//
// Each server joins as its own node; one Scaler may also be shared by
// several servers in one process. The nodes' Node values implement
// scaler.Broker, scaler.History, scaler.Presence and, when New got a
// database, scaler.SessionStore and scaler.PositionUpdater. Redis 6.2 or later is required (Redis 7 is what the
// tests run); any server speaking the MongoDB wire protocol with plain CRUD,
// upserts and unique compound indexes will do (MongoDB, FerretDB): no
// transactions, TTL indexes or change streams are used.
//
// # Redis: keys and channels
//
// All names start with the prefix (WithPrefix, default "sss:"). A stream's
// names carry its name as a Redis Cluster hash tag, {stream}, with '%' and
// '}' escaped as %25 and %7D, so a stream's keys live in one slot:
//
//	<prefix>{<stream>}:m   hash {e: epoch, o: last offset, a: when age was
//	                       last trimmed (Redis time, ms)}; expires after the
//	                       stream TTL (WithStreamTTL, default 24h) without a
//	                       publication or a Since call
//	<prefix>{<stream>}:h   Redis stream, the history: entry id "<offset>-0",
//	                       fields t (Redis time, ms) and p (the publication);
//	                       at most the history size (XADD MAXLEN), none older
//	                       than the history age (WithHistory, default 1000
//	                       entries and 5m) by more than age/64; the key
//	                       expires with its newest entry
//	<prefix>{<stream>}     pub/sub channel of the stream's deliveries
//	<prefix>node:<id>      pub/sub channel of node <id>'s messages (Send);
//	                       with Redis Cluster <prefix>node:{<id>} (id escaped
//	                       like a stream name), a shard channel hashed on the
//	                       id, which no stream channel can equal
//
// A publication on "a.b.c" runs one Lua script for its three streams ("a",
// "a.b", "a.b.c"); with Redis Cluster, whose streams live in different
// slots, one per stream, pipelined. For each stream the script gets or
// creates the stream's epoch (a random id from the publishing node, set
// only if absent), increments its offset, appends to the history, trims it
// by count, and publishes the delivery — stream offset, epoch, publishing
// node and the publication itself, never a reference to read back. Redis
// runs scripts one at a time, so every node receives a stream's deliveries
// in offset order; a publisher's own node receives them through Redis too,
// which keeps its own publications in their place in that order. A
// transient publication is published directly: no offset, no history.
//
// # What a publication costs Redis
//
// Redis is the resource every instance shares, so the script does only
// what correctness needs: per stream, a few O(1) hash and key operations, an
// XADD that trims one entry by count, one PUBLISH, and the age trim only
// every history age / 64 (reading the oldest entries then, 16 at a time,
// until a fresh one). Measured by BenchmarkRedisPublishCost
// (integration/), Redis 7.0 on a 2-core machine, history of 1000 entries
// and 5 minutes, a 230-byte publication: about 20 µs of Redis CPU for a
// flat channel and 40 µs for a channel three levels deep (three streams),
// where one script per stream that trimmed by age on every publication
// took 150 and 440 µs. Each subscribed node adds the cost of delivering the
// PUBLISH to it.
//
// With a single Redis or Sentinel, deliveries and node messages use plain
// PUBLISH/SUBSCRIBE. Each node holds one pub/sub connection (a go-redis
// PubSub) subscribed to its message channel and to the channels of the
// streams it is interested in, and one goroutine reading it and calling the
// Handler in order. Subscribe returns once Redis has registered the channel
// (a PING after the SUBSCRIBE comes back).
//
// With a *redis.ClusterClient, sharded pub/sub is used, so a publication is
// sent only to the shard owning its channel's slot instead of being
// broadcast over the cluster bus to every node: the publish script
// SPUBLISHes on the stream's channel (which carries the hash tag of the
// script's keys, so it is in the script's slot, as Redis 7 requires), tells
// and Send use SPUBLISH, and nodes SSUBSCRIBE. A shard channel can only be
// subscribed on the master owning its slot, and a go-redis PubSub talks to
// one cluster node, so each node keeps one PubSub per master ("shard")
// holding the channels whose slots that master owns (as resolved by
// go-redis' ClusterClient.MasterForKey, the same slot function its PubSub
// uses to pick a node), each read by its own goroutine. All of a node's
// goroutines call the Handler under one lock, so calls are never
// concurrent; a stream's channel lives on one shard, whose connection keeps
// Redis' order. Subscribe returns once the SSUBSCRIBE is registered (a PING
// on the same shard connection comes back). Topology changes: when a shard
// connection fails — MOVED in reply to SSUBSCRIBE, a broken link, or the
// "sunsubscribe" Redis pushes when a slot migrates away — the whole shard is
// closed and never reused, and a per-node repair goroutine asks go-redis to
// reload the cluster state, resolves the owners of its channels again and
// subscribes them on the right shards (retrying with backoff, up to 2s). A
// shard only delivers messages of channels it still carries, so a stream
// that moved never gets an old shard's message after a new one's: order is
// kept, and deliveries published while a channel was between shards are
// lost for the node, which sees the jump in offsets and fills it from
// Since. A Subscribe whose shard failed before confirming returns an error
// wrapping scaler.ErrUnavailable; the interest is kept and subscribed by the
// repair. A ClusterClient with ReadOnly (or RouteByLatency/RouteRandomly)
// makes go-redis subscribe on replicas of the shard; that works but is not
// covered by the tests.
//
// Send publishes on the target's node channel. (S)PUBLISH returns how many
// connections received it, so a Send to a node that is not attached fails
// with scaler.ErrUnknownNode. With Cluster, SPUBLISH counts the subscribers
// of the master owning the node channel's slot, where nodes subscribe it;
// with a ReadOnly ClusterClient they subscribe on replicas, which the count
// misses, so there such a Send returns nil. A node whose channel is being
// moved between shards may briefly be reported unknown.
//
// # Presence
//
// The nodes implement scaler.Presence in Redis. A channel's entries live in
// its slot, beside its streams:
//
//	<prefix>{<channel>}:p    hash, connection id → entry: its owner, user,
//	                         session and info
//	<prefix>{<channel>}:pu   hash, user id → its entries on the channel
//	<prefix>po:{<owner>}     set of the owner's entries ("<len>:<channel>
//	                         <connection id>"), to find them when it dies
//	<prefix>{$presence}:owners   sorted set, owner → heartbeat expiry
//	                             (Redis time, ms)
//	<prefix>{$presence}:reaping  sorted set, owner being reaped → lease
//	                             expiry
//
// An owner is a node incarnation, "<node id>#<n>". Costs: Join and Leave
// are one pipelined round trip, a script of O(1) hash operations plus an
// SADD or SREM, whatever the channel's size; Counts is two HLENs; Present
// is one HGETALL, O(n). A heartbeat every third of the presence TTL
// (WithPresenceTTL, default 30s), with jitter, is one ZADD per node:
// its cost does not grow with the entries either. BenchmarkRedisPresenceCost
// (integration/) measures the Redis CPU of a join plus a leave in a channel
// that holds 0, 10,000 and 40,000 entries: about 30–45, 65 and 85 µs on
// a loaded 2-core machine, flat within its noise (not proportional to the
// entries).
//
// Every node, on each heartbeat, also claims (one script, atomically, so
// one claimant per owner) the owners whose expiry passed, moving them to
// reaping with a lease of one TTL, and reaps them: it scans the owner's
// set 500 at a time, removes each entry with a script that checks the
// owner, and reports the removed entries to its Handler
// (scaler.PresenceHandler.HandleGone), which announces the clients gone.
// An entry is removed once, so it is reported once; a reaper that dies
// midway leaves its lease to expire and another reaper finishes. The
// entries of a node that died therefore disappear between the TTL and 4/3
// of it after its last heartbeat (plus the reaping's own time).
//
// A node keeps its own entries in memory. When a heartbeat finds its owner
// missing (Redis restarted empty, failed over) it writes them all again;
// when a write failed (Redis unreachable: Join and Leave record the change
// locally and return an error wrapping scaler.ErrUnavailable) it
// reconciles them with its owner set on the next heartbeat that gets
// through. A node cut off for longer than the TTL is taken for dead: its
// clients are reported gone. When it is back, it finds itself claimed,
// takes a new incarnation and writes its entries again under it (so that
// the reaper, which only removes entries of the old owner, cannot remove
// them); the other clients then see those clients leave and stay present
// without a new join event. Close removes the node's entries and owner;
// Scaler.Crash, for tests, closes a node as if its process died, leaving
// them to be reaped.
//
// # Epochs and history
//
// A stream's epoch changes whenever its metadata is lost: it expired
// (WithStreamTTL), or Redis restarted empty. History.Since then reports
// scaler.ErrPositionLost for positions in the old epoch. A stream nobody
// published to gets an epoch at its first Since, and keeps it for the
// stream TTL. What Redis cannot tell apart is metadata brought back older
// than what clients saw, with the same epoch: a restart from an RDB
// snapshot or an AOF not fsynced on every write, or a failover to a replica
// that lagged (replication is asynchronous). Offsets are then reused. Run
// Redis without persistence (or with appendfsync always), and flush it on
// failover, if clients must never see that.
//
// By default the history lives only in Redis: catch-up after a reconnect
// needs seconds to minutes of history, which Redis holds cheaply. An
// application that needs positions older than that can opt into an archive
// in MongoDB (below).
//
// # The history archive (WithArchive)
//
// WithArchive(maxAge, maxPerStream), off by default and only with a
// database, keeps a write-behind copy of every stream's history in MongoDB.
// Redis stays the sequencer: the publish script also returns each stream's
// offset, epoch and the Redis time, and once it has, the publishing node
// inserts one document per stream into <cp>history (a duplicate key is
// ignored). The write is best effort: the publication has been delivered,
// so a failed insert is logged and counted (Scaler.ArchiveFailures) but
// Publish still returns nil; after a failure, archive writes are skipped
// (and counted) for a second, so that an unreachable MongoDB does not make
// every Publish wait for its timeout. The insert runs after Redis answered
// and is not cancelled with the caller's context, but a publisher that dies
// between the two, or a Publish that fails midway through a hierarchical
// channel's streams, leaves a hole. So does, for a moment, an entry Redis
// trims before its archive write lands: size the Redis history to outlive
// that write (a few publications of the stream's peak rate).
//
// Since is unchanged while Redis retains the position asked for. When Redis
// has trimmed what follows it but the epoch is the current one, Since reads
// the archive for that stream and epoch, offsets after the position, in
// order, up to the limit, and checks contiguity: the entries must be
// position+1, +2, ... and, if fewer than the limit, reach the first offset
// Redis retains, in which case the page goes on with Redis' entries. A
// page that fills up before reaching Redis is continued by the next Since
// call, from its last offset. Any hole (a lost write, an entry expired or
// trimmed from the archive) makes Since fail with scaler.ErrPositionLost,
// as without the archive: never a silent gap. With limit 0 only the entry
// right after the position is checked. An archive that cannot be read
// (MongoDB down) gives an error wrapping scaler.ErrUnavailable. The zero
// position (no epoch) and other epochs are never served from the archive.
//
// Expiry: the sweeper (see below; it runs while nodes are joined, with or
// without a session TTL) deletes archived entries whose Redis time is older
// than maxAge by the node's clock (clock skew between nodes and Redis
// shifts the expiry by as much). Per-stream bounding is done by the
// publisher, which knows the offset: every max(1, min(maxPerStream/4, 256))
// offsets it deletes the stream's entries more than maxPerStream behind,
// one range delete on _id (so a stream holds at most that many more than
// maxPerStream); 0 disables it. On real MongoDB that delete is an _id index
// range; FerretDB 1.x scans the collection for it (and for Since's range
// reads), so there keep maxPerStream 0 and rely on maxAge, or keep the
// archive small. Entries of older epochs are only removed by age. Entries
// are deleted oldest first in each stream, so expiry only shortens what
// Since can serve, and Since reports the rest as lost.
//
// # MongoDB: collections
//
// Collection names start with the collection prefix (WithCollectionPrefix,
// default "sss_"):
//
//	<cp>sessions        {_id: session id, seen: date, n: int}
//	                    index seen_1 ("seen"), for the sweep
//	<cp>subscriptions   {_id: "<len(session)>:<session><channel>", session,
//	                     channel, query: binary|null, updated: date}
//	                    unique index {session: 1, channel: 1} ("session_channel")
//	<cp>history         only with WithArchive: {_id: "<len(stream)>:<stream>|
//	                     <epoch>|<offset, 20 digits zero-padded>", stream,
//	                     epoch, offset: int64, at: date (Redis time),
//	                     channel, event, p: binary (the publication, in the
//	                     format Redis stores)}
//	                    index at_1 ("at"), for the sweep
//
// An archived entry's _id sorts, within one stream and epoch, in offset
// order, so Since reads a range of offsets as a range of _ids (indexed on
// every MongoDB-compatible server that indexes _id ranges; FerretDB 1.x
// scans), and the count bound deletes one.
//
// One document per (session, channel): concurrent calls for different
// channels never write the same document. Its _id encodes the pair (the
// session's length makes it unambiguous), so AddSubscription and
// RemoveSubscription address it by _id alone, which every
// MongoDB-compatible server serves from its primary key.
//
// AddSubscription upserts the entry, then touches (or creates) the session,
// refreshing seen and counting the entry in n. n only grows (a removal
// stays a single write), so it bounds the number of entries from above;
// when it reaches the maximum (WithMaxSessionSubscriptions, default 1024)
// the entries are counted exactly and an entry beyond the bound is taken
// back. Subscriptions reads the session, then its entries (sorted by
// channel in byte order by the Scaler); TouchSession refreshes seen.
//
// A session not seen for the session TTL (WithSessionTTL, default 24h) reads
// as empty at once and is not revived by TouchSession; AddSubscription
// starts it afresh (deleting its stale entries). A goroutine owned by the
// Scaler, running while at least one node is joined, deletes expired
// sessions and their entries (and expired archived entries) every sweep
// interval (WithSweepInterval,
// default 1m): TTL indexes are not used because not every
// MongoDB-compatible server has them. Indexes are created on Join, or on the
// first store call if MongoDB was down then.
//
// On FerretDB 1.x (SQLite backend), which applies concurrent updates of one
// document without isolation, n may miss concurrent increments, so the
// bound can be exceeded by a few entries under concurrent adds to one
// session; and listing a session scans the collection, as FerretDB uses no
// index but _id's.
//
// # When a backend is down
//
// Every call is bounded by the caller's context and by WithCallTimeout
// (default 5s).
//
//   - Redis unreachable: Publish, Send and Since return an error wrapping
//     scaler.ErrUnavailable; nothing is silently dropped. Subscribe records
//     the interest and returns such an error; Unsubscribe succeeds (the
//     interest is dropped locally at once). A pub/sub connection that
//     dies without a reset (a partition, a NAT or firewall that forgot it,
//     the instance back on the network with another address) is noticed
//     by its receive loop: after 15s without anything it pings, and a ping
//     unanswered within the call timeout breaks the connection. The
//     receive loop retries with backoff (up to 2s) and, once Redis is back, subscribes every
//     interest again: deliveries resume by themselves. Deliveries published
//     while a node was cut off are lost for it: once its subscriptions are
//     back, the node calls Handler.HandleMissed for each of its streams,
//     and the server fills what it missed from Since (it also notices a
//     jump in offsets by itself). If Redis came back empty, the
//     streams start new epochs. Join fails while Redis is unreachable. With
//     Cluster the same holds per master: only the streams (and node
//     channels) whose slots a down master owns are affected.
//   - MongoDB unreachable: the session store's methods return errors
//     wrapping scaler.ErrUnavailable; publishing, subscribing and history
//     are unaffected, except with the archive: its writes fail (Publish
//     still succeeds, see above) and Since from a position only the archive
//     could serve returns an error wrapping scaler.ErrUnavailable. Set a
//     short server selection timeout on the MongoDB client (Dial uses 5s)
//     so calls fail fast.
//   - Dial retries: go-redis tries a failing dial 5 times, 100 ms apart, by
//     default (Options.DialerRetries), so every call takes half a second to
//     fail while Redis is down. Dial sets 1 (the URL may say otherwise);
//     with New, set it on your client.
//   - Publish retries: if Redis fails after running a publish script but
//     before answering, a client configured to retry (go-redis' MaxRetries,
//     default 3) runs it again, and the publication is delivered twice with
//     two offsets. Set MaxRetries to -1 to trade that for an error.
//
// With Redis Cluster, a Publish that fails midway may have reached some of
// its streams (each stream is one script there; the error says the
// publication as a whole was not accepted). With a single Redis, one
// script numbers all its streams or none.
//
// After Node.Close the node's methods return scaler.ErrClosed and its
// Handler is not called once Close has returned. The Handler runs on the
// node's receive goroutine with a lock held that Unsubscribe and Close
// take: it must not call the node's methods.
package mongoredis
