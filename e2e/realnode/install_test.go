package realnode

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/ambitmesh/ambit/internal/lab"
)

// cli runs the Helm and kubectl programs as a user does, from the
// repository root, against the lab's cluster.
type cli struct {
	helm, kubectl, root, kubeconfig string
	env                             []string
}

func newCLI(t *testing.T, l *realLab) *cli {
	t.Helper()
	helm, err := lab.EnsureHelm(t.Context(), lab.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Helm's own state (repositories, cache, plugins) in the test's
	// directory, not the host's $HOME.
	home := t.TempDir()
	return &cli{helm: helm, kubectl: l.bins.Kubectl, root: l.root, kubeconfig: l.Kubeconfig, env: []string{
		"KUBECONFIG=" + l.Kubeconfig,
		"HELM_CACHE_HOME=" + filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME=" + filepath.Join(home, "config"),
		"HELM_DATA_HOME=" + filepath.Join(home, "data"),
	}}
}

func (c *cli) run(ctx context.Context, bin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = c.root
	cmd.Env = append(os.Environ(), c.env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", filepath.Base(bin), strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

// must runs Helm or kubectl and fails the test if it fails.
func (c *cli) must(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, err := c.run(t.Context(), bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// retry calls f every second until it returns nil, for at most timeout.
func retry(ctx context.Context, timeout time.Duration, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %s: %w", timeout, err)
		case <-tick.C:
		}
	}
}

// TestInstall installs Ambit as the README says, with the Helm command
// line, onto the real node, with the images `make images` builds served by
// the lab registry; deploys Bookinfo from its manifest and enrols its
// namespace with the label; checks that Bookinfo's pods talk HBONE with
// their own identities and that an AuthorizationPolicy holds; that a pod
// started while the node agent is away is refused by the plugin and
// enrolled on the kubelet's retry, and that the agent's going away leaves
// the plugin chained; and that `helm uninstall` leaves the node as before.
func TestInstall(t *testing.T) {
	l := startRealLab(t)
	ctx := t.Context()
	c := newCLI(t, l)
	if err := l.reg.PushProduct(ctx, l.root); err != nil {
		t.Fatal(err)
	}

	node := l.Nodes[0]
	conflist := filepath.Join(node.CNIConfDir, "10-lab.conflist")
	// The node as Ambit finds it, to compare with after `helm uninstall`.
	before := snapshotNode(t, node)
	if len(before.bpf) > 0 {
		t.Fatalf("eBPF programs on the node before the install: %v, want none (the primary CNI, ptp, attaches none)", before.bpf)
	}

	if out, err := c.run(ctx, c.helm, HelmInstall...); err != nil {
		pods, _ := c.run(context.WithoutCancel(ctx), c.kubectl, "get", "pods", "-A", "-o", "wide")
		t.Fatalf("%v\npods:\n%s", err, pods)
	} else {
		t.Logf("helm install:\n%s", out)
	}

	c.must(t, c.kubectl, WaitMesh...)

	// The node agent chained ambit-cni after the node's primary network
	// and installed the plugin, in the node's own directories.
	chained, err := os.ReadFile(conflist)
	if err != nil {
		t.Fatal(err)
	}
	if got := pluginTypes(t, chained); strings.Join(got, ",") != "ptp,ambit-cni" {
		t.Errorf("node conflist plugins: got %v, want [ptp ambit-cni]", got)
	}
	if _, err := os.Stat(filepath.Join(node.CNIBinDir, "ambit-cni")); err != nil {
		t.Errorf("ambit-cni in the node's /opt/cni/bin: %v", err)
	}
	// Its pins are in the node's bpffs, not the host's.
	if out, err := inNode(node, "ls", "/sys/fs/bpf/ambit"); err != nil || strings.TrimSpace(out) == "" {
		t.Errorf("pins in the node's /sys/fs/bpf/ambit: got %q (%v), want some", out, err)
	}
	if _, err := os.Stat("/sys/fs/bpf/ambit"); err == nil {
		t.Errorf("/sys/fs/bpf/ambit on the host: exists, want it only in the node's bpffs")
	}

	// Bookinfo from its manifest, then its namespace enrolled: the running
	// pods join without a restart.
	c.must(t, c.kubectl, CreateNamespace...)
	c.must(t, c.kubectl, ApplyBookinfo...)
	c.must(t, c.kubectl, WaitBookinfo...)
	c.must(t, c.kubectl, LabelAmbient...)
	// A client in the namespace: the echo program, which also fetches.
	c.must(t, c.kubectl, "run", "client", "-n", AppNamespace, "--image", echoImage, "--restart=Never", "--", "serve")
	c.must(t, c.kubectl, "wait", "-n", AppNamespace, "--for=condition=Ready", "pod/client", "--timeout=3m")
	fetch := func(url string) (string, error) {
		return c.run(ctx, c.kubectl, "exec", "-n", AppNamespace, "client", "--", "/usr/local/bin/echo", "http", "-body", url)
	}
	sa := func(name string) string {
		return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", TrustDomain, AppNamespace, name)
	}

	// productpage calls details and reviews, reviews v2 and v3 call
	// ratings: every hop is HBONE between ztunnels, and the destination
	// sees the caller's own identity.
	wantHops := []hop{
		{sa("default"), "productpage-v1"},
		{sa("bookinfo-productpage"), "details-v1"},
		{sa("bookinfo-productpage"), "reviews-v"},
		{sa("bookinfo-reviews"), "ratings-v1"},
	}
	err = retry(ctx, 2*time.Minute, func() error {
		body, err := fetch("http://productpage:9080/productpage")
		if err != nil {
			return err
		}
		if !strings.Contains(body, "Book Details") {
			return fmt.Errorf("productpage: got %q, want the product page", body)
		}
		if err := missingHops(c, ctx, wantHops); err != nil {
			return err
		}
		// The sources' side: each connection went out through a tunnel
		// to the destination's ztunnel, none in plaintext.
		out := accessLog(c, ctx, func(e logEntry) bool { return e.Direction == "outbound" && e.Error == "" })
		if len(out) == 0 {
			return fmt.Errorf("no outbound connection in ztunnel's access log")
		}
		for _, e := range out {
			if !strings.HasSuffix(e.DstHBONE, ":15008") {
				return fmt.Errorf("outbound connection to %s: got tunnel %q, want HBONE to port 15008", e.DstWorkload, e.DstHBONE)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Bookinfo over HBONE: %v", err)
	}
	if out := c.must(t, c.kubectl, "get", "pods", "-n", AppNamespace, "-o", "jsonpath={range .items[*]}{.metadata.name}={.metadata.annotations.ambient\\.istio\\.io/redirection}{\"\\n\"}{end}"); strings.Contains(out, "=\n") {
		t.Errorf("pods' ambient.istio.io/redirection annotations: got\n%s\nwant enabled on every pod", out)
	}

	// Only reviews may call ratings: the client's connection to ratings
	// is refused, reviews still get their stars.
	c.must(t, c.kubectl, ApplyPolicy...)
	err = retry(ctx, time.Minute, func() error {
		body, err := fetch("http://ratings:9080/ratings/0")
		if err == nil {
			return fmt.Errorf("client to ratings under the policy: got %q, want the connection refused", body)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := retry(ctx, time.Minute, func() error {
		if denied := accessLog(c, ctx, func(e logEntry) bool {
			return e.Direction == "inbound" && e.Error != "" && e.SrcIdentity == sa("default") && strings.HasPrefix(e.DstWorkload, "ratings-v1")
		}); len(denied) == 0 {
			return fmt.Errorf("no denied inbound connection from %s to ratings in ztunnel's access log", sa("default"))
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	err = retry(ctx, time.Minute, func() error {
		body, err := fetch("http://reviews:9080/reviews/0")
		if err != nil {
			return err
		}
		if !strings.Contains(body, `"stars"`) {
			return fmt.Errorf("reviews under the policy: got %q, want stars from ratings (v2 or v3)", body)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// The node agent goes away (its DaemonSet no longer selects the node,
	// an ordinary restart as far as the node can tell): the plugin stays
	// chained, a pod of the ambient namespace that starts meanwhile is
	// refused by the plugin with a clear error, never started outside the
	// mesh, and a pod outside the mesh starts (the plugin's credentials,
	// bound to the node, outlive the agent's pod); back, the agent enrols
	// the refused pod on the kubelet's retry.
	c.must(t, c.kubectl, "patch", "daemonset", "-n", ReleaseNamespace, "ambit-cni-agent", "--type=merge", "-p", `{"spec":{"template":{"spec":{"nodeSelector":{"ambit.dev/test-away":"true"}}}}}`)
	if err := retry(ctx, 2*time.Minute, func() error {
		out, err := c.run(ctx, c.kubectl, "get", "pods", "-n", ReleaseNamespace, "-l", "app=ambit-cni-agent", "-o", "name")
		if err != nil || strings.TrimSpace(out) != "" {
			return fmt.Errorf("agent pods: %q, %v; want none", out, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(conflist); err != nil || !bytes.Equal(got, chained) {
		t.Errorf("conflist with the agent away: got %s (%v), want it still chained:\n%s", got, err, chained)
	}
	c.must(t, c.kubectl, "run", "late", "-n", AppNamespace, "--image", echoImage, "--restart=Never", "--", "serve")
	c.must(t, c.kubectl, "run", "outside", "-n", "default", "--image", echoImage, "--restart=Never", "--", "serve")
	if err := retry(ctx, 2*time.Minute, func() error {
		out, err := c.run(ctx, c.kubectl, "get", "events", "-n", AppNamespace, "--field-selector", "involvedObject.name=late,reason=FailedCreatePodSandBox", "-o", "jsonpath={.items[*].message}")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "ambit-cni: pod bookinfo/late is in the ambient mesh but its redirection could not be set up") {
			return fmt.Errorf("events of pod late: got %q, want the plugin's refusal", out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if out, err := c.run(ctx, c.kubectl, "wait", "-n", "default", "--for=condition=Ready", "pod/outside", "--timeout=2m"); err != nil {
		events, _ := c.run(ctx, c.kubectl, "get", "events", "-n", "default", "--field-selector", "involvedObject.name=outside", "-o", "jsonpath={.items[*].message}")
		t.Errorf("pod outside the mesh with the agent away: %v %s; want it Ready (events: %s)", err, out, events)
	}
	c.must(t, c.kubectl, "delete", "pod", "-n", "default", "outside", "--wait=true")
	if phase := c.must(t, c.kubectl, "get", "pod", "-n", AppNamespace, "late", "-o", "jsonpath={.status.phase}"); phase != "Pending" {
		t.Errorf("pod late with the agent away: got phase %q, want Pending", phase)
	}
	c.must(t, c.kubectl, "patch", "daemonset", "-n", ReleaseNamespace, "ambit-cni-agent", "--type=json", "-p", `[{"op":"remove","path":"/spec/template/spec/nodeSelector/ambit.dev~1test-away"}]`)
	c.must(t, c.kubectl, "rollout", "status", "daemonset", "-n", ReleaseNamespace, "ambit-cni-agent", "--timeout=3m")
	c.must(t, c.kubectl, "wait", "-n", AppNamespace, "--for=condition=Ready", "pod/late", "--timeout=5m")
	if got, err := os.ReadFile(conflist); err != nil || !bytes.Equal(got, chained) {
		t.Errorf("conflist with the agent back: got %s (%v), want as before:\n%s", got, err, chained)
	}
	lateIP := c.must(t, c.kubectl, "get", "pod", "-n", AppNamespace, "late", "-o", "jsonpath={.status.podIP}")
	if err := retry(ctx, time.Minute, func() error {
		if _, err := fetch("http://" + lateIP + ":8080/late"); err != nil {
			return err
		}
		return missingHops(c, ctx, []hop{{sa("default"), "late"}})
	}); err != nil {
		t.Errorf("pod late enrolled on the retry: %v", err)
	}

	// An ordinary restart of the agent (its pod killed, the DaemonSet
	// makes a new one): the plugin stays chained while it is away.
	c.must(t, c.kubectl, "delete", "pod", "-n", ReleaseNamespace, "-l", "app=ambit-cni-agent", "--grace-period=1", "--wait=true")
	if got, err := os.ReadFile(conflist); err != nil || !bytes.Equal(got, chained) {
		t.Errorf("conflist once the agent's pod is deleted: got %s (%v), want it still chained:\n%s", got, err, chained)
	}
	c.must(t, c.kubectl, "wait", "-n", ReleaseNamespace, "--for=condition=Ready", "pod", "-l", "app=ambit-cni-agent", "--timeout=3m")

	// helm uninstall: the agent sees its DaemonSet deleted and takes
	// Ambit out of the node as it stops.
	installed := snapshotNode(t, node)
	if len(installed.bpf) == 0 {
		t.Fatalf("eBPF programs on the node with Ambit installed: none, want Ambit's")
	}
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
	after := snapshotNode(t, node)
	if !bytes.Equal(after.conflist, before.conflist) {
		t.Errorf("node conflist after helm uninstall:\n%s\nwant it byte for byte as before the install:\n%s", after.conflist, before.conflist)
	}
	if !slices.Equal(after.confDir, before.confDir) || !slices.Equal(after.binDir, before.binDir) {
		t.Errorf("node CNI dirs after helm uninstall: conf %v, bin %v; want as before: conf %v, bin %v", after.confDir, after.binDir, before.confDir, before.binDir)
	}
	if len(after.bpf) > 0 {
		t.Errorf("eBPF programs on the node's interfaces after helm uninstall: %v, want none", after.bpf)
	}
	var ids []ebpf.ProgramID
	for _, a := range installed.bpf {
		ids = append(ids, a.Prog)
	}
	if loaded := loadedPrograms(ids); len(loaded) > 0 {
		t.Errorf("Ambit's eBPF programs %v still loaded after helm uninstall, want none", loaded)
	}
	if after.pins != "" {
		t.Errorf("the node's /sys/fs/bpf/ambit after helm uninstall: %q, want it gone", after.pins)
	}
	if after.rules != before.rules {
		t.Errorf("ip rules of the node after helm uninstall:\n%s\nwant as before:\n%s", after.rules, before.rules)
	}
	if after.ambitRoutes != "" || after.ambitLink != "" || after.ambitIptables != "" {
		t.Errorf("Ambit's routes, link or iptables rules on the node after helm uninstall: routes %q, link %q, iptables %q; want none",
			after.ambitRoutes, after.ambitLink, after.ambitIptables)
	}
}

// nodeState is what Ambit changes on a node.
type nodeState struct {
	conflist        []byte
	confDir, binDir []string
	bpf             []bpfAttachment
	// pins lists the node's /sys/fs/bpf/ambit, "" when it is not there.
	pins string
	// rules is `ip rule`; ambitRoutes the routes of Ambit's tables (154,
	// 155), ambitLink its path device (ambit0), ambitIptables the
	// iptables rules that name Ambit.
	rules, ambitRoutes, ambitLink, ambitIptables string
}

func snapshotNode(t *testing.T, n *lab.Node) nodeState {
	t.Helper()
	var s nodeState
	var err error
	if s.conflist, err = os.ReadFile(filepath.Join(n.CNIConfDir, "10-lab.conflist")); err != nil {
		t.Fatal(err)
	}
	s.confDir, s.binDir = dirNames(t, n.CNIConfDir), dirNames(t, n.CNIBinDir)
	if s.bpf, err = nodeBPF(n); err != nil {
		t.Fatal(err)
	}
	if out, err := inNode(n, "ls", "/sys/fs/bpf/ambit"); err == nil {
		s.pins = "pins: " + out
	}
	if s.rules, err = inNode(n, "ip", "rule"); err != nil {
		t.Fatalf("ip rule in the node: %v: %s", err, s.rules)
	}
	routes, err := inNode(n, "ip", "route", "show", "table", "all")
	if err != nil {
		t.Fatalf("ip route show table all in the node: %v: %s", err, routes)
	}
	for _, line := range strings.Split(routes, "\n") {
		if strings.Contains(line, "table 154") || strings.Contains(line, "table 155") || strings.Contains(line, "ambit0") {
			s.ambitRoutes += line + "\n"
		}
	}
	if out, err := inNode(n, "ip", "link", "show", "ambit0"); err == nil {
		s.ambitLink = out
	}
	out, err := inNode(n, "iptables-save")
	if err != nil {
		t.Fatalf("iptables-save in the node: %v: %s", err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(strings.ToLower(line), "ambit") {
			s.ambitIptables += line + "\n"
		}
	}
	return s
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// hop is a connection a destination ztunnel accepted over HBONE: the
// caller's identity, and the destination workload's name prefix.
type hop struct{ identity, workload string }

// missingHops returns an error naming the hops ztunnel's access log does
// not show yet.
func missingHops(c *cli, ctx context.Context, want []hop) error {
	log := accessLog(c, ctx, func(e logEntry) bool { return e.Direction == "inbound" && e.Error == "" })
	var missing []string
	for _, h := range want {
		found := false
		for _, e := range log {
			if e.SrcIdentity == h.identity && strings.HasPrefix(e.DstWorkload, h.workload) {
				found = true
				break
			}
		}
		if !found {
			missing = append(missing, fmt.Sprintf("%s → %s", h.identity, h.workload))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("inbound HBONE connections missing from ztunnel's access log: %v", missing)
	}
	return nil
}

// logEntry is a line of ztunnel's access log (docs/architecture.md).
type logEntry struct {
	Direction   string `json:"direction"`
	SrcIdentity string `json:"src.identity"`
	DstWorkload string `json:"dst.workload"`
	DstHBONE    string `json:"dst.hbone_addr"`
	Error       string `json:"error"`
}

// accessLog reads ztunnel's access log with kubectl logs and returns the
// entries keep accepts.
func accessLog(c *cli, ctx context.Context, keep func(logEntry) bool) []logEntry {
	out, err := c.run(ctx, c.kubectl, "logs", "-n", ReleaseNamespace, "-l", "app=ztunnel", "--tail=-1")
	if err != nil {
		return nil
	}
	var entries []logEntry
	s := bufio.NewScanner(strings.NewReader(out))
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		var e logEntry
		if json.Unmarshal(s.Bytes(), &e) == nil && e.Direction != "" && keep(e) {
			entries = append(entries, e)
		}
	}
	return entries
}

// inNode runs a command in the node's mount and network namespaces.
func inNode(n *lab.Node, args ...string) (string, error) {
	out, err := exec.Command("nsenter", append([]string{"--mount=" + n.MountNS(), "--net=" + n.NS.Path(), "--"}, args...)...).CombinedOutput()
	return string(out), err
}

func pluginTypes(t *testing.T, conflist []byte) []string {
	t.Helper()
	var c struct {
		Plugins []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(conflist, &c); err != nil {
		t.Fatalf("parse the node's conflist: %v\n%s", err, conflist)
	}
	var types []string
	for _, p := range c.Plugins {
		types = append(types, p.Type)
	}
	return types
}
