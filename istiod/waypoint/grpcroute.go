package waypoint

import (
	"regexp"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Route kinds, for status.
const (
	KindHTTPRoute = "HTTPRoute"
	KindGRPCRoute = "GRPCRoute"
)

// grpcAsHTTP converts a GRPCRoute into the HTTPRoute it routes as (gRPC
// is HTTP/2 with the path /<service>/<method>), as Istio does: a method
// match becomes a path match (service and method exact: the exact path;
// service only: the prefix /<service>/; otherwise a regex, an omitted part
// matching any name), headers and filters carry over. The result is only
// translated, never stored.
func grpcAsHTTP(g *gatewayv1.GRPCRoute) *gatewayv1.HTTPRoute {
	h := &gatewayv1.HTTPRoute{ObjectMeta: g.ObjectMeta}
	h.Spec.CommonRouteSpec = g.Spec.CommonRouteSpec
	h.Spec.Hostnames = g.Spec.Hostnames
	for _, r := range g.Spec.Rules {
		hr := gatewayv1.HTTPRouteRule{Name: r.Name, SessionPersistence: r.SessionPersistence}
		for _, m := range r.Matches {
			hm := gatewayv1.HTTPRouteMatch{Path: grpcPath(m.Method)}
			for _, hd := range m.Headers {
				t := gatewayv1.HeaderMatchExact
				if hd.Type != nil && *hd.Type == gatewayv1.GRPCHeaderMatchRegularExpression {
					t = gatewayv1.HeaderMatchRegularExpression
				}
				hm.Headers = append(hm.Headers, gatewayv1.HTTPHeaderMatch{Type: &t, Name: gatewayv1.HTTPHeaderName(hd.Name), Value: hd.Value})
			}
			hr.Matches = append(hr.Matches, hm)
		}
		hr.Filters = grpcFilters(r.Filters)
		for _, b := range r.BackendRefs {
			hr.BackendRefs = append(hr.BackendRefs, gatewayv1.HTTPBackendRef{BackendRef: b.BackendRef, Filters: grpcFilters(b.Filters)})
		}
		h.Spec.Rules = append(h.Spec.Rules, hr)
	}
	return h
}

func grpcFilters(in []gatewayv1.GRPCRouteFilter) []gatewayv1.HTTPRouteFilter {
	var out []gatewayv1.HTTPRouteFilter
	for _, f := range in {
		out = append(out, gatewayv1.HTTPRouteFilter{
			// The filter types the two share have the same names; any
			// other stays unknown and refuses the route.
			Type:                   gatewayv1.HTTPRouteFilterType(f.Type),
			RequestHeaderModifier:  f.RequestHeaderModifier,
			ResponseHeaderModifier: f.ResponseHeaderModifier,
			RequestMirror:          f.RequestMirror,
			ExtensionRef:           f.ExtensionRef,
		})
	}
	return out
}

func grpcPath(m *gatewayv1.GRPCMethodMatch) *gatewayv1.HTTPPathMatch {
	prefix := gatewayv1.PathMatchPathPrefix
	if m == nil || (m.Service == nil && m.Method == nil) {
		return &gatewayv1.HTTPPathMatch{Type: &prefix, Value: ptrTo("/")}
	}
	svc, method := ptrOr(m.Service, ""), ptrOr(m.Method, "")
	if m.Type == nil || *m.Type == gatewayv1.GRPCMethodMatchExact {
		switch {
		case svc != "" && method != "":
			exact := gatewayv1.PathMatchExact
			return &gatewayv1.HTTPPathMatch{Type: &exact, Value: ptrTo("/" + svc + "/" + method)}
		case svc != "":
			return &gatewayv1.HTTPPathMatch{Type: &prefix, Value: ptrTo("/" + svc)}
		}
		svc = "[^/]+"
		method = regexp.QuoteMeta(method)
	} else {
		if svc == "" {
			svc = "[^/]+"
		}
		if method == "" {
			method = "[^/]+"
		}
	}
	re := gatewayv1.PathMatchRegularExpression
	return &gatewayv1.HTTPPathMatch{Type: &re, Value: ptrTo("/" + svc + "/" + method)}
}

func ptrTo[T any](v T) *T { return &v }
