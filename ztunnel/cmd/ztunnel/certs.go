package main

import (
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/ambitmesh/ambit/internal/caclient"
	"github.com/ambitmesh/ambit/internal/identity"
)

// certFlags choose where workload certificates and the mesh roots come
// from: istiod's CA, or a file-based test CA for development. Exactly one.
type certFlags struct {
	caAddress, caServerName, caRootCert, caToken string
	certTTL                                      time.Duration
	fakeCADir, trustDomain                       string
}

// Istio's paths in the ztunnel pod.
const (
	defaultRootCert = "/var/run/secrets/istio/root-cert.pem"
	defaultToken    = "/var/run/secrets/tokens/istio-token"
)

func (f *certFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.caAddress, "ca-address", os.Getenv("CA_ADDRESS"), "istiod's CA as host:port, e.g. istiod.istio-system.svc:15012 (default $CA_ADDRESS)")
	fs.StringVar(&f.caServerName, "ca-server-name", "", "name istiod's serving certificate must carry (default: the host of --ca-address)")
	fs.StringVar(&f.caRootCert, "ca-root-cert", defaultRootCert, "PEM root certificates: they verify istiod and are the mesh roots HBONE peers are verified against")
	fs.StringVar(&f.caToken, "ca-token", defaultToken, "service account token (audience istio-ca) sent to istiod, re-read for every request")
	fs.DurationVar(&f.certTTL, "cert-ttl", 0, "workload certificate lifetime to ask istiod for; 0 leaves it to istiod")
	fs.StringVar(&f.fakeCADir, "fake-ca-dir", "", "directory of a file-based test CA (ca-cert.pem, ca-key.pem), created if empty; development only, instead of --ca-address")
	fs.StringVar(&f.trustDomain, "trust-domain", identity.DefaultTrustDomain, "trust domain of a test CA this run creates")
}

// certificates builds the certificate source and the mesh roots the
// flags choose, and says what it chose; closeFn releases the source.
// istiod's CA is told the cluster clusterID with every request.
func (f certFlags) certificates(clusterID string) (src identity.Source, roots *x509.CertPool, what string, closeFn func() error, err error) {
	switch {
	case f.caAddress != "" && f.fakeCADir != "":
		return nil, nil, "", nil, fmt.Errorf("--ca-address (or $CA_ADDRESS) %q and --fake-ca-dir %q: want exactly one", f.caAddress, f.fakeCADir)
	case f.fakeCADir != "":
		ca, err := loadOrCreateCA(f.fakeCADir, f.trustDomain)
		if err != nil {
			return nil, nil, "", nil, err
		}
		return ca, ca.Roots(), "test CA in " + f.fakeCADir, func() error { return nil }, nil
	case f.caAddress != "":
		roots, err := caclient.LoadRoots(f.caRootCert)
		if err != nil {
			return nil, nil, "", nil, fmt.Errorf("--ca-root-cert: %w", err)
		}
		c, err := caclient.New(caclient.Config{
			Address: f.caAddress, ServerName: f.caServerName, Roots: roots, TokenFile: f.caToken, TTL: f.certTTL,
			ClusterID: clusterID,
		})
		if err != nil {
			return nil, nil, "", nil, err
		}
		return c, roots, "istiod CA at " + f.caAddress, c.Close, nil
	default:
		return nil, nil, "", nil, errors.New("no certificate authority: set --ca-address (or $CA_ADDRESS) for istiod's CA, or --fake-ca-dir for a test CA in development")
	}
}

func loadOrCreateCA(dir, trustDomain string) (*identity.CA, error) {
	ca, err := identity.LoadCA(dir)
	if err == nil {
		return ca, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	ca, err = identity.NewCA(trustDomain)
	if err != nil {
		return nil, err
	}
	if err := ca.WriteFiles(dir); err != nil {
		return nil, err
	}
	return ca, nil
}
