package sss

import (
	"strings"
	"unicode/utf8"

	"github.com/superscaled/sss/scaler"
)

// Channel names. Channels are hierarchical: levels separated by '.', and a
// subscription to "news" receives "news.uk" and "news.uk.london". Names
// starting with scaler.ReservedPrefix ("$") are the server's: user and
// session channels, flat.

// MaxChannelLen is the longest channel name, in bytes.
const MaxChannelLen = 255

// ValidChannel reports whether name is a valid channel name: levels of
// A-Z a-z 0-9 _ - : @ = + / separated by single dots. Reserved names
// (starting with "$") are valid names but not for clients.
func ValidChannel(name string) error {
	if name == "" {
		return Errorf(CodeBadRequest, "empty channel name")
	}
	if len(name) > MaxChannelLen {
		return Errorf(CodeTooLarge, "channel name longer than %d bytes", MaxChannelLen)
	}
	body := strings.TrimPrefix(name, scaler.ReservedPrefix)
	prev := byte('.')
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case c == '.':
			if prev == '.' {
				return Errorf(CodeBadRequest, "channel %q has an empty level", name)
			}
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '_', c == '-', c == ':', c == '@', c == '=', c == '+', c == '/':
		default:
			r, _ := utf8.DecodeRuneInString(body[i:])
			if r == utf8.RuneError {
				return Errorf(CodeBadRequest, "channel %q has an invalid byte 0x%02x", name, c)
			}
			return Errorf(CodeBadRequest, "channel %q has an invalid character %q", name, r)
		}
		prev = c
	}
	if prev == '.' {
		return Errorf(CodeBadRequest, "channel %q has an empty level", name)
	}
	return nil
}

// clientChannel validates a channel named by a client.
func clientChannel(name string) error {
	if reserved(name) {
		return Errorf(CodeForbidden, "channel %q is reserved", truncate(name, MaxChannelLen))
	}
	return ValidChannel(name)
}

// reserved reports whether a channel (or tell name) is the server's own.
func reserved(name string) bool { return strings.HasPrefix(name, scaler.ReservedPrefix) }

// isAncestor reports whether a is a strict ancestor of b ("news" of "news.uk").
func isAncestor(a, b string) bool {
	return len(b) > len(a) && b[len(a)] == '.' && b[:len(a)] == a
}

// Sender identifies the client that published a message.
type Sender = scaler.Sender
