package waypoint

import (
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbac "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnet "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	envoymatcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
	secapi "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"

	"github.com/ambitmesh/ambit/istiod/authz"
	"github.com/ambitmesh/ambit/istiod/gateway"
)

// policyAttachment says where an AuthorizationPolicy with targetRefs
// applies on waypoints: to whole waypoints (a Gateway; every waypoint
// for the istio-waypoint GatewayClass in the root namespace) or to
// Services' chains.
type policyAttachment struct {
	allWaypoints bool
	waypoints    map[Ref]bool
	services     map[string]bool // "namespace/name"
}

// attachPolicy reads a policy's targetRefs; ok false when it has none
// (a selector policy: ztunnel's, or nothing on a waypoint).
func attachPolicy(ap *securityv1.AuthorizationPolicy, rootNS string) (policyAttachment, bool) {
	refs := ap.Spec.GetTargetRefs()
	if r := ap.Spec.GetTargetRef(); r != nil {
		refs = append(refs, r)
	}
	if len(refs) == 0 {
		return policyAttachment{}, false
	}
	a := policyAttachment{waypoints: map[Ref]bool{}, services: map[string]bool{}}
	for _, r := range refs {
		ns := ap.Namespace
		if r.GetNamespace() != "" && r.GetNamespace() != ns {
			continue // Istio refuses cross-namespace targetRefs
		}
		switch {
		case r.GetGroup() == "gateway.networking.k8s.io" && r.GetKind() == "Gateway":
			a.waypoints[Ref{Namespace: ns, Name: r.GetName()}] = true
		case r.GetGroup() == "gateway.networking.k8s.io" && r.GetKind() == "GatewayClass":
			if r.GetName() == gateway.WaypointClass && ns == rootNS {
				a.allWaypoints = true
			}
		case (r.GetGroup() == "" || r.GetGroup() == "core") && r.GetKind() == "Service":
			a.services[serviceKey(ns, r.GetName())] = true
		}
	}
	return a, true
}

// waypointPolicies are the policies a waypoint enforces, sorted by
// namespace/name: those on it (sc) and those on one served service.
func policiesFor(all []*securityv1.AuthorizationPolicy, rootNS string, ref Ref, svcKey string) []*securityv1.AuthorizationPolicy {
	var out []*securityv1.AuthorizationPolicy
	for _, ap := range all {
		a, ok := attachPolicy(ap, rootNS)
		if !ok {
			continue
		}
		if a.allWaypoints || a.waypoints[ref] || (svcKey != "" && a.services[svcKey]) {
			out = append(out, ap)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return serviceKey(out[i].Namespace, out[i].Name) < serviceKey(out[j].Namespace, out[j].Name)
	})
	return out
}

// rbacFilters translates the policies that apply to one chain into
// Envoy's HTTP RBAC filters in Istio's order: CUSTOM (which, with no
// external authorizer to ask, denies what its rules match), AUDIT (log),
// DENY, ALLOW. Whatever cannot be enforced fails safe, as istiod/authz
// does for ztunnel: in an ALLOW it matches nothing (allows less), in a
// DENY or CUSTOM it is taken to hold (denies more). notes says so, per
// policy "AuthorizationPolicy/namespace/name".
func (b *builder) rbacFilters(pols []*securityv1.AuthorizationPolicy, notes map[string][]string) []*hcm.HttpFilter {
	var out []*hcm.HttpFilter
	for _, r := range b.rbacConfigs(pols, notes, false) {
		out = append(out, &hcm.HttpFilter{Name: filterRBAC, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&rbachttp.RBAC{
			Rules: r.rules, ShadowRules: r.shadows, ShadowRulesStatPrefix: r.prefix})}})
	}
	return out
}

// networkRBACFilters are the same policies for a TCP chain, where a
// request's attributes (paths, methods, hosts, headers) are unknown:
// they fail safe as anything else that cannot be enforced.
func (b *builder) networkRBACFilters(pols []*securityv1.AuthorizationPolicy, statPrefix string, notes map[string][]string) []*listener.Filter {
	var out []*listener.Filter
	for _, r := range b.rbacConfigs(pols, notes, true) {
		out = append(out, &listener.Filter{Name: filterNetworkRBAC, ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(&rbacnet.RBAC{
			StatPrefix: statPrefix, Rules: r.rules, ShadowRules: r.shadows, ShadowRulesStatPrefix: r.prefix})}})
	}
	return out
}

type rbacConfig struct {
	rules, shadows *rbac.RBAC
	prefix         string
}

func (b *builder) rbacConfigs(pols []*securityv1.AuthorizationPolicy, notes map[string][]string, tcp bool) []rbacConfig {
	type set struct {
		action            rbac.RBAC_Action
		policies, shadows map[string]*rbac.Policy
		prefix            string
	}
	sets := map[secapi.AuthorizationPolicy_Action]*set{}
	order := []secapi.AuthorizationPolicy_Action{secapi.AuthorizationPolicy_CUSTOM, secapi.AuthorizationPolicy_AUDIT, secapi.AuthorizationPolicy_DENY, secapi.AuthorizationPolicy_ALLOW}
	for _, ap := range pols {
		key := authz.StatusKey(authz.KindAuthorizationPolicy, ap.Namespace, ap.Name)
		act := ap.Spec.GetAction()
		s := sets[act]
		if s == nil {
			s = &set{policies: map[string]*rbac.Policy{}, shadows: map[string]*rbac.Policy{}}
			switch act {
			case secapi.AuthorizationPolicy_ALLOW:
				s.action, s.prefix = rbac.RBAC_ALLOW, "istio_dry_run_allow_"
			case secapi.AuthorizationPolicy_DENY, secapi.AuthorizationPolicy_CUSTOM:
				s.action, s.prefix = rbac.RBAC_DENY, "istio_dry_run_deny_"
			case secapi.AuthorizationPolicy_AUDIT:
				s.action, s.prefix = rbac.RBAC_LOG, "istio_dry_run_audit_"
			default:
				notes[key] = append(notes[key], fmt.Sprintf("action %s: unknown; the policy is not applied", act))
				continue
			}
			sets[act] = s
		}
		if act == secapi.AuthorizationPolicy_CUSTOM {
			notes[key] = append(notes[key], "action CUSTOM: the waypoint has no external authorizer to ask, so it denies every request the rules match")
		}
		dry := false
		if v, ok := ap.Annotations[authz.DryRunAnnotation]; ok {
			d, err := strconv.ParseBool(v)
			if err != nil {
				notes[key] = append(notes[key], fmt.Sprintf("annotation %s=%q: want true or false; the policy is enforced", authz.DryRunAnnotation, v))
			}
			dry = d
		}
		deny := s.action != rbac.RBAC_ALLOW
		for i, r := range ap.Spec.GetRules() {
			p, ok := b.rbacPolicy(r, deny, tcp, ap.Namespace, func(msg string) {
				notes[key] = append(notes[key], fmt.Sprintf("rule %d: %s", i, msg))
			})
			if !ok {
				continue
			}
			name := fmt.Sprintf("ns[%s]-policy[%s]-rule[%d]", ap.Namespace, ap.Name, i)
			if dry {
				s.shadows[name] = p
			} else {
				s.policies[name] = p
			}
		}
		if len(ap.Spec.GetRules()) == 0 && s.action == rbac.RBAC_ALLOW && !dry {
			// An ALLOW without rules allows nothing; it still makes the
			// ALLOW filter (empty: deny all) appear.
			continue
		}
	}
	var out []rbacConfig
	for _, act := range order {
		s := sets[act]
		if s == nil {
			continue
		}
		var cfg rbacConfig
		if len(s.policies) > 0 || s.action == rbac.RBAC_ALLOW && len(s.shadows) == 0 {
			cfg.rules = &rbac.RBAC{Action: s.action, Policies: s.policies}
		}
		if len(s.shadows) > 0 {
			cfg.shadows = &rbac.RBAC{Action: s.action, Policies: s.shadows}
			cfg.prefix = s.prefix
		}
		if cfg.rules == nil && cfg.shadows == nil {
			continue
		}
		out = append(out, cfg)
	}
	return out
}

// rbacPolicy translates one rule; ok false when, in an ALLOW, nothing
// of it can match.
func (b *builder) rbacPolicy(r *secapi.Rule, deny, tcp bool, ns string, note func(string)) (*rbac.Policy, bool) {
	// Sources: OR over from; each source ANDs its fields.
	var ids []*rbac.Principal
	for i, f := range r.GetFrom() {
		id, ok := b.source(f.GetSource(), deny, ns, func(m string) { note(fmt.Sprintf("from %d: %s", i, m)) })
		if ok {
			ids = append(ids, id)
		}
	}
	if len(r.GetFrom()) > 0 && len(ids) == 0 {
		return nil, false
	}
	var perms []*rbac.Permission
	for i, t := range r.GetTo() {
		p, ok := b.operation(t.GetOperation(), deny, tcp, func(m string) { note(fmt.Sprintf("to %d: %s", i, m)) })
		if ok {
			perms = append(perms, p)
		}
	}
	if len(r.GetTo()) > 0 && len(perms) == 0 {
		return nil, false
	}
	principal := anyPrincipal()
	if len(ids) > 0 {
		principal = orIDs(ids)
	}
	permission := anyPermission()
	if len(perms) > 0 {
		permission = orRules(perms)
	}
	condIDs := []*rbac.Principal{principal}
	condPerms := []*rbac.Permission{permission}
	for j, c := range r.GetWhen() {
		id, perm, err := b.condition(c, tcp)
		if err != nil {
			if !deny {
				note(fmt.Sprintf("when %d: %v; this ALLOW rule matches nothing", j, err))
				return nil, false
			}
			note(fmt.Sprintf("when %d: %v; in this DENY rule the condition is taken to hold", j, err))
			continue
		}
		if id != nil {
			condIDs = append(condIDs, id)
		}
		if perm != nil {
			condPerms = append(condPerms, perm)
		}
	}
	return &rbac.Policy{
		Principals:  []*rbac.Principal{andIDs(condIDs)},
		Permissions: []*rbac.Permission{andRules(condPerms)},
	}, true
}

func anyPrincipal() *rbac.Principal {
	return &rbac.Principal{Identifier: &rbac.Principal_Any{Any: true}}
}
func anyPermission() *rbac.Permission {
	return &rbac.Permission{Rule: &rbac.Permission_Any{Any: true}}
}

func orIDs(ids []*rbac.Principal) *rbac.Principal {
	if len(ids) == 1 {
		return ids[0]
	}
	return &rbac.Principal{Identifier: &rbac.Principal_OrIds{OrIds: &rbac.Principal_Set{Ids: ids}}}
}

func andIDs(ids []*rbac.Principal) *rbac.Principal {
	if len(ids) == 1 {
		return ids[0]
	}
	return &rbac.Principal{Identifier: &rbac.Principal_AndIds{AndIds: &rbac.Principal_Set{Ids: ids}}}
}

func notID(id *rbac.Principal) *rbac.Principal {
	return &rbac.Principal{Identifier: &rbac.Principal_NotId{NotId: id}}
}

func orRules(ps []*rbac.Permission) *rbac.Permission {
	if len(ps) == 1 {
		return ps[0]
	}
	return &rbac.Permission{Rule: &rbac.Permission_OrRules{OrRules: &rbac.Permission_Set{Rules: ps}}}
}

func andRules(ps []*rbac.Permission) *rbac.Permission {
	if len(ps) == 1 {
		return ps[0]
	}
	return &rbac.Permission{Rule: &rbac.Permission_AndRules{AndRules: &rbac.Permission_Set{Rules: ps}}}
}

func notRule(p *rbac.Permission) *rbac.Permission {
	return &rbac.Permission{Rule: &rbac.Permission_NotRule{NotRule: p}}
}

// ruleKind is how matchers of one side of an RBAC policy combine: the
// principals (who) and the permissions (what) are built the same way
// from different Envoy types.
type ruleKind[T any] struct {
	any     func() T
	or, and func([]T) T
	not     func(T) T
}

var (
	principalRules  = ruleKind[*rbac.Principal]{any: anyPrincipal, or: orIDs, and: andIDs, not: notID}
	permissionRules = ruleKind[*rbac.Permission]{any: anyPermission, or: orRules, and: andRules, not: notRule}
)

// convertAll converts each value; the first error stops it.
func convertAll[T any](values []string, conv func(string) (T, error)) ([]T, error) {
	out := make([]T, 0, len(values))
	for _, v := range values {
		m, err := conv(v)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// fields collects the fields of one source or operation: a field
// matches any of its values (or none of them, for its not-form), and
// all fields must match.
type fields[T any] struct {
	kind ruleKind[T]
	note func(string)
	and  []T
	bad  bool // a field cannot be enforced
}

func (f *fields[T]) add(name string, values []string, not bool, conv func(string) (T, error)) {
	if len(values) == 0 {
		return
	}
	or, err := convertAll(values, conv)
	if err != nil {
		f.fail(fmt.Sprintf("%s: %v", name, err))
		return
	}
	m := f.kind.or(or)
	if not {
		m = f.kind.not(m)
	}
	f.and = append(f.and, m)
}

// fail notes a field that cannot be enforced.
func (f *fields[T]) fail(msg string) {
	f.note(msg)
	f.bad = true
}

// match is the conjunction of the fields; ok false when, in an ALLOW, a
// field cannot be enforced (what, "source" or "operation", matches
// nothing). In a DENY such fields are taken to match.
func (f *fields[T]) match(deny bool, what string) (m T, ok bool) {
	if f.bad {
		if !deny {
			f.note("this ALLOW " + what + " matches nothing")
			return m, false
		}
		f.note("in this DENY " + what + " the fields named are taken to match")
	}
	if len(f.and) == 0 {
		return f.kind.any(), true
	}
	return f.kind.and(f.and), true
}

// conditionMatch is a when condition's values and notValues converted
// with conv: any of the values and none of the notValues; nil when it
// has neither.
func conditionMatch[T any](k ruleKind[T], c *secapi.Condition, conv func(string) (T, error)) (m T, err error) {
	vals, err := convertAll(c.GetValues(), conv)
	if err != nil {
		return m, fmt.Errorf("condition %s: %w", c.GetKey(), err)
	}
	nots, err := convertAll(c.GetNotValues(), conv)
	if err != nil {
		return m, fmt.Errorf("condition %s: %w", c.GetKey(), err)
	}
	var and []T
	if len(vals) > 0 {
		and = append(and, k.or(vals))
	}
	if len(nots) > 0 {
		and = append(and, k.not(k.or(nots)))
	}
	if len(and) == 0 {
		return m, nil
	}
	return k.and(and), nil
}

// peer matches the peer principal kept in filter state by connect_terminate.
func peer(sm *envoymatcher.StringMatcher) *rbac.Principal {
	return &rbac.Principal{Identifier: &rbac.Principal_FilterState{FilterState: &envoymatcher.FilterStateMatcher{
		Key: FilterStatePeerPrincipal, Matcher: &envoymatcher.FilterStateMatcher_StringMatch{StringMatch: sm}}}}
}

func regexMatcher(re string) *envoymatcher.StringMatcher {
	return &envoymatcher.StringMatcher{MatchPattern: &envoymatcher.StringMatcher_SafeRegex{SafeRegex: &envoymatcher.RegexMatcher{Regex: re}}}
}

// istioString is Istio's string form as a matcher: "*" any non-empty,
// "abc*" prefix, "*abc" suffix, else exact; prefix goes before it.
func istioString(s, prefix string) *envoymatcher.StringMatcher {
	switch {
	case s == "*":
		return regexMatcher("^" + regexp.QuoteMeta(prefix) + ".+$")
	case strings.HasPrefix(s, "*"):
		if prefix == "" {
			return &envoymatcher.StringMatcher{MatchPattern: &envoymatcher.StringMatcher_Suffix{Suffix: s[1:]}}
		}
		return regexMatcher("^" + regexp.QuoteMeta(prefix) + ".*" + regexp.QuoteMeta(s[1:]) + "$")
	case strings.HasSuffix(s, "*"):
		return &envoymatcher.StringMatcher{MatchPattern: &envoymatcher.StringMatcher_Prefix{Prefix: prefix + s[:len(s)-1]}}
	}
	return &envoymatcher.StringMatcher{MatchPattern: &envoymatcher.StringMatcher_Exact{Exact: prefix + s}}
}

// source translates one source; ok false when, in an ALLOW, it can
// match nothing.
func (b *builder) source(s *secapi.Source, deny bool, ns string, note func(string)) (*rbac.Principal, bool) {
	if s == nil {
		return anyPrincipal(), true
	}
	f := fields[*rbac.Principal]{kind: principalRules, note: note}
	principal := func(v string) (*rbac.Principal, error) { return peer(istioString(v, "spiffe://")), nil }
	namespace := func(v string) (*rbac.Principal, error) {
		var seg string
		switch {
		case v == "*":
			seg = "[^/]+"
		case strings.HasPrefix(v, "*"):
			seg = "[^/]*" + regexp.QuoteMeta(v[1:])
		case strings.HasSuffix(v, "*"):
			seg = regexp.QuoteMeta(v[:len(v)-1]) + "[^/]*"
		default:
			seg = regexp.QuoteMeta(v)
		}
		return peer(regexMatcher("^spiffe://[^/]+/ns/" + seg + "/.*$")), nil
	}
	serviceAccount := func(v string) (*rbac.Principal, error) {
		n, name, qualified := strings.Cut(v, "/")
		if !qualified {
			n, name = ns, v
		}
		if n == "" || name == "" || strings.Contains(name, "/") || strings.Contains(v, "*") {
			return nil, fmt.Errorf("service account %q: want namespace/name or name, without wildcards", v)
		}
		return peer(regexMatcher("^spiffe://[^/]+/ns/" + regexp.QuoteMeta(n) + "/sa/" + regexp.QuoteMeta(name) + "$")), nil
	}
	trustDomain := func(v string) (*rbac.Principal, error) {
		return peer(&envoymatcher.StringMatcher{MatchPattern: &envoymatcher.StringMatcher_Prefix{Prefix: "spiffe://" + v + "/"}}), nil
	}
	cidr := func(remote bool) func(string) (*rbac.Principal, error) {
		return func(v string) (*rbac.Principal, error) {
			c, err := cidrRange(v)
			if err != nil {
				return nil, err
			}
			if remote {
				return &rbac.Principal{Identifier: &rbac.Principal_RemoteIp{RemoteIp: c}}, nil
			}
			return &rbac.Principal{Identifier: &rbac.Principal_DirectRemoteIp{DirectRemoteIp: c}}, nil
		}
	}
	f.add("principals", s.GetPrincipals(), false, principal)
	f.add("notPrincipals", s.GetNotPrincipals(), true, principal)
	f.add("namespaces", s.GetNamespaces(), false, namespace)
	f.add("notNamespaces", s.GetNotNamespaces(), true, namespace)
	f.add("serviceAccounts", s.GetServiceAccounts(), false, serviceAccount)
	f.add("notServiceAccounts", s.GetNotServiceAccounts(), true, serviceAccount)
	f.add("trustDomains", s.GetTrustDomains(), false, trustDomain)
	f.add("notTrustDomains", s.GetNotTrustDomains(), true, trustDomain)
	f.add("ipBlocks", s.GetIpBlocks(), false, cidr(false))
	f.add("notIpBlocks", s.GetNotIpBlocks(), true, cidr(false))
	f.add("remoteIpBlocks", s.GetRemoteIpBlocks(), false, cidr(true))
	f.add("notRemoteIpBlocks", s.GetNotRemoteIpBlocks(), true, cidr(true))
	if len(s.GetRequestPrincipals())+len(s.GetNotRequestPrincipals()) > 0 {
		f.fail("requestPrincipals: request authentication (JWT) is not supported on waypoints")
	}
	return f.match(deny, "source")
}

func cidrRange(v string) (*core.CidrRange, error) {
	p, err := netip.ParsePrefix(v)
	if err != nil {
		a, aerr := netip.ParseAddr(v)
		if aerr != nil {
			return nil, fmt.Errorf("ip block %q: want an IP address or CIDR", v)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	return &core.CidrRange{AddressPrefix: p.Masked().Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}, nil
}

// operation translates one operation, as source.
func (b *builder) operation(o *secapi.Operation, deny, tcp bool, note func(string)) (*rbac.Permission, bool) {
	if o == nil {
		return anyPermission(), true
	}
	f := fields[*rbac.Permission]{kind: permissionRules, note: note}
	header := func(name string, ignoreCase bool) func(string) (*rbac.Permission, error) {
		return func(v string) (*rbac.Permission, error) {
			sm := istioString(v, "")
			sm.IgnoreCase = ignoreCase
			return &rbac.Permission{Rule: &rbac.Permission_Header{Header: &route.HeaderMatcher{Name: name,
				HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: sm}}}}, nil
		}
	}
	path := func(v string) (*rbac.Permission, error) {
		return &rbac.Permission{Rule: &rbac.Permission_UrlPath{UrlPath: &envoymatcher.PathMatcher{
			Rule: &envoymatcher.PathMatcher_Path{Path: istioString(v, "")}}}}, nil
	}
	port := func(v string) (*rbac.Permission, error) {
		p, err := strconv.ParseUint(v, 10, 16)
		if err != nil || p == 0 {
			return nil, fmt.Errorf("port %q: want a number from 1 to 65535", v)
		}
		return &rbac.Permission{Rule: &rbac.Permission_DestinationPort{DestinationPort: uint32(p)}}, nil
	}
	if tcp && len(o.GetHosts())+len(o.GetNotHosts())+len(o.GetMethods())+len(o.GetNotMethods())+len(o.GetPaths())+len(o.GetNotPaths()) > 0 {
		f.fail("hosts, methods or paths: not known on a TCP chain")
	}
	f.add("hosts", o.GetHosts(), false, header(":authority", true))
	f.add("notHosts", o.GetNotHosts(), true, header(":authority", true))
	f.add("methods", o.GetMethods(), false, header(":method", false))
	f.add("notMethods", o.GetNotMethods(), true, header(":method", false))
	f.add("paths", o.GetPaths(), false, path)
	f.add("notPaths", o.GetNotPaths(), true, path)
	f.add("ports", o.GetPorts(), false, port)
	f.add("notPorts", o.GetNotPorts(), true, port)
	return f.match(deny, "operation")
}

var headerKey = regexp.MustCompile(`^request\.headers\[([^\]]+)\]$`)

// condition translates a when condition into a principal or a
// permission; an error when the waypoint cannot enforce it.
func (b *builder) condition(c *secapi.Condition, tcp bool) (*rbac.Principal, *rbac.Permission, error) {
	key := c.GetKey()
	if tcp && strings.HasPrefix(key, "request.") {
		return nil, nil, fmt.Errorf("condition %s: not known on a TCP chain", key)
	}
	principalIDs := func(conv func(string) (*rbac.Principal, error)) (*rbac.Principal, *rbac.Permission, error) {
		id, err := conditionMatch(principalRules, c, conv)
		return id, nil, err
	}
	permissions := func(conv func(string) (*rbac.Permission, error)) (*rbac.Principal, *rbac.Permission, error) {
		perm, err := conditionMatch(permissionRules, c, conv)
		return nil, perm, err
	}
	if m := headerKey.FindStringSubmatch(key); m != nil {
		return permissions(func(v string) (*rbac.Permission, error) {
			return &rbac.Permission{Rule: &rbac.Permission_Header{Header: &route.HeaderMatcher{Name: m[1],
				HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: istioString(v, "")}}}}, nil
		})
	}
	switch key {
	case "source.ip":
		return principalIDs(func(v string) (*rbac.Principal, error) {
			c, err := cidrRange(v)
			return &rbac.Principal{Identifier: &rbac.Principal_DirectRemoteIp{DirectRemoteIp: c}}, err
		})
	case "remote.ip":
		return principalIDs(func(v string) (*rbac.Principal, error) {
			c, err := cidrRange(v)
			return &rbac.Principal{Identifier: &rbac.Principal_RemoteIp{RemoteIp: c}}, err
		})
	case "source.namespace":
		return principalIDs(func(v string) (*rbac.Principal, error) {
			return peer(regexMatcher("^spiffe://[^/]+/ns/" + regexp.QuoteMeta(v) + "/.*$")), nil
		})
	case "source.principal":
		return principalIDs(func(v string) (*rbac.Principal, error) { return peer(istioString(v, "spiffe://")), nil })
	case "destination.ip":
		return permissions(func(v string) (*rbac.Permission, error) {
			c, err := cidrRange(v)
			return &rbac.Permission{Rule: &rbac.Permission_DestinationIp{DestinationIp: c}}, err
		})
	case "destination.port":
		return permissions(func(v string) (*rbac.Permission, error) {
			p, err := strconv.ParseUint(v, 10, 16)
			if err != nil || p == 0 {
				return nil, fmt.Errorf("port %q: want a number from 1 to 65535", v)
			}
			return &rbac.Permission{Rule: &rbac.Permission_DestinationPort{DestinationPort: uint32(p)}}, nil
		})
	case "connection.sni":
		return permissions(func(v string) (*rbac.Permission, error) {
			return &rbac.Permission{Rule: &rbac.Permission_RequestedServerName{RequestedServerName: istioString(v, "")}}, nil
		})
	}
	if strings.HasPrefix(key, "request.auth.") {
		return nil, nil, fmt.Errorf("condition %s: request authentication (JWT) is not supported on waypoints", key)
	}
	return nil, nil, fmt.Errorf("condition %s: unknown key", key)
}
