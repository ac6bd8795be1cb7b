package main

import (
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// deps is the packages the waypoint links, as `go list -deps` gives them.
var deps = sync.OnceValues(func() ([]string, error) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	return strings.Fields(string(out)), err
})

// TestNoKubernetes: the waypoint is data plane and links no Kubernetes
// package, nor any ztunnel package (the two proxies share internal/).
func TestNoKubernetes(t *testing.T) {
	pkgs, err := deps()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	var bad []string
	for _, pkg := range pkgs {
		if strings.HasPrefix(pkg, "k8s.io/") || strings.HasPrefix(pkg, "sigs.k8s.io/") || strings.HasPrefix(pkg, "github.com/ambitmesh/ambit/ztunnel") {
			bad = append(bad, pkg)
		}
	}
	if len(bad) > 0 {
		t.Errorf("the waypoint links: got %v, want no Kubernetes and no ztunnel package", bad)
	}
}

// TestNoEnvoyAdminOrBootstrap: the waypoint links neither Envoy's admin
// types nor its bootstrap types. They were 1.1 MB of its binary, and so
// of its resident memory, for the config dump's envelope and the static
// file's two lists, which the waypoint writes and reads by hand
// ((*Proxy).ConfigDump, config.ParseStatic).
func TestNoEnvoyAdminOrBootstrap(t *testing.T) {
	pkgs, err := deps()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, pkg := range pkgs {
		if pkg == "github.com/envoyproxy/go-control-plane/envoy/admin/v3" || pkg == "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3" {
			t.Errorf("the waypoint links %s, want it not to", pkg)
		}
	}
}
