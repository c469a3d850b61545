package mongoredis

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/superscaled/sss/scaler"
)

// Wire formats. Everything a node receives travels inside the Redis message
// itself: there is never an id to read back.
//
// A publication body (also what a history entry stores):
//
//	0x02 (body version)
//	uvarint len, node id      the publishing node
//	flags (1 byte)             1: transient
//	uvarint len, channel
//	uvarint len, event
//	uvarint len, sender user
//	uvarint len, sender conn
//	uvarint time              ms since the Unix epoch
//	uvarint len, except       a connection not to deliver to
//	data                      the rest of the body
//
// A delivery frame, published on a stream's channel: the publish script
// builds it in Lua, so it is text up to the body:
//
//	0x01 (frame version) offset (decimal) '\n' epoch '\n' body
//
// Transient publications use the same frame with offset 0 and an empty
// epoch.
//
// A node message, published on a node's channel:
//
//	0x01 (version) uvarint len, sender node id, message (the rest)

const (
	bodyVersion  = 2
	frameVersion = 1
	msgVersion   = 1

	flagTransient = 1
)

var errMalformed = errors.New("mongoredis: malformed payload")

// appendBody encodes pub as published by node.
func appendBody(b []byte, node string, pub *scaler.Publication) []byte {
	b = append(b, bodyVersion)
	b = appendString(b, node)
	var flags byte
	if pub.Transient {
		flags |= flagTransient
	}
	b = append(b, flags)
	b = appendString(b, pub.Channel)
	b = appendString(b, pub.Event)
	b = appendString(b, pub.Sender.User)
	b = appendString(b, pub.Sender.Conn)
	b = binary.AppendUvarint(b, uint64(max(pub.Time, 0)))
	b = appendString(b, pub.Except)
	return append(b, pub.Data...)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// parseBody decodes a body. The returned publication's Data aliases b, which
// the caller must not modify afterwards.
func parseBody(b []byte) (node string, pub *scaler.Publication, err error) {
	if len(b) == 0 || b[0] != bodyVersion {
		return "", nil, fmt.Errorf("%w: unknown body version", errMalformed)
	}
	r := reader{b: b[1:]}
	node = r.str()
	flags := r.byte()
	pub = &scaler.Publication{Transient: flags&flagTransient != 0}
	pub.Channel = r.str()
	pub.Event = r.str()
	pub.Sender.User = r.str()
	pub.Sender.Conn = r.str()
	pub.Time = int64(r.uvarint())
	pub.Except = r.str()
	if r.bad {
		return "", nil, fmt.Errorf("%w: truncated body", errMalformed)
	}
	if len(r.b) > 0 {
		pub.Data = r.b[:len(r.b):len(r.b)]
	}
	return node, pub, nil
}

// appendFrame encodes a delivery frame the way the publish script does.
func appendFrame(b []byte, offset uint64, epoch string, body []byte) []byte {
	b = append(b, frameVersion)
	b = strconv.AppendUint(b, offset, 10)
	b = append(b, '\n')
	b = append(b, epoch...)
	b = append(b, '\n')
	return append(b, body...)
}

// parseFrame splits a delivery frame. body is a fresh copy of the payload.
func parseFrame(payload string) (offset uint64, epoch string, body []byte, err error) {
	if len(payload) == 0 || payload[0] != frameVersion {
		return 0, "", nil, fmt.Errorf("%w: unknown frame version", errMalformed)
	}
	rest := payload[1:]
	i := strings.IndexByte(rest, '\n')
	if i < 0 {
		return 0, "", nil, fmt.Errorf("%w: no offset", errMalformed)
	}
	offset, err = strconv.ParseUint(rest[:i], 10, 64)
	if err != nil {
		return 0, "", nil, fmt.Errorf("%w: offset: %v", errMalformed, err)
	}
	rest = rest[i+1:]
	j := strings.IndexByte(rest, '\n')
	if j < 0 {
		return 0, "", nil, fmt.Errorf("%w: no epoch", errMalformed)
	}
	return offset, rest[:j], []byte(rest[j+1:]), nil
}

// appendMessage encodes a node-to-node message.
func appendMessage(b []byte, from string, msg []byte) []byte {
	b = append(b, msgVersion)
	b = appendString(b, from)
	return append(b, msg...)
}

// parseMessage decodes a node-to-node message; msg is a fresh copy.
func parseMessage(payload string) (from string, msg []byte, err error) {
	if len(payload) == 0 || payload[0] != msgVersion {
		return "", nil, fmt.Errorf("%w: unknown message version", errMalformed)
	}
	r := reader{b: []byte(payload[1:])}
	from = r.str()
	if r.bad {
		return "", nil, fmt.Errorf("%w: truncated message", errMalformed)
	}
	return from, r.b, nil
}

// reader consumes length-prefixed fields; bad records any truncation.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) byte() byte {
	if len(r.b) < 1 {
		r.bad = true
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) uvarint() uint64 {
	n, k := binary.Uvarint(r.b)
	if k <= 0 {
		r.bad = true
		r.b = nil
		return 0
	}
	r.b = r.b[k:]
	return n
}

func (r *reader) str() string {
	n, k := binary.Uvarint(r.b)
	if k <= 0 || n > uint64(len(r.b)-k) {
		r.bad = true
		r.b = nil
		return ""
	}
	s := string(r.b[k : k+int(n)])
	r.b = r.b[k+int(n):]
	return s
}

// hashTag returns the part of a stream's keys and channel between braces:
// Redis Cluster hashes only that, so a stream's keys share one slot. '%' and
// '}' are escaped so the tag ends where we mean it to, and an empty stream
// name does not produce "{}" (which Redis would ignore as a tag).
func hashTag(stream string) string {
	if stream == "" {
		return "%00"
	}
	if !strings.ContainsAny(stream, "%}") {
		return stream
	}
	var sb strings.Builder
	for i := 0; i < len(stream); i++ {
		switch c := stream[i]; c {
		case '%':
			sb.WriteString("%25")
		case '}':
			sb.WriteString("%7D")
		default:
			sb.WriteByte(c)
		}
	}
	return sb.String()
}
