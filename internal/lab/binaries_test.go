package lab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKubeVersionFlags(t *testing.T) {
	got, err := kubeVersionFlags(filepath.Join("kubebuild", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"-X k8s.io/component-base/version.gitVersion=v1.31.4", "-X k8s.io/component-base/version.gitMinor=31", "-X k8s.io/client-go/pkg/version.gitMajor=1"} {
		if !strings.Contains(got, want) {
			t.Errorf("kubeVersionFlags: got %q, want it to hold %q", got, want)
		}
	}
	bad := filepath.Join(t.TempDir(), "go.mod")
	os.WriteFile(bad, []byte("module x\n\nrequire k8s.io/api v0.31.4\n"), 0o644)
	if _, err := kubeVersionFlags(bad); err == nil {
		t.Error("kubeVersionFlags(go.mod without k8s.io/kubernetes): got no error, want one")
	}
	if _, err := kubeVersionFlags(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("kubeVersionFlags(missing file): got no error, want one")
	}
}
