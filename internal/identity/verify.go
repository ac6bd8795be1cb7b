package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// Reasons a peer is refused. Verify wraps exactly one of them, so callers
// branch with errors.Is.
var (
	ErrNoPeerCertificate = errors.New("no peer certificate")
	ErrUntrustedRoot     = errors.New("certificate not signed by a mesh root")
	ErrExpired           = errors.New("certificate expired or not yet valid")
	ErrNoIdentity        = errors.New("certificate has no spiffe identity")
	ErrWrongIdentity     = errors.New("peer identity is not the expected one")
	ErrBadCertificate    = errors.New("malformed certificate")
)

// Verifier checks peer certificate chains against the mesh roots.
type Verifier struct {
	// Roots are the mesh's trust anchors.
	Roots *x509.CertPool
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Verify checks that raw (a peer's chain, leaf first, as crypto/tls hands
// it over) chains to a mesh root and is valid now, and returns the identity
// in its URI SAN.
func (v *Verifier) Verify(raw [][]byte) (Identity, error) {
	if len(raw) == 0 {
		return Identity{}, fmt.Errorf("verify peer: %w", ErrNoPeerCertificate)
	}
	certs := make([]*x509.Certificate, 0, len(raw))
	for i, der := range raw {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return Identity{}, fmt.Errorf("verify peer: certificate %d: %w: %v", i, ErrBadCertificate, err)
		}
		certs = append(certs, c)
	}
	return v.VerifyCertificates(certs)
}

// VerifyCertificates is Verify for parsed certificates.
func (v *Verifier) VerifyCertificates(certs []*x509.Certificate) (Identity, error) {
	if len(certs) == 0 {
		return Identity{}, fmt.Errorf("verify peer: %w", ErrNoPeerCertificate)
	}
	leaf := certs[0]
	now := time.Now()
	if v.Now != nil {
		now = v.Now()
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	roots := v.Roots
	if roots == nil {
		roots = x509.NewCertPool() // trusts nothing
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		var invalid x509.CertificateInvalidError
		var unknown x509.UnknownAuthorityError
		switch {
		case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
			return Identity{}, fmt.Errorf("verify peer %s: %w: valid %s to %s, now %s", sanString(leaf), ErrExpired,
				leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
		case errors.As(err, &unknown):
			return Identity{}, fmt.Errorf("verify peer %s: %w (issuer %q)", sanString(leaf), ErrUntrustedRoot, leaf.Issuer.String())
		default:
			return Identity{}, fmt.Errorf("verify peer %s: %w: %v", sanString(leaf), ErrUntrustedRoot, err)
		}
	}
	return FromCertificate(leaf)
}

// VerifyExpected is Verify followed by a check that the peer is want.
func (v *Verifier) VerifyExpected(raw [][]byte, want Identity) (Identity, error) {
	got, err := v.Verify(raw)
	if err != nil {
		return Identity{}, err
	}
	if got != want {
		return got, fmt.Errorf("verify peer: %w: got %s, want %s", ErrWrongIdentity, got, want)
	}
	return got, nil
}

// FromCertificate returns the SPIFFE identity in c's URI SANs. A workload
// certificate carries exactly one.
func FromCertificate(c *x509.Certificate) (Identity, error) {
	var found []Identity
	for _, u := range c.URIs {
		if u.Scheme != "spiffe" {
			continue
		}
		id, err := Parse(u.String())
		if err != nil {
			return Identity{}, fmt.Errorf("read identity: %w: %v", ErrNoIdentity, err)
		}
		found = append(found, id)
	}
	switch len(found) {
	case 0:
		return Identity{}, fmt.Errorf("read identity: %w", ErrNoIdentity)
	case 1:
		return found[0], nil
	default:
		return Identity{}, fmt.Errorf("read identity: %w: got %d spiffe URIs, want 1", ErrNoIdentity, len(found))
	}
}

// FromConnectionState returns the verified peer identity of a TLS
// connection whose handshake ran a Verifier (see hbone).
func FromConnectionState(cs tls.ConnectionState) (Identity, error) {
	if len(cs.PeerCertificates) == 0 {
		return Identity{}, fmt.Errorf("read peer identity: %w", ErrNoPeerCertificate)
	}
	return FromCertificate(cs.PeerCertificates[0])
}

func sanString(c *x509.Certificate) string {
	for _, u := range c.URIs {
		return u.String()
	}
	return "(no uri san)"
}
