package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoKubernetes: the node tunnel is data plane and links no Kubernetes
// package: none of client-go's weight, klog or apimachinery's machinery in
// the binary that carries every pod's traffic (test code may use them).
// Nor does any ztunnel package import the waypoint: the two proxies share
// what they share through internal/, and neither depends on the other.
func TestNoKubernetes(t *testing.T) {
	var k8s []string
	for _, pkg := range goList(t, ".") {
		if strings.HasPrefix(pkg, "k8s.io/") || strings.HasPrefix(pkg, "sigs.k8s.io/") {
			k8s = append(k8s, pkg)
		}
	}
	if len(k8s) > 0 {
		t.Errorf("ztunnel links Kubernetes packages: got %v, want none", k8s)
	}
	const waypoint = "github.com/ambitmesh/ambit/waypoint"
	var wp []string
	for _, pkg := range goList(t, "github.com/ambitmesh/ambit/ztunnel/...") {
		if pkg == waypoint || strings.HasPrefix(pkg, waypoint+"/") {
			wp = append(wp, pkg)
		}
	}
	if len(wp) > 0 {
		t.Errorf("ztunnel packages import the waypoint: got %v, want none", wp)
	}
}

// goList is the packages that the packages matching pattern depend on,
// themselves included (test code aside).
func goList(t *testing.T, pattern string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", pattern).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pattern, err)
	}
	return strings.Fields(string(out))
}
