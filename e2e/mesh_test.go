package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambitmesh/ambit/internal/enrolment"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/internal/labmesh"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

// TestMeshL4: the parts joined. With the node agent and ztunnel on each
// node, an enrolled pod's connection to an enrolled pod on the other node
// is redirected by eBPF into ztunnel, crosses the wire as HBONE (mTLS), and
// reaches the app; the destination ztunnel reports the client's SPIFFE
// identity. A capture on node1's link shows that the app's bytes never
// cross it in plaintext, while a non-mesh pod's bytes do (the control).
// With ztunnel down the enrolled pod's connection fails; it never goes out
// in plaintext; with ztunnel back it works again.
//
// Workloads come from a static ztunnel config computed from the cluster by
// labmesh (istiod's workload discovery is not joined yet), certificates
// from a file-based test CA shared by the two ztunnels. An L4 policy
// applied while ztunnel runs refuses the client, and one that allows it
// lets it in again.
func TestMeshL4(t *testing.T) {
	l := startLab(t, lab.Config{Nodes: 2})
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	mesh, err := labmesh.New(l)
	if err != nil {
		t.Fatal(err)
	}
	if err := mesh.StartAgents(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.CreateNamespace(ctx, "mesh", map[string]string{enrolment.LabelDataplaneMode: enrolment.ModeAmbient}); err != nil {
		t.Fatal(err)
	}
	if err := l.CreateNamespace(ctx, "plain", nil); err != nil {
		t.Fatal(err)
	}
	pods := map[string]*corev1.Pod{}
	for _, pc := range []struct{ ns, name, node string }{{"mesh", "a", "node1"}, {"mesh", "a2", "node1"}, {"mesh", "b", "node2"}, {"plain", "c", "node1"}} {
		p, err := l.RunPod(ctx, lab.EchoPod(pc.ns, pc.name, pc.node, nil))
		if err != nil {
			t.Fatal(err)
		}
		pods[pc.name] = p
	}
	ip := func(name string) string { return pods[name].Status.PodIP }

	// The agents confirm redirection with an annotation; only then is a pod
	// advertised as HBONE.
	for _, name := range []string{"a", "a2", "b"} {
		if _, err := l.WaitPod(ctx, "mesh", name, func(p *corev1.Pod) bool {
			return p.Annotations[enrolment.AnnotationRedirection] == enrolment.AnnotationEnabled
		}); err != nil {
			t.Fatal(err)
		}
	}
	// ztunnel, its static config computed from the cluster.
	if err := mesh.StartZtunnels(ctx); err != nil {
		t.Fatal(err)
	}

	// Capture what crosses node1's link.
	pcap := filepath.Join(l.Dir, "node1-link.pcap")
	dump, err := l.StartProcessIn(l.BridgeNS(), "tcpdump-node1", nil, "tcpdump", "--immediate-mode", "-i", "v-node1", "-U", "-n", "-w", pcap, "tcp")
	if err != nil {
		t.Fatal(err)
	}
	if err := lab.PollUntil(ctx, 30*time.Second, func() bool { return strings.Contains(dump.Logs(5), "listening on") }); err != nil {
		t.Fatalf("tcpdump did not start: %v\n%s", err, dump.Logs(5))
	}

	secret, clear := "AMBIT-SECRET-"+randHex(), "AMBIT-CLEAR-"+randHex()
	// Enrolled a to enrolled b on the other node: through both ztunnels.
	out, err := l.Exec(ctx, "mesh", "a", l.Binaries().Echo, "tcp", net.JoinHostPort(ip("b"), "9000"), secret)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `"hostname":"b"`) || !strings.Contains(string(out), secret) {
		t.Errorf("a to b through the mesh: got %s, want b's echo of the message", out)
	}
	// Non-mesh c to b: plaintext on the wire, captured inbound at node2.
	out, err = l.Exec(ctx, "plain", "c", l.Binaries().Echo, "tcp", net.JoinHostPort(ip("b"), "9000"), clear)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `"hostname":"b"`) {
		t.Errorf("c to b: got %s, want b's echo", out)
	}
	// Packets are written in order: once the control's bytes are in the
	// file, so is everything a sent before.
	var wire []byte
	if err := lab.PollUntil(ctx, 30*time.Second, func() bool {
		wire, _ = os.ReadFile(pcap)
		return strings.Contains(string(wire), clear)
	}); err != nil {
		t.Fatalf("capture on node1's link: no %q from the non-mesh pod; the capture does not see the traffic (%d bytes captured)", clear, len(wire))
	}
	dump.Stop(5 * time.Second)
	if strings.Contains(string(wire), secret) {
		t.Errorf("capture on node1's link: found %q: the enrolled pod's bytes crossed in plaintext", secret)
	}

	// Same node: a2 to a, both on node1, through node1's ztunnel alone
	// (its HBONE dial is routed locally to its own inbound listener).
	out, err = l.Exec(ctx, "mesh", "a2", l.Binaries().Echo, "tcp", net.JoinHostPort(ip("a"), "9000"), "same-node")
	if err != nil || !strings.Contains(string(out), `"hostname":"a"`) {
		t.Errorf("a2 to a on the same node: got %s, %v; want a's echo", out, err)
	}

	// Mesh to outside the mesh: passed through as plain TCP to c.
	out, err = l.Exec(ctx, "mesh", "a", l.Binaries().Echo, "tcp", net.JoinHostPort(ip("c"), "9000"), "to-plain")
	if err != nil || !strings.Contains(string(out), `"hostname":"c"`) {
		t.Errorf("a to non-mesh c: got %s, %v; want c's echo (passthrough)", out, err)
	}

	// The destination ztunnel saw a's identity.
	metrics := get(t, ctx, l.Node("node2"), "http://127.0.0.1:15020/metrics")
	wantPrincipal := `source_principal="spiffe://cluster.local/ns/mesh/sa/default"`
	if !strings.Contains(metrics, "istio_tcp_connections_opened_total") || !strings.Contains(metrics, wantPrincipal) {
		t.Errorf("node2 ztunnel metrics: got no istio_tcp_connections_opened_total with %s:\n%s", wantPrincipal, metrics)
	}
	if zlog := mesh.Ztunnel(l.Node("node2")).Logs(50); !strings.Contains(zlog, "spiffe://cluster.local/ns/mesh/sa/default") {
		t.Errorf("node2 ztunnel access log: no line with a's identity:\n%s", zlog)
	}

	// An L4 policy on b that allows only another identity: a is refused,
	// at b's ztunnel; one that allows a's identity lets it in again.
	mesh.AddPolicy(labmesh.Policy{
		Authorization: config.Authorization{Name: "b-only-from-other", Namespace: "mesh", Scope: config.ScopeWorkloadSelector, Action: config.Allow,
			Rules: []config.Rule{{Clauses: []config.Clause{{Matches: []config.Match{{Principals: []config.StringMatch{{Exact: "cluster.local/ns/mesh/sa/other"}}}}}}}}},
		Select: func(w *config.Workload) bool { return w.Namespace == "mesh" && w.Name == "b" },
	})
	if err := mesh.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if out, err := l.Exec(ctx, "mesh", "a", l.Binaries().Echo, "tcp", net.JoinHostPort(ip("b"), "9000"), "denied"); err == nil {
		t.Errorf("a to b with a policy allowing only another identity: got %s, want refused", out)
	}
	mesh.AddPolicy(labmesh.Policy{
		Authorization: config.Authorization{Name: "b-from-mesh", Namespace: "mesh", Scope: config.ScopeWorkloadSelector, Action: config.Allow,
			Rules: []config.Rule{{Clauses: []config.Clause{{Matches: []config.Match{{Namespaces: []config.StringMatch{{Exact: "mesh"}}}}}}}}},
		Select: func(w *config.Workload) bool { return w.Namespace == "mesh" && w.Name == "b" },
	})
	if err := mesh.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if out, err := l.Exec(ctx, "mesh", "a", l.Binaries().Echo, "tcp", net.JoinHostPort(ip("b"), "9000"), "allowed"); err != nil || !strings.Contains(string(out), `"hostname":"b"`) {
		t.Errorf("a to b with a policy allowing namespace mesh: got %s, %v; want b's echo", out, err)
	}

	// PeerAuthentication STRICT for namespace mesh, as istiod sends it (a
	// DENY for connections without a peer identity): plaintext from c is
	// refused, mTLS from a still gets in.
	mesh.AddPolicy(labmesh.Policy{
		Authorization: *config.StrictPolicy("mesh", config.ScopeNamespace),
		Select:        func(w *config.Workload) bool { return w.Namespace == "mesh" },
	})
	if err := mesh.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if out, err := l.Exec(ctx, "plain", "c", l.Binaries().Echo, "tcp", net.JoinHostPort(ip("b"), "9000"), "plaintext"); err == nil {
		t.Errorf("plaintext c to b under STRICT: got %s, want refused", out)
	}
	if out, err := l.Exec(ctx, "mesh", "a", l.Binaries().Echo, "tcp", net.JoinHostPort(ip("b"), "9000"), "mtls"); err != nil || !strings.Contains(string(out), `"hostname":"b"`) {
		t.Errorf("a to b under STRICT: got %s, %v; want b's echo", out, err)
	}

	// ztunnel down on a's node: a's new connections fail, closed.
	mesh.StopZtunnel(l.Node("node1"))
	dctx, dcancel := context.WithTimeout(ctx, 3*time.Second)
	out, err = l.Exec(dctx, "mesh", "a", l.Binaries().Echo, "tcp", net.JoinHostPort(ip("b"), "9000"), "while-down")
	dcancel()
	if err == nil {
		t.Errorf("a to b with node1's ztunnel down: got %s, want the connection to fail", out)
	}
	if err := mesh.StartZtunnel(ctx, l.Node("node1")); err != nil {
		t.Fatal(err)
	}
	out, err = l.Exec(ctx, "mesh", "a", l.Binaries().Echo, "tcp", net.JoinHostPort(ip("b"), "9000"), "back")
	if err != nil || !strings.Contains(string(out), `"hostname":"b"`) {
		t.Errorf("a to b with ztunnel back: got %s, %v; want b's echo", out, err)
	}
}

func randHex() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// get fetches url from inside a node's namespace (an IP URL).
func get(t *testing.T, ctx context.Context, n *lab.Node, url string) string {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: n.NS.DialContext}, Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}
