package ca

import (
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/util/cache"
)

// Budget is a token bucket of failed token reviews: Burst at once, then
// PerSecond.
type Budget struct {
	PerSecond float64
	Burst     int
}

func (b Budget) valid() bool { return b.PerSecond > 0 && b.Burst > 0 }

// failureBudget spends a Budget. A review holds one failure of the budget
// while it runs and spends it only if it fails: concurrent reviews
// cannot overdraw the bucket, and accepted tokens cost nothing.
type failureBudget struct {
	mu      sync.Mutex
	bucket  *rate.Limiter
	pending int
}

func newFailureBudget(b Budget) *failureBudget {
	return &failureBudget{bucket: rate.NewLimiter(rate.Limit(b.PerSecond), b.Burst)}
}

// hold takes one failure for a review about to start, if the budget has
// one that no running review holds.
func (f *failureBudget) hold(now time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.bucket.TokensAt(now) < float64(f.pending+1) {
		return false
	}
	f.pending++
	return true
}

// settle ends a review that hold admitted, spending its failure if it
// failed.
func (f *failureBudget) settle(now time.Time, failed bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pending--
	if failed {
		f.bucket.AllowN(now, 1)
	}
}

// failureLimits are the budget of all callers and one per caller address.
type failureLimits struct {
	all     *failureBudget
	perPeer Budget
	// peerTTL is how long an idle address's budget is kept: until it
	// would be full again (a new one is the same then), and no review
	// it admitted can still run.
	peerTTL time.Duration

	mu    sync.Mutex            // makes get-or-create of peers atomic
	peers *cache.LRUExpireCache // netip.Addr -> *failureBudget
}

func newFailureLimits(all, perPeer Budget, peers int, clock cache.Clock) *failureLimits {
	return &failureLimits{
		all:     newFailureBudget(all),
		perPeer: perPeer,
		peerTTL: time.Duration(float64(perPeer.Burst)/perPeer.PerSecond*float64(time.Second)) + reviewTimeout,
		peers:   cache.NewLRUExpireCacheWithClock(peers, clock),
	}
}

// admit holds a failure of the address's budget and of all callers'; it
// returns how to settle the review, or an error if a budget is spent.
// Addresses whose budget was evicted (more than Peers of them failing at
// once) start afresh; the budget of all callers still bounds them.
func (l *failureLimits) admit(now time.Time, from netip.Addr) (settle func(now time.Time, failed bool), err error) {
	p := l.peer(from)
	if !p.hold(now) {
		return nil, fmt.Errorf("%w: the failure budget of %s is spent (%d, then %g/s); try again later", ErrTooManyFailures, describe(from), l.perPeer.Burst, l.perPeer.PerSecond)
	}
	if !l.all.hold(now) {
		p.settle(now, false)
		return nil, fmt.Errorf("%w: the failure budget of all callers is spent; try again later", ErrTooManyFailures)
	}
	return func(now time.Time, failed bool) {
		l.all.settle(now, failed)
		p.settle(now, failed)
	}, nil
}

func (l *failureLimits) peer(a netip.Addr) *failureBudget {
	l.mu.Lock()
	defer l.mu.Unlock()
	if v, ok := l.peers.Get(a); ok {
		l.peers.Add(a, v, l.peerTTL) // refreshes its expiry
		return v.(*failureBudget)
	}
	f := newFailureBudget(l.perPeer)
	l.peers.Add(a, f, l.peerTTL)
	return f
}

func describe(a netip.Addr) string {
	if !a.IsValid() {
		return "callers of unknown address"
	}
	return a.String()
}
