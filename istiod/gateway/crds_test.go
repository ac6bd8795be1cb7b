package gateway

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/kubernetes/fake"
)

// TestMissingCRDs: istiod learns from discovery which Gateway API
// resources it needs are not served, rather than waiting forever for
// informers of resources that do not exist.
func TestMissingCRDs(t *testing.T) {
	tests := []struct {
		name      string
		resources []*metav1.APIResourceList
		want      []string
	}{
		{"no gateway api", nil, []string{"gatewayclasses", "gateways"}},
		{"only gateways", []*metav1.APIResourceList{{GroupVersion: "gateway.networking.k8s.io/v1", APIResources: []metav1.APIResource{{Name: "gateways"}}}}, []string{"gatewayclasses"}},
		{"installed", []*metav1.APIResourceList{{GroupVersion: "gateway.networking.k8s.io/v1", APIResources: []metav1.APIResource{
			{Name: "gatewayclasses"}, {Name: "gateways"}, {Name: "httproutes"}}}}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := fake.NewClientset().Discovery().(*fakediscovery.FakeDiscovery)
			d.Resources = tc.resources
			got, err := MissingCRDs(d)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("missing: got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestCRDFilesFromModule: deploy/crds holds the experimental channel of
// the Gateway API module go.mod pins, and deploy/crds/gateway-api-standard
// its standard channel, unchanged (copied from the module's config/crd),
// without the safe-upgrades admission policy, which is no CRD, and the
// experimental-only gateway.networking.x-k8s.io kinds (XBackend,
// XBackendTrafficPolicy, XMesh): nothing uses them, and XBackend's
// validation needs Kubernetes 1.32's CEL format library while the chart
// supports 1.30.
func TestCRDFilesFromModule(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api").Output()
	if err != nil {
		t.Fatalf("find the gateway api module: %v", err)
	}
	mod := filepath.Join(strings.TrimSpace(string(out)), "config", "crd")
	for channel, dir := range map[string]string{"experimental": "../../deploy/crds", "standard": "../../deploy/crds/gateway-api-standard"} {
		src, err := filepath.Glob(filepath.Join(mod, channel, "gateway.networking.k8s.io_*.yaml"))
		if err != nil || len(src) == 0 {
			t.Fatalf("%s channel: got %d CRD files (%v), want some", channel, len(src), err)
		}
		var want, got []string
		for _, f := range src {
			if strings.Contains(f, "_vap_") {
				continue
			}
			want = append(want, filepath.Base(f))
			a, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(filepath.Join(dir, filepath.Base(f)))
			if err != nil {
				t.Errorf("%s channel: %v", channel, err)
				continue
			}
			if !bytes.Equal(a, b) {
				t.Errorf("%s: differs from the module's %s channel (copy it again)", filepath.Join(dir, filepath.Base(f)), channel)
			}
		}
		have, _ := filepath.Glob(filepath.Join(dir, "gateway.networking.*.yaml"))
		for _, f := range have {
			got = append(got, filepath.Base(f))
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: got CRD files %v, want the module's %s channel %v", dir, got, channel, want)
		}
	}
}
