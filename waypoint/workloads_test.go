package waypoint_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/internal/xdsclient"
	"github.com/ambitmesh/ambit/waypoint"
	"github.com/ambitmesh/ambit/waypoint/config"
)

func deltaResponse(t *testing.T, typ, nonce string, res map[string]proto.Message) *discovery.DeltaDiscoveryResponse {
	t.Helper()
	r := &discovery.DeltaDiscoveryResponse{TypeUrl: typ, Nonce: nonce}
	for name, m := range res {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		r.Resources = append(r.Resources, &discovery.Resource{Name: name, Version: nonce, Resource: a})
	}
	return r
}

// TestWorkloadDiscovery drives the waypoint's xDS handler with Istio's
// workload API on the ADS stream: addresses that come before the Envoy
// config wait for it; an address update alone installs a new index
// without rebuilding the Envoy snapshot; a malformed address is NACKed
// by name and the rest applies; the index finds peers by address and by
// identity.
func TestWorkloadDiscovery(t *testing.T) {
	p := testProxy(t, nil)
	installs := 0
	c, err := xdsclient.New(xdsclient.Config{Address: "127.0.0.1:1", Plaintext: true, Types: waypoint.Types, Optional: waypoint.Optional,
		Handler: &waypoint.Handler{Proxy: p, OnUpdate: func(*config.Snapshot) { installs++ }}})
	if err != nil {
		t.Fatal(err)
	}
	ip := func(b byte) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, b}) }
	addrs := map[string]proto.Message{}
	for i, a := range meshWorkloads(ip) {
		addrs[string(rune('a'+i))] = a
	}
	if req := c.Handle(deltaResponse(t, waypoint.TypeAddress, "1", addrs)); req.GetErrorDetail() != nil {
		t.Fatalf("addresses: got NACK %v", req.GetErrorDetail())
	}
	if p.Stats().Workloads() != nil {
		t.Fatal("workload index installed before the Envoy config")
	}
	w := basicConfig(ip)
	res := w.resources()
	for _, step := range []struct {
		typ string
		m   map[string]proto.Message
	}{
		{waypoint.TypeCluster, func() map[string]proto.Message {
			m := map[string]proto.Message{}
			for _, c := range res.Clusters {
				m[c.GetName()] = c
			}
			return m
		}()},
		{waypoint.TypeEndpoint, func() map[string]proto.Message {
			m := map[string]proto.Message{}
			for _, e := range res.Endpoints {
				m[e.GetClusterName()] = e
			}
			return m
		}()},
		{waypoint.TypeListener, func() map[string]proto.Message {
			m := map[string]proto.Message{}
			for _, l := range res.Listeners {
				m[l.GetName()] = l
			}
			return m
		}()},
	} {
		if req := c.Handle(deltaResponse(t, step.typ, "2", step.m)); req.GetErrorDetail() != nil {
			t.Fatalf("%s: got NACK %v", step.typ, req.GetErrorDetail())
		}
	}
	if installs != 1 {
		t.Fatalf("snapshots installed: got %d, want 1", installs)
	}
	wl := p.Stats().Workloads()
	if got := wl.ByAddr(ip(11)); got == nil || got.WorkloadName != "server-v1" || got.Identity != "spiffe://cluster.local/ns/shop/sa/server" {
		t.Errorf("by address .11: got %+v, want server-v1 with its identity", got)
	}
	if got := wl.ByIdentity(clientID.String()); got == nil || got.CanonicalName != "client" {
		t.Errorf("by identity %s: got %+v, want the client", clientID, got)
	}
	if got := wl.Service(host); got == nil || got.Name != "server" || got.Namespace != "shop" {
		t.Errorf("service %s: got %+v", host, got)
	}

	// An address update alone: a new index, the same snapshot; a
	// malformed address is named in the NACK, the good one applies.
	snap := p.Snapshot()
	bad := &workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{Uid: "bad", Addresses: [][]byte{{1, 2, 3}}}}}
	newPod := &workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{Uid: "new", Name: "new-1", Namespace: "shop",
		Addresses: [][]byte{ip(30).AsSlice()}, ServiceAccount: "new", WorkloadName: "new"}}}
	req := c.Handle(deltaResponse(t, waypoint.TypeAddress, "3", map[string]proto.Message{"bad": bad, "new": newPod}))
	if msg := req.GetErrorDetail().GetMessage(); !strings.Contains(msg, "bad") || !strings.Contains(msg, "3 bytes") {
		t.Errorf("NACK of a malformed address: got %q, want it to name bad and its 3 bytes", msg)
	}
	if got := p.Stats().Workloads().ByAddr(ip(30)); got == nil || got.WorkloadName != "new" {
		t.Errorf("by address .30 after the update: got %+v, want new", got)
	}
	if p.Snapshot() != snap || installs != 1 {
		t.Errorf("an address update rebuilt the Envoy snapshot (%d installs), want it kept", installs)
	}
}

// TestNodeMetadata: what the waypoint tells istiod, as Istio's waypoint
// proxies do: its Gateway in LABELS, its Deployment, an Istio version
// new enough for the current filter variants.
func TestNodeMetadata(t *testing.T) {
	labels, err := waypoint.ParseLabels([]byte("gateway.networking.k8s.io/gateway-name=\"reviews-waypoint\"\nservice.istio.io/canonical-name=\"reviews-waypoint\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	n := waypoint.Node{PodName: "reviews-waypoint-7d9c8b6f5-abcde", PodNamespace: "shop", IP: "10.0.0.9", ServiceAccount: "reviews-waypoint", Labels: labels, TrustDomain: "cluster.local"}
	np := n.Proto()
	// The cluster as Istio's agent names it: the workload and namespace
	// without an app label, the app label's with one.
	if got := np.GetCluster(); got != "reviews-waypoint.shop" {
		t.Errorf("node cluster: got %q, want reviews-waypoint.shop (workload.namespace, as Istio's agent)", got)
	}
	withApp := n
	withApp.Labels = map[string]string{"app": "reviews", waypoint.LabelGatewayName: "reviews-waypoint"}
	if got := withApp.Proto().GetCluster(); got != "reviews.shop" {
		t.Errorf("node cluster with an app label: got %q, want reviews.shop", got)
	}
	md := np.GetMetadata().GetFields()
	for k, want := range map[string]string{
		"WORKLOAD_NAME": "reviews-waypoint", "OWNER": "kubernetes://apis/apps/v1/namespaces/shop/deployments/reviews-waypoint",
		"ISTIO_VERSION": waypoint.IstioVersion, "CLUSTER_ID": "Kubernetes", "NAMESPACE": "shop", "METADATA_DISCOVERY": "true", "MESH_ID": "cluster.local",
	} {
		if got := md[k].GetStringValue(); got != want {
			t.Errorf("metadata %s: got %q, want %q", k, got, want)
		}
	}
	// istiod sends the older filter variants below 1.29.2.
	var v [3]int
	if _, err := fmt.Sscanf(waypoint.IstioVersion, "%d.%d.%d", &v[0], &v[1], &v[2]); err != nil || v[0] != 1 || v[1]*1000+v[2] < 29*1000+2 {
		t.Errorf("ISTIO_VERSION %q: want 1.29.2 or later (%v)", waypoint.IstioVersion, err)
	}
	if got := md["LABELS"].GetStructValue().GetFields()[waypoint.LabelGatewayName].GetStringValue(); got != "reviews-waypoint" {
		t.Errorf("LABELS gateway name: got %q, want reviews-waypoint", got)
	}
	if _, err := waypoint.ParseLabels([]byte("novalue\n")); err == nil {
		t.Error("labels line without a value: got nil error")
	}
	if got, err := waypoint.ParseLabels([]byte(`{"app":"x"}`)); err != nil || got["app"] != "x" {
		t.Errorf("JSON labels: got %v, %v", got, err)
	}
}
