package server_test

import (
	"context"
	"slices"
	"testing"
	"time"

	netapi "istio.io/api/networking/v1alpha3"
	secapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/ambitmesh/ambit/istiod/server"
	"github.com/ambitmesh/ambit/istiod/waypoint"
)

// TestWaypointIstioTraffic: a DestinationRule's subsets become subset
// clusters whose endpoints follow the pods' labels (a relabelled pod
// moves between subsets), a VirtualService routing to them is served,
// and istiod writes the status of VirtualServices (Accepted,
// ResolvedRefs) and of AuthorizationPolicies with targetRefs
// (WaypointAccepted), keeping the conditions of other types.
func TestWaypointIstioTraffic(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	const ns = "shop"
	kube := fake.NewClientset(waypointObjects(ns,
		readyPod(ns, "reviews-v1", "10.244.1.5", "reviews", map[string]string{"app": "reviews", "version": "v1"}),
		readyPod(ns, "reviews-v2", "10.244.1.6", "reviews", map[string]string{"app": "reviews", "version": "v2"}),
	)...)
	gw := waypointGatewayAPI(t, ns, "gateways")
	istio := istiofake.NewSimpleClientset(
		&networkingv1.DestinationRule{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "reviews"}, Spec: netapi.DestinationRule{
			Host: "reviews", Subsets: []*netapi.Subset{{Name: "v1", Labels: map[string]string{"version": "v1"}}, {Name: "v2", Labels: map[string]string{"version": "v2"}}}}},
		&networkingv1.VirtualService{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "reviews"}, Spec: netapi.VirtualService{
			Hosts: []string{"reviews"}, Http: []*netapi.HTTPRoute{{Route: []*netapi.HTTPRouteDestination{{Destination: &netapi.Destination{Host: "reviews", Subset: "v2"}}}}}}},
		&networkingv1.VirtualService{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bad"}, Spec: netapi.VirtualService{
			Hosts: []string{"reviews"}, Http: []*netapi.HTTPRoute{{CorsPolicy: &netapi.CorsPolicy{}, Route: []*netapi.HTTPRouteDestination{{Destination: &netapi.Destination{Host: "reviews"}}}}}}},
		&securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "on-wp"}, Spec: secapi.AuthorizationPolicy{
			TargetRefs: []*typeapi.PolicyTargetReference{{Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: "wp"}},
			Rules:      []*secapi.Rule{{When: []*secapi.Condition{{Key: "request.auth.claims[group]", Values: []string{"admin"}}}}}}},
		&securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "on-nothing"}, Spec: secapi.AuthorizationPolicy{
			TargetRefs: []*typeapi.PolicyTargetReference{{Kind: "Service", Name: "nosuch"}}}},
	)
	istio.Discovery().(*fakediscovery.FakeDiscovery).Resources = []*metav1.APIResourceList{{GroupVersion: "networking.istio.io/v1", APIResources: []metav1.APIResource{
		{Name: "virtualservices"}, {Name: "destinationrules"}}}}
	wp := startWaypointXDS(t, ctx, cancel, ns, server.Clients{Kube: kube, Istio: istio, GatewayAPI: gw}, nil,
		waypoint.ClusterType, waypoint.EndpointType, waypoint.ListenerType)
	await := wp.await
	const v1, v2 = "inbound-vip|9080|http/v1|reviews.shop.svc.cluster.local", "inbound-vip|9080|http/v2|reviews.shop.svc.cluster.local"
	await("subset clusters", func(v waypointView) bool {
		return slices.Contains(v.clusters, v1) && slices.Contains(v.clusters, v2) && v.endpoints[v1] == 1 && v.endpoints[v2] == 1
	})

	// reviews-v1 becomes a v2: it moves to subset v2.
	p, err := kube.CoreV1().Pods(ns).Get(ctx, "reviews-v1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Labels["version"] = "v2"
	if _, err := kube.CoreV1().Pods(ns).Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	await("relabelled pod in subset v2", func(v waypointView) bool { return v.endpoints[v1] == 0 && v.endpoints[v2] == 2 })

	// Statuses.
	want := map[string]map[string]string{
		"vs/reviews": {"Accepted": "True Accepted", "ResolvedRefs": "True ResolvedRefs"},
		"vs/bad":     {"Accepted": "False UnsupportedValue"},
		"dr/reviews": {"Accepted": "True Accepted"},
		// request.auth.claims: an ALLOW allows less.
		"ap/on-wp":      {"WaypointAccepted": "True UnsupportedValue"},
		"ap/on-nothing": {"WaypointAccepted": "False TargetNotFound"},
	}
	for {
		got := map[string]map[string]string{}
		add := func(k, typ, status, reason string) {
			if got[k] == nil {
				got[k] = map[string]string{}
			}
			got[k][typ] = status + " " + reason
		}
		for _, name := range []string{"reviews", "bad"} {
			if o, err := istio.NetworkingV1().VirtualServices(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
				for _, c := range o.Status.Conditions {
					add("vs/"+name, c.Type, c.Status, c.Reason)
				}
			}
		}
		if o, err := istio.NetworkingV1().DestinationRules(ns).Get(ctx, "reviews", metav1.GetOptions{}); err == nil {
			for _, c := range o.Status.Conditions {
				add("dr/reviews", c.Type, c.Status, c.Reason)
			}
		}
		for _, name := range []string{"on-wp", "on-nothing"} {
			if o, err := istio.SecurityV1().AuthorizationPolicies(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
				for _, c := range o.Status.Conditions {
					add("ap/"+name, c.Type, c.Status, c.Reason)
				}
			}
		}
		if equalStatus(got, want) {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("statuses: got %v, want %v", got, want)
		case <-time.After(20 * time.Millisecond):
			// The fake clientset has no status watch of its own worth
			// waiting on across three kinds: poll.
		}
	}
}

func equalStatus(a, b map[string]map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || len(v) != len(w) {
			return false
		}
		for kk, vv := range v {
			if w[kk] != vv {
				return false
			}
		}
	}
	return true
}
