// Package nats is a scaler.Scaler on NATS: core NATS carries deliveries
// and node-to-node messages; JetStream numbers publications and keeps
// their history, and its key-value buckets hold the sessions' stored
// subscriptions and presence. Import it under another name when you also
// import nats.go:
//
//	import natsscaler "github.com/superscaled/sss/scaler/nats"
//
// # Choosing it
//
// Use it when an application runs several sss.Server instances and runs
// (or prefers to run) NATS rather than Redis and MongoDB: one system
// instead of two, clustering and replication built in.
//
//	sc, err := natsscaler.Dial(ctx, "nats://nats-1:4222,nats://nats-2:4222")
//	if err != nil { ... }
//	defer sc.Close()
//	srv, err := sss.New(sss.WithScaler(sc))
//
// or bring your own connection, with its TLS, credentials and server list
// (New does not close it):
//
//	nc, _ := nats.Connect(urls, nats.UserCredentials("app.creds"), nats.MaxReconnects(-1))
//	sc, err := natsscaler.New(ctx, nc, natsscaler.WithPrefix("chat"))
//
// The server(s) must run JetStream (nats-server -js); NATS 2.11 or later
// is required (2.15 is what the tests run), for the subject-filtered
// expected-sequence check on publish. Each server joins as its own node;
// one Scaler may be shared by several servers in one process. Nodes
// implement scaler.Broker, scaler.History, scaler.SessionStore,
// scaler.PositionUpdater, scaler.Presence and scaler.Pinger.
//
// # Subjects
//
// Names start with the prefix (WithPrefix, default "sss"). A channel's
// levels become subject tokens: ASCII letters, digits and '-' stay as
// they are, every other byte is written '_' plus two hex digits ("a b*"
// is "a_20b_2A"), an empty level is "_". A hierarchical channel's subject
// ends with the token "__", so that stream "news" is exactly the wildcard
// "….C.news.>" over the channel and all its descendants; a reserved
// channel ("$u.alice", flat) is escaped whole into one token after "R".
// The mapping is one to one and reversible.
//
//	<prefix>.h.C.<level>….__   where a publication is stored (the
//	<prefix>.h.R.<channel>     history stream captures <prefix>.h.>)
//	<prefix>.d.C.<level>….__   where the stream republishes it, and where
//	<prefix>.d.R.<channel>     transient publications go directly
//	<prefix>.n.<node>          node-to-node messages (Send)
//
// A node subscribes, on its connection, to "<prefix>.d.C.<stream
// levels>.>" (or the reserved channel's subject) for each stream its
// local clients want, and to nothing else: NATS sends an instance only
// what it needs. One subscription per stream delivers, in order, once,
// everything that belongs to it. Each subscription is a nats.go
// asynchronous subscription: one goroutine per stream a node is
// subscribed to, and a pending buffer bounded by nats.go's limits (512k
// messages, 64 MiB by default; past them it drops, and the node is told
// with HandleMissed).
//
// On a NATS cluster, Subscribe returns once the node's own server has the
// interest; the other servers learn of it within a route round trip, and
// a publication stored in between reaches the node late or not at all.
// The server notices the jump in offsets at the next delivery and fills
// it from history.
//
// # History: offsets and epochs
//
// The JetStream stream "<prefix>-history" keeps each publication once, on
// its channel's subject, with its offset and epoch in each of its streams
// in headers (Sss-Off: "12,7,3" and Sss-Ep from the root stream down).
// It republishes each one as it stores it, in stream order, to the
// delivery subject (JetStream RePublish), so storing and delivering are
// one step and every subscriber of a stream sees it in offset order.
//
// Offsets are assigned with optimistic concurrency. To publish on
// "a.b.c" a node reads the last stored publication of each stream ("a",
// "a.b", "a.b.c": the last message matching each stream's filter), numbers
// the new one after each, and publishes it with
// Nats-Expected-Last-Subject-Sequence set to the sequence of the last
// message matching the root stream's filter ("….C.a.>"). JetStream stores
// it only if nothing matching that filter was stored in between; since
// every publication of "a.b" or "a.b.c" also matches it, none of the
// three streams moved, and the offsets read are still the last ones. On a
// conflict the node reads again and retries. So, with any number of
// publishers on any instances and NATS servers, each stream's offsets are
// 1, 2, 3… with no gap or repeat. The price: publications within one root
// stream are serialised by the JetStream stream's leader, one
// round trip per contender (a stream's offsets need a total order anyway).
// A publication costs 1 + depth reads and one publish (four round trips
// for "a.b.c"), plus, for a stream with an empty history, two key-value
// writes.
//
// Within one Scaler, publications on one root stream take turns and
// remember what they stored, so when no other instance publishes on that
// root a publication is one round trip (the reads are skipped). Measured
// by BenchmarkScalerFanout (integration/; 2-core machine shared with other
// work, NATS 2.15 and Redis 7.0 containers, history on): from Publish to
// the other instance's handler 0.36-0.47 ms (Redis+MongoDB scaler:
// 0.3 ms); publishing on one channel from 8 goroutines of one instance,
// 2,200-2,700 publications/s reach another (Redis+MongoDB: 5,000-15,000/s
// depending on the machine's load); from three instances at once,
// contending, 1,700-2,100/s (Redis+MongoDB: 8,600-11,500/s). A root
// stream's publications are serialised (the price of gap-free offsets
// without a server-side script): spread heavy traffic over several roots
// ("chat-1.room", "chat-2.room") rather than one. Publications on
// different root streams do not wait for each other.
//
// A stream's epoch comes from its history: the epoch of its last stored
// publication. A stream with no publication kept (never published, or all
// trimmed) has the epoch stored under its name in the "<prefix>-epochs"
// bucket (random, created on first use). Its first publication takes that
// epoch and replaces it first with a new random one, so that if its history
// ever empties again, its offsets restart in an epoch never used before.
// The bucket's entries expire after WithEpochTTL (24h) without a write; a
// stream's epoch then changes only if its history is empty too. If the
// history stream is lost (NATS restarted without its storage), every
// history and epoch is gone with it: epochs change, clients are told their
// positions are lost.
//
// Since finds the publication at an offset by a search over stream
// sequences (offsets grow with them: usually one read, O(log n) at
// worst), then reads the entries: up to 8 one request each, more through a
// short-lived consumer (three requests whatever their number). Reads of
// single messages go to the stream's leader (direct gets are off), never
// to a replica that may lag; what a lagging consumer did not have yet is
// read from the leader. Measured (BenchmarkNATSSince, 2-core machine, one
// NATS 2.15 container): a page of 100 entries in 3-4 ms (37 ms one
// request each).
//
// History is bounded as a whole (WithHistory: 1,000,000 publications,
// 1 GiB, 5 minutes by default), not per stream: JetStream drops the
// oldest publications first, so what each stream keeps is always its most
// recent offsets, gap-free; but a busy channel can push a quiet one's
// history out early. Transient publications are never stored.
//
// # Sessions
//
// The bucket "<prefix>-sessions" holds one key per session and channel,
// "<session>.<channel>" (each escaped as one token), the value a small
// JSON document (query, offset, epoch). Each key expires WithSessionTTL
// (24h) after its last write; TouchSession rewrites the session's keys
// (compare-and-set, O(its subscriptions)). Subscriptions reads them with
// one watcher (O(its subscriptions)). UpdatePosition is a read and a
// compare-and-set write that never recreates a removed entry.
//
// # Presence
//
// The bucket "<prefix>-presence" holds one key per entry,
// "<channel>.<node>.<incarnation>.<conn>", and "<prefix>-nodes" one key
// per live node incarnation, which the node rewrites every presence TTL /
// 3 (WithPresenceTTL, default 15s). Every node also reaps: an incarnation
// whose key has not changed for a presence TTL on the reaper's own clock is
// claimed by one node (compare-and-set), whose entries it purges and
// reports through scaler.PresenceHandler. A dead node's entries are thus
// gone within about 1.4 presence TTLs. A node that finds its key claimed,
// or that could not write while NATS was unreachable, rewrites its entries
// (kept in memory) under a new incarnation and purges the old one's.
// Removed entries are purged from the bucket's stream, leaving no delete
// marker: the buckets hold only what is present.
//
// Costs: Join and Leave are one write each, O(1) in the channel's
// entries. Present and Counts read the channel's entries with a watcher:
// O(n) in them — unlike the Redis+MongoDB scaler, Counts is not O(1) here
// (no counters are kept). Each heartbeat is one write per node; each reap
// lists the nodes bucket, O(nodes) per node per TTL/3.
//
// # Node messages
//
// Send is a request on the receiver's subject: NATS answers "no
// responders" at once when no node with that id is subscribed
// (scaler.ErrUnknownNode), and the receiver acknowledges on receipt, so a
// Send returns once the node has the message. Messages from one sender to
// one node arrive in order.
//
// # Replication
//
// The stream and the buckets get WithReplicas replicas: by default 3 when
// the connection sees a cluster of three or more servers, 1 otherwise. A
// publication acknowledged by a replicated stream is on a quorum: losing
// one NATS node of three loses no history, sessions or presence.
//
// # Failures
//
//   - NATS unreachable: calls fail with an error wrapping
//     scaler.ErrUnavailable (within WithCallTimeout, 5s, or the caller's
//     context); nothing is acknowledged that was not stored. A Publish
//     that failed may still have been stored (NATS stored it, then its
//     acknowledgement was lost): published again, it is stored twice,
//     with two offsets (never one offset twice). A call made while the
//     connection is down fails at once: Dial turns nats.go's reconnect
//     buffer off, so nothing written then is sent later, once its call
//     has failed (a connection given to New keeps its own setting:
//     nats.ReconnectBufSize(-1) does the same). nats.go
//     reconnects by itself (Dial: forever) and sends the node's
//     subscriptions again; the Scaler then calls HandleMissed for every
//     stream each node is subscribed to, and the server fills what it
//     missed from history (exact when JetStream kept it, a reported gap
//     otherwise). A subscription whose pending buffer overflowed (nats.go
//     dropped deliveries) is reported the same way.
//   - The connection dies without a reset (a NAT or firewall forgot it,
//     the instance left the network and came back with another address):
//     nothing fails on writing; calls time out until nats.go's ping goes
//     unanswered twice (Dial: within 10 to 15 s; New: as the caller's
//     connection is set), then it reconnects as above.
//   - NATS restarted with its storage: history, sessions and presence are
//     as they were; catch-up is exact. Without it: the stream and buckets
//     are gone; the first call that finds them missing (a publication, a
//     read, a heartbeat) creates them again, and the calls after it work.
//     Epochs change, so clients are told their positions are lost; stored
//     sessions are lost; nodes write their presence entries again.
//   - JetStream not enabled or not ready (a cluster electing its leaders):
//     Dial and New fail with ErrUnavailable; calls fail likewise until it
//     is back. Node messages and transient publications only need core
//     NATS.
//   - One node of a NATS cluster lost: the client connection moves to
//     another server (give several URLs), replicated streams elect a new
//     leader within seconds; publications in flight then may fail with
//     ErrUnavailable, never get an offset twice.
package nats
