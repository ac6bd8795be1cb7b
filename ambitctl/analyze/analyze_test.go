package analyze

import (
	"strings"
	"testing"

	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubefake "k8s.io/client-go/kubernetes/fake"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"
)

func meta(ns, name string, lbls map[string]string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls}
}

func TestRun(t *testing.T) {
	wp := map[string]string{"istio.io/use-waypoint": "waypoint"}
	kube := kubefake.NewClientset(
		&corev1.Namespace{ObjectMeta: meta("", "shop", nil)},
		&corev1.Namespace{ObjectMeta: meta("", "lost", wp)},
		&corev1.Namespace{ObjectMeta: meta("", "bound", wp)},
		&corev1.Pod{ObjectMeta: meta("shop", "reviews-v1", map[string]string{"app": "reviews"})},
		&corev1.Service{ObjectMeta: meta("shop", "reviews", map[string]string{"istio.io/use-waypoint": "waypoint"})},
		&corev1.Service{ObjectMeta: meta("shop", "ratings", nil)},
		&corev1.Service{ObjectMeta: meta("shop", "details", map[string]string{"istio.io/use-waypoint": "ingress"})},
		&corev1.ServiceAccount{ObjectMeta: meta("shop", "ratings", map[string]string{"istio.io/use-waypoint": "gone"})},
		&corev1.ServiceAccount{ObjectMeta: meta("shop", "optout", map[string]string{"istio.io/use-waypoint": "none"})},
	)
	// The fake's tracker files objects given to NewSimpleClientset under
	// another version than v1's client reads: create them through it.
	gw := gatewayfake.NewSimpleClientset()
	for _, g := range []*gatewayv1.Gateway{
		{ObjectMeta: meta("shop", "waypoint", nil), Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio-waypoint"}},
		{ObjectMeta: meta("shop", "ingress", nil), Spec: gatewayv1.GatewaySpec{GatewayClassName: "nginx"}},
		{ObjectMeta: meta("bound", "waypoint", nil), Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio-waypoint"}},
	} {
		if _, err := gw.GatewayV1().Gateways(g.Namespace).Create(t.Context(), g, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, svc := range []string{"reviews", "ratings"} {
		rt := &gatewayv1.HTTPRoute{ObjectMeta: meta("shop", svc, nil), Spec: gatewayv1.HTTPRouteSpec{CommonRouteSpec: gatewayv1.CommonRouteSpec{
			ParentRefs: []gatewayv1.ParentReference{{Group: ptr(gatewayv1.Group("")), Kind: ptr(gatewayv1.Kind("Service")), Name: gatewayv1.ObjectName(svc)}}}}}
		if _, err := gw.GatewayV1().HTTPRoutes("shop").Create(t.Context(), rt, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	getOnly := &securityapi.Rule{To: []*securityapi.Rule_To{{Operation: &securityapi.Operation{Methods: []string{"GET"}}}}}
	istio := istiofake.NewSimpleClientset(
		&securityv1.AuthorizationPolicy{ObjectMeta: meta("shop", "nobody", nil), Spec: securityapi.AuthorizationPolicy{
			Selector: &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "nosuch"}}}},
		&securityv1.AuthorizationPolicy{ObjectMeta: meta("shop", "reviews-l4", nil), Spec: securityapi.AuthorizationPolicy{
			Selector: &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "reviews"}}}},
		&securityv1.AuthorizationPolicy{ObjectMeta: meta("shop", "get-only", nil), Spec: securityapi.AuthorizationPolicy{
			Selector: &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "reviews"}}, Rules: []*securityapi.Rule{getOnly}}},
		&securityv1.AuthorizationPolicy{ObjectMeta: meta("shop", "at-waypoint", nil), Spec: securityapi.AuthorizationPolicy{
			TargetRefs: []*typeapi.PolicyTargetReference{{Kind: "Service", Name: "reviews"}}, Rules: []*securityapi.Rule{getOnly}}},
		&securityv1.AuthorizationPolicy{ObjectMeta: meta("shop", "at-ratings", nil), Spec: securityapi.AuthorizationPolicy{
			TargetRefs: []*typeapi.PolicyTargetReference{{Kind: "Service", Name: "ratings"}, {Kind: "Gateway", Name: "nosuch"}}, Rules: []*securityapi.Rule{getOnly}}},
	)
	got, err := Run(t.Context(), Clients{Kube: kube, Istio: istio, Gateway: gw}, "", "istio-system")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, f := range got {
		if f.Object == "Namespace lost" && !strings.Contains(f.Message, "waypoint lost/waypoint") {
			t.Errorf("namespace lost: got %q, want its own namespace's waypoint named", f.Message)
		}
		lines = append(lines, string(f.Level)+" "+f.Code+" "+f.Object)
		if f.Message == "" || f.Fix == "" {
			t.Errorf("%s %s: no message or fix: %+v", f.Code, f.Object, f)
		}
	}
	want := []string{
		"Warning ReferenceNotFound AuthorizationPolicy shop/at-ratings",
		"Warning TargetWithoutWaypoint AuthorizationPolicy shop/at-ratings",
		"Warning L7PolicyWithoutWaypoint AuthorizationPolicy shop/get-only",
		"Warning SelectsNothing AuthorizationPolicy shop/nobody",
		"Warning RouteParentWithoutWaypoint HTTPRoute shop/ratings",
		"Error WaypointNotFound Namespace lost",
		"Error NotAWaypoint Service shop/details",
		"Error WaypointNotFound ServiceAccount shop/ratings",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("findings:\ngot\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	// Only the namespace asked for (namespaces themselves are always read).
	got, err = Run(t.Context(), Clients{Kube: kube, Istio: istio, Gateway: gw}, "other", "istio-system")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range got {
		if !strings.HasPrefix(f.Object, "Namespace ") {
			t.Errorf("namespace other: got %+v, want only namespace findings", f)
		}
	}
}

func ptr[T any](v T) *T { return &v }
