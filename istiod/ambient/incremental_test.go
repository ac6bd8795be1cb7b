package ambient

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	secapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambitmesh/ambit/api/security"
	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/istiod/authz"
)

// objects is the test's own record of the cluster objects, from which
// the reference model is built with Build.
type objects struct {
	namespaces map[string]*corev1.Namespace
	nodes      map[string]*corev1.Node
	pods       map[string]*corev1.Pod
	services   map[string]*corev1.Service
	slices     map[string]*discoveryv1.EndpointSlice
	aps        map[string]*securityv1.AuthorizationPolicy
	accounts   map[string]*corev1.ServiceAccount
	gateways   map[string]*gatewayv1.Gateway
	policies   *authz.Translation
}

func sortedValues[T any](m map[string]T) []T {
	out := make([]T, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, m[k])
	}
	return out
}

func (c *objects) state() State {
	return State{
		Namespaces:      sortedValues(c.namespaces),
		Nodes:           sortedValues(c.nodes),
		Pods:            sortedValues(c.pods),
		Services:        sortedValues(c.services),
		EndpointSlices:  sortedValues(c.slices),
		ServiceAccounts: sortedValues(c.accounts),
		Gateways:        sortedValues(c.gateways),
		Policies:        c.policies,
	}
}

// gen makes random objects from small pools of names, labels and
// addresses, so that events often touch the same objects.
type gen struct{ r *rand.Rand }

func (g gen) pick(options ...string) string { return options[g.r.IntN(len(options))] }

func (g gen) labels(keys ...string) map[string]string {
	var out map[string]string
	for _, k := range keys {
		if g.r.IntN(2) == 0 {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		switch k {
		case DataplaneModeLabel:
			out[k] = g.pick(DataplaneModeAmbient, DataplaneModeNone)
		case labelRegion, labelZone:
			out[k] = g.pick("r1", "r2")
		case LabelUseWaypoint:
			out[k] = g.pick("w0", "w1", "w2", UseWaypointNone)
		case LabelUseWaypointNamespace:
			out[k] = g.pick("ns0", "ns1")
		case LabelWaypointFor:
			out[k] = g.pick(WaypointForService, WaypointForWorkload, WaypointForAll, WaypointForNone, "bogus")
		case LabelGatewayName:
			out[k] = g.pick("w0", "w1")
		case LabelGatewayManaged:
			out[k] = GatewayManagedMesh
		default:
			out[k] = g.pick("a", "b")
		}
	}
	return out
}

func (g gen) namespace() *corev1.Namespace {
	return ns(g.pick("ns0", "ns1", "ns2"), g.labels(DataplaneModeLabel, "team", LabelUseWaypoint, LabelUseWaypointNamespace))
}

func (g gen) node() *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: g.pick("n0", "n1", "n2"), Labels: g.labels(labelRegion, labelZone, "kind")}}
}

func (g gen) pod() *corev1.Pod {
	ip := g.pick("", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "fd00::5")
	p := pod(g.pick("ns0", "ns1", "ns2"), g.pick("p0", "p1", "p2", "p3", "p4", "p5"), ip, g.pick("n0", "n1", "n2", "n3"), g.labels("app", "version", DataplaneModeLabel, LabelUseWaypoint, LabelUseWaypointNamespace, LabelGatewayName))
	p.Spec.ServiceAccountName = g.pick("", "sa0", "sa1")
	if ip == "" {
		p.Status.PodIPs = nil
	}
	if g.r.IntN(3) == 0 {
		p.Status.Conditions[0].Status = corev1.ConditionFalse
	}
	if g.r.IntN(2) == 0 {
		p.Annotations = map[string]string{"ambient.istio.io/redirection": "enabled"}
	}
	if g.r.IntN(8) == 0 {
		p.Spec.HostNetwork = true
	}
	if g.r.IntN(10) == 0 {
		p.Status.Phase = corev1.PodSucceeded
	}
	if g.r.IntN(10) == 0 {
		p.DeletionTimestamp = &metav1.Time{}
	}
	if g.r.IntN(4) == 0 {
		p.OwnerReferences = []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "web-7d9f", Controller: ptr.To(true)}}
	}
	return p
}

func (g gen) service() *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: g.pick("ns0", "ns1", "ns2"), Name: g.pick("s0", "s1", "s2", "s3", "w0", "w1"),
			Labels: g.labels(LabelUseWaypoint, LabelUseWaypointNamespace, LabelGatewayManaged)},
		Spec: corev1.ServiceSpec{
			Selector:   g.labels("app", "version"),
			ClusterIPs: []string{g.pick("10.96.0.1", "10.96.0.2", "None")},
		},
	}
	for _, name := range []string{"http", "tcp"} {
		if g.r.IntN(2) == 0 {
			continue
		}
		tp := intstr.FromString(name)
		if g.r.IntN(2) == 0 {
			tp = intstr.FromInt32(int32(7000 + g.r.IntN(3)))
		}
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: name, Port: int32(80 + g.r.IntN(3)), TargetPort: tp})
	}
	if g.r.IntN(2) == 0 {
		svc.Spec.Selector = nil // backends from EndpointSlices
	}
	if g.r.IntN(8) == 0 {
		svc.Spec.Type = corev1.ServiceTypeExternalName
	}
	if g.r.IntN(4) == 0 {
		svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: g.pick("192.0.2.1", "192.0.2.2")}}
	}
	return svc
}

func (g gen) slice() *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: g.pick("ns0", "ns1", "ns2"), Name: g.pick("e0", "e1", "e2"),
			Labels: map[string]string{discoveryv1.LabelServiceName: g.pick("s0", "s1", "s2", "s3")}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To(g.pick("http", "tcp")), Port: ptr.To(int32(9000 + g.r.IntN(2)))}},
	}
	for range g.r.IntN(4) {
		ep := discoveryv1.Endpoint{Addresses: []string{g.pick("10.1.0.1", "10.1.0.2", "bad")}, NodeName: ptr.To(g.pick("n0", "n1"))}
		if g.r.IntN(2) == 0 {
			ep.TargetRef = &corev1.ObjectReference{Kind: "Pod", Name: g.pick("p0", "p1", "p2", "p3", "p4", "p5"), Namespace: g.pick("", es.Namespace, "ns0")}
		}
		if g.r.IntN(3) == 0 {
			ep.Conditions.Ready = ptr.To(false)
		}
		es.Endpoints = append(es.Endpoints, ep)
	}
	return es
}

func (g gen) account() *corev1.ServiceAccount {
	return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: g.pick("ns0", "ns1", "ns2"), Name: g.pick("default", "sa0", "sa1"),
		Labels: g.labels(LabelUseWaypoint, LabelUseWaypointNamespace)}}
}

// gateway makes a waypoint Gateway, often a wrong one.
func (g gen) gateway() *gatewayv1.Gateway {
	gw := waypointGateway(g.pick("ns0", "ns1", "ns2"), g.pick("w0", "w1", "w2"), g.labels(LabelWaypointFor))
	switch g.r.IntN(8) {
	case 0:
		gw.Spec.GatewayClassName = "other"
	case 1:
		gw.Spec.Listeners[0].Port = 15009
	case 2:
		gw.Spec.Listeners[0].Protocol = gatewayv1.HTTPProtocolType
	case 3:
		gw.Spec.Listeners[0].Protocol = WaypointListenerProtocolAll
	}
	switch g.r.IntN(3) {
	case 0:
		from := gatewayv1.NamespacesFromAll
		gw.Spec.Listeners[0].AllowedRoutes = &gatewayv1.AllowedRoutes{Namespaces: &gatewayv1.RouteNamespaces{From: &from}}
	case 1:
		from := gatewayv1.NamespacesFromSelector
		gw.Spec.Listeners[0].AllowedRoutes = &gatewayv1.AllowedRoutes{Namespaces: &gatewayv1.RouteNamespaces{From: &from,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}}}}
	}
	if g.r.IntN(3) == 0 {
		gw.Annotations = map[string]string{AnnotationForServiceAccount: g.pick("sa0", "sa1")}
	}
	return gw
}

func (g gen) policy() *securityv1.AuthorizationPolicy {
	ap := &securityv1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: g.pick("ns0", "ns1", "istio-system"), Name: g.pick("ap0", "ap1", "ap2")},
	}
	if sel := g.labels("app", "version"); sel != nil {
		ap.Spec.Selector = &typeapi.WorkloadSelector{MatchLabels: sel}
	}
	if g.r.IntN(2) == 0 {
		ap.Spec.Action = secapi.AuthorizationPolicy_DENY
	}
	return ap
}

// TestBuilderMatchesBuild: after any sequence of events, the Builder's
// model equals Build over the same objects, and the deltas it returned,
// applied one after the other, give that model too (what an xDS client
// ends up with).
func TestBuilderMatchesBuild(t *testing.T) {
	// seen counts what the final models held, so that the test fails if
	// the generator stops producing waypoint bindings.
	seen := map[string]int{}
	defer func() {
		for _, what := range []string{"service waypoint", "service waypoint hostname", "workload waypoint",
			ReasonWaypointAccepted, ReasonWaypointNotFound, ReasonWaypointInvalid, ReasonWaypointNotAllowed, ReasonWaypointTraffic, ReasonWaypointConflict} {
			if seen[what] == 0 && !t.Failed() {
				t.Errorf("no final model had a %s", what)
			}
		}
	}()
	for seed := range uint64(300) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			g := gen{rand.New(rand.NewPCG(seed, 42))}
			cfg := Config{ClusterID: "c1"}
			c := &objects{
				namespaces: map[string]*corev1.Namespace{}, nodes: map[string]*corev1.Node{}, pods: map[string]*corev1.Pod{},
				services: map[string]*corev1.Service{}, slices: map[string]*discoveryv1.EndpointSlice{}, aps: map[string]*securityv1.AuthorizationPolicy{},
				accounts: map[string]*corev1.ServiceAccount{}, gateways: map[string]*gatewayv1.Gateway{},
			}
			b := NewBuilder(cfg)
			client := Model{Addresses: map[string]*workload.Address{}, Authorizations: map[string]*security.Authorization{}}
			var events []string
			check := func() {
				t.Helper()
				d := b.Flush()
				for k, v := range d.Addresses {
					client.Addresses[k] = v
				}
				for _, k := range d.RemovedAddresses {
					delete(client.Addresses, k)
				}
				for k, v := range d.Authorizations {
					client.Authorizations[k] = v
				}
				for _, k := range d.RemovedAuthorizations {
					delete(client.Authorizations, k)
				}
				want := Build(c.state(), cfg)
				if c.policies == nil {
					want.PolicyStatus = nil
				}
				got := b.Model()
				if c.policies == nil {
					got.PolicyStatus = nil
				}
				if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
					t.Fatalf("after events %v:\nBuilder model (-Build +Builder):\n%s", events, diff)
				}
				if diff := cmp.Diff(want.Addresses, client.Addresses, protocmp.Transform()); diff != "" {
					t.Fatalf("after events %v:\naddresses from deltas (-Build +deltas):\n%s", events, diff)
				}
				if diff := cmp.Diff(want.Authorizations, client.Authorizations, protocmp.Transform()); diff != "" {
					t.Fatalf("after events %v:\nauthorizations from deltas (-Build +deltas):\n%s", events, diff)
				}
			}
			for range 60 {
				var ev string
				// Some events aim at an existing pod: its service account
				// relabelled, a Service that selects it; random ones
				// rarely line up so.
				var target *corev1.Pod
				if len(c.pods) > 0 {
					target = c.pods[g.pick(slices.Sorted(maps.Keys(c.pods))...)]
				}
				switch g.r.IntN(20) {
				case 19:
					if target == nil {
						continue
					}
					es := g.slice()
					es.Namespace = target.Namespace
					es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{"10.1.0.9"},
						TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: target.Name}})
					c.slices[key(es.Namespace, es.Name)] = es
					b.SetEndpointSlice(es)
					ev = "set slice naming a pod " + key(es.Namespace, es.Name)
				case 17:
					if target == nil {
						continue
					}
					sa := g.account()
					sa.Namespace, sa.Name = target.Namespace, podServiceAccount(target)
					c.accounts[key(sa.Namespace, sa.Name)] = sa
					b.SetServiceAccount(sa)
					ev = "set serviceaccount of a pod " + key(sa.Namespace, sa.Name)
				case 18:
					if target == nil {
						continue
					}
					svc := g.service()
					svc.Namespace = target.Namespace
					svc.Spec.Type = ""
					svc.Spec.Selector = map[string]string{"app": target.Labels["app"]}
					c.services[key(svc.Namespace, svc.Name)] = svc
					b.SetService(svc)
					ev = "set service selecting a pod " + key(svc.Namespace, svc.Name)
				case 13:
					ev = "set serviceaccount " + setObject(c.accounts, g.account(), b.SetServiceAccount)
				case 14:
					ev = "delete serviceaccount " + deleteObject(c.accounts, g.account(), b.DeleteServiceAccount)
				case 15:
					ev = "set gateway " + setObject(c.gateways, g.gateway(), b.SetGateway)
				case 16:
					ev = "delete gateway " + deleteObject(c.gateways, g.gateway(), b.DeleteGateway)
				case 0:
					n := g.namespace()
					c.namespaces[n.Name] = n
					b.SetNamespace(n)
					ev = "set namespace " + n.Name
				case 1:
					n := g.pick("ns0", "ns1", "ns2")
					delete(c.namespaces, n)
					b.DeleteNamespace(n)
					ev = "delete namespace " + n
				case 2:
					n := g.node()
					c.nodes[n.Name] = n
					b.SetNode(n)
					ev = "set node " + n.Name
				case 3:
					n := g.pick("n0", "n1", "n2")
					delete(c.nodes, n)
					b.DeleteNode(n)
					ev = "delete node " + n
				case 4, 5, 6:
					ev = "set pod " + setObject(c.pods, g.pod(), b.SetPod)
				case 7:
					ev = "delete pod " + deleteObject(c.pods, g.pod(), b.DeletePod)
				case 8:
					ev = "set service " + setObject(c.services, g.service(), b.SetService)
				case 9:
					ev = "delete service " + deleteObject(c.services, g.service(), b.DeleteService)
				case 10:
					ev = "set slice " + setObject(c.slices, g.slice(), b.SetEndpointSlice)
				case 11:
					ev = "delete slice " + deleteObject(c.slices, g.slice(), b.DeleteEndpointSlice)
				case 12:
					ap := g.policy()
					if g.r.IntN(3) == 0 {
						delete(c.aps, key(ap.Namespace, ap.Name))
						ev = "delete policy " + key(ap.Namespace, ap.Name)
					} else {
						c.aps[key(ap.Namespace, ap.Name)] = ap
						ev = "set policy " + key(ap.Namespace, ap.Name)
					}
					c.policies = authz.Translate(sortedValues(c.aps), nil, authz.Config{RootNamespace: "istio-system"})
					b.SetPolicies(c.policies)
				}
				events = append(events, ev)
				if g.r.IntN(5) == 0 {
					check()
				}
			}
			check()
			m := b.Model()
			for _, a := range m.Addresses {
				if wp := a.GetService().GetWaypoint(); wp != nil {
					seen["service waypoint"]++
					if wp.GetHostname() != nil {
						seen["service waypoint hostname"]++
					}
				}
				if a.GetWorkload().GetWaypoint() != nil {
					seen["workload waypoint"]++
				}
			}
			for _, st := range m.WaypointStatus {
				seen[st.Reason]++
			}
		})
	}
}

// setObject puts o in the reference cluster's map m and gives it to the
// builder (apply); it returns o's key.
func setObject[T metav1.Object](m map[string]T, o T, apply func(T)) string {
	k := key(o.GetNamespace(), o.GetName())
	m[k] = o
	apply(o)
	return k
}

// deleteObject takes o out of the reference cluster's map m and the builder
// (remove); it returns o's key.
func deleteObject[T metav1.Object](m map[string]T, o T, remove func(namespace, name string)) string {
	k := key(o.GetNamespace(), o.GetName())
	delete(m, k)
	remove(o.GetNamespace(), o.GetName())
	return k
}
