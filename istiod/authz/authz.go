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

// DryRunAnnotation marks a policy whose verdicts are logged, not
// enforced (Istio's istio.io/dry-run).
const DryRunAnnotation = "istio.io/dry-run"

// What cannot be translated as written is never dropped in a way that
// widens access. In an ALLOW policy, a source, operation or condition
// that cannot be understood matches nothing: the entry is left out of its
// list, and a rule left unable to match is left out (an ALLOW with no
// rules allows nothing). In a DENY policy, the field or condition that
// cannot be understood is taken to hold: it is left out of its match, so
// the rule denies at least what was meant. Each case is named in the
// policy's status.
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
	var notes, invalid []string
	if v, ok := ap.Annotations[DryRunAnnotation]; ok {
		dry, err := strconv.ParseBool(v)
		if err != nil {
			// Not knowing whether to enforce, enforce.
			invalid = append(invalid, fmt.Sprintf("annotation %s=%q: want true or false; the policy is enforced", DryRunAnnotation, v))
		}
		a.DryRun = dry
	}
	switch spec.GetAction() {
	case secapi.AuthorizationPolicy_ALLOW:
		a.Action = security.Action_ALLOW
	case secapi.AuthorizationPolicy_DENY:
		a.Action = security.Action_DENY
	case secapi.AuthorizationPolicy_AUDIT:
		// Auditing decides nothing: leaving it out changes no verdict.
		return nil, "action AUDIT: ztunnel does not audit; the policy has no effect", nil
	case secapi.AuthorizationPolicy_CUSTOM:
		// The external authorizer could refuse what the rules match; with
		// none to ask, refuse it.
		a.Action = security.Action_DENY
		notes = append(notes, "action CUSTOM: ztunnel cannot ask an external authorizer, so it denies every connection the rules match")
	default:
		return nil, "", fmt.Errorf("action %s: want ALLOW, DENY, AUDIT or CUSTOM", spec.GetAction())
	}
	deny := a.Action == security.Action_DENY
	for i, r := range spec.GetRules() {
		t := translateRule(r, deny, ap.Namespace)
		for _, msg := range t.invalid {
			invalid = append(invalid, fmt.Sprintf("rule %d: %s", i, msg))
		}
		if t.never {
			notes = append(notes, fmt.Sprintf("rule %d: nothing in it can be understood to match, so this ALLOW policy allows nothing by it", i))
			continue
		}
		if len(t.l7) > 0 {
			if !deny {
				// Dropping the rule allows less: fail closed.
				notes = append(notes, fmt.Sprintf("rule %d: %v (found %s); there is no waypoint, so the rule is left out of this ALLOW policy, which denies what it would have allowed", i, ErrL7, strings.Join(t.l7, ", ")))
				continue
			}
			// In a DENY policy the HTTP part is treated as always
			// matching, which denies more: fail closed.
			notes = append(notes, fmt.Sprintf("rule %d: %v (found %s); there is no waypoint, so this DENY rule applies to every request its L4 part matches", i, ErrL7, strings.Join(t.l7, ", ")))
		}
		a.Rules = append(a.Rules, t.rule)
	}
	if len(invalid) > 0 {
		how := "in this ALLOW policy each source, operation or condition named matches nothing"
		if deny {
			how = "in this DENY policy each field or condition named is taken to match everything"
		}
		notes = append([]string{"invalid: " + strings.Join(invalid, "; ") + " (" + how + ")"}, notes...)
	}
	return a, strings.Join(notes, "; "), nil
}

// rule is one translated rule and what could not be translated in it.
type rule struct {
	rule *security.Rule
	// l7 names the HTTP attributes left out.
	l7 []string
	// invalid describes values that could not be understood.
	invalid []string
	// never: in an ALLOW policy, the rule can match nothing.
	never bool
}

// translateRule maps from/to/when to clauses. Each list becomes one clause
// (its entries are OR-ed), each condition its own clause; clauses are
// AND-ed. HTTP-only attributes are reported in l7 and left out. deny says
// which way a value that cannot be understood fails closed; ns is the
// policy's namespace.
func translateRule(r *secapi.Rule, deny bool, ns string) rule {
	out := rule{rule: &security.Rule{}}
	// list translates one of from and to: entries that can match nothing
	// are left out, and a list left empty leaves the rule unable to match.
	list := func(what string, n int, tr func(i int) (*security.Match, []string, []string)) {
		if n == 0 {
			return
		}
		c := &security.Clause{}
		for i := range n {
			m, l7, invalid := tr(i)
			out.l7 = append(out.l7, l7...)
			for _, msg := range invalid {
				out.invalid = append(out.invalid, fmt.Sprintf("%s %d: %s", what, i, msg))
			}
			if m != nil {
				c.Matches = append(c.Matches, m)
			}
		}
		if len(c.Matches) == 0 {
			out.never = true
		}
		out.rule.Clauses = append(out.rule.Clauses, c)
	}
	list("from", len(r.GetFrom()), func(i int) (*security.Match, []string, []string) {
		return translateSource(r.GetFrom()[i].GetSource(), deny, ns)
	})
	list("to", len(r.GetTo()), func(i int) (*security.Match, []string, []string) {
		m, invalid := translateOperation(r.GetTo()[i].GetOperation(), deny)
		return m, operationL7(r.GetTo()[i].GetOperation()), invalid
	})
	for j, cond := range r.GetWhen() {
		m, isL7, err := translateCondition(cond)
		if isL7 {
			out.l7 = append(out.l7, "when "+cond.GetKey())
			continue
		}
		if err != nil {
			out.invalid = append(out.invalid, fmt.Sprintf("when %d: %v", j, err))
			if !deny {
				out.never = true
			}
			// In a DENY, the condition is taken to hold: left out.
			continue
		}
		out.rule.Clauses = append(out.rule.Clauses, &security.Clause{Matches: []*security.Match{m}})
	}
	return out
}

// translateSource maps one source. A field whose values cannot be
// understood is reported in invalid; in an ALLOW the source then matches
// nothing (m is nil), in a DENY the field is left out.
func translateSource(s *secapi.Source, deny bool, ns string) (m *security.Match, l7, invalid []string) {
	m = &security.Match{}
	if s == nil {
		return m, nil, nil
	}
	if len(s.GetRequestPrincipals()) > 0 {
		l7 = append(l7, "requestPrincipals")
	}
	if len(s.GetNotRequestPrincipals()) > 0 {
		l7 = append(l7, "notRequestPrincipals")
	}
	m.Principals = stringMatches(s.GetPrincipals())
	m.NotPrincipals = stringMatches(s.GetNotPrincipals())
	m.Namespaces = stringMatches(s.GetNamespaces())
	m.NotNamespaces = stringMatches(s.GetNotNamespaces())
	for _, td := range s.GetTrustDomains() {
		m.Principals = append(m.Principals, &security.StringMatch{MatchType: &security.StringMatch_Prefix{Prefix: td + "/"}})
	}
	for _, td := range s.GetNotTrustDomains() {
		m.NotPrincipals = append(m.NotPrincipals, &security.StringMatch{MatchType: &security.StringMatch_Prefix{Prefix: td + "/"}})
	}
	var errs []error
	check := func(field string, err error) bool {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", field, err))
			return false
		}
		return true
	}
	if sas, err := serviceAccountMatches(s.GetServiceAccounts(), ns); check("serviceAccounts", err) {
		m.ServiceAccounts = sas
	}
	if sas, err := serviceAccountMatches(s.GetNotServiceAccounts(), ns); check("notServiceAccounts", err) {
		m.NotServiceAccounts = sas
	}
	// Without a proxy in front, the remote address is the source address.
	for _, blocks := range []struct {
		field string
		in    []string
		out   *[]*security.Address
	}{
		{"ipBlocks", s.GetIpBlocks(), &m.SourceIps},
		{"remoteIpBlocks", s.GetRemoteIpBlocks(), &m.SourceIps},
		{"notIpBlocks", s.GetNotIpBlocks(), &m.NotSourceIps},
		{"notRemoteIpBlocks", s.GetNotRemoteIpBlocks(), &m.NotSourceIps},
	} {
		if a, err := parseCIDRs(blocks.in); check(blocks.field, err) {
			*blocks.out = append(*blocks.out, a...)
		}
	}
	for _, err := range errs {
		invalid = append(invalid, err.Error())
	}
	if len(errs) > 0 && !deny {
		return nil, l7, invalid
	}
	return m, l7, invalid
}

func operationL7(o *secapi.Operation) []string {
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
	return l7
}

// translateOperation maps one operation's L4 part, as translateSource.
func translateOperation(o *secapi.Operation, deny bool) (*security.Match, []string) {
	m := &security.Match{}
	if o == nil {
		return m, nil
	}
	var invalid []string
	for _, p := range []struct {
		field string
		in    []string
		out   *[]uint32
	}{
		{"ports", o.GetPorts(), &m.DestinationPorts},
		{"notPorts", o.GetNotPorts(), &m.NotDestinationPorts},
	} {
		v, err := parsePorts(p.in)
		if err != nil {
			invalid = append(invalid, fmt.Sprintf("%s: %v", p.field, err))
			continue
		}
		*p.out = v
	}
	if len(invalid) > 0 && !deny {
		return nil, invalid
	}
	return m, invalid
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

// serviceAccountMatches maps Istio's service account forms,
// "namespace/name" or a bare "name" in the policy's namespace ns. No
// wildcard is allowed (Istio's API says so): a "*" would otherwise be
// taken literally and match no one.
func serviceAccountMatches(in []string, ns string) ([]*security.ServiceAccountMatch, error) {
	var out []*security.ServiceAccountMatch
	for _, sa := range in {
		namespace, name, qualified := strings.Cut(sa, "/")
		if !qualified {
			namespace, name = ns, sa
		}
		if namespace == "" || name == "" || strings.Contains(name, "/") || strings.Contains(sa, "*") {
			return nil, fmt.Errorf("service account %q: want namespace/name or name, without wildcards", sa)
		}
		out = append(out, &security.ServiceAccountMatch{Namespace: namespace, ServiceAccount: name})
	}
	return out, nil
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
