package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoKubernetes: the node tunnel is data plane and links no Kubernetes
// package: none of client-go's weight, klog or apimachinery's machinery in
// the binary that carries every pod's traffic (test code may use them).
func TestNoKubernetes(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	var k8s []string
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "k8s.io/") || strings.HasPrefix(pkg, "sigs.k8s.io/") {
			k8s = append(k8s, pkg)
		}
	}
	if len(k8s) > 0 {
		t.Errorf("ztunnel links Kubernetes packages: got %v, want none", k8s)
	}
}
