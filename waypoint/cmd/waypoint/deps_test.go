package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoKubernetes: the waypoint is data plane and links no Kubernetes
// package, nor any ztunnel package (the two proxies share internal/).
func TestNoKubernetes(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	var bad []string
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "k8s.io/") || strings.HasPrefix(pkg, "sigs.k8s.io/") || strings.HasPrefix(pkg, "github.com/ambitmesh/ambit/ztunnel") {
			bad = append(bad, pkg)
		}
	}
	if len(bad) > 0 {
		t.Errorf("the waypoint links: got %v, want no Kubernetes and no ztunnel package", bad)
	}
}
