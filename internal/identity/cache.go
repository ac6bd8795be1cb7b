package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
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

// Cache keeps one certificate per identity and asks its source for a new
// one once the current one is past half its life. While a refresh fails,
// the old certificate is served until it expires.
type Cache struct {
	Source Source
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	mu      sync.Mutex
	certs   map[Identity]*tls.Certificate
	pending map[Identity]*fetch
}

type fetch struct {
	done chan struct{}
	cert *tls.Certificate
	err  error
}

func (c *Cache) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Cache) fresh(cert *tls.Certificate) bool {
	if cert == nil {
		return false
	}
	l := cert.Leaf
	half := l.NotBefore.Add(l.NotAfter.Sub(l.NotBefore) / 2)
	return c.now().Before(half)
}

// Certificate returns a valid certificate for id, fetching one if the
// cache has none or its certificate is past half-life. Concurrent calls
// for one identity share one fetch.
func (c *Cache) Certificate(ctx context.Context, id Identity) (*tls.Certificate, error) {
	c.mu.Lock()
	if c.certs == nil {
		c.certs = map[Identity]*tls.Certificate{}
		c.pending = map[Identity]*fetch{}
	}
	cur := c.certs[id]
	if c.fresh(cur) {
		c.mu.Unlock()
		return cur, nil
	}
	f, ok := c.pending[id]
	if !ok {
		f = &fetch{done: make(chan struct{})}
		c.pending[id] = f
		go c.fetch(id, f)
	}
	c.mu.Unlock()
	select {
	case <-f.done:
	case <-ctx.Done():
		return nil, fmt.Errorf("get certificate for %s: %w", id, ctx.Err())
	}
	if f.err != nil {
		if cur != nil && c.now().Before(cur.Leaf.NotAfter) {
			return cur, nil // still valid; the next call retries
		}
		return nil, f.err
	}
	return f.cert, nil
}

func (c *Cache) fetch(id Identity, f *fetch) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cert, err := c.Source.Certificate(ctx, id)
	if err == nil && cert.Leaf == nil {
		cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0])
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.pending, id)
	if err != nil {
		f.err = fmt.Errorf("get certificate for %s: %w", id, err)
	} else {
		f.cert = cert
		c.certs[id] = cert
	}
	close(f.done)
}

// Has reports whether the cache holds a valid certificate for id.
func (c *Cache) Has(id Identity) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	cert := c.certs[id]
	return cert != nil && c.now().Before(cert.Leaf.NotAfter)
}

// CertInfo describes a cached certificate, for config dumps.
type CertInfo struct {
	Identity  string    `json:"identity"`
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
	Issuer    string    `json:"issuer"`
}

// Dump lists the cached certificates, sorted by identity.
func (c *Cache) Dump() []CertInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]CertInfo, 0, len(c.certs))
	for id, cert := range c.certs {
		out = append(out, CertInfo{
			Identity:  id.String(),
			Serial:    cert.Leaf.SerialNumber.String(),
			NotBefore: cert.Leaf.NotBefore,
			NotAfter:  cert.Leaf.NotAfter,
			Issuer:    cert.Leaf.Issuer.String(),
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Identity < out[j].Identity })
	return out
}
