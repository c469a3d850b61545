package client

import (
	"slices"
	"testing"
)

// A round of reconnection attempts goes through the other URLs in list
// order from a random one, then the lost one; Dial's order is its own URL,
// then the others in list order from a random one.
func TestURLOrders(t *testing.T) {
	urls := []string{"ws://a", "ws://b", "ws://c", "ws://d"}
	starts := map[string]int{}
	for range 400 {
		o := reconnectOrder(urls, "ws://b")
		if len(o) != 4 || !isRotation(o[:3], []string{"ws://a", "ws://c", "ws://d"}) || o[3] != "ws://b" {
			t.Fatalf("reconnectOrder %v", o)
		}
		starts[o[0]]++
		d := dialOrder(urls)
		if len(d) != 4 || d[0] != "ws://a" || !isRotation(d[1:], []string{"ws://b", "ws://c", "ws://d"}) {
			t.Fatalf("dialOrder %v", d)
		}
	}
	// Each other URL starts about a third of the rounds.
	for _, u := range []string{"ws://a", "ws://c", "ws://d"} {
		if starts[u] < 80 {
			t.Errorf("reconnections start at %s %d times of 400", u, starts[u])
		}
	}
	if o := reconnectOrder([]string{"ws://a"}, "ws://a"); !slices.Equal(o, []string{"ws://a"}) {
		t.Fatalf("one URL: %v", o)
	}
	if o := dialOrder([]string{"ws://a"}); !slices.Equal(o, []string{"ws://a"}) {
		t.Fatalf("one URL: %v", o)
	}
}

// isRotation reports whether got is want in its order from some element.
func isRotation(got, want []string) bool {
	j := slices.Index(want, got[0])
	if j < 0 || len(got) != len(want) {
		return false
	}
	for k := range got {
		if got[k] != want[(j+k)%len(want)] {
			return false
		}
	}
	return true
}
