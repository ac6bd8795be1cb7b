package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	secapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambitmesh/ambit/bpf/redirect"
	"github.com/ambitmesh/ambit/e2e/internal/labmesh"
	"github.com/ambitmesh/ambit/internal/echo"
	"github.com/ambitmesh/ambit/internal/enrolment"
	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/ztunnel/admin"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

// certTTL is the workload certificates' lifetime in TestAmbient: short,
// so that they rotate (at half-life) during the test.
const certTTL = 20 * time.Second

// TestAmbient is the ambient mesh end to end, as a user drives it: two
// nodes, istiod on the control plane, a node agent and a ztunnel per node
// (ztunnel configured by istiod's workload discovery, certificates from
// istiod's CA), the CNI plugin chained. The subtests run in order on one
// cluster; each leaves it as the next expects.
func TestAmbient(t *testing.T) {
	l := startLab(t, lab.Config{Nodes: 2})
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	mesh := labmesh.StartMesh(t, ctx, l, labmesh.IstiodOptions{CertTTL: certTTL})
	istio, err := istioclient.NewForConfig(l.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}

	// Namespace shop starts outside the mesh, with its pods running.
	for _, ns := range []string{"shop", "plain"} {
		if err := l.CreateNamespace(ctx, ns, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Client.CoreV1().ServiceAccounts("shop").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "frontend"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := map[string]*corev1.Pod{}
	run := func(t *testing.T, ns, name, node string, labels map[string]string, sa string) {
		t.Helper()
		got, err := l.RunEchoPod(ctx, ns, name, node, sa, labels)
		if err != nil {
			t.Fatal(err)
		}
		pods[name] = got
	}
	run(t, "shop", "a", "node1", map[string]string{"app": "a"}, "frontend")
	run(t, "shop", "a2", "node1", map[string]string{"app": "a2"}, "")
	run(t, "shop", "b", "node2", map[string]string{"app": "b"}, "")
	run(t, "shop", "b1", "node1", map[string]string{"app": "b"}, "")
	run(t, "shop", "opt", "node2", map[string]string{"app": "opt", enrolment.LabelDataplaneMode: enrolment.ModeNone}, "")
	run(t, "plain", "c", "node1", map[string]string{"app": "c"}, "")
	ip := func(name string) string { return pods[name].Status.PodIP }
	addr := func(name string) string { return net.JoinHostPort(ip(name), "9000") }
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "b", Namespace: "shop"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "b"},
			Ports:    []corev1.ServicePort{{Name: "tcp", Port: 80, TargetPort: intstr.FromString("tcp")}},
		},
	}
	if _, err := l.Client.CoreV1().Services("shop").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, ep := range []string{"b", "b1"} {
		if err := l.WaitServiceProgrammed(ctx, "shop", "b", ip(ep)); err != nil {
			t.Fatal(err)
		}
	}
	enrolled := []string{"a", "a2", "b", "b1"}
	frontend := identity.Identity{TrustDomain: identity.DefaultTrustDomain, Namespace: "shop", ServiceAccount: "frontend"}

	// send runs the echo client in pod ns/name to addr and returns the
	// answering pod's report.
	send := func(ns, name, to, msg string) (echo.Report, error) {
		sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
		defer scancel()
		out, err := l.Exec(sctx, ns, name, l.Binaries().Echo, "tcp", to, msg)
		if err != nil {
			return echo.Report{}, fmt.Errorf("%s/%s to %s: %w: %s", ns, name, to, err, out)
		}
		var rep echo.Report
		if err := json.Unmarshal(out, &rep); err != nil {
			return rep, fmt.Errorf("%s/%s to %s: decode %q: %w", ns, name, to, out, err)
		}
		return rep, nil
	}
	// wantReach also checks whose address the destination saw: its
	// client's own, which ztunnel preserves on the connections it makes
	// to pods (those of its node, and passthrough to pods outside the
	// mesh).
	wantReach := func(t *testing.T, ns, name, to, wantHost string) {
		t.Helper()
		rep, err := send(ns, name, to, "hello")
		if err != nil || rep.Hostname != wantHost {
			t.Errorf("%s/%s to %s: got %+v, %v; want an answer from %s", ns, name, to, rep, err, wantHost)
			return
		}
		if host, _, _ := net.SplitHostPort(rep.Peer); host != ip(name) {
			t.Errorf("%s/%s to %s: %s saw its client at %s, want %s's own address %s", ns, name, to, wantHost, rep.Peer, name, ip(name))
		}
	}
	wantRefused := func(t *testing.T, ns, name, to string) {
		t.Helper()
		if rep, err := send(ns, name, to, "hello"); err == nil {
			t.Errorf("%s/%s to %s: got an answer from %s, want the connection refused", ns, name, to, rep.Hostname)
		}
	}
	// istiod runs with the chart's RBAC only (labmesh applies it): nothing
	// it needs may be refused. (Not across the apiserver restart: a
	// starting apiserver refuses requests until its RBAC cache is filled.)
	noForbidden := func(t *testing.T) {
		t.Helper()
		if logs := mesh.Istiod().Logs(100000); strings.Contains(logs, "forbidden") {
			t.Errorf("istiod with the chart's RBAC: its log has a forbidden request:\n%s", logs)
		}
	}
	waitEnrolled := func(t *testing.T, names ...string) {
		t.Helper()
		for _, name := range names {
			if _, err := l.WaitPod(ctx, "shop", name, func(p *corev1.Pod) bool {
				return p.Annotations[enrolment.AnnotationRedirection] == enrolment.AnnotationEnabled
			}); err != nil {
				t.Fatal(err)
			}
			if err := mesh.WaitWorkload(ctx, ip(name), true); err != nil {
				t.Fatal(err)
			}
		}
	}

	t.Run("label enrols running pods", func(t *testing.T) {
		setNSLabel(t, ctx, l, "shop", ptr(enrolment.ModeAmbient))
		waitEnrolled(t, enrolled...)
		if err := mesh.WaitWorkload(ctx, ip("opt"), false); err != nil {
			t.Error(err)
		}
		if p, err := l.Client.CoreV1().Pods("shop").Get(ctx, "opt", metav1.GetOptions{}); err != nil || p.Annotations[enrolment.AnnotationRedirection] != "" {
			t.Errorf("opted-out pod: got annotations %v (%v), want no redirection", p.GetAnnotations(), err)
		}
		notRestarted(t, ctx, l, pods, "shop")

		// What crosses node1's link: an enrolled pod's marker never, the
		// non-mesh pod's marker in clear (the capture's control).
		capture, err := l.StartCapture(ctx, "v-node1")
		if err != nil {
			t.Fatal(err)
		}
		secret, clear := "AMBIT-SECRET-"+randHex(), "AMBIT-CLEAR-"+randHex()
		if rep, err := send("shop", "a", addr("b"), secret); err != nil || rep.Hostname != "b" || rep.Message != secret {
			t.Errorf("a to b: got %+v, %v; want b's echo of the secret", rep, err)
		} else if host, _, _ := net.SplitHostPort(rep.Peer); host != ip("a") {
			t.Errorf("a to b: b saw its client at %s, want a's own address %s (ztunnel preserves it)", rep.Peer, ip("a"))
		}
		wantReach(t, "plain", "c", addr("b"), "b")
		if _, err := send("plain", "c", addr("b"), clear); err != nil {
			t.Error(err)
		}
		if err := capture.NoneInClear(t.Context(), clear, secret); err != nil {
			t.Error(err)
		}

		// The destination's ztunnel saw a's identity, from istiod's CA.
		metrics := get(t, ctx, l.Node("node2"), labmesh.ZtunnelMetrics)
		if want := `source_principal="` + frontend.String() + `"`; !strings.Contains(metrics, want) {
			t.Errorf("node2 ztunnel metrics: no series with %s", want)
		}
		if zlog := mesh.Ztunnel(l.Node("node2")).Logs(100); !strings.Contains(zlog, frontend.String()) {
			t.Errorf("node2 ztunnel access log: no line with %s", frontend)
		}
	})

	t.Run("mesh and non-mesh pods", func(t *testing.T) {
		wantReach(t, "shop", "a2", addr("a"), "a")    // same node, through node1's ztunnel
		wantReach(t, "shop", "a", addr("c"), "c")     // mesh to non-mesh: passthrough
		wantReach(t, "shop", "a", addr("opt"), "opt") // to the opted-out pod: passthrough
		wantReach(t, "shop", "opt", addr("b"), "b")   // from it: plaintext, allowed
	})

	t.Run("what ztunnel sends for a pod takes the pod's path", func(t *testing.T) {
		// A server outside the mesh and outside the pod network: in the
		// control plane's namespace, on the lab's wire.
		host := l.ControlPlaneIP().String()
		outside := net.JoinHostPort(host, "9100")
		p, err := l.StartProcessIn(l.ControlPlaneNS(), "outside-echo", []string{"POD_NAME=outside"}, l.Binaries().Echo, "serve", "--tcp", ":9100", "--http", "127.0.0.1:9180")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Stop(time.Second) })
		if err := lab.WaitHTTP(ctx, l.ControlPlaneNS(), "http://127.0.0.1:9180/", 10*time.Second, p); err != nil {
			t.Fatal(err)
		}
		node1 := l.Node("node1")
		stats := func() redirect.Stats {
			t.Helper()
			var s redirect.Stats
			if err := node1.NS.Do(func() (err error) { s, err = redirect.PinnedStats(l.BPFPinDir(node1)); return err }); err != nil {
				t.Fatal(err)
			}
			return s
		}
		before := stats()
		// It sees the pod's own address, enrolled or not.
		wantReach(t, "shop", "a", outside, "outside")
		wantReach(t, "plain", "c", outside, "outside")

		// node1's firewall drops the pods' traffic to it (the metadata-
		// service guard's shape): the non-mesh pod's, and the enrolled
		// pod's, which ztunnel makes on its behalf.
		for _, pod := range []string{"a", "c"} {
			nodeRule(t, node1, "FORWARD", "-s", ip(pod), "-d", host, "-p", "tcp", "--dport", "9100", "-j", "DROP")
		}
		wantRefused(t, "plain", "c", outside)
		wantRefused(t, "shop", "a", outside)

		// HBONE to another node leaves as the pod's traffic too: from
		// its address to the destination's port 15008, through FORWARD.
		drop := nodeRule(t, node1, "FORWARD", "-s", ip("a2"), "-d", ip("b"), "-p", "tcp", "--dport", "15008", "-j", "DROP")
		wantRefused(t, "shop", "a2", addr("b"))
		drop()
		wantReach(t, "shop", "a2", addr("b"), "b")

		if after := stats(); after.PodPath <= before.PodPath || after.DroppedNoPodPath != before.DroppedNoPodPath {
			t.Errorf("node1 redirect counters: pod path %d -> %d, dropped with no pod path %d -> %d; want the first to grow and the second not",
				before.PodPath, after.PodPath, before.DroppedNoPodPath, after.DroppedNoPodPath)
		}
	})

	t.Run("host-network pods are not the tunnel's", func(t *testing.T) {
		// ztunnel's own pod is host-network (as the chart's), so istiod
		// sends it at its node's address with HOST_NETWORK. Served as a
		// local workload, it made the tunnel listen on the node's address
		// and hold a certificate for ztunnel's identity, and any mesh
		// identity could CONNECT to any port of the node.
		node2 := l.Nodes[1]
		nodeIP := node2.IP
		ztunnelID := identity.Identity{TrustDomain: identity.DefaultTrustDomain, Namespace: labmesh.IstiodNamespace, ServiceAccount: labmesh.ZtunnelSA}
		if err := mesh.WaitZtunnels(ctx, "the host-network ztunnel pod at "+nodeIP.String(), func(d *admin.Dump) bool {
			return slices.ContainsFunc(d.Workloads, func(w *config.Workload) bool {
				return w.HostNetwork() && slices.Contains(w.Addresses, nodeIP)
			})
		}); err != nil {
			t.Fatal(err)
		}
		if c, ok := tryCertOf(ctx, node2, ztunnelID); ok {
			t.Errorf("ztunnel on node2: holds a certificate for %s (serial %s), want none: a host-network pod is not served", ztunnelID, c.Serial)
		}
		for _, port := range []string{"15008", "15006"} {
			dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
			out, err := l.Exec(dctx, "plain", "c", l.Binaries().Echo, "tcp", net.JoinHostPort(nodeIP.String(), port), "hello")
			dcancel()
			if err == nil {
				t.Errorf("plain/c to node2's address, port %s: got %s, want nothing listening there", port, out)
			}
		}
	})

	t.Run("service VIP balanced across nodes and names resolve", func(t *testing.T) {
		seen := map[string]int{}
		for i := range 16 {
			to := "b:80"
			if i%2 == 1 {
				to = "b.shop.svc.cluster.local:80"
			}
			rep, err := send("shop", "a", to, "via-service")
			if err != nil {
				t.Fatal(err)
			}
			if host, _, _ := net.SplitHostPort(rep.Peer); host != ip("a") {
				t.Errorf("a to %s: %s saw its client at %s, want a's own address %s", to, rep.Hostname, rep.Peer, ip("a"))
			}
			seen[rep.Hostname]++
		}
		if seen["b"] == 0 || seen["b1"] == 0 || len(seen) != 2 {
			t.Errorf("16 connections to Service b: got answers %v, want both b (node2) and b1 (node1)", seen)
		}
	})

	t.Run("authorization policies", func(t *testing.T) {
		// a2 holds a connection open to b from before any policy.
		open := dialPod(t, ctx, l, "shop", "a2", addr("b"))
		if rep, err := roundTrip(open, "before"); err != nil || rep.Hostname != "b" {
			t.Fatalf("open connection a2 to b: got %+v, %v", rep, err)
		}
		allow := &securityv1.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "b-from-frontend", Namespace: "shop"},
			Spec: secapi.AuthorizationPolicy{
				Selector: &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "b"}},
				Action:   secapi.AuthorizationPolicy_ALLOW,
				Rules: []*secapi.Rule{{From: []*secapi.Rule_From{{Source: &secapi.Source{
					Principals: []string{"cluster.local/ns/shop/sa/frontend"},
				}}}}},
			},
		}
		applyPolicy(t, ctx, istio, mesh, allow, ip("b"))
		wantReach(t, "shop", "a", addr("b"), "b")
		wantRefused(t, "shop", "a2", addr("b"))
		wantRefused(t, "plain", "c", addr("b"))  // no identity, no principal
		wantRefused(t, "shop", "a2", addr("b1")) // b1 is app=b too
		wantReach(t, "shop", "a2", addr("a"), "a")
		// The open connection is re-checked and closed.
		if _, err := roundTrip(open, "after"); err == nil {
			t.Errorf("connection a2 to b opened before the policy: still answers, want it closed")
		}

		// A DENY by namespace and port wins over the ALLOW, on its port
		// only.
		deny := &securityv1.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "b-deny-shop-9000", Namespace: "shop"},
			Spec: secapi.AuthorizationPolicy{
				Selector: &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "b"}},
				Action:   secapi.AuthorizationPolicy_DENY,
				Rules: []*secapi.Rule{{
					From: []*secapi.Rule_From{{Source: &secapi.Source{Namespaces: []string{"shop"}}}},
					To:   []*secapi.Rule_To{{Operation: &secapi.Operation{Ports: []string{"9000"}}}},
				}},
			},
		}
		allowed := dialPod(t, ctx, l, "shop", "a", addr("b"))
		if rep, err := roundTrip(allowed, "before-deny"); err != nil || rep.Hostname != "b" {
			t.Fatalf("open connection a to b under the ALLOW: got %+v, %v", rep, err)
		}
		applyPolicy(t, ctx, istio, mesh, deny, ip("b"))
		wantRefused(t, "shop", "a", addr("b"))
		if _, err := roundTrip(allowed, "after-deny"); err == nil {
			t.Errorf("connection a to b opened before the DENY: still answers, want it closed")
		}
		hctx, hcancel := context.WithTimeout(ctx, 5*time.Second)
		out, err := l.Exec(hctx, "shop", "a", l.Binaries().Echo, "http", "http://"+net.JoinHostPort(ip("b"), "8080")+"/")
		hcancel()
		if err != nil || !strings.Contains(string(out), `"hostname":"b"`) {
			t.Errorf("a to b:8080 under a DENY of port 9000: got %s, %v; want b's answer", out, err)
		}
		for _, p := range []*securityv1.AuthorizationPolicy{allow, deny} {
			deletePolicy(t, ctx, istio, mesh, p.Namespace, p.Name, ip("b"))
		}
		wantReach(t, "shop", "a2", addr("b"), "b")

		// A DENY by the client's address: a2's tunnel arrives from
		// node1's address, a2's own travels in Forwarded and is believed
		// because a2's identity proved it.
		denyIP := &securityv1.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "b-deny-a2-address", Namespace: "shop"},
			Spec: secapi.AuthorizationPolicy{
				Selector: &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "b"}},
				Action:   secapi.AuthorizationPolicy_DENY,
				Rules:    []*secapi.Rule{{From: []*secapi.Rule_From{{Source: &secapi.Source{IpBlocks: []string{ip("a2") + "/32"}}}}}},
			},
		}
		applyPolicy(t, ctx, istio, mesh, denyIP, ip("b"))
		wantRefused(t, "shop", "a2", addr("b"))
		wantReach(t, "shop", "a", addr("b"), "b")
		deletePolicy(t, ctx, istio, mesh, denyIP.Namespace, denyIP.Name, ip("b"))
		wantReach(t, "shop", "a2", addr("b"), "b")

		// Service accounts, in the bare form Istio documents (the
		// policy's namespace). Once dropped on the way, the empty match
		// left behind let everyone in through the ALLOW (plain text
		// too) and denied frontend through the DENY.
		bySA := func(name string, action secapi.AuthorizationPolicy_Action, src *secapi.Source) *securityv1.AuthorizationPolicy {
			return &securityv1.AuthorizationPolicy{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"},
				Spec: secapi.AuthorizationPolicy{
					Selector: &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "b"}},
					Action:   action,
					Rules:    []*secapi.Rule{{From: []*secapi.Rule_From{{Source: src}}}},
				},
			}
		}
		allowSA := bySA("b-from-frontend-sa", secapi.AuthorizationPolicy_ALLOW, &secapi.Source{ServiceAccounts: []string{"frontend"}})
		applyPolicy(t, ctx, istio, mesh, allowSA, ip("b"))
		wantReach(t, "shop", "a", addr("b"), "b")
		wantRefused(t, "shop", "a2", addr("b"))
		wantRefused(t, "plain", "c", addr("b"))
		deletePolicy(t, ctx, istio, mesh, allowSA.Namespace, allowSA.Name, ip("b"))
		denySA := bySA("b-deny-all-but-frontend", secapi.AuthorizationPolicy_DENY, &secapi.Source{NotServiceAccounts: []string{"shop/frontend"}})
		applyPolicy(t, ctx, istio, mesh, denySA, ip("b"))
		wantReach(t, "shop", "a", addr("b"), "b")
		wantRefused(t, "shop", "a2", addr("b"))
		deletePolicy(t, ctx, istio, mesh, denySA.Namespace, denySA.Name, ip("b"))
		// An ALLOW whose only source cannot be understood allows
		// nothing, rather than being left out (which would allow all).
		allowBad := bySA("b-from-bad-sa", secapi.AuthorizationPolicy_ALLOW, &secapi.Source{ServiceAccounts: []string{"front*"}})
		applyPolicy(t, ctx, istio, mesh, allowBad, ip("b"))
		wantRefused(t, "shop", "a", addr("b"))
		wantRefused(t, "shop", "a2", addr("b"))
		deletePolicy(t, ctx, istio, mesh, allowBad.Namespace, allowBad.Name, ip("b"))
		wantReach(t, "shop", "a2", addr("b"), "b")
	})

	t.Run("PeerAuthentication STRICT", func(t *testing.T) {
		pa := &securityv1.PeerAuthentication{
			ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: "shop"},
			Spec:       secapi.PeerAuthentication{Mtls: &secapi.PeerAuthentication_MutualTLS{Mode: secapi.PeerAuthentication_MutualTLS_STRICT}},
		}
		if _, err := istio.SecurityV1().PeerAuthentications("shop").Create(ctx, pa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := mesh.WaitPolicy(ctx, labmesh.IstiodNamespace, "istio_converted_static_strict", ip("b"), true); err != nil {
			t.Fatal(err)
		}
		wantRefused(t, "plain", "c", addr("b"))
		wantReach(t, "shop", "a", addr("b"), "b")
		if err := istio.SecurityV1().PeerAuthentications("shop").Delete(ctx, "default", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := mesh.WaitPolicy(ctx, labmesh.IstiodNamespace, "istio_converted_static_strict", ip("b"), false); err != nil {
			t.Fatal(err)
		}
		wantReach(t, "plain", "c", addr("b"), "b")
		noForbidden(t)
	})

	t.Run("certificates rotate under a long-lived connection", func(t *testing.T) {
		conn := dialPod(t, ctx, l, "shop", "a", addr("b"))
		if rep, err := roundTrip(conn, "first"); err != nil || rep.Hostname != "b" {
			t.Fatalf("a to b: got %+v, %v", rep, err)
		}
		first := certOf(t, ctx, l.Node("node1"), frontend)
		// Refreshed at half-life; then wait out the first certificate.
		if err := lab.PollUntil(ctx, certTTL, func() bool {
			c, ok := tryCertOf(ctx, l.Node("node1"), frontend)
			return ok && c.Serial != first.Serial
		}); err != nil {
			t.Fatalf("certificate of %s on node1: not renewed within %s (serial %s)", frontend, certTTL, first.Serial)
		}
		if err := lab.PollUntil(ctx, certTTL, func() bool { return time.Now().After(first.NotAfter) }); err != nil {
			t.Fatal(err)
		}
		if rep, err := roundTrip(conn, "after-rotation"); err != nil || rep.Hostname != "b" {
			t.Errorf("connection opened before rotation, after the old certificate expired: got %+v, %v; want b's answer", rep, err)
		}
		wantReach(t, "shop", "a", addr("b"), "b")
	})

	t.Run("unlabel un-enrols without restarts", func(t *testing.T) {
		setNSLabel(t, ctx, l, "shop", nil)
		for _, name := range enrolled {
			if err := mesh.WaitWorkload(ctx, ip(name), false); err != nil {
				t.Fatal(err)
			}
		}
		wantReach(t, "shop", "a", addr("b"), "b")
		notRestarted(t, ctx, l, pods, "shop")
		setNSLabel(t, ctx, l, "shop", ptr(enrolment.ModeAmbient))
		waitEnrolled(t, enrolled...)
	})

	t.Run("istiod restart", func(t *testing.T) {
		mesh.StopIstiod()
		wantReach(t, "shop", "a", addr("b"), "b") // ztunnels keep the last state
		run(t, "shop", "d", "node2", map[string]string{"app": "d"}, "")
		if err := mesh.StartIstiod(ctx, labmesh.IstiodOptions{CertTTL: certTTL}); err != nil {
			t.Fatal(err)
		}
		// 20s certificates may have expired while the CA was away.
		if err := mesh.WaitCertificates(ctx); err != nil {
			t.Fatal(err)
		}
		waitEnrolled(t, "d")
		wantReach(t, "shop", "a", addr("d"), "d")
	})

	t.Run("kube-apiserver restart", func(t *testing.T) {
		noForbidden(t) // the istiod started in the last subtest
		if err := l.RestartAPIServer(ctx); err != nil {
			t.Fatal(err)
		}
		// With 20s certificates, some expired while the CA could not
		// check tokens; ztunnels renew them once it can.
		if err := mesh.WaitCertificates(ctx); err != nil {
			t.Fatal(err)
		}
		wantReach(t, "shop", "a", addr("b"), "b")
		run(t, "shop", "e", "node1", map[string]string{"app": "e"}, "")
		waitEnrolled(t, "e")
		wantReach(t, "shop", "b", addr("e"), "e")
	})

	t.Run("node agent restart", func(t *testing.T) {
		conn := dialPod(t, ctx, l, "shop", "a", addr("b"))
		mesh.StopAgent(l.Node("node2"))
		if err := mesh.StartAgent(ctx, l.Node("node2")); err != nil {
			t.Fatal(err)
		}
		if rep, err := roundTrip(conn, "across-agent-restart"); err != nil || rep.Hostname != "b" {
			t.Errorf("connection across node2's agent restart: got %+v, %v", rep, err)
		}
		run(t, "shop", "f", "node2", map[string]string{"app": "f"}, "")
		waitEnrolled(t, "f")
		wantReach(t, "shop", "a", addr("f"), "f")
	})

	t.Run("ztunnel restart fails closed", func(t *testing.T) {
		capture, err := l.StartCapture(ctx, "v-node1")
		if err != nil {
			t.Fatal(err)
		}
		mesh.StopZtunnel(l.Node("node1"))
		secret := "AMBIT-SECRET-" + randHex()
		if rep, err := send("shop", "a", addr("b"), secret); err == nil {
			t.Errorf("a to b with node1's ztunnel down: got an answer from %s, want the connection to fail", rep.Hostname)
		}
		clear := "AMBIT-CLEAR-" + randHex()
		if _, err := send("plain", "c", addr("b"), clear); err != nil {
			t.Error(err)
		}
		if err := capture.NoneInClear(t.Context(), clear, secret); err != nil {
			t.Error(err)
		}
		if err := mesh.StartZtunnel(ctx, l.Node("node1")); err != nil {
			t.Fatal(err)
		}
		wantReach(t, "shop", "a", addr("b"), "b")
	})
}

// notRestarted checks that the pods still run as the same objects, never
// restarted.
func notRestarted(t *testing.T, ctx context.Context, l *lab.Lab, pods map[string]*corev1.Pod, ns string) {
	t.Helper()
	for name, was := range pods {
		if was.Namespace != ns {
			continue
		}
		p, err := l.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		restarts := int32(0)
		for _, cs := range p.Status.ContainerStatuses {
			restarts += cs.RestartCount
		}
		if p.UID != was.UID || restarts != 0 {
			t.Errorf("pod %s/%s: uid %s → %s, %d restarts; want the same pod, not restarted", ns, name, was.UID, p.UID, restarts)
		}
	}
}

// dialPod opens a TCP connection from inside pod ns/name (its network
// namespace, so the mesh captures it as the pod's own).
func dialPod(t *testing.T, ctx context.Context, l *lab.Lab, ns, name, addr string) net.Conn {
	t.Helper()
	pns, err := l.PodNetNS(ctx, ns, name)
	if err != nil {
		t.Fatal(err)
	}
	c, err := pns.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip sends one line on an open echo connection and reads the
// answer.
func roundTrip(c net.Conn, msg string) (echo.Report, error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return echo.RoundTrip(c, msg)
}

func applyPolicy(t *testing.T, ctx context.Context, istio istioclient.Interface, mesh *labmesh.Mesh, p *securityv1.AuthorizationPolicy, on string) {
	t.Helper()
	if _, err := istio.SecurityV1().AuthorizationPolicies(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := mesh.WaitPolicy(ctx, p.Namespace, p.Name, on, true); err != nil {
		t.Fatal(err)
	}
}

func deletePolicy(t *testing.T, ctx context.Context, istio istioclient.Interface, mesh *labmesh.Mesh, ns, name, on string) {
	t.Helper()
	if err := istio.SecurityV1().AuthorizationPolicies(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := mesh.WaitPolicy(ctx, ns, name, on, false); err != nil {
		t.Fatal(err)
	}
}

// tryCertOf reads node n's ztunnel's certificate for id from its config
// dump.
func tryCertOf(ctx context.Context, n *lab.Node, id identity.Identity) (identity.CertInfo, bool) {
	body, err := lab.HTTPGet(ctx, n.NS, labmesh.ZtunnelAdmin+"/config_dump")
	if err != nil {
		return identity.CertInfo{}, false
	}
	var d admin.Dump
	if err := json.Unmarshal([]byte(body), &d); err != nil {
		return identity.CertInfo{}, false
	}
	for _, c := range d.Certificates {
		if c.Identity == id.String() {
			return c, true
		}
	}
	return identity.CertInfo{}, false
}

func certOf(t *testing.T, ctx context.Context, n *lab.Node, id identity.Identity) identity.CertInfo {
	t.Helper()
	c, ok := tryCertOf(ctx, n, id)
	if !ok {
		t.Fatalf("ztunnel on %s: no certificate for %s in its config dump", n.Name, id)
	}
	return c
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

// nodeRule inserts an iptables rule (filter table) in a node's namespace
// and returns a function that deletes it; the test's cleanup deletes it
// too.
func nodeRule(t *testing.T, n *lab.Node, chain string, spec ...string) (del func()) {
	t.Helper()
	run := func(op string) error {
		args := append([]string{op, chain}, spec...)
		return n.NS.Do(func() error {
			if out, err := exec.Command("iptables", args...).CombinedOutput(); err != nil {
				return fmt.Errorf("iptables %s: %w: %s", strings.Join(args, " "), err, out)
			}
			return nil
		})
	}
	if err := run("-I"); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	del = func() {
		once.Do(func() {
			if err := run("-D"); err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(del)
	return del
}
