package sss

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// The socket under a WebSocket: what sss hands coder/websocket at the
// upgrade (small buffers, a write deadline per connection instead of a
// context per write), and how an idle connection waits for its client
// (reads parked on a shallow stack).

// hijackRecorder keeps the connection coder/websocket hijacks, so that a
// close handshake with a dead peer can be cut short and sss can write its
// messages itself, and hands the library smaller buffers than net/http's
// 4 KB + 4 KB, which it keeps for the connection's whole life: most frames
// are small and a read larger than the buffer goes straight to the caller;
// coder/websocket writes only control frames (writeMessage).
type hijackRecorder struct {
	http.ResponseWriter
	writeTimeout time.Duration
	sock         *socket
}

// Buffer sizes of a hijacked connection. Control frames, all that
// coder/websocket writes, are at most 127 bytes: each fits the write
// buffer, so reaches the socket in one Write.
const (
	hijackReadBuffer  = 512
	hijackWriteBuffer = 256
)

func (h *hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, rw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	s := &socket{Conn: nc, timeout: h.writeTimeout}
	if sc, ok := nc.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil && readFDSupported {
			s.rc = rc
			s.readFn, s.waitFn = s.readFD, s.fill
		}
	}
	// What net/http read ahead must come first (coder/websocket takes only
	// what is buffered): a client may send its first frame as soon as it
	// has the 101, which is written before the hijack.
	if n := rw.Reader.Buffered(); n > 0 {
		ahead, _ := rw.Reader.Peek(n)
		s.ahead = bytes.Clone(ahead)
	}
	s.br = bufio.NewReaderSize(s, hijackReadBuffer)
	h.sock = s
	return s, bufio.NewReadWriter(s.br, bufio.NewWriterSize(s, hijackWriteBuffer)), nil
}

func (h *hijackRecorder) Unwrap() http.ResponseWriter { return h.ResponseWriter }

// socket is the hijacked connection under a WebSocket.
//
// Writes: sss frames its messages itself and writes each in one system
// call (writeMessage), with no copy into coder/websocket's buffer and no
// locks or context of the library's per message; coder/websocket writes
// only control frames (pongs, the close frame), each in one Write. A
// net.Conn serialises whole Writes, so the two never interleave within a
// frame; wmu guards the deadline. Every write has between three quarters
// of the write timeout and all of it: the deadline moves forward only when
// a quarter of it has passed, not per write, and is never left behind
// while idle (a pong after a long silence gets a fresh one).
//
// Reads: a goroutine parked inside coder/websocket's reader sits under
// twenty frames, and keeps an 8 KB stack for the connection's whole idle
// life. wait parks the reader on a shallow stack instead, reading what
// arrives into a pooled buffer (ahead) that Read then hands on, so the
// garbage collector shrinks an idle connection's stack to the minimum, at
// no extra system call. Both read through the descriptor (rc), whose read
// lock guards ahead and err: coder/websocket's close handshake may read
// while the reader waits. A connection without a descriptor (TLS
// terminated by net/http) reads as usual.
type socket struct {
	net.Conn
	br *bufio.Reader // coder/websocket's reader, over this socket

	wmu      sync.Mutex
	timeout  time.Duration
	deadline int64 // unix nanos

	rc       syscall.RawConn // nil: read through Conn
	ahead    []byte          // read, not handed on yet
	aheadBuf *[]byte         // ahead's pooled buffer, if it has one
	err      error           // the read that filled nothing failed with it

	// rc.Read's callbacks, bound once (a closure per call would be an
	// allocation per message), and Read's buffer and results for
	// readFD: coder/websocket makes one Read at a time.
	readFn, waitFn func(fd uintptr) bool
	p              []byte
	n              int
	rerr           error
}

// aheadBuffers holds the buffers wait reads into: an idle connection keeps
// none.
var aheadBuffers = sync.Pool{New: func() any { b := make([]byte, 4096); return &b }}

// frameHeaderRoom is the room writeMessage needs before a payload: the
// longest header of an unmasked frame.
const frameHeaderRoom = 10

// writeMessage writes a text message of one frame, whose payload follows
// frameHeaderRoom bytes of b that it may overwrite.
func (s *socket) writeMessage(b []byte) error {
	p := b[frameHeaderRoom:]
	h := frameHeaderRoom
	switch n := len(p); {
	case n < 126:
		h -= 2
		b[h+1] = byte(n)
	case n < 1<<16:
		h -= 4
		b[h+1] = 126
		binary.BigEndian.PutUint16(b[h+2:], uint16(n))
	default:
		h = 0
		b[h+1] = 127
		binary.BigEndian.PutUint64(b[h+2:], uint64(n))
	}
	b[h] = 0x81 // final text frame
	_, err := s.Write(b[h:])
	return err
}

func (s *socket) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	now := time.Now().UnixNano()
	if now+int64(s.timeout)-s.deadline > int64(s.timeout/4) {
		s.deadline = now + int64(s.timeout)
		if err := s.Conn.SetWriteDeadline(time.Unix(0, s.deadline)); err != nil {
			return 0, err
		}
	}
	return s.Conn.Write(p)
}

func (s *socket) Read(p []byte) (int, error) {
	if s.rc == nil {
		if len(s.ahead) > 0 {
			return s.consume(p), nil
		}
		return s.Conn.Read(p)
	}
	if len(p) == 0 {
		return 0, nil
	}
	s.p = p
	err := s.rc.Read(s.readFn)
	n, rerr := s.n, s.rerr
	s.p, s.n, s.rerr = nil, 0, nil
	if err != nil {
		return 0, err
	}
	return n, rerr
}

// readFD is Read's callback: what wait read ahead first, then the socket.
func (s *socket) readFD(fd uintptr) bool {
	switch {
	case len(s.ahead) > 0:
		s.n = s.consume(s.p)
	case s.err != nil:
		s.rerr = s.err
	default:
		s.n, s.rerr = readFD(fd, s.p)
		return s.rerr != errWouldBlock
	}
	return true
}

// consume hands on what was read ahead, and returns its buffer once empty.
func (s *socket) consume(p []byte) int {
	n := copy(p, s.ahead)
	s.ahead = s.ahead[n:]
	if len(s.ahead) == 0 {
		if s.aheadBuf != nil {
			aheadBuffers.Put(s.aheadBuf)
		}
		s.ahead, s.aheadBuf = nil, nil
	}
	return n
}

// wait returns once the client has sent something, or the socket failed
// (the next Read says how). Reader only, with nothing buffered in br.
func (s *socket) wait() {
	if s.rc != nil {
		s.rc.Read(s.waitFn)
	}
}

// fill is wait's callback: it reads what arrived into a pooled buffer.
func (s *socket) fill(fd uintptr) bool {
	if len(s.ahead) > 0 || s.err != nil {
		return true
	}
	buf := aheadBuffers.Get().(*[]byte)
	n, err := readFD(fd, *buf)
	switch {
	case err == errWouldBlock:
		aheadBuffers.Put(buf)
		return false
	case err != nil:
		aheadBuffers.Put(buf)
		s.err = err
	default:
		s.ahead, s.aheadBuf = (*buf)[:n], buf
	}
	return true
}
