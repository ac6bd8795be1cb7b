//lint:file-ignore SA1019 Envoy still honours its deprecated fields, and istiod may send them

package config

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// RBAC is one Envoy RBAC filter (HTTP or network): its rules and shadow
// rules compiled. A filter without rules allows everything (Envoy's
// semantics: the filter is then a no-op).
type RBAC struct {
	Rules  *RBACRules
	Shadow *RBACRules
	// StatPrefix names the filter in logs.
	StatPrefix string
	// ShadowPrefix is shadow_rules_stat_prefix: it begins the names of
	// the shadow result's dynamic metadata keys (Envoy's
	// <prefix>shadow_engine_result and <prefix>shadow_effective_policy_id;
	// Istio's dry-run policies use istio_dry_run_allow_ and
	// istio_dry_run_deny_).
	ShadowPrefix string
}

// Envoy's RBAC dynamic metadata: the namespaces its HTTP and network
// filters write, and the keys of a shadow result (after ShadowPrefix).
const (
	RBACMetadataHTTP         = "envoy.filters.http.rbac"
	RBACMetadataNetwork      = "envoy.filters.network.rbac"
	ShadowEngineResultKey    = "shadow_engine_result"
	ShadowEffectivePolicyKey = "shadow_effective_policy_id"
	ShadowAllowed            = "allowed"
	ShadowDenied             = "denied"
)

// RBACRules is one set of rules with its action.
type RBACRules struct {
	// Action is ALLOW, DENY or LOG.
	Action   rbacv3.RBAC_Action
	Policies []*Policy
	// Broken is set when a rule could not be compiled: the filter then
	// denies everything (fail closed) instead of refusing the update, so
	// that a rule the proxy cannot apply never leaves the previous, more
	// permissive rules in force. Broken holds the reason.
	Broken string
}

// Policy is one named policy: it matches when any permission and any
// principal match.
type Policy struct {
	Name        string
	Permissions []Matcher
	Principals  []Matcher
}

// Matcher is a compiled permission or principal.
type Matcher func(Request) bool

// Allowed reports whether the rules let r through, and the policy that
// decided (the matching policy for DENY and ALLOW; "" when none
// matched).
func (rs *RBACRules) Allowed(r Request) (bool, string) {
	if rs == nil {
		return true, ""
	}
	if rs.Broken != "" {
		return false, ""
	}
	matched := ""
	for _, p := range rs.Policies {
		if p.matches(r) {
			matched = p.Name
			break
		}
	}
	switch rs.Action {
	case rbacv3.RBAC_ALLOW:
		return matched != "", matched
	case rbacv3.RBAC_DENY:
		return matched == "", matched
	default: // LOG never denies
		return true, matched
	}
}

func (p *Policy) matches(r Request) bool {
	return anyOf(p.Permissions, r) && anyOf(p.Principals, r)
}

func anyOf(ms []Matcher, r Request) bool {
	for _, m := range ms {
		if m(r) {
			return true
		}
	}
	return false
}

func compileRBACRules(rules *rbacv3.RBAC, http bool) *RBACRules {
	if rules == nil {
		return nil
	}
	out := &RBACRules{Action: rules.GetAction()}
	if out.Action != rbacv3.RBAC_ALLOW && out.Action != rbacv3.RBAC_DENY && out.Action != rbacv3.RBAC_LOG {
		out.Broken = fmt.Sprintf("action %v not supported", out.Action)
		return out
	}
	// Envoy evaluates policies in name order (its map is ordered).
	names := make([]string, 0, len(rules.GetPolicies()))
	for n := range rules.GetPolicies() {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		p := rules.GetPolicies()[n]
		if p.GetCondition() != nil || p.GetCheckedCondition() != nil {
			out.Broken = fmt.Sprintf("policy %s: CEL conditions not supported", n)
			return out
		}
		pol := &Policy{Name: n}
		for i, perm := range p.GetPermissions() {
			m, err := compilePermission(perm, http)
			if err != nil {
				out.Broken = fmt.Sprintf("policy %s: permission %d: %v", n, i, err)
				return out
			}
			pol.Permissions = append(pol.Permissions, m)
		}
		for i, pr := range p.GetPrincipals() {
			m, err := compilePrincipal(pr, http)
			if err != nil {
				out.Broken = fmt.Sprintf("policy %s: principal %d: %v", n, i, err)
				return out
			}
			pol.Principals = append(pol.Principals, m)
		}
		out.Policies = append(out.Policies, pol)
	}
	return out
}

func all(ms []Matcher) Matcher {
	return func(r Request) bool {
		for _, m := range ms {
			if !m(r) {
				return false
			}
		}
		return true
	}
}

func compilePermission(p *rbacv3.Permission, http bool) (Matcher, error) {
	switch rule := p.GetRule().(type) {
	case *rbacv3.Permission_Any:
		return func(Request) bool { return true }, nil
	case *rbacv3.Permission_AndRules:
		ms, err := compilePermissions(rule.AndRules.GetRules(), http)
		if err != nil {
			return nil, err
		}
		return all(ms), nil
	case *rbacv3.Permission_OrRules:
		ms, err := compilePermissions(rule.OrRules.GetRules(), http)
		if err != nil {
			return nil, err
		}
		return func(r Request) bool { return anyOf(ms, r) }, nil
	case *rbacv3.Permission_NotRule:
		m, err := compilePermission(rule.NotRule, http)
		if err != nil {
			return nil, err
		}
		return func(r Request) bool { return !m(r) }, nil
	case *rbacv3.Permission_Header:
		if !http {
			return nil, fmt.Errorf("header permission in a network filter")
		}
		h, err := compileHeader(rule.Header)
		if err != nil {
			return nil, err
		}
		return Matcher(h), nil
	case *rbacv3.Permission_UrlPath:
		if !http {
			return nil, fmt.Errorf("url_path permission in a network filter")
		}
		return compileURLPath(rule.UrlPath)
	case *rbacv3.Permission_DestinationIp:
		c, err := cidr(rule.DestinationIp)
		if err != nil {
			return nil, err
		}
		return func(r Request) bool { return c.Contains(r.Destination().Addr()) }, nil
	case *rbacv3.Permission_DestinationPort:
		want := uint16(rule.DestinationPort)
		return func(r Request) bool { return r.Destination().Port() == want }, nil
	case *rbacv3.Permission_DestinationPortRange:
		lo, hi := rule.DestinationPortRange.GetStart(), rule.DestinationPortRange.GetEnd()
		return func(r Request) bool { p := int64(r.Destination().Port()); return p >= int64(lo) && p < int64(hi) }, nil
	case *rbacv3.Permission_RequestedServerName:
		// No TLS is terminated inside the waypoint's chains: there is no
		// SNI, as for Envoy on a plaintext connection.
		m, err := compileString(rule.RequestedServerName)
		if err != nil {
			return nil, err
		}
		return func(Request) bool { return m("") }, nil
	default:
		return nil, fmt.Errorf("permission %T not supported", rule)
	}
}

func compilePermissions(ps []*rbacv3.Permission, http bool) ([]Matcher, error) {
	out := make([]Matcher, 0, len(ps))
	for _, p := range ps {
		m, err := compilePermission(p, http)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// compileURLPath matches the path without its query, as Envoy's
// url_path.
func compileURLPath(pm *matcherv3.PathMatcher) (Matcher, error) {
	m, err := compileString(pm.GetPath())
	if err != nil {
		return nil, fmt.Errorf("url_path: %w", err)
	}
	return func(r Request) bool { return m(pathWithoutQuery(r)) }, nil
}

func compilePrincipal(p *rbacv3.Principal, http bool) (Matcher, error) {
	switch id := p.GetIdentifier().(type) {
	case *rbacv3.Principal_Any:
		return func(Request) bool { return true }, nil
	case *rbacv3.Principal_AndIds:
		ms, err := compilePrincipals(id.AndIds.GetIds(), http)
		if err != nil {
			return nil, err
		}
		return all(ms), nil
	case *rbacv3.Principal_OrIds:
		ms, err := compilePrincipals(id.OrIds.GetIds(), http)
		if err != nil {
			return nil, err
		}
		return func(r Request) bool { return anyOf(ms, r) }, nil
	case *rbacv3.Principal_NotId:
		m, err := compilePrincipal(id.NotId, http)
		if err != nil {
			return nil, err
		}
		return func(r Request) bool { return !m(r) }, nil
	case *rbacv3.Principal_Authenticated_:
		if id.Authenticated.GetPrincipalName() == nil {
			return func(r Request) bool { _, ok := r.PeerPrincipal(); return ok }, nil
		}
		m, err := compileString(id.Authenticated.GetPrincipalName())
		if err != nil {
			return nil, err
		}
		return func(r Request) bool { v, ok := r.PeerPrincipal(); return ok && m(v) }, nil
	case *rbacv3.Principal_FilterState:
		key := id.FilterState.GetKey()
		sm := id.FilterState.GetStringMatch()
		if sm == nil {
			return nil, fmt.Errorf("filter_state principal %s: only string_match supported", key)
		}
		m, err := compileString(sm)
		if err != nil {
			return nil, err
		}
		return func(r Request) bool { v, ok := r.FilterState(key); return ok && m(v) }, nil
	case *rbacv3.Principal_SourceIp, *rbacv3.Principal_DirectRemoteIp, *rbacv3.Principal_RemoteIp:
		var c netip.Prefix
		var err error
		switch id := id.(type) {
		case *rbacv3.Principal_SourceIp:
			c, err = cidr(id.SourceIp)
		case *rbacv3.Principal_DirectRemoteIp:
			c, err = cidr(id.DirectRemoteIp)
		case *rbacv3.Principal_RemoteIp:
			c, err = cidr(id.RemoteIp)
		}
		if err != nil {
			return nil, err
		}
		return func(r Request) bool { return c.Contains(r.Source().Addr()) }, nil
	case *rbacv3.Principal_UrlPath:
		if !http {
			return nil, fmt.Errorf("url_path principal in a network filter")
		}
		return compileURLPath(id.UrlPath)
	case *rbacv3.Principal_Header:
		if !http {
			return nil, fmt.Errorf("header principal in a network filter")
		}
		h, err := compileHeader(id.Header)
		if err != nil {
			return nil, err
		}
		return Matcher(h), nil
	default:
		return nil, fmt.Errorf("principal %T not supported", id)
	}
}

func compilePrincipals(ps []*rbacv3.Principal, http bool) ([]Matcher, error) {
	out := make([]Matcher, 0, len(ps))
	for _, p := range ps {
		m, err := compilePrincipal(p, http)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// pathWithoutQuery is the :path a url_path matcher sees.
func pathWithoutQuery(r Request) string {
	p, _, _ := strings.Cut(r.Path(), "?")
	return p
}

// ShadowResult evaluates the shadow rules, as Envoy's RBAC filters do
// before enforcing: result is ShadowAllowed or ShadowDenied and policy
// the policy that matched ("" when none did); ok is false when the
// filter has no shadow rules.
func (rb *RBAC) ShadowResult(r Request) (result, policy string, ok bool) {
	if rb.Shadow == nil {
		return "", "", false
	}
	allowed, policy := rb.Shadow.Allowed(r)
	if allowed {
		return ShadowAllowed, policy, true
	}
	return ShadowDenied, policy, true
}
