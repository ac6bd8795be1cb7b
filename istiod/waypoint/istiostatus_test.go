package waypoint

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	metaapi "istio.io/api/meta/v1alpha1"
	secapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestPolicyStatuses: WaypointAccepted per policy with targetRefs, one
// binding per targetRef flattened as Istio does, and fail-safe parts
// named.
func TestPolicyStatuses(t *testing.T) {
	gw := func(name string) *typeapi.PolicyTargetReference {
		return &typeapi.PolicyTargetReference{Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: name}
	}
	svc := func(name string) *typeapi.PolicyTargetReference {
		return &typeapi.PolicyTargetReference{Kind: "Service", Name: name}
	}
	class := &typeapi.PolicyTargetReference{Group: "gateway.networking.k8s.io", Kind: "GatewayClass", Name: "istio-waypoint"}
	ap := func(ns, name string, refs ...*typeapi.PolicyTargetReference) *securityv1.AuthorizationPolicy {
		return &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: secapi.AuthorizationPolicy{TargetRefs: refs}}
	}
	targets := policyTargets{
		rootNS:    "istio-system",
		waypoints: map[Ref]bool{{Namespace: "shop", Name: "wp"}: true},
		service: func(ns, name string) (string, bool) {
			switch name {
			case "reviews":
				return "shop/wp", true
			case "ratings":
				return "", true
			}
			return "", false
		},
	}
	aps := []*securityv1.AuthorizationPolicy{
		ap("shop", "gateway", gw("wp")),
		ap("shop", "no-gateway", gw("nosuch")),
		ap("shop", "service", svc("reviews")),
		ap("shop", "unbound-service", svc("ratings")),
		ap("shop", "partly", gw("wp"), svc("nosuch")),
		ap("istio-system", "class", class),
		ap("shop", "class-outside-root", class),
		ap("shop", "failsafe", svc("reviews")),
		ap("shop", "selector"),
	}
	notes := map[string][]string{"AuthorizationPolicy/shop/failsafe": {"rule 0: requestPrincipals: no JWT is validated on waypoints; matches nothing"}}
	got := map[string]string{}
	for _, st := range policyStatuses(aps, targets, notes) {
		c := st.Conditions[0]
		got[st.Name] = c.Type + " " + string(c.Status) + " " + c.Reason + ": " + c.Message
	}
	want := map[string]string{
		"gateway":            "WaypointAccepted True Accepted: bound to shop/wp",
		"no-gateway":         "WaypointAccepted False TargetNotFound: Gateway shop/nosuch is no waypoint",
		"service":            "WaypointAccepted True Accepted: bound to shop/wp",
		"unbound-service":    "WaypointAccepted False AncestorNotBound: Service shop/ratings is not bound to a waypoint",
		"partly":             "WaypointAccepted True PartiallyInvalid: bound to shop/wp; Invalid targetRefs: Service.core:shop/nosuch",
		"class":              "WaypointAccepted True Accepted: bound to istio-waypoint",
		"class-outside-root": "WaypointAccepted False Invalid: AuthorizationPolicy must be in the root namespace `istio-system` when referencing a GatewayClass",
		"failsafe":           "WaypointAccepted True UnsupportedValue: bound to shop/wp; enforced stricter than written (failing safe): rule 0: requestPrincipals: no JWT is validated on waypoints; matches nothing",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("statuses (-want +got):\n%s", diff)
	}
}

// TestSetCondition: a condition replaces the one of its type only; the
// transition time moves only when the status does.
func TestSetCondition(t *testing.T) {
	t0, t1 := metav1.Unix(100, 0), metav1.Unix(200, 0)
	conds := []*metaapi.IstioCondition{{Type: "ZtunnelAccepted", Status: "True", Reason: "Accepted"}}
	conds, changed := SetCondition(conds, &metaapi.IstioCondition{Type: "WaypointAccepted", Status: "True", Reason: "Accepted"}, t0)
	if !changed || len(conds) != 2 || conds[0].Type != "ZtunnelAccepted" {
		t.Fatalf("add: got %v changed %v, want both conditions", conds, changed)
	}
	conds, changed = SetCondition(conds, &metaapi.IstioCondition{Type: "WaypointAccepted", Status: "True", Reason: "UnsupportedValue", Message: "m"}, t1)
	if !changed || conds[1].Reason != "UnsupportedValue" || !conds[1].LastTransitionTime.AsTime().Equal(t0.Time) {
		t.Errorf("same status: got %v changed %v, want the new reason and the old transition time", conds[1], changed)
	}
	if _, changed = SetCondition(conds, &metaapi.IstioCondition{Type: "WaypointAccepted", Status: "True", Reason: "UnsupportedValue", Message: "m"}, t1); changed {
		t.Error("equal condition: changed, want unchanged")
	}
	conds, changed = SetCondition(conds, &metaapi.IstioCondition{Type: "WaypointAccepted", Status: "False", Reason: "TargetNotFound"}, t1)
	if !changed || !conds[1].LastTransitionTime.AsTime().Equal(t1.Time) {
		t.Errorf("status flip: got %v, want transition time %v", conds[1], t1)
	}
	conds, changed = RemoveCondition(conds, "WaypointAccepted")
	if !changed || len(conds) != 1 || conds[0].Type != "ZtunnelAccepted" {
		t.Errorf("remove: got %v changed %v, want ZtunnelAccepted only", conds, changed)
	}
}
