package main

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/ambitmesh/ambit/internal/caclient"
	"github.com/ambitmesh/ambit/internal/identity"
)

func TestCertFlagDefaults(t *testing.T) {
	t.Setenv("CA_ADDRESS", "istiod.istio-system.svc:15012")
	var f certFlags
	f.register(flag.NewFlagSet("ztunnel", flag.ContinueOnError))
	want := certFlags{
		caAddress: "istiod.istio-system.svc:15012", caRootCert: "/var/run/secrets/istio/root-cert.pem",
		caToken: "/var/run/secrets/tokens/istio-token", trustDomain: identity.DefaultTrustDomain,
	}
	if diff := cmp.Diff(want, f, cmp.AllowUnexported(certFlags{})); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
}

// Exactly one certificate authority: istiod's, or the test CA.
func TestCertificates(t *testing.T) {
	dir := t.TempDir()
	ca, err := identity.NewCA(identity.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root-cert.pem")
	if err := os.WriteFile(root, ca.RootPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		f       certFlags
		wantSrc string // type of the source, or "" for an error
		wantErr string
	}{
		{"istiod", certFlags{caAddress: "127.0.0.1:15012", caRootCert: root, caToken: filepath.Join(dir, "token")}, "*caclient.Client", ""},
		{"test CA", certFlags{fakeCADir: filepath.Join(dir, "ca"), trustDomain: "cluster.local"}, "*identity.CA", ""},
		{"both", certFlags{caAddress: "127.0.0.1:15012", fakeCADir: filepath.Join(dir, "ca")}, "", "want exactly one"},
		{"neither", certFlags{}, "", "no certificate authority"},
		{"root file missing", certFlags{caAddress: "127.0.0.1:15012", caRootCert: filepath.Join(dir, "missing.pem"), caToken: "t"}, "", "--ca-root-cert"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, roots, what, closeFn, err := tt.f.certificates("")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("certificates: got %v, want an error saying %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("certificates: %v", err)
			}
			defer closeFn()
			var gotSrc string
			switch src.(type) {
			case *caclient.Client:
				gotSrc = "*caclient.Client"
				if !roots.Equal(ca.Roots()) {
					t.Error("roots: got another pool, want the --ca-root-cert file's")
				}
			case *identity.CA:
				gotSrc = "*identity.CA"
			}
			if gotSrc != tt.wantSrc || roots == nil || what == "" {
				t.Errorf("certificates: got %s, roots %v, %q; want %s with roots and a description", gotSrc, roots != nil, what, tt.wantSrc)
			}
		})
	}
}
