package identity

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"net/url"
)

// signTemplateForTest re-signs cert's leaf with the given URI SANs, for
// certificates the CA would never issue.
func (ca *CA) signTemplateForTest(cert *tls.Certificate, uris []*url.URL) ([]byte, error) {
	tmpl := *cert.Leaf
	tmpl.URIs = uris
	return x509.CreateCertificate(rand.Reader, &tmpl, ca.cert, cert.Leaf.PublicKey, ca.key)
}
