package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// File names of a CA directory, as Istio's cacerts secret names them.
const (
	CACertFile = "ca-cert.pem"
	CAKeyFile  = "ca-key.pem"
	RootFile   = "root-cert.pem"
)

// DefaultTTL is the lifetime of certificates the test CA issues unless
// told otherwise. Istio's default workload certificate lives 24h; the test
// CA issues shorter ones so that rotation is exercised.
const DefaultTTL = time.Hour

// CA is a self-signed certificate authority for tests and development: it
// issues ECDSA P-256 workload certificates whose only SAN is the workload's
// SPIFFE URI. It is never the production CA; production certificates come
// from istiod's CA API.
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// Now is the CA's clock; nil means time.Now.
	Now func() time.Time

	mu     sync.Mutex
	serial int64
}

// NewCA creates a CA with a fresh key whose root certificate names the
// trust domain and is valid for ten years.
func NewCA(trustDomain string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ca key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{trustDomain}, CommonName: "ambit test ca"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create ca certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse ca certificate: %w", err)
	}
	return &CA{cert: cert, key: key}, nil
}

// LoadCA reads a CA from dir (ca-cert.pem and ca-key.pem).
func LoadCA(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, fmt.Errorf("read ca certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, fmt.Errorf("read ca key: %w", err)
	}
	certs, err := ParseCertificatesPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", CACertFile, err)
	}
	if !certs[0].IsCA {
		return nil, fmt.Errorf("parse %s: certificate is not a ca", CACertFile)
	}
	b, _ := pem.Decode(keyPEM)
	if b == nil {
		return nil, fmt.Errorf("parse %s: no pem block", CAKeyFile)
	}
	key, err := parseECKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", CAKeyFile, err)
	}
	return &CA{cert: certs[0], key: key}, nil
}

func parseECKey(der []byte) (*ecdsa.PrivateKey, error) {
	if k, err := x509.ParseECPrivateKey(der); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("parse private key: got %T, want an ecdsa key", k)
	}
	return ec, nil
}

// WriteFiles stores the CA in dir (ca-cert.pem, ca-key.pem and
// root-cert.pem), creating dir if needed. The key file is mode 0600.
func (ca *CA) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create ca directory: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(ca.key)
	if err != nil {
		return fmt.Errorf("marshal ca key: %w", err)
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{CACertFile, ca.RootPEM(), 0o644},
		{RootFile, ca.RootPEM(), 0o644},
		{CAKeyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("write %s: %w", f.name, err)
		}
	}
	return nil
}

// Root is the CA's certificate, the trust anchor of the certificates it
// issues.
func (ca *CA) Root() *x509.Certificate { return ca.cert }

// RootPEM is the CA certificate in PEM form.
func (ca *CA) RootPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
}

// Roots is a pool holding only this CA's certificate.
func (ca *CA) Roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

func (ca *CA) now() time.Time {
	if ca.Now != nil {
		return ca.Now()
	}
	return time.Now()
}

// Certificate issues a certificate for id valid for DefaultTTL. It lets a
// CA serve as a certificate source.
func (ca *CA) Certificate(_ context.Context, id Identity) (*tls.Certificate, error) {
	return ca.Issue(id, DefaultTTL)
}

// Issue issues a certificate for id valid from now for ttl.
func (ca *CA) Issue(id Identity, ttl time.Duration) (*tls.Certificate, error) {
	now := ca.now()
	return ca.IssueValidity(id, now.Add(-time.Minute), now.Add(ttl))
}

// IssueValidity issues a certificate for id valid between notBefore and
// notAfter. Tests use it for certificates that are already expired.
func (ca *CA) IssueValidity(id Identity, notBefore, notAfter time.Time) (*tls.Certificate, error) {
	if err := id.Validate(); err != nil {
		return nil, fmt.Errorf("issue certificate: %w", err)
	}
	if !notAfter.After(notBefore) {
		return nil, errors.New("issue certificate: notAfter must be after notBefore")
	}
	u, err := url.Parse(id.String())
	if err != nil {
		return nil, fmt.Errorf("issue certificate for %s: %w", id, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key for %s: %w", id, err)
	}
	ca.mu.Lock()
	ca.serial++
	serial := ca.serial
	ca.mu.Unlock()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial<<32 | notBefore.Unix()&0xffffffff),
		Subject:      pkix.Name{Organization: ca.cert.Subject.Organization},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate for %s: %w", id, err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// ParseCertificatesPEM reads every CERTIFICATE block of a PEM bundle.
func ParseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("parse certificates: no CERTIFICATE block")
	}
	return out, nil
}
