package xdsclient

import (
	"math/rand/v2"
	"time"
)

// backoff is exponential with jitter: after n failures in a row the wait
// is a random duration between d/2 and d, d = min(max, initial·2ⁿ⁻¹).
// The jitter keeps the ztunnels of a cluster from reconnecting in step
// when istiod comes back.
type backoff struct {
	initial, max time.Duration
	cur          time.Duration
}

// next is the wait before the next attempt.
func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.initial
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	half := b.cur / 2
	return half + rand.N(b.cur-half+1)
}

// reset starts again from initial, after a healthy stream.
func (b *backoff) reset() { b.cur = 0 }
