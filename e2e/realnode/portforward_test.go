package realnode

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/ambitmesh/ambit/ambitctl/adminport"
	"github.com/ambitmesh/ambit/internal/lab"
)

// checkPortForward reaches the echo pod's port 8080 the way ambitctl
// reaches components' admin ports on a cluster (adminport.PortForward):
// the apiserver's pods/portforward, then the real kubelet and containerd
// into the pod's namespace. The pod must be running on node.
func checkPortForward(t *testing.T, ctx context.Context, l *lab.Lab, node string) {
	t.Helper()
	pf := &adminport.PortForward{Config: l.RESTConfig, Client: l.Client, Namespace: "default"}
	defer pf.Close()
	echo := adminport.Component{Name: "echo", Port: 8080, PerNode: true}
	targets, err := pf.Targets(ctx, echo, node)
	if err != nil || len(targets) != 1 || targets[0].Pod != "echo" {
		t.Fatalf("port-forward targets on %s: got %+v (%v), want the echo pod", node, targets, err)
	}
	if others, err := pf.Targets(ctx, echo, "no-such-node"); err != nil || len(others) != 0 {
		t.Errorf("port-forward targets on no-such-node: got %+v (%v), want none", others, err)
	}
	// Two requests: the second reuses the forward the first opened.
	for _, path := range []string{"/pf1", "/pf2"} {
		body, err := adminport.Get(ctx, pf, targets[0], path)
		if err != nil {
			t.Fatalf("GET %s through port-forward: %v", path, err)
		}
		var rep struct {
			Hostname string `json:"hostname"`
			Path     string `json:"path"`
		}
		if err := json.Unmarshal(body, &rep); err != nil || rep.Hostname != "echo" || rep.Path != path {
			t.Errorf("GET %s through port-forward: got %s (%v), want the echo pod's reply for %s", path, body, err, path)
		}
	}
}
