package sss

import "testing"

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
