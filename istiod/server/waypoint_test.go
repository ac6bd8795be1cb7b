package server_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"

	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/internal/xdsclient"
	"github.com/ambitmesh/ambit/istiod/ambient"
	"github.com/ambitmesh/ambit/istiod/server"
	"github.com/ambitmesh/ambit/istiod/waypoint"
)

// waypointView is what a waypoint's xDS client holds once every type
// had a response.
type waypointView struct {
	listeners, clusters []string
	endpoints           map[string]int // cluster -> endpoints
	workloads           []string       // names of the workload API's workloads
}

type waypointHandler struct{ views chan waypointView }

func (h waypointHandler) Decode(typ string, r *discovery.Resource) (any, error) {
	m, err := r.GetResource().UnmarshalNew()
	if err != nil {
		return nil, fmt.Errorf("decode %s %s: %w", typ, r.GetName(), err)
	}
	if v, ok := m.(interface{ Validate() error }); ok {
		if err := v.Validate(); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (h waypointHandler) Update(held xdsclient.Held, complete bool) error {
	if !complete {
		return nil
	}
	v := waypointView{endpoints: map[string]int{}}
	for _, l := range held.Values(waypoint.ListenerType) {
		v.listeners = append(v.listeners, l.(*listener.Listener).Name)
	}
	for _, c := range held.Values(waypoint.ClusterType) {
		v.clusters = append(v.clusters, c.(*cluster.Cluster).Name)
	}
	for _, e := range held.Values(waypoint.EndpointType) {
		cla := e.(*endpoint.ClusterLoadAssignment)
		n := 0
		for _, l := range cla.Endpoints {
			n += len(l.LbEndpoints)
		}
		v.endpoints[cla.ClusterName] = n
	}
	for _, a := range held.Values(ambient.AddressType) {
		if w := a.(*workload.Address).GetWorkload(); w != nil {
			v.workloads = append(v.workloads, w.GetName())
		}
	}
	h.views <- v
	return nil
}

func readyPod(ns, name, ip, sa string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: "node1", ServiceAccountName: sa, Containers: []corev1.Container{{Name: "app",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 9080}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
}

func service(ns, name, ip string, labels, selector map[string]string, port int32, portName string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip}, Selector: selector,
			Ports: []corev1.ServicePort{{Name: portName, Port: port, TargetPort: intstr.FromInt32(port)}}},
	}
}

// The waypoint of these tests: Gateway wp in an ambient namespace, its
// Service and its ready pod wp-5d8f-abc at 10.244.1.9.

// waypointObjects are namespace ns (ambient) with waypoint wp's Service
// and pod and Service reviews (HTTP 9080, app=reviews) bound to wp, then
// more (reviews' pods among them).
func waypointObjects(ns string, more ...runtime.Object) []runtime.Object {
	return append([]runtime.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}},
		service(ns, "wp", "10.96.0.10", map[string]string{"gateway.istio.io/managed": "istio.io-mesh-controller"},
			map[string]string{"gateway.networking.k8s.io/gateway-name": "wp"}, 15008, "mesh"),
		readyPod(ns, "wp-5d8f-abc", "10.244.1.9", "wp", map[string]string{"gateway.networking.k8s.io/gateway-name": "wp"}),
		service(ns, "reviews", "10.96.0.30", map[string]string{"istio.io/use-waypoint": "wp"}, map[string]string{"app": "reviews"}, 9080, "http"),
	}, more...)
}

// waypointGatewayAPI is a Gateway API clientset holding Gateway wp in
// ns, whose discovery says the API server serves resources (of
// gateway.networking.k8s.io/v1: "gateways", "httproutes", ...).
func waypointGatewayAPI(t *testing.T, ns string, resources ...string) *gatewayfake.Clientset {
	t.Helper()
	// The simple fake: NewClientset's tracker does not know Gateway's
	// schema (and files objects given to it under v1beta1).
	gw := gatewayfake.NewSimpleClientset()
	var served []metav1.APIResource
	for _, r := range resources {
		served = append(served, metav1.APIResource{Name: r})
	}
	gw.Resources = []*metav1.APIResourceList{{GroupVersion: gatewayv1.GroupVersion.String(), APIResources: served}}
	if _, err := gw.GatewayV1().Gateways(ns).Create(t.Context(), &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "wp"},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio-waypoint", Listeners: []gatewayv1.Listener{
			{Name: "mesh", Port: 15008, Protocol: "HBONE"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return gw
}

// waypointXDS is waypoint wp's xDS client connected to an istiod.
type waypointXDS struct {
	t     *testing.T
	ctx   context.Context
	views chan waypointView
}

// startWaypointXDS runs istiod on clients until ctx ends (cancel stops
// it at cleanup) and connects wp's xDS client in ns to it, asking for
// types, those in named by name. The client names its pod's labels, as
// Istio's proxies do.
func startWaypointXDS(t *testing.T, ctx context.Context, cancel context.CancelFunc, ns string, clients server.Clients, named map[string]xdsclient.NamesFunc, types ...string) *waypointXDS {
	t.Helper()
	s, err := server.NewWithClients(server.Config{XDSAddr: "127.0.0.1:0"}, clients, nil)
	if err != nil {
		t.Fatal(err)
	}
	runServer(t, ctx, cancel, s)
	w := &waypointXDS{t: t, ctx: ctx, views: make(chan waypointView, 16)}
	c, err := xdsclient.New(xdsclient.Config{
		Address: s.XDSAddr().String(), Plaintext: true,
		Types:   types,
		Named:   named,
		Handler: waypointHandler{views: w.views},
		Node: &core.Node{Id: fmt.Sprintf("waypoint~10.244.1.9~wp-5d8f-abc.%s~%s.svc.cluster.local", ns, ns), Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			"LABELS": structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
				"gateway.networking.k8s.io/gateway-name": structpb.NewStringValue("wp")}}),
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	go c.Run(ctx)
	return w
}

// await returns the first view that is ok; the test fails when none is
// before ctx ends.
func (w *waypointXDS) await(what string, ok func(waypointView) bool) waypointView {
	w.t.Helper()
	var last waypointView
	for {
		select {
		case v := <-w.views:
			if ok(v) {
				return v
			}
			last = v
		case <-w.ctx.Done():
			w.t.Fatalf("%s: not seen; last view %+v", what, last)
		}
	}
}

// TestWaypointXDS: a waypoint proxy (node id waypoint~ip~pod.ns~...)
// gets delta ADS of its Gateway's Listeners, Clusters and endpoints from
// istiod, built from the cluster's objects, and the changes of a new
// backend and of a newly bound Service; endpoints subscribed to as a
// wildcard, or by the EDS clusters' names as Envoy and Ambit's waypoint
// subscribe to them.
func TestWaypointXDS(t *testing.T) {
	t.Run("wildcard EDS", func(t *testing.T) { testWaypointXDS(t, nil) })
	t.Run("EDS by name", func(t *testing.T) {
		testWaypointXDS(t, map[string]xdsclient.NamesFunc{waypoint.EndpointType: edsNames})
	})
}

// edsNames are the EDS names of the clusters held.
func edsNames(held xdsclient.Held) []string {
	var out []string
	for _, v := range held.Values(waypoint.ClusterType) {
		if c := v.(*cluster.Cluster); c.GetType() == cluster.Cluster_EDS {
			name := c.GetEdsClusterConfig().GetServiceName()
			if name == "" {
				name = c.GetName()
			}
			out = append(out, name)
		}
	}
	return out
}

func testWaypointXDS(t *testing.T, named map[string]xdsclient.NamesFunc) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	const ns = "shop"
	kube := fake.NewClientset(waypointObjects(ns,
		readyPod(ns, "reviews-v1", "10.244.1.5", "reviews", map[string]string{"app": "reviews"}),
		service(ns, "ratings", "10.96.0.31", nil, map[string]string{"app": "ratings"}, 9080, "http"),
		readyPod(ns, "ratings-v1", "10.244.1.7", "ratings", map[string]string{"app": "ratings"}),
	)...)
	// What discovery says the API server serves (the route CRDs).
	gw := waypointGatewayAPI(t, ns, "gateways", "httproutes", "grpcroutes", "referencegrants")
	// The workload API on the same stream, as Istio's waypoints (and
	// Ambit's) ask for it, for peer metadata.
	wp := startWaypointXDS(t, ctx, cancel, ns, server.Clients{Kube: kube, GatewayAPI: gw}, named,
		waypoint.ClusterType, waypoint.EndpointType, waypoint.ListenerType, ambient.AddressType)
	await := wp.await

	const reviewsCluster = "inbound-vip|9080|http|reviews.shop.svc.cluster.local"
	// Clusters and endpoints come before the listeners that name them.
	v := await("reviews served", func(v waypointView) bool { return v.endpoints[reviewsCluster] == 1 && len(v.listeners) > 0 })
	if !slices.Contains(v.workloads, "reviews-v1") || !slices.Contains(v.workloads, "ratings-v1") {
		t.Errorf("workload API on the waypoint's stream: got %v, want every workload, reviews-v1 and ratings-v1 among them", v.workloads)
	}
	if want := []string{"connect_originate", "connect_terminate", "main_internal"}; !slices.Equal(v.listeners, want) {
		t.Errorf("listeners: got %v, want %v", v.listeners, want)
	}
	if want := []string{"connect_originate", "encap", reviewsCluster, "main_internal"}; !slices.Equal(v.clusters, want) {
		t.Errorf("clusters: got %v, want %v (ratings is not bound)", v.clusters, want)
	}

	// A second backend reaches the endpoints.
	if _, err := kube.CoreV1().Pods(ns).Create(ctx, readyPod(ns, "reviews-v2", "10.244.2.6", "reviews", map[string]string{"app": "reviews"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	await("second reviews endpoint", func(v waypointView) bool { return v.endpoints[reviewsCluster] == 2 })

	// Binding ratings adds its cluster and chain.
	ratings, err := kube.CoreV1().Services(ns).Get(ctx, "ratings", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ratings.Labels = map[string]string{"istio.io/use-waypoint": "wp"}
	if _, err := kube.CoreV1().Services(ns).Update(ctx, ratings, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	await("ratings bound", func(v waypointView) bool {
		return slices.Contains(v.clusters, "inbound-vip|9080|http|ratings.shop.svc.cluster.local") && v.endpoints["inbound-vip|9080|http|ratings.shop.svc.cluster.local"] == 1
	})

	// An HTTPRoute on reviews sending to ratings: istiod writes its
	// status, and the route's backend needs no new cluster (ratings'
	// is there).
	w, err := gw.GatewayV1().HTTPRoutes(ns).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	port := gatewayv1.PortNumber(9080)
	kind := gatewayv1.Kind("Service")
	if _, err := gw.GatewayV1().HTTPRoutes(ns).Create(ctx, &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "to-ratings"},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{{Kind: &kind, Name: "reviews"}, {Kind: &kind, Name: "nosuch"}}},
			Rules: []gatewayv1.HTTPRouteRule{{BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{
				BackendObjectReference: gatewayv1.BackendObjectReference{Name: "ratings", Port: &port}}}}}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	seen := false
	for ev := range w.ResultChan() {
		r, ok := ev.Object.(*gatewayv1.HTTPRoute)
		if !ok || len(r.Status.Parents) == 0 {
			continue
		}
		got := map[string]string{}
		for _, p := range r.Status.Parents {
			for _, c := range p.Conditions {
				got[string(p.ParentRef.Name)+" "+c.Type] = string(c.Status) + " " + c.Reason
			}
			if p.ControllerName != "istio.io/mesh-controller" {
				t.Errorf("controllerName: got %q, want istio.io/mesh-controller", p.ControllerName)
			}
		}
		want := map[string]string{
			"reviews Accepted": "True Accepted", "reviews ResolvedRefs": "True ResolvedRefs",
			"nosuch Accepted": "False NoMatchingParent", "nosuch ResolvedRefs": "True ResolvedRefs",
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("route status (-want +got):\n%s", diff)
		}
		seen = true
		break
	}
	if !seen {
		t.Fatal("no status written on HTTPRoute to-ratings")
	}

	// The Gateway goes: its proxy's resources are removed.
	if err := gw.GatewayV1().Gateways(ns).Delete(ctx, "wp", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	await("waypoint gone", func(v waypointView) bool { return len(v.listeners) == 0 && len(v.clusters) == 0 })
}

// TestWaypointXDSWithoutRouteCRDs: when discovery says only Gateways
// are served (no HTTPRoute, GRPCRoute or ReferenceGrant CRD), istiod
// watches no routes and serves waypoints all the same. Against a real
// API server an informer of a resource without its CRD never syncs, and
// istiod would wait for it forever; the fake clientset would list
// anything, so this test checks the discovery path, the lab the rest.
func TestWaypointXDSWithoutRouteCRDs(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	const ns = "shop"
	kube := fake.NewClientset(waypointObjects(ns,
		readyPod(ns, "reviews-v1", "10.244.1.5", "reviews", map[string]string{"app": "reviews"}),
	)...)
	gw := waypointGatewayAPI(t, ns, "gateways")
	wp := startWaypointXDS(t, ctx, cancel, ns, server.Clients{Kube: kube, GatewayAPI: gw}, nil,
		waypoint.ClusterType, waypoint.EndpointType, waypoint.ListenerType, ambient.AddressType)
	wp.await("waypoint config without the route CRDs", func(v waypointView) bool {
		return v.endpoints["inbound-vip|9080|http|reviews.shop.svc.cluster.local"] == 1 && len(v.listeners) == 3
	})
}
