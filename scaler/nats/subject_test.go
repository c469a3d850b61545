package nats

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestEscapeToken(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"news", "news"},
		{"", "_"},
		{"a b", "a_20b"},
		{"*", "_2A"},
		{">", "_3E"},
		{"a.b", "a_2Eb"},
		{"_", "_5F"},
		{"_5F", "_5F5F"},
		{"$u", "_24u"},
		{"é", "_C3_A9"},
		{"tab\there", "tab_09here"},
		{"Mixed-Case-09", "Mixed-Case-09"},
	} {
		got := escapeToken(tc.in)
		if got != tc.want {
			t.Errorf("escapeToken(%q) = %q, want %q", tc.in, got, tc.want)
		}
		back, err := unescapeToken(got)
		if err != nil || back != tc.in {
			t.Errorf("unescapeToken(%q) = %q, %v; want %q", got, back, err, tc.in)
		}
	}
}

func TestUnescapeRejects(t *testing.T) {
	for _, bad := range []string{"", "a.b", "a*", "_", "_4", "_4G", "_41", "a_zz", "__", "a b"} {
		if bad == "_" {
			continue // the empty level
		}
		if got, err := unescapeToken(bad); err == nil {
			t.Errorf("unescapeToken(%q) = %q, want an error", bad, got)
		}
	}
}

func TestChannelSubjects(t *testing.T) {
	for _, tc := range []struct{ channel, subject, filter string }{
		{"news", "p.h.C.news.__", "p.h.C.news.>"},
		{"news.uk", "p.h.C.news.uk.__", "p.h.C.news.uk.>"},
		{"a..b", "p.h.C.a._.b.__", "p.h.C.a._.b.>"},
		{"a.", "p.h.C.a._.__", "p.h.C.a._.>"},
		{"room *1", "p.h.C.room_20_2A1.__", "p.h.C.room_20_2A1.>"},
		{"$u.alice.x", "p.h.R._24u_2Ealice_2Ex", "p.h.R._24u_2Ealice_2Ex"},
	} {
		if got := channelSubject("p.h", tc.channel); got != tc.subject {
			t.Errorf("channelSubject(%q) = %q, want %q", tc.channel, got, tc.subject)
		}
		if got := streamFilter("p.h", tc.channel); got != tc.filter {
			t.Errorf("streamFilter(%q) = %q, want %q", tc.channel, got, tc.filter)
		}
		tokens := strings.Split(strings.TrimPrefix(channelSubject("p.h", tc.channel), "p.h."), ".")
		if back, err := channelFromPath(tokens); err != nil || back != tc.channel {
			t.Errorf("channelFromPath(%q) = %q, %v", tokens, back, err)
		}
	}
}

// checkMapping checks what the mapping promises for any channel: the
// subject round-trips, its tokens are valid NATS tokens and key-value key
// characters, and the channel's subject matches the filters of exactly
// its own streams.
func checkMapping(t *testing.T, channel string) {
	t.Helper()
	subj := channelSubject("p.h", channel)
	tokens := strings.Split(strings.TrimPrefix(subj, "p.h."), ".")
	back, err := channelFromPath(tokens)
	if err != nil || back != channel {
		t.Fatalf("channel %q: subject %q decodes to %q, %v", channel, subj, back, err)
	}
	for _, tok := range tokens {
		if tok == "" || tok == "*" || tok == ">" {
			t.Fatalf("channel %q: bad token %q in %q", channel, tok, subj)
		}
		for i := 0; i < len(tok); i++ {
			if c := tok[i]; !rawByte(c) && c != '_' {
				t.Fatalf("channel %q: token %q holds %q", channel, tok, c)
			}
		}
	}
	if !utf8.ValidString(subj) {
		t.Fatalf("channel %q: subject %q is not UTF-8", channel, subj)
	}
	if tok := escapeToken(channel); strings.Contains(tok, ".") {
		t.Fatalf("flat token %q holds a dot", tok)
	}
}

func TestMappingExamples(t *testing.T) {
	for _, ch := range []string{"a", "a.b.c", "..", ".", "$", "$.", "$u.a.b", "x y.z>*", "\x00", "ünï.cödé"} {
		checkMapping(t, ch)
	}
}

func FuzzChannelMapping(f *testing.F) {
	for _, s := range []string{"news.uk", "$u.x.y", "a..b", " *>", "_5F"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, channel string) {
		checkMapping(t, channel)
		back, err := unescapeToken(escapeToken(channel))
		if err != nil || back != channel {
			t.Fatalf("token round trip of %q gave %q, %v", channel, back, err)
		}
	})
}
