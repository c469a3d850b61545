package scalertest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/superscaled/sss/scaler"
)

var brokerTests = []test{
	{"FanOut", testFanOut},
	{"Hierarchy", testHierarchy},
	{"ReservedChannelsAreFlat", testReservedFlat},
	{"PublicationRoundTrip", testRoundTrip},
	{"PublishWithoutSubscribers", testNoSubscribers},
	{"SubscribeIdempotent", testSubscribeIdempotent},
	{"UnsubscribeNotSubscribed", testUnsubscribeNotSubscribed},
	{"UnsubscribeOneLevel", testUnsubscribeOneLevel},
	{"DeliveriesStartWhenSubscribeReturns", testSubscribeStarts},
	{"DeliveriesStopWhenUnsubscribeReturns", testUnsubscribeStops},
	{"PerPublisherOrder", testPerPublisherOrder},
	{"PerStreamTotalOrder", testPerStreamOrder},
	{"Send", testSend},
	{"SendOrder", testSendOrder},
	{"SendCopiesMessage", testSendCopies},
	{"SendUnknownNode", testSendUnknown},
}

// A publication reaches every subscribed node once, the publisher's own node
// included, whichever node publishes; other nodes get nothing.
func testFanOut(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e := newEnv(t, ns)
	n := e.nodes(3)
	s := e.ch("fan")
	n[0].subscribe(s)
	n[1].subscribe(s)

	n[0].publish(pub(s, "e", `1`)) // from a subscribed node
	n[2].publish(pub(s, "e", `2`)) // from a node that is not subscribed
	for _, m := range n[:2] {
		m.rec.waitStream(t, s, 2)
	}
	settle()
	for _, m := range n[:2] {
		expectDeliveries(t, m, via(s, s), via(s, s))
		if ps := m.rec.onStream(s); string(ps[0].Data) != "1" || string(ps[1].Data) != "2" {
			t.Errorf("%s: got data %q, %q; want 1, 2 in order", m.id, ps[0].Data, ps[1].Data)
		}
	}
	expectDeliveries(t, n[2])
}

// Hierarchical channels belong to every ancestor stream; a node gets one
// delivery per stream it holds, tagged with that stream.
func testHierarchy(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e := newEnv(t, ns)
	n := e.nodes(3)
	news, uk, london := e.ch("news"), e.ch("news.uk"), e.ch("news.uk.london")
	n[0].subscribe(news)
	n[1].subscribe(news, uk)
	n[2].subscribe(london)

	n[2].publish(pub(london, "a", `1`))
	n[0].publish(pub(e.ch("newsletter"), "b", `2`)) // shares a prefix, not a level
	n[0].publish(pub(e.ch("news2.uk"), "b", `3`))
	n[1].publish(pub(news, "c", `4`))
	n[1].publish(pub(e.ch("news.fr"), "d", `5`))
	n[0].publish(pub(e.ch("news.uk.london.soho"), "e", `6`))

	n[0].rec.waitStream(t, news, 4)
	n[1].rec.waitStream(t, news, 4)
	n[1].rec.waitStream(t, uk, 2)
	n[2].rec.waitStream(t, london, 2)
	settle()
	soho := e.ch("news.uk.london.soho")
	expectDeliveries(t, n[0], via(news, london), via(news, news), via(news, e.ch("news.fr")), via(news, soho))
	expectDeliveries(t, n[1], via(news, london), via(uk, london), via(news, news), via(news, e.ch("news.fr")), via(news, soho), via(uk, soho))
	expectDeliveries(t, n[2], via(london, london), via(london, soho))
}

// Reserved channels belong only to their own stream, whatever dots their
// names hold: "$u.bob" does not receive "$u.bob.smith".
func testReservedFlat(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e := newEnv(t, ns)
	n := e.nodes(3)
	bob, smith := e.res("bob"), e.res("bob.smith")
	parent := scaler.ReservedPrefix + "u." + e.prefix // "$u.<prefix>", a pseudo-ancestor
	n[0].subscribe(bob)
	n[1].subscribe(smith)
	n[2].subscribe(parent)

	tell := pub(smith, "notify", `{"text":"hi"}`)
	tell.Transient = true
	n[0].publish(tell)
	n[2].publish(pub(bob, "e", `1`))
	n[1].rec.waitStream(t, smith, 1)
	n[0].rec.waitStream(t, bob, 1)
	settle()
	expectDeliveries(t, n[0], via(bob, bob))
	expectDeliveries(t, n[1], via(smith, smith))
	expectDeliveries(t, n[2])
}

// Every field of a publication arrives intact, on the publisher's node and
// on another, transient or not.
func testRoundTrip(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e := newEnv(t, ns)
	n := e.nodes(2)
	s, r := e.ch("rt"), e.res("rt")
	n[0].subscribe(s, r)
	n[1].subscribe(s, r)
	pubs := []*scaler.Publication{
		{Channel: s, Event: "message",
			Data:   []byte(`{"text":"h\u00e9llo \u2713 \"quoted\" line\nbreak","n":[1,2.5,null,true]}`),
			Sender: scaler.Sender{User: "alice", Conn: "node1.conn1"}, Time: 1700000000123, Except: "node1.conn2"},
		{Channel: r, Event: "notify", Data: []byte(`"you have mail"`), Transient: true},
		{Channel: s}, // no event, no data, no sender
		{Channel: s, Data: []byte(`{}`), Sender: scaler.Sender{Conn: "n.c"}},
	}
	n[0].publish(pubs...)
	for _, m := range n {
		m.rec.waitStream(t, s, 3)
		m.rec.waitStream(t, r, 1)
		got := append(m.rec.onStream(s), m.rec.onStream(r)...)
		want := []*scaler.Publication{pubs[0], pubs[2], pubs[3], pubs[1]}
		for i := range want {
			if !samePub(got[i], want[i]) {
				t.Errorf("%s: delivery %d:\n got %s\nwant %s", m.id, i, fmtPub(got[i]), fmtPub(want[i]))
			}
		}
		// Positions are only for publications that are not transient, on a backend with History.
		_, history := m.node.(scaler.History)
		for _, d := range m.rec.all() {
			if (d.Pub.Transient || !history) && (d.Offset != 0 || d.Epoch != "") {
				t.Errorf("%s: delivery of %s has position (%d, %q), want zero (tell, or no History)", m.id, fmtPub(d.Pub), d.Offset, d.Epoch)
			}
		}
	}
}

// Publishing where nobody listens is not an error.
func testNoSubscribers(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e := newEnv(t, ns)
	n := e.nodes(2)
	n[0].publish(pub(e.ch("nobody.here"), "e", `1`), pub(e.res("nobody"), "e", `2`))
	settle()
	expectDeliveries(t, n[0])
	expectDeliveries(t, n[1])
}

// Subscribe twice, get one delivery; one Unsubscribe withdraws it.
func testSubscribeIdempotent(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e := newEnv(t, ns)
	n := e.nodes(2)
	s := e.ch("idem")
	n[0].subscribe(s, s)
	n[1].publish(pub(s, "e", `1`))
	n[0].rec.waitStream(t, s, 1)
	settle()
	expectDeliveries(t, n[0], via(s, s))

	n[0].unsubscribe(s)
	n[0].unsubscribe(s) // a second Unsubscribe is a no-op
	n[1].publish(pub(s, "e", `2`))
	settle()
	expectDeliveries(t, n[0], via(s, s))

	n[0].subscribe(s) // and it can come back
	n[1].publish(pub(s, "e", `3`))
	n[0].rec.waitStream(t, s, 2)
	settle()
	expectDeliveries(t, n[0], via(s, s), via(s, s))
}

// Unsubscribing what was never subscribed is a no-op that disturbs nothing.
func testUnsubscribeNotSubscribed(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e := newEnv(t, ns)
	n := e.nodes(2)
	s := e.ch("keep")
	n[0].subscribe(s)
	n[1].subscribe(s)
	n[0].unsubscribe(e.ch("never"), e.res("never"), s+".child") // no error
	n[1].unsubscribe(e.ch("never"))
	n[1].publish(pub(s, "e", `1`))
	n[0].rec.waitStream(t, s, 1)
	n[1].rec.waitStream(t, s, 1)
}

// Unsubscribing one level keeps the others, on this node and on other nodes
// holding the same stream.
func testUnsubscribeOneLevel(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e := newEnv(t, ns)
	n := e.nodes(2)
	news, uk := e.ch("news"), e.ch("news.uk")
	n[0].subscribe(news, uk)
	n[1].subscribe(news, uk)
	n[0].unsubscribe(uk)
	n[1].publish(pub(uk, "e", `1`))
	n[0].rec.waitStream(t, news, 1)
	n[1].rec.waitStream(t, news, 1)
	n[1].rec.waitStream(t, uk, 1)
	settle()
	expectDeliveries(t, n[0], via(news, uk))
	expectDeliveries(t, n[1], via(news, uk), via(uk, uk))
}

// A publication made after Subscribe returned is delivered, even straight
// away and from another node: there is no window in which the subscription
// is still being set up.
func testSubscribeStarts(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e := newEnv(t, ns)
	n := e.nodes(2)
	const rounds = 20
	for i := range rounds {
		s := e.ch("start" + strconv.Itoa(i))
		n[0].subscribe(s)
		n[1].publish(pub(s+".sub", "e", strconv.Itoa(i)))
		r := e.res("start" + strconv.Itoa(i))
		n[1].subscribe(r)
		n[0].publish(pub(r, "e", strconv.Itoa(i)))
	}
	for i := range rounds {
		n[0].rec.waitStream(t, e.ch("start"+strconv.Itoa(i)), 1)
		n[1].rec.waitStream(t, e.res("start"+strconv.Itoa(i)), 1)
	}
}

// While another node publishes continuously, the handler is not called for
// the stream once Unsubscribe has returned (the recorder reports it), and a
// node that stays subscribed misses nothing.
func testUnsubscribeStops(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e := newEnv(t, ns)
	n := e.nodes(3)
	s := e.ch("stop")
	n[0].subscribe(s)
	n[1].subscribe(s)

	var published atomic.Int64
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- func() error {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return nil
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
				err := n[2].node.Publish(ctx, pub(s+".x", "e", strconv.Itoa(i)))
				cancel()
				if err != nil {
					return fmt.Errorf("publish: %w", err)
				}
				published.Add(1)
				if i%16 == 0 {
					time.Sleep(time.Millisecond) // give the other goroutines some air
				}
			}
		}()
	}()
	n[0].rec.waitStream(t, s, 20)
	n[0].unsubscribe(s)
	// Publications keep flowing, to n1 only.
	after := published.Load() + 20
	n[1].rec.waitUntil(t, "20 more publications", func() bool { return published.Load() >= after })
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	total := int(published.Load())
	n[1].rec.waitStream(t, s, total)
	settle()
	if got := len(n[1].rec.onStream(s)); got != total {
		t.Errorf("%s: got %d deliveries, want %d (one per publication)", n[1].id, got, total)
	}
	if got := len(n[0].rec.onStream(s)); got >= total {
		t.Errorf("%s: got %d of %d publications although it unsubscribed midway", n[0].id, got, total)
	}
}

// N publications from one goroutine arrive in order at every subscribed
// node, including those on sub-channels of the stream.
func testPerPublisherOrder(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	const N = 1000
	e := newEnv(t, ns)
	n := e.nodes(3)
	s := e.ch("order")
	channels := []string{s, s + ".a", s + ".a.b"}
	for _, m := range n {
		m.subscribe(s)
	}
	ctx, cancel := callCtx(t)
	defer cancel()
	for i := range N {
		if err := n[0].node.Publish(ctx, pub(channels[i%3], "e", strconv.Itoa(i))); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
	}
	for _, m := range n {
		m.rec.waitStream(t, s, N)
	}
	settle()
	for _, m := range n {
		got := m.rec.onStream(s)
		if len(got) != N {
			t.Errorf("%s: got %d deliveries, want %d", m.id, len(got), N)
		}
		for i, p := range got {
			if string(p.Data) != strconv.Itoa(i) || p.Channel != channels[i%3] {
				t.Errorf("%s: delivery %d is %s, want data %d on %q (out of order or lost)", m.id, i, fmtPub(p), i, channels[i%3])
				break
			}
		}
	}
}

// Concurrent publishers on different nodes: every node observes one and the
// same order for the stream, consistent with each publisher's own order.
func testPerStreamOrder(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	const per = 300
	e := newEnv(t, ns)
	n := e.nodes(3)
	s := e.ch("total")
	channels := []string{s, s + ".x", s + ".x.y"}
	for _, m := range n {
		m.subscribe(s)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(n))
	for i, m := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			defer cancel()
			for j := range per {
				if err := m.node.Publish(ctx, pub(channels[i], m.id, strconv.Itoa(j))); err != nil {
					errs <- fmt.Errorf("%s: Publish %d: %w", m.id, j, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, m := range n {
		m.rec.waitStream(t, s, per*len(n))
	}
	settle()
	key := func(p *scaler.Publication) string { return p.Event + "/" + string(p.Data) }
	ref := n[0].rec.onStream(s)
	for _, m := range n {
		got := m.rec.onStream(s)
		if len(got) != per*len(n) {
			t.Errorf("%s: got %d deliveries, want %d", m.id, len(got), per*len(n))
			continue
		}
		next := map[string]int{}
		for i, p := range got {
			if key(p) != key(ref[i]) {
				t.Errorf("%s: delivery %d is %s but %s saw %s there: nodes disagree on the stream's order",
					m.id, i, key(p), n[0].id, key(ref[i]))
				break
			}
			if want := strconv.Itoa(next[p.Event]); string(p.Data) != want {
				t.Errorf("%s: publisher %s's publications out of order: got %s, want %s", m.id, p.Event, p.Data, want)
				break
			}
			next[p.Event]++
		}
	}
}

// Send reaches the named node, with the sender's id, including the sender
// itself.
func testSend(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e := newEnv(t, ns)
	n := e.nodes(3)
	n[0].send(n[1].id, []byte(`{"k":"tell","name":"x"}`))
	n[0].send(n[0].id, []byte("to myself"))
	n[2].send(n[1].id, []byte("from n2"))
	n[1].rec.waitMsgs(t, 2)
	n[0].rec.waitMsgs(t, 1)
	settle()
	check := func(m *member, want ...message) {
		t.Helper()
		got := m.rec.msgs()
		if len(got) != len(want) {
			t.Errorf("%s: got %d messages, want %d", m.id, len(got), len(want))
			return
		}
		for i := range want {
			if got[i].from != want[i].from || string(got[i].msg) != string(want[i].msg) {
				t.Errorf("%s: message %d = (%q, %q), want (%q, %q)", m.id, i, got[i].from, got[i].msg, want[i].from, want[i].msg)
			}
		}
	}
	// n1's two messages come from different senders: no order between them.
	got := n[1].rec.msgs()
	if len(got) == 2 && got[0].from == n[2].id {
		got[0], got[1] = got[1], got[0]
	}
	if len(got) != 2 || got[0].from != n[0].id || string(got[0].msg) != `{"k":"tell","name":"x"}` ||
		got[1].from != n[2].id || string(got[1].msg) != "from n2" {
		t.Errorf("%s: got messages %+v", n[1].id, got)
	}
	check(n[0], message{n[0].id, []byte("to myself")})
	check(n[2])
	expectDeliveries(t, n[1]) // messages are not deliveries
}

// Messages from one sender to one node arrive in order, even with another
// sender interleaving, and each one the receiver kept stays intact.
func testSendOrder(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	const N = 1000
	e := newEnv(t, ns)
	n := e.nodes(3)
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, m := range []*member{n[0], n[2]} {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			defer cancel()
			buf := make([]byte, 0, 32)
			for i := range N {
				buf = strconv.AppendInt(buf[:0], int64(i), 10) // reused: Send must not keep it
				if err := m.node.Send(ctx, n[1].id, buf); err != nil {
					errs <- fmt.Errorf("%s: Send %d: %w", m.id, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	n[1].rec.waitMsgs(t, 2*N)
	settle()
	next := map[string]int{}
	for _, m := range n[1].rec.msgs() {
		if want := strconv.Itoa(next[m.from]); string(m.msg) != want {
			t.Fatalf("%s: message from %s is %q, want %q (out of order, lost, or its buffer was reused)", n[1].id, m.from, m.msg, want)
		}
		next[m.from]++
	}
	if next[n[0].id] != N || next[n[2].id] != N || len(next) != 2 {
		t.Errorf("%s: messages per sender = %v, want %d from each of %s and %s", n[1].id, next, N, n[0].id, n[2].id)
	}
}

// The sender may reuse its buffer as soon as Send returns.
func testSendCopies(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e := newEnv(t, ns)
	n := e.nodes(2)
	buf := []byte("original")
	n[0].send(n[1].id, buf)
	copy(buf, "XXXXXXXX")
	n[1].rec.waitMsgs(t, 1)
	if got := string(n[1].rec.msgs()[0].msg); got != "original" {
		t.Errorf("%s received %q, want %q: the message aliases the sender's buffer", n[1].id, got, "original")
	}
}

// Send to a node that never joined: nil (the backend cannot know) or an
// error wrapping ErrUnknownNode; nothing is delivered anywhere.
func testSendUnknown(t *testing.T, ns func(*testing.T) scaler.Scaler) {
	e := newEnv(t, ns)
	n := e.nodes(2)
	ctx, cancel := callCtx(t)
	defer cancel()
	err := n[0].node.Send(ctx, e.prefix+"-nobody", []byte("lost"))
	if err != nil && !errors.Is(err, scaler.ErrUnknownNode) {
		t.Errorf("Send to an unknown node: %v; want nil or an error wrapping scaler.ErrUnknownNode", err)
	}
	settle()
	for _, m := range n {
		if got := m.rec.msgs(); len(got) != 0 {
			t.Errorf("%s received %d messages meant for an unknown node", m.id, len(got))
		}
	}
}
