package sss

import (
	"bytes"
	"io"
	"net"
	"testing"
)

// writeMessage frames a payload with the shortest header of RFC 6455 for
// its length, at each boundary.
func TestWriteMessageHeader(t *testing.T) {
	for _, tc := range []struct {
		n      int
		header []byte
	}{
		{0, []byte{0x81, 0}},
		{125, []byte{0x81, 125}},
		{126, []byte{0x81, 126, 0, 126}},
		{65535, []byte{0x81, 126, 0xff, 0xff}},
		{65536, []byte{0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0}},
	} {
		a, b := net.Pipe()
		s := &socket{Conn: a, timeout: 5e9}
		payload := bytes.Repeat([]byte{'x'}, tc.n)
		go func() {
			s.writeMessage(append(make([]byte, frameHeaderRoom), payload...))
			a.Close()
		}()
		got, err := io.ReadAll(b)
		if err != nil {
			t.Fatal(err)
		}
		b.Close()
		want := append(tc.header, payload...)
		if !bytes.Equal(got, want) {
			t.Errorf("payload of %d bytes: header % x, want % x", tc.n, got[:min(len(got), 10)], tc.header)
		}
	}
}
