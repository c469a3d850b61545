package browsertest

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/superscaled/sss/examples/chat/chatapp"
	"github.com/superscaled/sss/scaler"
)

// The chat of examples/chat, used as people use it: pages in Chromium, each
// in a browser context of its own, on real chat instances (chatapp) that
// share a scaler as a cluster does.

// chatInstance starts a chat on sc at addr ("" for any port).
func chatInstance(t *testing.T, sc scaler.Scaler, addr string) *instance {
	t.Helper()
	app, err := chatapp.New(context.Background(), chatapp.Config{
		Scaler: sc,
		Secret: []byte("browser-test-secret-0123456789"),
		Logger: quietLogger,
	})
	if err != nil {
		t.Fatal(err)
	}
	in := serve(t, addr, app.Shutdown, app.Handler())
	in.srv = app.Server()
	return in
}

// login opens the chat at in as name: the page asks for a name, then joins
// the lobby.
func login(t *testing.T, in *instance, name string) *page {
	t.Helper()
	p := newPage(t, name, in.url("/"))
	p.do(
		chromedp.WaitVisible("#name"),
		chromedp.SendKeys("#name", name+kb.Enter),
	)
	p.waitJoined("lobby")
	return p
}

// waitJoined waits until the page shows room, joined, as its current room.
func (p *page) waitJoined(room string) {
	p.t.Helper()
	p.waitJS("#"+room+" joined and live", script(`document.querySelector("#rooms li[data-room=" + ROOM + "].joined.current") &&
		document.querySelector("#status").dataset.status === "connected"`, "ROOM", room))
}

// say types text in the composer and presses Enter.
func (p *page) say(text string) {
	p.t.Helper()
	p.do(chromedp.SendKeys("#text", text+kb.Enter))
}

// messages returns the messages the page shows in room, as "author: text".
func (p *page) messages(room string) []string {
	p.t.Helper()
	var out []string
	p.eval(script(`[...document.querySelectorAll("ol.messages[data-room=" + ROOM + "] .msg")]
		.map((li) => li.dataset.author + ": " + li.querySelector(".msg-text").textContent)`, "ROOM", room), &out)
	return out
}

// waitMessages waits until the page shows exactly want in room, in order.
func (p *page) waitMessages(room string, want ...string) {
	p.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		got := p.messages(room)
		if reflect.DeepEqual(got, want) || len(got) == 0 && len(want) == 0 {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s shows %q in #%s, want %q", p.name, got, room, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// text returns the text of the first element matching sel.
func (p *page) text(sel string) string {
	p.t.Helper()
	var s string
	p.eval(script(`(document.querySelector(SEL) || {}).textContent || ""`, "SEL", sel), &s)
	return s
}

// Two people in the lobby: what one types appears on the other's page, and
// each sees the other online and typing.
func TestChatTwoPages(t *testing.T) {
	needBrowser(t)
	in := chatInstance(t, newMemory(t), "")
	alice := login(t, in, "alice")
	bob := login(t, in, "bob")

	alice.say("hello bob")
	bob.waitMessages("lobby", "alice: hello bob")
	bob.say("hi alice, how are you?")
	alice.waitMessages("lobby", "alice: hello bob", "bob: hi alice, how are you?")

	alice.waitJS("bob online", `document.querySelector("#online li[data-name=bob]")`)
	bob.waitJS("alice online", `document.querySelector("#online li[data-name=alice]")`)
	bob.do(chromedp.SendKeys("#text", "I'm writ"))
	alice.waitJS("bob typing", `document.querySelector("#typing").textContent === "bob is typing…"`)
	bob.do(chromedp.SendKeys("#text", "ing a long answer"+kb.Enter))
	want := []string{"alice: hello bob", "bob: hi alice, how are you?", "bob: I'm writing a long answer"}
	alice.waitMessages("lobby", want...)
	bob.waitMessages("lobby", want...)
	alice.waitJS("the typing line to clear", `document.querySelector("#typing").textContent === ""`)
	alice.say("Great! The other instance could be anywhere.")
	bob.waitMessages("lobby", append(want, "alice: Great! The other instance could be anywhere.")...)
	alice.screenshot("chat")
}

// A page on instance A and one on instance B, two servers on one scaler,
// see each other's messages.
func TestChatTwoInstances(t *testing.T) {
	needBrowser(t)
	m := newMemory(t)
	a, b := chatInstance(t, m, ""), chatInstance(t, m, "")
	alice, bob := login(t, a, "alice"), login(t, b, "bob")
	alice.say("from A")
	bob.waitMessages("lobby", "alice: from A")
	bob.say("from B")
	alice.waitMessages("lobby", "alice: from A", "bob: from B")
	bob.waitMessages("lobby", "alice: from A", "bob: from B")
	// A newcomer on B loads the room's history, from the scaler, and sees
	// who is there, on either instance.
	carol := login(t, b, "carol")
	carol.waitMessages("lobby", "alice: from A", "bob: from B")
	for _, name := range []string{"alice", "bob", "carol"} {
		carol.waitJS(name+" online", script(`document.querySelector("#online li[data-name=" + NAME + "]")`, "NAME", name))
	}
	alice.waitJS("carol's join", `document.querySelector("#online li[data-name=carol]")`)
	// Bob signs out on B: his leave reaches the pages on A and B.
	bob.do(chromedp.Click("#logout"))
	alice.waitJS("bob's leave", `!document.querySelector("#online li[data-name=bob]") && document.querySelector("#online-count").textContent === "2"`)
	carol.waitJS("bob's leave", `!document.querySelector("#online li[data-name=bob]")`)
	alice.screenshot("chat-presence")
}

// Instance A restarts while the scaler and instance B keep running: the
// page on A reconnects by itself and shows exactly the messages sent
// meanwhile, once each, with no warning.
func TestChatRestartInstance(t *testing.T) {
	needBrowser(t)
	m := newMemory(t)
	a, b := chatInstance(t, m, ""), chatInstance(t, m, "")
	alice, bob := login(t, a, "alice"), login(t, b, "bob")
	alice.say("before the restart")
	bob.waitMessages("lobby", "alice: before the restart")

	addr := a.addr
	a.stop()
	alice.waitJS("the page to notice", `document.querySelector("#status").dataset.status === "reconnecting"`)
	if banner := alice.text("#banner"); !strings.Contains(banner, "Reconnecting") {
		t.Errorf("banner while A is down: %q", banner)
	}
	alice.screenshot("chat-reconnecting")
	bob.say("while A was down")
	bob.say("and another one")
	bob.waitMessages("lobby", "alice: before the restart", "bob: while A was down", "bob: and another one")

	chatInstance(t, m, addr) // A again, on the same address and scaler
	alice.waitJS("the page to reconnect", `document.querySelector("#status").dataset.status === "connected"`)
	want := []string{"alice: before the restart", "bob: while A was down", "bob: and another one"}
	alice.waitMessages("lobby", want...)
	alice.say("back")
	want = append(want, "alice: back")
	bob.waitMessages("lobby", want...)
	alice.waitMessages("lobby", want...)
	var notices []string
	alice.eval(`[...document.querySelectorAll("ol.messages[data-room=lobby] .notice.gap")].map((n) => n.textContent)`, &notices)
	if len(notices) != 0 {
		t.Errorf("the page warns %q after an exact catch-up", notices)
	}
	if banner := alice.text("#banner"); banner != "" {
		t.Errorf("banner after the reconnection: %q", banner)
	}
}

// A restarted process with an in-memory scaler has lost the history: the
// page reconnects by itself, says messages may have been missed, and goes
// on with what the new server has.
func TestChatRestartMemoryScaler(t *testing.T) {
	needBrowser(t)
	m1 := newMemory(t)
	a := chatInstance(t, m1, "")
	alice := login(t, a, "alice")
	alice.say("one")
	alice.waitMessages("lobby", "alice: one")

	addr := a.addr
	a.stop()
	m1.Close() // the process is gone, and its memory
	a2 := chatInstance(t, newMemory(t), addr)
	bob := login(t, a2, "bob") // on the new process, perhaps before alice is back
	bob.say("on the new server")
	bob.waitMessages("lobby", "bob: on the new server")

	alice.waitJS("the warning", `document.querySelector("ol.messages[data-room=lobby] .notice.gap")`)
	if n := alice.text("ol.messages[data-room=lobby] .notice.gap"); !strings.Contains(n, "messages may have been missed") {
		t.Errorf("notice %q", n)
	}
	alice.waitJS("the page to reconnect", `document.querySelector("#status").dataset.status === "connected"`)
	alice.waitMessages("lobby", "alice: one", "bob: on the new server")
	alice.say("two")
	alice.waitMessages("lobby", "alice: one", "bob: on the new server", "alice: two")
	alice.screenshot("chat-after-memory-restart")
	bob.waitMessages("lobby", "bob: on the new server", "alice: two")
}

// The locked room refuses a wrong password with a visible error, and lets
// the right one in.
func TestChatPasswordRoom(t *testing.T) {
	needBrowser(t)
	in := chatInstance(t, newMemory(t), "")
	alice := login(t, in, "alice")
	alice.do(
		chromedp.Click("#rooms li[data-room=secret] .room-link"),
		chromedp.WaitVisible("#password"),
		chromedp.SendKeys("#password", "open sesame"+kb.Enter),
		chromedp.WaitVisible("#password-error"),
	)
	if e := alice.text("#password-error"); !strings.Contains(e, "Wrong password") {
		t.Errorf("error shown: %q", e)
	}
	alice.screenshot("chat-wrong-password")
	alice.eval(`document.querySelector("#password").value = ""`, nil)
	alice.do(chromedp.SendKeys("#password", "sesame"+kb.Enter))
	alice.waitJoined("secret")
	alice.say("psst")
	alice.waitMessages("secret", "alice: psst")
	alice.waitMessages("lobby") // nothing leaked into the lobby
}
