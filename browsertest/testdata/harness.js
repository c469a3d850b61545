// The test harness of the browser client: the Go tests (client_test.go)
// evaluate scripts that use window.h. It adds what a test needs around the
// real client and the real WebSocket: a clock that only moves when told, a
// scripted random source, and a socket that records what it sends and can
// duplicate, drop or stall what it receives.
import * as sss from "/sss.js";

// FakeClock implements the client's Clock: time moves only with advance().
class FakeClock {
  constructor() {
    this.t = 0;
    this.seq = 0;
    this.timers = new Map();
    this.log = []; // the delays of every setTimeout, in order
  }
  setTimeout(fn, ms) {
    const id = ++this.seq;
    this.timers.set(id, { fn, due: this.t + ms, ms });
    this.log.push(ms);
    return id;
  }
  clearTimeout(id) {
    this.timers.delete(id);
  }
  now() {
    return this.t;
  }
  // pending lists the delays of the timers not yet run.
  pending() {
    return [...this.timers.values()].map((x) => x.ms);
  }
  // advance moves time on by ms, running the timers due, in order.
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let next = null;
      for (const [id, x] of this.timers) {
        if (x.due <= end && (!next || x.due < next[1].due)) next = [id, x];
      }
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = next[1].due;
      next[1].fn();
    }
    this.t = end;
  }
}

// scripted returns a random source that gives values in order (the last
// one again when they run out), and records how many were drawn.
function scripted(values) {
  const f = () => {
    const v = values[Math.min(f.calls, values.length - 1)];
    f.calls++;
    return v;
  };
  f.calls = 0;
  return f;
}

// sockets records every socket a client opened, for the tests to inspect
// and to inject faults into.
const sockets = [];

// TestSocket is a WebSocket as the client sees it, around a real one: it
// records the URL and every frame sent, and can duplicate or drop received
// publications, or stall (receive nothing, as a dead network).
class TestSocket {
  constructor(url, protocols) {
    this.url = url;
    this.sent = [];
    this.dupPubs = false;
    this.dropPubs = 0; // publications to drop
    this.stalled = false;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    this.ws = new WebSocket(url, protocols);
    this.ws.onopen = (ev) => this.onopen && this.onopen(ev);
    this.ws.onerror = (ev) => this.onerror && this.onerror(ev);
    this.ws.onclose = (ev) => this.onclose && this.onclose(ev);
    this.ws.onmessage = (ev) => this._message(ev);
    sockets.push(this);
  }
  get protocol() {
    return this.ws.protocol;
  }
  get readyState() {
    return this.ws.readyState;
  }
  addEventListener(...a) {
    this.ws.addEventListener(...a);
  }
  send(data) {
    for (const line of data.split("\n")) this.sent.push(JSON.parse(line));
    this.ws.send(data);
  }
  close(code, reason) {
    this.ws.close(code, reason);
  }
  _message(ev) {
    if (this.stalled || !this.onmessage) return;
    let lines = ev.data.split("\n");
    if (this.dropPubs > 0) {
      lines = lines.filter((line) => {
        if (this.dropPubs > 0 && line.includes('"type":"pub"')) {
          this.dropPubs--;
          return false;
        }
        return true;
      });
    }
    const data = lines.join("\n");
    this.onmessage({ data });
    if (this.dupPubs && data.includes('"type":"pub"') && this.onmessage) {
      this.onmessage({ data: lines.filter((l) => l.includes('"type":"pub"')).join("\n") });
    }
  }
}

// waitFor resolves once cond() is truthy, polling; it rejects after ms.
function waitFor(what, cond, ms = 10000) {
  return new Promise((resolve, reject) => {
    const start = Date.now();
    const tick = () => {
      let v;
      try {
        v = cond();
      } catch (e) {
        reject(e);
        return;
      }
      if (v) resolve(v);
      else if (Date.now() - start > ms) reject(new Error("timed out waiting for " + what));
      else setTimeout(tick, 10);
    };
    tick();
  });
}

// describe turns an error into what the Go tests compare.
function describe(err) {
  if (!err) return null;
  return {
    name: err.name,
    code: err.code,
    message: err.message,
    isSSSError: err instanceof sss.SSSError,
    isCloseError: err instanceof sss.CloseError,
    closeCode: err.closeCode,
    fromServer: err.fromServer,
  };
}

// settle returns what a Promise gave: {ok: value} or {err: describe(error)}.
async function settle(p) {
  try {
    return { ok: (await p) ?? null };
  } catch (err) {
    return { err: describe(err) };
  }
}

// wsURL is the test server's WebSocket endpoint with a query.
function wsURL(query) {
  return `ws://${location.host}/ws?${new URLSearchParams(query)}`;
}

window.h = { sss, FakeClock, scripted, TestSocket, sockets, waitFor, describe, settle, wsURL, ready: true };
