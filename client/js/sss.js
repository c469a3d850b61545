// sss.js: the browser client of sss ("Super Scaled Sockets"), protocol
// sss.v1 (docs/protocol.md). One dependency-free ES module, no build step:
//
//	import { dial } from "/sss.js";
//	const client = await dial("/ws", { hooks: { onStatusChange: (s) => console.log(s) } });
//	const sub = await client.subscribe("news", { messageHandler: (m) => console.log(m.data) });
//	const result = await client.ask("add", [1, 2], { timeout: 5000 });
//
// It mirrors the Go client (package client): the same hooks, subscription
// handlers, positions and catch-up, the `ready` frame on a fresh link, a
// `resume` with positions on a reconnect, backoff with full jitter over a
// URL list from a random one, and typed error codes; presence and join and
// leave events, server-made subscriptions and broadcasts, history reads,
// the restoring of a session's stored subscriptions, and connection tokens
// refreshed before every connection. Where the languages
// differ: callbacks run synchronously on the page's event loop, in order
// (there is no receive queue to overflow), options are plain objects, and
// requests are bounded by a timeout option instead of a context.
//
// A Go server serves this file with sss.ClientScript().
//
// For maintainers, where things are: errors and codes; positions and
// catch-up (accept, gaps, outcome); Subscription; Link (one WebSocket);
// Client (life, reconnection, requests, presence and history, routing,
// server subscriptions, server asks and tells).

/** The WebSocket subprotocol of protocol v1. */
export const SUBPROTOCOL = "sss.v1";

/**
 * The states of a Client.
 * @readonly
 * @enum {string}
 */
export const Status = Object.freeze({
  /** connect() is making the first connection. */
  Connecting: "connecting",
  /** The link is up (and, after a reconnect, the subscriptions are restored). */
  Connected: "connected",
  /** The link dropped; the client is trying again. */
  Reconnecting: "reconnecting",
  /** Final: client.err says why. */
  Closed: "closed",
});

/**
 * The states of a Subscription.
 * @readonly
 * @enum {string}
 */
export const SubStatus = Object.freeze({
  /** The server holds the subscription; messages flow. */
  Subscribed: "subscribed",
  /** The link dropped; the subscription is restored on the next connection. */
  Resubscribing: "resubscribing",
  /** Final: the server refused to restore it after a reconnect (sub.err). */
  Refused: "refused",
  /** Final: unsubscribe() was called, the server ended it (onUnsubscribed), or the client closed. */
  Unsubscribed: "unsubscribed",
});

/**
 * What a channel is to the client (RecoverInfo.kind).
 * @readonly
 * @enum {string}
 */
export const ChannelKind = Object.freeze({
  Subscription: "subscription",
  User: "user",
  Session: "session",
});

/**
 * Error codes: those of protocol v1 (docs/protocol.md, "Error codes"),
 * then the client's own.
 * @readonly
 * @enum {string}
 */
export const Code = Object.freeze({
  BadRequest: "bad_request",
  Unauthorized: "unauthorized",
  Forbidden: "forbidden",
  NotFound: "not_found",
  Conflict: "conflict",
  Timeout: "timeout",
  TooLarge: "too_large",
  RateLimited: "rate_limited",
  LimitExceeded: "limit_exceeded",
  Unavailable: "unavailable",
  /** The server or its cluster does not offer this: presence on a channel that keeps none, history in a cluster that keeps none. */
  NotSupported: "not_supported",
  Internal: "internal",
  /** A request could not complete because the link dropped (it may or may not have run). */
  Disconnected: "disconnected",
  /** The client is closed: by close(), or for good by the server (client.err). */
  Closed: "closed",
  /** Nothing was received for the welcome's ping+pong. */
  LinkTimeout: "link_timeout",
  /** A connection attempt failed. A browser does not say why: the server is
   * unreachable, or refused the handshake (HTTP 401, 403, 503, ...). */
  ConnectFailed: "connect_failed",
  /** The server closed the link with a close frame: see CloseError. */
  ConnectionClosed: "connection_closed",
  /** The server does not speak sss.v1 as documented. */
  Protocol: "protocol",
  /** An invalid option or argument; nothing was sent. */
  InvalidConfig: "invalid_config",
  /** The request was cancelled through its AbortSignal. */
  Aborted: "aborted",
});

// The codes of protocol v1; a server's other codes count as internal.
const protocolCodes = new Set([
  Code.BadRequest, Code.Unauthorized, Code.Forbidden, Code.NotFound, Code.Conflict, Code.Timeout,
  Code.TooLarge, Code.RateLimited, Code.LimitExceeded, Code.Unavailable, Code.NotSupported, Code.Internal,
]);

/**
 * The error of every failure of this module: test `err.code` (a Code, or
 * the code a server handler chose) or use is(). `err.cause` holds the
 * underlying error, such as why the link dropped.
 */
export class SSSError extends Error {
  /**
   * @param {string} code
   * @param {string} message what failed, without the "sss: " prefix
   * @param {{cause?: any, detail?: string, fromServer?: boolean}} [extra]
   */
  constructor(code, message, extra = {}) {
    super("sss: " + message, extra.cause !== undefined ? { cause: extra.cause } : undefined);
    this.name = "SSSError";
    /** @type {string} */
    this.code = code;
    /** The server's message, for an error the server sent. @type {string} */
    this.detail = extra.detail ?? "";
    /** True when the server answered with this code. @type {boolean} */
    this.fromServer = !!extra.fromServer;
  }
}

/**
 * A close frame from the server: the link ended with closeCode and reason.
 * Its code is "connection_closed"; is() also matches 4500 as "unauthorized"
 * and 4501 as "forbidden". 4500–4999 stop the client for good.
 */
export class CloseError extends SSSError {
  /** @param {number} closeCode @param {string} reason */
  constructor(closeCode, reason) {
    super(Code.ConnectionClosed, `closed by the server with ${closeCode}` + (reason ? `: ${reason}` : ""));
    this.name = "CloseError";
    /** @type {number} */
    this.closeCode = closeCode;
    /** @type {string} */
    this.reason = reason || "";
  }

  /** True when the close code tells the client not to reconnect (4500–4999). */
  get permanent() {
    return this.closeCode >= 4500 && this.closeCode <= 4999;
  }
}

/**
 * Reports whether err, or an error in its chain of causes, has the code:
 * the counterpart of Go's errors.Is with the client's sentinels. A code
 * the protocol does not define matches "internal", as the protocol asks;
 * close code 4500 matches "unauthorized" and 4501 "forbidden".
 * @param {any} err
 * @param {string} code
 * @returns {boolean}
 */
export function is(err, code) {
  for (let e = err, depth = 0; e && depth < 16; e = e.cause, depth++) {
    if (!(e instanceof SSSError)) continue;
    if (e.code === code) return true;
    if (code === Code.Internal && e.fromServer && !protocolCodes.has(e.code)) return true;
    if (e instanceof CloseError) {
      if (e.closeCode === 4500 && code === Code.Unauthorized) return true;
      if (e.closeCode === 4501 && code === Code.Forbidden) return true;
    }
  }
  return false;
}

function invalid(message) {
  return new SSSError(Code.InvalidConfig, "invalid configuration: " + message);
}

// ---------------------------------------------------------------------------
// Positions and catch-up (docs/protocol.md, "Positions and catch-up").

/**
 * A place in a channel's stream: the offset of the last publication seen, in
 * an epoch (an opaque string that changes when the stream's history was
 * lost). Offsets only compare within one epoch. An empty epoch means
 * unknown: the server keeps no history.
 * @typedef {{offset: number, epoch: string}} Position
 */

const zeroPosition = Object.freeze({ offset: 0, epoch: "" });

/** @param {any} r @returns {Position} */
function positionOf(r) {
  if (r && typeof r.offset === "number" && typeof r.epoch === "string" && r.epoch !== "") {
    return { offset: r.offset, epoch: r.epoch };
  }
  return zeroPosition;
}

const isZero = (p) => !p || p.epoch === "";

// accept decides whether a publication at p is new for a channel that stands
// at pos: ok false for a duplicate; epochChanged when it comes from another
// epoch, which only a new subscription or a resume should bring.
function accept(pos, p) {
  if (isZero(p) || isZero(pos)) return { ok: true, epochChanged: false };
  if (p.epoch !== pos.epoch) return { ok: true, epochChanged: true };
  return { ok: p.offset > pos.offset, epochChanged: false };
}

/**
 * The outcome of catching up one channel after a reconnect, or a gap noticed
 * in the publications themselves.
 * @typedef {Object} RecoverInfo
 * @property {string} channel the subscription's channel, or the user or session channel
 * @property {ChannelKind} kind
 * @property {Subscription|null} sub null for the user and session channels
 * @property {boolean} recovered every publication after `since` is delivered, once and in order; false: some were lost, reload what derives from the channel
 * @property {string} reason why publications were lost, when not recovered
 * @property {Position} since the position the client resumed from (epoch "" when none)
 * @property {Position} position where the client stands now: what is delivered next comes after it
 */

// outcome turns a resume or subscribe result into a RecoverInfo.
function outcome(channel, kind, sub, since, r) {
  const info = { channel, kind, sub, recovered: false, reason: "", since, position: zeroPosition };
  if (r) {
    info.position = positionOf(r);
    info.reason = typeof r.reason === "string" ? r.reason : "";
  }
  if (isZero(since)) {
    if (!info.reason) info.reason = "no position to resume from: the server kept no history";
  } else if (!r) {
    info.reason = "the channel is missing from the resume reply";
  } else if (typeof r.recovered !== "boolean") {
    info.reason = "the server did not say whether it recovered the publications";
  } else {
    info.recovered = r.recovered;
    if (!info.recovered && !info.reason) info.reason = "publications were lost";
  }
  if (info.recovered) info.reason = "";
  return info;
}

function epochGap(channel, kind, sub, pos, p) {
  return {
    channel, kind, sub, recovered: false, since: pos,
    reason: `publication from epoch "${p.epoch}" while at ${pos.offset}@${pos.epoch}: the channel's history was reset, publications may have been lost`,
    position: { offset: p.offset - 1, epoch: p.epoch },
  };
}

function jumpGap(channel, kind, sub, pos, p) {
  return {
    channel, kind, sub, recovered: false, since: pos,
    reason: `offsets jumped from ${pos.offset} to ${p.offset}: ${p.offset - pos.offset - 1} publications were lost`,
    position: { offset: p.offset - 1, epoch: p.epoch },
  };
}

// isAncestor reports whether a is a strict ancestor of b ("news" of "news.uk").
const isAncestor = (a, b) => b.length > a.length && b[a.length] === "." && b.startsWith(a);

// backoff returns the delay before retry n (0 for the first): "full
// jitter", a uniform random whole number of ms in [0, min(max, base·2ⁿ)].
// Jitter over the whole window spreads a crowd of clients dropped together.
function backoff(n, base, max, random) {
  let ceil = base;
  for (let i = 0; i < n && ceil < max; i++) ceil *= 2;
  ceil = Math.min(ceil, max);
  return Math.min(ceil, Math.floor(random() * (ceil + 1)));
}

// rotated returns list in its order, starting from a random element.
function rotated(list, random) {
  if (list.length === 0) return [];
  const k = Math.min(list.length - 1, Math.floor(random() * list.length));
  return list.slice(k).concat(list.slice(0, k));
}

// ---------------------------------------------------------------------------
// Subscription.

/**
 * A publication received on a channel.
 * @typedef {Object} Message
 * @property {string} channel the channel it was published to
 * @property {string} sub the subscription that matched: channel itself or an ancestor, or the user or session channel
 * @property {string} event the name the publisher gave (may be empty)
 * @property {any} data the JSON payload, decoded
 * @property {{user?: string, conn?: string}|null} from the client that published, stamped by the server; null when the server published
 * @property {number} time when the server accepted it, in ms since the Unix epoch (`new Date(m.time)`); 0 from a server that does not say
 * @property {number} offset position in the stream of `sub` (0 when the server keeps no history)
 * @property {string} epoch
 */

/**
 * A client present on a channel, as other clients see it (presence lists,
 * join and leave events).
 * @typedef {Object} ClientInfo
 * @property {string} conn its connection id
 * @property {string} user its user id; "" when anonymous
 * @property {any} info the public data the application gave it (a display name, ...); null when none
 */

/**
 * A channel's presence counts: connections, and distinct user ids among
 * them (anonymous ones not counted).
 * @typedef {{clients: number, users: number}} PresenceCounts
 */

// clientInfo turns a presence entry of the wire into a ClientInfo.
function clientInfo(c) {
  const o = c && typeof c === "object" ? c : {};
  return Object.freeze({
    conn: typeof o.conn === "string" ? o.conn : "",
    user: typeof o.user === "string" ? o.user : "",
    info: o.info === undefined ? null : o.info,
  });
}

// counts reads presence counts from the wire.
function countsOf(c) {
  const o = c && typeof c === "object" ? c : {};
  return Object.freeze({ clients: Number(o.clients) || 0, users: Number(o.users) || 0 });
}

// message turns a pub frame (or a history entry, read through sub) into
// the Message handlers get.
function message(f, sub) {
  const p = typeof f.offset === "number" && typeof f.epoch === "string" && f.epoch !== "" ? { offset: f.offset, epoch: f.epoch } : zeroPosition;
  return Object.freeze({
    channel: String(f.channel || ""), sub, event: typeof f.event === "string" ? f.event : "",
    data: f.data === undefined ? null : f.data,
    from: f.from && (f.from.user || f.from.conn) ? f.from : null,
    time: typeof f.time === "number" && f.time > 0 ? f.time : 0,
    offset: p.offset, epoch: p.epoch,
  });
}

// The reserved channel of the server's broadcasts.
const broadcastChannel = "$all";

/**
 * A subscription's callbacks, given once to subscribe() (SubscribeOptions.hooks).
 * @typedef {Object} SubHooks
 * @property {(status: SubStatus, old: SubStatus) => void} [onStatusChange]
 * @property {(info: RecoverInfo) => void} [onGap] publications were lost on this subscription (the client's onGap runs too, after it); runs before the publications that follow the gap
 */

/**
 * The client's subscription to a channel. It survives reconnects: the client
 * restores it on every new connection until unsubscribe(), a refusal, the
 * server's end of it, or close(). Its handlers are given to subscribe()
 * (eventHandlers, messageHandler, joinHandler, leaveHandler) so that they
 * are in place for the first publication after the ack, and may be changed
 * later with handleEvent(), handleMessage(), handleJoin() and handleLeave().
 * A subscription the client did not make (the server's, or one restored
 * from the session store) is announced by Hooks.onSubscribed: set its
 * handlers there.
 */
export class Subscription {
  /** @param {Client} client @param {string} channel @param {any} query @param {SubHooks} hooks */
  constructor(client, channel, query, hooks) {
    this._c = client;
    /** The channel subscribed to. @type {string} */
    this.channel = channel;
    /** The query sent with the subscription (undefined when none). */
    this.query = query;
    this._hooks = hooks || {};
    this._status = SubStatus.Subscribed;
    this._err = null;
    this._on = new Map();
    this._onAny = null;
    this._onJoin = null;
    this._onLeave = null;
    this._server = false; // the server made it: only the server ends it
    this._pos = zeroPosition;
    this._recovered = true;
    this._leaving = false; // an unsubscribe was sent
    this._skips = false; // a deeper subscription ended since pos was set by an ack
  }

  /** The subscription's state now. @type {SubStatus} */
  get status() { return this._status; }

  /** Why it ended: the server's refusal, or the client's close reason; null otherwise. @type {SSSError|null} */
  get err() { return this._err; }

  /** Where it stands in its channel's stream (epoch "" when the server keeps no history). @type {Position} */
  get position() { return this._pos; }

  /** False after a gap (a reconnect that lost publications, or a publication from an unexpected epoch), until the next exact catch-up. @type {boolean} */
  get recovered() { return this._recovered; }

  /** True when the server made it (its Subscribe, or channels named at login): the client cannot unsubscribe it. @type {boolean} */
  get server() { return this._server; }

  /**
   * Sets the handler for messages with the given event, replacing any; null removes it.
   * @param {string} event @param {((m: Message) => void)|null} fn
   */
  handleEvent(event, fn) {
    if (fn) this._on.set(event, fn);
    else this._on.delete(event);
  }

  /**
   * Sets the handler for messages whose event has no handler of its own; null removes it.
   * @param {((m: Message) => void)|null} fn
   */
  handleMessage(fn) { this._onAny = fn || null; }

  /**
   * Sets the handler of join events (a client subscribed to the channel,
   * this one included), on channels where the application turned them on;
   * null removes it.
   * @param {((c: ClientInfo) => void)|null} fn
   */
  handleJoin(fn) { this._onJoin = fn || null; }

  /**
   * Sets the handler of leave events (a client unsubscribed, disconnected,
   * or its server instance died); null removes it.
   * @param {((c: ClientInfo) => void)|null} fn
   */
  handleLeave(fn) { this._onLeave = fn || null; }

  /**
   * Ends the subscription. While disconnected it only forgets it: the next
   * resume does not ask for it. Unsubscribing one that already ended does
   * nothing. A server subscription rejects with "forbidden": only the
   * server ends it.
   * @param {RequestOptions} [opts]
   * @returns {Promise<void>}
   */
  async unsubscribe(opts = {}) {
    const c = this._c;
    if (this._server) throw new SSSError(Code.Forbidden, `unsubscribe from "${this.channel}": the server made this subscription: only the server ends it`);
    if (c._subs.get(this.channel) !== this) return;
    if (!c._ready) {
      c._dropSub(this);
      return;
    }
    this._leaving = true;
    try {
      await c._request({ type: "unsubscribe", channel: this.channel }, {
        label: `unsubscribe from "${this.channel}"`, direct: true, timeout: opts.timeout, signal: opts.signal,
        onAck: () => c._dropSub(this),
      });
    } catch (err) {
      if (is(err, Code.NotFound) || is(err, Code.Disconnected)) {
        // The server does not hold it (any more), or the link is gone and
        // the next resume leaves it out.
        c._dropSub(this);
        return;
      }
      throw err;
    }
  }

  _setStatus(st, err) {
    const old = this._status;
    if (old === st || old === SubStatus.Refused || old === SubStatus.Unsubscribed) return false;
    this._status = st;
    this._err = err || null;
    const fn = this._hooks.onStatusChange;
    if (fn) this._c._call(fn, st, old);
    return true;
  }

  _deliver(m) {
    if (this._status === SubStatus.Unsubscribed || this._status === SubStatus.Refused) return;
    const h = this._on.get(m.event) || this._onAny;
    if (h) this._c._call(h, m);
  }

  _presence(join, ci) {
    if (this._status === SubStatus.Unsubscribed || this._status === SubStatus.Refused) return;
    const h = join ? this._onJoin : this._onLeave;
    if (h) this._c._call(h, ci);
  }
}

// ---------------------------------------------------------------------------
// Link: one WebSocket connection, from the handshake until it drops. A
// Client makes a new link for each (re)connection.

const defaultMaxMessage = 64 << 10; // batches before the welcome tells the real limit

class Link {
  // url is the client's URL (failover, messages); dialURL the one opened,
  // with the token when there is one: it never appears in messages or logs.
  constructor(client, url, resuming, restoring, dialURL) {
    this.c = client;
    this.url = url;
    this.resuming = resuming;
    this.restoring = restoring; // resumes without a list: the session's stored subscriptions
    this.dead = false;
    this.reason = null;
    this.opened = false;
    this.welcomed = false;
    this.up = false; // handed to the client as its current link
    this.info = null;
    this.positions = {};
    this.ownResume = [false, false];
    this.ownSince = [zeroPosition, zeroPosition];
    this.pending = new Map(); // id → request
    this.counted = 0; // asks and tells in flight (limits.concurrency)
    this.out = [];
    this.flushing = false;
    this.alive = null; // dead-link timer
    this.window = 0;
    this.abort = new AbortController(); // signals the server asks' handlers when the link ends
    this.onUp = null; // set by the attempt: the link is ready
    this.onEnd = null; // set by the attempt, then by the client: the link ended
    const WS = client._opts.WebSocket;
    this.ws = new WS(dialURL || url, [SUBPROTOCOL]);
    this.ws.onopen = () => this._opened();
    this.ws.onmessage = (ev) => this._message(ev);
    this.ws.onclose = (ev) => this._closed(ev);
    this.ws.onerror = () => {}; // a close event follows, with what can be known
  }

  _opened() {
    if (this.dead) return;
    if (this.ws.protocol !== SUBPROTOCOL) {
      this.fail(new SSSError(Code.Protocol, `protocol violation: server did not select subprotocol ${SUBPROTOCOL}`));
      return;
    }
    this.opened = true;
    // Nothing to resume: say so first, without waiting for the welcome, so
    // that the server delivers the user and session channels at once.
    if (!this.resuming) this.write('{"type":"ready"}');
  }

  _closed(ev) {
    let err;
    if (!this.opened) {
      err = new SSSError(Code.ConnectFailed, `cannot connect to ${this.url} (server unreachable, or handshake refused: a browser does not tell which)`);
    } else if (ev.code === 1006 || ev.code === 1005 || !ev.code) {
      err = new SSSError(Code.Disconnected, "connection lost");
    } else {
      err = new CloseError(ev.code, ev.reason);
    }
    this.fail(err);
  }

  _message(ev) {
    if (this.dead) return;
    if (this.alive !== null) this._armAlive(); // any message is a sign of life
    if (typeof ev.data !== "string") {
      this.fail(new SSSError(Code.Protocol, "protocol violation: binary message"));
      return;
    }
    for (const line of ev.data.split("\n")) {
      if (line.trim() === "") continue;
      let f;
      try {
        f = JSON.parse(line);
      } catch (e) {
        this.fail(new SSSError(Code.Protocol, `protocol violation: invalid frame: ${e.message}`));
        return;
      }
      if (!f || typeof f !== "object") {
        this.fail(new SSSError(Code.Protocol, "protocol violation: frame is not an object"));
        return;
      }
      this.c._handle(this, f);
      if (this.dead) return; // a handler closed the client, or the frame ended the link
    }
  }

  _armAlive() {
    const clock = this.c._clock;
    if (this.alive !== null) clock.clearTimeout(this.alive);
    this.alive = clock.setTimeout(() => {
      this.alive = null;
      this.fail(new SSSError(Code.LinkTimeout, "no frame from the server within ping+pong"));
    }, this.window);
  }

  setWelcome(f) {
    const ch = f.channels || {};
    const limits = f.limits || {};
    this.info = Object.freeze({
      url: this.url,
      id: String(f.conn || ""),
      session: String(f.session || ""),
      user: String(f.user || ""),
      userChannel: String(ch.user || ""),
      sessionChannel: String(ch.session || ""),
      ping: Number(f.ping) || 0,
      pong: Number(f.pong) || 0,
      limits: Object.freeze({
        maxMessage: Number(limits.maxMessage) || 0,
        maxPayload: Number(limits.maxPayload) || 0,
        maxSubscriptions: Number(limits.maxSubscriptions) || 0,
        concurrency: Number(limits.concurrency) || 0,
      }),
    });
    this.positions = f.positions && typeof f.positions === "object" ? f.positions : {};
    this.welcomed = true;
    this.window = this.info.ping + this.info.pong;
    if (this.window > 0) this._armAlive();
  }

  ownChannels() {
    return [this.info.userChannel, this.info.sessionChannel];
  }

  get maxMessage() {
    return (this.info && this.info.limits.maxMessage) || defaultMaxMessage;
  }

  // write queues one encoded frame; the frames written in one turn of the
  // event loop go out batched, one per line, within the server's limit.
  write(frame) {
    if (this.dead) return;
    this.out.push(frame);
    if (!this.flushing) {
      this.flushing = true;
      queueMicrotask(() => this._flush());
    }
  }

  _flush() {
    this.flushing = false;
    if (this.dead) return;
    const max = this.maxMessage;
    let batch = "";
    for (const frame of this.out) {
      if (batch !== "" && batch.length + 1 + frame.length > max) {
        this._send(batch);
        batch = "";
      }
      batch = batch === "" ? frame : batch + "\n" + frame;
    }
    this.out = [];
    if (batch !== "") this._send(batch);
  }

  _send(msg) {
    try {
      this.ws.send(msg);
    } catch (e) {
      this.fail(new SSSError(Code.Disconnected, "send failed", { cause: e }));
    }
  }

  // fail ends the link with err (the first reason is kept) and tells the
  // client. The socket is closed and its events ignored from now on.
  fail(err) {
    if (this.dead) return;
    this.dead = true;
    this.reason = err;
    const clock = this.c._clock;
    if (this.alive !== null) clock.clearTimeout(this.alive);
    this.alive = null;
    const ws = this.ws;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    try {
      ws.close(1000);
    } catch {
      // already closing
    }
    this.abort.abort(err);
    if (this.onEnd) this.onEnd(err);
  }
}

// ---------------------------------------------------------------------------
// Client.

/**
 * Describes one connection, from the server's welcome frame.
 * @typedef {Object} ConnInfo
 * @property {string} url the server URL it was made to
 * @property {string} id the connection id, unique in the cluster
 * @property {string} session the session id the server's session parser named (random when anonymous)
 * @property {string} user the user id; empty when anonymous
 * @property {string} userChannel the connection's user channel; empty when anonymous
 * @property {string} sessionChannel the connection's session channel
 * @property {number} ping ms between the server's pings
 * @property {number} pong ms the server waits for a frame after a ping
 * @property {{maxMessage: number, maxPayload: number, maxSubscriptions: number, concurrency: number}} limits
 */

/**
 * The client's callbacks, given once (Options.hooks), in place before the
 * first connection attempt. Each may be absent. They run in the order of
 * the events, synchronously; one that throws is reported to onError.
 * @typedef {Object} Hooks
 * @property {(status: Status, old: Status) => void} [onStatusChange]
 * @property {(err: SSSError) => void} [onDrop] a link dropped (not one ended by close()), with the reason: a CloseError, "link_timeout", "disconnected", ...; the status then becomes reconnecting, or closed if the reason is final
 * @property {(info: ConnInfo) => void} [onReconnect] after a successful reconnection, once every subscription was restored or refused, and after onRecover and onGap
 * @property {(err: SSSError) => void} [onError] errors that belong to no request: an error frame about the connection, a tell handler's error, a throwing callback, a tell with no handler
 * @property {(sub: Subscription, err: SSSError) => void} [onRefused] the server refused to restore a subscription after a reconnect; it is then refused and no longer held
 * @property {(m: Message) => void} [onUserMessage] publications to the user's channel (server PublishUser)
 * @property {(m: Message) => void} [onSessionMessage] publications to the session's channel (server PublishSession)
 * @property {(info: RecoverInfo) => void} [onRecover] the outcome of each channel's catch-up after a reconnect, before any publication delivered on the new connection
 * @property {(info: RecoverInfo) => void} [onGap] publications were lost on a channel: reload what derives from it; runs after onRecover and the subscription's own onGap, before the publications that follow the gap
 * @property {(sub: Subscription) => void} [onSubscribed] a subscription the client did not make in this page: one the server made (its Subscribe, or a channel named at login), or one restored from the session store (Options.restore); it runs before any of its publications: set its handlers here (sub.handleMessage, handleEvent, handleJoin, handleLeave)
 * @property {(sub: Subscription) => void} [onUnsubscribed] the server ended a subscription (its Unsubscribe), also one it ended while the client was disconnected (told after the reconnect); it is then unsubscribed
 * @property {(m: Message) => void} [onBroadcast] the server's broadcasts to every connection (channel "$all"); transient: one made while the client is disconnected is not caught up
 */

/**
 * Answers a server ask. May return a value or a Promise of one; throw (or
 * reject with) an SSSError to choose the code the server sees, anything else
 * is sent as "internal". signal aborts when the link the ask came on drops.
 * @callback AskHandler
 * @param {any} data
 * @param {{signal: AbortSignal}} ctx
 * @returns {any}
 */

/**
 * Receives a server tell. An error it throws (or rejects with) goes to onError.
 * @callback TellHandler
 * @param {any} data
 * @returns {any}
 */

/**
 * The timers the client uses, injectable so that tests control time.
 * @typedef {Object} Clock
 * @property {(fn: () => void, ms: number) => any} setTimeout
 * @property {(handle: any) => void} clearTimeout
 * @property {() => number} now ms
 */

/**
 * Options of a Client.
 * @typedef {Object} Options
 * @property {string[]} [urls] more server URLs (instances of one cluster) to fail over between; ws, wss, http, https, or a path on this page's host
 * @property {Hooks} [hooks]
 * @property {Object<string, AskHandler>} [askHandlers] handlers of the server's asks, by name, in place before the first connection
 * @property {Object<string, TellHandler>} [tellHandlers] handlers of the server's tells, by name
 * @property {{min: number, max: number}} [reconnectDelay] ms; before retry n the client waits a random time in [0, min(max, min·2ⁿ)]; default 250 and 30000
 * @property {number} [maxAttempts] consecutive failed attempts of one reconnection before the client closes; default 0: unlimited
 * @property {boolean} [failFast] requests fail at once with "disconnected" while reconnecting, instead of waiting for the link
 * @property {number} [dialTimeout] ms for one connection attempt: handshake, welcome and resume; default 10000
 * @property {number} [requestTimeout] default timeout of a request in ms (RequestOptions.timeout); default 30000; 0: none
 * @property {number} [sendQueue] requests that may wait for a link or a slot (while reconnecting, say); more fail with "limit_exceeded"; default 256
 * @property {number} [maxPending] requests in flight on a link, awaiting their reply; more wait in the send queue; default 256
 * @property {number} [concurrency] server asks handled at once; more are answered "rate_limited"; default 64
 * @property {number} [rateLimitRetries] times an ask or tell refused with "rate_limited" is sent again; default 8
 * @property {TokenSource} [getToken] the connection's credentials, asked for before every connection attempt (the first and each reconnect) and sent as the query parameter tokenParam, so that an expiring token is replaced before it is needed; when the server closes with 4007 (credentials expired) the client reconnects at once with a fresh one
 * @property {string} [tokenParam] the query parameter that carries the token; default "token" (sss-server's)
 * @property {boolean} [restore] the first connection restores the subscriptions the server stored for this session (a reloaded page), each caught up from where the session last stood, instead of starting with none; Hooks.onSubscribed tells of each. The server needs a session store and a session parser that names the session
 * @property {Clock} [clock] timers; default the page's
 * @property {() => number} [random] a random number in [0, 1); default Math.random
 * @property {any} [WebSocket] the WebSocket constructor; default the page's
 * @property {{debug?: Function, info?: Function, warn?: Function}} [logger] where to log connection events, e.g. console; default nowhere
 */

/**
 * Gives the token of a connection attempt: a string, or a Promise of one.
 * Rejecting (or throwing) fails that attempt, and the client retries with
 * backoff; an SSSError with code "unauthorized" or "forbidden" stops the
 * client for good (the user must log in again). reason is why the previous
 * attempt or link ended (null before the first): a browser hides an HTTP
 * 401 at the handshake, so after repeated "connect_failed" an application
 * may check its login itself here.
 * @callback TokenSource
 * @param {{url: string, reason: SSSError|null}} attempt
 * @returns {string|Promise<string>}
 */

/**
 * Options of one request.
 * @typedef {Object} RequestOptions
 * @property {number} [timeout] ms from the call to the reply, waits for the link included; 0: none; default Options.requestTimeout. On expiry the Promise rejects with code "timeout"
 * @property {AbortSignal} [signal] cancels the request: the Promise rejects with code "aborted"
 */

/**
 * Options of subscribe(), besides those of every request (timeout, signal).
 * @typedef {Object} SubscribeOnly
 * @property {any} [query] any JSON value for the server's subscription parser (a password, a filter, a token); sent again on every reconnect
 * @property {SubHooks} [hooks]
 * @property {Object<string, (m: Message) => void>} [eventHandlers] handlers by event
 * @property {(m: Message) => void} [messageHandler] handler of events without a handler of their own
 * @property {(c: ClientInfo) => void} [joinHandler] handler of join events (channels where the application turned them on)
 * @property {(c: ClientInfo) => void} [leaveHandler] handler of leave events
 * @property {Position} [since] start after this position (from history()) instead of the channel's current one: every publication after it is delivered first, once and in order; when that is impossible the subscription's onGap and the client's say so
 */

/**
 * Options of publish(), besides those of every request.
 * @typedef {Object} PublishOnly
 * @property {boolean} [exceptSelf] this connection does not receive it (everyone but the sender)
 */

/** @typedef {RequestOptions & PublishOnly} PublishOptions */

/**
 * Options of history(), besides those of every request (the timeout bounds the whole read).
 * @typedef {Object} HistoryOnly
 * @property {number} [limit] read at most this many publications; default 50 (the server's maximum is 1000)
 * @property {Position} [since] read the publications after this position (the first `limit` of them) instead of the last ones
 * @property {any} [query] for the server's subscription parser, which authorises history reads like subscriptions
 */

/** @typedef {RequestOptions & HistoryOnly} HistoryOptions */

/**
 * What a history read gives.
 * @typedef {Object} HistoryResult
 * @property {Message[]} messages oldest first, each with its offset in the channel read (its `sub`)
 * @property {Position} position where the read ends: subscribe with `since` set to it to go on with no gap and no duplicate
 */

/**
 * A presence list.
 * @typedef {Object} PresenceResult
 * @property {ClientInfo[]} clients who is subscribed (a list too large for one reply is cut: fewer than counts.clients)
 * @property {PresenceCounts} counts
 * @property {boolean} more the list was cut
 */

/** @typedef {RequestOptions & SubscribeOnly} SubscribeOptions */

const defaultClock = Object.freeze({
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (h) => globalThis.clearTimeout(h),
  now: () => Date.now(),
});

// How long a link must last for the backoff to start over.
const stableLink = 30000;
// The delays between retries of a request refused with rate_limited.
const rateRetryMin = 5;
const rateRetryMax = 1000;

/**
 * Resolves a URL given to the client: ws, wss, http, https, or a path
 * relative to the page (e.g. "/ws").
 */
function resolveURL(u) {
  let url;
  try {
    url = new URL(u, globalThis.location ? globalThis.location.href : undefined);
  } catch {
    throw invalid(`URL "${u}" cannot be parsed`);
  }
  if (url.protocol === "http:") url.protocol = "ws:";
  else if (url.protocol === "https:") url.protocol = "wss:";
  if (url.protocol !== "ws:" && url.protocol !== "wss:") throw invalid(`URL "${u}": scheme must be ws, wss, http or https`);
  url.hash = "";
  return url.href;
}

// checkPosition returns a copy of a position given as an option, or throws.
function checkPosition(name, p) {
  if (!p || typeof p !== "object" || !Number.isInteger(p.offset) || p.offset < 0 || typeof p.epoch !== "string" || p.epoch === "") {
    throw invalid(`${name}: ${JSON.stringify(p)}: want a position {offset, epoch} with an epoch`);
  }
  return { offset: p.offset, epoch: p.epoch };
}

function positiveNumber(name, v, dflt, allowZero) {
  if (v === undefined) return dflt;
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0 || (!allowZero && v === 0)) {
    throw invalid(`${name}: ${v}: want a ${allowZero ? "non-negative" : "positive"} number`);
  }
  return v;
}

/**
 * A connection to an sss cluster that survives drops. Make one with dial(),
 * or with `new Client(url, options)` then connect().
 *
 * When the link drops it reconnects by itself, with backoff and full jitter,
 * failing over between its URLs from a random one (the URL that dropped
 * last), restores its subscriptions with one resume request and, when the
 * server keeps history, catches up exactly: every publication missed on each
 * subscription and on the user and session channels is delivered once, in
 * order, before the live ones; when that is impossible, onGap says so.
 * Requests in flight when the link drops fail with "disconnected"; new ones
 * wait for the next link (bounded by sendQueue and their timeout), or fail
 * fast with failFast. Close code 4000 (the server shuts down) and 4007 (the
 * credentials expired: getToken gives fresh ones) reconnect at once; 4500
 * to 4999 stop the client for good.
 */
export class Client {
  /**
   * @param {string} url the server's URL (ws://, wss://, http(s)://, or a path such as "/ws")
   * @param {Options} [options]
   */
  constructor(url, options = {}) {
    const o = options || {};
    const list = [];
    for (const u of [url, ...(o.urls || [])]) {
      if (typeof u !== "string" || u === "") throw invalid(`URL ${JSON.stringify(u)}`);
      const r = resolveURL(u);
      if (!list.includes(r)) list.push(r);
    }
    const delay = o.reconnectDelay || {};
    const min = positiveNumber("reconnectDelay.min", delay.min, 250, false);
    const max = positiveNumber("reconnectDelay.max", delay.max, Math.max(30000, min), false);
    if (min > max) throw invalid(`reconnectDelay {min: ${min}, max: ${max}}: want min <= max`);
    const WS = o.WebSocket || globalThis.WebSocket;
    if (typeof WS !== "function") throw invalid("no WebSocket constructor: give options.WebSocket");
    this._opts = {
      minDelay: min,
      maxDelay: max,
      maxAttempts: positiveNumber("maxAttempts", o.maxAttempts, 0, true),
      failFast: !!o.failFast,
      dialTimeout: positiveNumber("dialTimeout", o.dialTimeout, 10000, false),
      requestTimeout: positiveNumber("requestTimeout", o.requestTimeout, 30000, true),
      sendQueue: positiveNumber("sendQueue", o.sendQueue, 256, false),
      maxPending: positiveNumber("maxPending", o.maxPending, 256, false),
      concurrency: positiveNumber("concurrency", o.concurrency, 64, false),
      rateRetries: positiveNumber("rateLimitRetries", o.rateLimitRetries, 8, true),
      WebSocket: WS,
      getToken: o.getToken || null,
      tokenParam: o.tokenParam === undefined ? "token" : o.tokenParam,
      restore: !!o.restore,
    };
    if (this._opts.getToken !== null && typeof this._opts.getToken !== "function") throw invalid("getToken is not a function");
    if (typeof this._opts.tokenParam !== "string" || this._opts.tokenParam === "") throw invalid(`tokenParam ${JSON.stringify(o.tokenParam)}: want a query parameter's name`);
    this._clock = o.clock || defaultClock;
    for (const k of ["setTimeout", "clearTimeout", "now"]) {
      if (typeof this._clock[k] !== "function") throw invalid(`clock.${k} is not a function`);
    }
    this._random = o.random || Math.random;
    if (typeof this._random !== "function") throw invalid("random is not a function");
    this._log = o.logger || {};
    this._hooks = Object.freeze({ ...(o.hooks || {}) });
    for (const [name, fn] of Object.entries(this._hooks)) {
      if (fn !== undefined && fn !== null && typeof fn !== "function") throw invalid(`hooks.${name} is not a function`);
    }
    this._urls = list;
    this._asks = new Map();
    this._tells = new Map();
    for (const [name, fn] of Object.entries(o.askHandlers || {})) {
      if (typeof fn !== "function") throw invalid(`askHandlers["${name}"] is not a function`);
      this._asks.set(name, fn);
    }
    for (const [name, fn] of Object.entries(o.tellHandlers || {})) {
      if (typeof fn !== "function") throw invalid(`tellHandlers["${name}"] is not a function`);
      this._tells.set(name, fn);
    }

    this._status = Status.Connecting;
    this._err = null;
    this._started = false;
    this._closing = false;
    this._ready = null; // the current link, once up
    this._attempt = null; // the link of the attempt in progress
    this._info = null;
    this._subs = new Map();
    this._own = [{ channel: "", pos: zeroPosition }, { channel: "", pos: zeroPosition }];
    this._queue = []; // requests waiting for a link or a slot
    this._nextID = 0;
    this._asksRunning = 0;
    this._sleep = null; // the backoff timer being waited on
    this._retry = 0; // backoff step; carried over while links do not last
    this._stats = { reconnects: 0, recovered: 0, gaps: 0, duplicates: 0 };
    this._onOnline = null;
    this._restored = false; // the session's stored subscriptions were restored (Options.restore)
    this._lastReason = null; // why the last attempt or link ended, for getToken
  }

  // ---- life ---------------------------------------------------------------

  /**
   * Makes the first connection: one attempt per URL (the client's own first,
   * then the others from a random one), without delay, until one is
   * welcomed. It resolves then; later drops are handled by reconnecting. If
   * every attempt fails the client closes, and the Promise rejects with the
   * last error. Calling it again returns the same outcome.
   * @returns {Promise<void>}
   */
  connect() {
    if (this._connectPromise) return this._connectPromise;
    this._connectPromise = this._connectFirst();
    return this._connectPromise;
  }

  async _connectFirst() {
    this._started = true;
    const order = [this._urls[0], ...rotated(this._urls.slice(1), this._random)];
    let last = null;
    for (const u of order) {
      if (this._closing) break;
      try {
        await this._connectOnce(u, this._opts.restore, (l) => this._linkUp(l, false));
        this._watchOnline();
        return;
      } catch (err) {
        last = err;
        this._lastReason = err;
        this._debug("sss: connection attempt failed", u, err);
        if (this._permanent(err)) break;
      }
    }
    const err = this._closing ? new SSSError(Code.Closed, "client closed") : last;
    this._finish(err);
    throw err;
  }

  // _connectOnce makes one connection attempt: the token, the handshake,
  // the welcome and, when resuming, the resume (without a list when the
  // session's stored subscriptions are still to be restored). onUp runs
  // synchronously when the link is ready, before any frame that follows;
  // the Promise settles then, or with the error that ended the attempt.
  // dialTimeout bounds it all, getToken included.
  _connectOnce(url, resuming, onUp) {
    return new Promise((resolve, reject) => {
      let l = null;
      let over = false;
      const end = (err) => {
        if (over) return;
        over = true;
        this._clock.clearTimeout(timer);
        reject(err);
      };
      const timer = this._clock.setTimeout(() => {
        const err = new SSSError(Code.Timeout, `no welcome${resuming ? " and resume" : ""} from ${url} within ${this._opts.dialTimeout} ms`);
        if (l) l.fail(err);
        else end(err);
      }, this._opts.dialTimeout);
      const open = (token) => {
        if (over) return;
        if (this._closing) {
          end(new SSSError(Code.Closed, "client closed"));
          return;
        }
        let dialURL = url;
        if (token !== null) {
          const u = new URL(url);
          u.searchParams.set(this._opts.tokenParam, token);
          dialURL = u.href;
        }
        try {
          l = new Link(this, url, resuming, resuming && this._opts.restore && !this._restored, dialURL);
        } catch (e) {
          end(new SSSError(Code.ConnectFailed, `cannot connect to ${url}`, { cause: e }));
          return;
        }
        this._attempt = l;
        l.onUp = () => {
          over = true;
          this._clock.clearTimeout(timer);
          if (this._attempt === l) this._attempt = null;
          l.up = true;
          l.onEnd = (err) => this._linkEnded(l, err);
          onUp(l);
          resolve(l);
        };
        l.onEnd = (err) => {
          if (this._attempt === l) this._attempt = null;
          this._failRequests(l, err);
          end(err);
        };
      };
      if (!this._opts.getToken) {
        open(null);
        return;
      }
      let p;
      try {
        p = Promise.resolve(this._opts.getToken({ url, reason: this._lastReason }));
      } catch (e) {
        p = Promise.reject(e);
      }
      p.then(
        (token) => {
          if (typeof token !== "string" || token === "") {
            end(new SSSError(Code.ConnectFailed, `token for ${url}: getToken gave ${token === "" ? "an empty string" : typeof token}, want a string`));
            return;
          }
          open(token);
        },
        (e) => {
          const code = e instanceof SSSError ? e.code : Code.ConnectFailed;
          end(new SSSError(code, `token for ${url}: ${e && e.message ? e.message.replace(/^sss: /, "") : String(e)}`, { cause: e }));
        },
      );
    });
  }

  // _linkUp makes l the current link and sends what waited for it.
  _linkUp(l, reconnected) {
    if (this._closing) {
      l.fail(new SSSError(Code.Closed, "client closed"));
      return;
    }
    l.since = this._clock.now();
    this._ready = l;
    this._info = l.info;
    this._setStatus(Status.Connected);
    if (reconnected) {
      this._stats.reconnects++;
      if (this._hooks.onReconnect) this._call(this._hooks.onReconnect, l.info);
    }
    this._pump();
  }

  // _linkEnded runs when the current link drops: requests in flight fail,
  // and the client reconnects unless the reason is final.
  _linkEnded(l, err) {
    if (this._ready === l) this._ready = null;
    this._lastReason = err;
    this._failRequests(l, err);
    if (this._closing || this._status === Status.Closed) return;
    this._info_log("sss: link dropped", l.url, err);
    if (this._hooks.onDrop) this._call(this._hooks.onDrop, err);
    if (this._permanent(err)) {
      this._finish(err);
      return;
    }
    this._setStatus(Status.Reconnecting);
    for (const s of [...this._subs.values()]) s._setStatus(SubStatus.Resubscribing, null);
    if (this._opts.failFast) this._rejectQueued(new SSSError(Code.Disconnected, "disconnected", { cause: err }));
    if (this._clock.now() - l.since >= stableLink) this._retry = 0;
    this._reconnect(err, l.url);
  }

  // _reconnect makes attempts, in rounds over the other URLs from a random
  // one and then the one lost, until one succeeds or the client closes.
  async _reconnect(cause, lost) {
    // 4000: the server is going away and asks for an immediate reconnect,
    // preferably elsewhere, which the order gives.
    // 4007: the credentials expired; getToken gives fresh ones at once.
    let immediate = cause instanceof CloseError && (cause.closeCode === 4000 || cause.closeCode === 4007);
    const others = this._urls.filter((u) => u !== lost);
    const order = rotated(others, this._random);
    if (others.length < this._urls.length) order.push(lost);
    for (let attempt = 1; ; attempt++) {
      if (!immediate) {
        const d = backoff(this._retry, this._opts.minDelay, this._opts.maxDelay, this._random);
        this._retry++;
        if (!(await this._wait(d))) return;
      }
      immediate = false;
      if (this._closing) return;
      const u = order[(attempt - 1) % order.length];
      try {
        await this._connectOnce(u, true, (l) => this._linkUp(l, true));
        this._info_log("sss: reconnected", u, attempt);
        return;
      } catch (err) {
        if (this._closing) return;
        this._lastReason = err;
        this._debug("sss: reconnection attempt failed", u, attempt, err);
        if (this._permanent(err)) {
          this._finish(err);
          return;
        }
        if (this._opts.maxAttempts > 0 && attempt >= this._opts.maxAttempts) {
          this._finish(new SSSError(err.code, `gave up reconnecting after ${attempt} attempts: ${err.message.replace(/^sss: /, "")}`, { cause: err }));
          return;
        }
      }
    }
  }

  // _wait waits ms on the client's clock; false when the client closed.
  _wait(ms) {
    return new Promise((resolve) => {
      const wake = (ok) => {
        if (this._sleep !== entry) return;
        this._clock.clearTimeout(entry.timer);
        this._sleep = null;
        resolve(ok);
      };
      const entry = { wake, timer: null };
      this._sleep = entry;
      entry.timer = this._clock.setTimeout(() => wake(!this._closing), ms);
    });
  }

  // _watchOnline reconnects at once when the browser says it is online
  // again, instead of waiting out the backoff.
  _watchOnline() {
    if (this._onOnline || typeof globalThis.addEventListener !== "function") return;
    this._onOnline = () => {
      if (this._sleep && this._status === Status.Reconnecting) this._sleep.wake(true);
    };
    globalThis.addEventListener("online", this._onOnline);
  }

  // _permanent reports whether err ends the client for good: a close code
  // 4500–4999, a server that does not speak sss.v1, or credentials refused
  // (getToken rejected with "unauthorized" or "forbidden").
  _permanent(err) {
    return (err instanceof CloseError && err.permanent) || is(err, Code.Protocol) || is(err, Code.Unauthorized) || is(err, Code.Forbidden);
  }

  // _finish closes the client for good with reason err. Idempotent.
  _finish(err) {
    if (this._status === Status.Closed) return;
    this._closing = true;
    this._err = err;
    if (this._onOnline) {
      globalThis.removeEventListener("online", this._onOnline);
      this._onOnline = null;
    }
    if (this._sleep) this._sleep.wake(false);
    const closed = is(err, Code.Closed) ? err : new SSSError(Code.Closed, "client closed", { cause: err });
    this._rejectQueued(closed);
    for (const l of [this._ready, this._attempt]) if (l) l.fail(closed);
    this._ready = null;
    this._attempt = null;
    this._setStatus(Status.Closed);
    for (const [ch, s] of [...this._subs]) {
      this._subs.delete(ch);
      s._setStatus(SubStatus.Unsubscribed, err);
    }
  }

  /**
   * Closes the connection with a normal close frame and stops the client
   * for good. Requests in flight and waiting fail with code "closed".
   * Idempotent. The Promise resolves once the socket closed (1 s at most).
   * @returns {Promise<void>}
   */
  close() {
    if (this._status === Status.Closed) return Promise.resolve();
    const ws = this._ready ? this._ready.ws : null;
    this._finish(new SSSError(Code.Closed, "client closed"));
    if (!ws || ws.readyState === 3) return Promise.resolve();
    return new Promise((resolve) => {
      const t = this._clock.setTimeout(resolve, 1000);
      ws.addEventListener?.("close", () => {
        this._clock.clearTimeout(t);
        resolve();
      });
    });
  }

  /** The connection's state now. @type {Status} */
  get status() { return this._status; }

  /** Why the client closed ("closed" after close(), or the error that stopped it for good); null while not closed. @type {SSSError|null} */
  get err() { return this._err; }

  /** The id of the current connection, or "" while disconnected. @type {string} */
  get id() { return this._ready ? this._ready.info.id : ""; }

  /** The current connection or, while disconnected, the last one; null before the first. @type {ConnInfo|null} */
  get conn() { return this._info; }

  /** The client's URLs, resolved, in order. @type {string[]} */
  get urls() { return this._urls.slice(); }

  /**
   * Counters of what the client did to keep its channels exact: reconnects,
   * channels recovered exactly, gaps, and duplicates dropped (publications
   * whose offset was not past their channel's position; a server that keeps
   * its promise sends none).
   * @type {{reconnects: number, recovered: number, gaps: number, duplicates: number}}
   */
  get stats() { return { ...this._stats }; }

  /**
   * Where the client stands on a channel it receives: a subscription's, or
   * the user or session channel. Epoch "" when unknown.
   * @param {string} channel
   * @returns {Position}
   */
  position(channel) {
    const s = this._subs.get(channel);
    if (s) return s._pos;
    for (const o of this._own) if (o.channel !== "" && o.channel === channel) return o.pos;
    return zeroPosition;
  }

  /**
   * The client's subscriptions now, by channel: its own, the server's
   * (sub.server), and those restored from the session store.
   * @returns {Map<string, Subscription>}
   */
  subscriptions() { return new Map(this._subs); }

  _setStatus(s) {
    const old = this._status;
    if (old === s) return;
    this._status = s;
    if (this._hooks.onStatusChange) this._call(this._hooks.onStatusChange, s, old);
  }

  // _call runs a callback; one that throws is reported to onError.
  _call(fn, ...args) {
    try {
      return fn(...args);
    } catch (e) {
      this._report(e, "callback threw");
      return undefined;
    }
  }

  _report(e, what) {
    const err = e instanceof SSSError ? e : new SSSError(Code.Internal, `${what}: ${e && e.message ? e.message : String(e)}`, { cause: e });
    const fn = this._hooks.onError;
    if (!fn) {
      this._warn("sss:", err);
      return;
    }
    try {
      fn(err);
    } catch (e2) {
      this._warn("sss: onError hook threw", e2);
    }
  }

  _debug(...a) { if (this._log.debug) this._log.debug(...a); }
  _info_log(...a) { if (this._log.info) this._log.info(...a); }
  _warn(...a) { if (this._log.warn) this._log.warn(...a); }

  // ---- requests -----------------------------------------------------------

  /**
   * Calls the server's ask handler name with data and resolves with its
   * result. A refusal rejects with an SSSError whose code is the server's
   * ("not_found", "timeout", "forbidden", or the handler's own). An ask
   * refused with "rate_limited" is sent again after a short jittered delay,
   * up to rateLimitRetries times. An ask in flight when the link drops
   * rejects with "disconnected": it may or may not have run, so it is not
   * sent again. With no reply within opts.timeout it rejects with "timeout".
   * @param {string} name
   * @param {any} [data]
   * @param {RequestOptions} [opts]
   * @returns {Promise<any>}
   */
  ask(name, data, opts = {}) {
    return this._request({ type: "ask", name, data: data === undefined ? null : data }, {
      label: `ask "${name}"`, counted: true, timeout: opts.timeout, signal: opts.signal,
    });
  }

  /**
   * Sends data to the server's tell handler name; resolves once the server
   * acknowledged it (the handler runs after). Retried after "rate_limited"
   * as an ask is.
   * @param {string} name
   * @param {any} [data]
   * @param {RequestOptions} [opts]
   * @returns {Promise<void>}
   */
  async tell(name, data, opts = {}) {
    await this._request({ type: "tell", name, data: data === undefined ? null : data }, {
      label: `tell "${name}"`, counted: true, timeout: opts.timeout, signal: opts.signal,
    });
  }

  /**
   * Publishes an event to a channel; resolves once the cluster accepted it.
   * The server must allow client publications (its publish parser), else
   * the Promise rejects with "forbidden". A publication in flight when the
   * link drops rejects with "disconnected": it may or may not have been
   * accepted. With opts.exceptSelf this connection does not receive it
   * (a catch-up after a reconnect does).
   * @param {string} channel
   * @param {string} event
   * @param {any} [data]
   * @param {PublishOptions} [opts]
   * @returns {Promise<void>}
   */
  async publish(channel, event, data, opts = {}) {
    const frame = { type: "publish", channel, event: event || "", data: data === undefined ? null : data };
    if (opts.exceptSelf) frame.exceptSelf = true;
    await this._request(frame, {
      label: `publish to "${channel}"`, timeout: opts.timeout, signal: opts.signal,
    });
  }

  /**
   * Subscribes to channel; resolves with the Subscription once the server
   * acknowledged it. If the link drops meanwhile, it is sent again on the
   * next one (unless failFast). The server may refuse: "forbidden" (parser
   * or reserved channel), "conflict" (already subscribed), "bad_request"
   * (invalid name), "limit_exceeded". Messages are delivered from the ack
   * on: give the handlers here to see the first ones. With opts.since (a
   * position from history()), every publication after it comes first.
   * @param {string} channel
   * @param {SubscribeOptions} [opts]
   * @returns {Promise<Subscription>}
   */
  async subscribe(channel, opts = {}) {
    if (typeof channel !== "string") throw invalid(`subscribe: channel ${JSON.stringify(channel)} is not a string`);
    const since = opts.since === undefined ? null : checkPosition(`subscribe to "${channel}": since`, opts.since);
    const s = new Subscription(this, channel, opts.query, opts.hooks);
    for (const k of ["joinHandler", "leaveHandler"]) {
      if (opts[k] !== undefined && typeof opts[k] !== "function") throw invalid(`subscribe to "${channel}": ${k} is not a function`);
    }
    s._onJoin = opts.joinHandler || null;
    s._onLeave = opts.leaveHandler || null;
    for (const [event, fn] of Object.entries(opts.eventHandlers || {})) {
      if (typeof fn !== "function") throw invalid(`subscribe to "${channel}": eventHandlers["${event}"] is not a function`);
      s._on.set(event, fn);
    }
    if (opts.messageHandler !== undefined) {
      if (typeof opts.messageHandler !== "function") throw invalid(`subscribe to "${channel}": messageHandler is not a function`);
      s._onAny = opts.messageHandler;
    }
    const frame = { type: "subscribe", channel };
    if (opts.query !== undefined) frame.query = opts.query;
    if (since) frame.since = since;
    await this._request(frame, {
      label: `subscribe to "${channel}"`, timeout: opts.timeout, signal: opts.signal, resend: true,
      // On the link, before the frame that follows the ack: the subscription
      // is in place for its first publication.
      onAck: (l, result, abandoned) => {
        s._pos = positionOf(result);
        if (abandoned || this._closing) {
          // Nobody holds this subscription: drop it on the server too.
          this._sendUnsubscribe(l, channel);
          return;
        }
        const old = this._subs.get(channel);
        this._subs.set(channel, s);
        if (old && old !== s) old._setStatus(SubStatus.Unsubscribed, null);
        if (since) {
          // Whether the publications after since could all be delivered.
          const info = outcome(channel, ChannelKind.Subscription, s, since, result);
          s._recovered = info.recovered;
          this._recovery(info);
        }
      },
    });
    return s;
  }

  /**
   * Lists who is subscribed to channel right now, on every instance, with
   * the counts. By default only the channel's subscribers may read it:
   * "forbidden" otherwise; "not_supported" when the channel (or the
   * cluster) keeps no presence.
   * @param {string} channel
   * @param {RequestOptions} [opts]
   * @returns {Promise<PresenceResult>}
   */
  async presence(channel, opts = {}) {
    const r = await this._request({ type: "presence", channel }, {
      label: `presence of "${channel}"`, timeout: opts.timeout, signal: opts.signal,
    });
    const o = r && typeof r === "object" ? r : {};
    return Object.freeze({
      clients: Object.freeze((Array.isArray(o.clients) ? o.clients : []).map(clientInfo)),
      counts: countsOf(o.counts),
      more: !!o.more,
    });
  }

  /**
   * Counts who is subscribed to channel, at a cost that does not grow with
   * the channel's size. Errors as presence().
   * @param {string} channel
   * @param {RequestOptions} [opts]
   * @returns {Promise<PresenceCounts>}
   */
  async presenceCounts(channel, opts = {}) {
    const r = await this._request({ type: "presence", channel, counts: true }, {
      label: `presence counts of "${channel}"`, timeout: opts.timeout, signal: opts.signal,
    });
    return countsOf(r && r.counts);
  }

  /**
   * Reads a channel's history: its last publications (opts.limit, default
   * 50), or the first ones after opts.since, oldest first, and the position
   * where the read ends. To show the last messages and go on live with no
   * gap and no duplicate:
   *
   *     const { messages, position } = await client.history("chat.room1", { limit: 50 });
   *     messages.forEach(show);
   *     await client.subscribe("chat.room1", { since: position, messageHandler: show });
   *
   * A reply the server cut to fit its send queue is read on from where it
   * stopped, up to the limit. Errors: "not_supported" (no history kept),
   * "not_found" (the publications after since are gone), "forbidden" (the
   * subscription parser refused).
   * @param {string} channel
   * @param {HistoryOptions} [opts]
   * @returns {Promise<HistoryResult>}
   */
  async history(channel, opts = {}) {
    const label = `history of "${channel}"`;
    const limit = opts.limit === undefined ? 50 : opts.limit;
    if (!Number.isInteger(limit) || limit <= 0) throw invalid(`${label}: limit ${JSON.stringify(opts.limit)}: want a positive whole number`);
    let since = opts.since === undefined ? null : checkPosition(`${label}: since`, opts.since);
    const timeout = opts.timeout === undefined ? this._opts.requestTimeout : opts.timeout;
    const start = this._clock.now();
    const messages = [];
    for (;;) {
      const frame = { type: "history", channel, limit: limit - messages.length };
      if (since) frame.since = since;
      if (opts.query !== undefined) frame.query = opts.query;
      // The timeout bounds the whole read, its follow-ups included.
      const left = timeout > 0 ? Math.max(1, timeout - (this._clock.now() - start)) : 0;
      const r = await this._request(frame, { label, timeout: left, signal: opts.signal });
      if (!r || !Array.isArray(r.publications)) throw new SSSError(Code.Protocol, `${label}: protocol violation: result without publications`);
      for (const p of r.publications) messages.push(message(p || {}, channel));
      const position = positionOf(r.position);
      if (!r.more || messages.length >= limit || isZero(position)) return Object.freeze({ messages: Object.freeze(messages), position });
      since = position; // cut to fit: read on from where it stopped
    }
  }

  /**
   * Sets the handler for the server's asks named name, replacing any; null
   * removes it. A handler needed from the first connection on is given as
   * Options.askHandlers.
   * @param {string} name @param {AskHandler|null} fn
   */
  handleAsk(name, fn) {
    if (fn) this._asks.set(name, fn);
    else this._asks.delete(name);
  }

  /**
   * Sets the handler for the server's tells named name, replacing any; null
   * removes it. A tell with no handler goes to onError as "not_found".
   * @param {string} name @param {TellHandler|null} fn
   */
  handleTell(name, fn) {
    if (fn) this._tells.set(name, fn);
    else this._tells.delete(name);
  }

  // _request queues a request and returns the Promise of its result.
  //   counted: an ask or tell (limits.concurrency; retried after rate_limited)
  //   resend:  sent again on the next link if the link drops (subscribe)
  //   direct:  sent on the current link only, never queued (unsubscribe)
  //   onAck(link, result, abandoned): runs on the link at the ack
  _request(frame, o) {
    return new Promise((resolve, reject) => {
      if (this._status === Status.Closed) {
        reject(this._closedError(o.label));
        return;
      }
      if (!this._started) {
        reject(new SSSError(Code.Disconnected, `${o.label}: not connected: call connect() first`));
        return;
      }
      if (o.signal && o.signal.aborted) {
        reject(new SSSError(Code.Aborted, `${o.label}: aborted`, { cause: o.signal.reason }));
        return;
      }
      if (!this._ready && (this._opts.failFast || o.direct)) {
        reject(new SSSError(Code.Disconnected, `${o.label}: disconnected`));
        return;
      }
      if (this._queue.length >= this._opts.sendQueue) {
        reject(new SSSError(Code.LimitExceeded, `${o.label}: send queue full (${this._opts.sendQueue} requests waiting)`));
        return;
      }
      const r = {
        frame, label: o.label, counted: !!o.counted, resend: !!o.resend, onAck: o.onAck || null,
        resolve, reject, state: "queued", link: null, id: 0, retries: 0, timer: null, retryTimer: null, signal: o.signal || null, onAbort: null,
      };
      const timeout = o.timeout === undefined ? this._opts.requestTimeout : o.timeout;
      if (timeout > 0) {
        r.timer = this._clock.setTimeout(() => {
          r.timer = null;
          this._abandon(r, new SSSError(Code.Timeout, `${o.label}: no reply within ${timeout} ms`));
        }, timeout);
      }
      if (r.signal) {
        r.onAbort = () => this._abandon(r, new SSSError(Code.Aborted, `${o.label}: aborted`, { cause: r.signal.reason }));
        r.signal.addEventListener("abort", r.onAbort, { once: true });
      }
      if (o.direct) this._queue.unshift(r);
      else this._queue.push(r);
      this._pump();
    });
  }

  _closedError(label) {
    const err = this._err;
    if (!err || (is(err, Code.Closed) && !err.cause)) return new SSSError(Code.Closed, `${label}: client closed`);
    return new SSSError(Code.Closed, `${label}: client closed: ${err.message.replace(/^sss: /, "")}`, { cause: err });
  }

  // _settle ends a request: it resolves or rejects once.
  _settle(r, err, result) {
    if (r.state === "done" || r.state === "abandoned") return;
    r.state = "done";
    this._cleanup(r);
    if (err) r.reject(err);
    else r.resolve(result);
  }

  _cleanup(r) {
    if (r.timer !== null) this._clock.clearTimeout(r.timer);
    if (r.retryTimer !== null) this._clock.clearTimeout(r.retryTimer);
    r.timer = r.retryTimer = null;
    if (r.signal && r.onAbort) r.signal.removeEventListener("abort", r.onAbort);
  }

  // _abandon gives up a request on its timeout or abort. A request sent
  // stays pending on its link, so that it keeps its concurrency slot (the
  // server counts it until it answers) and its ack still runs onAck.
  _abandon(r, err) {
    if (r.state === "done" || r.state === "abandoned") return;
    const i = this._queue.indexOf(r);
    if (i >= 0) this._queue.splice(i, 1);
    const sent = r.state === "sent";
    this._cleanup(r);
    r.state = sent ? "abandoned" : "done";
    r.reject(err);
  }

  // _pump sends the queued requests the current link has room for, in
  // order; an ask or tell waits for a concurrency slot without holding up
  // the requests behind it.
  _pump() {
    const l = this._ready;
    if (!l || l.dead) return;
    const conc = l.info.limits.concurrency;
    for (let i = 0; i < this._queue.length; ) {
      if (l.pending.size >= this._opts.maxPending) return;
      const r = this._queue[i];
      if (r.retryTimer !== null || (r.counted && conc > 0 && l.counted >= conc)) {
        i++;
        continue;
      }
      this._queue.splice(i, 1);
      this._send(l, r);
      if (l.dead) return;
    }
  }

  _send(l, r) {
    r.id = ++this._nextID;
    let b;
    try {
      b = JSON.stringify({ ...r.frame, id: r.id });
    } catch (e) {
      this._settle(r, new SSSError(Code.InvalidConfig, `${r.label}: cannot encode: ${e.message}`, { cause: e }));
      return;
    }
    const max = l.info.limits.maxMessage;
    // A UTF-16 code unit is at most 3 bytes of UTF-8: count only when it matters.
    if (max > 0 && b.length * 3 > max && new TextEncoder().encode(b).length > max) {
      this._settle(r, new SSSError(Code.TooLarge, `${r.label}: frame exceeds the server's limit of ${max} bytes`));
      return;
    }
    r.state = "sent";
    r.link = l;
    l.pending.set(r.id, r);
    if (r.counted) l.counted++;
    l.write(b);
  }

  // _complete hands a reply to its request.
  _complete(l, id, result, error) {
    const r = l.pending.get(id);
    if (!r) return; // a late reply to a request already failed, or a stray id
    l.pending.delete(id);
    if (r.counted) l.counted--;
    const abandoned = r.state === "abandoned";
    if (!error) {
      if (r.onAck) r.onAck(l, result, abandoned);
      if (!abandoned) this._settle(r, null, result);
    } else if (!abandoned) {
      const code = typeof error.code === "string" && error.code !== "" ? error.code : Code.Internal;
      const msg = typeof error.message === "string" ? error.message : "";
      if (r.counted && code === Code.RateLimited && r.retries < this._opts.rateRetries) {
        // The server ran nothing: send it again after a jittered delay.
        const d = backoff(r.retries, rateRetryMin, rateRetryMax, this._random);
        r.retries++;
        r.state = "queued";
        r.retryTimer = this._clock.setTimeout(() => {
          r.retryTimer = null;
          this._pump();
        }, d);
        this._queue.unshift(r);
      } else {
        this._settle(r, new SSSError(code, `${r.label}: ${code}${msg ? ": " + msg : ""}`, { detail: msg, fromServer: true }));
      }
    }
    this._pump();
  }

  // _failRequests fails the requests in flight on a link that ended. A
  // subscribe is sent again on the next link (its resume did not include
  // it); the others may or may not have run, and reject.
  _failRequests(l, reason) {
    const pending = [...l.pending.values()].sort((a, b) => a.id - b.id);
    l.pending.clear();
    l.counted = 0;
    const resend = [];
    for (const r of pending) {
      if (r.state !== "sent") continue; // abandoned: nobody waits
      if (r.resend && !this._opts.failFast && !this._closing) {
        r.state = "queued";
        resend.push(r);
        continue;
      }
      this._settle(r, this._closing ? this._closedError(r.label) : new SSSError(Code.Disconnected, `${r.label}: disconnected: ${reason.message.replace(/^sss: /, "")}`, { cause: reason }));
    }
    this._queue.unshift(...resend);
  }

  _rejectQueued(err) {
    const q = this._queue;
    this._queue = [];
    for (const r of q) this._settle(r, new SSSError(err.code, `${r.label}: ${err.message.replace(/^sss: /, "")}`, { cause: err.cause || err }));
  }

  _sendUnsubscribe(l, channel) {
    l.write(JSON.stringify({ type: "unsubscribe", id: ++this._nextID, channel }));
  }

  // _dropSub forgets s after unsubscribe().
  _dropSub(s) {
    if (this._subs.get(s.channel) !== s) return;
    this._forget(s);
    s._setStatus(SubStatus.Unsubscribed, null);
  }

  // _forget removes s from the subscriptions held, whoever ended it (the
  // client or the server): the ancestors' offsets may then jump over what
  // came through s, which is no gap.
  _forget(s) {
    this._subs.delete(s.channel);
    for (const [ch, a] of this._subs) if (isAncestor(ch, s.channel)) a._skips = true;
  }

  // _endedByServer forgets a subscription the server ended: an unsubscribed
  // frame, or a resume that answers not_found for a server subscription
  // ended while the client was away (an unsubscription, not a refusal).
  _endedByServer(s) {
    this._forget(s);
    s._setStatus(SubStatus.Unsubscribed, null);
    if (this._hooks.onUnsubscribed) this._call(this._hooks.onUnsubscribed, s);
  }

  // ---- what the server sends ---------------------------------------------

  _handle(l, f) {
    if (!l.welcomed) {
      if (f.type !== "welcome") {
        l.fail(new SSSError(Code.Protocol, `protocol violation: first frame is "${f.type}", not welcome`));
        return;
      }
      l.setWelcome(f);
      this._welcomeOwn(l);
      if (l.restoring) this._restoreStored(l);
      else if (l.resuming) this._resume(l);
      else l.onUp(l);
      return;
    }
    switch (f.type) {
      case "ack":
      case "error":
        if (typeof f.id !== "number" || f.id <= 0) {
          // About the connection's last message, not a request.
          const e = f.error || {};
          this._report(new SSSError(e.code || Code.Internal, `error from server: ${e.code || Code.Internal}${e.message ? ": " + e.message : ""}`, { detail: e.message || "", fromServer: true }));
          return;
        }
        if (f.type === "error") this._complete(l, f.id, undefined, f.error || { code: Code.Internal, message: "error frame without error" });
        else this._complete(l, f.id, f.result, null);
        return;
      case "pub":
        this._routePub(l, f);
        return;
      case "tell":
        this._routeTell(f);
        return;
      case "ask":
        this._serveAsk(l, f);
        return;
      case "join":
      case "leave":
        this._routePresence(f);
        return;
      case "subscribed":
        this._routeSubscribed(f);
        return;
      case "unsubscribed":
        this._routeUnsubscribed(f);
        return;
      case "ping":
        l.write('{"type":"pong"}');
        return;
      case "welcome":
        this._warn("sss: second welcome ignored", l.url);
        return;
      default:
        // Later protocol versions may add frame types.
        this._debug("sss: unknown frame type ignored", f.type);
    }
  }

  // _welcomeOwn records a new link's user and session channels. On a link
  // that resumes, a channel that is the previous connection's (same user,
  // same session) continues from its position; any other starts from the
  // welcome's, as on a link that restores (its channels are not listed:
  // the previous welcome was that of a failed attempt).
  _welcomeOwn(l) {
    l.ownChannels().forEach((ch, i) => {
      const o = this._own[i];
      if (l.resuming && !l.restoring && ch !== "" && ch === o.channel) {
        l.ownResume[i] = true;
        l.ownSince[i] = o.pos;
        return;
      }
      this._own[i] = { channel: ch, pos: positionOf(l.positions[ch]) };
    });
  }

  // _resume sends, as the link's first frame, the client's subscriptions
  // with their queries and positions, and the user and session channels
  // that continue the previous connection's, so that all catch up.
  _resume(l) {
    const subs = [...this._subs.values()].sort((a, b) => (a.channel < b.channel ? -1 : a.channel > b.channel ? 1 : 0));
    const since = subs.map((s) => s._pos);
    const entries = subs.map((s, i) => {
      const e = { channel: s.channel };
      if (s.query !== undefined) e.query = s.query;
      if (!isZero(since[i])) e.since = since[i];
      if (s._server) e.server = true; // kept by the server: listed to catch up
      return e;
    });
    l.ownChannels().forEach((ch, i) => {
      if (l.ownResume[i] && !isZero(l.ownSince[i])) entries.push({ channel: ch, since: l.ownSince[i] });
    });
    this._sendResume(l, { subscriptions: entries }, (link, result) => this._applyResume(link, subs, since, result));
  }

  // _restoreStored sends, as the first frame of the first link with
  // Options.restore, a resume without a list: the server restores the
  // subscriptions it stored for the session, each from where the session
  // last stood.
  _restoreStored(l) {
    this._sendResume(l, {}, (link, result) => this._applyRestore(link, result));
  }

  // _sendResume sends a resume on l; onAck runs at its ack, before any
  // frame that follows, and the link is up after it (unless it failed).
  _sendResume(l, body, onAck) {
    const id = ++this._nextID;
    const r = {
      frame: null, label: "resume", counted: false, resend: false, state: "sent", link: l, id, retries: 0, timer: null, retryTimer: null, signal: null, onAbort: null,
      onAck,
      resolve: () => {
        if (!l.dead) l.onUp(l); // onAck may have failed the link
      },
      reject: (err) => l.fail(err),
    };
    l.pending.set(id, r);
    l.write(JSON.stringify({ type: "resume", id, ...body }));
  }

  // _applyRestore makes a Subscription of each restored entry, at the ack,
  // before any of their publications, and tells of each (onSubscribed),
  // then of its catch-up.
  _applyRestore(l, result) {
    const list = result && Array.isArray(result.subscriptions) ? result.subscriptions : null;
    if (!list) {
      l.fail(new SSSError(Code.Protocol, "protocol violation: resume result without subscriptions"));
      return;
    }
    this._restored = true;
    for (const e of list) {
      if (!e || typeof e.channel !== "string") continue;
      if (e.error) {
        this._info_log("sss: stored subscription not restored", e.channel, e.error);
        continue;
      }
      if (this._subs.has(e.channel)) continue;
      const s = new Subscription(this, e.channel, e.query === null ? undefined : e.query, {});
      s._server = !!e.server;
      this._subs.set(e.channel, s);
      // Caught up from a stored position: its outcome is reported.
      const since = typeof e.recovered === "boolean" ? positionOf(e) : zeroPosition;
      const info = outcome(e.channel, ChannelKind.Subscription, s, since, e);
      s._pos = info.position;
      s._recovered = info.recovered || isZero(since);
      if (this._hooks.onSubscribed) this._call(this._hooks.onSubscribed, s);
      if (!isZero(since)) this._recovery(info);
    }
  }

  // _applyResume runs at the resume's ack, before any publication that
  // follows it: it restores or refuses each subscription, places the user
  // and session channels, and fires the hooks that say so.
  _applyResume(l, subs, since, result) {
    const list = result && Array.isArray(result.subscriptions) ? result.subscriptions : null;
    if (!list) {
      l.fail(new SSSError(Code.Protocol, "protocol violation: resume result without subscriptions"));
      return;
    }
    const results = new Map();
    for (const e of list) if (e && typeof e.channel === "string") results.set(e.channel, e);
    subs.forEach((s, i) => this._restoreSub(l, s, since[i], results.get(s.channel)));
    this._restoreOwn(l, results);
  }

  _restoreSub(l, s, since, e) {
    if (this._subs.get(s.channel) !== s) {
      // Unsubscribed while the resume was in flight: undo the server's.
      if (e && !e.error) this._sendUnsubscribe(l, s.channel);
      return;
    }
    if (e && e.error && e.error.code === Code.NotFound && (s._server || e.server)) {
      // A server subscription the server ended while the client was away.
      this._endedByServer(s);
      return;
    }
    if (!e || e.error) {
      const code = e && e.error && e.error.code ? e.error.code : Code.Internal;
      const msg = e && e.error ? e.error.message || "" : "subscription missing from the resume reply";
      const err = new SSSError(code, `resubscribe to "${s.channel}": ${code}${msg ? ": " + msg : ""}`, { detail: msg, fromServer: true });
      this._subs.delete(s.channel);
      if (s._setStatus(SubStatus.Refused, err) && this._hooks.onRefused) this._call(this._hooks.onRefused, s, err);
      return;
    }
    const info = outcome(s.channel, ChannelKind.Subscription, s, since, e);
    s._pos = info.position;
    s._recovered = info.recovered;
    s._leaving = false;
    s._skips = false;
    s._setStatus(SubStatus.Subscribed, null);
    this._recovery(info);
  }

  _restoreOwn(l, results) {
    l.ownChannels().forEach((ch, i) => {
      if (!l.ownResume[i]) return;
      const since = l.ownSince[i];
      const e = isZero(since) ? undefined : results.get(ch);
      const info = outcome(ch, i === 0 ? ChannelKind.User : ChannelKind.Session, null, since, e);
      if (e) {
        this._own[i].pos = info.position;
      } else if (isZero(since)) {
        // Not listed: live from the welcome's position.
        info.position = positionOf(l.positions[ch]);
        this._own[i].pos = info.position;
      } else {
        info.position = this._own[i].pos;
      }
      this._recovery(info);
    });
  }

  // _recovery counts an outcome and fires its hooks, in order: onRecover,
  // then (when publications were lost) the subscription's onGap and the
  // client's.
  _recovery(info) {
    if (info.recovered) this._stats.recovered++;
    else this._stats.gaps++;
    if (!info.recovered && !isZero(info.since)) this._warn("sss: publications lost", info.channel, info.reason);
    if (this._hooks.onRecover) this._call(this._hooks.onRecover, info);
    if (info.recovered) return;
    if (info.sub && info.sub._hooks.onGap) this._call(info.sub._hooks.onGap, info);
    if (this._hooks.onGap) this._call(this._hooks.onGap, info);
  }

  // _routePub hands a publication to its subscription's handlers, or to the
  // user or session hook. One not past its channel's position is dropped,
  // and one after a gap (another epoch, or a jump in offsets) is delivered
  // after the gap is reported.
  _routePub(l, f) {
    const sub = typeof f.sub === "string" && f.sub !== "" ? f.sub : String(f.channel || "");
    const m = message(f, sub);
    const p = m.epoch !== "" ? { offset: m.offset, epoch: m.epoch } : zeroPosition;
    if (sub === broadcastChannel) {
      // A broadcast: transient, unnumbered, for every connection.
      if (this._hooks.onBroadcast) this._call(this._hooks.onBroadcast, m);
      return;
    }
    let kind, s = null, own = -1;
    if (sub !== "" && sub === l.info.userChannel) {
      kind = ChannelKind.User;
      own = 0;
    } else if (sub !== "" && sub === l.info.sessionChannel) {
      kind = ChannelKind.Session;
      own = 1;
    } else {
      s = this._subs.get(sub);
      if (!s) {
        this._debug("sss: publication for no subscription", m.channel, sub);
        return;
      }
      if (this._deeperHeld(sub, m.channel)) {
        // Delivered once, through the most specific subscription.
        this._stats.duplicates++;
        return;
      }
      kind = ChannelKind.Subscription;
    }
    const pos = s ? s._pos : this._own[own].pos;
    const { ok, epochChanged } = accept(pos, p);
    if (!ok) {
      this._stats.duplicates++;
      this._debug("sss: duplicate publication dropped", m.channel, p.offset);
      return;
    }
    let gap = null;
    if (epochChanged) gap = epochGap(sub, kind, s, pos, p);
    else if (!isZero(pos) && !isZero(p) && p.offset > pos.offset + 1 && !this._maySkip(s)) gap = jumpGap(sub, kind, s, pos, p);
    if (gap) {
      if (s) s._recovered = false;
      this._recovery(gap);
    }
    if (!isZero(p)) {
      if (s) s._pos = p;
      else this._own[own].pos = p;
    }
    if (s) s._deliver(m);
    else {
      const h = own === 0 ? this._hooks.onUserMessage : this._hooks.onSessionMessage;
      if (h) this._call(h, m);
    }
  }

  // _deeperHeld reports whether the client holds a subscription below sub
  // that channel belongs to, not being unsubscribed: the server delivers
  // channel's publications through that one.
  _deeperHeld(sub, channel) {
    if (!isAncestor(sub, channel)) return false;
    for (let i = sub.length + 1; i <= channel.length; i++) {
      if (i === channel.length || channel[i] === ".") {
        const d = this._subs.get(channel.slice(0, i));
        if (d && !d._leaving) return true;
      }
    }
    return false;
  }

  // _maySkip reports whether a channel's offsets may jump without a loss: a
  // subscription with a deeper one (now, or since its position was last
  // set) does not see the offsets of what came through that one.
  _maySkip(s) {
    if (!s) return false;
    if (s._skips) return true;
    for (const ch of this._subs.keys()) if (isAncestor(s.channel, ch)) return true;
    return false;
  }

  // _routePresence hands a join or leave to its subscription's handler.
  // They are not numbered: a reconnect does not catch up on them (read
  // presence() again then).
  _routePresence(f) {
    const s = this._subs.get(String(f.channel || ""));
    if (!s) return;
    s._presence(f.type === "join", clientInfo(f.client));
  }

  // _routeSubscribed takes a server subscription, before any of its
  // publications.
  _routeSubscribed(f) {
    const channel = String(f.channel || "");
    if (channel === "") return;
    const held = this._subs.get(channel);
    if (held) {
      held._server = true; // one of the client's own that the server took over
      return;
    }
    const s = new Subscription(this, channel, undefined, {});
    s._server = true;
    s._pos = positionOf(f);
    this._subs.set(channel, s);
    if (this._hooks.onSubscribed) this._call(this._hooks.onSubscribed, s);
  }

  // _routeUnsubscribed ends a subscription the server ended.
  _routeUnsubscribed(f) {
    const s = this._subs.get(String(f.channel || ""));
    if (s) this._endedByServer(s);
  }

  _routeTell(f) {
    const name = String(f.name || "");
    const h = this._tells.get(name);
    if (!h) {
      this._report(new SSSError(Code.NotFound, `no tell handler "${name}"`));
      return;
    }
    try {
      const v = h(f.data === undefined ? null : f.data);
      if (v && typeof v.then === "function") v.then(undefined, (e) => this._report(e, `tell handler "${name}"`));
    } catch (e) {
      this._report(e, `tell handler "${name}"`);
    }
  }

  // _serveAsk answers a server ask: at most `concurrency` at once, each
  // replied on the link it came on if that link still lives.
  _serveAsk(l, f) {
    const id = f.id;
    const name = String(f.name || "");
    const h = this._asks.get(name);
    const reply = (result, err) => {
      if (l.dead) return;
      const fr = { type: "reply", id };
      if (err) {
        fr.error = err instanceof SSSError && err.code ? { code: err.code, message: err.message.replace(/^sss: /, "") } : { code: Code.Internal, message: err && err.message ? err.message : String(err) };
      } else {
        fr.result = result === undefined ? null : result;
      }
      let b;
      try {
        b = JSON.stringify(fr);
      } catch (e) {
        b = JSON.stringify({ type: "reply", id, error: { code: Code.Internal, message: `cannot encode the result: ${e.message}` } });
      }
      const max = l.info.limits.maxMessage;
      if (max > 0 && b.length * 3 > max && new TextEncoder().encode(b).length > max) {
        b = JSON.stringify({ type: "reply", id, error: { code: Code.TooLarge, message: `reply exceeds the server's limit of ${max} bytes` } });
      }
      l.write(b);
    };
    if (!h) {
      reply(undefined, new SSSError(Code.NotFound, `no ask handler "${name}"`));
      return;
    }
    if (this._asksRunning >= this._opts.concurrency) {
      reply(undefined, new SSSError(Code.RateLimited, `more than ${this._opts.concurrency} server asks at once`));
      return;
    }
    this._asksRunning++;
    let p;
    try {
      p = Promise.resolve(h(f.data === undefined ? null : f.data, { signal: l.abort.signal }));
    } catch (e) {
      p = Promise.reject(e);
    }
    p.then(
      (v) => reply(v, null),
      (e) => {
        if (!(e instanceof SSSError)) this._report(e, `ask handler "${name}" failed`);
        reply(undefined, e instanceof SSSError ? e : new SSSError(Code.Internal, `ask handler "${name}" failed`));
      },
    ).finally(() => {
      this._asksRunning--;
    });
  }
}

/**
 * Connects to the sss server at url and resolves with the Client once the
 * server welcomed it (see Client.connect). With options.urls, the others
 * are tried if url fails. An invalid option or URL rejects at once with
 * code "invalid_config".
 * @param {string} url
 * @param {Options} [options]
 * @returns {Promise<Client>}
 */
export async function dial(url, options) {
  const c = new Client(url, options);
  await c.connect();
  return c;
}
