package main

import (
	"bytes"
	"context"
	"fmt"
	"strconv"

	"github.com/coder/websocket"
)

// A proto is one target's wire protocol, reduced to what the scenarios
// need. Every implementation does the same amount of client-side work per
// frame (a byte search, no JSON decoding), so that the client's cost, which
// shares the machine with the server, is equal for all targets.
type proto interface {
	name() string
	subprotocols() []string
	// handshake runs after the WebSocket opened: the welcome or connect.
	handshake(ctx context.Context, c *websocket.Conn) error
	// subscribe subscribes to channels and waits until each is confirmed.
	subscribe(ctx context.Context, c *websocket.Conn, channels []string) error
	// ask appends an ask (echo) frame with id and data to buf.
	ask(buf []byte, id uint64, data []byte) []byte
	// reply reports the id of a reply frame.
	reply(frame []byte) (uint64, bool)
	// pong returns the answer to a ping frame, or nil when frame is none.
	pong(frame []byte) []byte
}

func protoFor(name string) (proto, error) {
	switch name {
	case "sss":
		return sssProto{}, nil
	case "centrifuge":
		return centrifugeProto{}, nil
	case "bare":
		return bareProto{}, nil
	}
	return nil, fmt.Errorf("unknown protocol %q (sss, centrifuge, bare)", name)
}

// frames calls f for each newline-separated frame of msg.
func frames(msg []byte, f func([]byte)) {
	for len(msg) > 0 {
		i := bytes.IndexByte(msg, '\n')
		if i < 0 {
			f(msg)
			return
		}
		if i > 0 {
			f(msg[:i])
		}
		msg = msg[i+1:]
	}
}

// intAfter parses the integer that follows key in frame.
func intAfter(frame []byte, key string) (int64, bool) {
	i := bytes.Index(frame, []byte(key))
	if i < 0 {
		return 0, false
	}
	i += len(key)
	j := i
	for j < len(frame) && (frame[j] == '-' || frame[j] >= '0' && frame[j] <= '9') {
		j++
	}
	n, err := strconv.ParseInt(string(frame[i:j]), 10, 64)
	return n, err == nil
}

// await reads messages until done reports true for one of their frames,
// answering pings meanwhile.
func await(ctx context.Context, p proto, c *websocket.Conn, done func([]byte) bool) error {
	for {
		_, msg, err := c.Read(ctx)
		if err != nil {
			return err
		}
		ok := false
		frames(msg, func(f []byte) {
			if pong := p.pong(f); pong != nil {
				c.Write(ctx, websocket.MessageText, pong)
			} else if done(f) {
				ok = true
			}
		})
		if ok {
			return nil
		}
	}
}

// sss: docs/protocol.md.
type sssProto struct{}

func (sssProto) name() string           { return "sss" }
func (sssProto) subprotocols() []string { return []string{"sss.v1"} }

func (p sssProto) handshake(ctx context.Context, c *websocket.Conn) error {
	return await(ctx, p, c, func(f []byte) bool {
		return bytes.HasPrefix(f, []byte(`{"type":"welcome"`))
	})
}

func (p sssProto) subscribe(ctx context.Context, c *websocket.Conn, channels []string) error {
	var buf []byte
	for i, ch := range channels {
		if i > 0 {
			buf = append(buf, '\n')
		}
		buf = fmt.Appendf(buf, `{"type":"subscribe","id":%d,"channel":%q}`, i+1, ch)
	}
	if err := c.Write(ctx, websocket.MessageText, buf); err != nil {
		return err
	}
	acks := 0
	var bad error
	err := await(ctx, p, c, func(f []byte) bool {
		if bytes.HasPrefix(f, []byte(`{"type":"error"`)) {
			bad = fmt.Errorf("subscribe refused: %s", f)
			return true
		}
		if bytes.HasPrefix(f, []byte(`{"type":"ack"`)) {
			acks++
		}
		return acks == len(channels)
	})
	if err == nil {
		err = bad
	}
	return err
}

func (sssProto) ask(buf []byte, id uint64, data []byte) []byte {
	buf = append(buf, `{"type":"ask","id":`...)
	buf = strconv.AppendUint(buf, id, 10)
	buf = append(buf, `,"name":"echo","data":`...)
	buf = append(buf, data...)
	return append(buf, '}')
}

func (sssProto) reply(f []byte) (uint64, bool) {
	if !bytes.HasPrefix(f, []byte(`{"type":"ack","id":`)) && !bytes.HasPrefix(f, []byte(`{"type":"error","id":`)) {
		return 0, false
	}
	n, ok := intAfter(f, `"id":`)
	return uint64(n), ok
}

func (sssProto) pong(f []byte) []byte {
	if bytes.Equal(f, []byte(`{"type":"ping"}`)) {
		return []byte(`{"type":"pong"}`)
	}
	return nil
}

// centrifuge: its JSON protocol (client protocol v2: commands with an id
// and one method object, replies with the same id, pushes without one,
// and an empty object as ping and pong).
type centrifugeProto struct{}

func (centrifugeProto) name() string           { return "centrifuge" }
func (centrifugeProto) subprotocols() []string { return nil }

func (p centrifugeProto) handshake(ctx context.Context, c *websocket.Conn) error {
	if err := c.Write(ctx, websocket.MessageText, []byte(`{"id":1,"connect":{}}`)); err != nil {
		return err
	}
	var bad error
	err := await(ctx, p, c, func(f []byte) bool {
		if bytes.HasPrefix(f, []byte(`{"id":1,`)) {
			if bytes.Contains(f, []byte(`"error"`)) {
				bad = fmt.Errorf("connect refused: %s", f)
			}
			return true
		}
		return false
	})
	if err == nil {
		err = bad
	}
	return err
}

func (p centrifugeProto) subscribe(ctx context.Context, c *websocket.Conn, channels []string) error {
	var buf []byte
	for i, ch := range channels {
		if i > 0 {
			buf = append(buf, '\n')
		}
		buf = fmt.Appendf(buf, `{"id":%d,"subscribe":{"channel":%q}}`, i+2, ch)
	}
	if err := c.Write(ctx, websocket.MessageText, buf); err != nil {
		return err
	}
	acks := 0
	var bad error
	err := await(ctx, p, c, func(f []byte) bool {
		if bytes.HasPrefix(f, []byte(`{"id":`)) {
			if bytes.Contains(f, []byte(`"error"`)) {
				bad = fmt.Errorf("subscribe refused: %s", f)
				return true
			}
			acks++
		}
		return acks == len(channels)
	})
	if err == nil {
		err = bad
	}
	return err
}

func (centrifugeProto) ask(buf []byte, id uint64, data []byte) []byte {
	buf = append(buf, `{"id":`...)
	buf = strconv.AppendUint(buf, id, 10)
	buf = append(buf, `,"rpc":{"method":"echo","data":`...)
	buf = append(buf, data...)
	return append(buf, "}}"...)
}

func (centrifugeProto) reply(f []byte) (uint64, bool) {
	if !bytes.HasPrefix(f, []byte(`{"id":`)) {
		return 0, false
	}
	n, ok := intAfter(f, `{"id":`)
	return uint64(n), ok
}

func (centrifugeProto) pong(f []byte) []byte {
	if bytes.Equal(f, []byte(`{}`)) {
		return []byte(`{}`)
	}
	return nil
}

// bare: the reference server of bench/bare: {"sub":"channel"} subscribes
// (answered {"subscribed":"channel"}), {"id":N,"ask":"echo","data":D} is
// answered {"id":N,"result":D}; publications arrive as their payload.
type bareProto struct{}

func (bareProto) name() string           { return "bare" }
func (bareProto) subprotocols() []string { return nil }

func (bareProto) handshake(context.Context, *websocket.Conn) error { return nil }

func (p bareProto) subscribe(ctx context.Context, c *websocket.Conn, channels []string) error {
	var buf []byte
	for i, ch := range channels {
		if i > 0 {
			buf = append(buf, '\n')
		}
		buf = fmt.Appendf(buf, `{"sub":%q}`, ch)
	}
	if err := c.Write(ctx, websocket.MessageText, buf); err != nil {
		return err
	}
	acks := 0
	return await(ctx, p, c, func(f []byte) bool {
		if bytes.HasPrefix(f, []byte(`{"subscribed":`)) {
			acks++
		}
		return acks == len(channels)
	})
}

func (bareProto) ask(buf []byte, id uint64, data []byte) []byte {
	buf = append(buf, `{"id":`...)
	buf = strconv.AppendUint(buf, id, 10)
	buf = append(buf, `,"ask":"echo","data":`...)
	buf = append(buf, data...)
	return append(buf, '}')
}

func (bareProto) reply(f []byte) (uint64, bool) {
	if !bytes.HasPrefix(f, []byte(`{"id":`)) {
		return 0, false
	}
	n, ok := intAfter(f, `{"id":`)
	return uint64(n), ok
}

func (bareProto) pong([]byte) []byte { return nil }
