package browsertest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/superscaled/sss"
)

// The browser client's own behaviour (client/js/sss.js), in Chromium,
// against real sss.Servers: the harness page (testdata/harness.js) gives
// the scripts a clock that only moves when told and a random source that
// gives chosen values, so that backoff is checked without waiting.

// harness opens the JS client's test harness served by in.
func harness(t *testing.T, in *instance) *page {
	t.Helper()
	p := newPage(t, "harness", in.url("/harness.html"))
	p.waitJS("the harness", "window.h && window.h.ready")
	return p
}

// script fills the placeholders of a script: each pair is a placeholder and
// its value, quoted as a JavaScript string.
func script(js string, pairs ...string) string {
	for i := 0; i+1 < len(pairs); i += 2 {
		js = strings.ReplaceAll(js, pairs[i], jsString(pairs[i+1]))
	}
	return js
}

// jsError is what harness.js's describe gives of an error.
type jsError struct {
	Name         string `json:"name"`
	Code         string `json:"code"`
	Message      string `json:"message"`
	IsSSSError   bool   `json:"isSSSError"`
	IsCloseError bool   `json:"isCloseError"`
	CloseCode    int    `json:"closeCode"`
	FromServer   bool   `json:"fromServer"`
}

// outcome is what harness.js's settle gives of a Promise.
type outcome struct {
	OK  json.RawMessage `json:"ok"`
	Err *jsError        `json:"err"`
}

// wantCode fails unless o is an SSSError with the code.
func wantCode(t *testing.T, what string, o outcome, code string) {
	t.Helper()
	switch {
	case o.Err == nil:
		t.Errorf("%s: resolved with %s, want error %q", what, o.OK, code)
	case !o.Err.IsSSSError:
		t.Errorf("%s: %s (%s) is not an SSSError", what, o.Err.Name, o.Err.Message)
	case o.Err.Code != code:
		t.Errorf("%s: code %q (%s), want %q", what, o.Err.Code, o.Err.Message, code)
	}
}

func publish(t *testing.T, srv *sss.Server, channel string, data any) {
	t.Helper()
	if err := srv.Publish(context.Background(), channel, "m", data); err != nil {
		t.Fatal(err)
	}
}

// Reconnection waits full-jitter backoff delays on the client's clock (a
// random part of a window that doubles from the minimum up to the maximum),
// tries the other URLs from a random one and the lost one last, resumes,
// and catches up on what was published meanwhile.
func TestJSBackoffJitter(t *testing.T) {
	needBrowser(t)
	in := startInstance(t, newMemory(t), "")
	dead1, dead2 := "ws://"+freeAddr(t)+"/ws", "ws://"+freeAddr(t)+"/ws"
	p := harness(t, in)
	p.eval(script(`(async () => {
		window.clock = new h.FakeClock();
		// Draws: the dial's order of the other URLs, the reconnection's
		// (0.5 of 2: the second first), then one per backoff delay.
		window.rnd = h.scripted([0, 0.5, 0.99, 0.25, 0.75]);
		window.statuses = []; window.drops = []; window.msgs = []; window.recovered = [];
		window.c = await h.sss.dial(h.wsURL({user: "bo", sid: "tab"}), {
			urls: [DEAD1, DEAD2], clock, random: rnd, WebSocket: h.TestSocket,
			reconnectDelay: {min: 100, max: 300}, dialTimeout: 5000, requestTimeout: 0,
			hooks: {
				onStatusChange: (s) => statuses.push(s),
				onDrop: (e) => drops.push(h.describe(e)),
				onRecover: (info) => recovered.push([info.channel, info.recovered]),
			},
		});
		await c.subscribe("news", {messageHandler: (m) => msgs.push(m.data)});
	})()`, "DEAD1", dead1, "DEAD2", dead2), nil)
	publish(t, in.srv, "news", 1)
	p.waitJS("the first publication", "msgs.length === 1")

	in.rec.conn("bo").Close("test kick", false) // 4005: reconnect with backoff
	p.waitJS("the first backoff timer", "clock.pending().includes(99)")
	publish(t, in.srv, "news", 2) // while the client waits
	publish(t, in.srv, "news", 3)
	for _, d := range []int{99, 50, 225} {
		p.waitJS(fmt.Sprintf("a backoff timer of %d ms", d), fmt.Sprintf("clock.pending().includes(%d)", d))
		p.eval(fmt.Sprintf("clock.advance(%d)", d), nil)
	}
	p.waitJS("the reconnection", `c.status === "connected" && msgs.length === 3`)

	var got struct {
		Delays    []int      `json:"delays"`
		URLs      []string   `json:"urls"`
		Msgs      []int      `json:"msgs"`
		Statuses  []string   `json:"statuses"`
		Drops     []jsError  `json:"drops"`
		Recovered [][]any    `json:"recovered"`
		First     []string   `json:"first"`
		Resume    []struct { // the subscriptions of the last socket's resume
			Channel string           `json:"channel"`
			Since   *json.RawMessage `json:"since"`
		} `json:"resume"`
		Stats map[string]int `json:"stats"`
	}
	p.eval(`(() => {
		const last = h.sockets[h.sockets.length - 1];
		return {
			delays: clock.log.filter((ms) => ms < 5000), // not the dial timeouts nor ping+pong
			urls: h.sockets.map((s) => s.url), msgs, statuses, drops, recovered,
			first: h.sockets.filter((s) => s.sent.length > 0).map((s) => s.sent[0].type),
			resume: last.sent[0].subscriptions, stats: c.stats,
		};
	})()`, &got)
	if want := []int{99, 50, 225}; !reflect.DeepEqual(got.Delays, want) {
		// floor(r·(w+1)) for windows 101, 201 and 301 (400 capped at 300).
		t.Errorf("backoff delays %v, want %v", got.Delays, want)
	}
	ws := "ws://" + in.addr + "/ws?user=bo&sid=tab"
	if want := []string{ws, dead2, dead1, ws}; !reflect.DeepEqual(got.URLs, want) {
		t.Errorf("attempts went to %v, want %v (from a random other URL, the lost one last)", got.URLs, want)
	}
	if want := []int{1, 2, 3}; !reflect.DeepEqual(got.Msgs, want) {
		t.Errorf("messages %v, want %v", got.Msgs, want)
	}
	if want := []string{"connected", "reconnecting", "connected"}; !reflect.DeepEqual(got.Statuses, want) {
		t.Errorf("statuses %v, want %v", got.Statuses, want)
	}
	if len(got.Drops) != 1 || got.Drops[0].CloseCode != 4005 || !got.Drops[0].IsCloseError {
		t.Errorf("drops %+v, want one CloseError 4005", got.Drops)
	}
	if want := []string{"ready", "resume"}; !reflect.DeepEqual(got.First, want) {
		t.Errorf("first frames %v, want ready on the fresh link and resume on the next", got.First)
	}
	since := map[string]bool{}
	for _, e := range got.Resume {
		since[e.Channel] = e.Since != nil
	}
	for _, ch := range []string{"news", "$u.bo", "$s.2:bo:tab"} {
		if !since[ch] {
			t.Errorf("the resume does not list %s with a position: %+v", ch, got.Resume)
		}
	}
	for _, r := range got.Recovered {
		if r[1] != true {
			t.Errorf("not recovered: %v", r)
		}
	}
	if len(got.Recovered) != 3 || got.Stats["reconnects"] != 1 || got.Stats["duplicates"] != 0 {
		t.Errorf("recovered %v, stats %v; want news, user and session recovered, one reconnect", got.Recovered, got.Stats)
	}
}

// Close code 4000 (the server shuts down) reconnects at once, elsewhere;
// 4501 stops the client for good.
func TestJSCloseCodes(t *testing.T) {
	needBrowser(t)
	m := newMemory(t)
	a, b := startInstance(t, m, ""), startInstance(t, m, "")
	p := harness(t, a)
	p.eval(script(`(async () => {
		window.clock = new h.FakeClock(); // never advanced: no backoff can end
		window.statuses = []; window.msgs = [];
		window.c = await h.sss.dial(h.wsURL({user: "cy"}), {
			urls: [B], clock, WebSocket: h.TestSocket, dialTimeout: 5000, requestTimeout: 0,
			hooks: {onStatusChange: (s) => statuses.push(s)},
		});
		window.sub = await c.subscribe("news", {messageHandler: (m) => msgs.push(m.data)});
		window.firstID = c.id;
	})()`, "B", "ws://"+b.addr+"/ws?user=cy"), nil)

	a.stop() // closes with 4000
	p.waitJS("the reconnection to B", `c.status === "connected" && c.id !== firstID`)
	publish(t, b.srv, "news", 1)
	p.waitJS("a publication through B", "msgs.length === 1")
	var got struct {
		Timers []int    `json:"timers"`
		URLs   []string `json:"urls"`
	}
	p.eval(`({timers: clock.log.filter((ms) => ms < 5000), urls: h.sockets.map((s) => s.url)})`, &got)
	if len(got.Timers) != 0 {
		t.Errorf("4000 waited for backoff timers %v", got.Timers)
	}
	if len(got.URLs) != 2 || !strings.Contains(got.URLs[1], b.addr) {
		t.Errorf("attempts %v, want A then B", got.URLs)
	}

	b.rec.conn("cy").Close("banned", true) // 4501
	p.waitJS("the client to close", `c.status === "closed"`)
	time.Sleep(200 * time.Millisecond) // room for a reconnection that must not come
	var final struct {
		Err      jsError  `json:"err"`
		IsForbid bool     `json:"isForbidden"`
		Sockets  int      `json:"sockets"`
		Sub      string   `json:"sub"`
		Statuses []string `json:"statuses"`
		Ask      outcome  `json:"ask"`
	}
	p.eval(`(async () => ({
		err: h.describe(c.err), isForbidden: h.sss.is(c.err, "forbidden"), sockets: h.sockets.length,
		sub: sub.status, statuses, ask: await h.settle(c.ask("echo", 1)),
	}))()`, &final)
	if !final.Err.IsCloseError || final.Err.CloseCode != 4501 || !final.IsForbid {
		t.Errorf("err %+v (is forbidden: %t), want a CloseError 4501 that is forbidden", final.Err, final.IsForbid)
	}
	if final.Sockets != 2 {
		t.Errorf("%d sockets opened, want no attempt after 4501", final.Sockets)
	}
	if want := []string{"connected", "reconnecting", "connected", "reconnecting", "closed"}; !reflect.DeepEqual(final.Statuses, want) {
		// The drop is reported before the reason is found final, as the Go client does.
		if want2 := []string{"connected", "reconnecting", "connected", "closed"}; !reflect.DeepEqual(final.Statuses, want2) {
			t.Errorf("statuses %v, want %v", final.Statuses, want2)
		}
	}
	if final.Sub != "unsubscribed" {
		t.Errorf("subscription %s after the close, want unsubscribed", final.Sub)
	}
	wantCode(t, "ask after 4501", final.Ask, "closed")
}

// An ask rejects with code "timeout" at its own timeout, or with the
// server's timeout; an AbortSignal rejects it with "aborted".
func TestJSAskTimeout(t *testing.T) {
	needBrowser(t)
	in := startInstance(t, newMemory(t), "", sss.WithAskTimeout(1500*time.Millisecond))
	p := harness(t, in)
	var got struct {
		Local, Server, Aborted outcome
		LocalMS, ServerMS      float64
		Echo                   int
	}
	p.eval(`(async () => {
		const c = await h.sss.dial(h.wsURL({user: "di"}));
		let t0 = performance.now();
		const local = await h.settle(c.ask("slow", null, {timeout: 200}));
		const localMS = performance.now() - t0;
		t0 = performance.now();
		const server = await h.settle(c.ask("slow", null, {timeout: 0}));
		const serverMS = performance.now() - t0;
		const ac = new AbortController();
		const p = h.settle(c.ask("slow", null, {signal: ac.signal}));
		ac.abort();
		const aborted = await p;
		const echo = await c.ask("echo", 7);
		c.close();
		return {Local: local, Server: server, Aborted: aborted, LocalMS: localMS, ServerMS: serverMS, Echo: echo};
	})()`, &got)
	wantCode(t, "ask with a 200 ms timeout", got.Local, "timeout")
	if got.Local.Err != nil && got.Local.Err.FromServer {
		t.Error("the client's own timeout says it came from the server")
	}
	if got.LocalMS < 190 { // and, not being the server's, it came before 1.5 s
		t.Errorf("the 200 ms timeout took %.0f ms", got.LocalMS)
	}
	wantCode(t, "ask past the server's timeout", got.Server, "timeout")
	if got.Server.Err != nil && !got.Server.Err.FromServer {
		t.Error("the server's timeout is not marked as the server's")
	}
	if got.ServerMS < 1400 {
		t.Errorf("the server's 1.5 s timeout came after %.0f ms", got.ServerMS)
	}
	wantCode(t, "aborted ask", got.Aborted, "aborted")
	if got.Echo != 7 {
		t.Errorf("echo after the timeouts: %d", got.Echo)
	}
}

// Every refusal is an SSSError with the protocol's code, the handler's own
// code (which is() also matches as internal), or the client's.
func TestJSTypedErrors(t *testing.T) {
	needBrowser(t)
	in := startInstance(t, newMemory(t), "", sss.WithMaxPayloadSize(1000))
	p := harness(t, in)
	var got map[string]outcome
	var extra struct {
		TeapotIsInternal, ForbidIsForbidden bool
		Detail                              string
		Invalid                             []jsError
	}
	p.eval(`(async () => {
		const c = await h.sss.dial(h.wsURL({user: "ed"}));
		window.c = c;
		await c.subscribe("news");
		const r = {
			notFound: await h.settle(c.ask("nope")),
			teapot: await h.settle(c.ask("teapot")),
			forbid: await h.settle(c.ask("forbid")),
			reserved: await h.settle(c.subscribe("$u.someone")),
			badName: await h.settle(c.subscribe("bad..name")),
			conflict: await h.settle(c.subscribe("news")),
			wrongPassword: await h.settle(c.subscribe("private", {query: {pw: "guess"}})),
			rightPassword: await h.settle(c.subscribe("private", {query: {pw: "open sesame"}}).then(() => "ok")),
			publishRefused: await h.settle(c.publish("news", "m", 1)),
			publishOpen: await h.settle(c.publish("open.x", "m", 1)),
			tellNope: await h.settle(c.tell("nope", 1)),
			tellNote: await h.settle(c.tell("note", "hi")),
			serverTooLarge: await h.settle(c.ask("echo", "x".repeat(2000))),
			clientTooLarge: await h.settle(c.ask("echo", "x".repeat(70000))),
		};
		window.r = r;
		return r;
	})()`, &got)
	for name, code := range map[string]string{
		"notFound": "not_found", "teapot": "teapot", "forbid": "forbidden", "reserved": "forbidden",
		"badName": "bad_request", "conflict": "conflict", "wrongPassword": "forbidden",
		"publishRefused": "forbidden", "tellNope": "not_found", "serverTooLarge": "too_large",
		"clientTooLarge": "too_large",
	} {
		wantCode(t, name, got[name], code)
	}
	for _, name := range []string{"rightPassword", "publishOpen", "tellNote"} {
		if got[name].Err != nil {
			t.Errorf("%s: %+v", name, got[name].Err)
		}
	}
	if e := got["serverTooLarge"].Err; e != nil && !e.FromServer {
		t.Error("data over maxPayload was refused by the client, want the server")
	}
	if e := got["clientTooLarge"].Err; e != nil && e.FromServer {
		t.Error("a frame over maxMessage was sent, want it refused by the client")
	}
	p.eval(`(async () => {
		const invalid = [];
		for (const f of [() => new h.sss.Client("ftp://x/ws"), () => new h.sss.Client("/ws", {reconnectDelay: {min: 5, max: 1}}),
		                 () => new h.sss.Client("/ws", {sendQueue: -1})]) {
			try { f(); invalid.push(null); } catch (e) { invalid.push(h.describe(e)); }
		}
		return {
			TeapotIsInternal: h.sss.is(await c.ask("teapot").catch((e) => e), "internal"),
			ForbidIsForbidden: h.sss.is(await c.ask("forbid").catch((e) => e), "forbidden"),
			Detail: (await c.ask("forbid").catch((e) => e)).detail,
			Invalid: invalid,
		};
	})()`, &extra)
	if !extra.TeapotIsInternal || !extra.ForbidIsForbidden || extra.Detail != "not you" {
		t.Errorf("is(teapot, internal) %t, is(forbid, forbidden) %t, detail %q", extra.TeapotIsInternal, extra.ForbidIsForbidden, extra.Detail)
	}
	for i, e := range extra.Invalid {
		if e.Code != "invalid_config" || !e.IsSSSError {
			t.Errorf("invalid option %d: %+v, want an invalid_config SSSError", i, e)
		}
	}
	in.rec.mu.Lock()
	tells := in.rec.tells
	in.rec.mu.Unlock()
	if len(tells) != 1 || tells[0] != `"hi"` {
		t.Errorf("tells seen by the server: %q", tells)
	}
}

// After a drop the client resubscribes with its queries (the parser runs
// again), catches up exactly on its subscriptions and on its user and
// session channels, reports each outcome before onReconnect, and reports a
// subscription the server no longer allows.
func TestJSResumeCatchUp(t *testing.T) {
	needBrowser(t)
	in := startInstance(t, newMemory(t), "")
	p := harness(t, in)
	p.eval(`(async () => {
		window.clock = new h.FakeClock();
		window.got = {news: [], private: [], user: [], session: []};
		window.events = [];
		window.c = await h.sss.dial(h.wsURL({user: "di", sid: "tab1"}), {
			clock, WebSocket: h.TestSocket, requestTimeout: 0, dialTimeout: 5000,
			hooks: {
				onUserMessage: (m) => got.user.push(m.data),
				onSessionMessage: (m) => got.session.push(m.data),
				onRecover: (i) => events.push("recover " + i.kind + " " + i.channel + " " + i.recovered),
				onGap: (i) => events.push("gap " + i.channel),
				onReconnect: () => events.push("reconnect"),
				onRefused: (s, e) => events.push("refused " + s.channel + " " + e.code),
			},
		});
		await c.subscribe("news", {eventHandlers: {m: (m) => got.news.push(m.data)}, query: {pw: "x"}});
		await c.subscribe("private", {messageHandler: (m) => got.private.push(m.data), query: {pw: "open sesame"}});
		window.rev = await c.subscribe("revocable");
	})()`, nil)
	ctx := context.Background()
	publish(t, in.srv, "news", "n1")
	if err := in.srv.PublishUser(ctx, "di", "m", "u1"); err != nil {
		t.Fatal(err)
	}
	if err := in.srv.PublishSession(ctx, "di", "tab1", "m", "s1"); err != nil {
		t.Fatal(err)
	}
	p.waitJS("the first publications", "got.news.length + got.user.length + got.session.length === 3")

	in.rec.revoked.Store(true)
	in.rec.conn("di").Close("kick", false)
	p.waitJS("the backoff", `c.status === "reconnecting" && clock.pending().some((ms) => ms < 5000)`)
	publish(t, in.srv, "news", "n2")
	publish(t, in.srv, "news.uk", "n3") // a sub-channel, through the same subscription
	publish(t, in.srv, "private", "p1")
	if err := in.srv.PublishUser(ctx, "di", "m", "u2"); err != nil {
		t.Fatal(err)
	}
	if err := in.srv.PublishSession(ctx, "di", "tab1", "m", "s2"); err != nil {
		t.Fatal(err)
	}
	p.eval("clock.advance(Math.min(...clock.pending()))", nil)
	p.waitJS("the reconnection", `c.status === "connected"`)
	p.waitJS("the catch-up", "got.news.length === 3 && got.private.length === 1 && got.user.length === 2 && got.session.length === 2")
	time.Sleep(100 * time.Millisecond) // room for a duplicate that must not come

	var res struct {
		Got    map[string][]string `json:"got"`
		Events []string            `json:"events"`
		Rev    string              `json:"rev"`
		Subs   []string            `json:"subs"`
	}
	p.eval(`({got, events, rev: rev.status, subs: [...c.subscriptions().keys()].sort()})`, &res)
	want := map[string][]string{"news": {"n1", "n2", "n3"}, "private": {"p1"}, "user": {"u1", "u2"}, "session": {"s1", "s2"}}
	if !reflect.DeepEqual(res.Got, want) {
		t.Errorf("received %v, want %v", res.Got, want)
	}
	wantEvents := []string{
		"refused revocable forbidden",
		"recover subscription news true",
		"recover subscription private true",
		"recover user $u.di true",
		"recover session $s.2:di:tab1 true",
		"reconnect",
	}
	// Subscriptions go in channel order: news, private, revocable.
	wantEvents = append([]string{wantEvents[1], wantEvents[2], wantEvents[0]}, wantEvents[3:]...)
	if !reflect.DeepEqual(res.Events, wantEvents) {
		t.Errorf("events %q, want %q", res.Events, wantEvents)
	}
	if res.Rev != "refused" || !reflect.DeepEqual(res.Subs, []string{"news", "private"}) {
		t.Errorf("revocable %s, held %v; want refused, news and private", res.Rev, res.Subs)
	}
	if q := in.rec.query("private"); len(q) != 2 || q[1] != `{"pw":"open sesame"}` {
		t.Errorf("the parser saw private's queries %q, want the query again on resume", q)
	}
	if subs := in.rec.conn("di").Subscriptions(); len(subs) != 2 {
		t.Errorf("the server holds %v", subs)
	}
}

// Publications that come twice are dropped by their offset; a missing one
// is reported as a gap before the next is delivered.
func TestJSDuplicatesAndGaps(t *testing.T) {
	needBrowser(t)
	in := startInstance(t, newMemory(t), "")
	p := harness(t, in)
	p.eval(`(async () => {
		window.msgs = []; window.gaps = [];
		window.c = await h.sss.dial(h.wsURL({user: "fe"}), {WebSocket: h.TestSocket,
			hooks: {onGap: (i) => gaps.push(i.reason)}});
		window.sub = await c.subscribe("news", {messageHandler: (m) => msgs.push(m.data),
			hooks: {onGap: (i) => gaps.push("sub: " + i.reason)}});
		h.sockets[0].dupPubs = true; // the network delivers every publication twice
	})()`, nil)
	for i := 1; i <= 3; i++ {
		publish(t, in.srv, "news", i)
	}
	p.waitJS("the duplicates", "c.stats.duplicates >= 3 && msgs.length >= 3")
	p.eval("h.sockets[0].dupPubs = false; h.sockets[0].dropPubs = 1", nil)
	publish(t, in.srv, "news", 4) // lost on the way
	publish(t, in.srv, "news", 5)
	p.waitJS("the publication after the gap", "msgs.includes(5)")
	var got struct {
		Msgs      []int          `json:"msgs"`
		Gaps      []string       `json:"gaps"`
		Recovered bool           `json:"recovered"`
		Offset    int            `json:"offset"`
		Stats     map[string]int `json:"stats"`
	}
	p.eval(`({msgs, gaps, recovered: sub.recovered, offset: sub.position.offset, stats: c.stats})`, &got)
	if want := []int{1, 2, 3, 5}; !reflect.DeepEqual(got.Msgs, want) {
		t.Errorf("messages %v, want %v", got.Msgs, want)
	}
	if got.Stats["duplicates"] != 3 || got.Stats["gaps"] != 1 {
		t.Errorf("stats %v, want 3 duplicates and 1 gap", got.Stats)
	}
	if len(got.Gaps) != 2 || !strings.HasPrefix(got.Gaps[0], "sub: offsets jumped from 3 to 5") || !strings.HasPrefix(got.Gaps[1], "offsets jumped") {
		t.Errorf("gaps %q, want the subscription's then the client's, from 3 to 5", got.Gaps)
	}
	if got.Recovered || got.Offset != 5 {
		t.Errorf("recovered %t at offset %d, want false at 5", got.Recovered, got.Offset)
	}
}

// Requests made while the link is down wait in a bounded queue (more are
// refused at once) and go out when it is back; with failFast they fail at
// once. Requests in flight are bounded too: more wait for a reply.
func TestJSBoundedQueues(t *testing.T) {
	needBrowser(t)
	in := startInstance(t, newMemory(t), "", sss.WithAskTimeout(time.Second))
	p := harness(t, in)
	p.eval(`(async () => {
		window.clock = new h.FakeClock();
		window.msgs = [];
		window.c = await h.sss.dial(h.wsURL({user: "gi"}), {clock, sendQueue: 3, requestTimeout: 0, dialTimeout: 5000});
		await c.subscribe("open.q", {messageHandler: (m) => msgs.push(m.data)});
		window.ff = await h.sss.dial(h.wsURL({user: "ff"}), {clock, failFast: true, requestTimeout: 0, dialTimeout: 5000});
	})()`, nil)
	in.rec.conn("gi").Close("kick", false)
	in.rec.conn("ff").Close("kick", false)
	p.waitJS("both to wait for a reconnection", `c.status === "reconnecting" && ff.status === "reconnecting"`)
	var queued struct {
		Fourth, FailFast outcome
	}
	p.eval(`(async () => {
		window.queued = [1, 2, 3].map((i) => h.settle(c.publish("open.q", "m", i)));
		return {Fourth: await h.settle(c.publish("open.q", "m", 4)), FailFast: await h.settle(ff.ask("echo", 1))};
	})()`, &queued)
	wantCode(t, "a fourth request while 3 wait", queued.Fourth, "limit_exceeded")
	wantCode(t, "a request with failFast while reconnecting", queued.FailFast, "disconnected")
	p.eval("clock.advance(Math.max(...clock.pending().filter((ms) => ms < 5000)))", nil)
	p.waitJS("the queued publications", "msgs.length === 3")
	var sent []outcome
	p.eval("Promise.all(queued)", &sent)
	for i, o := range sent {
		if o.Err != nil {
			t.Errorf("queued publication %d: %+v", i+1, o.Err)
		}
	}

	// In flight: at most maxPending requests await their reply.
	var inflight struct {
		Sent  int     `json:"sent"`
		Slow  outcome `json:"slow"`
		Echo  outcome `json:"echo"`
		Order []string
	}
	p.eval(`(async () => {
		const c2 = await h.sss.dial(h.wsURL({user: "hy"}), {maxPending: 2, WebSocket: h.TestSocket, requestTimeout: 0});
		const order = [];
		const slow = [1, 2].map(() => h.settle(c2.ask("slow")).then((r) => { order.push("slow"); return r; }));
		const echo = h.settle(c2.ask("echo", 3)).then((r) => { order.push("echo"); return r; });
		await new Promise((r) => setTimeout(r, 300));
		const sock = h.sockets[h.sockets.length - 1];
		const sent = sock.sent.filter((f) => f.type === "ask").length;
		const res = {sent, slow: await slow[0], echo: await echo, Order: order};
		c2.close();
		return res;
	})()`, &inflight)
	if inflight.Sent != 2 {
		t.Errorf("%d asks sent while 2 awaited their reply, want 2", inflight.Sent)
	}
	wantCode(t, "slow ask", inflight.Slow, "timeout")
	if inflight.Echo.Err != nil || string(inflight.Echo.OK) != "3" {
		t.Errorf("echo after the slow asks: %+v", inflight.Echo)
	}
	if len(inflight.Order) != 3 || inflight.Order[2] != "echo" {
		t.Errorf("order %v, want the echo after the slow asks", inflight.Order)
	}
}

// The client answers the server's pings (the server would close a silent
// client after ping+pong), and drops a link that goes silent for ping+pong
// by itself, then reconnects.
func TestJSLiveness(t *testing.T) {
	needBrowser(t)
	// A ping every 250 ms; the server closes a client silent for 500 ms after one.
	in := startInstance(t, newMemory(t), "", sss.WithPing(250*time.Millisecond, 500*time.Millisecond))
	p := harness(t, in)
	var kept struct {
		Same   bool   `json:"same"`
		Status string `json:"status"`
		Pongs  int    `json:"pongs"`
	}
	p.eval(`(async () => {
		const c = await h.sss.dial(h.wsURL({user: "ia"}), {WebSocket: h.TestSocket});
		const id = c.id;
		await new Promise((r) => setTimeout(r, 2000));
		const res = {same: c.id === id, status: c.status, pongs: h.sockets[0].sent.filter((f) => f.type === "pong").length};
		c.close();
		return res;
	})()`, &kept)
	if !kept.Same || kept.Status != "connected" || kept.Pongs < 3 {
		t.Errorf("after 2 s of 750 ms ping+pong windows: same connection %t, %s, %d pongs", kept.Same, kept.Status, kept.Pongs)
	}

	var dead struct {
		Drop   jsError `json:"drop"`
		Status string  `json:"status"`
	}
	p.eval(`(async () => {
		const clock = new h.FakeClock();
		const drops = [];
		const c = await h.sss.dial(h.wsURL({user: "ib"}), {clock, WebSocket: h.TestSocket, dialTimeout: 5000,
			hooks: {onDrop: (e) => drops.push(h.describe(e))}});
		window.live = c; window.liveClock = clock;
		h.sockets[h.sockets.length - 1].stalled = true; // the network goes silent
		clock.advance(749);
		const before = drops.length;
		clock.advance(1); // ping+pong, on the client's clock
		if (before !== 0) throw new Error("dropped before ping+pong");
		return {drop: drops[0], status: c.status};
	})()`, &dead)
	if dead.Drop.Code != "link_timeout" || dead.Status != "reconnecting" {
		t.Errorf("silent link: drop %+v, status %s; want link_timeout and reconnecting", dead.Drop, dead.Status)
	}
	p.eval("liveClock.advance(Math.max(...liveClock.pending().filter((ms) => ms < 5000)))", nil)
	p.waitJS("the reconnection after the silent link", `live.status === "connected"`)
	p.eval("live.close()", nil)
}

// The server's asks and tells reach the page's handlers; a handler's
// SSSError chooses the code the server sees, any other error is internal.
func TestJSServerAskTell(t *testing.T) {
	needBrowser(t)
	in := startInstance(t, newMemory(t), "")
	p := harness(t, in)
	p.eval(`(async () => {
		window.told = []; window.errors = [];
		window.c = await h.sss.dial(h.wsURL({user: "jo"}), {
			askHandlers: {
				confirm: async (d) => ({yes: d.q * 2}),
				deny: () => { throw new h.sss.SSSError("forbidden", "no thanks"); },
				boom: () => { throw new Error("kaboom"); },
			},
			tellHandlers: {notify: (d) => told.push(d)},
			hooks: {onError: (e) => errors.push(e.code + " " + e.message)},
		});
	})()`, nil)
	ctx := context.Background()
	conn := sss.ToConn(in.rec.conn("jo").ID())
	res, err := in.srv.Ask(ctx, conn, "confirm", map[string]int{"q": 21})
	if err != nil || string(res) != `{"yes":42}` {
		t.Errorf("ask confirm: %s, %v", res, err)
	}
	if _, err := in.srv.Ask(ctx, conn, "deny", nil); !errors.Is(err, sss.ErrForbidden) || !strings.Contains(err.Error(), "no thanks") {
		t.Errorf("ask deny: %v, want forbidden: no thanks", err)
	}
	if _, err := in.srv.Ask(ctx, conn, "boom", nil); !errors.Is(err, sss.ErrInternal) {
		t.Errorf("ask boom: %v, want internal", err)
	}
	if _, err := in.srv.Ask(ctx, conn, "missing", nil); !errors.Is(err, sss.ErrNotFound) {
		t.Errorf("ask missing: %v, want not_found", err)
	}
	if err := in.srv.Tell(ctx, sss.ToUser("jo"), "notify", "hi"); err != nil {
		t.Fatal(err)
	}
	if err := in.srv.Tell(ctx, sss.ToUser("jo"), "unheard", 1); err != nil {
		t.Fatal(err)
	}
	p.waitJS("the tells", "told.length === 1 && errors.some((e) => e.startsWith('not_found'))")
	var errs []string
	p.eval("errors", &errs)
	if len(errs) != 2 || !strings.Contains(errs[0], "kaboom") {
		t.Errorf("onError got %q, want the throwing handler's error and the tell with no handler", errs)
	}
}

// close() says goodbye with a normal close frame: the server sees the
// client close, and everything after fails with "closed".
func TestJSClose(t *testing.T) {
	needBrowser(t)
	in := startInstance(t, newMemory(t), "")
	p := harness(t, in)
	var got struct {
		Status, Sub string
		Err         jsError
		Ask, Sub2   outcome
	}
	p.eval(`(async () => {
		const c = await h.sss.dial(h.wsURL({user: "ka"}));
		const sub = await c.subscribe("news");
		const inflight = h.settle(c.ask("slow"));
		await c.close();
		return {Status: c.status, Sub: sub.status, Err: h.describe(c.err),
			Ask: await inflight, Sub2: await h.settle(c.subscribe("other"))};
	})()`, &got)
	if got.Status != "closed" || got.Sub != "unsubscribed" || got.Err.Code != "closed" {
		t.Errorf("after close: %+v", got)
	}
	wantCode(t, "an ask in flight at close", got.Ask, "closed")
	wantCode(t, "a subscribe after close", got.Sub2, "closed")
	deadline := time.Now().Add(waitTimeout)
	for {
		reasons := in.rec.disconnects()
		if len(reasons) == 1 {
			if !errors.Is(reasons[0], sss.ErrClientClosed) {
				t.Errorf("the server saw %v, want the client's normal close", reasons[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the server did not see the connection end")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
