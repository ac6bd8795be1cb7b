// Package authz translates Istio security policies (security.istio.io/v1
// AuthorizationPolicy and PeerAuthentication) into the L4 policies a
// ztunnel enforces (istio.security.Authorization). It knows nothing of
// pods or of xDS: the caller asks which selector-scoped policies apply to
// a workload's namespace and labels.
package authz

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	secapi "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/ambitmesh/ambit/api/security"
)

// Config holds the mesh settings translation depends on.
type Config struct {
	// RootNamespace holds mesh-wide policies (Istio's meshConfig
	// rootNamespace).
	RootNamespace string
}

// Translation is the result for one set of policies.
type Translation struct {
	// Authorizations are keyed by resource name "namespace/name".
	Authorizations map[string]*security.Authorization
	// Status maps "kind/namespace/name" of a source policy to a message
	// when the policy was rejected or translated into something stricter
	// than written. Policies translated as written have no entry.
	Status map[string]string

	selected []selected
	peer     peerIndex
}

// selected is a WORKLOAD_SELECTOR policy and the workloads it applies to.
type selected struct {
	name      string // resource name
	namespace string // "" for the root namespace: every namespace
	selector  labels.Selector
}

// StatusKey names a source policy in Translation.Status.
func StatusKey(kind, namespace, name string) string { return kind + "/" + namespace + "/" + name }

// Kinds of source policies.
const (
	KindAuthorizationPolicy = "AuthorizationPolicy"
	KindPeerAuthentication  = "PeerAuthentication"
)

// ErrL7 marks a rule that needs a waypoint: it names HTTP attributes.
var ErrL7 = errors.New("rule has HTTP attributes, which only a waypoint can enforce")

// Translate turns policies into Authorizations. A policy that cannot be
// translated is left out and its reason recorded in Status; it never
// affects the others.
func Translate(aps []*securityv1.AuthorizationPolicy, pas []*securityv1.PeerAuthentication, cfg Config) *Translation {
	t := &Translation{
		Authorizations: map[string]*security.Authorization{},
		Status:         map[string]string{},
	}
	for _, ap := range aps {
		key := StatusKey(KindAuthorizationPolicy, ap.Namespace, ap.Name)
		a, note, err := translateAuthorizationPolicy(ap, cfg)
		if err != nil {
			t.Status[key] = "rejected: " + err.Error()
			continue
		}
		if a == nil {
			if note != "" {
				t.Status[key] = note
			}
			continue
		}
		if note != "" {
			t.Status[key] = note
		}
		name := a.Namespace + "/" + a.Name
		t.Authorizations[name] = a
		if a.Scope == security.Scope_WORKLOAD_SELECTOR {
			ns := ap.Namespace
			if ns == cfg.RootNamespace {
				ns = ""
			}
			t.selected = append(t.selected, selected{name: name, namespace: ns, selector: labels.SelectorFromSet(ap.Spec.GetSelector().GetMatchLabels())})
		}
	}
	t.translatePeerAuthentications(pas, cfg)
	return t
}

// ForWorkload lists, sorted, the names of the WORKLOAD_SELECTOR
// Authorizations that apply to a workload, for its
// authorization_policies field.
func (t *Translation) ForWorkload(namespace string, lbls map[string]string) []string {
	var out []string
	set := labels.Set(lbls)
	for _, s := range t.selected {
		if (s.namespace == "" || s.namespace == namespace) && s.selector.Matches(set) {
			out = append(out, s.name)
		}
	}
	if name := t.peer.forWorkload(namespace, set); name != "" {
		out = append(out, name)
	}
	sort.Strings(out)
	return slices.Compact(out)
}

func translateAuthorizationPolicy(ap *securityv1.AuthorizationPolicy, cfg Config) (*security.Authorization, string, error) {
	spec := &ap.Spec
	if spec.GetTargetRef() != nil || len(spec.GetTargetRefs()) > 0 {
		// Bound to a waypoint or gateway, not enforced by ztunnel.
		return nil, "", nil
	}
	a := &security.Authorization{Name: ap.Name, Namespace: ap.Namespace}
	switch {
	case len(spec.GetSelector().GetMatchLabels()) > 0:
		a.Scope = security.Scope_WORKLOAD_SELECTOR
	case ap.Namespace == cfg.RootNamespace:
		a.Scope = security.Scope_GLOBAL
	default:
		a.Scope = security.Scope_NAMESPACE
	}
	switch spec.GetAction() {
	case secapi.AuthorizationPolicy_ALLOW:
		a.Action = security.Action_ALLOW
	case secapi.AuthorizationPolicy_DENY:
		a.Action = security.Action_DENY
	default:
		return nil, "", fmt.Errorf("action %s: ztunnel enforces only ALLOW and DENY", spec.GetAction())
	}
	var notes []string
	for i, r := range spec.GetRules() {
		rule, l7, err := translateRule(r)
		if err != nil {
			return nil, "", fmt.Errorf("rule %d: %w", i, err)
		}
		if len(l7) > 0 {
			if a.Action == security.Action_ALLOW {
				// Dropping the rule allows less: fail closed.
				notes = append(notes, fmt.Sprintf("rule %d: %v (found %s); there is no waypoint, so the rule is left out of this ALLOW policy, which denies what it would have allowed", i, ErrL7, strings.Join(l7, ", ")))
				continue
			}
			// In a DENY policy the HTTP part is treated as always
			// matching, which denies more: fail closed.
			notes = append(notes, fmt.Sprintf("rule %d: %v (found %s); there is no waypoint, so this DENY rule applies to every request its L4 part matches", i, ErrL7, strings.Join(l7, ", ")))
		}
		a.Rules = append(a.Rules, rule)
	}
	return a, strings.Join(notes, "; "), nil
}

// translateRule maps from/to/when to clauses. Each list becomes one clause
// (its entries are OR-ed), each condition its own clause; clauses are
// AND-ed. HTTP-only attributes are reported in l7 and left out.
func translateRule(r *secapi.Rule) (_ *security.Rule, l7 []string, err error) {
	rule := &security.Rule{}
	if len(r.GetFrom()) > 0 {
		c := &security.Clause{}
		for j, f := range r.GetFrom() {
			m, fl7, err := translateSource(f.GetSource())
			if err != nil {
				return nil, nil, fmt.Errorf("from %d: %w", j, err)
			}
			l7 = append(l7, fl7...)
			c.Matches = append(c.Matches, m)
		}
		rule.Clauses = append(rule.Clauses, c)
	}
	if len(r.GetTo()) > 0 {
		c := &security.Clause{}
		for j, to := range r.GetTo() {
			m, tl7, err := translateOperation(to.GetOperation())
			if err != nil {
				return nil, nil, fmt.Errorf("to %d: %w", j, err)
			}
			l7 = append(l7, tl7...)
			c.Matches = append(c.Matches, m)
		}
		rule.Clauses = append(rule.Clauses, c)
	}
	for j, cond := range r.GetWhen() {
		m, isL7, err := translateCondition(cond)
		if err != nil {
			return nil, nil, fmt.Errorf("when %d: %w", j, err)
		}
		if isL7 {
			l7 = append(l7, "when "+cond.GetKey())
			continue
		}
		rule.Clauses = append(rule.Clauses, &security.Clause{Matches: []*security.Match{m}})
	}
	return rule, l7, nil
}

func translateSource(s *secapi.Source) (*security.Match, []string, error) {
	m := &security.Match{}
	var l7 []string
	if s == nil {
		return m, nil, nil
	}
	if len(s.GetRequestPrincipals()) > 0 {
		l7 = append(l7, "requestPrincipals")
	}
	if len(s.GetNotRequestPrincipals()) > 0 {
		l7 = append(l7, "notRequestPrincipals")
	}
	if len(s.GetPrincipals()) > 0 && (len(s.GetServiceAccounts()) > 0 || len(s.GetTrustDomains()) > 0) {
		return nil, nil, errors.New("principals together with serviceAccounts or trustDomains in one source: want one of them")
	}
	m.Principals = stringMatches(s.GetPrincipals())
	m.NotPrincipals = stringMatches(s.GetNotPrincipals())
	for _, sa := range s.GetServiceAccounts() {
		p, err := serviceAccountPrincipal(sa)
		if err != nil {
			return nil, nil, err
		}
		m.Principals = append(m.Principals, p)
	}
	for _, sa := range s.GetNotServiceAccounts() {
		p, err := serviceAccountPrincipal(sa)
		if err != nil {
			return nil, nil, err
		}
		m.NotPrincipals = append(m.NotPrincipals, p)
	}
	for _, td := range s.GetTrustDomains() {
		m.Principals = append(m.Principals, &security.StringMatch{MatchType: &security.StringMatch_Prefix{Prefix: td + "/"}})
	}
	for _, td := range s.GetNotTrustDomains() {
		m.NotPrincipals = append(m.NotPrincipals, &security.StringMatch{MatchType: &security.StringMatch_Prefix{Prefix: td + "/"}})
	}
	m.Namespaces = stringMatches(s.GetNamespaces())
	m.NotNamespaces = stringMatches(s.GetNotNamespaces())
	var err error
	// Without a proxy in front, the remote address is the source address.
	for _, blocks := range []struct {
		in  []string
		out *[]*security.Address
	}{
		{s.GetIpBlocks(), &m.SourceIps},
		{s.GetRemoteIpBlocks(), &m.SourceIps},
		{s.GetNotIpBlocks(), &m.NotSourceIps},
		{s.GetNotRemoteIpBlocks(), &m.NotSourceIps},
	} {
		for _, b := range blocks.in {
			a, perr := parseCIDR(b)
			if perr != nil {
				err = errors.Join(err, perr)
				continue
			}
			*blocks.out = append(*blocks.out, a)
		}
	}
	if err != nil {
		return nil, nil, err
	}
	return m, l7, nil
}

func translateOperation(o *secapi.Operation) (*security.Match, []string, error) {
	m := &security.Match{}
	if o == nil {
		return m, nil, nil
	}
	var l7 []string
	for name, v := range map[string][]string{
		"hosts": o.GetHosts(), "notHosts": o.GetNotHosts(),
		"methods": o.GetMethods(), "notMethods": o.GetNotMethods(),
		"paths": o.GetPaths(), "notPaths": o.GetNotPaths(),
	} {
		if len(v) > 0 {
			l7 = append(l7, name)
		}
	}
	sort.Strings(l7)
	var err error
	if m.DestinationPorts, err = parsePorts(o.GetPorts()); err != nil {
		return nil, nil, err
	}
	if m.NotDestinationPorts, err = parsePorts(o.GetNotPorts()); err != nil {
		return nil, nil, err
	}
	return m, l7, nil
}

// translateCondition handles the L4 condition keys; any other key is an
// HTTP attribute.
func translateCondition(c *secapi.Condition) (*security.Match, bool, error) {
	m := &security.Match{}
	var err error
	switch c.GetKey() {
	case "source.ip", "remote.ip":
		m.SourceIps, err = parseCIDRs(c.GetValues())
		if err == nil {
			m.NotSourceIps, err = parseCIDRs(c.GetNotValues())
		}
	case "destination.ip":
		m.DestinationIps, err = parseCIDRs(c.GetValues())
		if err == nil {
			m.NotDestinationIps, err = parseCIDRs(c.GetNotValues())
		}
	case "destination.port":
		m.DestinationPorts, err = parsePorts(c.GetValues())
		if err == nil {
			m.NotDestinationPorts, err = parsePorts(c.GetNotValues())
		}
	case "source.namespace":
		m.Namespaces, m.NotNamespaces = stringMatches(c.GetValues()), stringMatches(c.GetNotValues())
	case "source.principal":
		m.Principals, m.NotPrincipals = stringMatches(c.GetValues()), stringMatches(c.GetNotValues())
	default:
		return nil, true, nil
	}
	return m, false, err
}

// stringMatches maps Istio's string forms: "*" is any non-empty value,
// "abc*" a prefix, "*abc" a suffix, anything else exact.
func stringMatches(in []string) []*security.StringMatch {
	var out []*security.StringMatch
	for _, s := range in {
		var m security.StringMatch
		switch {
		case s == "*":
			m.MatchType = &security.StringMatch_Presence{Presence: emptyValue()}
		case strings.HasPrefix(s, "*"):
			m.MatchType = &security.StringMatch_Suffix{Suffix: s[1:]}
		case strings.HasSuffix(s, "*"):
			m.MatchType = &security.StringMatch_Prefix{Prefix: s[:len(s)-1]}
		default:
			m.MatchType = &security.StringMatch_Exact{Exact: s}
		}
		out = append(out, &m)
	}
	return out
}

// serviceAccountPrincipal turns "namespace/name" into a match on the
// principal's "/ns/<ns>/sa/<name>" suffix, in any trust domain.
func serviceAccountPrincipal(sa string) (*security.StringMatch, error) {
	ns, name, ok := strings.Cut(sa, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return nil, fmt.Errorf("service account %q: want namespace/name", sa)
	}
	return &security.StringMatch{MatchType: &security.StringMatch_Suffix{Suffix: "/ns/" + ns + "/sa/" + name}}, nil
}

func parseCIDRs(in []string) ([]*security.Address, error) {
	var out []*security.Address
	for _, s := range in {
		a, err := parseCIDR(s)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// parseCIDR accepts an address or a prefix.
func parseCIDR(s string) (*security.Address, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return &security.Address{Address: p.Masked().Addr().AsSlice(), Length: uint32(p.Bits())}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return nil, fmt.Errorf("ip block %q: want an IP address or CIDR", s)
	}
	return &security.Address{Address: a.AsSlice(), Length: uint32(a.BitLen())}, nil
}

func parsePorts(in []string) ([]uint32, error) {
	var out []uint32
	for _, s := range in {
		p, err := strconv.ParseUint(s, 10, 16)
		if err != nil || p == 0 {
			return nil, fmt.Errorf("port %q: want a number from 1 to 65535", s)
		}
		out = append(out, uint32(p))
	}
	return out, nil
}
