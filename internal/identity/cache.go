package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Source issues workload certificates: the test CA, or a client of
// istiod's CA API.
type Source interface {
	Certificate(ctx context.Context, id Identity) (*tls.Certificate, error)
}

var _ Source = (*CA)(nil)
var _ Source = (*Cache)(nil)

// Errors of the Cache, for callers that branch.
var (
	// ErrNoCertificate is wrapped when the cache holds no valid
	// certificate for an identity: the last attempt failed or the
	// certificate expired before a refresh succeeded.
	ErrNoCertificate = errors.New("no valid certificate")
	// ErrForgotten is wrapped when an identity was forgotten while a
	// caller waited for its first certificate.
	ErrForgotten = errors.New("identity no longer managed")
	// ErrClosed is wrapped once the cache is closed.
	ErrClosed = errors.New("certificate cache closed")
)

// Defaults of the Cache.
const (
	DefaultConcurrency  = 8
	DefaultFetchTimeout = 30 * time.Second
)

// UnavailableRetry is the longest wait between retries for an identity
// that has no valid certificate.
const UnavailableRetry = 5 * time.Second

// DefaultBackoff spaces the retries of a failed fetch: 1s, 2s, 4s, ...
// up to a minute while a valid certificate remains (at most
// UnavailableRetry once none does), each plus up to 10% at random so that
// ztunnels do not retry in step.
var DefaultBackoff = Backoff{Duration: time.Second, Factor: 2, Jitter: 0.1, Cap: time.Minute}

// Cache manages the certificates of the identities it tracks, as Istio's
// ztunnel's SecretManager does. Each tracked identity has a background
// refresher that fetches a certificate from Source, fetches a new one at
// its half-life, and retries a failed fetch with exponential backoff and
// jitter. Certificate never waits for a refresh: it returns the current
// certificate while that is valid (also while its refresh fails), waits
// only for an identity's first fetch, and fails at once when the last
// fetch failed and no valid certificate is left.
//
// Set the exported fields before first use; Close stops every refresher.
type Cache struct {
	Source Source
	// Clock drives refreshes and judges validity; nil means the real
	// clock. Tests inject a fake one.
	Clock Clock
	// Backoff spaces retries after a failed fetch; the zero value means
	// DefaultBackoff. It restarts after each success.
	Backoff Backoff
	// Concurrency caps the fetches in flight (DefaultConcurrency when
	// zero), so a node full of new workloads does not flood the CA.
	Concurrency int
	// FetchTimeout bounds one fetch; zero means DefaultFetchTimeout.
	FetchTimeout time.Duration
	// OnRefresh, if set, is called after every fetch, in the refresher's
	// goroutine: for logs and tests.
	OnRefresh func(Refresh)

	initOnce sync.Once
	sem      chan struct{}

	mu      sync.Mutex
	entries map[Identity]*entry
	closed  bool
	wg      sync.WaitGroup
}

// Refresh reports the outcome of one fetch.
type Refresh struct {
	Identity Identity
	// Certificate is the new certificate, nil when the fetch failed.
	Certificate *tls.Certificate
	Err         error
	// Next is when the next fetch is due.
	Next time.Time
}

// entry is one tracked identity.
type entry struct {
	cert      *tls.Certificate // newest certificate, possibly expired
	err       error            // error of the last fetch; nil after a success
	attempted bool             // at least one fetch completed
	next      time.Time        // when the next fetch is due
	// changed is closed when the entry changes, then replaced.
	changed chan struct{}
	stop    context.CancelFunc
}

func (c *Cache) init() {
	c.initOnce.Do(func() {
		n := c.Concurrency
		if n <= 0 {
			n = DefaultConcurrency
		}
		c.sem = make(chan struct{}, n)
	})
}

func (c *Cache) clock() Clock {
	if c.Clock != nil {
		return c.Clock
	}
	return RealClock{}
}

func (c *Cache) backoff() Backoff {
	if c.Backoff.Duration > 0 {
		return c.Backoff
	}
	return DefaultBackoff
}

func (c *Cache) fetchTimeout() time.Duration {
	if c.FetchTimeout > 0 {
		return c.FetchTimeout
	}
	return DefaultFetchTimeout
}

// valid reports whether cert may be presented at now.
func valid(cert *tls.Certificate, now time.Time) bool {
	return cert != nil && now.Before(cert.Leaf.NotAfter)
}

// maxBackdate is how far before its arrival a certificate's NotBefore may
// lie and still count as "just issued": CAs backdate NotBefore a little
// for clock skew (istiod by a minute).
const maxBackdate = 5 * time.Minute

// halfLife is when a certificate is due for refresh: half-way through
// its life, as Istio does. The life of a certificate that has just been
// issued is counted from its arrival, so that the backdating does not put
// a short-lived certificate (a minute, in tests) past half-life at once;
// an older certificate keeps its NotBefore.
func halfLife(leaf *x509.Certificate, received time.Time) time.Time {
	start := leaf.NotBefore
	if received.After(start) && received.Sub(start) <= maxBackdate {
		start = received
	}
	return start.Add(leaf.NotAfter.Sub(start) / 2)
}

// Track starts managing the given identities: each one not yet tracked
// gets its first certificate fetched in the background and is refreshed
// until Forget. ztunnel tracks the identities of the workloads on its node
// as they appear, so that their certificates are ready before their first
// connection.
func (c *Cache) Track(ids ...Identity) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	for _, id := range ids {
		if _, ok := c.entries[id]; !ok {
			c.startLocked(id)
		}
	}
}

// startLocked starts tracking id; c.mu must be held and c not closed.
func (c *Cache) startLocked(id Identity) *entry {
	c.init()
	if c.entries == nil {
		c.entries = map[Identity]*entry{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &entry{changed: make(chan struct{}), stop: cancel}
	c.entries[id] = e
	c.wg.Add(1)
	go c.refresh(ctx, id, e)
	return e
}

// Forget stops managing the given identities and drops their
// certificates. Connections that already use a certificate keep it.
func (c *Cache) Forget(ids ...Identity) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range ids {
		if e, ok := c.entries[id]; ok {
			delete(c.entries, id)
			c.dropLocked(e)
		}
	}
}

// dropLocked stops e's refresher and wakes its waiters; c.mu must be held.
func (c *Cache) dropLocked(e *entry) {
	e.stop()
	close(e.changed)
	e.changed = make(chan struct{})
}

// Identities lists the tracked identities, sorted.
func (c *Cache) Identities() []Identity {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Identity, 0, len(c.entries))
	for id := range c.entries {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// Close stops every refresher and waits for them to end. Later calls of
// Certificate fail with ErrClosed.
func (c *Cache) Close() error {
	c.mu.Lock()
	c.closed = true
	for id, e := range c.entries {
		delete(c.entries, id)
		c.dropLocked(e)
	}
	c.mu.Unlock()
	c.wg.Wait()
	return nil
}

// Certificate returns the current certificate for id. An identity not
// yet tracked starts being tracked, and the call waits for its first
// fetch (or ctx). Once an identity has been fetched the call never
// waits: it returns the current certificate while it is valid, and an
// error wrapping ErrNoCertificate and the last fetch's error otherwise.
func (c *Cache) Certificate(ctx context.Context, id Identity) (*tls.Certificate, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, fmt.Errorf("get certificate for %s: %w", id, ErrClosed)
	}
	e, ok := c.entries[id]
	if !ok {
		e = c.startLocked(id)
	}
	for {
		if c.entries[id] != e {
			why := ErrForgotten
			if c.closed {
				why = ErrClosed
			}
			c.mu.Unlock()
			return nil, fmt.Errorf("get certificate for %s: %w", id, why)
		}
		if valid(e.cert, c.clock().Now()) {
			cert := e.cert
			c.mu.Unlock()
			return cert, nil
		}
		if e.attempted {
			err := c.unavailableLocked(e)
			c.mu.Unlock()
			return nil, fmt.Errorf("get certificate for %s: %w", id, err)
		}
		ch := e.changed
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("get certificate for %s: %w", id, ctx.Err())
		}
		c.mu.Lock()
	}
}

// unavailableLocked says why a fetched entry has no valid certificate;
// c.mu must be held.
func (c *Cache) unavailableLocked(e *entry) error {
	if e.err != nil {
		return fmt.Errorf("%w: %w", ErrNoCertificate, e.err)
	}
	return fmt.Errorf("%w: certificate expired at %s, refresh due %s", ErrNoCertificate,
		e.cert.Leaf.NotAfter.UTC().Format(time.RFC3339), e.next.UTC().Format(time.RFC3339))
}

// Current returns id's valid certificate, or nil. It neither waits nor
// starts tracking id.
func (c *Cache) Current(id Identity) *tls.Certificate {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[id]; e != nil && valid(e.cert, c.clock().Now()) {
		return e.cert
	}
	return nil
}

// Has reports whether the cache holds a valid certificate for id.
func (c *Cache) Has(id Identity) bool { return c.Current(id) != nil }

// refresh is the background refresher of one identity. It ends when ctx
// is cancelled (Forget, Close).
func (c *Cache) refresh(ctx context.Context, id Identity, e *entry) {
	defer c.wg.Done()
	clk := c.clock()
	b := c.backoff()
	for {
		cert, err := c.fetch(ctx, id)
		if ctx.Err() != nil {
			return
		}
		now := clk.Now()
		if err == nil && !valid(cert, now) {
			err = fmt.Errorf("check certificate for %s: %w: issued certificate expired at %s, now %s",
				id, ErrExpired, cert.Leaf.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
			cert = nil
		}
		var delay time.Duration
		switch {
		case err != nil:
			delay = b.Step()
		case halfLife(cert.Leaf, now).After(now):
			b = c.backoff()
			delay = halfLife(cert.Leaf, now).Sub(now)
		default:
			// Valid but already past half-life (a very short lifetime):
			// use it, and space the refreshes as for a failure rather
			// than asking the CA again at once.
			delay = b.Step()
		}
		// Never wait past the current certificate's expiry: a retry
		// scheduled after it would leave the identity without one.
		// And without a valid certificate the identity's connections all
		// fail: retry at least every UnavailableRetry.
		if err != nil {
			limit := UnavailableRetry
			if cur := c.Current(id); cur != nil {
				limit = max(cur.Leaf.NotAfter.Sub(now)/2, 100*time.Millisecond)
			}
			delay = min(delay, limit)
		}
		next := now.Add(delay)
		// The timer exists before anyone hears of this fetch, so a test
		// that advances a fake clock on the news cannot outrun it.
		t := clk.NewTimer(delay)
		c.mu.Lock()
		if c.entries[id] != e {
			c.mu.Unlock()
			t.Stop()
			return
		}
		if err == nil {
			e.cert = cert
		}
		e.err, e.attempted, e.next = err, true, next
		close(e.changed)
		e.changed = make(chan struct{})
		c.mu.Unlock()
		if c.OnRefresh != nil {
			c.OnRefresh(Refresh{Identity: id, Certificate: cert, Err: err, Next: next})
		}
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
	}
}

// fetch asks the source for a certificate for id, at most Concurrency at
// a time, and checks that the answer has a leaf.
func (c *Cache) fetch(ctx context.Context, id Identity) (*tls.Certificate, error) {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-c.sem }()
	ctx, cancel := context.WithTimeout(ctx, c.fetchTimeout())
	defer cancel()
	cert, err := c.Source.Certificate(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("fetch certificate for %s: %w", id, err)
	}
	if cert == nil || len(cert.Certificate) == 0 {
		return nil, fmt.Errorf("fetch certificate for %s: %w: source returned no certificate", id, ErrBadCertificate)
	}
	if cert.Leaf == nil {
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			return nil, fmt.Errorf("fetch certificate for %s: %w: %v", id, ErrBadCertificate, err)
		}
		cert.Leaf = leaf
	}
	return cert, nil
}

// Certificate states in dumps, as Istio's ztunnel names them.
const (
	StateInitializing = "Initializing"
	StateAvailable    = "Available"
	StateUnavailable  = "Unavailable"
)

// CertInfo describes a managed certificate, for config dumps.
type CertInfo struct {
	Identity string `json:"identity"`
	// State is Initializing (first fetch under way), Available (a valid
	// certificate), or "Unavailable: <why>".
	State     string    `json:"state"`
	Serial    string    `json:"serial,omitempty"`
	NotBefore time.Time `json:"notBefore,omitzero"`
	NotAfter  time.Time `json:"notAfter,omitzero"`
	Issuer    string    `json:"issuer,omitempty"`
	// NextRefresh is when the next fetch is due.
	NextRefresh time.Time `json:"nextRefresh,omitzero"`
	// LastError is the error of the last fetch, also while an older
	// certificate is still Available.
	LastError string `json:"lastError,omitempty"`
}

// Dump describes every tracked identity, sorted by identity.
func (c *Cache) Dump() []CertInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.clock().Now()
	out := make([]CertInfo, 0, len(c.entries))
	for id, e := range c.entries {
		info := CertInfo{Identity: id.String(), NextRefresh: e.next}
		switch {
		case valid(e.cert, now):
			info.State = StateAvailable
		case !e.attempted:
			info.State = StateInitializing
		default:
			info.State = StateUnavailable + ": " + c.unavailableLocked(e).Error()
		}
		if e.err != nil {
			info.LastError = e.err.Error()
		}
		if e.cert != nil {
			l := e.cert.Leaf
			info.Serial, info.NotBefore, info.NotAfter, info.Issuer = l.SerialNumber.String(), l.NotBefore, l.NotAfter, l.Issuer.String()
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Identity < out[j].Identity })
	return out
}
