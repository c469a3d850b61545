package nats

import (
	"errors"
	"fmt"
	"strings"

	"github.com/superscaled/sss/scaler"
)

// Names on NATS. A channel's levels become subject tokens; a token keeps
// ASCII letters, digits and '-' as they are and writes every other byte as
// '_' and two upper-case hex digits ("a b*" is "a_20b_2A"), so a token never
// holds what a subject reserves ('.', '*', '>', whitespace), only characters
// that are also valid in a JetStream key-value key, and never starts with
// '$'. An empty level is the token "_", which no escaped level can equal;
// "__" ends every hierarchical channel's subject, so the subject of stream
// "news" and those of all its descendants match one wildcard "….news.>".
//
// The mapping is one to one: unescapeToken(escapeToken(s)) == s for every
// string, and two different channels never share a subject.

const (
	emptyToken = "_"
	endToken   = "__"
	// hier and flat mark hierarchical and reserved (flat) channels, so
	// "$u.x" and a channel "$u" with a level "x" never meet.
	hierToken = "C"
	flatToken = "R"
)

// maxSubject bounds a subject's length: NATS refuses control lines longer
// than 4 KiB by default, and a message carries a subject in its own.
const maxSubject = 2048

const hexDigits = "0123456789ABCDEF"

func rawByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-'
}

// escapeToken writes s as one subject token.
func escapeToken(s string) string {
	if s == "" {
		return emptyToken
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if !rawByte(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if rawByte(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('_')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	return b.String()
}

var errBadToken = errors.New("nats scaler: malformed token")

// unescapeToken reverses escapeToken.
func unescapeToken(t string) (string, error) {
	if t == emptyToken {
		return "", nil
	}
	if t == "" {
		return "", errBadToken
	}
	if !strings.Contains(t, "_") {
		for i := 0; i < len(t); i++ {
			if !rawByte(t[i]) {
				return "", fmt.Errorf("%w: %q", errBadToken, t)
			}
		}
		return t, nil
	}
	b := make([]byte, 0, len(t))
	for i := 0; i < len(t); i++ {
		c := t[i]
		if c != '_' {
			if !rawByte(c) {
				return "", fmt.Errorf("%w: %q", errBadToken, t)
			}
			b = append(b, c)
			continue
		}
		if i+2 >= len(t) {
			return "", fmt.Errorf("%w: %q", errBadToken, t)
		}
		hi, lo := strings.IndexByte(hexDigits, t[i+1]), strings.IndexByte(hexDigits, t[i+2])
		if hi < 0 || lo < 0 {
			return "", fmt.Errorf("%w: %q", errBadToken, t)
		}
		c = byte(hi<<4 | lo)
		if rawByte(c) {
			return "", fmt.Errorf("%w: %q escapes a plain byte", errBadToken, t)
		}
		b = append(b, c)
		i += 2
	}
	return string(b), nil
}

// channelPath is the part of a subject that names a stream: "C.<level>…"
// for a hierarchical channel, "R.<token>" for a reserved (flat) one.
func channelPath(channel string) string {
	if strings.HasPrefix(channel, scaler.ReservedPrefix) {
		return flatToken + "." + escapeToken(channel)
	}
	levels := strings.Split(channel, ".")
	for i, l := range levels {
		levels[i] = escapeToken(l)
	}
	return hierToken + "." + strings.Join(levels, ".")
}

// channelSubject is the subject a publication on channel is carried on,
// under root ("<prefix>.h" or "<prefix>.d").
func channelSubject(root, channel string) string {
	p := root + "." + channelPath(channel)
	if !strings.HasPrefix(channel, scaler.ReservedPrefix) {
		p += "." + endToken
	}
	return p
}

// streamFilter is the subject filter matching every publication that
// belongs to stream: the channel's own and its descendants'.
func streamFilter(root, stream string) string {
	if strings.HasPrefix(stream, scaler.ReservedPrefix) {
		return root + "." + channelPath(stream)
	}
	return root + "." + channelPath(stream) + ".>"
}

// channelFromPath reverses channelPath, given the subject tokens after the
// root (the end token, if present, included).
func channelFromPath(tokens []string) (string, error) {
	if len(tokens) < 2 {
		return "", errBadToken
	}
	switch tokens[0] {
	case flatToken:
		if len(tokens) != 2 {
			return "", errBadToken
		}
		ch, err := unescapeToken(tokens[1])
		if err != nil || !strings.HasPrefix(ch, scaler.ReservedPrefix) {
			return "", errBadToken
		}
		return ch, nil
	case hierToken:
		if tokens[len(tokens)-1] != endToken || len(tokens) < 3 {
			return "", errBadToken
		}
		levels := make([]string, 0, len(tokens)-2)
		for _, t := range tokens[1 : len(tokens)-1] {
			l, err := unescapeToken(t)
			if err != nil {
				return "", err
			}
			levels = append(levels, l)
		}
		ch := strings.Join(levels, ".")
		if strings.HasPrefix(ch, scaler.ReservedPrefix) {
			return "", errBadToken
		}
		return ch, nil
	}
	return "", errBadToken
}

// checkSubject refuses names too long for NATS.
func checkSubject(subject string) error {
	if len(subject) > maxSubject {
		return fmt.Errorf("nats scaler: subject for this name is %d bytes, longer than %d", len(subject), maxSubject)
	}
	return nil
}
