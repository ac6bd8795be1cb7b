package identity

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	clocktesting "k8s.io/utils/clock/testing"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeSource hands every fetch to the test, which answers it.
type fakeSource struct{ reqs chan *fetchReq }

type fetchReq struct {
	id    Identity
	ctx   context.Context
	reply chan fetchReply
}

type fetchReply struct {
	cert *tls.Certificate
	err  error
}

func (s *fakeSource) Certificate(ctx context.Context, id Identity) (*tls.Certificate, error) {
	r := &fetchReq{id: id, ctx: ctx, reply: make(chan fetchReply, 1)}
	select {
	case s.reqs <- r:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case rep := <-r.reply:
		return rep.cert, rep.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// limit bounds every wait of the tests on the cache's goroutines; it is
// a safety net against hangs, never a way to let time pass.
const limit = 10 * time.Second

// manager is a Cache with a fake clock, a fake source and a channel of
// its refresh events.
type manager struct {
	t      *testing.T
	clk    *clocktesting.FakeClock
	ca     *CA
	src    *fakeSource
	c      *Cache
	events chan Refresh
}

// testBackoff has no jitter, so retry times are exact.
var testBackoff = Backoff{Duration: time.Second, Factor: 2, Cap: 8 * time.Second}

// fakeClock adapts k8s.io/utils' fake clock to Clock.
type fakeClock struct{ *clocktesting.FakeClock }

func (f fakeClock) NewTimer(d time.Duration) Timer { return f.FakeClock.NewTimer(d) }

func newManager(t *testing.T) *manager {
	t.Helper()
	m := &manager{
		t:      t,
		clk:    clocktesting.NewFakeClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)),
		ca:     newCA(t),
		src:    &fakeSource{reqs: make(chan *fetchReq)},
		events: make(chan Refresh, 100),
	}
	m.c = &Cache{
		Source:    m.src,
		Clock:     fakeClock{m.clk},
		Backoff:   testBackoff,
		OnRefresh: func(r Refresh) { m.events <- r },
	}
	t.Cleanup(func() { m.c.Close() })
	return m
}

// fetch waits for the cache to ask the source for a certificate.
func (m *manager) fetch() *fetchReq {
	m.t.Helper()
	select {
	case r := <-m.src.reqs:
		return r
	case <-time.After(limit):
		m.t.Fatalf("fetch: got none within %v, want one", limit)
		return nil
	}
}

// noFetch checks that no fetch is pending and that the refresh timers
// are still waiting.
func (m *manager) noFetch(timers int) {
	m.t.Helper()
	select {
	case r := <-m.src.reqs:
		m.t.Fatalf("fetch: got one for %s at %s, want none yet", r.id, m.clk.Now())
	default:
	}
	if got := m.clk.Waiters(); got != timers {
		m.t.Fatalf("refresh timers waiting: got %d, want %d", got, timers)
	}
}

// refreshed waits for the report of a completed fetch.
func (m *manager) refreshed() Refresh {
	m.t.Helper()
	select {
	case r := <-m.events:
		return r
	case <-time.After(limit):
		m.t.Fatalf("refresh event: got none within %v, want one", limit)
		return Refresh{}
	}
}

// issue makes a certificate for id valid from the fake now for ttl.
func (m *manager) issue(id Identity, ttl time.Duration) *tls.Certificate {
	m.t.Helper()
	now := m.clk.Now()
	cert, err := m.ca.IssueValidity(id, now, now.Add(ttl))
	if err != nil {
		m.t.Fatal(err)
	}
	return cert
}

func (r *fetchReq) ok(cert *tls.Certificate) { r.reply <- fetchReply{cert: cert} }
func (r *fetchReq) fail(err error)           { r.reply <- fetchReply{err: err} }

// current asks the cache for id's certificate with a context that is
// already done, so the call cannot wait.
func (m *manager) current(id Identity) (*tls.Certificate, error) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return m.c.Certificate(ctx, id)
}

var (
	idA = Identity{"cluster.local", "shop", "a"}
	idB = Identity{"cluster.local", "shop", "b"}
)

// Past half-life the certificate is replaced with nobody asking for it.
func TestCacheRefreshesAtHalfLifeInBackground(t *testing.T) {
	m := newManager(t)
	t0 := m.clk.Now()
	m.c.Track(idA)
	first := m.issue(idA, time.Hour)
	m.fetch().ok(first)
	ev := m.refreshed()
	if ev.Certificate != first || ev.Err != nil || !ev.Next.Equal(t0.Add(30*time.Minute)) {
		t.Fatalf("first refresh: got cert %v, err %v, next %s; want the first certificate, next %s", ev.Certificate != nil, ev.Err, ev.Next, t0.Add(30*time.Minute))
	}
	if got, err := m.current(idA); got != first || err != nil {
		t.Fatalf("Certificate: got %v, %v; want the first certificate at once", got != nil, err)
	}

	m.clk.Step(30*time.Minute - time.Second)
	m.noFetch(1)

	m.clk.Step(time.Second)
	second := m.issue(idA, time.Hour)
	r := m.fetch()
	if r.id != idA {
		t.Fatalf("refresh: got a fetch for %s, want %s", r.id, idA)
	}
	// Until the new certificate arrives, callers get the old one.
	if got, _ := m.current(idA); got != first {
		t.Errorf("Certificate during refresh: got another certificate, want the first")
	}
	r.ok(second)
	if ev := m.refreshed(); !ev.Next.Equal(m.clk.Now().Add(30 * time.Minute)) {
		t.Errorf("second refresh: next %s, want %s", ev.Next, m.clk.Now().Add(30*time.Minute))
	}
	if got, err := m.current(idA); got != second || err != nil {
		t.Errorf("Certificate after refresh: got %v, %v; want the second certificate", got != nil, err)
	}
}

// A failing refresh is retried with exponential backoff up to the cap
// while the old certificate is served; a success resets the backoff.
func TestCacheRetriesWithBackoff(t *testing.T) {
	m := newManager(t)
	m.c.Track(idA)
	first := m.issue(idA, time.Hour)
	m.fetch().ok(first)
	m.refreshed()
	m.clk.Step(30 * time.Minute)

	caDown := errors.New("ca unavailable")
	var delays []time.Duration
	for range 6 {
		m.fetch().fail(caDown)
		ev := m.refreshed()
		if !errors.Is(ev.Err, caDown) {
			t.Fatalf("refresh: got error %v, want %v", ev.Err, caDown)
		}
		delays = append(delays, ev.Next.Sub(m.clk.Now()))
		if got, err := m.current(idA); got != first || err != nil {
			t.Fatalf("Certificate while refresh fails: got %v, %v; want the old certificate", got != nil, err)
		}
		m.clk.Step(ev.Next.Sub(m.clk.Now()) - time.Millisecond)
		m.noFetch(1)
		m.clk.Step(time.Millisecond)
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second, 8 * time.Second}
	if diff := cmp.Diff(want, delays); diff != "" {
		t.Errorf("retry delays (-want +got):\n%s", diff)
	}
	dump := m.c.Dump()
	if len(dump) != 1 || dump[0].State != StateAvailable || !strings.Contains(dump[0].LastError, caDown.Error()) {
		t.Errorf("Dump while refresh fails: got %+v, want state %s with the last error", dump, StateAvailable)
	}

	second := m.issue(idA, time.Hour)
	m.fetch().ok(second)
	m.refreshed()
	if got, _ := m.current(idA); got != second {
		t.Errorf("Certificate after a successful retry: got the old certificate, want the new one")
	}
	// The next failure starts again from the shortest delay.
	m.clk.Step(30 * time.Minute)
	m.fetch().fail(caDown)
	if ev := m.refreshed(); ev.Next.Sub(m.clk.Now()) != time.Second {
		t.Errorf("first retry after a success: got %v, want %v", ev.Next.Sub(m.clk.Now()), time.Second)
	}
}

// Without a successful refresh the certificate expires and the identity
// becomes unavailable, until a fetch succeeds again.
func TestCacheExpiresWithoutSuccess(t *testing.T) {
	m := newManager(t)
	m.c.Track(idA)
	first := m.issue(idA, time.Hour)
	m.fetch().ok(first)
	m.refreshed()
	expiry := first.Leaf.NotAfter
	m.clk.Step(30 * time.Minute)

	caDown := errors.New("permission denied")
	for !m.clk.Now().After(expiry) {
		m.fetch().fail(caDown)
		ev := m.refreshed()
		m.clk.SetTime(ev.Next)
	}
	m.fetch().fail(caDown)
	if ev := m.refreshed(); ev.Next.Sub(m.clk.Now()) > UnavailableRetry {
		t.Errorf("retry without a valid certificate: got in %v, want at most %v", ev.Next.Sub(m.clk.Now()), UnavailableRetry)
	}

	got, err := m.current(idA)
	if got != nil || !errors.Is(err, ErrNoCertificate) || !errors.Is(err, caDown) {
		t.Fatalf("Certificate after expiry: got %v, %v; want an error wrapping %v and %v", got != nil, err, ErrNoCertificate, caDown)
	}
	if m.c.Has(idA) {
		t.Error("Has after expiry: got true, want false")
	}
	dump := m.c.Dump()
	if len(dump) != 1 || !strings.HasPrefix(dump[0].State, StateUnavailable+": ") || !strings.Contains(dump[0].State, caDown.Error()) {
		t.Errorf("Dump after expiry: got %+v, want state %q with the error", dump, StateUnavailable+": ...")
	}

	m.clk.SetTime(m.refreshNext(t))
	second := m.issue(idA, time.Hour)
	m.fetch().ok(second)
	m.refreshed()
	if got, err := m.current(idA); got != second || err != nil {
		t.Errorf("Certificate after recovery: got %v, %v; want the new certificate", got != nil, err)
	}
	if dump := m.c.Dump(); dump[0].State != StateAvailable || dump[0].LastError != "" {
		t.Errorf("Dump after recovery: got %+v, want %s without error", dump[0], StateAvailable)
	}
}

// refreshNext is when the only tracked identity is due next.
func (m *manager) refreshNext(t *testing.T) time.Time {
	t.Helper()
	d := m.c.Dump()
	if len(d) != 1 {
		t.Fatalf("Dump: got %d entries, want 1", len(d))
	}
	return d[0].NextRefresh
}

// A forgotten identity is no longer refreshed and its refresher ends.
func TestCacheForget(t *testing.T) {
	m := newManager(t)
	m.c.Track(idA, idB)
	for range 2 {
		r := m.fetch()
		r.ok(m.issue(r.id, time.Hour))
		m.refreshed()
	}
	m.c.Forget(idA)
	waitFor(t, "one refresh timer left", func() bool { return m.clk.Waiters() == 1 })
	if diff := cmp.Diff([]Identity{idB}, m.c.Identities()); diff != "" {
		t.Errorf("Identities after Forget (-want +got):\n%s", diff)
	}
	if m.c.Has(idA) {
		t.Error("Has after Forget: got true, want false")
	}
	m.clk.Step(time.Hour)
	if r := m.fetch(); r.id != idB {
		t.Errorf("refresh after Forget: got a fetch for %s, want only %s", r.id, idB)
	} else {
		r.ok(m.issue(idB, time.Hour))
		m.refreshed()
	}
	m.noFetch(1)
}

// Forgetting an identity while a caller waits for its first certificate
// ends the wait and the fetch.
func TestCacheForgetWhileFetching(t *testing.T) {
	m := newManager(t)
	errs := make(chan error, 1)
	go func() {
		_, err := m.c.Certificate(context.Background(), idA)
		errs <- err
	}()
	r := m.fetch()
	m.c.Forget(idA)
	select {
	case err := <-errs:
		if !errors.Is(err, ErrForgotten) {
			t.Errorf("Certificate: got %v, want %v", err, ErrForgotten)
		}
	case <-time.After(limit):
		t.Fatal("Certificate: still waiting after Forget")
	}
	select {
	case <-r.ctx.Done():
	case <-time.After(limit):
		t.Fatal("fetch context: not cancelled after Forget")
	}
}

// Callers wait only for the first fetch, share it, and see Initializing
// in the dump meanwhile.
func TestCacheFirstFetch(t *testing.T) {
	m := newManager(t)
	const callers = 3
	type result struct {
		cert *tls.Certificate
		err  error
	}
	results := make(chan result, callers)
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			cert, err := m.c.Certificate(context.Background(), idA)
			results <- result{cert, err}
		})
	}
	r := m.fetch()
	want := []CertInfo{{Identity: idA.String(), State: StateInitializing}}
	if diff := cmp.Diff(want, m.c.Dump()); diff != "" {
		t.Errorf("Dump during the first fetch (-want +got):\n%s", diff)
	}
	cert := m.issue(idA, time.Hour)
	r.ok(cert)
	wg.Wait()
	for range callers {
		if res := <-results; res.cert != cert || res.err != nil {
			t.Errorf("Certificate: got %v, %v; want the fetched certificate", res.cert != nil, res.err)
		}
	}
	m.refreshed()
	m.noFetch(1)
	want = []CertInfo{{
		Identity: idA.String(), State: StateAvailable, Serial: cert.Leaf.SerialNumber.String(),
		NotBefore: cert.Leaf.NotBefore, NotAfter: cert.Leaf.NotAfter, Issuer: cert.Leaf.Issuer.String(),
		NextRefresh: m.clk.Now().Add(30 * time.Minute),
	}}
	if diff := cmp.Diff(want, m.c.Dump()); diff != "" {
		t.Errorf("Dump after the first fetch (-want +got):\n%s", diff)
	}
}

// Answers a refresher must not take at face value.
func TestCacheOddCertificates(t *testing.T) {
	tests := []struct {
		name      string
		notBefore time.Duration // relative to now
		ttl       time.Duration
		wantErr   error         // nil: accepted
		wantNext  time.Duration // from now
	}{
		{"fresh", 0, time.Hour, nil, 30 * time.Minute},
		// Clocks apart or a tiny lifetime: use it, but do not ask again
		// at once.
		{"past half-life", -50 * time.Minute, time.Hour, nil, time.Second},
		{"expired", -2 * time.Hour, time.Hour, ErrExpired, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newManager(t)
			m.c.Track(idA)
			nb := m.clk.Now().Add(tt.notBefore)
			cert, err := m.ca.IssueValidity(idA, nb, nb.Add(tt.ttl))
			if err != nil {
				t.Fatal(err)
			}
			m.fetch().ok(cert)
			ev := m.refreshed()
			if !errors.Is(ev.Err, tt.wantErr) || (tt.wantErr == nil) != (ev.Err == nil) {
				t.Errorf("refresh error: got %v, want %v", ev.Err, tt.wantErr)
			}
			if got := ev.Next.Sub(m.clk.Now()); got != tt.wantNext {
				t.Errorf("next refresh: got in %v, want in %v", got, tt.wantNext)
			}
			got, err := m.current(idA)
			if tt.wantErr == nil && (got != cert || err != nil) {
				t.Errorf("Certificate: got %v, %v; want the certificate", got != nil, err)
			}
			if tt.wantErr != nil && (got != nil || !errors.Is(err, tt.wantErr)) {
				t.Errorf("Certificate: got %v, %v; want an error wrapping %v", got != nil, err, tt.wantErr)
			}
		})
	}
}

// Close ends every refresher, also one in the middle of a fetch.
func TestCacheClose(t *testing.T) {
	m := newManager(t)
	m.c.Track(idA, idB)
	r := m.fetch()
	r.ok(m.issue(r.id, time.Hour))
	m.refreshed()
	m.fetch() // the other one stays unanswered
	m.c.Close()
	if got := m.clk.Waiters(); got != 0 {
		t.Errorf("refresh timers after Close: got %d, want 0", got)
	}
	if _, err := m.c.Certificate(context.Background(), idA); !errors.Is(err, ErrClosed) {
		t.Errorf("Certificate after Close: got %v, want %v", err, ErrClosed)
	}
	m.c.Track(idA)
	if got := m.c.Identities(); len(got) != 0 {
		t.Errorf("Identities after Close and Track: got %v, want none", got)
	}
}

// The test CA's certificates work through the cache with the real clock.
func TestCacheWithCA(t *testing.T) {
	c := &Cache{Source: newCA(t)}
	t.Cleanup(func() { c.Close() })
	got, err := c.Certificate(context.Background(), idA)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := FromCertificate(got.Leaf); id != idA || err != nil {
		t.Errorf("certificate identity: got %s, %v; want %s", id, err, idA)
	}
}

// waitFor polls cond until it holds or the limit passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: still false after %v", what, limit)
		}
		time.Sleep(time.Millisecond)
	}
}

// A short-lived certificate whose NotBefore the CA backdated (istiod: by
// a minute) is refreshed half-way through the life it has left, and
// failed refreshes are retried before it expires, never after: with a
// 20s lifetime and the CA away for a while, the identity is never left
// without a certificate once the CA is back.
func TestCacheShortLivedBackdated(t *testing.T) {
	m := newManager(t)
	m.c.Track(idA)
	now := m.clk.Now()
	first, err := m.ca.IssueValidity(idA, now.Add(-time.Minute), now.Add(20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	m.fetch().ok(first)
	if ev := m.refreshed(); ev.Next.Sub(now) != 10*time.Second {
		t.Fatalf("next refresh of a fresh 20s certificate backdated by a minute: got in %v, want in 10s", ev.Next.Sub(now))
	}
	m.clk.SetTime(now.Add(10 * time.Second))
	caDown := errors.New("ca unavailable")
	for m.clk.Now().Before(first.Leaf.NotAfter.Add(-200 * time.Millisecond)) {
		m.fetch().fail(caDown)
		ev := m.refreshed()
		if !ev.Next.Before(first.Leaf.NotAfter) {
			t.Fatalf("retry at %s: after the current certificate's expiry at %s", ev.Next.Format(time.StampMilli), first.Leaf.NotAfter.Format(time.StampMilli))
		}
		m.clk.SetTime(ev.Next)
	}
	second := m.issue(idA, 20*time.Second)
	m.fetch().ok(second)
	m.refreshed()
	if got, err := m.current(idA); got != second || err != nil {
		t.Errorf("Certificate once the CA answers again: got %v, %v; want the new certificate", got != nil, err)
	}
}
