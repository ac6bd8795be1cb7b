package lab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// requiredVersion is the version of module path that the go.mod file
// requires directly, "" when it does not.
func requiredVersion(t *testing.T, gomod, path string) string {
	t.Helper()
	data, err := os.ReadFile(gomod)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "require "))
		if len(f) >= 2 && f[0] == path && !strings.Contains(line, "// indirect") {
			return f[1]
		}
	}
	return ""
}

// TestEchoPinsPilotsIstio: the echo app of the conformance image is built
// from the same Istio commit as the pilot-discovery of the interop suite,
// so one commit names "the Istio" the repository tests against.
func TestEchoPinsPilotsIstio(t *testing.T) {
	root := filepath.Join("..", "..")
	pilot := requiredVersion(t, filepath.Join(root, IstioBuildDir, "go.mod"), "istio.io/istio")
	echo := requiredVersion(t, filepath.Join(root, IstioEchoBuildDir, "go.mod"), "istio.io/istio")
	if pilot == "" || echo != pilot {
		t.Errorf("istio.io/istio in %s: got %q, want %s's %q", IstioEchoBuildDir, echo, IstioBuildDir, pilot)
	}
}
