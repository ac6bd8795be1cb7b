package waypoint_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/internal/hbone"
	"github.com/ambitmesh/ambit/internal/identity"
)

// shortLived issues certificates that live ttl.
type shortLived struct {
	ca  *identity.CA
	ttl time.Duration
}

func (s shortLived) Certificate(_ context.Context, id identity.Identity) (*tls.Certificate, error) {
	return s.ca.Issue(id, s.ttl)
}

// servedLeaf is the certificate the waypoint presents to a new HBONE
// connection.
func servedLeaf(t *testing.T, e *env) *x509.Certificate {
	t.Helper()
	cert, err := e.ca.Issue(clientID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.Dial("tcp", netip.AddrPortFrom(e.ip(50), 15008).String(), &tls.Config{
		Certificates: []tls.Certificate{*cert}, RootCAs: e.ca.Roots(), NextProtos: []string{hbone.ALPN},
		MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, // the SAN is a SPIFFE URI; checked below by serial only
	})
	if err != nil {
		t.Fatalf("tls handshake with the waypoint: %v", err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0]
}

// TestCertificateRotation: the waypoint's own certificate, short-lived,
// is renewed before it expires; new connections get the new one, and a
// connection opened with the old one (downstream, and the pooled HBONE
// connection upstream) keeps carrying requests after the old one
// expired.
func TestCertificateRotation(t *testing.T) {
	refreshed := make(chan *tls.Certificate, 16)
	var cache *identity.Cache
	e := newEnvWith(t, host, [2]uint16{80, 90}, [2]uint16{8080, 9090}, func(e *env) {
		e.cfg = basicConfig(e.ip)
		cache = &identity.Cache{Source: shortLived{ca: e.ca, ttl: 3 * time.Second}, OnRefresh: func(r identity.Refresh) {
			if r.Certificate != nil {
				refreshed <- r.Certificate
			}
		}}
		cache.Track(waypointID)
		e.certs = cache
	})
	t.Cleanup(func() { cache.Close() })
	first := <-refreshed
	c := e.client(t, clientID)
	expectStatus(t, c.do(t, get(t, "/before")), http.StatusOK)
	if got := servedLeaf(t, e); got.SerialNumber.Cmp(first.Leaf.SerialNumber) != 0 {
		t.Fatalf("served certificate: serial %v, want the first one's %v", got.SerialNumber, first.Leaf.SerialNumber)
	}

	// Renewed at half-life, before expiry.
	second := <-refreshed
	if !second.Leaf.NotBefore.Before(first.Leaf.NotAfter) || time.Now().After(first.Leaf.NotAfter) {
		t.Errorf("renewal at %v: want it before the first certificate expires at %v", time.Now(), first.Leaf.NotAfter)
	}
	if got := servedLeaf(t, e); got.SerialNumber.Cmp(second.Leaf.SerialNumber) != 0 {
		t.Errorf("served certificate after renewal: serial %v, want the new one's %v", got.SerialNumber, second.Leaf.SerialNumber)
	}

	// Once the first certificate has expired (the event awaited is that
	// moment itself), the connection made with it still carries
	// requests.
	<-time.After(time.Until(first.Leaf.NotAfter) + 10*time.Millisecond)
	expectStatus(t, c.do(t, get(t, "/after-expiry")), http.StatusOK)
	// And a new connection verifies against the current certificate.
	expectStatus(t, e.client(t, clientID).do(t, get(t, "/new-connection")), http.StatusOK)
}
