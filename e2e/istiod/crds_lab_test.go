package istiod

import (
	"context"
	"strings"
	"testing"

	netapi "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// istioTrafficCRDs: the VirtualService and DestinationRule CRDs of
// deploy/crds (Istio's own schema) are served; Bookinfo's objects are
// stored, and a field Istio's API does not have is refused by the API
// server under strict field validation (kubectl's default), never
// reaching istiod to be dropped there.
func istioTrafficCRDs(ctx context.Context, t *testing.T, istio istioclient.Interface, ns string) {
	net := istio.NetworkingV1()
	if _, err := net.DestinationRules(ns).Create(ctx, &networkingv1.DestinationRule{
		ObjectMeta: metav1.ObjectMeta{Name: "reviews"},
		Spec: netapi.DestinationRule{Host: "reviews", Subsets: []*netapi.Subset{
			{Name: "v1", Labels: map[string]string{"version": "v1"}}, {Name: "v2", Labels: map[string]string{"version": "v2"}}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create DestinationRule: %v", err)
	}
	vs, err := net.VirtualServices(ns).Create(ctx, &networkingv1.VirtualService{
		ObjectMeta: metav1.ObjectMeta{Name: "reviews"},
		Spec: netapi.VirtualService{Hosts: []string{"reviews"}, Http: []*netapi.HTTPRoute{{
			Route: []*netapi.HTTPRouteDestination{{Destination: &netapi.Destination{Host: "reviews", Subset: "v1"}, Weight: 90},
				{Destination: &netapi.Destination{Host: "reviews", Subset: "v2"}, Weight: 10}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create VirtualService: %v", err)
	}
	if got := vs.Spec.GetHttp()[0].GetRoute()[1].GetWeight(); got != 10 {
		t.Errorf("stored weight: got %d, want 10", got)
	}
	// A field Istio does not have, in a patch as kubectl sends it.
	patch := []byte(`{"spec":{"http":[{"route":[{"destination":{"host":"reviews"}}],"retriesPolicy":{"attempts":3}}]}}`)
	_, err = net.VirtualServices(ns).Patch(ctx, "reviews", types.MergePatchType, patch, metav1.PatchOptions{FieldValidation: "Strict"})
	if err == nil || !strings.Contains(err.Error(), "retriesPolicy") {
		t.Errorf("patch with an unknown field: got error %v, want one naming retriesPolicy", err)
	}
}
