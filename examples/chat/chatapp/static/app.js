// The chat page. It talks to the server with the sss browser client
// (/sss.js): rooms are subscriptions to "room.<name>" (a locked room sends
// its password as the subscription's query). Joining one reads its last
// messages from history, then subscribes from where they end: no gap, no
// duplicate. Who is there is the server's presence: the list, then join
// and leave events. Messages go out with the ask "send"; typing is a
// publication on "typing.<name>". The client reconnects by itself and
// catches up; when it cannot (the server lost its history), onGap tells
// the page, which says so and reloads what the server has.
import { dial, is, Code } from "/sss.js";

const $ = (sel) => document.querySelector(sel);
const HISTORY = 50; // messages shown when joining a room
const TYPING = 4000; // ms a "typing" shows
const LOCK = '<svg class="lock" viewBox="0 0 16 16" aria-label="locked"><path fill="currentColor" d="M4 7V5a4 4 0 1 1 8 0v2h.5A1.5 1.5 0 0 1 14 8.5v5a1.5 1.5 0 0 1-1.5 1.5h-9A1.5 1.5 0 0 1 2 13.5v-5A1.5 1.5 0 0 1 3.5 7H4zm2 0h4V5a2 2 0 1 0-4 0v2z"/></svg>';

const state = {
  me: "",
  client: null,
  rooms: [], // from /api/config
  peers: [],
  joined: new Map(), // room name → Room
  current: "lobby",
  timers: [],
};

// Room is a joined room: its subscriptions, its message list, who is there.
class Room {
  constructor(info, password) {
    this.info = info;
    this.name = info.name;
    this.query = password === undefined ? undefined : { password };
    this.sub = null; // room.<name>: messages, and join and leave events
    this.typingSub = null; // typing.<name>
    this.loading = false; // history is being read again: live messages wait in buffer
    this.buffer = [];
    this.shown = new Set(); // "epoch:offset" of the messages shown
    this.people = new Map(); // connection id → user: a person may have two tabs
    this.typing = new Map(); // name → until (ms)
    this.unread = 0;
    this.lastAuthor = "";
    this.lastAt = 0;
    this.list = document.createElement("ol");
    this.list.className = "messages";
    this.list.dataset.room = info.name;
    this.list.hidden = true;
    $("#lists").append(this.list);
  }
  channel() { return "room." + this.name; }
}

// ---- start ------------------------------------------------------------------

async function main() {
  $("#login").addEventListener("submit", onLogin);
  $("#logout").addEventListener("click", onLogout);
  $("#composer").addEventListener("submit", onSend);
  $("#text").addEventListener("input", onTyping);
  $("#password-form").addEventListener("submit", onPassword);
  const res = await fetch("/api/me");
  if (res.ok) {
    state.me = (await res.json()).name;
    await start();
  } else {
    showLogin();
  }
}

function showLogin() {
  $("#chat-view").hidden = true;
  $("#login-view").hidden = false;
  $("#name").focus();
}

async function onLogin(ev) {
  ev.preventDefault();
  const err = $("#login-error");
  err.hidden = true;
  const res = await fetch("/api/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name: $("#name").value }),
  });
  if (!res.ok) {
    err.textContent = (await res.text()).trim();
    err.hidden = false;
    return;
  }
  state.me = (await res.json()).name;
  await start();
}

async function onLogout() {
  await state.client?.close(); // the others see us leave
  await fetch("/api/logout", { method: "POST" });
  location.reload();
}

async function start() {
  $("#login-view").hidden = true;
  $("#chat-view").hidden = false;
  $("#me-name").textContent = state.me;
  paintAvatar($("#me-avatar"), state.me);
  const cfg = await (await fetch("/api/config")).json();
  state.rooms = cfg.rooms;
  state.peers = cfg.peers;
  renderRooms();
  if (!(await connect())) return;
  const wanted = JSON.parse(sessionStorage.getItem("rooms") || '["lobby"]');
  for (const name of wanted) {
    const info = state.rooms.find((r) => r.name === name && !r.locked);
    if (info) await join(info);
  }
  if (!state.joined.size) await join(state.rooms[0]);
  select(sessionStorage.getItem("current") || "lobby");
  state.timers.push(setInterval(sweep, 1000));
}

// connect dials the server: this page's own instance first, then the peers
// the server named. If none answers, it tries again.
async function connect() {
  for (let delay = 1000; ; delay = Math.min(delay * 2, 10000)) {
    try {
      state.client = await dial("/ws", {
        urls: state.peers,
        reconnectDelay: { min: 250, max: 8000 },
        requestTimeout: 15000,
        hooks: {
          onStatusChange: showStatus,
          onGap: onGap,
          onReconnect: () => {
            banner("");
            // Join and leave events are not caught up: read the lists again.
            for (const room of state.joined.values()) loadPresence(room);
          },
          onRefused: (sub, err) => {
            const room = [...state.joined.values()].find((r) => r.sub === sub);
            if (room) leave(room, `You were removed from #${room.name}: ${err.detail || err.code}.`);
          },
        },
      });
      showStatus(state.client.status);
      banner("");
      return true;
    } catch (err) {
      // A browser does not say why a handshake failed: a forgotten session
      // (401) looks like a server that is down. Ask.
      const me = await fetch("/api/me").catch(() => null);
      if (me && me.status === 401) {
        showLogin();
        return false;
      }
      showStatus("offline");
      banner("Cannot reach the server. Trying again…");
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

// ---- rooms ------------------------------------------------------------------

function renderRooms() {
  const ul = $("#rooms");
  ul.replaceChildren();
  for (const info of state.rooms) {
    const li = document.createElement("li");
    li.dataset.room = info.name;
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "room-link";
    btn.innerHTML = `<span class="hash">${info.locked ? LOCK : "#"}</span><span class="room-name"></span><span class="badge" hidden></span>`;
    btn.querySelector(".room-name").textContent = info.name;
    btn.addEventListener("click", () => open(info));
    const x = document.createElement("button");
    x.type = "button";
    x.className = "leave";
    x.title = "Leave";
    x.textContent = "×";
    x.addEventListener("click", () => {
      const room = state.joined.get(info.name);
      if (room) leave(room, "");
    });
    li.append(btn, x);
    ul.append(li);
  }
  paintRooms();
}

function paintRooms() {
  for (const li of $("#rooms").children) {
    const room = state.joined.get(li.dataset.room);
    li.classList.toggle("joined", !!room);
    li.classList.toggle("current", li.dataset.room === state.current);
    const badge = li.querySelector(".badge");
    badge.hidden = !room || room.unread === 0;
    badge.textContent = room ? String(room.unread) : "";
  }
}

// open shows a room, joining it first (asking for its password if locked).
async function open(info) {
  if (state.joined.has(info.name)) {
    select(info.name);
    return;
  }
  if (info.locked) {
    state.current = info.name;
    showPassword(info);
    return;
  }
  await join(info);
  select(info.name);
}

function showPassword(info) {
  for (const room of state.joined.values()) room.list.hidden = true;
  title(info);
  $("#password-room").textContent = "#" + info.name;
  $("#password-error").hidden = true;
  $("#password-view").hidden = false;
  $("#lists").hidden = true;
  $("#typing").hidden = true;
  $("#composer").hidden = true;
  $("#typing").textContent = "";
  $("#password").value = "";
  $("#password").focus();
  paintRooms();
  paintOnline();
}

// title shows a room's name in the header, with a lock if it has one.
function title(info) {
  const h = $("#room-title");
  h.innerHTML = info.locked ? LOCK : '<span class="hash">#</span>';
  h.append(info.name);
}

async function onPassword(ev) {
  ev.preventDefault();
  const info = state.rooms.find((r) => r.name === state.current);
  const err = $("#password-error");
  err.hidden = true;
  try {
    await join(info, $("#password").value);
    select(info.name);
  } catch (e) {
    err.textContent = is(e, Code.Forbidden) ? "Wrong password. Try again." : `Could not join: ${e.detail || e.message}`;
    err.hidden = false;
    $("#password").select();
  }
}

// join reads a room's last messages and shows them, then subscribes from
// the position the read ended at (the subscription delivers what was
// published since, once), then reads who is there.
async function join(info, password) {
  const room = new Room(info, password);
  try {
    let since;
    try {
      const last = await state.client.history(room.channel(), { limit: HISTORY, query: room.query });
      for (const m of last.messages) render(room, m);
      since = last.position;
    } catch (e) {
      if (!is(e, Code.NotSupported)) throw e; // no history kept: live only
    }
    room.sub = await state.client.subscribe(room.channel(), {
      query: room.query,
      since,
      eventHandlers: { message: (m) => onMessage(room, m) },
      joinHandler: (c) => setPresent(room, c, true),
      leaveHandler: (c) => setPresent(room, c, false),
    });
    room.typingSub = await state.client.subscribe("typing." + info.name, {
      query: room.query,
      eventHandlers: { typing: (m) => onTypingEvent(room, m) },
    });
  } catch (e) {
    room.list.remove();
    room.sub?.unsubscribe().catch(() => {});
    throw e;
  }
  state.joined.set(info.name, room);
  remember();
  await loadPresence(room);
  paintRooms();
  return room;
}

async function leave(room, why) {
  state.joined.delete(room.name);
  remember();
  room.sub.unsubscribe().catch(() => {});
  room.typingSub.unsubscribe().catch(() => {});
  room.list.remove();
  if (state.current === room.name) select("lobby");
  if (why) banner(why);
  paintRooms();
}

function remember() {
  sessionStorage.setItem("rooms", JSON.stringify([...state.joined.keys()]));
}

function select(name) {
  if (!state.joined.has(name)) name = state.joined.keys().next().value;
  state.current = name;
  sessionStorage.setItem("current", name);
  const room = state.joined.get(name);
  for (const r of state.joined.values()) r.list.hidden = r !== room;
  room.unread = 0;
  $("#password-view").hidden = true;
  $("#lists").hidden = false;
  $("#typing").hidden = false;
  $("#composer").hidden = false;
  title(room.info);
  $("#text").placeholder = `Message #${name}`;
  $("#text").focus();
  paintRooms();
  paintOnline();
  paintTyping();
  scrollDown(room, true);
}

// ---- messages ---------------------------------------------------------------

function onMessage(room, m) {
  if (room.loading) room.buffer.push(m);
  else render(room, m);
}

// onGap: the client could not catch up exactly (the server restarted
// without its history, or history was trimmed). Say so, and show what the
// server still has; live messages wait meanwhile, so the list stays in
// order, and those shown already are not shown twice.
async function onGap(info) {
  const room = [...state.joined.values()].find((r) => r.sub === info.sub);
  if (!room) return;
  notice(room, "Connection restored, but the server could not replay everything: messages may have been missed here.", "gap").title = info.reason;
  room.loading = true;
  try {
    const { messages } = await state.client.history(room.channel(), { limit: HISTORY, query: room.query });
    const fresh = messages.filter((m) => !room.shown.has(m.epoch + ":" + m.offset));
    for (const m of fresh) render(room, m);
    if (fresh.length) notice(room, `Reloaded ${fresh.length} message${fresh.length > 1 ? "s" : ""} the server still has.`);
  } catch (e) {
    notice(room, `Could not load earlier messages: ${e.detail || e.code}.`);
  }
  room.loading = false;
  for (const m of room.buffer.splice(0)) render(room, m);
}

// render shows a message (from history or live): m.data is the server's
// {name, text, at}.
function render(room, msg) {
  if (msg.epoch) {
    const key = msg.epoch + ":" + msg.offset;
    if (room.shown.has(key)) return;
    room.shown.add(key);
  }
  const m = { ...msg.data, at: msg.data.at || msg.time };
  const li = document.createElement("li");
  li.className = "msg";
  li.dataset.offset = msg.offset;
  li.dataset.author = m.name;
  const grouped = room.lastAuthor === m.name && m.at - room.lastAt < 5 * 60000;
  if (!grouped) {
    li.classList.add("first");
    const av = document.createElement("span");
    av.className = "avatar";
    paintAvatar(av, m.name);
    const head = document.createElement("div");
    head.className = "msg-head";
    const who = document.createElement("span");
    who.className = "msg-author";
    who.textContent = m.name;
    const when = document.createElement("time");
    when.dateTime = new Date(m.at).toISOString();
    when.textContent = new Date(m.at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    head.append(who, when);
    li.append(av, head);
  }
  const text = document.createElement("div");
  text.className = "msg-text";
  text.textContent = m.text;
  li.append(text);
  if (m.name === state.me) li.classList.add("mine");
  room.lastAuthor = m.name;
  room.lastAt = m.at;
  const stick = nearBottom(room);
  room.list.append(li);
  room.typing.delete(m.name);
  if (room.name === state.current) {
    scrollDown(room, stick || m.name === state.me);
    paintTyping();
  } else {
    room.unread++;
    paintRooms();
  }
}

function notice(room, text, kind = "") {
  const li = document.createElement("li");
  li.className = "notice " + kind;
  li.textContent = text;
  room.list.append(li);
  room.lastAuthor = "";
  scrollDown(room, true);
  return li;
}

const nearBottom = (room) => room.list.scrollHeight - room.list.scrollTop - room.list.clientHeight < 80;

function scrollDown(room, force) {
  if (force) room.list.scrollTop = room.list.scrollHeight;
}

async function onSend(ev) {
  ev.preventDefault();
  const input = $("#text");
  const text = input.value.trim();
  if (!text || !state.joined.has(state.current)) return;
  const err = $("#send-error");
  err.hidden = true;
  input.value = "";
  lastTyping = 0; // the next keystroke says "typing" again
  try {
    await state.client.ask("send", { room: state.current, text });
  } catch (e) {
    // Not sent (or maybe not: the link dropped while it was in flight):
    // give the text back.
    if (!input.value) input.value = text;
    err.textContent = is(e, Code.Disconnected) || is(e, Code.Timeout)
      ? "Not sent: the connection is down. Press Enter to try again."
      : `Not sent: ${e.detail || e.code}.`;
    err.hidden = false;
  }
}

// ---- presence and typing ----------------------------------------------------

// loadPresence reads who is in the room; the join and leave events that
// follow keep it current.
async function loadPresence(room) {
  try {
    const { clients } = await state.client.presence(room.channel());
    room.people = new Map(clients.map((c) => [c.conn, c.user]));
  } catch (e) {
    room.people = new Map(); // no presence kept: nobody shown
  }
  if (room.name === state.current) paintOnline();
}

function setPresent(room, c, here) {
  if (here) room.people.set(c.conn, c.user);
  else room.people.delete(c.conn);
  if (!here && ![...room.people.values()].includes(c.user)) room.typing.delete(c.user);
  if (room.name === state.current) {
    paintOnline();
    paintTyping();
  }
}

function onTypingEvent(room, m) {
  const who = m.from && m.from.user;
  if (!who || who === state.me) return;
  room.typing.set(who, Date.now() + TYPING);
  if (room.name === state.current) paintTyping();
}

let lastTyping = 0;
function onTyping() {
  const now = Date.now();
  if (now - lastTyping < 2500 || !$("#text").value || state.client.status !== "connected") return;
  lastTyping = now;
  state.client.publish("typing." + state.current, "typing", null, { exceptSelf: true }).catch(() => {});
}

// sweep forgets typing that ended.
function sweep() {
  const now = Date.now();
  for (const room of state.joined.values()) {
    for (const [who, until] of room.typing) if (until < now) room.typing.delete(who);
  }
  paintTyping();
}

function paintOnline() {
  const room = state.joined.get(state.current);
  const ul = $("#online");
  ul.replaceChildren();
  const names = room ? new Set(room.people.values()) : new Set();
  const people = [...names].sort((a, b) => (a === state.me ? -1 : b === state.me ? 1 : a.localeCompare(b)));
  for (const who of people) {
    const li = document.createElement("li");
    const av = document.createElement("span");
    av.className = "avatar small";
    paintAvatar(av, who);
    const name = document.createElement("span");
    name.textContent = who === state.me ? `${who} (you)` : who;
    li.dataset.name = who;
    li.append(av, name);
    ul.append(li);
  }
  $("#online-count").textContent = people.length ? String(people.length) : "";
}

function paintTyping() {
  const room = state.joined.get(state.current);
  const names = room ? [...room.typing.keys()] : [];
  const el = $("#typing");
  if (!names.length) el.textContent = "";
  else if (names.length === 1) el.textContent = `${names[0]} is typing…`;
  else el.textContent = `${names.slice(0, -1).join(", ")} and ${names.at(-1)} are typing…`;
}

// ---- connection status ------------------------------------------------------

function showStatus(status) {
  const el = $("#status");
  el.dataset.status = status;
  el.textContent = { connecting: "Connecting…", connected: "Live", reconnecting: "Reconnecting…", closed: "Offline", offline: "Offline" }[status] || status;
  if (status === "reconnecting") banner("Connection lost. Reconnecting… Messages you send will go out when it is back.");
  if (status === "closed") {
    const err = state.client && state.client.err;
    banner(`Disconnected${err ? ": " + (err.detail || err.message) : ""}. Reload the page to try again.`);
  }
}

function banner(text) {
  const el = $("#banner");
  el.textContent = text;
  el.hidden = !text;
}

function paintAvatar(el, name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  el.style.background = `hsl(${h % 360} 55% 52%)`;
  el.textContent = [...name][0].toUpperCase();
  el.title = name;
}

main();
