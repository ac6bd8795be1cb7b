package xdsclient

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	b := backoff{initial: 100 * time.Millisecond, max: 15 * time.Second}
	// The n-th wait lies in [d/2, d], d doubling from initial up to max.
	bounds := []time.Duration{100, 200, 400, 800, 1600, 3200, 6400, 12800, 15000, 15000}
	for i, d := range bounds {
		d *= time.Millisecond
		if got := b.next(); got < d/2 || got > d {
			t.Errorf("wait %d: got %v, want between %v and %v", i+1, got, d/2, d)
		}
	}
	b.reset()
	if got := b.next(); got < 50*time.Millisecond || got > 100*time.Millisecond {
		t.Errorf("wait after reset: got %v, want between 50ms and 100ms", got)
	}
	// Jitter: a hundred first waits are not all the same.
	seen := map[time.Duration]bool{}
	for range 100 {
		b.reset()
		seen[b.next()] = true
	}
	if len(seen) < 2 {
		t.Errorf("distinct first waits out of 100: got %d, want jitter", len(seen))
	}
}
