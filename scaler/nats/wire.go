package nats

import (
	"encoding/binary"
	"errors"
	"strconv"
	"strings"

	"github.com/superscaled/sss/scaler"
)

// A publication travels as the body of a NATS message: a version byte, a
// flags byte (1: transient), the time as a varint, five length-prefixed
// strings (channel, event, sender user, sender conn, except) and the data
// as the rest. A stored publication also carries, in headers, its offset
// and epoch in each of its streams, from the root down:
//
//	Sss-Off: 12,7,3
//	Sss-Ep:  k3v9…,p0q1…,z8y7…

const (
	wireVersion = 1

	hdrOffsets = "Sss-Off"
	hdrEpochs  = "Sss-Ep"
	hdrFrom    = "Sss-From"
)

var errBadWire = errors.New("nats scaler: malformed publication")

func encodePub(p *scaler.Publication) []byte {
	n := 2 + binary.MaxVarintLen64 + len(p.Data)
	strs := [...]string{p.Channel, p.Event, p.Sender.User, p.Sender.Conn, p.Except}
	for _, s := range strs {
		n += binary.MaxVarintLen64 + len(s)
	}
	b := make([]byte, 0, n)
	var flags byte
	if p.Transient {
		flags |= 1
	}
	b = append(b, wireVersion, flags)
	b = binary.AppendVarint(b, p.Time)
	for _, s := range strs {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return append(b, p.Data...)
}

func decodePub(b []byte) (*scaler.Publication, error) {
	if len(b) < 2 || b[0] != wireVersion {
		return nil, errBadWire
	}
	p := &scaler.Publication{Transient: b[1]&1 != 0}
	b = b[2:]
	t, n := binary.Varint(b)
	if n <= 0 {
		return nil, errBadWire
	}
	p.Time = t
	b = b[n:]
	var strs [5]string
	for i := range strs {
		l, n := binary.Uvarint(b)
		if n <= 0 || uint64(len(b)-n) < l {
			return nil, errBadWire
		}
		strs[i] = string(b[n : n+int(l)])
		b = b[n+int(l):]
	}
	p.Channel, p.Event, p.Sender.User, p.Sender.Conn, p.Except = strs[0], strs[1], strs[2], strs[3], strs[4]
	if len(b) > 0 {
		// Copied: the message buffer belongs to the NATS client.
		p.Data = append([]byte(nil), b...)
	}
	return p, nil
}

// positions are a stored publication's places in its streams, root first.
type positions struct {
	offsets []uint64
	epochs  []string
}

func (ps positions) headers() (off, ep string) {
	var b strings.Builder
	for i, o := range ps.offsets {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(o, 10))
	}
	return b.String(), strings.Join(ps.epochs, ",")
}

func parsePositions(off, ep string) (positions, error) {
	if off == "" {
		return positions{}, nil
	}
	offs := strings.Split(off, ",")
	eps := strings.Split(ep, ",")
	if len(offs) != len(eps) {
		return positions{}, errBadWire
	}
	ps := positions{offsets: make([]uint64, len(offs)), epochs: eps}
	for i, o := range offs {
		v, err := strconv.ParseUint(o, 10, 64)
		if err != nil || v == 0 || eps[i] == "" {
			return positions{}, errBadWire
		}
		ps.offsets[i] = v
	}
	return ps, nil
}

// at returns the position at depth i (0: root), if the publication has one.
func (ps positions) at(i int) (scaler.Position, bool) {
	if i < 0 || i >= len(ps.offsets) {
		return scaler.Position{}, false
	}
	return scaler.Position{Offset: ps.offsets[i], Epoch: ps.epochs[i]}, true
}

// depth is the index of stream among the streams of its channel's
// publications: 0 for a root or a reserved channel.
func depth(stream string) int {
	if strings.HasPrefix(stream, scaler.ReservedPrefix) {
		return 0
	}
	return strings.Count(stream, ".")
}
