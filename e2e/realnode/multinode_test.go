package realnode

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/internal/lab"
)

// TestTwoNodes installs Ambit with Helm on two real nodes, each with its
// own kubelet, containerd, CNI directories, bpffs and cgroup root, and
// checks that the DaemonSets' host paths are each node's own (a conflist
// chained and pins in each node's bpffs, nothing on the host) and that a
// pod on one node reaches a pod on the other over HBONE through the real
// kubelets' pods: the source's ztunnel (on node1) tunnels to port 15008
// of the destination pod with the destination's identity, the
// destination's ztunnel (on node2) sees the caller's identity.
func TestTwoNodes(t *testing.T) {
	l := startRealLabN(t, 2)
	ctx := t.Context()
	c := newCLI(t, l)
	if err := l.reg.PushProduct(ctx, l.root); err != nil {
		t.Fatal(err)
	}
	if _, err := c.run(ctx, c.helm, HelmInstall...); err != nil {
		pods, _ := c.run(context.WithoutCancel(ctx), c.kubectl, "get", "pods", "-A", "-o", "wide")
		t.Fatalf("%v\npods:\n%s", err, pods)
	}
	c.must(t, c.kubectl, WaitMesh...)

	// One agent and one ztunnel per node, each node's paths its own.
	for _, n := range l.Nodes {
		for _, app := range []string{"ambit-cni-agent", "ztunnel"} {
			if pod := podOn(t, c, ReleaseNamespace, "app="+app, n.Name); pod == "" {
				t.Errorf("%s on %s: none, want one", app, n.Name)
			}
		}
		conflist, err := os.ReadFile(filepath.Join(n.CNIConfDir, "10-lab.conflist"))
		if err != nil {
			t.Fatal(err)
		}
		if got := pluginTypes(t, conflist); strings.Join(got, ",") != "ptp,ambit-cni" {
			t.Errorf("%s's conflist plugins: got %v, want [ptp ambit-cni]", n.Name, got)
		}
		if out, err := inNode(n, "ls", "/sys/fs/bpf/ambit"); err != nil || strings.TrimSpace(out) == "" {
			t.Errorf("pins in %s's /sys/fs/bpf/ambit: got %q (%v), want some", n.Name, out, err)
		}
	}
	if _, err := os.Stat("/sys/fs/bpf/ambit"); err == nil {
		t.Errorf("/sys/fs/bpf/ambit on the host: exists, want it only in the nodes' bpffs")
	}

	const ns = "cross"
	a, b := l.Nodes[0], l.Nodes[1]
	c.must(t, c.kubectl, "create", "namespace", ns)
	c.must(t, c.kubectl, "label", "namespace", ns, "istio.io/dataplane-mode=ambient")
	c.must(t, c.kubectl, "create", "serviceaccount", "-n", ns, "client")
	c.must(t, c.kubectl, "create", "serviceaccount", "-n", ns, "server")
	runOn := func(name, sa string, node *lab.Node) {
		t.Helper()
		overrides, _ := json.Marshal(map[string]any{"spec": map[string]any{"nodeName": node.Name, "serviceAccountName": sa}})
		c.must(t, c.kubectl, "run", name, "-n", ns, "--image", echoImage, "--restart=Never", "--labels", "app="+name,
			"--overrides", string(overrides), "--", "serve")
	}
	runOn("server", "server", b)
	runOn("client", "client", a)
	c.must(t, c.kubectl, "expose", "pod", "server", "-n", ns, "--port", "8080")
	c.must(t, c.kubectl, "wait", "-n", ns, "--for=condition=Ready", "pod/server", "pod/client", "--timeout=3m")
	serverIP := c.must(t, c.kubectl, "get", "pod", "-n", ns, "server", "-o", "jsonpath={.status.podIP}")
	if !b.PodCIDR.Contains(mustAddr(t, serverIP)) {
		t.Fatalf("server pod IP %s: want one in %s's pod CIDR %s", serverIP, b.Name, b.PodCIDR)
	}

	id := func(sa string) string { return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", TrustDomain, ns, sa) }
	ztA, ztB := podOn(t, c, ReleaseNamespace, "app=ztunnel", a.Name), podOn(t, c, ReleaseNamespace, "app=ztunnel", b.Name)
	for _, url := range []string{"http://server:8080/by-service", "http://" + serverIP + ":8080/by-ip"} {
		path := url[strings.LastIndex(url, "/"):]
		if err := retry(ctx, 2*time.Minute, func() error {
			body, err := c.run(ctx, c.kubectl, "exec", "-n", ns, "client", "--", "/usr/local/bin/echo", "http", "-body", url)
			if err != nil {
				return err
			}
			if !strings.Contains(body, `"hostname":"server"`) || !strings.Contains(body, `"path":"`+path+`"`) {
				return fmt.Errorf("client → %s: got %q, want the server's reply", url, body)
			}
			return nil
		}); err != nil {
			t.Fatalf("across the nodes: %v", err)
		}
	}
	if err := retry(ctx, time.Minute, func() error {
		out := podAccessLog(c, ctx, ztA, func(e fullLogEntry) bool {
			return e.Direction == "outbound" && e.Error == "" && e.SrcIdentity == id("client") && strings.HasPrefix(e.DstWorkload, "server")
		})
		if len(out) == 0 {
			return fmt.Errorf("%s's ztunnel (%s): no outbound connection from %s to server", a.Name, ztA, id("client"))
		}
		for _, e := range out {
			if e.DstHBONE != serverIP+":15008" || e.DstIdentity != id("server") {
				return fmt.Errorf("%s's ztunnel: outbound to server through %q to %q, want HBONE to %s:15008 with %s", a.Name, e.DstHBONE, e.DstIdentity, serverIP, id("server"))
			}
		}
		in := podAccessLog(c, ctx, ztB, func(e fullLogEntry) bool {
			return e.Direction == "inbound" && e.Error == "" && strings.HasPrefix(e.DstWorkload, "server")
		})
		if len(in) == 0 {
			return fmt.Errorf("%s's ztunnel (%s): no inbound connection to server", b.Name, ztB)
		}
		for _, e := range in {
			if e.SrcIdentity != id("client") {
				return fmt.Errorf("%s's ztunnel: inbound to server from %q, want %s", b.Name, e.SrcIdentity, id("client"))
			}
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	// The source's node never accepted the connection itself, nor did the
	// destination's node originate it.
	if in := podAccessLog(c, ctx, ztA, func(e fullLogEntry) bool {
		return e.Direction == "inbound" && strings.HasPrefix(e.DstWorkload, "server")
	}); len(in) > 0 {
		t.Errorf("%s's ztunnel: inbound connections to server %v, want none (server runs on %s)", a.Name, in, b.Name)
	}

	// A namespace waypoint, and a client on each node: whichever node the
	// waypoint's pod lands on, one client shares it, and its ztunnel must
	// dial the waypoint's pod (which terminates HBONE itself), not its own
	// inbound.
	wpFile := filepath.Join(t.TempDir(), "waypoint.yaml")
	if err := os.WriteFile(wpFile, []byte(waypointYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	c.must(t, c.kubectl, "apply", "-n", ns, "-f", wpFile)
	c.must(t, c.kubectl, "wait", "-n", ns, "--for=condition=Programmed", "gateway/waypoint", "--timeout=3m")
	c.must(t, c.kubectl, "label", "namespace", ns, "istio.io/use-waypoint=waypoint")
	runOn("client2", "client", b)
	c.must(t, c.kubectl, "wait", "-n", ns, "--for=condition=Ready", "pod/client2", "--timeout=3m")
	wpIP := c.must(t, c.kubectl, "get", "pods", "-n", ns, "-l", "gateway.networking.k8s.io/gateway-name=waypoint", "-o", "jsonpath={.items[0].status.podIP}")
	wpNode := c.must(t, c.kubectl, "get", "pods", "-n", ns, "-l", "gateway.networking.k8s.io/gateway-name=waypoint", "-o", "jsonpath={.items[0].spec.nodeName}")
	for _, cl := range []struct {
		pod  string
		node *lab.Node
	}{{"client", a}, {"client2", b}} {
		zt := podOn(t, c, ReleaseNamespace, "app=ztunnel", cl.node.Name)
		if err := retry(ctx, 2*time.Minute, func() error {
			body, err := c.run(ctx, c.kubectl, "exec", "-n", ns, cl.pod, "--", "/usr/local/bin/echo", "http", "-body", "http://server:8080/via-waypoint")
			if err != nil {
				return err
			}
			if !strings.Contains(body, `"hostname":"server"`) {
				return fmt.Errorf("%s → server through the waypoint: got %q, want the server's reply", cl.pod, body)
			}
			if via := podAccessLog(c, ctx, zt, func(e fullLogEntry) bool {
				return e.Direction == "outbound" && e.Error == "" && e.DstHBONE == wpIP+":15008" && strings.HasPrefix(e.DstWorkload, "waypoint")
			}); len(via) == 0 {
				return fmt.Errorf("%s's ztunnel (%s): no outbound connection through the waypoint %s:15008 yet", cl.node.Name, zt, wpIP)
			}
			return nil
		}); err != nil {
			t.Errorf("through the waypoint (on %s) from %s on %s: %v", wpNode, cl.pod, cl.node.Name, err)
		}
	}

	// helm uninstall: each node's agent takes Ambit out of its own node.
	c.must(t, c.helm, HelmUninstall...)
	if err := retry(ctx, 2*time.Minute, func() error {
		out, err := c.run(ctx, c.kubectl, "get", "pods", "-n", ReleaseNamespace, "-o", "name")
		if err != nil || strings.TrimSpace(out) != "" {
			return fmt.Errorf("pods in %s after helm uninstall: %q, %v; want none", ReleaseNamespace, out, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, n := range l.Nodes {
		if out, err := inNode(n, "ls", "/sys/fs/bpf/ambit"); err == nil {
			t.Errorf("%s's /sys/fs/bpf/ambit after helm uninstall: %q, want it gone", n.Name, out)
		}
		conflist, err := os.ReadFile(filepath.Join(n.CNIConfDir, "10-lab.conflist"))
		if err != nil {
			t.Fatal(err)
		}
		if got := pluginTypes(t, conflist); strings.Join(got, ",") != "ptp" {
			t.Errorf("%s's conflist plugins after helm uninstall: got %v, want [ptp]", n.Name, got)
		}
	}
}

// podOn is the name of the pod with label selector sel in namespace ns on
// node, "" when there is none.
func podOn(t *testing.T, c *cli, ns, sel, node string) string {
	t.Helper()
	out := c.must(t, c.kubectl, "get", "pods", "-n", ns, "-l", sel, "--field-selector", "spec.nodeName="+node, "-o", "jsonpath={.items[*].metadata.name}")
	if f := strings.Fields(out); len(f) == 1 {
		return f[0]
	}
	return ""
}

// fullLogEntry is a line of ztunnel's access log with the destination's
// identity too.
type fullLogEntry struct {
	logEntry
	DstIdentity string `json:"dst.identity"`
}

// podAccessLog reads the access log of one ztunnel pod.
func podAccessLog(c *cli, ctx context.Context, pod string, keep func(fullLogEntry) bool) []fullLogEntry {
	out, err := c.run(ctx, c.kubectl, "logs", "-n", ReleaseNamespace, pod, "--tail=-1")
	if err != nil {
		return nil
	}
	var entries []fullLogEntry
	for _, line := range strings.Split(out, "\n") {
		var e fullLogEntry
		if json.Unmarshal([]byte(line), &e) == nil && e.Direction != "" && keep(e) {
			entries = append(entries, e)
		}
	}
	return entries
}
