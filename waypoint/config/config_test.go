package config

import (
	"net/netip"
	"strings"
	"testing"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// req is a Request for matcher tests.
type req struct {
	headers map[string]string
	path    string
	fs      map[string]string
	dst     netip.AddrPort
	peer    string
}

func (r *req) Header(n string) (string, bool) {
	if n == ":path" {
		return r.path, true
	}
	v, ok := r.headers[n]
	return v, ok
}
func (r *req) Path() string { return r.path }
func (r *req) Query() map[string][]string {
	return nil
}
func (r *req) Destination() netip.AddrPort         { return r.dst }
func (r *req) Source() netip.AddrPort              { return netip.MustParseAddrPort("10.0.0.1:1234") }
func (r *req) FilterState(k string) (string, bool) { v, ok := r.fs[k]; return v, ok }
func (r *req) DynamicMetadata(ns, k string) (string, bool) {
	switch {
	case ns == "envoy.filters.listener.original_dst" && k == "local":
		return "10.0.0.9:8080", true
	case ns == "istio" && k == "double_hbone.hbone_target_address":
		return "svc.ns.svc.cluster.local:80", true
	}
	return "", false
}
func (r *req) PeerPrincipal() (string, bool) { return r.peer, r.peer != "" }
func (r *req) LocalPrincipal() (string, bool) {
	return "spiffe://cluster.local/ns/shop/sa/waypoint", true
}

func TestHeaderMatch(t *testing.T) {
	r := &req{headers: map[string]string{"x-a": "Value", ":method": "GET"}}
	exact := func(s string, ic bool) *matcherv3.StringMatcher {
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}, IgnoreCase: ic}
	}
	for _, tc := range []struct {
		name string
		m    *route.HeaderMatcher
		want bool
	}{
		{"exact", &route.HeaderMatcher{Name: "x-a", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: exact("Value", false)}}, true},
		{"case differs", &route.HeaderMatcher{Name: "x-a", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: exact("value", false)}}, false},
		{"ignore case", &route.HeaderMatcher{Name: "x-a", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: exact("value", true)}}, true},
		{"present", &route.HeaderMatcher{Name: "X-A", HeaderMatchSpecifier: &route.HeaderMatcher_PresentMatch{PresentMatch: true}}, true},
		{"absent", &route.HeaderMatcher{Name: "x-b", HeaderMatchSpecifier: &route.HeaderMatcher_PresentMatch{PresentMatch: false}}, true},
		{"inverted", &route.HeaderMatcher{Name: "x-a", InvertMatch: true, HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: exact("Value", false)}}, false},
		{"regex whole value", &route.HeaderMatcher{Name: "x-a", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "Val"}}}}}, false},
		{"method", &route.HeaderMatcher{Name: ":method", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: exact("GET", false)}}, true},
	} {
		m, err := compileHeader(tc.m)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := m(r); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestRBACSemantics(t *testing.T) {
	any := []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}}
	principal := func(p string) []*rbacv3.Principal {
		return []*rbacv3.Principal{{Identifier: &rbacv3.Principal_FilterState{FilterState: &matcherv3.FilterStateMatcher{
			Key: "io.istio.peer_principal", Matcher: &matcherv3.FilterStateMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: p}}}}}}}
	}
	client := &req{fs: map[string]string{"io.istio.peer_principal": "spiffe://cluster.local/ns/shop/sa/client"}}
	for _, tc := range []struct {
		name  string
		rules *rbacv3.RBAC
		want  bool
	}{
		{"no rules allow all", nil, true},
		{"allow matching", &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW, Policies: map[string]*rbacv3.Policy{"p": {Permissions: any, Principals: principal("spiffe://cluster.local/ns/shop/sa/client")}}}, true},
		{"allow not matching", &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW, Policies: map[string]*rbacv3.Policy{"p": {Permissions: any, Principals: principal("spiffe://cluster.local/ns/shop/sa/other")}}}, false},
		{"allow without policies denies", &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW}, false},
		{"deny matching", &rbacv3.RBAC{Action: rbacv3.RBAC_DENY, Policies: map[string]*rbacv3.Policy{"p": {Permissions: any, Principals: principal("spiffe://cluster.local/ns/shop/sa/client")}}}, false},
		{"deny without policies allows", &rbacv3.RBAC{Action: rbacv3.RBAC_DENY}, true},
		{"log never denies", &rbacv3.RBAC{Action: rbacv3.RBAC_LOG, Policies: map[string]*rbacv3.Policy{"p": {Permissions: any, Principals: principal("spiffe://cluster.local/ns/shop/sa/client")}}}, true},
		{"uncompilable rule fails closed", &rbacv3.RBAC{Action: rbacv3.RBAC_DENY, Policies: map[string]*rbacv3.Policy{"p": {Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Metadata{}}}, Principals: principal("x")}}}, false},
	} {
		got, _ := compileRBACRules(tc.rules, true).Allowed(client)
		if got != tc.want {
			t.Errorf("%s: allowed %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestFormat(t *testing.T) {
	r := &req{headers: map[string]string{":authority": "10.0.0.2:80"}, peer: "spiffe://cluster.local/ns/shop/sa/client", fs: map[string]string{"k": "v"}, dst: netip.MustParseAddrPort("10.0.0.5:8080")}
	for in, want := range map[string]string{
		"%REQ(:AUTHORITY)%":                                               "10.0.0.2:80",
		"%DOWNSTREAM_PEER_URI_SAN%":                                       "spiffe://cluster.local/ns/shop/sa/client",
		"%DOWNSTREAM_LOCAL_ADDRESS%":                                      "10.0.0.5:8080",
		"%DOWNSTREAM_REMOTE_ADDRESS%":                                     "10.0.0.1:1234",
		"%FILTER_STATE(k:PLAIN)%":                                         "v",
		"%DYNAMIC_METADATA(envoy.filters.listener.original_dst:local)%":   "10.0.0.9:8080",
		"[%DYNAMIC_METADATA(envoy.filters.listener.original_dst:other)%]": "[-]",
		"%DYNAMIC_METADATA(istio:double_hbone:hbone_target_address)%":     "svc.ns.svc.cluster.local:80",
		"a-%REQ(x-missing)%-b %% done":                                    "a---b % done",
	} {
		f, err := ParseFormat(in)
		if err != nil {
			t.Fatalf("parse %q: %v", in, err)
		}
		if got, _ := f.Eval(r); got != want {
			t.Errorf("%q: got %q, want %q", in, got, want)
		}
	}
	for _, bad := range []string{"%START_TIME%", "%REQ(x", "%UPSTREAM_HOST%", "%DYNAMIC_METADATA(ns)%", "%DYNAMIC_METADATA(ns::b)%"} {
		if _, err := ParseFormat(bad); err == nil {
			t.Errorf("parse %q: got no error, want the operator refused", bad)
		}
	}
}

func TestMatchTree(t *testing.T) {
	n := &MatchNode{Input: InputDestinationIP, IP: []IPRange{
		{Prefix: netip.MustParsePrefix("10.0.0.5/32"), OnMatch: &MatchNode{Input: InputDestinationPort, Exact: map[string]*MatchNode{"80": {Action: "http-80"}}}},
		{Prefix: netip.MustParsePrefix("10.0.0.0/24"), OnMatch: &MatchNode{Input: InputApplicationProtocol, Exact: map[string]*MatchNode{"'http/1.1'": {Action: "direct-http"}}, NoMatch: &MatchNode{Action: "direct-tcp"}}},
	}, NoMatch: &MatchNode{Action: "fallback"}}
	for _, tc := range []struct {
		ip, port, proto string
		want            string
	}{
		{"10.0.0.5", "80", "", "http-80"},
		// Longest prefix fails on the port: the shorter one applies.
		{"10.0.0.5", "81", "'http/1.1'", "direct-http"},
		{"10.0.0.7", "81", "", "direct-tcp"},
		{"10.0.1.7", "81", "", "fallback"},
	} {
		in := inputsFunc(func(k Input, _ string) (string, bool) {
			switch k {
			case InputDestinationIP:
				return tc.ip, true
			case InputDestinationPort:
				return tc.port, true
			case InputApplicationProtocol:
				return tc.proto, tc.proto != ""
			}
			return "", false
		})
		if got := n.Match(in); got != tc.want {
			t.Errorf("%s:%s %s: got chain %q, want %q", tc.ip, tc.port, tc.proto, got, tc.want)
		}
	}
}

type inputsFunc func(Input, string) (string, bool)

func (f inputsFunc) Input(k Input, key string) (string, bool) { return f(k, key) }

func TestVirtualHostsAndErrorsName(t *testing.T) {
	// An unsupported route action names its route.
	_, err := buildRoute(&route.Route{Name: "r1", Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
		Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: "c"},
			RequestMirrorPolicies: []*route.RouteAction_RequestMirrorPolicy{{ClusterHeader: "x-mirror"}}}}})
	if err == nil || !strings.Contains(err.Error(), "cluster_header") {
		t.Errorf("mirror by header: got %v, want an error naming cluster_header", err)
	}
}
