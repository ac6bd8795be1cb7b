package ambient

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/internal/mesh"
	"github.com/ambitmesh/ambit/istiod/gateway"
)

// The waypoint surface, Istio's names.
const (
	// LabelUseWaypoint on a Namespace, Service, Pod or ServiceAccount
	// names the waypoint Gateway its traffic goes through; UseWaypointNone
	// opts out of a binding further down the precedence.
	LabelUseWaypoint = "istio.io/use-waypoint"
	// LabelUseWaypointNamespace names the namespace of that Gateway when
	// it is not the object's own.
	LabelUseWaypointNamespace = "istio.io/use-waypoint-namespace"
	// LabelWaypointFor on a waypoint Gateway says which traffic it takes:
	// WaypointForService (the default), WaypointForWorkload,
	// WaypointForAll or WaypointForNone.
	LabelWaypointFor = gateway.LabelWaypointFor
	// AnnotationForServiceAccount on a waypoint Gateway makes it the
	// waypoint of one service account's workloads in its namespace, as
	// Istio 1.18-1.21 did.
	AnnotationForServiceAccount = "istio.io/for-service-account"
	// LabelGatewayName marks the pods of a Gateway (the waypoint's own).
	LabelGatewayName = gateway.LabelGatewayName
	// LabelGatewayManaged with value GatewayManagedMesh marks what the
	// waypoint controller made (Istio's label), such as its Service.
	LabelGatewayManaged = gateway.LabelManaged
	GatewayManagedMesh  = gateway.ManagedMesh

	UseWaypointNone     = "none"
	WaypointForService  = "service"
	WaypointForWorkload = "workload"
	WaypointForAll      = "all"
	WaypointForNone     = "none"

	// WaypointListenerProtocol is the protocol of a waypoint's listener;
	// Istio 1.18-1.21 service-account waypoints used
	// WaypointListenerProtocolAll.
	WaypointListenerProtocol    = gateway.ListenerProtocolHBONE
	WaypointListenerProtocolAll = gateway.ListenerProtocolAll
)

// ConditionWaypointBound is the condition Istio puts on a bound Service
// (and Namespace) to say whether its binding took.
const ConditionWaypointBound = gateway.ConditionWaypointBound

// Reasons of a BindingStatus. The first four are Istio's (its istiod's
// ambient status.go); Istio has no counterpart of the last two, since it
// ignores a Gateway that is no waypoint and has no service-account
// waypoints.
const (
	ReasonWaypointAccepted   = "WaypointAccepted"
	ReasonWaypointNotFound   = "WaypointIsNotReady"
	ReasonWaypointNotAllowed = "AttachmentDenied"
	ReasonWaypointTraffic    = "UnsupportedTrafficType"
	ReasonWaypointInvalid    = "WaypointInvalid"
	ReasonWaypointConflict   = "ServiceAccountClaimedTwice"
)

// BindingStatus says whether an object's waypoint binding took: the
// istio.io/WaypointBound condition of a Service or Namespace, the
// validity of a waypoint Gateway, the binding of a ServiceAccount.
type BindingStatus struct {
	Bound   bool   `json:"bound"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// StatusKey is the key of an object in Model.WaypointStatus.
func StatusKey(kind, namespace, name string) string {
	if namespace == "" {
		return kind + "/" + name
	}
	return kind + "/" + namespace + "/" + name
}

// traffic is what a binding is used for.
type traffic string

const (
	serviceTraffic  traffic = WaypointForService
	workloadTraffic traffic = WaypointForWorkload
)

// serves reports whether a waypoint-for value takes the traffic.
func serves(forValue string, t traffic) bool {
	return forValue == WaypointForAll || forValue == string(t)
}

// waypoint is one Gateway of the waypoint class, resolved. Comparable
// with ==-like equality (waypointEqual) so that a change is detected.
type waypoint struct {
	namespace, name string
	// forLabel is the istio.io/waypoint-for label, "" when absent.
	forLabel string
	// forSA is the istio.io/for-service-account annotation.
	forSA string
	// invalid says why the Gateway is no usable waypoint; "" when it is.
	invalid string
	// foreign: the Gateway is of another class, not ours to report on.
	foreign bool
	// from and selector are its listener's allowedRoutes.namespaces.
	from     gatewayv1.FromNamespaces
	selector *metav1.LabelSelector
	// vip is its Service's cluster IP; invalid when it has none yet (the
	// address is then the Service's hostname, which resolves to nothing:
	// bound traffic fails closed until the waypoint exists).
	vip netip.Addr
}

func waypointEqual(a, b *waypoint) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.namespace == b.namespace && a.name == b.name && a.forLabel == b.forLabel && a.forSA == b.forSA &&
		a.invalid == b.invalid && a.foreign == b.foreign && a.from == b.from && a.vip == b.vip && labelSelectorEqual(a.selector, b.selector)
}

func labelSelectorEqual(a, b *metav1.LabelSelector) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.String() == b.String()
}

// resolveWaypoint reads a Gateway; nil when it is not of the waypoint
// class (not ours: bindings to it are refused as invalid).
func resolveWaypoint(gw *gatewayv1.Gateway, svc *corev1.Service) *waypoint {
	w := &waypoint{
		namespace: gw.Namespace, name: gw.Name,
		forLabel: gw.Labels[LabelWaypointFor],
		forSA:    gw.Annotations[AnnotationForServiceAccount],
		from:     gatewayv1.NamespacesFromSame,
	}
	if string(gw.Spec.GatewayClassName) != gateway.WaypointClass {
		w.invalid = fmt.Sprintf("gatewayClassName is %q, want %q", gw.Spec.GatewayClassName, gateway.WaypointClass)
		w.foreign = true
		return w
	}
	// One judge of what a waypoint is, the controller's (its Accepted
	// condition says the same).
	if w.invalid = gateway.WaypointProblem(gw); w.invalid != "" {
		return w
	}
	var l *gatewayv1.Listener
	for i := range gw.Spec.Listeners {
		p := gw.Spec.Listeners[i].Protocol
		if p == WaypointListenerProtocol || p == WaypointListenerProtocolAll {
			l = &gw.Spec.Listeners[i]
			break
		}
	}
	if ar := l.AllowedRoutes; ar != nil && ar.Namespaces != nil {
		if ar.Namespaces.From != nil {
			w.from = *ar.Namespaces.From
		}
		w.selector = ar.Namespaces.Selector
	}
	if svc != nil {
		for _, s := range append([]string{svc.Spec.ClusterIP}, svc.Spec.ClusterIPs...) {
			if ip, err := netip.ParseAddr(s); err == nil {
				w.vip = ip
				break
			}
		}
	}
	return w
}

// admits reports whether the waypoint's listener lets a namespace bind.
func (w *waypoint) admits(ns *corev1.Namespace) bool {
	if ns != nil && ns.Name == w.namespace {
		return true
	}
	switch w.from {
	case gatewayv1.NamespacesFromAll:
		return true
	case gatewayv1.NamespacesFromSelector:
		if w.selector == nil || ns == nil {
			return false
		}
		sel, err := metav1.LabelSelectorAsSelector(w.selector)
		return err == nil && sel.Matches(labels.Set(ns.Labels))
	}
	return false
}

// waypoints are the resolved waypoints of a cluster state, and the
// service accounts they claim.
type waypoints struct {
	byKey map[string]*waypoint // "namespace/name"
	// claims maps "namespace/serviceaccount" to the key of the one valid
	// waypoint annotated for it; "" when two or more claim it.
	claims map[string]string
	domain string
}

func newWaypoints(gws []*gatewayv1.Gateway, service func(namespace, name string) *corev1.Service, domain string) *waypoints {
	ws := &waypoints{byKey: map[string]*waypoint{}, claims: map[string]string{}, domain: domain}
	for _, gw := range gws {
		k := key(gw.Namespace, gw.Name)
		w := resolveWaypoint(gw, service(gw.Namespace, gw.Name))
		ws.byKey[k] = w
		if w.invalid != "" || w.forSA == "" {
			continue
		}
		ck := key(gw.Namespace, w.forSA)
		if _, taken := ws.claims[ck]; taken {
			ws.claims[ck] = ""
		} else {
			ws.claims[ck] = k
		}
	}
	return ws
}

func (ws *waypoints) equal(o *waypoints) bool {
	if len(ws.byKey) != len(o.byKey) || len(ws.claims) != len(o.claims) {
		return false
	}
	for k, w := range ws.byKey {
		if !waypointEqual(w, o.byKey[k]) {
			return false
		}
	}
	for k, v := range ws.claims {
		if ov, ok := o.claims[k]; !ok || ov != v {
			return false
		}
	}
	return true
}

// address is the GatewayAddress of a waypoint "namespace/name": its
// Service's VIP, or the Service's hostname while it has none.
func (ws *waypoints) address(namespace, name string) *workload.GatewayAddress {
	ga := &workload.GatewayAddress{HboneMtlsPort: mesh.HBONEPort}
	if w := ws.byKey[key(namespace, name)]; w != nil && w.vip.IsValid() {
		ga.Destination = &workload.GatewayAddress_Address{Address: &workload.NetworkAddress{Address: w.vip.AsSlice()}}
		return ga
	}
	ga.Destination = &workload.GatewayAddress_Hostname{Hostname: &workload.NamespacedHostname{
		Namespace: namespace, Hostname: name + "." + namespace + ".svc." + ws.domain}}
	return ga
}

// refusedSuffix ends the hostname of a binding that must fail closed
// although its Gateway exists: under the reserved top-level domain
// "invalid" (RFC 6761), so no Service or ServiceEntry can answer to it.
const refusedSuffix = ".waypoint.invalid"

// refusedAddress is a GatewayAddress that resolves to nothing: ztunnel
// refuses the traffic it steers there, as for a missing waypoint.
func refusedAddress(namespace, name string) *workload.GatewayAddress {
	return &workload.GatewayAddress{HboneMtlsPort: mesh.HBONEPort, Destination: &workload.GatewayAddress_Hostname{
		Hostname: &workload.NamespacedHostname{Namespace: namespace, Hostname: name + "." + namespace + refusedSuffix}}}
}

// binding is the outcome of one object's istio.io/use-waypoint label.
type binding struct {
	// set: the object has the label (so it decides, whatever the outcome).
	set  bool
	addr *workload.GatewayAddress // nil: no waypoint
	// status is what the object's condition says; zero when !set or
	// the label is "none".
	status BindingStatus
}

// bind resolves a binding label set lbls on an object of namespace ns,
// for traffic t; defFor is the waypoint-for of a waypoint without the
// label (service, or all when bound through a service account).
func (ws *waypoints) bind(ns *corev1.Namespace, objNS string, lbls map[string]string, t traffic, defFor string) binding {
	name := lbls[LabelUseWaypoint]
	if name == "" {
		return binding{}
	}
	if name == UseWaypointNone {
		return binding{set: true}
	}
	wns := lbls[LabelUseWaypointNamespace]
	if wns == "" {
		wns = objNS
	}
	return ws.bindTo(ns, wns, name, t, defFor)
}

func (ws *waypoints) bindTo(ns *corev1.Namespace, wns, name string, t traffic, defFor string) binding {
	ref := key(wns, name)
	w := ws.byKey[ref]
	if w == nil {
		// Fail closed: an address that resolves to nothing until the
		// waypoint exists.
		return binding{set: true, addr: ws.address(wns, name), status: BindingStatus{Reason: ReasonWaypointNotFound,
			Message: fmt.Sprintf("waypoint %s does not exist; bound traffic is refused until it does", ref)}}
	}
	// A Gateway that is no waypoint, or one that refuses the namespace,
	// fails closed too: the label asks for the waypoint's policy, and
	// going direct would skip it silently. (Istio's istiod leaves such
	// a binding out, and the traffic goes direct at L4.)
	if w.invalid != "" {
		return binding{set: true, addr: refusedAddress(wns, name), status: BindingStatus{Reason: ReasonWaypointInvalid,
			Message: fmt.Sprintf("Gateway %s is no waypoint: %s; bound traffic is refused until it is one", ref, w.invalid)}}
	}
	if wns != nsName(ns) && !w.admits(ns) {
		return binding{set: true, addr: refusedAddress(wns, name), status: BindingStatus{Reason: ReasonWaypointNotAllowed,
			Message: fmt.Sprintf("waypoint %s's listener does not allow routes from namespace %s (allowedRoutes.namespaces.from: %s); bound traffic is refused until it does", ref, nsName(ns), w.from)}}
	}
	forValue := w.forLabel
	if forValue == "" {
		forValue = defFor
	}
	if !serves(forValue, t) {
		return binding{set: true, status: BindingStatus{Reason: ReasonWaypointTraffic,
			Message: fmt.Sprintf("waypoint %s is for %s traffic, not %s", ref, forValue, t)}}
	}
	return binding{set: true, addr: ws.address(wns, name), status: BindingStatus{Bound: true, Reason: ReasonWaypointAccepted,
		Message: "bound to " + ref}}
}

func nsName(ns *corev1.Namespace) string {
	if ns == nil {
		return ""
	}
	return ns.Name
}

// isWaypointPod reports whether a pod is one of a waypoint's own.
func (ws *waypoints) isWaypointPod(pod *corev1.Pod) bool {
	g := pod.Labels[LabelGatewayName]
	if g == "" {
		return false
	}
	w := ws.byKey[key(pod.Namespace, g)]
	return w != nil && w.invalid == ""
}

// isWaypointService reports whether a Service is a waypoint's own: the
// controller's label says so, or a waypoint has its name.
func (ws *waypoints) isWaypointService(svc *corev1.Service) bool {
	if svc.Labels[LabelGatewayManaged] == GatewayManagedMesh {
		return true
	}
	w := ws.byKey[key(svc.Namespace, svc.Name)]
	return w != nil && w.invalid == ""
}

// ownBinding is a pod's binding of its own: its label, then its service
// account's label, then a waypoint annotated for its service account.
// The second result is false when none of them decides.
func (ws *waypoints) ownBinding(pod *corev1.Pod, ns *corev1.Namespace, sa *corev1.ServiceAccount, t traffic) (*workload.GatewayAddress, bool) {
	if b := ws.bind(ns, pod.Namespace, pod.Labels, t, WaypointForService); b.set {
		return b.addr, true
	}
	if sa != nil {
		if b := ws.bind(ns, pod.Namespace, sa.Labels, t, WaypointForAll); b.set {
			return b.addr, true
		}
	}
	if ref, ok := ws.claims[key(pod.Namespace, podServiceAccount(pod))]; ok && ref != "" {
		_, name := splitKey(ref)
		return ws.bindTo(ns, pod.Namespace, name, t, WaypointForAll).addr, true
	}
	return nil, false
}

// workloadWaypoint is the waypoint of traffic addressed to a pod:
// pod, then service account, then namespace. A waypoint's own pods have
// none.
func (ws *waypoints) workloadWaypoint(pod *corev1.Pod, ns *corev1.Namespace, sa *corev1.ServiceAccount) *workload.GatewayAddress {
	if ws.isWaypointPod(pod) {
		return nil
	}
	if a, ok := ws.ownBinding(pod, ns, sa, workloadTraffic); ok {
		return a
	}
	if ns != nil {
		return ws.bind(ns, ns.Name, ns.Labels, workloadTraffic, WaypointForService).addr
	}
	return nil
}

// serviceWaypoint is the waypoint of traffic addressed to a Service: its
// own label, else (when none of its backends has a binding of its own,
// which ztunnel then follows per endpoint) its namespace's.
func (ws *waypoints) serviceWaypoint(svc *corev1.Service, ns *corev1.Namespace, backendsBound bool) *workload.GatewayAddress {
	if ws.isWaypointService(svc) {
		return nil
	}
	if b := ws.bind(ns, svc.Namespace, svc.Labels, serviceTraffic, WaypointForService); b.set {
		return b.addr
	}
	if backendsBound || ns == nil {
		return nil
	}
	return ws.bind(ns, ns.Name, ns.Labels, serviceTraffic, WaypointForService).addr
}

func podServiceAccount(pod *corev1.Pod) string {
	if pod.Spec.ServiceAccountName == "" {
		return "default"
	}
	return pod.Spec.ServiceAccountName
}

// statuses are the binding statuses of the objects that depend only on
// themselves, their namespace and the waypoints.
func (ws *waypoints) serviceStatus(svc *corev1.Service, ns *corev1.Namespace) (BindingStatus, bool) {
	b := ws.bind(ns, svc.Namespace, svc.Labels, serviceTraffic, WaypointForService)
	return b.status, b.set && b.status.Reason != ""
}

func (ws *waypoints) namespaceStatus(ns *corev1.Namespace) (BindingStatus, bool) {
	// A namespace binding serves whichever traffic its waypoint is for.
	b := ws.bind(ns, ns.Name, ns.Labels, serviceTraffic, WaypointForService)
	if b.status.Reason == ReasonWaypointTraffic {
		b = ws.bind(ns, ns.Name, ns.Labels, workloadTraffic, WaypointForService)
	}
	return b.status, b.set && b.status.Reason != ""
}

func (ws *waypoints) serviceAccountStatus(sa *corev1.ServiceAccount, ns *corev1.Namespace) (BindingStatus, bool) {
	b := ws.bind(ns, sa.Namespace, sa.Labels, workloadTraffic, WaypointForAll)
	return b.status, b.set && b.status.Reason != ""
}

// gatewayStatuses are the problems of waypoint Gateways: invalid ones of
// the waypoint class, and service accounts claimed twice.
func (ws *waypoints) gatewayStatuses(out map[string]BindingStatus) {
	for k, w := range ws.byKey {
		ns, name := splitKey(k)
		switch {
		case w.invalid != "" && !w.foreign:
			out[StatusKey("Gateway", ns, name)] = BindingStatus{Reason: ReasonWaypointInvalid, Message: w.invalid}
		case w.invalid == "" && w.forSA != "" && ws.claims[key(ns, w.forSA)] == "":
			var others []string
			for ok, o := range ws.byKey {
				if ok != k && o.invalid == "" && o.namespace == ns && o.forSA == w.forSA {
					others = append(others, ok)
				}
			}
			slices.Sort(others)
			out[StatusKey("Gateway", ns, name)] = BindingStatus{Reason: ReasonWaypointConflict,
				Message: fmt.Sprintf("service account %s is also claimed by %s; neither waypoint serves it", w.forSA, strings.Join(others, ", "))}
		}
	}
}

// applyTo sets a pod's Workload.waypoint; a waypoint's own pods speak
// HBONE themselves (they are not captured: native_tunnel, as Istio marks
// them) and have no waypoint.
func (ws *waypoints) applyTo(w *workload.Workload, pod *corev1.Pod, ns *corev1.Namespace, sa *corev1.ServiceAccount) {
	if ws.isWaypointPod(pod) {
		// native_tunnel, as Istio sets it for waypoints: no ztunnel
		// serves the pod, so a ztunnel on its node dials it as any other
		// HBONE peer rather than its own inbound.
		w.TunnelProtocol = workload.TunnelProtocol_HBONE
		w.NativeTunnel = true
		return
	}
	w.Waypoint = ws.workloadWaypoint(pod, ns, sa)
}
