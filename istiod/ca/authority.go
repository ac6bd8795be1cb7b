// Package ca is istiod's certificate authority: it keeps the signing key
// (a self-signed root made at first start, or a plug-in CA from the
// cacerts Secret), signs workload certificates with SPIFFE identities
// through Istio's IstioCertificateService, authenticating callers by
// TokenReview (cached, with failures limited: Authenticator), and
// publishes the root certificate to every namespace.
package ca

import (
	"context"
	"crypto"
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
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Secret names and keys, the same as Istio's.
const (
	// PluginSecret holds a user-supplied CA.
	PluginSecret = "cacerts"
	// SelfSignedSecret holds the root istiod made itself.
	SelfSignedSecret = "istio-ca-secret"

	keyCACert    = "ca-cert.pem"
	keyCAKey     = "ca-key.pem"
	keyRootCert  = "root-cert.pem"
	keyCertChain = "cert-chain.pem"
)

// Authority signs certificates.
type Authority struct {
	signer      *x509.Certificate
	key         crypto.Signer
	chain       []*x509.Certificate // signer up to and including the root
	roots       *x509.CertPool
	rootPEM     string
	trustDomain string
}

// Source says where a loaded CA came from.
type Source string

// Sources of the signing key.
const (
	SourcePlugin     Source = "plugin"
	SourceSelfSigned Source = "self-signed"
	SourceCreated    Source = "created"
)

// LoadOrCreate loads the plug-in CA from the cacerts Secret in namespace,
// else the self-signed root from istio-ca-secret, else creates a
// self-signed root and stores it there.
func LoadOrCreate(ctx context.Context, kube kubernetes.Interface, namespace, trustDomain string) (*Authority, Source, error) {
	secrets := kube.CoreV1().Secrets(namespace)
	if s, err := secrets.Get(ctx, PluginSecret, metav1.GetOptions{}); err == nil {
		a, err := FromPEM(s.Data[keyCACert], s.Data[keyCAKey], s.Data[keyCertChain], s.Data[keyRootCert], trustDomain)
		if err != nil {
			return nil, "", fmt.Errorf("load secret %s/%s: %w", namespace, PluginSecret, err)
		}
		return a, SourcePlugin, nil
	} else if !apierrors.IsNotFound(err) {
		return nil, "", fmt.Errorf("get secret %s/%s: %w", namespace, PluginSecret, err)
	}
	for range 2 {
		s, err := secrets.Get(ctx, SelfSignedSecret, metav1.GetOptions{})
		if err == nil {
			a, err := FromPEM(s.Data[keyCACert], s.Data[keyCAKey], nil, nil, trustDomain)
			if err != nil {
				return nil, "", fmt.Errorf("load secret %s/%s: %w", namespace, SelfSignedSecret, err)
			}
			return a, SourceSelfSigned, nil
		}
		if !apierrors.IsNotFound(err) {
			return nil, "", fmt.Errorf("get secret %s/%s: %w", namespace, SelfSignedSecret, err)
		}
		certPEM, keyPEM, err := NewRoot(trustDomain, 10*365*24*time.Hour)
		if err != nil {
			return nil, "", err
		}
		_, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: SelfSignedSecret, Namespace: namespace},
			Type:       "istio.io/ca-root",
			Data:       map[string][]byte{keyCACert: certPEM, keyCAKey: keyPEM},
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			continue // another istiod won the race: use its root
		}
		if err != nil {
			return nil, "", fmt.Errorf("store secret %s/%s: %w", namespace, SelfSignedSecret, err)
		}
		a, err := FromPEM(certPEM, keyPEM, nil, nil, trustDomain)
		return a, SourceCreated, err
	}
	return nil, "", fmt.Errorf("load or create %s/%s: created concurrently but not readable", namespace, SelfSignedSecret)
}

// NewRoot makes a self-signed root CA certificate and its ECDSA P-256 key.
func NewRoot(trustDomain string, ttl time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate root key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{trustDomain}, CommonName: "Ambit root CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("create root certificate: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal root key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// FromPEM builds an Authority from a signing certificate and key, the
// chain from it to the root (without the signing certificate; empty for a
// self-signed root) and the root.
func FromPEM(certPEM, keyPEM, chainPEM, rootPEM []byte, trustDomain string) (*Authority, error) {
	certs, err := parseCerts(certPEM)
	if err != nil || len(certs) == 0 {
		return nil, fmt.Errorf("parse %s: want a PEM certificate: %w", keyCACert, err)
	}
	signer := certs[0]
	if !signer.IsCA {
		return nil, fmt.Errorf("parse %s: certificate is not a CA", keyCACert)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, fmt.Errorf("parse %s: want a PEM private key", keyCAKey)
	}
	key, err := parsePrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", keyCAKey, err)
	}
	chain := []*x509.Certificate{signer}
	extra, err := parseCerts(chainPEM)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", keyCertChain, err)
	}
	for _, c := range extra {
		if !c.Equal(signer) {
			chain = append(chain, c)
		}
	}
	root := chain[len(chain)-1]
	if len(rootPEM) > 0 {
		rs, err := parseCerts(rootPEM)
		if err != nil || len(rs) == 0 {
			return nil, fmt.Errorf("parse %s: want a PEM certificate: %w", keyRootCert, err)
		}
		root = rs[0]
		if !chain[len(chain)-1].Equal(root) {
			chain = append(chain, root)
		}
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := signer.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("verify signing certificate against root: %w", err)
	}
	return &Authority{
		signer: signer, key: key, chain: chain, roots: roots,
		rootPEM:     string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw})),
		trustDomain: trustDomain,
	}, nil
}

// RootPEM is the root certificate that verifies every issued chain.
func (a *Authority) RootPEM() string { return a.rootPEM }

// Roots is the root as a pool.
func (a *Authority) Roots() *x509.CertPool { return a.roots }

// SignCSR issues a leaf certificate for the CSR's public key with the
// given SPIFFE URI as its only SAN, valid for ttl. It returns the chain,
// leaf first, root last, in PEM.
func (a *Authority) SignCSR(csr *x509.CertificateRequest, identity *url.URL, ttl time.Duration) ([]string, error) {
	now := time.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(a.signer.NotAfter) {
		notAfter = a.signer.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{identity},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.signer, csr.PublicKey, a.key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %s: %w", identity, err)
	}
	out := []string{string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
	for _, c := range a.chain {
		out = append(out, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})))
	}
	return out, nil
}

// ServingCertificate issues a TLS server certificate for istiod itself
// with the given DNS names.
func (a *Authority) ServingCertificate(dnsNames []string, ttl time.Duration) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate serving key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: dnsNames[0]},
		DNSNames:     dnsNames,
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.signer, key.Public(), a.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("sign serving certificate: %w", err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	for _, c := range a.chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out, nil
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

func parsePrivateKey(der []byte) (crypto.Signer, error) {
	if k, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		if s, ok := k.(crypto.Signer); ok {
			return s, nil
		}
		return nil, errors.New("PKCS#8 key is not a signing key")
	}
	if k, err := x509.ParseECPrivateKey(der); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return k, nil
	}
	return nil, errors.New("want a PKCS#8, SEC 1 EC or PKCS#1 RSA private key")
}
