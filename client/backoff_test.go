package client

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	const base, max = 100 * time.Millisecond, time.Second
	for n, ceil := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		ceil *= time.Millisecond
		var top time.Duration
		for range 2000 {
			d := backoff(n, base, max)
			if d < 0 || d > ceil {
				t.Fatalf("backoff(%d) = %v, outside [0, %v]", n, d, ceil)
			}
			top = maxDur(top, d)
		}
		// Full jitter uses the whole window, not just its top.
		if top < ceil*9/10 {
			t.Errorf("backoff(%d) never above %v of %v", n, top, ceil)
		}
	}
	if d := backoff(1000, base, max); d > max {
		t.Fatalf("backoff(1000) = %v", d)
	}
	if d := backoff(3, 0, 0); d != 0 {
		t.Fatalf("zero base gives %v", d)
	}
}

func maxDur(a, b time.Duration) time.Duration {
	if a > b {
		return a
	}
	return b
}
