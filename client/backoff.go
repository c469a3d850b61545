package client

import (
	"math/rand/v2"
	"time"
)

// backoff returns how long to wait before retry number n (0 for the first):
// "full jitter", a uniform random duration in [0, min(max, base·2ⁿ)]. Jitter
// over the whole window is what spreads a crowd of clients dropped at the same
// moment, instead of having them all come back in lockstep.
func backoff(n int, base, max time.Duration) time.Duration {
	if base <= 0 || max <= 0 {
		return 0
	}
	ceil := base
	for i := 0; i < n && ceil < max; i++ {
		if ceil > max/2 {
			ceil = max
			break
		}
		ceil *= 2
	}
	ceil = min(ceil, max)
	return rand.N(ceil + 1)
}
