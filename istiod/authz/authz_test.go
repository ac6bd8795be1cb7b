package authz

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	secapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambitmesh/ambit/api/security"
)

var cfg = Config{RootNamespace: "istio-system"}

func ap(ns, name string, spec *secapi.AuthorizationPolicy) *securityv1.AuthorizationPolicy {
	p := &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	p.Spec.Selector = spec.Selector
	p.Spec.Action = spec.Action
	p.Spec.Rules = spec.Rules
	p.Spec.TargetRefs = spec.TargetRefs
	return p
}

func exact(s string) *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: s}}
}

func presence() *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Presence{Presence: emptyValue()}}
}

func cidr(s string) *security.Address {
	p := netip.MustParsePrefix(s)
	return &security.Address{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())}
}

func one(matches ...*security.Match) *security.Clause { return &security.Clause{Matches: matches} }

func from(src ...*secapi.Source) []*secapi.Rule_From {
	var out []*secapi.Rule_From
	for _, s := range src {
		out = append(out, &secapi.Rule_From{Source: s})
	}
	return out
}

func TestAuthorizationPolicy(t *testing.T) {
	sel := &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "web"}}
	tests := []struct {
		name       string
		policy     *securityv1.AuthorizationPolicy
		want       *security.Authorization // nil: not translated
		wantStatus string                  // substring; "" wants none
	}{
		{
			name: "namespace allow from principals and namespaces",
			policy: ap("shop", "p", &secapi.AuthorizationPolicy{Rules: []*secapi.Rule{{
				From: from(&secapi.Source{Principals: []string{"cluster.local/ns/a/sa/b", "*"}, NotNamespaces: []string{"dev*"}}),
			}}}),
			want: &security.Authorization{Name: "p", Namespace: "shop", Scope: security.Scope_NAMESPACE, Rules: []*security.Rule{{Clauses: []*security.Clause{
				one(&security.Match{
					Principals:    []*security.StringMatch{exact("cluster.local/ns/a/sa/b"), presence()},
					NotNamespaces: []*security.StringMatch{{MatchType: &security.StringMatch_Prefix{Prefix: "dev"}}},
				}),
			}}}},
		},
		{
			name: "root namespace is global",
			policy: ap("istio-system", "deny-all", &secapi.AuthorizationPolicy{Action: secapi.AuthorizationPolicy_DENY, Rules: []*secapi.Rule{{
				To: []*secapi.Rule_To{{Operation: &secapi.Operation{Ports: []string{"22"}, NotPorts: []string{"23"}}}},
			}}}),
			want: &security.Authorization{Name: "deny-all", Namespace: "istio-system", Scope: security.Scope_GLOBAL, Action: security.Action_DENY, Rules: []*security.Rule{{Clauses: []*security.Clause{
				one(&security.Match{DestinationPorts: []uint32{22}, NotDestinationPorts: []uint32{23}}),
			}}}},
		},
		{
			name: "selector, ip blocks, conditions",
			policy: ap("shop", "p", &secapi.AuthorizationPolicy{Selector: sel, Rules: []*secapi.Rule{{
				From: from(&secapi.Source{IpBlocks: []string{"10.0.0.0/8"}, NotRemoteIpBlocks: []string{"10.1.2.3"}}, &secapi.Source{Namespaces: []string{"x"}}),
				When: []*secapi.Condition{{Key: "destination.ip", Values: []string{"10.96.0.0/16"}}},
			}}}),
			want: &security.Authorization{Name: "p", Namespace: "shop", Scope: security.Scope_WORKLOAD_SELECTOR, Rules: []*security.Rule{{Clauses: []*security.Clause{
				one(&security.Match{SourceIps: []*security.Address{cidr("10.0.0.0/8")}, NotSourceIps: []*security.Address{cidr("10.1.2.3/32")}}, &security.Match{Namespaces: []*security.StringMatch{exact("x")}}),
				one(&security.Match{DestinationIps: []*security.Address{cidr("10.96.0.0/16")}}),
			}}}},
		},
		{
			name: "service accounts, qualified and bare (the policy's namespace)",
			policy: ap("shop", "p", &secapi.AuthorizationPolicy{Rules: []*secapi.Rule{{
				From: from(&secapi.Source{ServiceAccounts: []string{"other/frontend", "frontend"}, NotServiceAccounts: []string{"canary"}}),
			}}}),
			want: &security.Authorization{Name: "p", Namespace: "shop", Scope: security.Scope_NAMESPACE, Rules: []*security.Rule{{Clauses: []*security.Clause{
				one(&security.Match{
					ServiceAccounts:    []*security.ServiceAccountMatch{{Namespace: "other", ServiceAccount: "frontend"}, {Namespace: "shop", ServiceAccount: "frontend"}},
					NotServiceAccounts: []*security.ServiceAccountMatch{{Namespace: "shop", ServiceAccount: "canary"}},
				}),
			}}}},
		},
		{
			name:   "allow nothing",
			policy: ap("shop", "p", &secapi.AuthorizationPolicy{}),
			want:   &security.Authorization{Name: "p", Namespace: "shop", Scope: security.Scope_NAMESPACE},
		},
		{
			name:   "allow everything",
			policy: ap("shop", "p", &secapi.AuthorizationPolicy{Rules: []*secapi.Rule{{}}}),
			want:   &security.Authorization{Name: "p", Namespace: "shop", Scope: security.Scope_NAMESPACE, Rules: []*security.Rule{{}}},
		},
		{
			name: "L7 in ALLOW drops the rule: fail closed",
			policy: ap("shop", "p", &secapi.AuthorizationPolicy{Rules: []*secapi.Rule{
				{To: []*secapi.Rule_To{{Operation: &secapi.Operation{Methods: []string{"GET"}}}}},
				{From: from(&secapi.Source{Namespaces: []string{"a"}})},
			}}),
			want: &security.Authorization{Name: "p", Namespace: "shop", Scope: security.Scope_NAMESPACE, Rules: []*security.Rule{{Clauses: []*security.Clause{
				one(&security.Match{Namespaces: []*security.StringMatch{exact("a")}}),
			}}}},
			wantStatus: "rule 0: rule has HTTP attributes, which only a waypoint can enforce (found methods)",
		},
		{
			name: "L7 in DENY keeps the L4 part: fail closed",
			policy: ap("shop", "p", &secapi.AuthorizationPolicy{Action: secapi.AuthorizationPolicy_DENY, Rules: []*secapi.Rule{{
				From: from(&secapi.Source{Namespaces: []string{"a"}, RequestPrincipals: []string{"*"}}),
				When: []*secapi.Condition{{Key: "request.headers[x]", Values: []string{"y"}}},
			}}}),
			want: &security.Authorization{Name: "p", Namespace: "shop", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY, Rules: []*security.Rule{{Clauses: []*security.Clause{
				one(&security.Match{Namespaces: []*security.StringMatch{exact("a")}}),
			}}}},
			wantStatus: "this DENY rule applies to every request its L4 part matches",
		},
		{
			name: "bad ip block in ALLOW: that source matches nothing",
			policy: ap("shop", "p", &secapi.AuthorizationPolicy{Rules: []*secapi.Rule{{
				From: from(&secapi.Source{IpBlocks: []string{"10.0.0.300"}}, &secapi.Source{Namespaces: []string{"a"}}),
			}}}),
			want: &security.Authorization{Name: "p", Namespace: "shop", Scope: security.Scope_NAMESPACE, Rules: []*security.Rule{{Clauses: []*security.Clause{
				one(&security.Match{Namespaces: []*security.StringMatch{exact("a")}}),
			}}}},
			wantStatus: `invalid: rule 0: from 0: ipBlocks: ip block "10.0.0.300": want an IP address or CIDR (in this ALLOW policy`,
		},
		{
			name: "only source unreadable in ALLOW: the rule is left out, allowing nothing",
			policy: ap("shop", "p", &secapi.AuthorizationPolicy{Rules: []*secapi.Rule{{
				From: from(&secapi.Source{ServiceAccounts: []string{"front*"}}),
			}}}),
			want:       &security.Authorization{Name: "p", Namespace: "shop", Scope: security.Scope_NAMESPACE},
			wantStatus: `invalid: rule 0: from 0: serviceAccounts: service account "front*": want namespace/name or name, without wildcards`,
		},
		{
			name: "bad port in ALLOW: the rule is left out",
			policy: ap("shop", "p", &secapi.AuthorizationPolicy{Rules: []*secapi.Rule{{
				To: []*secapi.Rule_To{{Operation: &secapi.Operation{Ports: []string{"http"}}}},
			}}}),
			want:       &security.Authorization{Name: "p", Namespace: "shop", Scope: security.Scope_NAMESPACE},
			wantStatus: `invalid: rule 0: to 0: ports: port "http": want a number from 1 to 65535`,
		},
		{
			name: "bad condition in ALLOW: the rule is left out",
			policy: ap("shop", "p", &secapi.AuthorizationPolicy{Rules: []*secapi.Rule{
				{When: []*secapi.Condition{{Key: "destination.port", Values: []string{"0"}}}},
				{From: from(&secapi.Source{Namespaces: []string{"a"}})},
			}}),
			want: &security.Authorization{Name: "p", Namespace: "shop", Scope: security.Scope_NAMESPACE, Rules: []*security.Rule{{Clauses: []*security.Clause{
				one(&security.Match{Namespaces: []*security.StringMatch{exact("a")}}),
			}}}},
			wantStatus: `invalid: rule 0: when 0: port "0"`,
		},
		{
			name: "bad values in DENY: the field or condition is taken to match",
			policy: ap("shop", "p", &secapi.AuthorizationPolicy{Action: secapi.AuthorizationPolicy_DENY, Rules: []*secapi.Rule{{
				From: from(&secapi.Source{Namespaces: []string{"a"}, NotIpBlocks: []string{"nonsense"}, NotServiceAccounts: []string{"x/y/z"}}),
				To:   []*secapi.Rule_To{{Operation: &secapi.Operation{Ports: []string{"80"}, NotPorts: []string{"99999"}}}},
				When: []*secapi.Condition{{Key: "source.ip", NotValues: []string{"bad"}}},
			}}}),
			want: &security.Authorization{Name: "p", Namespace: "shop", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY, Rules: []*security.Rule{{Clauses: []*security.Clause{
				one(&security.Match{Namespaces: []*security.StringMatch{exact("a")}}),
				one(&security.Match{DestinationPorts: []uint32{80}}),
			}}}},
			wantStatus: "(in this DENY policy each field or condition named is taken to match everything)",
		},
		{
			name:   "CUSTOM: no external authorizer to ask, so what its rules match is denied",
			policy: ap("shop", "p", &secapi.AuthorizationPolicy{Action: secapi.AuthorizationPolicy_CUSTOM, Rules: []*secapi.Rule{{To: []*secapi.Rule_To{{Operation: &secapi.Operation{Ports: []string{"80"}}}}}}}),
			want: &security.Authorization{Name: "p", Namespace: "shop", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY, Rules: []*security.Rule{{Clauses: []*security.Clause{
				one(&security.Match{DestinationPorts: []uint32{80}}),
			}}}},
			wantStatus: "action CUSTOM: ztunnel cannot ask an external authorizer, so it denies every connection the rules match",
		},
		{
			name:       "AUDIT decides nothing",
			policy:     ap("shop", "p", &secapi.AuthorizationPolicy{Action: secapi.AuthorizationPolicy_AUDIT}),
			wantStatus: "action AUDIT",
		},
		{
			name: "dry run",
			policy: func() *securityv1.AuthorizationPolicy {
				p := ap("shop", "p", &secapi.AuthorizationPolicy{Action: secapi.AuthorizationPolicy_DENY})
				p.Annotations = map[string]string{DryRunAnnotation: "true"}
				return p
			}(),
			want: &security.Authorization{Name: "p", Namespace: "shop", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY, DryRun: true},
		},
		{
			name: "unreadable dry-run annotation: enforced",
			policy: func() *securityv1.AuthorizationPolicy {
				p := ap("shop", "p", &secapi.AuthorizationPolicy{Action: secapi.AuthorizationPolicy_DENY})
				p.Annotations = map[string]string{DryRunAnnotation: "maybe"}
				return p
			}(),
			want:       &security.Authorization{Name: "p", Namespace: "shop", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY},
			wantStatus: `invalid: annotation istio.io/dry-run="maybe": want true or false; the policy is enforced`,
		},
		{
			name:   "waypoint-bound policy is not ztunnel's",
			policy: ap("shop", "p", &secapi.AuthorizationPolicy{TargetRefs: []*typeapi.PolicyTargetReference{{Kind: "Gateway", Name: "wp"}}}),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// A valid neighbour policy must survive any bad one.
			other := ap("other", "ok", &secapi.AuthorizationPolicy{})
			tr := Translate([]*securityv1.AuthorizationPolicy{tc.policy, other}, nil, cfg)
			if tr.Authorizations["other/ok"] == nil {
				t.Errorf("neighbour policy other/ok: got none, want it translated")
			}
			got := tr.Authorizations[tc.policy.Namespace+"/"+tc.policy.Name]
			if diff := cmp.Diff(tc.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("Authorization (-want +got):\n%s", diff)
			}
			status := tr.Status[StatusKey(KindAuthorizationPolicy, tc.policy.Namespace, tc.policy.Name)]
			if tc.wantStatus == "" && status != "" || !strings.Contains(status, tc.wantStatus) {
				t.Errorf("status: got %q, want %q", status, tc.wantStatus)
			}
		})
	}
}

func TestForWorkload(t *testing.T) {
	sel := func(l string) *typeapi.WorkloadSelector {
		return &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": l}}
	}
	tr := Translate([]*securityv1.AuthorizationPolicy{
		ap("shop", "web-only", &secapi.AuthorizationPolicy{Selector: sel("web")}),
		ap("istio-system", "mesh-web", &secapi.AuthorizationPolicy{Selector: sel("web")}),
		ap("other", "web-elsewhere", &secapi.AuthorizationPolicy{Selector: sel("web")}),
		ap("shop", "ns-wide", &secapi.AuthorizationPolicy{}),
	}, nil, cfg)
	got := tr.ForWorkload("shop", map[string]string{"app": "web"})
	want := []string{"istio-system/mesh-web", "shop/web-only"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ForWorkload (-want +got):\n%s", diff)
	}
}

func pa(ns, name string, age int, selector map[string]string, mode secapi.PeerAuthentication_MutualTLS_Mode, ports map[uint32]secapi.PeerAuthentication_MutualTLS_Mode) *securityv1.PeerAuthentication {
	p := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{
		Namespace: ns, Name: name, CreationTimestamp: metav1.NewTime(time.Date(2026, 1, 1, 0, age, 0, 0, time.UTC)),
	}}
	if selector != nil {
		p.Spec.Selector = &typeapi.WorkloadSelector{MatchLabels: selector}
	}
	if mode != secapi.PeerAuthentication_MutualTLS_UNSET {
		p.Spec.Mtls = &secapi.PeerAuthentication_MutualTLS{Mode: mode}
	}
	for port, m := range ports {
		if p.Spec.PortLevelMtls == nil {
			p.Spec.PortLevelMtls = map[uint32]*secapi.PeerAuthentication_MutualTLS{}
		}
		p.Spec.PortLevelMtls[port] = &secapi.PeerAuthentication_MutualTLS{Mode: m}
	}
	return p
}

func TestPeerAuthentication(t *testing.T) {
	const (
		strict     = secapi.PeerAuthentication_MutualTLS_STRICT
		permissive = secapi.PeerAuthentication_MutualTLS_PERMISSIVE
		unset      = secapi.PeerAuthentication_MutualTLS_UNSET
	)
	web := map[string]string{"app": "web"}
	deny := func(ns, name string, only, except []uint32) *security.Authorization {
		return strictPolicy(ns, name, only, except)
	}
	tests := []struct {
		name string
		pas  []*securityv1.PeerAuthentication
		// the policy applying to shop/web, nil for none
		want *security.Authorization
	}{
		{"none", nil, nil},
		{"mesh strict", []*securityv1.PeerAuthentication{pa("istio-system", "default", 0, nil, strict, nil)},
			deny("istio-system", StrictPolicyName, nil, nil)},
		{"namespace permissive overrides mesh strict", []*securityv1.PeerAuthentication{
			pa("istio-system", "default", 0, nil, strict, nil), pa("shop", "default", 0, nil, permissive, nil)}, nil},
		{"namespace strict", []*securityv1.PeerAuthentication{pa("shop", "default", 0, nil, strict, nil)},
			deny("istio-system", StrictPolicyName, nil, nil)},
		{"workload permissive overrides namespace strict", []*securityv1.PeerAuthentication{
			pa("shop", "default", 0, nil, strict, nil), pa("shop", "web", 0, web, permissive, nil)}, nil},
		{"workload strict with a permissive port", []*securityv1.PeerAuthentication{
			pa("shop", "web", 0, web, strict, map[uint32]secapi.PeerAuthentication_MutualTLS_Mode{8080: permissive})},
			deny("shop", "converted_peer_authentication_web", nil, []uint32{8080})},
		{"workload inherits strict, one port permissive", []*securityv1.PeerAuthentication{
			pa("istio-system", "default", 0, nil, strict, nil),
			pa("shop", "web", 0, web, unset, map[uint32]secapi.PeerAuthentication_MutualTLS_Mode{9000: permissive, 8080: strict})},
			deny("shop", "converted_peer_authentication_web", nil, []uint32{9000})},
		{"permissive with strict ports", []*securityv1.PeerAuthentication{
			pa("shop", "web", 0, web, permissive, map[uint32]secapi.PeerAuthentication_MutualTLS_Mode{9000: strict, 8080: strict})},
			deny("shop", "converted_peer_authentication_web", []uint32{8080, 9000}, nil)},
		{"oldest workload policy wins", []*securityv1.PeerAuthentication{
			pa("shop", "newer", 2, web, permissive, nil), pa("shop", "older", 1, web, strict, nil)},
			deny("shop", "converted_peer_authentication_older", nil, nil)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := Translate(nil, tc.pas, cfg)
			names := tr.ForWorkload("shop", web)
			var got *security.Authorization
			switch len(names) {
			case 0:
			case 1:
				got = tr.Authorizations[names[0]]
				if got == nil {
					t.Fatalf("workload references %s: got no such Authorization, want one", names[0])
				}
			default:
				t.Fatalf("policies for shop/web: got %v, want at most one", names)
			}
			if diff := cmp.Diff(tc.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("PeerAuthentication for shop/web (-want +got):\n%s", diff)
			}
		})
	}
}
