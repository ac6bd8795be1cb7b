package waypoint

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestNetworkingCRDsFromModule: deploy/crds holds the VirtualService,
// DestinationRule and Telemetry CRDs of the istio.io/api module go.mod pins, unchanged
// (the documents of its kubernetes/customresourcedefinitions.gen.yaml),
// so that the API server checks them against Istio's own schema: an
// unknown field is refused there (kubectl's strict field validation)
// rather than dropped unseen on the way to istiod.
func TestNetworkingCRDsFromModule(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/api").Output()
	if err != nil {
		t.Fatalf("find the istio.io/api module: %v", err)
	}
	gen, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "kubernetes", "customresourcedefinitions.gen.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(string(gen), "\n---\n")
	for _, plural := range []string{"virtualservices", "destinationrules", "telemetries"} {
		group := "networking.istio.io"
		if plural == "telemetries" {
			group = "telemetry.istio.io"
		}
		var want string
		for _, d := range docs {
			if strings.Contains(d, "\n  name: "+plural+"."+group+"\n") {
				want = strings.Trim(d, "\n") + "\n"
			}
		}
		if want == "" {
			t.Fatalf("%s: not in the module's CRDs", plural)
		}
		path := filepath.Join("..", "..", "deploy", "crds", group+"_"+plural+".yaml")
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("%s differs from the istio.io/api module's CRD (copy it again)", path)
		}
	}
}
