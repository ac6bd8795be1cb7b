package waypoint

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	previoushost "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	envoymatcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	envoytype "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Condition types and reasons of route status (Gateway API's).
const (
	ConditionAccepted     = string(gatewayv1.RouteConditionAccepted)
	ConditionResolvedRefs = string(gatewayv1.RouteConditionResolvedRefs)

	ReasonAccepted          = string(gatewayv1.RouteReasonAccepted)
	ReasonUnsupportedValue  = string(gatewayv1.RouteReasonUnsupportedValue)
	ReasonNoMatchingParent  = string(gatewayv1.RouteReasonNoMatchingParent)
	ReasonResolvedRefs      = string(gatewayv1.RouteReasonResolvedRefs)
	ReasonBackendNotFound   = string(gatewayv1.RouteReasonBackendNotFound)
	ReasonInvalidKind       = string(gatewayv1.RouteReasonInvalidKind)
	ReasonRefNotPermitted   = string(gatewayv1.RouteReasonRefNotPermitted)
	ReasonIncompatibleMatch = "IncompatibleFilters"
)

// ParentStatus is the outcome of one parentRef of a route: its Accepted
// and ResolvedRefs conditions.
type ParentStatus struct {
	Parent                 gatewayv1.ParentReference
	Accepted, ResolvedRefs metav1.Condition
}

// RouteStatus is the status of one route, by parentRef in its order.
type RouteStatus struct {
	Kind, Namespace, Name string
	Generation            int64
	Parents               []ParentStatus
}

// routeRule is one rule of an accepted route, attached to a service.
type routeRule struct {
	kind  string // KindHTTPRoute or KindGRPCRoute
	route *gatewayv1.HTTPRoute
	index int
	rule  *gatewayv1.HTTPRouteRule
	// consumer: the route is in the clients' namespace, not the
	// service's; it applies to that namespace's clients only.
	consumer string
}

// attachment is an accepted route's rules attached to a service port.
type attachment struct {
	rules []routeRule
}

// serviceKey is "namespace/name" of a Service.
func serviceKey(ns, name string) string { return ns + "/" + name }

func isServiceParent(p gatewayv1.ParentReference) bool {
	g := ""
	if p.Group != nil {
		g = string(*p.Group)
	}
	k := "Gateway"
	if p.Kind != nil {
		k = string(*p.Kind)
	}
	return (g == "" || g == "core") && k == "Service"
}

// routeProblem is why a route cannot be applied at all; "" when it can.
// Nothing of a route with a problem is applied.
func routeProblem(r *gatewayv1.HTTPRoute) (reason, msg string) {
	for i := range r.Spec.Rules {
		rule := &r.Spec.Rules[i]
		for _, m := range rule.Matches {
			if m.Path != nil && m.Path.Type != nil && *m.Path.Type == gatewayv1.PathMatchRegularExpression {
				if _, err := regexp.Compile(ptrOr(m.Path.Value, "")); err != nil {
					return ReasonUnsupportedValue, fmt.Sprintf("rule %d: path regex %q: %v", i, ptrOr(m.Path.Value, ""), err)
				}
			}
			for _, h := range m.Headers {
				if h.Type != nil && *h.Type == gatewayv1.HeaderMatchRegularExpression {
					if _, err := regexp.Compile(h.Value); err != nil {
						return ReasonUnsupportedValue, fmt.Sprintf("rule %d: header %s regex %q: %v", i, h.Name, h.Value, err)
					}
				}
			}
			for _, q := range m.QueryParams {
				if q.Type != nil && *q.Type == gatewayv1.QueryParamMatchRegularExpression {
					if _, err := regexp.Compile(q.Value); err != nil {
						return ReasonUnsupportedValue, fmt.Sprintf("rule %d: query parameter %s regex %q: %v", i, q.Name, q.Value, err)
					}
				}
			}
		}
		check := func(fs []gatewayv1.HTTPRouteFilter, where string) (string, string) {
			for _, f := range fs {
				switch f.Type {
				case gatewayv1.HTTPRouteFilterRequestHeaderModifier, gatewayv1.HTTPRouteFilterResponseHeaderModifier,
					gatewayv1.HTTPRouteFilterRequestRedirect, gatewayv1.HTTPRouteFilterURLRewrite, gatewayv1.HTTPRouteFilterRequestMirror:
				default:
					return ReasonUnsupportedValue, fmt.Sprintf("rule %d%s: filter type %s is not supported on waypoints", i, where, f.Type)
				}
			}
			return "", ""
		}
		if reason, msg := check(rule.Filters, ""); reason != "" {
			return reason, msg
		}
		for j, b := range rule.BackendRefs {
			if reason, msg := check(b.Filters, fmt.Sprintf(" backendRef %d", j)); reason != "" {
				return reason, msg
			}
		}
		if rule.SessionPersistence != nil {
			return ReasonUnsupportedValue, fmt.Sprintf("rule %d: sessionPersistence is not supported on waypoints", i)
		}
		if t := rule.Timeouts; t != nil {
			for _, d := range []*gatewayv1.Duration{t.Request, t.BackendRequest} {
				if d != nil {
					if _, err := time.ParseDuration(string(*d)); err != nil {
						return ReasonUnsupportedValue, fmt.Sprintf("rule %d: timeout %q: %v", i, *d, err)
					}
				}
			}
		}
		if rt := rule.Retry; rt != nil && rt.Backoff != nil {
			if _, err := time.ParseDuration(string(*rt.Backoff)); err != nil {
				return ReasonUnsupportedValue, fmt.Sprintf("rule %d: retry backoff %q: %v", i, *rt.Backoff, err)
			}
		}
	}
	return "", ""
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// attachRoutes decides, for every route, what each of its Service
// parentRefs gets, and returns the accepted rules by service port
// ("namespace/name" -> port -> rules; port 0: every port) with the
// statuses.
func attachRoutes(in *Input, svcExists func(ns, name string) bool) (map[string]map[uint32]*attachment, []RouteStatus) {
	out := map[string]map[uint32]*attachment{}
	var statuses []RouteStatus
	routes := append([]*gatewayv1.HTTPRoute(nil), in.HTTPRoutes...)
	kinds := map[*gatewayv1.HTTPRoute]string{}
	for _, g := range in.GRPCRoutes {
		h := grpcAsHTTP(g)
		kinds[h] = KindGRPCRoute
		routes = append(routes, h)
	}
	// The spec's tie-break: oldest first, then by namespace/name.
	sort.SliceStable(routes, func(i, j int) bool {
		a, b := routes[i], routes[j]
		if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
			return a.CreationTimestamp.Before(&b.CreationTimestamp)
		}
		return serviceKey(a.Namespace, a.Name) < serviceKey(b.Namespace, b.Name)
	})
	for _, r := range routes {
		kind := KindHTTPRoute
		if k, ok := kinds[r]; ok {
			kind = k
		}
		st := RouteStatus{Kind: kind, Namespace: r.Namespace, Name: r.Name, Generation: r.Generation}
		reason, msg := routeProblem(r)
		refsReason, refsMsg := resolveBackends(in, kind, r, svcExists)
		for _, p := range r.Spec.ParentRefs {
			if !isServiceParent(p) {
				continue // a Gateway's route: not the mesh's to report on
			}
			ps := ParentStatus{Parent: p}
			ns := string(ptrOr(p.Namespace, gatewayv1.Namespace(r.Namespace)))
			name := string(p.Name)
			accepted := reason == ""
			switch {
			case !accepted:
				ps.Accepted = cond(ConditionAccepted, false, reason, msg, r.Generation)
			case !svcExists(ns, name):
				accepted = false
				ps.Accepted = cond(ConditionAccepted, false, ReasonNoMatchingParent, fmt.Sprintf("Service %s/%s does not exist", ns, name), r.Generation)
			default:
				ps.Accepted = cond(ConditionAccepted, true, ReasonAccepted, "", r.Generation)
			}
			if refsReason != "" {
				ps.ResolvedRefs = cond(ConditionResolvedRefs, false, refsReason, refsMsg, r.Generation)
			} else {
				ps.ResolvedRefs = cond(ConditionResolvedRefs, true, ReasonResolvedRefs, "", r.Generation)
			}
			st.Parents = append(st.Parents, ps)
			if !accepted {
				continue
			}
			port := uint32(ptrOr(p.Port, 0))
			byPort := out[serviceKey(ns, name)]
			if byPort == nil {
				byPort = map[uint32]*attachment{}
				out[serviceKey(ns, name)] = byPort
			}
			a := byPort[port]
			if a == nil {
				a = &attachment{}
				byPort[port] = a
			}
			consumer := ""
			if r.Namespace != ns {
				consumer = r.Namespace
			}
			for i := range r.Spec.Rules {
				a.rules = append(a.rules, routeRule{kind: kind, route: r, index: i, rule: &r.Spec.Rules[i], consumer: consumer})
			}
		}
		if len(st.Parents) > 0 {
			statuses = append(statuses, st)
		}
	}
	return out, statuses
}

func cond(typ string, ok bool, reason, msg string, gen int64) metav1.Condition {
	s := metav1.ConditionFalse
	if ok {
		s = metav1.ConditionTrue
	}
	return metav1.Condition{Type: typ, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen}
}

// resolveBackends checks a route's backendRefs and mirror targets:
// Services that exist, of the route's namespace or of one whose
// ReferenceGrant allows it.
func resolveBackends(in *Input, kind string, r *gatewayv1.HTTPRoute, svcExists func(ns, name string) bool) (string, string) {
	check := func(ref gatewayv1.BackendObjectReference, where string) (string, string) {
		g, k := string(ptrOr(ref.Group, "")), string(ptrOr(ref.Kind, "Service"))
		if (g != "" && g != "core") || k != "Service" {
			return ReasonInvalidKind, fmt.Sprintf("%s: kind %s/%s is not supported, only Service", where, g, k)
		}
		ns := string(ptrOr(ref.Namespace, gatewayv1.Namespace(r.Namespace)))
		if !in.granted(kind, r.Namespace, ns, string(ref.Name)) {
			return ReasonRefNotPermitted, fmt.Sprintf("%s: Service %s/%s is in another namespace and no ReferenceGrant there allows %ss of %s", where, ns, ref.Name, kind, r.Namespace)
		}
		if !svcExists(ns, string(ref.Name)) {
			return ReasonBackendNotFound, fmt.Sprintf("%s: Service %s/%s does not exist", where, ns, ref.Name)
		}
		if ref.Port == nil {
			return ReasonUnsupportedValue, fmt.Sprintf("%s: Service %s/%s: port is required", where, ns, ref.Name)
		}
		return "", ""
	}
	for i, rule := range r.Spec.Rules {
		for j, b := range rule.BackendRefs {
			if reason, msg := check(b.BackendObjectReference, fmt.Sprintf("rule %d backendRef %d", i, j)); reason != "" {
				return reason, msg
			}
		}
		for _, f := range rule.Filters {
			if f.RequestMirror != nil {
				if reason, msg := check(f.RequestMirror.BackendRef, fmt.Sprintf("rule %d mirror", i)); reason != "" {
					return reason, msg
				}
			}
		}
	}
	return "", ""
}

// rulesFor are the rules attached to one port of a service, those for
// every port included.
func rulesFor(att map[string]map[uint32]*attachment, ns, name string, port uint32) []routeRule {
	byPort := att[serviceKey(ns, name)]
	var out []routeRule
	if a := byPort[0]; a != nil {
		out = append(out, a.rules...)
	}
	if a := byPort[port]; a != nil && port != 0 {
		out = append(out, a.rules...)
	}
	return out
}

// backendCluster is the cluster of a Service backend at a port: the
// waypoint's inbound-vip HTTP cluster of it. A reference that is not
// allowed (another kind, another namespace without ReferenceGrant)
// names a cluster that never exists, so that its share of requests gets
// the 500 the spec asks for, as a missing Service's does.
func (b *builder) backendCluster(kind, routeNS string, ref gatewayv1.BackendObjectReference) string {
	ns := string(ptrOr(ref.Namespace, gatewayv1.Namespace(routeNS)))
	g, k := string(ptrOr(ref.Group, "")), string(ptrOr(ref.Kind, "Service"))
	if (g != "" && g != "core") || k != "Service" || !b.in.granted(kind, routeNS, ns, string(ref.Name)) {
		return unresolvedCluster
	}
	return clusterName("http", uint32(ptrOr(ref.Port, 0)), string(ref.Name)+"."+ns+".svc."+b.cfg.DomainSuffix)
}

// unresolvedCluster is the cluster of backends that may not be used.
const unresolvedCluster = "unresolved-backend"

// granted reports whether a route of a kind and of namespace from may use
// Service ns/name: its own namespace's, or one a ReferenceGrant of ns
// allows.
func (in *Input) granted(kind, from, ns, name string) bool {
	if from == ns {
		return true
	}
	for _, g := range in.ReferenceGrants {
		if g.Namespace != ns {
			continue
		}
		fromOK := false
		for _, f := range g.Spec.From {
			if f.Group == gatewayv1.GroupName && string(f.Kind) == kind && string(f.Namespace) == from {
				fromOK = true
			}
		}
		if !fromOK {
			continue
		}
		for _, t := range g.Spec.To {
			if (t.Group == "" || t.Group == "core") && t.Kind == "Service" && (t.Name == nil || string(*t.Name) == name) {
				return true
			}
		}
	}
	return false
}

// flatMatch is one match of one rule, the unit the spec orders.
type flatMatch struct {
	rr    routeRule
	match gatewayv1.HTTPRouteMatch
	pos   int // order of appearance
}

// matchRank orders matches as the Gateway API spec does: exact path,
// then (regex,) the longest prefix, then method, then the most header
// matches, then the most query matches; ties keep their order (oldest
// route, namespace/name, rule order).
func matchLess(a, b flatMatch) bool {
	kind := func(m gatewayv1.HTTPRouteMatch) int {
		switch ptrOr(m.Path.Type, gatewayv1.PathMatchPathPrefix) {
		case gatewayv1.PathMatchExact:
			return 0
		case gatewayv1.PathMatchRegularExpression:
			return 1
		}
		return 2
	}
	// Consumer routes take precedence over the producer's for their
	// clients: they come first.
	if (a.rr.consumer != "") != (b.rr.consumer != "") {
		return a.rr.consumer != ""
	}
	if ka, kb := kind(a.match), kind(b.match); ka != kb {
		return ka < kb
	}
	if la, lb := len(ptrOr(a.match.Path.Value, "/")), len(ptrOr(b.match.Path.Value, "/")); la != lb {
		return la > lb
	}
	if ma, mb := a.match.Method != nil, b.match.Method != nil; ma != mb {
		return ma
	}
	if len(a.match.Headers) != len(b.match.Headers) {
		return len(a.match.Headers) > len(b.match.Headers)
	}
	if len(a.match.QueryParams) != len(b.match.QueryParams) {
		return len(a.match.QueryParams) > len(b.match.QueryParams)
	}
	return a.pos < b.pos
}

// httpRoutes translates the rules attached to a service port into routes
// in the spec's precedence; nil when there are none (the default route
// applies).
func (b *builder) httpRoutes(rules []routeRule, sv *served, port uint32) []*route.Route {
	var flat []flatMatch
	for _, rr := range rules {
		ms := rr.rule.Matches
		if len(ms) == 0 {
			ms = []gatewayv1.HTTPRouteMatch{{}}
		}
		for _, m := range ms {
			if m.Path == nil {
				m.Path = &gatewayv1.HTTPPathMatch{}
			}
			flat = append(flat, flatMatch{rr: rr, match: m, pos: len(flat)})
		}
	}
	sort.SliceStable(flat, func(i, j int) bool { return matchLess(flat[i], flat[j]) })
	out := make([]*route.Route, 0, len(flat))
	for _, fm := range flat {
		out = append(out, b.translateRule(fm, sv, port))
	}
	return out
}

func (b *builder) translateRule(fm flatMatch, sv *served, port uint32) *route.Route {
	r, rule := fm.rr.route, fm.rr.rule
	name := r.Namespace + "." + r.Name + "." + strconv.Itoa(fm.rr.index)
	if rule.Name != nil {
		name = r.Namespace + "." + r.Name + "." + string(*rule.Name)
	}
	out := &route.Route{
		Name:      name,
		Match:     b.translateMatch(fm.match, fm.rr.consumer),
		Decorator: &route.Decorator{Operation: sv.hostname + ":" + strconv.FormatUint(uint64(port), 10) + "/*"},
	}
	var redirect *gatewayv1.HTTPRequestRedirectFilter
	var rewrite *gatewayv1.HTTPURLRewriteFilter
	var mirrors []*gatewayv1.HTTPRequestMirrorFilter
	for _, f := range rule.Filters {
		switch f.Type {
		case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
			out.RequestHeadersToAdd, out.RequestHeadersToRemove = headerOps(f.RequestHeaderModifier)
		case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
			out.ResponseHeadersToAdd, out.ResponseHeadersToRemove = headerOps(f.ResponseHeaderModifier)
		case gatewayv1.HTTPRouteFilterRequestRedirect:
			redirect = f.RequestRedirect
		case gatewayv1.HTTPRouteFilterURLRewrite:
			rewrite = f.URLRewrite
		case gatewayv1.HTTPRouteFilterRequestMirror:
			mirrors = append(mirrors, f.RequestMirror)
		}
	}
	if redirect != nil {
		out.Action = &route.Route_Redirect{Redirect: translateRedirect(redirect, fm.match)}
		return out
	}
	action := &route.RouteAction{
		Timeout:                     durationpb.New(0),
		ClusterNotFoundResponseCode: route.RouteAction_INTERNAL_SERVER_ERROR,
		RetryPolicy:                 defaultRetryPolicy(),
	}
	if t := rule.Timeouts; t != nil {
		if t.Request != nil {
			d, _ := time.ParseDuration(string(*t.Request))
			action.Timeout = durationpb.New(d)
		}
		if t.BackendRequest != nil {
			d, _ := time.ParseDuration(string(*t.BackendRequest))
			action.RetryPolicy.PerTryTimeout = durationpb.New(d)
		}
	}
	if rt := rule.Retry; rt != nil {
		applyRetry(action.RetryPolicy, rt)
	}
	if rewrite != nil {
		if rewrite.Hostname != nil {
			action.HostRewriteSpecifier = &route.RouteAction_HostRewriteLiteral{HostRewriteLiteral: string(*rewrite.Hostname)}
		}
		if p := rewrite.Path; p != nil {
			switch p.Type {
			case gatewayv1.FullPathHTTPPathModifier:
				action.RegexRewrite = &envoymatcher.RegexMatchAndSubstitute{
					Pattern: &envoymatcher.RegexMatcher{Regex: "^/.*$"}, Substitution: ptrOr(p.ReplaceFullPath, "/")}
			case gatewayv1.PrefixMatchHTTPPathModifier:
				prefix := ptrOr(fm.match.Path.Value, "/")
				repl := ptrOr(p.ReplacePrefixMatch, "/")
				if repl == "/" && prefix != "/" {
					// Drop the prefix and keep one slash, as Istio does.
					action.RegexRewrite = &envoymatcher.RegexMatchAndSubstitute{
						Pattern:      &envoymatcher.RegexMatcher{Regex: "^" + regexp.QuoteMeta(strings.TrimSuffix(prefix, "/")) + `(/?)(.*)`},
						Substitution: `/\2`,
					}
				} else {
					action.PrefixRewrite = repl
				}
			}
		}
	}
	for _, m := range mirrors {
		mp := &route.RouteAction_RequestMirrorPolicy{Cluster: b.backendCluster(fm.rr.kind, r.Namespace, m.BackendRef)}
		switch {
		case m.Fraction != nil:
			den := ptrOr(m.Fraction.Denominator, 100)
			mp.RuntimeFraction = &core.RuntimeFractionalPercent{DefaultValue: fractionPercent(m.Fraction.Numerator, den)}
		case m.Percent != nil:
			mp.RuntimeFraction = &core.RuntimeFractionalPercent{DefaultValue: fractionPercent(*m.Percent, 100)}
		}
		action.RequestMirrorPolicies = append(action.RequestMirrorPolicies, mp)
	}
	var weighted []*route.WeightedCluster_ClusterWeight
	for _, be := range rule.BackendRefs {
		w := ptrOr(be.Weight, 1)
		if w == 0 {
			continue
		}
		cw := &route.WeightedCluster_ClusterWeight{Name: b.backendCluster(fm.rr.kind, r.Namespace, be.BackendObjectReference), Weight: wrapperspb.UInt32(uint32(w))}
		for _, f := range be.Filters {
			switch f.Type {
			case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
				cw.RequestHeadersToAdd, cw.RequestHeadersToRemove = headerOps(f.RequestHeaderModifier)
			case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
				cw.ResponseHeadersToAdd, cw.ResponseHeadersToRemove = headerOps(f.ResponseHeaderModifier)
			}
		}
		weighted = append(weighted, cw)
	}
	switch {
	case len(weighted) == 0:
		// No backend (or all of weight 0): the spec's 500.
		out.Action = &route.Route_DirectResponse{DirectResponse: &route.DirectResponseAction{Status: 500}}
		return out
	case len(weighted) == 1 && weighted[0].RequestHeadersToAdd == nil && weighted[0].RequestHeadersToRemove == nil &&
		weighted[0].ResponseHeadersToAdd == nil && weighted[0].ResponseHeadersToRemove == nil:
		action.ClusterSpecifier = &route.RouteAction_Cluster{Cluster: weighted[0].Name}
	default:
		action.ClusterSpecifier = &route.RouteAction_WeightedClusters{WeightedClusters: &route.WeightedCluster{Clusters: weighted}}
	}
	out.Action = &route.Route_Route{Route: action}
	return out
}

func fractionPercent(num, den int32) *envoytype.FractionalPercent {
	// Per million keeps any fraction the API allows exact enough.
	if den <= 0 {
		den = 100
	}
	return &envoytype.FractionalPercent{Numerator: uint32(int64(num) * 1_000_000 / int64(den)), Denominator: envoytype.FractionalPercent_MILLION}
}

func (b *builder) translateMatch(m gatewayv1.HTTPRouteMatch, consumer string) *route.RouteMatch {
	rm := &route.RouteMatch{}
	v := ptrOr(m.Path.Value, "/")
	switch ptrOr(m.Path.Type, gatewayv1.PathMatchPathPrefix) {
	case gatewayv1.PathMatchExact:
		rm.PathSpecifier = &route.RouteMatch_Path{Path: v}
	case gatewayv1.PathMatchRegularExpression:
		rm.PathSpecifier = &route.RouteMatch_SafeRegex{SafeRegex: &envoymatcher.RegexMatcher{Regex: v}}
	default:
		if p := strings.TrimSuffix(v, "/"); p != "" {
			rm.PathSpecifier = &route.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: p}
		} else {
			rm.PathSpecifier = &route.RouteMatch_Prefix{Prefix: "/"}
		}
	}
	for _, h := range m.Headers {
		hm := &route.HeaderMatcher{Name: string(h.Name)}
		if ptrOr(h.Type, gatewayv1.HeaderMatchExact) == gatewayv1.HeaderMatchRegularExpression {
			hm.HeaderMatchSpecifier = &route.HeaderMatcher_StringMatch{StringMatch: &envoymatcher.StringMatcher{
				MatchPattern: &envoymatcher.StringMatcher_SafeRegex{SafeRegex: &envoymatcher.RegexMatcher{Regex: h.Value}}}}
		} else {
			hm.HeaderMatchSpecifier = &route.HeaderMatcher_StringMatch{StringMatch: &envoymatcher.StringMatcher{
				MatchPattern: &envoymatcher.StringMatcher_Exact{Exact: h.Value}}}
		}
		rm.Headers = append(rm.Headers, hm)
	}
	if m.Method != nil {
		rm.Headers = append(rm.Headers, &route.HeaderMatcher{Name: ":method", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{
			StringMatch: &envoymatcher.StringMatcher{MatchPattern: &envoymatcher.StringMatcher_Exact{Exact: string(*m.Method)}}}})
	}
	for _, q := range m.QueryParams {
		sm := &envoymatcher.StringMatcher{MatchPattern: &envoymatcher.StringMatcher_Exact{Exact: q.Value}}
		if ptrOr(q.Type, gatewayv1.QueryParamMatchExact) == gatewayv1.QueryParamMatchRegularExpression {
			sm = &envoymatcher.StringMatcher{MatchPattern: &envoymatcher.StringMatcher_SafeRegex{SafeRegex: &envoymatcher.RegexMatcher{Regex: q.Value}}}
		}
		rm.QueryParameters = append(rm.QueryParameters, &route.QueryParameterMatcher{Name: string(q.Name),
			QueryParameterMatchSpecifier: &route.QueryParameterMatcher_StringMatch{StringMatch: sm}})
	}
	if consumer != "" {
		// A consumer route: only its namespace's clients, by the peer
		// identity connect_terminate kept.
		rm.FilterState = append(rm.FilterState, &envoymatcher.FilterStateMatcher{
			Key: FilterStatePeerPrincipal,
			Matcher: &envoymatcher.FilterStateMatcher_StringMatch{StringMatch: &envoymatcher.StringMatcher{
				MatchPattern: &envoymatcher.StringMatcher_Prefix{Prefix: "spiffe://" + b.cfg.TrustDomain + "/ns/" + consumer + "/sa/"}}},
		})
	}
	return rm
}

func headerOps(f *gatewayv1.HTTPHeaderFilter) ([]*core.HeaderValueOption, []string) {
	if f == nil {
		return nil, nil
	}
	var add []*core.HeaderValueOption
	for _, h := range f.Set {
		add = append(add, &core.HeaderValueOption{Header: &core.HeaderValue{Key: string(h.Name), Value: h.Value},
			AppendAction: core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD})
	}
	for _, h := range f.Add {
		add = append(add, &core.HeaderValueOption{Header: &core.HeaderValue{Key: string(h.Name), Value: h.Value},
			AppendAction: core.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD})
	}
	return add, append([]string(nil), f.Remove...)
}

func translateRedirect(f *gatewayv1.HTTPRequestRedirectFilter, m gatewayv1.HTTPRouteMatch) *route.RedirectAction {
	ra := &route.RedirectAction{ResponseCode: route.RedirectAction_FOUND}
	switch ptrOr(f.StatusCode, 302) {
	case 301:
		ra.ResponseCode = route.RedirectAction_MOVED_PERMANENTLY
	case 303:
		ra.ResponseCode = route.RedirectAction_SEE_OTHER
	case 307:
		ra.ResponseCode = route.RedirectAction_TEMPORARY_REDIRECT
	case 308:
		ra.ResponseCode = route.RedirectAction_PERMANENT_REDIRECT
	}
	if f.Scheme != nil {
		ra.SchemeRewriteSpecifier = &route.RedirectAction_SchemeRedirect{SchemeRedirect: *f.Scheme}
	}
	if f.Hostname != nil {
		ra.HostRedirect = string(*f.Hostname)
	}
	if f.Port != nil {
		ra.PortRedirect = uint32(*f.Port)
	}
	if p := f.Path; p != nil {
		switch p.Type {
		case gatewayv1.FullPathHTTPPathModifier:
			ra.PathRewriteSpecifier = &route.RedirectAction_PathRedirect{PathRedirect: ptrOr(p.ReplaceFullPath, "/")}
		case gatewayv1.PrefixMatchHTTPPathModifier:
			prefix := ptrOr(m.Path.Value, "/")
			repl := ptrOr(p.ReplacePrefixMatch, "/")
			if repl == "/" && prefix != "/" {
				ra.PathRewriteSpecifier = &route.RedirectAction_RegexRewrite{RegexRewrite: &envoymatcher.RegexMatchAndSubstitute{
					Pattern:      &envoymatcher.RegexMatcher{Regex: "^" + regexp.QuoteMeta(strings.TrimSuffix(prefix, "/")) + `(/?)(.*)`},
					Substitution: `/\2`,
				}}
			} else {
				ra.PathRewriteSpecifier = &route.RedirectAction_PrefixRewrite{PrefixRewrite: repl}
			}
		}
	}
	return ra
}

// defaultRetryPolicy is Istio's mesh default: two retries of connection
// failures, refused streams, unavailable and cancelled, and 503, each on
// another host.
func defaultRetryPolicy() *route.RetryPolicy {
	return &route.RetryPolicy{
		RetryOn:              "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
		NumRetries:           wrapperspb.UInt32(2),
		RetriableStatusCodes: []uint32{503},
		RetryHostPredicate: []*route.RetryPolicy_RetryHostPredicate{{
			Name:       "envoy.retry_host_predicates.previous_hosts",
			ConfigType: &route.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: mustAny(&previoushost.PreviousHostsPredicate{})},
		}},
		HostSelectionRetryMaxAttempts: 5,
	}
}

// applyRetry sets what a rule's retry says over the default.
func applyRetry(p *route.RetryPolicy, rt *gatewayv1.HTTPRouteRetry) {
	if rt.Attempts != nil {
		p.NumRetries = wrapperspb.UInt32(uint32(max(*rt.Attempts, 0)))
	}
	if len(rt.Codes) > 0 {
		p.RetriableStatusCodes = nil
		for _, c := range rt.Codes {
			p.RetriableStatusCodes = append(p.RetriableStatusCodes, uint32(c))
		}
	}
	if rt.Backoff != nil {
		d, _ := time.ParseDuration(string(*rt.Backoff))
		if d > 0 {
			p.RetryBackOff = &route.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(d)}
		}
	}
}
