package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/url"
	"strings"
	"testing"
	"time"
)

// intermediate makes a CA certificate signed by the given root.
func intermediate(t *testing.T, rootPEM, rootKeyPEM []byte) (certPEM, keyPEM []byte) {
	t.Helper()
	root, err := FromPEM(rootPEM, rootKeyPEM, nil, nil, "td")
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "intermediate"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.signer, key.Public(), root.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

func TestPluginCAWithIntermediate(t *testing.T) {
	rootPEM, rootKey, err := NewRoot("td", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	interPEM, interKey := intermediate(t, rootPEM, rootKey)
	// cacerts layout: ca-cert is the intermediate, cert-chain lists it and
	// the root, root-cert is the root.
	a, err := FromPEM(interPEM, interKey, append(append([]byte{}, interPEM...), rootPEM...), rootPEM, "td")
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := url.Parse("spiffe://td/ns/a/sa/b")
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id}}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := a.SignCSR(csr, id, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 3 {
		t.Fatalf("chain: got %d certificates, want leaf, intermediate, root", len(chain))
	}
	var certs []*x509.Certificate
	for _, p := range chain {
		c, err := parseCerts([]byte(p))
		if err != nil || len(c) != 1 {
			t.Fatalf("chain entry: got %d certificates (%v), want 1", len(c), err)
		}
		certs = append(certs, c[0])
	}
	inter := x509.NewCertPool()
	inter.AddCert(certs[1])
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: a.Roots(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("verify leaf to root: %v", err)
	}
	// The intermediate lives one hour: the leaf may not outlive it.
	if certs[0].NotAfter.After(certs[1].NotAfter) {
		t.Errorf("leaf NotAfter %v: want at most the intermediate's %v", certs[0].NotAfter, certs[1].NotAfter)
	}
	if got, want := a.RootPEM(), string(rootPEM); got != want {
		t.Errorf("RootPEM: got %q, want the root %q", got, want)
	}
}

func TestFromPEMRefusals(t *testing.T) {
	rootPEM, rootKey, err := NewRoot("td", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherRoot, _, err := NewRoot("td", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	interPEM, interKey := intermediate(t, rootPEM, rootKey)
	tests := []struct {
		name                string
		cert, key, ch, root []byte
		want                string
	}{
		{"no certificate", nil, rootKey, nil, nil, "ca-cert.pem: want a PEM certificate"},
		{"no key", rootPEM, nil, nil, nil, "ca-key.pem: want a PEM private key"},
		{"wrong root", interPEM, interKey, nil, otherRoot, "verify signing certificate against root"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := FromPEM(tc.cert, tc.key, tc.ch, tc.root, "td")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("FromPEM: got error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
