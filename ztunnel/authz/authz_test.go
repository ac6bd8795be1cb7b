package authz

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

func policy(action config.Action, matches ...config.Match) *config.Authorization {
	return &config.Authorization{
		Name: "p-" + string(action), Namespace: "shop", Scope: config.ScopeNamespace, Action: action,
		Rules: []config.Rule{{Clauses: []config.Clause{{Matches: matches}}}},
	}
}

func TestEvaluate(t *testing.T) {
	alice := identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "alice"}
	eve := identity.Identity{TrustDomain: "cluster.local", Namespace: "other", ServiceAccount: "eve"}
	conn := func(id identity.Identity, port uint16) Conn {
		return Conn{Source: id, SourceIP: netip.MustParseAddr("10.0.0.1"), Destination: netip.AddrPortFrom(netip.MustParseAddr("10.0.1.1"), port)}
	}
	principal := func(s string) []config.StringMatch { return []config.StringMatch{{Exact: s}} }
	allowAlice := policy(config.Allow, config.Match{Principals: principal("cluster.local/ns/shop/sa/alice")})
	denyOther := policy(config.Deny, config.Match{Namespaces: []config.StringMatch{{Exact: "other"}}})
	denyPort := policy(config.Deny, config.Match{DestinationPorts: []uint32{22}})
	allowNothing := &config.Authorization{Name: "allow-nothing", Namespace: "shop", Scope: config.ScopeNamespace, Action: config.Allow}
	allowAll := &config.Authorization{Name: "allow-all", Namespace: "shop", Scope: config.ScopeNamespace, Action: config.Allow, Rules: []config.Rule{{}}}
	allowNet := policy(config.Allow, config.Match{SourceIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}, NotDestinationPorts: []uint32{9}})
	allowPrefix := policy(config.Allow, config.Match{Principals: []config.StringMatch{{Suffix: "/sa/alice"}}}, config.Match{Namespaces: []config.StringMatch{{Prefix: "oth"}}})
	strict := config.StrictPolicy("shop", config.ScopeNamespace)
	twoClauses := &config.Authorization{Name: "and", Namespace: "shop", Scope: config.ScopeNamespace, Action: config.Allow, Rules: []config.Rule{{Clauses: []config.Clause{
		{Matches: []config.Match{{Namespaces: []config.StringMatch{{Exact: "shop"}}}}},
		{Matches: []config.Match{{DestinationPorts: []uint32{80}}}},
	}}}}

	tests := []struct {
		name     string
		policies []*config.Authorization
		conn     Conn
		allowed  bool
	}{
		{"no policies allows", nil, conn(eve, 80), true},
		{"only deny, not matching, allows", []*config.Authorization{denyOther}, conn(alice, 80), true},
		{"deny matches", []*config.Authorization{denyOther}, conn(eve, 80), false},
		{"allow matches", []*config.Authorization{allowAlice}, conn(alice, 80), true},
		{"allow exists, no match", []*config.Authorization{allowAlice}, conn(eve, 80), false},
		{"deny wins over allow", []*config.Authorization{allowAlice, denyPort}, conn(alice, 22), false},
		{"allow with no rules allows nothing", []*config.Authorization{allowNothing}, conn(alice, 80), false},
		{"allow with an empty rule allows all", []*config.Authorization{allowAll}, conn(eve, 80), true},
		{"source ip block", []*config.Authorization{allowNet}, conn(eve, 80), true},
		{"not destination port", []*config.Authorization{allowNet}, conn(eve, 9), false},
		{"suffix match", []*config.Authorization{allowPrefix}, conn(alice, 80), true},
		{"prefix match in second match", []*config.Authorization{allowPrefix}, conn(eve, 80), true},
		{"strict denies plain text", []*config.Authorization{strict}, conn(identity.Identity{}, 80), false},
		{"strict allows mtls", []*config.Authorization{strict}, conn(alice, 80), true},
		{"clauses are anded: both", []*config.Authorization{twoClauses}, conn(alice, 80), true},
		{"clauses are anded: one", []*config.Authorization{twoClauses}, conn(alice, 81), false},
		{"unknown action denies", []*config.Authorization{{Name: "x", Namespace: "shop", Action: "AUDIT"}}, conn(alice, 80), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Evaluate(tt.policies, tt.conn)
			if tt.allowed && err != nil {
				t.Errorf("got %v, want allowed", err)
			}
			if !tt.allowed && !errors.Is(err, ErrDenied) {
				t.Errorf("got %v, want ErrDenied", err)
			}
		})
	}
}

// TestDryRun: a dry-run policy is never enforced, but DryRun tells what
// it would have decided.
func TestDryRun(t *testing.T) {
	eve := Conn{Source: identity.Identity{TrustDomain: "cluster.local", Namespace: "other", ServiceAccount: "eve"},
		SourceIP: netip.MustParseAddr("10.0.0.1"), Destination: netip.MustParseAddrPort("10.0.1.1:80")}
	deny := policy(config.Deny, config.Match{Namespaces: []config.StringMatch{{Exact: "other"}}})
	deny.DryRun = true
	allowNothing := &config.Authorization{Name: "allow-nothing", Namespace: "shop", Scope: config.ScopeNamespace, Action: config.Allow, DryRun: true}
	for _, p := range []*config.Authorization{deny, allowNothing} {
		policies := []*config.Authorization{p}
		if err := Evaluate(policies, eve); err != nil {
			t.Errorf("%s: Evaluate: got %v, want allowed (dry run)", p.Key(), err)
		}
		verdict, any := DryRun(policies, eve)
		if !any || !errors.Is(verdict, ErrDenied) {
			t.Errorf("%s: DryRun: got %v, %t; want a denial, true", p.Key(), verdict, any)
		}
		if p.DryRun != true {
			t.Errorf("%s: DryRun changed the policy", p.Key())
		}
	}
	if _, any := DryRun([]*config.Authorization{policy(config.Deny)}, eve); any {
		t.Error("DryRun without dry-run policies: got any true, want false")
	}
}
