package istio_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	secapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambitmesh/ambit/e2e/internal/labmesh"
	"github.com/ambitmesh/ambit/e2e/istio"
	"github.com/ambitmesh/ambit/internal/caclient"
	"github.com/ambitmesh/ambit/internal/echo"
	"github.com/ambitmesh/ambit/internal/enrolment"
	"github.com/ambitmesh/ambit/internal/hbone"
	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/internal/testutil"
	"github.com/ambitmesh/ambit/ztunnel/admin"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

// mesh is one lab with Istio's istiod and Ambit's node agents and
// ztunnels on two nodes, and the pods every subtest uses:
//
//	shop (ambient)   a   node1  sa frontend  app=a
//	                 a2  node1  sa default   app=a2
//	                 b   node2  sa backend   app=b   Service b (80 → tcp)
//	                 b1  node1  sa default   app=b
//	                 opt node2  sa default   app=opt, dataplane-mode=none
//	other (ambient)  o   node1  sa frontend  app=o
//	plain            c   node1  sa default   app=c
type mesh struct {
	l     *lab.Lab
	mesh  *labmesh.Mesh
	istio istioclient.Interface
	ist   lab.Istio
	pilot *lab.Process
	pods  map[string]*corev1.Pod // by name
}

var (
	frontend = identity.Identity{TrustDomain: identity.DefaultTrustDomain, Namespace: "shop", ServiceAccount: "frontend"}
	backend  = identity.Identity{TrustDomain: identity.DefaultTrustDomain, Namespace: "shop", ServiceAccount: "backend"}
)

// TestIstiod runs Ambit's ztunnels and node agents against Istio's own
// istiod (pilot-discovery). The subtests share one lab and one istiod,
// in order; each leaves them as the next expects.
func TestIstiod(t *testing.T) {
	m := start(t)
	ctx := t.Context()

	t.Run("workload discovery", func(t *testing.T) {
		// Istio's istiod sends the enrolled pods as HBONE workloads with
		// their identities, and the others as workloads without it.
		for _, name := range []string{"a", "a2", "b", "b1", "o"} {
			p := m.pods[name]
			id := identity.Identity{TrustDomain: identity.DefaultTrustDomain, Namespace: p.Namespace, ServiceAccount: p.Spec.ServiceAccountName}
			if err := m.mesh.WaitZtunnels(ctx, fmt.Sprintf("workload %s as %s on %s", name, id, p.Spec.NodeName), func(d *admin.Dump) bool {
				w := workloadAt(d, p.Status.PodIP)
				return w != nil && w.HBONE() && w.Name == name && w.Identity() == id && w.Node == p.Spec.NodeName
			}); err != nil {
				t.Error(err)
			}
		}
		for _, name := range []string{"opt", "c"} {
			if err := m.mesh.WaitWorkload(ctx, m.ip(name), false); err != nil {
				t.Error(err)
			}
		}
		// The Service with its VIP and port, and its endpoints' target
		// port (a named one, resolved per pod).
		svc, err := m.l.Client.CoreV1().Services("shop").Get(ctx, "b", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		vip := netip.MustParseAddr(svc.Spec.ClusterIP)
		if err := m.mesh.WaitZtunnels(ctx, "service shop/b", func(d *admin.Dump) bool {
			i := slices.IndexFunc(d.Services, func(s *config.Service) bool { return s.Key() == "shop/b.shop.svc.cluster.local" })
			if i < 0 || !slices.ContainsFunc(d.Services[i].Addresses, func(a config.NetworkAddress) bool { return a.Address == vip }) {
				return false
			}
			for _, name := range []string{"b", "b1"} {
				w := workloadAt(d, m.ip(name))
				if w == nil || !slices.ContainsFunc(w.Services["shop/b.shop.svc.cluster.local"].Ports, func(p config.Port) bool {
					return p.ServicePort == 80 && p.TargetPort == 9000
				}) {
					return false
				}
			}
			return true
		}); err != nil {
			t.Error(err)
		}
	})

	t.Run("certificates from Istio's CA", func(t *testing.T) {
		root := m.root(t)
		// Istio's CA made its own root, as it does on a cluster without
		// cacerts.
		sec, err := m.l.Client.CoreV1().Secrets(labmesh.IstiodNamespace).Get(ctx, "istio-ca-secret", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("Istio's self-signed CA: %v", err)
		}
		if caCert := parseCert(t, sec.Data["ca-cert.pem"]); !caCert.Equal(root) {
			t.Errorf("istio-ca-root-cert: got %s, want the root of istio-ca-secret %s", root.Subject, caCert.Subject)
		}
		// Each ztunnel holds certificates for the identities of its
		// node's workloads, issued by Istio's root.
		for node, ids := range map[string][]identity.Identity{
			"node1": {frontend, {TrustDomain: identity.DefaultTrustDomain, Namespace: "other", ServiceAccount: "frontend"}},
			"node2": {backend},
		} {
			for _, id := range ids {
				c := certOf(t, ctx, m.l.Node(node), id)
				if c.State != identity.StateAvailable || c.Issuer != root.Subject.String() {
					t.Errorf("ztunnel on %s: certificate of %s: got %s from %q, want available from Istio's root %q", node, id, c.State, c.Issuer, root.Subject)
				}
			}
		}

		// Istio's CA directly, with each ztunnel's own token: node2's
		// ztunnel may have backend's certificate (b runs there), node1's
		// may not (no pod of backend runs on node1).
		fwd := forward(t, m.l.ControlPlaneNS(), labmesh.IstiodAddr())
		roots := x509.NewCertPool()
		roots.AddCert(root)
		for _, tc := range []struct {
			node    string
			allowed bool
		}{{"node2", true}, {"node1", false}} {
			cc, err := caclient.New(caclient.Config{
				Address: fwd, ServerName: labmesh.IstiodServerName, Roots: roots,
				TokenFile: m.mesh.ZtunnelTokenPath(m.l.Node(tc.node)),
			})
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			cert, err := cc.Certificate(ctx, backend)
			switch {
			case tc.allowed && err != nil:
				t.Errorf("ztunnel of %s asks Istio's CA for %s: got %v, want a certificate", tc.node, backend, err)
			case tc.allowed:
				if _, err := (&identity.Verifier{Roots: roots}).VerifyExpected(cert.Certificate, backend); err != nil {
					t.Errorf("certificate of %s from Istio's CA: %v", backend, err)
				}
			case err == nil:
				t.Errorf("ztunnel of %s asks Istio's CA for %s: got a certificate, want a refusal (no pod of it runs on %s)", tc.node, backend, tc.node)
			case !errors.Is(err, caclient.ErrUnauthenticated):
				t.Errorf("ztunnel of %s asks Istio's CA for %s: got %v, want Istio's refusal of the impersonation (Unauthenticated)", tc.node, backend, err)
			}
		}
	})

	t.Run("mTLS across nodes", func(t *testing.T) {
		capture, err := m.l.StartCapture(ctx, "v-node1")
		if err != nil {
			t.Fatal(err)
		}
		secret, clear := "AMBIT-SECRET-"+randHex(), "AMBIT-CLEAR-"+randHex()
		if rep, err := m.send("a", m.addr("b"), secret); err != nil || rep.Hostname != "b" || rep.Message != secret {
			t.Errorf("a to b: got %+v, %v; want b's echo of the secret", rep, err)
		}
		if _, err := m.send("c", m.addr("b"), clear); err != nil {
			t.Error(err)
		}
		if err := capture.NoneInClear(t.Context(), clear, secret); err != nil {
			t.Error(err)
		}
		m.wantReach(t, "a", m.addr("b"), "b")
		metrics, err := lab.HTTPGet(ctx, m.l.Node("node2").NS, labmesh.ZtunnelMetrics)
		if err != nil {
			t.Fatal(err)
		}
		if want := `source_principal="` + frontend.String() + `"`; !strings.Contains(metrics, want) {
			t.Errorf("node2 ztunnel metrics: no series with %s", want)
		}

		// node2's ztunnel takes a tunnel from node1 with a certificate of
		// Istio's CA, and refuses the same identity from another CA.
		root := m.root(t)
		roots := x509.NewCertPool()
		roots.AddCert(root)
		cc, err := caclient.New(caclient.Config{
			Address: forward(t, m.l.ControlPlaneNS(), labmesh.IstiodAddr()), ServerName: labmesh.IstiodServerName, Roots: roots,
			TokenFile: m.mesh.ZtunnelTokenPath(m.l.Node("node1")),
		})
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		istioCert, err := cc.Certificate(ctx, frontend)
		if err != nil {
			t.Fatalf("certificate of %s from Istio's CA for node1: %v", frontend, err)
		}
		foreign, err := identity.NewCA(identity.DefaultTrustDomain)
		if err != nil {
			t.Fatal(err)
		}
		foreignCert, err := foreign.Issue(frontend, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		target := netip.MustParseAddrPort(m.addr("b"))
		tunnel := netip.AddrPortFrom(target.Addr(), 15008)
		dial := func(cert *tls.Certificate) (*hbone.ClientConn, error) {
			return hbone.Dial(ctx, tunnel, hbone.ClientConfig{
				Certificate: cert, Verifier: &identity.Verifier{Roots: roots},
				Expected: backend, Dialer: m.l.Node("node1").NS,
			})
		}
		hc, err := dial(istioCert)
		if err != nil {
			t.Fatalf("tunnel from node1 to b with Istio's certificate: %v", err)
		}
		defer hc.Close()
		c, err := hc.Connect(ctx, target, nil)
		if err != nil {
			t.Fatalf("CONNECT to b through the tunnel: %v", err)
		}
		rep, err := roundTrip(c, "through-the-tunnel")
		c.Close()
		if err != nil || rep.Hostname != "b" {
			t.Errorf("CONNECT to b with Istio's certificate: got %+v, %v; want b's answer", rep, err)
		}
		if hc, err := dial(foreignCert); err == nil {
			hc.Close()
			t.Errorf("tunnel to b with %s from a CA that is not Istio's: got a connection, want the handshake refused", frontend)
		}
	})

	t.Run("Service VIP", func(t *testing.T) {
		seen := map[string]int{}
		for i := range 12 {
			to := "b:80"
			if i%2 == 1 {
				to = "b.shop.svc.cluster.local:80"
			}
			rep, err := m.send("a", to, "via-service")
			if err != nil {
				t.Fatal(err)
			}
			if host, _, _ := net.SplitHostPort(rep.Peer); host != m.ip("a") {
				t.Errorf("a to %s: %s saw its client at %s, want a's own address %s", to, rep.Hostname, rep.Peer, m.ip("a"))
			}
			seen[rep.Hostname]++
		}
		if seen["b"] == 0 || seen["b1"] == 0 || len(seen) != 2 {
			t.Errorf("12 connections to Service b: got answers %v, want both b (node2) and b1 (node1)", seen)
		}
		// Through the VIP, the endpoints' policies apply.
		p := m.policy("vip-principal", secapi.AuthorizationPolicy_ALLOW, &secapi.Rule{From: from(&secapi.Source{Principals: []string{"cluster.local/ns/shop/sa/frontend"}})})
		m.apply(t, p)
		for range 4 {
			m.wantReachAny(t, "a", "b:80", "b", "b1")
			m.wantRefused(t, "a2", "b:80")
		}
		m.remove(t, p)
	})

	t.Run("authorization policies", func(t *testing.T) {
		for _, tc := range m.policyCases() {
			t.Run(tc.name, func(t *testing.T) {
				p := m.policy(objectName(tc.name), tc.action, tc.rule)
				if tc.namespace != "" {
					p.Namespace = tc.namespace
				}
				if tc.everywhere {
					p.Spec.Selector = nil
				}
				m.apply(t, p)
				defer m.remove(t, p)
				for _, h := range tc.reach {
					m.wantReach(t, h.from, m.target(h.to), h.host())
				}
				for _, h := range tc.refuse {
					m.wantDenied(t, h.from, m.target(h.to))
				}
			})
		}
	})

	t.Run("PeerAuthentication STRICT", func(t *testing.T) {
		m.wantReach(t, "c", m.addr("b"), "b")
		pa := &securityv1.PeerAuthentication{
			ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: "shop"},
			Spec:       secapi.PeerAuthentication{Mtls: &secapi.PeerAuthentication_MutualTLS{Mode: secapi.PeerAuthentication_MutualTLS_STRICT}},
		}
		if _, err := m.istio.SecurityV1().PeerAuthentications("shop").Create(ctx, pa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// Istio's istiod sends namespace STRICT as its static policy,
		// bound to the namespace's workloads.
		if err := m.mesh.WaitPolicy(ctx, labmesh.IstiodNamespace, "istio_converted_static_strict", m.ip("b"), true); err != nil {
			t.Fatal(err)
		}
		m.wantDenied(t, "c", m.addr("b"))
		m.wantReach(t, "a", m.addr("b"), "b")
		m.wantReach(t, "o", m.addr("b"), "b")
		if err := m.istio.SecurityV1().PeerAuthentications("shop").Delete(ctx, "default", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := m.mesh.WaitZtunnels(ctx, "STRICT gone from b", func(d *admin.Dump) bool {
			w := workloadAt(d, m.ip("b"))
			return w != nil && !slices.Contains(w.AuthorizationPolicies, labmesh.IstiodNamespace+"/istio_converted_static_strict")
		}); err != nil {
			t.Fatal(err)
		}
		m.wantReach(t, "c", m.addr("b"), "b")
	})

	t.Run("PeerAuthentication STRICT but a PERMISSIVE port", func(t *testing.T) {
		// A workload's own PeerAuthentication with port-level mTLS,
		// which Istio's istiod sends as a DENY of its own
		// (converted_peer_authentication_<name>): plain text only on
		// 8080.
		pa := &securityv1.PeerAuthentication{
			ObjectMeta: metav1.ObjectMeta{Name: "b-strict", Namespace: "shop"},
			Spec: secapi.PeerAuthentication{
				Selector:      &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "b"}},
				Mtls:          &secapi.PeerAuthentication_MutualTLS{Mode: secapi.PeerAuthentication_MutualTLS_STRICT},
				PortLevelMtls: map[uint32]*secapi.PeerAuthentication_MutualTLS{8080: {Mode: secapi.PeerAuthentication_MutualTLS_PERMISSIVE}},
			},
		}
		if _, err := m.istio.SecurityV1().PeerAuthentications("shop").Create(ctx, pa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		const converted = "shop/converted_peer_authentication_b-strict"
		bound := func(want bool) func(d *admin.Dump) bool {
			return func(d *admin.Dump) bool {
				has := slices.ContainsFunc(d.Policies, func(a *config.Authorization) bool { return a.Key() == converted })
				for _, name := range []string{"b", "b1"} {
					w := workloadAt(d, m.ip(name))
					has = has && w != nil && slices.Contains(w.AuthorizationPolicies, converted)
				}
				return has == want
			}
		}
		if err := m.mesh.WaitZtunnels(ctx, converted+" on b and b1", bound(true)); err != nil {
			t.Fatal(err)
		}
		m.wantDenied(t, "c", m.addr("b"))
		m.wantDenied(t, "c", m.addr("b1"))
		m.wantReach(t, "c", m.target("b:8080"), "b")
		m.wantReach(t, "a", m.addr("b"), "b")
		if err := m.istio.SecurityV1().PeerAuthentications("shop").Delete(ctx, pa.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := m.mesh.WaitZtunnels(ctx, converted+" gone", bound(false)); err != nil {
			t.Fatal(err)
		}
		m.wantReach(t, "c", m.addr("b"), "b")
	})

	t.Run("no rejects", func(t *testing.T) { m.wantNoRejects(t, false) })

	t.Run("istiod restart", func(t *testing.T) {
		// What changed while Istio's istiod was away reaches the ztunnels
		// once it is back: they resume their streams with the versions
		// they hold, and Istio's istiod sends what changed and removes
		// what went. A policy removed meanwhile and kept would still
		// allow what it allowed.
		rootBefore := m.root(t)
		allow := m.policy("b-from-frontend", secapi.AuthorizationPolicy_ALLOW, &secapi.Rule{From: from(&secapi.Source{Principals: []string{"cluster.local/ns/shop/sa/frontend"}})})
		m.apply(t, allow)
		deny := m.policy("b-deny-a", secapi.AuthorizationPolicy_DENY, &secapi.Rule{From: from(&secapi.Source{IpBlocks: []string{m.ip("a") + "/32"}})})
		m.pilot.Stop(5 * time.Second)
		// The last state holds.
		m.wantReach(t, "a", m.addr("b"), "b")
		m.wantDenied(t, "a2", m.addr("b"))
		if err := m.istio.SecurityV1().AuthorizationPolicies("shop").Delete(ctx, allow.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := m.istio.SecurityV1().AuthorizationPolicies("shop").Create(ctx, deny, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		defer m.remove(t, deny)
		if err := m.l.DeletePod(ctx, "shop", "opt"); err != nil {
			t.Fatal(err)
		}
		d, err := m.l.RunPod(ctx, lab.EchoPod("shop", "d", "node2", map[string]string{"app": "d"}))
		if err != nil {
			t.Fatal(err)
		}
		m.pods["d"] = d

		if m.pilot, err = istio.StartPilot(ctx, m.l, m.mesh, m.ist); err != nil {
			t.Fatal(err)
		}
		if root := m.root(t); !root.Equal(rootBefore) {
			t.Errorf("Istio's istiod restarted with root %s, want the one of istio-ca-secret from before %s", root.Subject, rootBefore.Subject)
		}
		if err := m.mesh.WaitPolicy(ctx, "shop", allow.Name, m.ip("b"), false); err != nil {
			t.Error(err)
		}
		if err := m.mesh.WaitPolicy(ctx, "shop", deny.Name, m.ip("b"), true); err != nil {
			t.Error(err)
		}
		if err := m.mesh.WaitZtunnels(ctx, "shop/opt gone", func(d *admin.Dump) bool {
			return !slices.ContainsFunc(d.Workloads, func(w *config.Workload) bool { return w.Namespace == "shop" && w.Name == "opt" })
		}); err != nil {
			t.Error(err)
		}
		if err := m.mesh.WaitWorkload(ctx, m.ip("d"), true); err != nil {
			t.Fatal(err)
		}
		if err := m.mesh.WaitCertificates(ctx); err != nil {
			t.Fatal(err)
		}
		m.wantReach(t, "a2", m.addr("b"), "b")
		m.wantDenied(t, "a", m.addr("b"))
		m.wantReach(t, "a", m.addr("d"), "d")
		m.wantNoRejects(t, true)
	})

	t.Run("Ambit's waypoint", m.goWaypoint)
}

// wantNoRejects checks that the ztunnels took every resource Istio's
// istiod sent and understood all of it: no NACK on either side, no
// policy enforced stricter for parts not understood, and, unless istiod
// restarted, no xDS stream lost.
func (m *mesh) wantNoRejects(t *testing.T, restarted bool) {
	t.Helper()
	bad := []string{`"xds NACK"`, "not understood"}
	if !restarted {
		bad = append(bad, `"xds disconnected"`)
	}
	for _, n := range m.l.Nodes {
		for line := range strings.Lines(m.mesh.Ztunnel(n).Logs(1 << 20)) {
			for _, bad := range bad {
				if strings.Contains(line, bad) {
					t.Errorf("ztunnel on %s: got %s", n.Name, line)
				}
			}
		}
		metrics, err := lab.HTTPGet(t.Context(), n.NS, labmesh.ZtunnelMetrics)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range samples(metrics, "ambit_xds_nacks_total") {
			t.Errorf("ztunnel on %s: got %s, want no NACK", n.Name, s)
		}
	}
	metrics, err := lab.HTTPGet(t.Context(), m.l.ControlPlaneNS(), "http://127.0.0.1:15014/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(metrics, "pilot_xds_pushes") {
		t.Fatalf("Istio's istiod metrics: no pilot_xds_pushes; not its metrics?\n%s", metrics)
	}
	for _, s := range samples(metrics, "pilot_total_xds_rejects") {
		t.Errorf("Istio's istiod: got %s, want no rejected response", s)
	}
}

// samples returns the Prometheus samples of metric in text whose value
// is not 0.
func samples(text, metric string) []string {
	var out []string
	for line := range strings.Lines(text) {
		line = strings.TrimSpace(line)
		name, _, _ := strings.Cut(line, "{")
		name, _, _ = strings.Cut(name, " ")
		if name != metric {
			continue
		}
		if f := strings.Fields(line); f[len(f)-1] != "0" {
			out = append(out, line)
		}
	}
	return out
}

// hop is a connection a policy case makes: from a pod to "b", "b1" (port
// 9000, TCP) or "b:8080" (HTTP).
type hop struct{ from, to string }

func (h hop) host() string { return strings.Split(h.to, ":")[0] }

type policyCase struct {
	name   string
	action secapi.AuthorizationPolicy_Action
	rule   *secapi.Rule
	// namespace is the policy's, shop if empty; everywhere drops its
	// selector (app=b), so it holds for its whole namespace, or the
	// whole mesh in the root namespace.
	namespace     string
	everywhere    bool
	reach, refuse []hop
}

// policyCases are the L4 fields of AuthorizationPolicy that ztunnel
// enforces, each in a policy on app=b (b and b1) that some connections
// pass and others do not.
func (m *mesh) policyCases() []policyCase {
	const (
		allow = secapi.AuthorizationPolicy_ALLOW
		deny  = secapi.AuthorizationPolicy_DENY
	)
	src := func(s *secapi.Source) *secapi.Rule { return &secapi.Rule{From: from(s)} }
	op := func(o *secapi.Operation) *secapi.Rule { return &secapi.Rule{To: []*secapi.Rule_To{{Operation: o}}} }
	when := func(key string, values, notValues []string) *secapi.Rule {
		return &secapi.Rule{When: []*secapi.Condition{{Key: key, Values: values, NotValues: notValues}}}
	}
	frontendP := "cluster.local/ns/shop/sa/frontend"
	a32 := m.ip("a") + "/32"
	return []policyCase{
		{name: "principals", action: allow, rule: src(&secapi.Source{Principals: []string{frontendP}}),
			reach:  []hop{{"a", "b"}},
			refuse: []hop{{"a2", "b"}, {"o", "b"}, {"c", "b"}}},
		{name: "principals prefix", action: allow, rule: src(&secapi.Source{Principals: []string{"cluster.local/ns/shop/*"}}),
			reach:  []hop{{"a", "b"}, {"a2", "b"}},
			refuse: []hop{{"o", "b"}, {"c", "b"}}},
		{name: "principals suffix", action: allow, rule: src(&secapi.Source{Principals: []string{"*/sa/frontend"}}),
			reach:  []hop{{"a", "b"}, {"o", "b"}},
			refuse: []hop{{"a2", "b"}, {"c", "b"}}},
		{name: "principals any", action: allow, rule: src(&secapi.Source{Principals: []string{"*"}}),
			reach:  []hop{{"a", "b"}, {"a2", "b"}, {"o", "b"}},
			refuse: []hop{{"c", "b"}}},
		{name: "notPrincipals any", action: allow, rule: src(&secapi.Source{NotPrincipals: []string{"*"}}),
			reach:  []hop{{"c", "b"}},
			refuse: []hop{{"a", "b"}, {"o", "b"}}},
		{name: "notPrincipals", action: allow, rule: src(&secapi.Source{NotPrincipals: []string{frontendP}}),
			reach:  []hop{{"a2", "b"}, {"o", "b"}},
			refuse: []hop{{"a", "b"}}},
		{name: "namespaces", action: allow, rule: src(&secapi.Source{Namespaces: []string{"other"}}),
			reach:  []hop{{"o", "b"}},
			refuse: []hop{{"a", "b"}, {"c", "b"}}},
		{name: "namespaces prefix", action: allow, rule: src(&secapi.Source{Namespaces: []string{"oth*"}}),
			reach:  []hop{{"o", "b"}},
			refuse: []hop{{"a", "b"}, {"c", "b"}}},
		{name: "notNamespaces", action: allow, rule: src(&secapi.Source{NotNamespaces: []string{"shop"}}),
			reach:  []hop{{"o", "b"}},
			refuse: []hop{{"a", "b"}, {"a2", "b"}}},
		{name: "serviceAccounts ns-sa", action: allow, rule: src(&secapi.Source{ServiceAccounts: []string{"shop/frontend"}}),
			reach:  []hop{{"a", "b"}},
			refuse: []hop{{"a2", "b"}, {"o", "b"}, {"c", "b"}}},
		{name: "serviceAccounts bare", action: allow, rule: src(&secapi.Source{ServiceAccounts: []string{"frontend"}}),
			// A bare name is in the policy's namespace: other/frontend
			// is not it.
			reach:  []hop{{"a", "b"}},
			refuse: []hop{{"o", "b"}, {"a2", "b"}, {"c", "b"}}},
		{name: "notServiceAccounts", action: allow, rule: src(&secapi.Source{NotServiceAccounts: []string{"shop/frontend"}}),
			reach:  []hop{{"a2", "b"}, {"o", "b"}},
			refuse: []hop{{"a", "b"}}},
		{name: "ipBlocks", action: allow, rule: src(&secapi.Source{IpBlocks: []string{a32}}),
			reach:  []hop{{"a", "b"}},
			refuse: []hop{{"a2", "b"}, {"o", "b"}}},
		{name: "notIpBlocks", action: allow, rule: src(&secapi.Source{NotIpBlocks: []string{a32}}),
			reach:  []hop{{"a2", "b"}, {"o", "b"}},
			refuse: []hop{{"a", "b"}}},
		{name: "ports", action: allow, rule: op(&secapi.Operation{Ports: []string{"9000"}}),
			reach:  []hop{{"a", "b"}},
			refuse: []hop{{"a", "b:8080"}}},
		{name: "notPorts", action: allow, rule: op(&secapi.Operation{NotPorts: []string{"9000"}}),
			reach:  []hop{{"a", "b:8080"}},
			refuse: []hop{{"a", "b"}}},
		{name: "when source.ip", action: allow, rule: when("source.ip", []string{a32}, nil),
			reach:  []hop{{"a", "b"}},
			refuse: []hop{{"a2", "b"}}},
		{name: "when source.namespace", action: allow, rule: when("source.namespace", []string{"other"}, nil),
			reach:  []hop{{"o", "b"}},
			refuse: []hop{{"a", "b"}}},
		{name: "when source.namespace notValues", action: allow, rule: when("source.namespace", nil, []string{"shop"}),
			reach:  []hop{{"o", "b"}},
			refuse: []hop{{"a", "b"}}},
		{name: "when source.principal", action: allow, rule: when("source.principal", []string{frontendP}, nil),
			reach:  []hop{{"a", "b"}},
			refuse: []hop{{"a2", "b"}, {"o", "b"}}},
		{name: "when destination.port", action: allow, rule: when("destination.port", []string{"9000"}, nil),
			reach:  []hop{{"a", "b"}},
			refuse: []hop{{"a", "b:8080"}}},
		{name: "when destination.ip", action: allow, rule: when("destination.ip", []string{m.ip("b")}, nil),
			reach:  []hop{{"a", "b"}},
			refuse: []hop{{"a", "b1"}}},
		{name: "deny namespaces and ports", action: deny, rule: &secapi.Rule{
			From: from(&secapi.Source{Namespaces: []string{"shop"}}),
			To:   []*secapi.Rule_To{{Operation: &secapi.Operation{Ports: []string{"9000"}}}},
		},
			reach:  []hop{{"a", "b:8080"}, {"o", "b"}, {"c", "b"}},
			refuse: []hop{{"a", "b"}, {"a2", "b"}}},
		{name: "deny principals", action: deny, rule: src(&secapi.Source{Principals: []string{frontendP}}),
			reach:  []hop{{"a2", "b"}, {"o", "b"}, {"c", "b"}},
			refuse: []hop{{"a", "b"}}},
		// Scopes: Istio sends a policy without a selector as NAMESPACE,
		// in the root namespace as GLOBAL, bound to no workload.
		{name: "namespace-wide principals", action: allow, everywhere: true, rule: src(&secapi.Source{Principals: []string{frontendP}}),
			reach:  []hop{{"a", "b"}, {"a", "b1"}},
			refuse: []hop{{"a2", "b"}, {"o", "b1"}}},
		{name: "mesh-wide deny namespaces", action: deny, namespace: labmesh.IstiodNamespace, everywhere: true,
			rule:   src(&secapi.Source{Namespaces: []string{"other"}}),
			reach:  []hop{{"a", "b"}, {"c", "b"}},
			refuse: []hop{{"o", "b"}, {"o", "b1"}}},
	}
}

// objectName makes a case's name a Kubernetes object name: "when
// source.ip" is when-source-ip.
func objectName(s string) string {
	return strings.Trim(strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			return r
		case r >= 'A' && r <= 'Z':
			return r - 'A' + 'a'
		}
		return '-'
	}, s), "-")
}

func from(s *secapi.Source) []*secapi.Rule_From { return []*secapi.Rule_From{{Source: s}} }

// policy is an AuthorizationPolicy in shop on app=b with one rule.
func (m *mesh) policy(name string, action secapi.AuthorizationPolicy_Action, rule *secapi.Rule) *securityv1.AuthorizationPolicy {
	return &securityv1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"},
		Spec: secapi.AuthorizationPolicy{
			Selector: &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "b"}},
			Action:   action,
			Rules:    []*secapi.Rule{rule},
		},
	}
}

// apply creates the policy and waits until every ztunnel has it bound to
// b and b1.
func (m *mesh) apply(t *testing.T, p *securityv1.AuthorizationPolicy) {
	t.Helper()
	if _, err := m.istio.SecurityV1().AuthorizationPolicies(p.Namespace).Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, on := range []string{"b", "b1"} {
		if err := m.mesh.WaitPolicy(t.Context(), p.Namespace, p.Name, m.ip(on), true); err != nil {
			t.Fatal(err)
		}
	}
}

// remove deletes the policy and waits until no ztunnel has it.
func (m *mesh) remove(t *testing.T, p *securityv1.AuthorizationPolicy) {
	t.Helper()
	ctx := context.WithoutCancel(t.Context())
	if err := m.istio.SecurityV1().AuthorizationPolicies(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := m.mesh.WaitPolicy(ctx, p.Namespace, p.Name, m.ip("b"), false); err != nil {
		t.Fatal(err)
	}
}

func (m *mesh) ip(name string) string { return m.pods[name].Status.PodIP }

func (m *mesh) addr(name string) string { return net.JoinHostPort(m.ip(name), "9000") }

// target turns a hop's "b" or "b:8080" into an address.
func (m *mesh) target(to string) string {
	name, port, ok := strings.Cut(to, ":")
	if !ok {
		port = "9000"
	}
	return net.JoinHostPort(m.ip(name), port)
}

// send connects from pod name to addr (TCP echo on 9000, HTTP on 8080)
// and returns the answering pod's report.
func (m *mesh) send(name, to, msg string) (echo.Report, error) {
	p := m.pods[name]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	argv := []string{m.l.Binaries().Echo, "tcp", to, msg}
	if strings.HasSuffix(to, ":8080") {
		argv = []string{m.l.Binaries().Echo, "http", "http://" + to + "/"}
	}
	out, err := m.l.Exec(ctx, p.Namespace, name, argv...)
	if err != nil {
		return echo.Report{}, fmt.Errorf("%s/%s to %s: %w: %s", p.Namespace, name, to, err, out)
	}
	var rep echo.Report
	if err := json.Unmarshal(out, &rep); err != nil {
		return rep, fmt.Errorf("%s/%s to %s: decode %q: %w", p.Namespace, name, to, out, err)
	}
	return rep, nil
}

// wantReach checks that pod name reaches to, answered by host, which saw
// the client's own address.
func (m *mesh) wantReach(t *testing.T, name, to, host string) {
	t.Helper()
	m.wantReachAny(t, name, to, host)
}

func (m *mesh) wantReachAny(t *testing.T, name, to string, hosts ...string) {
	t.Helper()
	rep, err := m.send(name, to, "hello")
	if err != nil || !slices.Contains(hosts, rep.Hostname) {
		t.Errorf("%s to %s: got %+v, %v; want an answer from %s", name, to, rep, err, strings.Join(hosts, " or "))
		return
	}
	if host, _, _ := net.SplitHostPort(rep.Peer); host != m.ip(name) {
		t.Errorf("%s to %s: %s saw its client at %s, want %s's own address %s", name, to, rep.Hostname, rep.Peer, name, m.ip(name))
	}
}

// wantRefused checks that pod name does not reach to.
func (m *mesh) wantRefused(t *testing.T, name, to string) {
	t.Helper()
	if rep, err := m.send(name, to, "hello"); err == nil {
		t.Errorf("%s to %s: got an answer from %s, want the connection refused", name, to, rep.Hostname)
	}
}

// wantDenied checks that pod name does not reach to, a pod's ip:port,
// and that the destination's ztunnel refused it for its policies (not,
// say, for want of a certificate on the way).
func (m *mesh) wantDenied(t *testing.T, name, to string) {
	t.Helper()
	ip, _, _ := net.SplitHostPort(to)
	var dst *lab.Node
	for _, p := range m.pods {
		if p.Status.PodIP == ip {
			dst = m.l.Node(p.Spec.NodeName)
		}
	}
	if dst == nil {
		t.Fatalf("%s to %s: no pod there", name, to)
	}
	// The refusal names the client: its identity on a tunnel, its
	// address in plain text.
	src := m.pods[name]
	client := fmt.Sprintf(`"src.addr":"%s:`, src.Status.PodIP)
	if src.Namespace != "plain" {
		client = fmt.Sprintf(`"peer":"spiffe://cluster.local/ns/%s/sa/%s"`, src.Namespace, src.Spec.ServiceAccountName)
	}
	denials := func() int {
		n := 0
		for line := range strings.Lines(m.mesh.Ztunnel(dst).Logs(1 << 20)) {
			if strings.Contains(line, "denied by policy") && strings.Contains(line, client) && strings.Contains(line, to) {
				n++
			}
		}
		return n
	}
	before := denials()
	m.wantRefused(t, name, to)
	if err := lab.PollUntil(t.Context(), 5*time.Second, func() bool { return denials() > before }); err != nil {
		t.Errorf("%s to %s: refused, but %s's ztunnel logged no denial by policy of %s", name, to, dst.Name, client)
	}
}

// root is Istio's mesh root as istiod publishes it.
func (m *mesh) root(t *testing.T) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(m.mesh.RootCertPath())
	if err != nil {
		t.Fatal(err)
	}
	return parseCert(t, data)
}

func parseCert(t *testing.T, data []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatalf("no PEM certificate in %q", data)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func workloadAt(d *admin.Dump, ip string) *config.Workload {
	addr := netip.MustParseAddr(ip)
	for _, w := range d.Workloads {
		if slices.Contains(w.Addresses, addr) {
			return w
		}
	}
	return nil
}

// certOf reads node n's ztunnel's certificate for id from its config
// dump, waiting for it to be there.
func certOf(t *testing.T, ctx context.Context, n *lab.Node, id identity.Identity) identity.CertInfo {
	t.Helper()
	var got identity.CertInfo
	err := lab.WaitHTTPBody(ctx, n.NS, labmesh.ZtunnelAdmin+"/config_dump", 30*time.Second, func(body string) bool {
		var d admin.Dump
		if json.Unmarshal([]byte(body), &d) != nil {
			return false
		}
		i := slices.IndexFunc(d.Certificates, func(c identity.CertInfo) bool { return c.Identity == id.String() })
		if i >= 0 {
			got = d.Certificates[i]
		}
		return i >= 0 && got.State == identity.StateAvailable
	})
	if err != nil && got.Identity == "" {
		t.Fatalf("ztunnel on %s: no certificate for %s in its config dump: %v", n.Name, id, err)
	}
	return got
}

// start starts the lab, Istio's istiod, Ambit's node agents and ztunnels,
// and the pods, and tears it all down after the test, checking that
// nothing is left behind.
func start(t *testing.T) *mesh {
	t.Helper()
	testutil.RequireRoot(t)
	ctx := t.Context()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	bins, err := lab.EnsureBinaries(ctx, lab.BuildOptions{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ist, err := lab.EnsureIstio(ctx, lab.BuildOptions{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	l, err := lab.Start(ctx, lab.Config{Nodes: 2, Binaries: bins, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	m := &mesh{l: l, ist: ist, pods: map[string]*corev1.Pod{}}
	t.Cleanup(func() {
		if t.Failed() {
			if m.pilot != nil {
				t.Logf("Istio's istiod:\n%s", m.pilot.Logs(60))
			}
			for _, n := range l.Nodes {
				if p := m.mesh.Ztunnel(n); p != nil {
					t.Logf("ztunnel on %s:\n%s", n.Name, p.Logs(40))
				}
			}
			t.Logf("lab logs:\n%s", l.Logs(20))
		}
		if err := l.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
		left, err := lab.Leftovers(l.ID)
		if err != nil {
			t.Errorf("check lab leftovers: %v", err)
		}
		if len(left) > 0 {
			t.Errorf("after Close: got leftovers %v, want none", left)
		}
	})
	if m.mesh, err = labmesh.New(l); err != nil {
		t.Fatal(err)
	}
	if m.istio, err = istioclient.NewForConfig(l.RESTConfig); err != nil {
		t.Fatal(err)
	}
	if m.pilot, err = istio.StartPilot(ctx, l, m.mesh, ist); err != nil {
		t.Fatal(err)
	}
	t.Logf("Istio's istiod %s (%s) is ready", ist.Version, ist.Revision)
	if err := m.mesh.StartAgents(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.mesh.StartZtunnels(ctx); err != nil {
		t.Fatal(err)
	}

	ambient := map[string]string{enrolment.LabelDataplaneMode: enrolment.ModeAmbient}
	for ns, labels := range map[string]map[string]string{"shop": ambient, "other": ambient, "plain": nil} {
		if err := l.CreateNamespace(ctx, ns, labels); err != nil {
			t.Fatal(err)
		}
	}
	for _, sa := range []struct{ ns, name string }{{"shop", "frontend"}, {"shop", "backend"}, {"other", "frontend"}} {
		if _, err := l.Client.CoreV1().ServiceAccounts(sa.ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa.name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
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
	m.run(t,
		podSpec{"shop", "a", "node1", "a", "frontend"},
		podSpec{"shop", "a2", "node1", "a2", ""},
		podSpec{"shop", "b", "node2", "b", "backend"},
		podSpec{"shop", "b1", "node1", "b", ""},
		podSpec{"shop", "opt", "node2", "opt", ""},
		podSpec{"other", "o", "node1", "o", "frontend"},
		podSpec{"plain", "c", "node1", "c", ""},
	)
	for _, ep := range []string{"b", "b1"} {
		if err := l.WaitServiceProgrammed(ctx, "shop", "b", m.ip(ep)); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

type podSpec struct{ ns, name, node, app, sa string }

// run starts echo pods and waits until they are ready and, those in the
// mesh (in shop or other, but for opt, which opts out), enrolled and
// known to every ztunnel as HBONE workloads.
func (m *mesh) run(t *testing.T, specs ...podSpec) {
	t.Helper()
	ctx := t.Context()
	// Created together, waited for together: each pod takes a few
	// seconds to be ready.
	type result struct {
		pod *corev1.Pod
		err error
	}
	results := make(chan result, len(specs))
	for _, s := range specs {
		labels := map[string]string{"app": s.app}
		if s.name == "opt" {
			labels[enrolment.LabelDataplaneMode] = enrolment.ModeNone
		}
		p := lab.EchoPod(s.ns, s.name, s.node, labels)
		p.Spec.ServiceAccountName = s.sa
		go func() {
			got, err := m.l.RunPod(ctx, p)
			results <- result{got, err}
		}()
	}
	for range specs {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		m.pods[r.pod.Name] = r.pod
	}
	for _, s := range specs {
		if s.ns == "plain" || s.name == "opt" {
			continue
		}
		if _, err := m.l.WaitPod(ctx, s.ns, s.name, func(p *corev1.Pod) bool {
			return p.Annotations[enrolment.AnnotationRedirection] == enrolment.AnnotationEnabled
		}); err != nil {
			t.Fatal(err)
		}
		if err := m.mesh.WaitWorkload(ctx, m.ip(s.name), true); err != nil {
			t.Fatal(err)
		}
	}
}

// forward listens on a loopback port of the host and forwards each
// connection to addr inside ns (the test process is outside the lab).
func forward(t *testing.T, ns interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}, addr string) string {
	t.Helper()
	return testutil.ServeTCP(t, "127.0.0.1:0", func(c net.Conn) {
		up, err := ns.DialContext(context.Background(), "tcp", addr)
		if err != nil {
			return
		}
		defer up.Close()
		done := make(chan struct{}, 2)
		go func() { copyAndClose(up, c); done <- struct{}{} }()
		go func() { copyAndClose(c, up); done <- struct{}{} }()
		<-done
		<-done
	}).String()
}

func copyAndClose(dst, src net.Conn) {
	io.Copy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		dst.Close()
	}
}

// roundTrip sends one line on an open echo connection and reads the
// answer.
func roundTrip(c net.Conn, msg string) (echo.Report, error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return echo.RoundTrip(c, msg)
}

func randHex() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}
