package gateway

import (
	"fmt"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// requiredResources are the Gateway API resources istiod watches: without
// them its informers would never sync.
var requiredResources = []string{"gatewayclasses", "gateways"}

// MissingCRDs names the Gateway API resources (of
// gateway.networking.k8s.io/v1) that istiod needs and the apiserver does
// not serve; none when the CRDs are installed.
func MissingCRDs(d discovery.DiscoveryInterface) ([]string, error) {
	gv := gatewayv1.GroupVersion.String()
	list, err := d.ServerResourcesForGroupVersion(gv)
	if apierrors.IsNotFound(err) {
		return slices.Clone(requiredResources), nil
	}
	if err != nil {
		return nil, fmt.Errorf("discover %s: %w", gv, err)
	}
	var missing []string
	for _, r := range requiredResources {
		if !slices.ContainsFunc(list.APIResources, func(a metav1.APIResource) bool { return a.Name == r }) {
			missing = append(missing, r)
		}
	}
	return missing, nil
}
