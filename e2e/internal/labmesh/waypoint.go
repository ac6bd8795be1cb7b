package labmesh

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	"k8s.io/utils/ptr"

	"github.com/ambitmesh/ambit/internal/kubewatch"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/istiod/gateway"
)

// Waypoints in the lab run as on a cluster: istiod's waypoint controller
// (with --waypoint-image=lab.WaypointImage) applies each waypoint
// Gateway's Deployment, the controller-manager makes its pods, the
// scheduler places them (a lab started with lab.Config.Scheduler) and the
// nodes' kubelet stand-ins run them, the waypoint binary in a pod network
// namespace of its own with the Deployment's projected istio-ca token and
// mesh root mounted where its arguments say. They reach istiod through
// its Service (istiodEndpoints).
const (
	// WaypointAdmin is a waypoint's admin address inside its pod.
	WaypointAdmin = "http://127.0.0.1:15000"
	// istiodSlice is the EndpointSlice that puts istiod's address behind
	// its Service.
	istiodSlice = "istiod-lab"
)

// istiodEndpoints gives the chart's istiod Service (which selects
// istiod's pods; the lab runs istiod as a process on the control-plane
// node) an EndpointSlice with istiod's address, so that pods reach
// istiod at istiod.istio-system.svc:15012 as on a cluster: the address
// istiod's waypoint controller puts in every waypoint Deployment.
func (m *Mesh) istiodEndpoints(ctx context.Context) error {
	return IstiodEndpoints(ctx, m.l)
}

// IstiodEndpoints puts the control-plane node's address behind Service
// istio-system/istiod, for an istiod the caller runs there (Istio's own,
// in e2e/istio) whose clients are pods.
func IstiodEndpoints(ctx context.Context, l *lab.Lab) error {
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: istiodSlice, Namespace: IstiodNamespace, Labels: map[string]string{
			discoveryv1.LabelServiceName: "istiod",
			discoveryv1.LabelManagedBy:   "ambit-lab",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{lab.ControlPlaneIP().String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
		}},
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("tls-xds-ca"), Port: ptr.To[int32](IstiodSecurePort), Protocol: ptr.To(corev1.ProtocolTCP)},
		},
	}
	_, err := l.Client.DiscoveryV1().EndpointSlices(IstiodNamespace).Create(ctx, slice, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("istiod endpoints: %w", err)
	}
	return nil
}

// WaypointPods waits until the waypoint Gateway namespace/name has n
// ready pods (its Deployment's), and returns them.
func (m *Mesh) WaypointPods(ctx context.Context, namespace, name string, n int) ([]*corev1.Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	pods := m.l.Client.CoreV1().Pods(namespace)
	sel := gateway.LabelGatewayName + "=" + name
	lw := kubewatch.Labelled(pods, sel)
	var ready []*corev1.Pod
	check := func(s cache.Store) (bool, error) {
		ready = ready[:0]
		for _, o := range s.List() {
			p := o.(*corev1.Pod)
			if p.DeletionTimestamp == nil && lab.PodReady(p) {
				ready = append(ready, p)
			}
		}
		return len(ready) == n && len(s.List()) == n, nil
	}
	var store cache.Store
	_, err := watchtools.UntilWithSync(ctx, lw, &corev1.Pod{}, func(s cache.Store) (bool, error) {
		store = s
		return check(s)
	}, func(watch.Event) (bool, error) { return check(store) })
	if err != nil {
		return nil, fmt.Errorf("waypoint %s/%s: wait for %d ready pods (got %d): %w", namespace, name, n, len(ready), err)
	}
	return ready, nil
}

// WaitWaypoint waits until the waypoint Gateway namespace/name has n
// ready pods and the config dump (Envoy's ConfigDump JSON, admin
// /config_dump) of each satisfies cond: how a test knows that what it
// changed has reached the waypoint. It returns the pods.
func (m *Mesh) WaitWaypoint(ctx context.Context, namespace, name string, n int, what string, cond func(dump string) bool) ([]*corev1.Pod, error) {
	pods, err := m.WaypointPods(ctx, namespace, name, n)
	if err != nil {
		return nil, err
	}
	for _, p := range pods {
		ns, ok := m.l.Node(p.Spec.NodeName).Kubelet.PodNetNS(p.Namespace, p.Name)
		if !ok {
			return nil, fmt.Errorf("waypoint pod %s/%s: not running on %s", p.Namespace, p.Name, p.Spec.NodeName)
		}
		if err := lab.WaitHTTPBody(ctx, ns, WaypointAdmin+"/config_dump", time.Minute, cond); err != nil {
			return nil, fmt.Errorf("waypoint pod %s/%s: wait for %s: %w", p.Namespace, p.Name, what, err)
		}
	}
	return pods, nil
}
