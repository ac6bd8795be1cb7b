package gateway

import (
	"fmt"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambitmesh/ambit/internal/mesh"
)

// The waypoint surface the controller checks, Istio's names (the ambient
// index reads the same; a test keeps the two in agreement).
const (
	// ListenerProtocolHBONE is a waypoint listener's protocol; Istio
	// 1.18-1.21's service-account waypoints used ListenerProtocolAll.
	ListenerProtocolHBONE = "HBONE"
	ListenerProtocolAll   = "ALL"
	// LabelWaypointFor on a waypoint Gateway says which traffic it takes.
	LabelWaypointFor = "istio.io/waypoint-for"
)

func isWaypointProtocol(p gatewayv1.ProtocolType) bool {
	return p == ListenerProtocolHBONE || p == ListenerProtocolAll
}

// listenerCheck is one listener's verdict: ok, or the Gateway API reason
// of its Accepted=False and why.
type listenerCheck struct {
	ok              bool
	reason, message string
}

// validation is a waypoint Gateway's verdict: whether it is a waypoint
// (invalid == "": it is deployed and may be bound to), and each
// listener's.
type validation struct {
	reason, invalid string
	listeners       []listenerCheck
}

// validate checks a Gateway of the waypoint class: its istio.io/waypoint-for
// label, and a listener of protocol HBONE (or ALL) on port 15008 (the
// first such listener decides, as in the ambient index). Other
// listeners are not accepted but do not make the Gateway invalid.
func validate(gw *gatewayv1.Gateway) validation {
	var v validation
	first := -1
	for i, l := range gw.Spec.Listeners {
		c := listenerCheck{ok: true}
		switch {
		case !isWaypointProtocol(l.Protocol):
			c = listenerCheck{reason: string(gatewayv1.ListenerReasonUnsupportedProtocol),
				message: fmt.Sprintf("protocol %s: a waypoint listens with %s (or %s)", l.Protocol, ListenerProtocolHBONE, ListenerProtocolAll)}
		case l.Port != mesh.HBONEPort:
			c = listenerCheck{reason: string(gatewayv1.ListenerReasonPortUnavailable),
				message: fmt.Sprintf("port %d: a waypoint listens on %d", l.Port, mesh.HBONEPort)}
		}
		if first < 0 && isWaypointProtocol(l.Protocol) {
			first = i
		}
		v.listeners = append(v.listeners, c)
	}
	switch f := gw.Labels[LabelWaypointFor]; f {
	case "", "service", "workload", "all", "none":
	default:
		v.reason = string(gatewayv1.GatewayReasonInvalid)
		v.invalid = fmt.Sprintf("label %s is %q, want one of service, workload, all, none", LabelWaypointFor, f)
		return v
	}
	switch {
	case first < 0:
		v.reason = string(gatewayv1.GatewayReasonListenersNotValid)
		v.invalid = fmt.Sprintf("no listener with protocol %s (or %s)", ListenerProtocolHBONE, ListenerProtocolAll)
	case !v.listeners[first].ok:
		v.reason = string(gatewayv1.GatewayReasonListenersNotValid)
		v.invalid = fmt.Sprintf("listener %q has port %d, want %d", gw.Spec.Listeners[first].Name, gw.Spec.Listeners[first].Port, mesh.HBONEPort)
	}
	return v
}

// WaypointProblem says why a Gateway of the waypoint class is no usable
// waypoint, "" when it is one: the controller's Accepted condition and
// the ambient index's bindings judge by it alike.
func WaypointProblem(gw *gatewayv1.Gateway) string {
	return validate(gw).invalid
}
