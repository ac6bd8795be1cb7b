package waypoint

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	fault "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	envoymatcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	envoytype "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	netapi "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
)

// Kinds of Istio's traffic API, for status.
const (
	KindVirtualService  = "VirtualService"
	KindDestinationRule = "DestinationRule"
)

// Reasons of VirtualService and DestinationRule conditions beyond the
// Gateway API's.
const (
	ReasonSubsetNotFound = "SubsetNotFound"
	ReasonConflicted     = "Conflicted"
)

// meshGateway is the gateway name that means "the mesh's sidecars and
// waypoints" in a VirtualService's gateways.
const meshGateway = "mesh"

// vsFields are the VirtualService fields a waypoint applies.
var vsFields = newFieldSet(
	"hosts", "gateways",
	"http.name",
	"http.match.name", "http.match.port", "http.match.gateways",
	"http.match.uri.exact", "http.match.uri.prefix", "http.match.uri.regex",
	"http.match.headers.exact", "http.match.headers.prefix", "http.match.headers.regex",
	"http.match.query_params.exact", "http.match.query_params.prefix", "http.match.query_params.regex",
	"http.match.method.exact", "http.match.method.prefix", "http.match.method.regex",
	"http.route.destination.host", "http.route.destination.subset", "http.route.destination.port.number",
	"http.route.weight",
	"http.route.headers.request.set", "http.route.headers.request.add", "http.route.headers.request.remove",
	"http.route.headers.response.set", "http.route.headers.response.add", "http.route.headers.response.remove",
	"http.timeout",
	"http.retries.attempts", "http.retries.per_try_timeout", "http.retries.retry_on",
	"http.rewrite.uri", "http.rewrite.authority",
	"http.fault.delay.fixed_delay", "http.fault.delay.percentage.value",
	"http.fault.abort.http_status", "http.fault.abort.percentage.value",
	"http.mirror.host", "http.mirror.subset", "http.mirror.port.number", "http.mirror_percentage.value",
	"http.headers.request.set", "http.headers.request.add", "http.headers.request.remove",
	"http.headers.response.set", "http.headers.response.add", "http.headers.response.remove",
)

// vsProblem is why a VirtualService cannot be applied at all; "" when it
// can. Nothing of a VirtualService with a problem is applied.
func vsProblem(vs *networkingv1.VirtualService) (reason, msg string) {
	spec := &vs.Spec
	if bad := vsFields.unsupported(spec); len(bad) > 0 {
		for _, f := range bad {
			if strings.HasSuffix(f, ".sourceLabels") {
				return ReasonUnsupportedValue, fmt.Sprintf("%s: source labels cannot be matched on a waypoint (the client's labels are not known there; Istio drops such matches, istio/istio#51565)", f)
			}
		}
		return ReasonUnsupportedValue, fmt.Sprintf("%s: not supported on waypoints", strings.Join(bad, ", "))
	}
	if len(spec.GetHosts()) == 0 {
		return ReasonUnsupportedValue, "hosts: at least one host is required"
	}
	for _, g := range spec.GetGateways() {
		if g != meshGateway {
			return ReasonUnsupportedValue, fmt.Sprintf("gateways: %q: Ambit applies VirtualServices to the mesh (waypoints) only", g)
		}
	}
	for i, h := range spec.GetHttp() {
		at := func(f string, a ...any) string { return fmt.Sprintf("http[%d].", i) + fmt.Sprintf(f, a...) }
		for j, m := range h.GetMatch() {
			for _, g := range m.GetGateways() {
				if g != meshGateway {
					return ReasonUnsupportedValue, at("match[%d].gateways: %q: only %q applies on waypoints", j, g, meshGateway)
				}
			}
			checks := map[string]*netapi.StringMatch{"uri": m.GetUri(), "method": m.GetMethod()}
			for _, k := range sortedKeys(m.GetHeaders()) {
				if strings.HasPrefix(k, "@") {
					// Istio's @request.auth.claims routing needs a
					// validated JWT; waypoints validate none.
					return ReasonUnsupportedValue, at("match[%d].headers[%s]: JWT claim matches are not supported on waypoints", j, k)
				}
			}
			for k, v := range m.GetHeaders() {
				checks["headers["+k+"]"] = v
			}
			for k, v := range m.GetQueryParams() {
				checks["queryParams["+k+"]"] = v
			}
			for _, k := range sortedKeys(checks) {
				if re := checks[k].GetRegex(); re != "" && re != "*" {
					if _, err := regexp.Compile(re); err != nil {
						return ReasonUnsupportedValue, at("match[%d].%s.regex %q: %v", j, k, re, err)
					}
				}
			}
			if m.GetUri() != nil && m.GetUri().GetMatchType() == nil {
				return ReasonUnsupportedValue, at("match[%d].uri: want exact, prefix or regex", j)
			}
		}
		if h.GetRewrite().GetUri() != "" {
			for j, m := range h.GetMatch() {
				if m.GetUri().GetRegex() != "" {
					return ReasonUnsupportedValue, at("rewrite.uri: cannot rewrite the prefix of match[%d], a regex match", j)
				}
			}
		}
		if len(h.GetRoute()) == 0 {
			return ReasonUnsupportedValue, at("route: at least one destination is required")
		}
		for j, d := range h.GetRoute() {
			if d.GetDestination().GetHost() == "" {
				return ReasonUnsupportedValue, at("route[%d].destination.host: required", j)
			}
			if d.GetWeight() < 0 {
				return ReasonUnsupportedValue, at("route[%d].weight: %d is negative", j, d.GetWeight())
			}
		}
		for name, d := range map[string]*durationpb.Duration{"timeout": h.GetTimeout(), "retries.perTryTimeout": h.GetRetries().GetPerTryTimeout(), "fault.delay.fixedDelay": h.GetFault().GetDelay().GetFixedDelay()} {
			if d == nil {
				continue
			}
			if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
				return ReasonUnsupportedValue, at("%s: %v is not a valid duration", name, d)
			}
		}
		if f := h.GetFault(); f != nil {
			if f.GetDelay() == nil && f.GetAbort() == nil {
				return ReasonUnsupportedValue, at("fault: want delay or abort")
			}
			if d := f.GetDelay(); d != nil && d.GetFixedDelay() == nil {
				return ReasonUnsupportedValue, at("fault.delay: want fixedDelay")
			}
			if a := f.GetAbort(); a != nil && (a.GetHttpStatus() < 200 || a.GetHttpStatus() > 599) {
				return ReasonUnsupportedValue, at("fault.abort.httpStatus: %d is not an HTTP status (200-599)", a.GetHttpStatus())
			}
			for name, p := range map[string]*netapi.Percent{"delay": f.GetDelay().GetPercentage(), "abort": f.GetAbort().GetPercentage()} {
				if p != nil && (p.GetValue() < 0 || p.GetValue() > 100) {
					return ReasonUnsupportedValue, at("fault.%s.percentage: %v is not within 0-100", name, p.GetValue())
				}
			}
		}
		if p := h.GetMirrorPercentage(); p != nil && (p.GetValue() < 0 || p.GetValue() > 100) {
			return ReasonUnsupportedValue, at("mirrorPercentage: %v is not within 0-100", p.GetValue())
		}
		if h.GetMirror() != nil && h.GetMirror().GetHost() == "" {
			return ReasonUnsupportedValue, at("mirror.host: required")
		}
	}
	return "", ""
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// resolveHost is a VirtualService's or DestinationRule's host as a
// fully qualified name, as Istio resolves short names: a name without
// dots is a Service of the object's namespace.
func resolveHost(h, ns, domain string) string {
	if h == "" || strings.HasPrefix(h, "*") || strings.Contains(h, ".") {
		return h
	}
	return h + "." + ns + ".svc." + domain
}

// hostMatches reports whether a (resolved) host of a VirtualService or
// DestinationRule names hostname: equal, or a wildcard ("*", "*.suffix")
// covering it.
func hostMatches(pattern, hostname string) bool {
	switch {
	case pattern == "*":
		return true
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(hostname, pattern[1:])
	}
	return pattern == hostname
}

func (t *istioTraffic) vsHosts(vs *networkingv1.VirtualService) []string {
	out := make([]string, 0, len(vs.Spec.GetHosts()))
	for _, h := range vs.Spec.GetHosts() {
		out = append(out, resolveHost(h, vs.Namespace, t.domain))
	}
	return out
}

// virtualServicesFor are the accepted VirtualServices that route a
// served service's traffic on a waypoint of namespace wpNS: those in the
// waypoint's or the service's namespace whose hosts name it, oldest
// first (Istio's order).
func (t *istioTraffic) virtualServicesFor(wpNS string, sv *served) []*networkingv1.VirtualService {
	if t == nil {
		return nil
	}
	var out []*networkingv1.VirtualService
	for _, vs := range t.virtualServices {
		if vs.Namespace != wpNS && vs.Namespace != sv.namespace {
			continue
		}
		for _, h := range t.vsHosts(vs) {
			if hostMatches(h, sv.hostname) {
				out = append(out, vs)
				break
			}
		}
	}
	return out
}

// vsRoutes translates the VirtualServices of a served service into the
// routes of one of its ports, as Istio's waypoint does: each
// VirtualService's HTTP routes in order, one Envoy route per match (a
// match for another port left out), up to the first that catches
// everything.
func (b *builder) vsRoutes(sv *served, port uint32) []*route.Route {
	var out []*route.Route
	for _, vs := range b.sc.traffic.virtualServicesFor(b.sc.ref.Namespace, sv) {
		out = append(out, b.translateVS(vs, port)...)
	}
	return out
}

func (b *builder) translateVS(vs *networkingv1.VirtualService, port uint32) []*route.Route {
	var out []*route.Route
	for _, h := range vs.Spec.GetHttp() {
		if len(h.GetMatch()) == 0 {
			out = append(out, b.vsRoute(vs, h, nil, port))
			break
		}
		catchAll := false
		for _, m := range h.GetMatch() {
			if m.GetPort() != 0 && m.GetPort() != port {
				continue
			}
			r := b.vsRoute(vs, h, m, port)
			out = append(out, r)
			if isCatchAll(r) {
				catchAll = true
				break
			}
		}
		if catchAll {
			break
		}
	}
	return out
}

// isCatchAll: a route that every request matches; nothing after it in
// the table can apply.
func isCatchAll(r *route.Route) bool {
	m := r.GetMatch()
	all := false
	switch ps := m.GetPathSpecifier().(type) {
	case *route.RouteMatch_Prefix:
		all = ps.Prefix == "/"
	case *route.RouteMatch_PathSeparatedPrefix:
		all = ps.PathSeparatedPrefix == "/"
	}
	return all && len(m.GetHeaders()) == 0 && len(m.GetQueryParameters()) == 0 && len(m.GetFilterState()) == 0
}

// configMetadata is Istio's "istio.config" metadata naming the object a
// resource came from (what istioctl and Kiali read).
func configMetadata(kind, ns, name string) *core.Metadata {
	return &core.Metadata{FilterMetadata: map[string]*structpb.Struct{"istio": {Fields: map[string]*structpb.Value{
		"config": structpb.NewStringValue("/apis/networking.istio.io/v1/namespaces/" + ns + "/" + kind + "/" + name),
	}}}}
}

func (b *builder) vsRoute(vs *networkingv1.VirtualService, h *netapi.HTTPRoute, m *netapi.HTTPMatchRequest, port uint32) *route.Route {
	name := h.GetName()
	if m.GetName() != "" {
		name += "." + m.GetName()
	}
	out := &route.Route{
		Name:     name,
		Match:    translateVSMatch(m),
		Metadata: configMetadata("virtual-service", vs.Namespace, vs.Name),
	}
	authority := ""
	if h.GetHeaders() != nil {
		out.RequestHeadersToAdd, out.RequestHeadersToRemove, out.ResponseHeadersToAdd, out.ResponseHeadersToRemove, authority = vsHeaderOps(h.GetHeaders())
	}
	action := &route.RouteAction{Timeout: durationpb.New(0)}
	if h.GetTimeout() != nil {
		action.Timeout = durationpb.New(h.GetTimeout().AsDuration())
	}
	if rw := h.GetRewrite(); rw != nil {
		if rw.GetUri() != "" {
			action.PrefixRewrite = rw.GetUri()
		}
		if rw.GetAuthority() != "" {
			authority = rw.GetAuthority()
		}
	}
	if authority != "" {
		action.HostRewriteSpecifier = &route.RouteAction_HostRewriteLiteral{HostRewriteLiteral: authority}
	}
	if mr := h.GetMirror(); mr != nil {
		if pct := mirrorPercent(h); pct != nil {
			action.RequestMirrorPolicies = append(action.RequestMirrorPolicies, &route.RouteAction_RequestMirrorPolicy{
				Cluster: b.vsCluster(mr, vs.Namespace, port), RuntimeFraction: &core.RuntimeFractionalPercent{DefaultValue: pct}})
		}
	}
	action.RetryPolicy = vsRetryPolicy(h.GetRetries())
	if len(h.GetRoute()) == 1 {
		d := h.GetRoute()[0]
		action.ClusterSpecifier = &route.RouteAction_Cluster{Cluster: b.vsCluster(d.GetDestination(), vs.Namespace, port)}
		if d.GetHeaders() != nil {
			ra, rr, pa, pr, auth := vsHeaderOps(d.GetHeaders())
			out.RequestHeadersToAdd = append(out.RequestHeadersToAdd, ra...)
			out.RequestHeadersToRemove = append(out.RequestHeadersToRemove, rr...)
			out.ResponseHeadersToAdd = append(out.ResponseHeadersToAdd, pa...)
			out.ResponseHeadersToRemove = append(out.ResponseHeadersToRemove, pr...)
			if auth != "" && action.HostRewriteSpecifier == nil {
				action.HostRewriteSpecifier = &route.RouteAction_HostRewriteLiteral{HostRewriteLiteral: auth}
			}
		}
	} else {
		wc := &route.WeightedCluster{}
		for _, d := range h.GetRoute() {
			if d.GetWeight() == 0 {
				continue // Istio leaves out 0-weighted destinations
			}
			cw := &route.WeightedCluster_ClusterWeight{Name: b.vsCluster(d.GetDestination(), vs.Namespace, port), Weight: wrapperspb.UInt32(uint32(d.GetWeight()))}
			if d.GetHeaders() != nil {
				var auth string
				cw.RequestHeadersToAdd, cw.RequestHeadersToRemove, cw.ResponseHeadersToAdd, cw.ResponseHeadersToRemove, auth = vsHeaderOps(d.GetHeaders())
				if auth != "" {
					cw.HostRewriteSpecifier = &route.WeightedCluster_ClusterWeight_HostRewriteLiteral{HostRewriteLiteral: auth}
				}
			}
			wc.Clusters = append(wc.Clusters, cw)
		}
		if len(wc.Clusters) == 0 {
			// Every destination weighs 0: nothing to send to.
			out.Action = &route.Route_DirectResponse{DirectResponse: &route.DirectResponseAction{Status: 503}}
			out.Decorator = &route.Decorator{Operation: routeOperation(out, vs.Name, port)}
			return out
		}
		action.ClusterSpecifier = &route.RouteAction_WeightedClusters{WeightedClusters: wc}
	}
	out.Action = &route.Route_Route{Route: action}
	out.Decorator = &route.Decorator{Operation: routeOperation(out, vs.Name, port)}
	if f := h.GetFault(); f != nil {
		out.TypedPerFilterConfig = map[string]*anypb.Any{filterFault: mustAny(translateFault(f))}
	}
	return out
}

// routeOperation is Istio's decorator: "host:port<path>" for one
// cluster, "<virtual service>:port<path>" for several.
func routeOperation(r *route.Route, vsName string, port uint32) string {
	path := "/*"
	m := r.GetMatch()
	switch ps := m.GetPathSpecifier().(type) {
	case *route.RouteMatch_Prefix:
		path = ps.Prefix + "*"
	case *route.RouteMatch_Path:
		path = ps.Path
	case *route.RouteMatch_SafeRegex:
		path = ps.SafeRegex.GetRegex()
	}
	if c := r.GetRoute().GetCluster(); c != "" {
		parts := strings.Split(c, "|")
		if len(parts) == 4 {
			return parts[3] + ":" + parts[1] + path
		}
	}
	return vsName + ":" + strconv.FormatUint(uint64(port), 10) + path
}

// vsCluster is the waypoint cluster of a destination: Istio's
// inbound-vip|<port>|<http or tcp>[/<subset>]|<host>. The port is the
// destination's, else the Service's only port, else the port the request
// came to. A host the mesh does not know, or a subset no DestinationRule
// defines, names a cluster that does not exist: its requests get 503.
func (b *builder) vsCluster(d *netapi.Destination, vsNS string, port uint32) string {
	host := resolveHost(d.GetHost(), vsNS, b.cfg.DomainSuffix)
	sv := b.servedByHost(host)
	p := d.GetPort().GetNumber()
	if p == 0 {
		p = port
		if sv != nil && len(sv.svcPorts) == 1 {
			p = sv.svcPorts[0]
		}
	}
	kind := "http"
	if sv != nil {
		for _, sp := range sv.ports {
			if sp.port == p && sp.proto == protoTCP {
				kind = "tcp"
			}
		}
	}
	if d.GetSubset() != "" {
		kind += "/" + d.GetSubset()
	}
	return clusterName(kind, p, host)
}

func (b *builder) servedByHost(host string) *served {
	for _, sv := range b.sc.services {
		if sv.hostname == host {
			return sv
		}
	}
	for _, sv := range b.sc.backends {
		if sv.hostname == host {
			return sv
		}
	}
	return nil
}

func translateVSMatch(m *netapi.HTTPMatchRequest) *route.RouteMatch {
	out := &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}
	if m == nil {
		return out
	}
	out.CaseSensitive = wrapperspb.Bool(true)
	for _, k := range sortedKeys(m.GetHeaders()) {
		out.Headers = append(out.Headers, vsHeaderMatch(k, m.GetHeaders()[k]))
	}
	switch u := m.GetUri().GetMatchType().(type) {
	case *netapi.StringMatch_Exact:
		out.PathSpecifier = &route.RouteMatch_Path{Path: u.Exact}
	case *netapi.StringMatch_Prefix:
		out.PathSpecifier = &route.RouteMatch_Prefix{Prefix: u.Prefix}
	case *netapi.StringMatch_Regex:
		out.PathSpecifier = &route.RouteMatch_SafeRegex{SafeRegex: &envoymatcher.RegexMatcher{Regex: u.Regex}}
	}
	if m.GetMethod() != nil {
		out.Headers = append(out.Headers, vsHeaderMatch(":method", m.GetMethod()))
	}
	for _, k := range sortedKeys(m.GetQueryParams()) {
		q := &route.QueryParameterMatcher{Name: k}
		if sm := vsStringMatch(m.GetQueryParams()[k]); sm != nil {
			q.QueryParameterMatchSpecifier = &route.QueryParameterMatcher_StringMatch{StringMatch: sm}
		} else {
			q.QueryParameterMatchSpecifier = &route.QueryParameterMatcher_PresentMatch{PresentMatch: true}
		}
		out.QueryParameters = append(out.QueryParameters, q)
	}
	return out
}

// vsStringMatch is Envoy's matcher of an Istio StringMatch; nil for one
// that matches any value (none given, or Istio's regex "*"): a presence
// match.
func vsStringMatch(s *netapi.StringMatch) *envoymatcher.StringMatcher {
	switch v := s.GetMatchType().(type) {
	case *netapi.StringMatch_Exact:
		return &envoymatcher.StringMatcher{MatchPattern: &envoymatcher.StringMatcher_Exact{Exact: v.Exact}}
	case *netapi.StringMatch_Prefix:
		return &envoymatcher.StringMatcher{MatchPattern: &envoymatcher.StringMatcher_Prefix{Prefix: v.Prefix}}
	case *netapi.StringMatch_Regex:
		if v.Regex == "*" {
			return nil
		}
		return &envoymatcher.StringMatcher{MatchPattern: &envoymatcher.StringMatcher_SafeRegex{SafeRegex: &envoymatcher.RegexMatcher{Regex: v.Regex}}}
	}
	return nil
}

func vsHeaderMatch(name string, s *netapi.StringMatch) *route.HeaderMatcher {
	h := &route.HeaderMatcher{Name: name}
	if sm := vsStringMatch(s); sm != nil {
		h.HeaderMatchSpecifier = &route.HeaderMatcher_StringMatch{StringMatch: sm}
	} else {
		h.HeaderMatchSpecifier = &route.HeaderMatcher_PresentMatch{PresentMatch: true}
	}
	return h
}

// vsHeaderOps translates Istio's header operations; an :authority or
// Host set or added becomes the authority rewrite (returned), as Istio
// does, and pseudo-headers are never touched.
func vsHeaderOps(h *netapi.Headers) (reqAdd []*core.HeaderValueOption, reqRemove []string, respAdd []*core.HeaderValueOption, respRemove []string, authority string) {
	ops := func(m map[string]string, appendAction core.HeaderValueOption_HeaderAppendAction) ([]*core.HeaderValueOption, string) {
		var out []*core.HeaderValueOption
		auth := ""
		for _, k := range sortedKeys(m) {
			if strings.EqualFold(k, ":authority") || strings.EqualFold(k, "host") {
				auth = m[k]
			}
			if strings.HasPrefix(k, ":") || strings.EqualFold(k, "host") {
				continue
			}
			out = append(out, &core.HeaderValueOption{Header: &core.HeaderValue{Key: k, Value: m[k]}, AppendAction: appendAction})
		}
		return out, auth
	}
	drop := func(keys []string) []string {
		var out []string
		for _, k := range keys {
			if !strings.HasPrefix(k, ":") && !strings.EqualFold(k, "host") {
				out = append(out, k)
			}
		}
		return out
	}
	set, setAuth := ops(h.GetRequest().GetSet(), core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD)
	add, addAuth := ops(h.GetRequest().GetAdd(), core.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD)
	reqAdd = append(set, add...)
	authority = addAuth
	if setAuth != "" {
		authority = setAuth
	}
	rset, _ := ops(h.GetResponse().GetSet(), core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD)
	radd, _ := ops(h.GetResponse().GetAdd(), core.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD)
	respAdd = append(rset, radd...)
	return reqAdd, drop(h.GetRequest().GetRemove()), respAdd, drop(h.GetResponse().GetRemove()), authority
}

// vsRetryPolicy is Istio's conversion: none given, the mesh default;
// attempts 0, no retries; else the attempts, per-try timeout and
// conditions given (status codes among them retried as
// retriable-status-codes).
func vsRetryPolicy(r *netapi.HTTPRetry) *route.RetryPolicy {
	if r == nil {
		return defaultRetryPolicy()
	}
	if r.GetAttempts() <= 0 {
		return nil
	}
	p := defaultRetryPolicy()
	p.RetriableStatusCodes = nil
	p.RetryOn = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
	p.NumRetries = wrapperspb.UInt32(uint32(r.GetAttempts()))
	if r.GetRetryOn() != "" {
		var on []string
		for _, s := range strings.Split(r.GetRetryOn(), ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				continue
			}
			if c, err := strconv.ParseUint(s, 10, 32); err == nil {
				p.RetriableStatusCodes = append(p.RetriableStatusCodes, uint32(c))
				continue
			}
			on = append(on, s)
		}
		if len(p.RetriableStatusCodes) > 0 && !slicesContains(on, "retriable-status-codes") {
			on = append(on, "retriable-status-codes")
		}
		p.RetryOn = strings.Join(on, ",")
	}
	if r.GetPerTryTimeout() != nil {
		p.PerTryTimeout = durationpb.New(r.GetPerTryTimeout().AsDuration())
	}
	return p
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// mirrorPercent is Istio's: mirrorPercentage when given (0: no mirror),
// else every request.
func mirrorPercent(h *netapi.HTTPRoute) *envoytype.FractionalPercent {
	if p := h.GetMirrorPercentage(); p != nil {
		if p.GetValue() <= 0 {
			return nil
		}
		return percentOf(p)
	}
	return &envoytype.FractionalPercent{Numerator: 100, Denominator: envoytype.FractionalPercent_HUNDRED}
}

func percentOf(p *netapi.Percent) *envoytype.FractionalPercent {
	return &envoytype.FractionalPercent{Numerator: uint32(p.GetValue() * 10000), Denominator: envoytype.FractionalPercent_MILLION}
}

// translateFault is the route's fault filter config, as Istio's: a fixed
// delay or an HTTP abort for the percentage of requests given (none
// given: no request, as the API says).
func translateFault(f *netapi.HTTPFaultInjection) *fault.HTTPFault {
	out := &fault.HTTPFault{}
	if d := f.GetDelay(); d != nil {
		out.Delay = &faultcommon.FaultDelay{
			FaultDelaySecifier: &faultcommon.FaultDelay_FixedDelay{FixedDelay: durationpb.New(d.GetFixedDelay().AsDuration())},
			Percentage:         &envoytype.FractionalPercent{Denominator: envoytype.FractionalPercent_HUNDRED},
		}
		if d.GetPercentage() != nil {
			out.Delay.Percentage = percentOf(d.GetPercentage())
		}
	}
	if a := f.GetAbort(); a != nil {
		out.Abort = &fault.FaultAbort{ErrorType: &fault.FaultAbort_HttpStatus{HttpStatus: uint32(a.GetHttpStatus())}}
		if a.GetPercentage() != nil {
			out.Abort.Percentage = percentOf(a.GetPercentage())
		}
	}
	return out
}
