package identity

import (
	"context"
	"crypto/tls"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

type countingSource struct {
	ca    *CA
	calls atomic.Int32
	fail  atomic.Bool
}

func (s *countingSource) Certificate(ctx context.Context, id Identity) (*tls.Certificate, error) {
	s.calls.Add(1)
	if s.fail.Load() {
		return nil, errors.New("ca unavailable")
	}
	return s.ca.Certificate(ctx, id)
}

func TestCacheRefreshAtHalfLife(t *testing.T) {
	now := time.Now()
	clock := func() time.Time { return now }
	ca := newCA(t)
	ca.Now = clock
	src := &countingSource{ca: ca}
	c := &Cache{Source: src, Now: clock}
	id := Identity{"cluster.local", "a", "b"}
	ctx := context.Background()
	first, err := c.Certificate(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Certificate(ctx, id); err != nil {
		t.Fatal(err)
	}
	if got := src.calls.Load(); got != 1 {
		t.Errorf("fetches for a fresh certificate: got %d, want 1", got)
	}
	// Past half-life with the CA down: the old, still valid certificate.
	now = now.Add(DefaultTTL*3/4 + time.Minute)
	src.fail.Store(true)
	got, err := c.Certificate(ctx, id)
	if err != nil || got != first {
		t.Errorf("refresh failing while valid: got %v, %v; want the old certificate", got, err)
	}
	// CA back: a new certificate.
	src.fail.Store(false)
	got, err = c.Certificate(ctx, id)
	if err != nil || got == first {
		t.Errorf("refresh past half-life: got %v, %v; want a new certificate", got, err)
	}
	if !c.Has(id) || len(c.Dump()) != 1 {
		t.Errorf("Has/Dump: got %v/%d, want true/1", c.Has(id), len(c.Dump()))
	}
}
