package browsertest

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/superscaled/sss"
)

// The browser client's share of presence, server-made subscriptions,
// broadcasts, history and connection tokens, against two instances on one
// scaler where the cluster matters.

// roomPresence keeps presence with join and leave events on "room.*", and a
// list without events on "lobby".
var roomPresence = sss.WithPresence(func(ch string) sss.ChannelPresence {
	return sss.ChannelPresence{JoinLeave: strings.HasPrefix(ch, "room."), Track: ch == "lobby"}
})

// Presence across two instances: each subscriber of a room sees the joins
// (its own included) and the leaves of clients on either instance, with
// their public info; the list and the counts are the cluster's; reading a
// channel one is not subscribed to is forbidden, one that keeps no presence
// not supported.
func TestJSPresence(t *testing.T) {
	needBrowser(t)
	m := newMemory(t)
	a, b := startInstance(t, m, "", roomPresence), startInstance(t, m, "", roomPresence)
	p := harness(t, a)
	var got struct {
		Clients      []map[string]any `json:"clients"`
		Counts       map[string]int   `json:"counts"`
		More         bool             `json:"more"`
		BobCounts    map[string]int   `json:"bobCounts"`
		Lobby        map[string]int   `json:"lobby"`
		Forbidden    outcome          `json:"forbidden"`
		NotSupported outcome          `json:"notSupported"`
	}
	p.eval(script(`(async () => {
		window.ev = [];
		const on = (who) => ({
			joinHandler: (c) => ev.push(who + " sees join " + c.user + " " + (c.info && c.info.name)),
			leaveHandler: (c) => ev.push(who + " sees leave " + c.user),
		});
		window.alice = await h.sss.dial(h.wsURL({user: "alice", name: "Alice"}));
		await alice.subscribe("room.1", on("alice"));
		await h.waitFor("alice's own join", () => ev.includes("alice sees join alice Alice"));
		window.bob = await h.sss.dial(URL_B);
		window.bobSub = await bob.subscribe("room.1", on("bob"));
		await h.waitFor("bob's join on both instances", () => ev.includes("alice sees join bob Bob") && ev.includes("bob sees join bob Bob"));
		const list = await alice.presence("room.1");
		await bob.subscribe("lobby");
		await bob.subscribe("news");
		return {
			clients: [...list.clients].sort((x, y) => x.user.localeCompare(y.user)),
			counts: list.counts, more: list.more,
			bobCounts: await bob.presenceCounts("room.1"),
			lobby: (await bob.presence("lobby")).counts,
			forbidden: await h.settle(alice.presence("lobby")),
			notSupported: await h.settle(bob.presence("news")),
		};
	})()`, "URL_B", "ws://"+b.addr+"/ws?user=bob&name=Bob"), &got)
	if len(got.Clients) != 2 || got.Clients[0]["user"] != "alice" || got.Clients[1]["user"] != "bob" ||
		!reflect.DeepEqual(got.Clients[1]["info"], map[string]any{"name": "Bob"}) || got.Clients[0]["conn"] == "" {
		t.Errorf("presence list %v, want alice and bob with their info", got.Clients)
	}
	want := map[string]int{"clients": 2, "users": 2}
	if !reflect.DeepEqual(got.Counts, want) || !reflect.DeepEqual(got.BobCounts, want) || got.More {
		t.Errorf("counts %v and %v (more %t), want %v from either instance", got.Counts, got.BobCounts, got.More, want)
	}
	if !reflect.DeepEqual(got.Lobby, map[string]int{"clients": 1, "users": 1}) {
		t.Errorf("lobby counts %v", got.Lobby)
	}
	wantCode(t, "presence of a channel not subscribed to", got.Forbidden, "forbidden")
	wantCode(t, "presence of a channel that keeps none", got.NotSupported, "not_supported")

	// Bob leaves the room, then comes back and drops: alice, on the other
	// instance, sees each.
	p.eval(`(async () => {
		await bobSub.unsubscribe();
		await h.waitFor("the leave", () => ev.includes("alice sees leave bob"));
		await bob.subscribe("room.1");
		await h.waitFor("the second join", () => ev.filter((e) => e === "alice sees join bob Bob").length === 2);
		await bob.close();
		await h.waitFor("the leave of a closed client", () => ev.filter((e) => e === "alice sees leave bob").length === 2);
	})()`, nil)
	var evs []string
	p.eval("ev", &evs)
	wantEv := []string{
		"alice sees join alice Alice", "alice sees join bob Bob", "bob sees join bob Bob",
		"alice sees leave bob", "alice sees join bob Bob", "alice sees leave bob",
	}
	if len(evs) != len(wantEv) || evs[0] != wantEv[0] || !reflect.DeepEqual(evs[3:], wantEv[3:]) {
		t.Errorf("events %q, want %q (bob's own join in any order with alice's view of it)", evs, wantEv)
	}
}

// A subscription the server makes from another instance is announced
// before its publications, listed, cannot be left by the client, survives a
// reconnect to the other instance with an exact catch-up, and ends when the
// server ends it, even while the client is away (then not a refusal). When
// the server ends "news.uk" under the client's own "news", the offsets of
// "news" jump over what came through "news.uk" without a false gap.
func TestJSServerSubscriptions(t *testing.T) {
	needBrowser(t)
	m := newMemory(t)
	a, b := startInstance(t, m, ""), startInstance(t, m, "")
	p := harness(t, a)
	p.eval(script(`(async () => {
		window.clock = new h.FakeClock();
		window.ev = []; window.msgs = [];
		const show = (m) => msgs.push(m.sub + ":" + m.data);
		window.c = await h.sss.dial(h.wsURL({user: "sue", sid: "tab"}), {
			urls: [URL_B], clock, WebSocket: h.TestSocket, requestTimeout: 0, dialTimeout: 5000,
			hooks: {
				onSubscribed: (s) => { ev.push("subscribed " + s.channel + " " + s.server); s.handleMessage(show); },
				onUnsubscribed: (s) => ev.push("unsubscribed " + s.channel + " " + s.status),
				onRefused: (s) => ev.push("refused " + s.channel),
				onGap: (i) => ev.push("gap " + i.channel + ": " + i.reason),
			},
		});
		await c.subscribe("news", {messageHandler: show});
	})()`, "URL_B", "ws://"+b.addr+"/ws?user=sue&sid=tab"), nil)
	ctx := context.Background()
	if err := b.srv.Subscribe(ctx, sss.ToUser("sue"), "news.uk"); err != nil {
		t.Fatal(err)
	}
	p.waitJS("onSubscribed", `ev.includes("subscribed news.uk true")`)
	publish(t, b.srv, "news", 1)
	publish(t, b.srv, "news.uk", 2)
	p.waitJS("the publications", "msgs.length === 2")
	var left outcome
	p.eval(`h.settle(c.subscriptions().get("news.uk").unsubscribe())`, &left)
	wantCode(t, "unsubscribe from a server subscription", left, "forbidden")

	// A reconnect, to the other instance: kept, and caught up.
	reconnect := func(from *instance, meanwhile func()) {
		t.Helper()
		from.rec.conn("sue").Close("kick", false)
		p.waitJS("the backoff", `c.status === "reconnecting" && clock.pending().some((ms) => ms < 5000)`)
		meanwhile()
		p.eval("clock.advance(Math.min(...clock.pending()))", nil)
		p.waitJS("the reconnection", `c.status === "connected"`)
	}
	reconnect(a, func() { publish(t, b.srv, "news.uk", 3) })
	p.waitJS("the catch-up", "msgs.length === 3")
	var resumed []map[string]any
	p.eval(`h.sockets[h.sockets.length - 1].sent[0].subscriptions.filter((e) => e.channel === "news.uk")`, &resumed)
	if len(resumed) != 1 || resumed[0]["server"] != true || resumed[0]["since"] == nil {
		t.Errorf("the resume lists news.uk as %v, want server with a position", resumed)
	}

	// The server ends news.uk: what follows on news.uk comes through news.
	if err := a.srv.Unsubscribe(ctx, sss.ToUser("sue"), "news.uk"); err != nil {
		t.Fatal(err)
	}
	p.waitJS("onUnsubscribed", `ev.includes("unsubscribed news.uk unsubscribed")`)
	publish(t, a.srv, "news", 4)
	publish(t, a.srv, "news.uk", 5)
	p.waitJS("the publications after the end of news.uk", "msgs.length === 5")

	// Ended while the client is away.
	if err := a.srv.Subscribe(ctx, sss.ToUser("sue"), "team"); err != nil {
		t.Fatal(err)
	}
	p.waitJS("onSubscribed team", `ev.includes("subscribed team true")`)
	reconnect(b, func() {
		if err := a.srv.Unsubscribe(ctx, sss.ToUser("sue"), "team"); err != nil {
			t.Fatal(err)
		}
	})
	p.waitJS("team's end", `ev.includes("unsubscribed team unsubscribed")`)
	publish(t, a.srv, "news", 6)
	p.waitJS("a publication after the reconnect", "msgs.length === 6")

	var res struct {
		Msgs  []string       `json:"msgs"`
		Ev    []string       `json:"ev"`
		Subs  []string       `json:"subs"`
		Stats map[string]int `json:"stats"`
	}
	p.eval(`({msgs, ev, subs: [...c.subscriptions().keys()].sort(), stats: c.stats})`, &res)
	if want := []string{"news:1", "news.uk:2", "news.uk:3", "news:4", "news:5", "news:6"}; !reflect.DeepEqual(res.Msgs, want) {
		t.Errorf("messages %q, want %q", res.Msgs, want)
	}
	if want := []string{"subscribed news.uk true", "unsubscribed news.uk unsubscribed", "subscribed team true", "unsubscribed team unsubscribed"}; !reflect.DeepEqual(res.Ev, want) {
		t.Errorf("events %q, want %q (no gap, no refusal)", res.Ev, want)
	}
	if !reflect.DeepEqual(res.Subs, []string{"news"}) || res.Stats["gaps"] != 0 || res.Stats["duplicates"] != 0 {
		t.Errorf("subscriptions %v, stats %v", res.Subs, res.Stats)
	}
}

// Broadcasts reach every connection of the cluster through onBroadcast;
// a publication with exceptSelf reaches everyone but its sender; every
// message carries the time the server accepted it.
func TestJSBroadcastExceptSelf(t *testing.T) {
	needBrowser(t)
	m := newMemory(t)
	a, b := startInstance(t, m, ""), startInstance(t, m, "")
	p := harness(t, a)
	p.eval(script(`(async () => {
		window.got = {one: [], two: [], b1: [], b2: []};
		const opts = (k, bk) => ({hooks: {onBroadcast: (m) => got[bk].push([m.channel, m.event, m.data])}});
		window.one = await h.sss.dial(h.wsURL({user: "one"}), opts("one", "b1"));
		window.two = await h.sss.dial(URL_B, opts("two", "b2"));
		await one.subscribe("open.x", {messageHandler: (m) => got.one.push(m.data)});
		await two.subscribe("open.x", {messageHandler: (m) => got.two.push({data: m.data, time: m.time})});
		await one.publish("open.x", "m", "not to myself", {exceptSelf: true});
		await one.publish("open.x", "m", "to all");
	})()`, "URL_B", "ws://"+b.addr+"/ws?user=two"), nil)
	before := time.Now()
	if err := b.srv.Broadcast(context.Background(), "maintenance", "at 22:00"); err != nil {
		t.Fatal(err)
	}
	p.waitJS("everything", "got.two.length === 2 && got.one.length === 1 && got.b1.length === 1 && got.b2.length === 1")
	time.Sleep(100 * time.Millisecond) // room for what must not come
	var got struct {
		One []string `json:"one"`
		Two []struct {
			Data string `json:"data"`
			Time int64  `json:"time"`
		} `json:"two"`
		B1, B2 [][]string
	}
	p.eval(`({one: got.one, two: got.two, B1: got.b1, B2: got.b2})`, &got)
	if !reflect.DeepEqual(got.One, []string{"to all"}) {
		t.Errorf("the sender got %q, want only the publication without exceptSelf", got.One)
	}
	if len(got.Two) != 2 || got.Two[0].Data != "not to myself" {
		t.Errorf("the other got %+v", got.Two)
	}
	for _, m := range got.Two {
		if at := time.UnixMilli(m.Time); at.Before(before.Add(-time.Minute)) || at.After(time.Now()) {
			t.Errorf("message time %v, want about now", at)
		}
	}
	want := [][]string{{"$all", "maintenance", "at 22:00"}}
	if !reflect.DeepEqual(got.B1, want) || !reflect.DeepEqual(got.B2, want) {
		t.Errorf("broadcasts %q and %q, want %q on both instances", got.B1, got.B2, want)
	}
}

// The documented recipe, while another instance publishes without pause:
// read the last N, then subscribe from the position the read returned. The
// page sees every publication from the first read on, once, in order. A
// read after a position gives the first ones after it, up to the limit,
// and ends at the last one it gives.
func TestJSHistoryRecipe(t *testing.T) {
	needBrowser(t)
	m := newMemory(t)
	a, b := startInstance(t, m, ""), startInstance(t, m, "")
	for i := 1; i <= 20; i++ {
		publish(t, b.srv, "feed", i)
	}
	const last = 300
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the publisher, on the other instance; the test waits for it
		defer wg.Done()
		for i := 21; i <= last; i++ {
			if err := b.srv.Publish(context.Background(), "feed", "m", i); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	p := harness(t, a)
	var first struct {
		History []int `json:"history"`
		Times   bool  `json:"times"`
		Offsets bool  `json:"offsets"`
	}
	p.eval(`(async () => {
		window.c = await h.sss.dial(h.wsURL({user: "hi"}));
		window.seen = [];
		const {messages, position} = await c.history("feed", {limit: 5});
		window.pos = position;
		for (const m of messages) seen.push(m.data);
		window.sub = await c.subscribe("feed", {since: position, messageHandler: (m) => seen.push(m.data)});
		return {
			history: messages.map((m) => m.data),
			times: messages.every((m) => m.time > 0 && m.sub === "feed"),
			offsets: messages.every((m, i) => m.offset === position.offset - messages.length + 1 + i),
		};
	})()`, &first)
	wg.Wait()
	p.waitJS("the last publication", "seen.includes(300)")
	time.Sleep(100 * time.Millisecond) // room for a duplicate
	var seen []int
	p.eval("seen", &seen)
	if len(first.History) != 5 || !first.Times || !first.Offsets {
		t.Fatalf("history read %v (times %t, offsets %t), want the last 5 with times and contiguous offsets", first.History, first.Times, first.Offsets)
	}
	start := first.History[0]
	for i, v := range seen {
		if v != start+i {
			t.Fatalf("the page saw %v: at %d got %d, want %d (no gap, no duplicate)", seen, i, v, start+i)
		}
	}
	if seen[len(seen)-1] != last {
		t.Fatalf("ends at %d", seen[len(seen)-1])
	}
	var more struct {
		Data     []int          `json:"data"`
		Position map[string]any `json:"position"`
		Gaps     int            `json:"gaps"`
		Rec      bool           `json:"rec"`
		Lost     outcome        `json:"lost"`
	}
	p.eval(`(async () => {
		const r = await c.history("feed", {since: {offset: 10, epoch: pos.epoch}, limit: 3});
		return {data: r.messages.map((m) => m.data), position: r.position, gaps: c.stats.gaps, rec: sub.recovered,
			lost: await h.settle(c.history("feed", {since: {offset: 1, epoch: "another"}}))};
	})()`, &more)
	if !reflect.DeepEqual(more.Data, []int{11, 12, 13}) || more.Position["offset"] != float64(13) {
		t.Errorf("3 after offset 10: %v ending at %v, want 11..13 ending at 13", more.Data, more.Position)
	}
	if more.Gaps != 0 || !more.Rec {
		t.Errorf("gaps %d, recovered %t", more.Gaps, more.Rec)
	}
	wantCode(t, "history after a position of another epoch", more.Lost, "not_found")
}

// A page that starts with restore gets the subscriptions its session had
// (with their query, so the parser runs again), caught up on what was
// published since that session's last connection ended.
func TestJSRestore(t *testing.T) {
	needBrowser(t)
	m := newMemory(t)
	a, b := startInstance(t, m, ""), startInstance(t, m, "")
	p := harness(t, a)
	p.eval(`(async () => {
		const first = await h.sss.dial(h.wsURL({user: "ro", sid: "tab"}));
		await first.subscribe("private", {query: {pw: "open sesame"}});
		await first.close();
	})()`, nil)
	deadline := time.Now().Add(waitTimeout)
	for st := a.srv.Stats(); st.Connections != 0 || st.StoreBacklog != 0; st = a.srv.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("the session's end was not stored: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	publish(t, a.srv, "private", "missed")
	var got struct {
		Ev   []string `json:"ev"`
		Msgs []string `json:"msgs"`
	}
	p.eval(script(`(async () => {
		const ev = [], msgs = [];
		const c = await h.sss.dial(URL_B, {restore: true, hooks: {
			onSubscribed: (s) => { ev.push(s.channel + " " + JSON.stringify(s.query) + " " + s.server); s.handleMessage((m) => msgs.push(m.data)); },
			onRecover: (i) => ev.push("recover " + i.channel + " " + i.recovered),
		}});
		await h.waitFor("the catch-up", () => msgs.length === 1);
		ev.push("held " + [...c.subscriptions().keys()]);
		await c.close();
		return {ev, msgs};
	})()`, "URL_B", "ws://"+b.addr+"/ws?user=ro&sid=tab"), &got)
	want := []string{`private {"pw":"open sesame"} false`, "recover private true", "held private"}
	if !reflect.DeepEqual(got.Ev, want) || !reflect.DeepEqual(got.Msgs, []string{"missed"}) {
		t.Errorf("events %q and messages %q, want %q and the missed one", got.Ev, got.Msgs, want)
	}
	if q := b.rec.query("private"); len(q) != 1 || q[0] != `{"pw":"open sesame"}` {
		t.Errorf("B's parser saw %q, want the restored query", q)
	}
}

// getToken gives a token before every connection: when the server closes
// with 4007 at the token's expiry, the client is back at once (no backoff)
// with a fresh one, its subscription resumed; a token source that fails is
// retried with backoff; one that says unauthorized stops the client.
func TestJSTokenRefresh(t *testing.T) {
	needBrowser(t)
	in := startInstance(t, newMemory(t), "", sss.WithSessionParser(func(r *http.Request) (*sss.Session, error) {
		tok := r.URL.Query().Get("token")
		if tok == "" {
			return nil, sss.ErrUnauthorized
		}
		ttl := time.Hour
		if tok == "t1" {
			ttl = time.Second
		}
		return &sss.Session{UserID: "tia", SessionID: "s", ExpiresAt: time.Now().Add(ttl)}, nil
	}))
	p := harness(t, in)
	p.eval(`(async () => {
		window.clock = new h.FakeClock(); // never advanced: a backoff would never end
		window.asked = []; window.n = 0; window.revoked = false; window.flaky = 0; window.ev = []; window.msgs = [];
		window.c = await h.sss.dial(h.wsURL({}), {
			clock, WebSocket: h.TestSocket, dialTimeout: 5000, requestTimeout: 0,
			getToken: async ({reason}) => {
				asked.push(reason ? String(reason.closeCode || reason.code) : null);
				if (revoked) throw new h.sss.SSSError("unauthorized", "logged out");
				if (flaky > 0) { flaky--; throw new Error("token service down"); }
				return "t" + (++n);
			},
			hooks: {onStatusChange: (s) => ev.push(s), onDrop: (e) => ev.push("drop " + (e.closeCode || e.code))},
		});
		await c.subscribe("news", {messageHandler: (m) => msgs.push(m.data)});
	})()`, nil)
	p.waitJS("the reconnection after the expiry", `asked.length === 2 && c.status === "connected"`)
	publish(t, in.srv, "news", 1)
	p.waitJS("a publication on the new connection", "msgs.length === 1")
	var got struct {
		Asked []*string `json:"asked"`
		Ev    []string  `json:"ev"`
		URLs  []string  `json:"urls"`
	}
	p.eval(`({asked, ev, urls: h.sockets.map((s) => s.url)})`, &got)
	if len(got.Asked) != 2 || got.Asked[0] != nil || got.Asked[1] == nil || *got.Asked[1] != "4007" {
		t.Errorf("getToken asked with reasons %v, want none then 4007", got.Asked)
	}
	if len(got.URLs) != 2 || !strings.HasSuffix(got.URLs[0], "token=t1") || !strings.HasSuffix(got.URLs[1], "token=t2") {
		t.Errorf("connections to %q, want t1 then t2", got.URLs)
	}
	if want := []string{"connected", "drop 4007", "reconnecting", "connected"}; !reflect.DeepEqual(got.Ev, want) {
		t.Errorf("events %q, want %q", got.Ev, want)
	}
	if r := in.rec.disconnects(); len(r) != 1 || !errors.Is(r[0], sss.ErrSessionExpired) {
		t.Errorf("the server ended %v, want the session's expiry", r)
	}

	// A token source that fails for a moment: retried with backoff.
	p.eval("flaky = 1", nil)
	in.rec.conn("tia").Close("kick", false)
	for i := 0; i < 2; i++ {
		p.waitJS("a backoff", `c.status === "reconnecting" && clock.pending().some((ms) => ms < 5000)`)
		p.eval("clock.advance(Math.min(...clock.pending()))", nil)
	}
	p.waitJS("the reconnection after the token source's failure", `c.status === "connected" && h.sockets.length === 3`)
	var reasons []*string
	p.eval("asked.slice(2)", &reasons)
	if len(reasons) != 2 || reasons[0] == nil || *reasons[0] != "4005" || reasons[1] == nil || *reasons[1] != "connect_failed" {
		t.Errorf("getToken's reasons after the kick: %v, want 4005 then connect_failed", reasons)
	}

	p.eval("revoked = true", nil)
	in.rec.conn("tia").Close("kick", false)
	p.waitJS("the backoff", `c.status === "reconnecting" && clock.pending().some((ms) => ms < 5000)`)
	p.eval("clock.advance(Math.min(...clock.pending()))", nil)
	p.waitJS("the client to stop", `c.status === "closed"`)
	var final struct {
		Unauthorized bool `json:"unauthorized"`
		Sockets      int  `json:"sockets"`
	}
	p.eval(`({unauthorized: h.sss.is(c.err, "unauthorized"), sockets: h.sockets.length})`, &final)
	if !final.Unauthorized || final.Sockets != 3 {
		t.Errorf("after the token source refused: unauthorized %t, %d sockets; want true, no new socket", final.Unauthorized, final.Sockets)
	}
}
