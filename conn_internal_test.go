package sss

import (
	"slices"
	"strings"
	"testing"
)

// A writer that stops while the queue is corked (a subscription's ack and
// its held publications being queued) leaves the frames for the uncork,
// which starts the next writer: none is dropped.
func TestWriterStopKeepsCorkedFrames(t *testing.T) {
	srv, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c := newConn(srv, &Session{}, false, nil, nil, "")
	defer c.cancel()
	frame := []byte(`{"type":"ack","id":3}`)
	c.qmu.Lock()
	c.corked = 1
	c.queue, c.qbytes = [][]byte{frame}, len(frame)
	c.writing = true
	c.qmu.Unlock()
	if buf := c.take(nil, true); len(buf) != 0 {
		t.Fatalf("took %q under a cork", buf)
	}
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.writing {
		t.Fatal("the writer was not marked stopped")
	}
	if len(c.queue) != 1 || c.qbytes != len(frame) {
		t.Fatalf("queue %d frames, %d bytes after the writer stopped: the corked frame was dropped", len(c.queue), c.qbytes)
	}
}

// A stream keeps its only subscriber inline and a map from the second on,
// and goes back inline when one is left: every subscriber is seen at each
// step, once.
func TestChannelSubscribers(t *testing.T) {
	a, b, c := &Conn{id: "a"}, &Conn{id: "b"}, &Conn{id: "c"}
	ch := &channel{name: "s"}
	seen := func() string {
		var ids []string
		for sb := range ch.all() {
			ids = append(ids, sb.c.id)
		}
		slices.Sort(ids)
		return strings.Join(ids, ",")
	}
	steps := []struct {
		do   func() bool
		want string
		ok   bool
	}{
		{func() bool { ch.put(&sub{c: a}); return true }, "a", true},
		{func() bool { ch.put(&sub{c: a}); return true }, "a", true}, // replaced, not added
		{func() bool { return ch.take(b) }, "a", false},
		{func() bool { ch.put(&sub{c: b}); return true }, "a,b", true},
		{func() bool { ch.put(&sub{c: c}); return true }, "a,b,c", true},
		{func() bool { return ch.take(a) }, "b,c", true},
		{func() bool { return ch.take(a) }, "b,c", false},
		{func() bool { return ch.take(c) }, "b", true},
		{func() bool { return ch.take(b) }, "", true},
	}
	for i, st := range steps {
		if ok := st.do(); ok != st.ok || seen() != st.want {
			t.Fatalf("step %d: %v and %q, want %v and %q", i, ok, seen(), st.ok, st.want)
		}
	}
	if ch.subs != nil || ch.one != nil {
		t.Fatal("an empty stream holds a subscriber or a map")
	}
}
