package identity

import (
	"math/rand/v2"
	"time"
)

// Clock is the cache's time source: the real clock, or a fake one in
// tests. It is this small so that the data plane needs no clock package
// of Kubernetes' (a fake clock of k8s.io/utils satisfies it through a
// one-method adapter in the tests).
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is a timer of a Clock.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

// RealClock is the system clock.
type RealClock struct{}

// Now is time.Now.
func (RealClock) Now() time.Time { return time.Now() }

// NewTimer is time.NewTimer.
func (RealClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time { return r.t.C }
func (r realTimer) Stop() bool          { return r.t.Stop() }

// Backoff spaces retries: each Step returns the current delay, plus up to
// Jitter of it at random, and multiplies the delay by Factor up to Cap.
type Backoff struct {
	Duration time.Duration
	Factor   float64
	Jitter   float64
	Cap      time.Duration
}

// Step returns the next delay and advances the backoff.
func (b *Backoff) Step() time.Duration {
	d := b.Duration
	if b.Factor != 0 {
		b.Duration = time.Duration(float64(b.Duration) * b.Factor)
		if b.Cap > 0 && b.Duration > b.Cap {
			b.Duration = b.Cap
		}
	}
	if b.Jitter > 0 {
		d += time.Duration(rand.Float64() * b.Jitter * float64(d))
	}
	return d
}
