package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ambitmesh/ambit/api"
	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

func TestNewConfigSource(t *testing.T) {
	dir := t.TempDir()
	ca, err := identity.NewCA(identity.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root-cert.pem")
	notPEM := filepath.Join(dir, "not.pem")
	for path, data := range map[string][]byte{root: ca.RootPEM(), notPEM: []byte("not a certificate")} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		o    options
		want string // error; "" for a source named so
		src  string
	}{
		{name: "file", o: options{localConfig: "mesh.yaml"}, src: "mesh.yaml"},
		{name: "xds over TLS", o: options{xdsAddress: "istiod.istio-system.svc:15012", xdsRootCert: root, xdsToken: "token"}, src: "xds"},
		{name: "xds plaintext needs no root", o: options{xdsAddress: "127.0.0.1:15010", xdsPlaintext: true, xdsRootCert: "/nonexistent"}, src: "xds"},
		{name: "both", o: options{localConfig: "mesh.yaml", xdsAddress: "127.0.0.1:15010"}, want: "--local-config and --xds-address are both set: want exactly one config source"},
		{name: "neither", o: options{}, want: "no config source: set --xds-address (istiod) or, for development, --local-config"},
		{name: "root missing", o: options{xdsAddress: "127.0.0.1:15012", xdsRootCert: filepath.Join(dir, "missing.pem")}, want: "read --xds-root-cert: open " + filepath.Join(dir, "missing.pem")},
		{name: "root not PEM", o: options{xdsAddress: "127.0.0.1:15012", xdsRootCert: notPEM}, want: "read --xds-root-cert " + notPEM + ": no PEM certificate in it"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src, err := newConfigSource(tc.o, config.NewStore(), slog.New(slog.DiscardHandler), nil)
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("newConfigSource: got %v, want an error containing %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := src.String(); got != tc.src {
				t.Errorf("source: got %q, want %q", got, tc.src)
			}
		})
	}
}

func TestNodeFromEnv(t *testing.T) {
	t.Setenv("POD_NAME", "ztunnel-abc")
	t.Setenv("POD_NAMESPACE", "istio-system")
	t.Setenv("INSTANCE_IP", "10.0.0.7")
	t.Setenv("CLUSTER_DOMAIN", "example.local")
	n, err := nodeFromEnv("node-a", "east")
	if err != nil {
		t.Fatal(err)
	}
	if n.NodeName != "node-a" || n.PodName != "ztunnel-abc" || n.PodNamespace != "istio-system" || n.ClusterID != "east" || n.Domain != "example.local" ||
		len(n.IPs) != 1 || n.IPs[0].String() != "10.0.0.7" {
		t.Errorf("node: got %+v, want node-a, ztunnel-abc.istio-system, cluster east, example.local, 10.0.0.7", n)
	}
	t.Setenv("INSTANCE_IP", "not-an-ip")
	if _, err := nodeFromEnv("node-a", "east"); err == nil || !strings.Contains(err.Error(), "parse $INSTANCE_IP") {
		t.Errorf("node with INSTANCE_IP=not-an-ip: got %v, want a parse error", err)
	}
}

// The default of --cluster-id: ISTIO_META_CLUSTER_ID (Istio's chart), else
// CLUSTER_ID (Ambit's), else Istio's default.
func TestClusterIDFromEnv(t *testing.T) {
	tests := []struct{ meta, plain, want string }{
		{"meta", "plain", "meta"},
		{"", "plain", "plain"},
		{"", "", api.DefaultClusterID},
	}
	for _, tt := range tests {
		t.Setenv("ISTIO_META_CLUSTER_ID", tt.meta)
		t.Setenv("CLUSTER_ID", tt.plain)
		if got := clusterIDFromEnv(); got != tt.want {
			t.Errorf("ISTIO_META_CLUSTER_ID=%q CLUSTER_ID=%q: got %q, want %q", tt.meta, tt.plain, got, tt.want)
		}
	}
}
