package istiod

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	secapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/ambitmesh/ambit/api/security"
	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/e2e/internal/labmesh"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/istiod/ambient"
	"github.com/ambitmesh/ambit/istiod/server"
)

// adsClient holds what a delta client has received, per type.
type adsClient struct {
	t      *testing.T
	stream discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	addrs  map[string]*workload.Address
	auths  map[string]*security.Authorization
}

func connect(ctx context.Context, t *testing.T, addr string) *adsClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &adsClient{t: t, stream: st, addrs: map[string]*workload.Address{}, auths: map[string]*security.Authorization{}}
	for _, typ := range []string{ambient.AddressType, ambient.AuthorizationType} {
		if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "test"}, TypeUrl: typ, ResourceNamesSubscribe: []string{"*"}}); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// await receives and ACKs responses until cond holds.
func (c *adsClient) await(what string, cond func() bool) {
	c.t.Helper()
	for !cond() {
		resp, err := c.stream.Recv()
		if err != nil {
			c.t.Fatalf("await %s: receive: %v", what, err)
		}
		for _, r := range resp.GetResources() {
			switch resp.GetTypeUrl() {
			case ambient.AddressType:
				var a workload.Address
				if err := r.GetResource().UnmarshalTo(&a); err != nil {
					c.t.Fatalf("decode %s: %v", r.GetName(), err)
				}
				c.addrs[r.GetName()] = &a
			case ambient.AuthorizationType:
				var a security.Authorization
				if err := r.GetResource().UnmarshalTo(&a); err != nil {
					c.t.Fatalf("decode %s: %v", r.GetName(), err)
				}
				c.auths[r.GetName()] = &a
			}
		}
		for _, n := range resp.GetRemovedResources() {
			delete(c.addrs, n)
			delete(c.auths, n)
		}
		if err := c.stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}); err != nil {
			c.t.Fatalf("ack: %v", err)
		}
	}
}

func (c *adsClient) workload(uid string) *workload.Workload {
	return c.addrs[uid].GetWorkload()
}

func (c *adsClient) awaitTunnel(uid string, want workload.TunnelProtocol) {
	c.t.Helper()
	c.await(fmt.Sprintf("%s tunnel %s", uid, want), func() bool {
		w := c.workload(uid)
		return w != nil && w.GetTunnelProtocol() == want
	})
}

func TestIstiodInLab(t *testing.T) {
	const ns = "shop"
	l, ctx := startLab(t, 4*time.Minute, ns)
	if err := labmesh.InstallCRDs(ctx, l, "../../deploy/crds"); err != nil {
		t.Fatal(err)
	}
	istio, err := istioclient.NewForConfig(l.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	s, err := server.New(server.Config{XDSAddr: "127.0.0.1:0", MonitoringAddr: "127.0.0.1:0", DebugEndpoints: true}, l.Client, istio, warnLog())
	if err != nil {
		t.Fatal(err)
	}
	runServer(t, ctx, s)
	c := connect(ctx, t, s.XDSAddr().String())
	svc, err := l.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromString("http")},
				{Name: "tcp", Port: 9000, TargetPort: intstr.FromInt32(9000)},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pods := map[string]*corev1.Pod{}
	for name, node := range map[string]string{"web-a": "node1", "web-b": "node2"} {
		p, err := l.RunPod(ctx, lab.EchoPod(ns, name, node, map[string]string{"app": "web", "version": "v1"}))
		if err != nil {
			t.Fatal(err)
		}
		pods[name] = p
	}
	uidA, uidB := ambient.PodUID("Kubernetes", ns, "web-a"), ambient.PodUID("Kubernetes", ns, "web-b")
	svcKey := ambient.ServiceName(ns, "web.shop.svc.cluster.local")

	t.Run("service endpoints across nodes", func(t *testing.T) {
		c.await("service and both pods", func() bool {
			return c.addrs[svcKey] != nil && c.workload(uidA) != nil && c.workload(uidB) != nil &&
				len(c.workload(uidA).GetServices()) == 1 && len(c.workload(uidB).GetServices()) == 1
		})
		gotSvc := c.addrs[svcKey].GetService()
		if len(gotSvc.GetAddresses()) != 1 || netip.AddrFrom4([4]byte(gotSvc.GetAddresses()[0].GetAddress())).String() != svc.Spec.ClusterIP {
			t.Errorf("service addresses: got %v, want ClusterIP %s", gotSvc.GetAddresses(), svc.Spec.ClusterIP)
		}
		for uid, node := range map[string]string{uidA: "node1", uidB: "node2"} {
			w := c.workload(uid)
			if w.GetNode() != node || w.GetTunnelProtocol() != workload.TunnelProtocol_NONE || w.GetCanonicalName() != "web" || w.GetCanonicalRevision() != "v1" {
				t.Errorf("%s: got node %q tunnel %s canonical %s/%s, want %s NONE web/v1", uid, w.GetNode(), w.GetTunnelProtocol(), w.GetCanonicalName(), w.GetCanonicalRevision(), node)
			}
			ports := w.GetServices()[svcKey].GetPorts()
			got := map[uint32]uint32{}
			for _, p := range ports {
				got[p.GetServicePort()] = p.GetTargetPort()
			}
			if got[80] != 8080 || got[9000] != 9000 {
				t.Errorf("%s port mapping: got %v, want 80->8080 9000->9000", uid, got)
			}
		}
	})

	patchLabels := func(t *testing.T, kind, name string, value any) {
		t.Helper()
		patch := fmt.Appendf(nil, `{"metadata":{"labels":{%q:%s}}}`, ambient.DataplaneModeLabel, jsonValue(value))
		var err error
		if kind == "namespace" {
			_, err = l.Client.CoreV1().Namespaces().Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
		} else {
			_, err = l.Client.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
	}

	t.Run("monitoring", func(t *testing.T) {
		base := "http://" + s.MonitoringAddr().String()
		for path, want := range map[string]string{
			"/ready":         "ready",
			"/debug/clients": `"node":"test"`,
			"/debug/model":   `"` + uidA + `"`,
			"/metrics":       "pilot_xds_pushes",
		} {
			resp, err := http.Get(base + path)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
				t.Errorf("GET %s: got %d %.200q, want 200 containing %q", path, resp.StatusCode, body, want)
			}
		}
	})

	t.Run("enrolment flips", func(t *testing.T) {
		patchLabels(t, "namespace", ns, ambient.DataplaneModeAmbient)
		// HBONE only once the node agent (not running here) has
		// confirmed redirection; this test annotates as it would.
		for _, name := range []string{"web-a", "web-b"} {
			patch := []byte(`{"metadata":{"annotations":{"ambient.istio.io/redirection":"enabled"}}}`)
			if _, err := l.Client.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		c.awaitTunnel(uidA, workload.TunnelProtocol_HBONE)
		c.awaitTunnel(uidB, workload.TunnelProtocol_HBONE)

		patchLabels(t, "pod", "web-b", ambient.DataplaneModeNone)
		c.awaitTunnel(uidB, workload.TunnelProtocol_NONE)
		if got := c.workload(uidA).GetTunnelProtocol(); got != workload.TunnelProtocol_HBONE {
			t.Errorf("web-a after web-b opted out: got %s, want HBONE", got)
		}

		patchLabels(t, "namespace", ns, nil)
		c.awaitTunnel(uidA, workload.TunnelProtocol_NONE)
	})

	t.Run("pod deletion removes the workload", func(t *testing.T) {
		if err := l.DeletePod(ctx, ns, "web-b"); err != nil {
			t.Fatal(err)
		}
		c.await("web-b removed", func() bool { return c.addrs[uidB] == nil })
	})

	t.Run("authorization policy", func(t *testing.T) {
		ap := &securityv1.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "only-frontend", Namespace: ns},
			Spec: secapi.AuthorizationPolicy{
				Selector: &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "web"}},
				Rules: []*secapi.Rule{{From: []*secapi.Rule_From{{Source: &secapi.Source{
					Principals: []string{"cluster.local/ns/shop/sa/frontend"},
				}}}}},
			},
		}
		if _, err := istio.SecurityV1().AuthorizationPolicies(ns).Create(ctx, ap, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		name := ns + "/only-frontend"
		c.await("policy and its workload reference", func() bool {
			w := c.workload(uidA)
			return c.auths[name] != nil && w != nil && len(w.GetAuthorizationPolicies()) == 1 && w.GetAuthorizationPolicies()[0] == name
		})
		if got := c.auths[name].GetScope(); got != security.Scope_WORKLOAD_SELECTOR {
			t.Errorf("scope: got %s, want WORKLOAD_SELECTOR", got)
		}
		if err := istio.SecurityV1().AuthorizationPolicies(ns).Delete(ctx, "only-frontend", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		c.await("policy removed", func() bool { return c.auths[name] == nil && len(c.workload(uidA).GetAuthorizationPolicies()) == 0 })
	})

	t.Run("L7 policy without waypoint fails closed and says so", func(t *testing.T) {
		ap := &securityv1.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "get-only", Namespace: ns},
			Spec: secapi.AuthorizationPolicy{Rules: []*secapi.Rule{{
				To: []*secapi.Rule_To{{Operation: &secapi.Operation{Methods: []string{"GET"}}}},
			}}},
		}
		if _, err := istio.SecurityV1().AuthorizationPolicies(ns).Create(ctx, ap, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		name := ns + "/get-only"
		c.await("L7 policy", func() bool { return c.auths[name] != nil })
		if got := c.auths[name]; got.GetAction() != security.Action_ALLOW || len(got.GetRules()) != 0 {
			t.Errorf("L7 ALLOW policy: got action %s with %d rules, want ALLOW with no rules (allows nothing)", got.GetAction(), len(got.GetRules()))
		}
		awaitPolicyCondition(ctx, t, istio, ns, "get-only", func(status, msg string) bool {
			return status == "True" && strings.Contains(msg, "waypoint")
		})
	})

	t.Run("selector-less service through EndpointSlice", func(t *testing.T) {
		if _, err := l.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "manual", Namespace: ns},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "tcp", Port: 7000}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "manual-1", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: "manual"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("tcp"), Port: ptr.To[int32](9000)}},
			Endpoints: []discoveryv1.Endpoint{
				{Addresses: []string{pods["web-a"].Status.PodIP}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: "web-a"}},
				{Addresses: []string{"10.244.1.250"}},
			},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		manual := ambient.ServiceName(ns, "manual.shop.svc.cluster.local")
		external := "Kubernetes/discovery.k8s.io/EndpointSlice/shop/manual-1/10.244.1.250"
		c.await("selector-less backends", func() bool {
			return c.workload(uidA).GetServices()[manual] != nil && c.workload(external).GetServices()[manual] != nil
		})
		for _, uid := range []string{uidA, external} {
			ports := c.workload(uid).GetServices()[manual].GetPorts()
			if len(ports) != 1 || ports[0].GetServicePort() != 7000 || ports[0].GetTargetPort() != 9000 {
				t.Errorf("%s ports for %s: got %v, want 7000->9000", uid, manual, ports)
			}
		}
	})

	t.Run("Istio traffic CRDs", func(t *testing.T) { istioTrafficCRDs(ctx, t, istio, ns) })
}

// awaitPolicyCondition watches an AuthorizationPolicy until its
// ZtunnelAccepted condition satisfies ok.
func awaitPolicyCondition(ctx context.Context, t *testing.T, istio istioclient.Interface, ns, name string, ok func(status, message string) bool) {
	t.Helper()
	w, err := istio.SecurityV1().AuthorizationPolicies(ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for ev := range w.ResultChan() {
		p, isAP := ev.Object.(*securityv1.AuthorizationPolicy)
		if !isAP {
			continue
		}
		for _, c := range p.Status.Conditions {
			if c.GetType() == server.ConditionZtunnelAccepted && ok(c.GetStatus(), c.GetMessage()) {
				return
			}
		}
	}
	t.Fatalf("policy %s/%s: condition %s not reached: %v", ns, name, server.ConditionZtunnelAccepted, ctx.Err())
}

func jsonValue(v any) string {
	if v == nil {
		return "null"
	}
	return fmt.Sprintf("%q", v)
}
