package main

import (
	"fmt"
	"strings"

	"github.com/superscaled/sss"
)

// Channel patterns: "*" is every channel a client may use, "news.*" every
// channel below news (not news itself), anything else one channel.

func validPattern(p string) error {
	if p == "*" {
		return nil
	}
	name := strings.TrimSuffix(p, ".*")
	if err := sss.ValidChannel(name); err != nil || strings.HasPrefix(name, "$") {
		return fmt.Errorf("invalid channel pattern %q: a channel name, name.* or *", p)
	}
	return nil
}

func match(p, channel string) bool {
	if strings.HasPrefix(channel, "$") {
		return false // reserved channels are the server's
	}
	if p == "*" {
		return true
	}
	if prefix, ok := strings.CutSuffix(p, ".*"); ok {
		return len(channel) > len(prefix)+1 && channel[len(prefix)] == '.' && channel[:len(prefix)] == prefix
	}
	return p == channel
}

func matchAny(patterns []string, channel string) bool {
	for _, p := range patterns {
		if match(p, channel) {
			return true
		}
	}
	return false
}
