package xds

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ambitmesh/ambit/api"
	"github.com/ambitmesh/ambit/api/security"
	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/ztunnel/authz"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

// resource wraps m as a resource of a response, with m's own type URL.
func resource(t testing.TB, name string, m proto.Message) *discovery.Resource {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return &discovery.Resource{Name: name, Version: "v-" + name, Resource: a}
}

func wlAddress(w *workload.Workload) *workload.Address {
	return &workload.Address{Type: &workload.Address_Workload{Workload: w}}
}

func svcAddress(s *workload.Service) *workload.Address {
	return &workload.Address{Type: &workload.Address_Service{Service: s}}
}

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func TestTranslateWorkload(t *testing.T) {
	pb := &workload.Workload{
		Uid:               "Kubernetes//Pod/shop/reviews-1",
		Name:              "reviews-1",
		Namespace:         "shop",
		Addresses:         [][]byte{ip("10.0.0.5"), ip("fd00::5")},
		Network:           "net1",
		TunnelProtocol:    workload.TunnelProtocol_HBONE,
		TrustDomain:       "example.org",
		ServiceAccount:    "reviews",
		Node:              "node-a",
		CanonicalName:     "reviews",
		CanonicalRevision: "v1",
		WorkloadName:      "reviews-deploy",
		Services: map[string]*workload.PortList{
			"shop/reviews.shop.svc.cluster.local": {Ports: []*workload.Port{{ServicePort: 80, TargetPort: 8080}, {ServicePort: 443}}},
			"shop/empty.shop.svc.cluster.local":   nil,
		},
		AuthorizationPolicies: []string{"shop/only-frontend"},
		Status:                workload.WorkloadStatus_UNHEALTHY,
		// Not in the model: carried nowhere, refused nowhere.
		Hostname:     "ignored.example",
		ClusterId:    "Kubernetes",
		WorkloadType: workload.WorkloadType_POD,
		Locality:     &workload.Locality{Region: "r", Zone: "z"},
		Capacity:     wrapperspb.UInt32(3),
		NativeTunnel: true,
	}
	want := &config.Workload{
		UID:               "Kubernetes//Pod/shop/reviews-1",
		Name:              "reviews-1",
		Namespace:         "shop",
		Addresses:         []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("fd00::5")},
		Network:           "net1",
		TunnelProtocol:    config.TunnelHBONE,
		TrustDomain:       "example.org",
		ServiceAccount:    "reviews",
		Node:              "node-a",
		WorkloadName:      "reviews-deploy",
		CanonicalName:     "reviews",
		CanonicalRevision: "v1",
		Services: map[string]config.PortList{
			"shop/reviews.shop.svc.cluster.local": {Ports: []config.Port{{ServicePort: 80, TargetPort: 8080}, {ServicePort: 443}}},
			"shop/empty.shop.svc.cluster.local":   {},
		},
		AuthorizationPolicies: []string{"shop/only-frontend"},
		Status:                config.Unhealthy,
		NativeTunnel:          true,
	}
	it, err := translate(AddressType, resource(t, pb.Uid, wlAddress(pb)))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, it.workload, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("workload (-want +got):\n%s", diff)
	}
	if it.version != "v-"+pb.Uid {
		t.Errorf("version: got %q, want %q", it.version, "v-"+pb.Uid)
	}

	// Enum zero values: NONE and HEALTHY.
	pb = &workload.Workload{Uid: "u", Name: "n", Namespace: "ns", Addresses: [][]byte{ip("10.0.0.6")}}
	it, err = translate(AddressType, resource(t, "u", wlAddress(pb)))
	if err != nil {
		t.Fatal(err)
	}
	if got := [2]string{string(it.workload.TunnelProtocol), string(it.workload.Status)}; got != [2]string{"NONE", "HEALTHY"} {
		t.Errorf("tunnel protocol and status of zero enums: got %v, want [NONE HEALTHY]", got)
	}
}

// Every tunnel protocol is kept: one ztunnel cannot originate makes
// connections to the workload fail, where refusing the resource would
// leave its address unknown, and its traffic plain passthrough.
func TestTranslateTunnelProtocol(t *testing.T) {
	tests := []struct {
		in   workload.TunnelProtocol
		want config.TunnelProtocol
	}{
		{workload.TunnelProtocol_NONE, config.TunnelNone},
		{workload.TunnelProtocol_HBONE, config.TunnelHBONE},
		{workload.TunnelProtocol_LEGACY_ISTIO_MTLS, config.TunnelLegacyIstioMTLS},
		{7, config.TunnelUnknown},
	}
	for _, tt := range tests {
		pb := &workload.Workload{Uid: "u", Name: "n", Namespace: "ns", Addresses: [][]byte{ip("10.0.0.6")}, TunnelProtocol: tt.in}
		it, err := translate(AddressType, resource(t, "u", wlAddress(pb)))
		if err != nil {
			t.Errorf("tunnel_protocol %d: got %v, want it kept as %s", tt.in, err, tt.want)
			continue
		}
		if got := it.workload.TunnelProtocol; got != tt.want {
			t.Errorf("tunnel_protocol %d: got %s, want %s", tt.in, got, tt.want)
		}
		if reachable := tt.want == config.TunnelNone || tt.want == config.TunnelHBONE; it.workload.Reachable() != reachable {
			t.Errorf("tunnel_protocol %d: got Reachable %t, want %t", tt.in, it.workload.Reachable(), reachable)
		}
	}
}

func TestTranslateService(t *testing.T) {
	pb := &workload.Service{
		Name:      "reviews",
		Namespace: "shop",
		Hostname:  "reviews.shop.svc.cluster.local",
		Addresses: []*workload.NetworkAddress{
			{Network: "net1", Address: ip("10.96.0.20")},
			{Address: ip("fd00:96::20")},
			{Address: ip("192.168.0.0"), Length: proto.Uint32(16)},
			{Address: ip("10.96.0.21"), Length: proto.Uint32(32)},
		},
		Ports:      []*workload.Port{{ServicePort: 80, TargetPort: 8080, AppProtocol: workload.AppProtocol_HTTP2}, {ServicePort: 9090}},
		Visibility: workload.Service_NAMESPACE,
		Waypoint:   &workload.GatewayAddress{Destination: &workload.GatewayAddress_Address{Address: &workload.NetworkAddress{Address: ip("10.0.0.50")}}, HboneMtlsPort: 15008},
		// Not in the model.
		SubjectAltNames:    []string{"spiffe://example.org/ns/shop/sa/reviews"},
		Canonical:          true,
		IngressUseWaypoint: true,
		WeightedWaypoints: []*workload.WeightedWaypoint{{
			Destination: &workload.GatewayAddress{Destination: &workload.GatewayAddress_Address{Address: &workload.NetworkAddress{Address: ip("10.0.0.50")}}, HboneMtlsPort: 15008},
			Weight:      1,
		}},
	}
	want := &config.Service{
		Name:      "reviews",
		Namespace: "shop",
		Hostname:  "reviews.shop.svc.cluster.local",
		Addresses: []config.NetworkAddress{
			{Network: "net1", Address: netip.MustParseAddr("10.96.0.20")},
			{Address: netip.MustParseAddr("fd00:96::20")},
			{Address: netip.MustParseAddr("192.168.0.0"), Length: proto.Uint32(16)},
			{Address: netip.MustParseAddr("10.96.0.21"), Length: proto.Uint32(32)},
		},
		Ports:      []config.Port{{ServicePort: 80, TargetPort: 8080}, {ServicePort: 9090}},
		Visibility: config.VisibilityNamespace,
		Waypoint:   &config.GatewayAddress{Address: &config.NetworkAddress{Address: netip.MustParseAddr("10.0.0.50")}, HBONEPort: 15008},
	}
	it, err := translate(AddressType, resource(t, "shop/reviews.shop.svc.cluster.local", svcAddress(pb)))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, it.service, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("service (-want +got):\n%s", diff)
	}
	if got := []bool{want.Addresses[2].IsRange(), want.Addresses[3].IsRange()}; !slices.Equal(got, []bool{true, false}) {
		t.Errorf("IsRange of /16 and /32: got %v, want [true false]", got)
	}

	// The zero visibility: PUBLIC.
	it, err = translate(AddressType, resource(t, "shop/s.shop", svcAddress(&workload.Service{Name: "s", Namespace: "shop", Hostname: "s.shop"})))
	if err != nil {
		t.Fatal(err)
	}
	if it.service.Visibility != config.VisibilityPublic || !it.service.VisibleTo("other") {
		t.Errorf("visibility of the zero enum: got %q (visible to other namespaces: %t), want PUBLIC (true)", it.service.Visibility, it.service.VisibleTo("other"))
	}
}

func TestTranslateWaypoint(t *testing.T) {
	byName := &workload.GatewayAddress{
		Destination:   &workload.GatewayAddress_Hostname{Hostname: &workload.NamespacedHostname{Namespace: "shop", Hostname: "waypoint.shop.svc.cluster.local"}},
		HboneMtlsPort: 15008,
	}
	pb := &workload.Workload{Uid: "u", Name: "n", Namespace: "shop", Addresses: [][]byte{ip("10.0.0.6")}, TunnelProtocol: workload.TunnelProtocol_HBONE, Waypoint: byName}
	it, err := translate(AddressType, resource(t, "u", wlAddress(pb)))
	if err != nil {
		t.Fatal(err)
	}
	want := &config.GatewayAddress{Hostname: "waypoint.shop.svc.cluster.local", Namespace: "shop", HBONEPort: 15008}
	if diff := cmp.Diff(want, it.workload.Waypoint); diff != "" {
		t.Errorf("workload waypoint (-want +got):\n%s", diff)
	}

	// A waypoint that cannot be read fails the resource rather than
	// letting the traffic bound to it go around it.
	bad := map[string]*workload.GatewayAddress{
		"no destination":      {HboneMtlsPort: 15008},
		"hostname without ns": {Destination: &workload.GatewayAddress_Hostname{Hostname: &workload.NamespacedHostname{Hostname: "w"}}},
		"short address":       {Destination: &workload.GatewayAddress_Address{Address: &workload.NetworkAddress{Address: []byte{10, 0}}}},
		"port out of range":   {Destination: &workload.GatewayAddress_Address{Address: &workload.NetworkAddress{Address: ip("10.0.0.50")}}, HboneMtlsPort: 70000},
	}
	for name, g := range bad {
		svc := &workload.Service{Name: "s", Namespace: "shop", Hostname: "s.shop", Waypoint: g}
		if _, err := translate(AddressType, resource(t, "shop/s.shop", svcAddress(svc))); err == nil || !strings.Contains(err.Error(), "waypoint") {
			t.Errorf("%s: got %v, want an error naming the waypoint", name, err)
		}
		w := &workload.Workload{Uid: "u", Name: "n", Namespace: "shop", Addresses: [][]byte{ip("10.0.0.6")}, Waypoint: g}
		if _, err := translate(AddressType, resource(t, "u", wlAddress(w))); err == nil || !strings.Contains(err.Error(), "waypoint") {
			t.Errorf("%s (workload): got %v, want an error naming the waypoint", name, err)
		}
	}
}

func exact(s string) *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: s}}
}

func cidr(s string, n uint32) *security.Address {
	return &security.Address{Address: ip(s), Length: n}
}

func TestTranslateAuthorization(t *testing.T) {
	pb := &security.Authorization{
		Name:      "p",
		Namespace: "shop",
		Scope:     security.Scope_WORKLOAD_SELECTOR,
		Action:    security.Action_DENY,
		Rules: []*security.Rule{
			{Clauses: []*security.Clause{
				{Matches: []*security.Match{
					{
						Namespaces:    []*security.StringMatch{exact("shop"), {MatchType: &security.StringMatch_Prefix{Prefix: "team-"}}},
						NotNamespaces: []*security.StringMatch{{MatchType: &security.StringMatch_Suffix{Suffix: "-test"}}},
						Principals:    []*security.StringMatch{exact("example.org/ns/shop/sa/web")},
						NotPrincipals: []*security.StringMatch{{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}},
					},
					{
						SourceIps:           []*security.Address{cidr("10.0.0.0", 8), cidr("fd00::", 64)},
						NotSourceIps:        []*security.Address{cidr("10.1.2.3", 32)},
						DestinationIps:      []*security.Address{cidr("192.168.0.0", 16)},
						NotDestinationIps:   []*security.Address{cidr("192.168.1.0", 24)},
						DestinationPorts:    []uint32{80, 443},
						NotDestinationPorts: []uint32{8080},
					},
				}},
				{Matches: []*security.Match{{}}},
			}},
			{},
		},
	}
	want := &config.Authorization{
		Name:      "p",
		Namespace: "shop",
		Scope:     config.ScopeWorkloadSelector,
		Action:    config.Deny,
		Rules: []config.Rule{
			{Clauses: []config.Clause{
				{Matches: []config.Match{
					{
						Namespaces:    []config.StringMatch{{Exact: "shop"}, {Prefix: "team-"}},
						NotNamespaces: []config.StringMatch{{Suffix: "-test"}},
						Principals:    []config.StringMatch{{Exact: "example.org/ns/shop/sa/web"}},
						NotPrincipals: []config.StringMatch{{Presence: true}},
					},
					{
						SourceIPs:           []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/64")},
						NotSourceIPs:        []netip.Prefix{netip.MustParsePrefix("10.1.2.3/32")},
						DestinationIPs:      []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")},
						NotDestinationIPs:   []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")},
						DestinationPorts:    []uint32{80, 443},
						NotDestinationPorts: []uint32{8080},
					},
				}},
				{Matches: []config.Match{{}}},
			}},
			{},
		},
	}
	it, err := translate(AuthorizationType, resource(t, "shop/p", pb))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, it.policy, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("policy (-want +got):\n%s", diff)
	}

	enums := []struct {
		scope  security.Scope
		action security.Action
		want   [2]string
	}{
		{security.Scope_GLOBAL, security.Action_ALLOW, [2]string{"GLOBAL", "ALLOW"}},
		{security.Scope_NAMESPACE, security.Action_DENY, [2]string{"NAMESPACE", "DENY"}},
		{security.Scope_WORKLOAD_SELECTOR, security.Action_ALLOW, [2]string{"WORKLOAD_SELECTOR", "ALLOW"}},
	}
	for _, e := range enums {
		it, err := translate(AuthorizationType, resource(t, "shop/p", &security.Authorization{Name: "p", Namespace: "shop", Scope: e.scope, Action: e.action}))
		if err != nil {
			t.Fatal(err)
		}
		if got := [2]string{string(it.policy.Scope), string(it.policy.Action)}; got != e.want {
			t.Errorf("scope %s action %s: got %v, want %v", e.scope, e.action, got, e.want)
		}
	}
}

func TestTranslateRefusals(t *testing.T) {
	okWorkload := func() *workload.Workload {
		return &workload.Workload{Uid: "Kubernetes//Pod/shop/a", Name: "a", Namespace: "shop", Addresses: [][]byte{ip("10.0.0.1")}}
	}
	withWorkload := func(f func(*workload.Workload)) proto.Message {
		w := okWorkload()
		f(w)
		return wlAddress(w)
	}
	tests := []struct {
		name    string
		typeURL string
		res     *discovery.Resource // built from msg when nil
		msg     proto.Message
		want    string
	}{
		{
			name: "5-byte workload address", typeURL: AddressType,
			msg:  withWorkload(func(w *workload.Workload) { w.Addresses = append(w.Addresses, []byte{10, 0, 0, 1, 2}) }),
			want: "workload Kubernetes//Pod/shop/a: address 1: 5 bytes, want 4 (IPv4) or 16 (IPv6)",
		},
		{
			name: "Any of the wrong type", typeURL: AddressType,
			msg:  &security.Authorization{Name: "p", Namespace: "shop"},
			want: `resource of type "type.googleapis.com/istio.security.Authorization" in a response of type type.googleapis.com/istio.workload.Address`,
		},
		{
			name: "no body", typeURL: AddressType,
			res:  &discovery.Resource{Name: "x"},
			want: "no resource body",
		},
		{
			name: "undecodable body", typeURL: AddressType,
			res:  &discovery.Resource{Name: "x", Resource: &anypb.Any{TypeUrl: AddressType, Value: []byte{0x0a, 0x05, 0x01}}},
			want: "decode istio.workload.Address: ",
		},
		{
			name: "address without workload or service", typeURL: AddressType,
			msg:  &workload.Address{},
			want: "address is neither a workload nor a service",
		},
		{
			name: "unknown status", typeURL: AddressType,
			msg:  withWorkload(func(w *workload.Workload) { w.Status = 9 }),
			want: "workload Kubernetes//Pod/shop/a: status 9, want HEALTHY or UNHEALTHY",
		},
		{
			name: "workload service port out of range", typeURL: AddressType,
			msg: withWorkload(func(w *workload.Workload) {
				w.Services = map[string]*workload.PortList{"shop/s.shop": {Ports: []*workload.Port{{ServicePort: 70000, TargetPort: 80}}}}
			}),
			want: "workload Kubernetes//Pod/shop/a: service shop/s.shop: port 0: service port 70000, want 1 to 65535",
		},
		{
			name: "workload without uid", typeURL: AddressType,
			msg:  withWorkload(func(w *workload.Workload) { w.Uid = "" }),
			want: "empty uid",
		},
		{
			name: "workload without addresses", typeURL: AddressType,
			msg:  withWorkload(func(w *workload.Workload) { w.Addresses = nil; w.Hostname = "db.example" }),
			want: "no addresses",
		},
		{
			name: "workload with a bad service account", typeURL: AddressType,
			msg:  withWorkload(func(w *workload.Workload) { w.ServiceAccount = "a/b" }),
			want: `service account "a/b" has a reserved character`,
		},
		{
			name: "service address", typeURL: AddressType,
			msg:  svcAddress(&workload.Service{Name: "s", Namespace: "shop", Hostname: "s.shop", Addresses: []*workload.NetworkAddress{{Address: []byte{1}}}}),
			want: "service shop/s.shop: address 0: 1 bytes, want 4 (IPv4) or 16 (IPv6)",
		},
		{
			name: "service port 0", typeURL: AddressType,
			msg:  svcAddress(&workload.Service{Name: "s", Namespace: "shop", Hostname: "s.shop", Ports: []*workload.Port{{TargetPort: 80}}}),
			want: "service shop/s.shop: port 0: service port 0, want 1 to 65535",
		},
		{
			name: "service target port out of range", typeURL: AddressType,
			msg:  svcAddress(&workload.Service{Name: "s", Namespace: "shop", Hostname: "s.shop", Ports: []*workload.Port{{ServicePort: 80, TargetPort: 65536}}}),
			want: "service shop/s.shop: port 0: target port 65536, want 0 to 65535",
		},
		{
			name: "service prefix length too long", typeURL: AddressType,
			msg:  svcAddress(&workload.Service{Name: "s", Namespace: "shop", Hostname: "s.shop", Addresses: []*workload.NetworkAddress{{Address: ip("fd00::"), Length: proto.Uint32(129)}}}),
			want: "service shop/s.shop: address 0: prefix length 129 longer than the 128 bits of fd00::",
		},
		{
			name: "unknown visibility", typeURL: AddressType,
			msg:  svcAddress(&workload.Service{Name: "s", Namespace: "shop", Hostname: "s.shop", Visibility: 4}),
			want: "service shop/s.shop: visibility 4, want PUBLIC or NAMESPACE",
		},
		{
			name: "service without hostname", typeURL: AddressType,
			msg:  svcAddress(&workload.Service{Name: "s", Namespace: "shop"}),
			want: "want a hostname and a namespace",
		},
		{
			name: "unknown scope", typeURL: AuthorizationType,
			msg:  &security.Authorization{Name: "p", Namespace: "shop", Scope: 5},
			want: "policy shop/p: scope 5, want GLOBAL, NAMESPACE or WORKLOAD_SELECTOR",
		},
		{
			name: "policy without name", typeURL: AuthorizationType,
			msg:  &security.Authorization{Namespace: "shop"},
			want: "want a name and a namespace",
		},
		{
			name: "unknown type", typeURL: "type.googleapis.com/google.protobuf.Struct",
			msg:  &structpb.Struct{},
			want: "unknown type type.googleapis.com/google.protobuf.Struct",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := tc.res
			if res == nil {
				res = resource(t, "r", tc.msg)
			}
			it, err := translate(tc.typeURL, res)
			if err == nil {
				t.Fatalf("translate: got %+v, want error %q", it, tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("translate: got error %q, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestNodeProto(t *testing.T) {
	n := Node{
		NodeName: "node-a", PodName: "ztunnel-x7k", PodNamespace: "istio-system",
		IPs:       []netip.Addr{netip.MustParseAddr("10.0.0.9"), netip.MustParseAddr("fd00::9")},
		ClusterID: "east", Domain: "example.local",
		Metadata: map[string]string{"ISTIO_VERSION": "0.1", "NODE_NAME": "overridden", "DNS_CAPTURE": "true"},
	}
	pb := n.proto()
	if want := "ztunnel~10.0.0.9~ztunnel-x7k.istio-system~istio-system.svc.example.local"; pb.GetId() != want {
		t.Errorf("id: got %q, want %q", pb.GetId(), want)
	}
	got := map[string]string{}
	for k, v := range pb.GetMetadata().GetFields() {
		got[k] = v.GetStringValue()
	}
	want := map[string]string{
		"NAME": "ztunnel-x7k", "NAMESPACE": "istio-system", "INSTANCE_IPS": "10.0.0.9,fd00::9",
		"NODE_NAME": "node-a", "CLUSTER_ID": "east", "ISTIO_VERSION": api.IstioVersion, "DNS_CAPTURE": "true",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("metadata (-want +got):\n%s", diff)
	}

	// Defaults: an unspecified address, Istio's cluster id and domain.
	pb = Node{NodeName: "n", PodName: "p", PodNamespace: "ns"}.proto()
	if want := "ztunnel~0.0.0.0~p.ns~ns.svc.cluster.local"; pb.GetId() != want {
		t.Errorf("id without an address: got %q, want %q", pb.GetId(), want)
	}
	if got := pb.GetMetadata().GetFields()["CLUSTER_ID"].GetStringValue(); got != api.DefaultClusterID {
		t.Errorf("default CLUSTER_ID: got %q, want %q", got, api.DefaultClusterID)
	}
}

// TestTranslatePolicyFailsClosed: what ztunnel cannot understand in a
// policy (a malformed value, a field or extension our API lacks, an
// unknown action) never makes an ALLOW allow more or a DENY deny less.
// The policy is kept (leaving it out would drop a DENY altogether), the
// parts are named for the log, and evaluation fails closed: an ALLOW's
// unreadable match matches nothing, a DENY's unreadable condition holds.
func TestTranslatePolicyFailsClosed(t *testing.T) {
	shop := identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "alice"}
	other := identity.Identity{TrustDomain: "cluster.local", Namespace: "other", ServiceAccount: "eve"}
	conn := func(id identity.Identity) authz.Conn {
		return authz.Conn{Source: id, SourceIP: netip.MustParseAddr("10.0.0.1"), Destination: netip.MustParseAddrPort("10.0.1.1:80")}
	}
	unknownField := func(m *security.Match) *security.Match {
		raw := protowire.AppendTag(nil, 99, protowire.VarintType)
		m.ProtoReflect().SetUnknown(protowire.AppendVarint(raw, 1))
		return m
	}
	// Each bad match also requires namespace "shop", which still counts
	// in a DENY.
	tests := []struct {
		name string
		bad  *security.Match
		want string
	}{
		{"string match with nothing set", &security.Match{Principals: []*security.StringMatch{{}}},
			"principals: match 0: none of exact, prefix, suffix, presence is set"},
		{"empty exact match", &security.Match{NotNamespaces: []*security.StringMatch{exact("x"), exact("")}},
			"not_namespaces: match 1: empty string, want a non-empty one or presence"},
		{"prefix length too long", &security.Match{SourceIps: []*security.Address{cidr("10.0.0.0", 33)}},
			"source_ips: address 0: prefix length 33 longer than the 32 bits of 10.0.0.0"},
		{"3-byte CIDR", &security.Match{NotDestinationIps: []*security.Address{{Address: []byte{10, 0, 0}, Length: 8}}},
			"not_destination_ips: address 0: 3 bytes, want 4 (IPv4) or 16 (IPv6)"},
		{"destination port 0", &security.Match{DestinationPorts: []uint32{0}},
			"destination_ports: port 0, want 1 to 65535"},
		{"not destination port out of range", &security.Match{NotDestinationPorts: []uint32{80, 65536}},
			"not_destination_ports: port 65536, want 1 to 65535"},
		{"service account without namespace", &security.Match{ServiceAccounts: []*security.ServiceAccountMatch{{ServiceAccount: "alice"}}},
			`service_accounts: match 0: want a namespace and a service account, got ""/"alice"`},
		{"empty not service account", &security.Match{NotServiceAccounts: []*security.ServiceAccountMatch{{}}},
			`not_service_accounts: match 0: want a namespace and a service account, got ""/""`},
		{"a field our API lacks", unknownField(&security.Match{}), "unknown fields [99]"},
		{"an extension", &security.Match{Extensions: []*workload.Extension{{Name: "ambit.io/future"}}}, `extension "ambit.io/future"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, action := range []security.Action{security.Action_ALLOW, security.Action_DENY} {
				bad := proto.Clone(tc.bad).(*security.Match)
				bad.Namespaces = append(bad.Namespaces, exact("shop"))
				pb := &security.Authorization{Name: "p", Namespace: "shop", Scope: security.Scope_NAMESPACE, Action: action,
					Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{bad}}}}}}
				it, err := translate(AuthorizationType, resource(t, "shop/p", pb))
				if err != nil {
					t.Fatalf("%s: translate: got error %v, want the policy kept", action, err)
				}
				nu := strings.Join(it.policy.NotUnderstood(), "; ")
				if !strings.Contains(nu, "rule 0 clause 0 match 0: "+tc.want) {
					t.Errorf("%s: not understood: got %q, want it to contain %q", action, nu, tc.want)
				}
				policies := []*config.Authorization{it.policy}
				shopErr, otherErr := authz.Evaluate(policies, conn(shop)), authz.Evaluate(policies, conn(other))
				switch action {
				case security.Action_ALLOW:
					if shopErr == nil || otherErr == nil {
						t.Errorf("ALLOW: got shop allowed %t, other allowed %t; want both denied", shopErr == nil, otherErr == nil)
					}
				case security.Action_DENY:
					if shopErr == nil {
						t.Error("DENY: got shop allowed, want denied (the condition not understood holds)")
					}
					if otherErr != nil {
						t.Errorf("DENY: got other denied (%v), want allowed (the namespace condition still counts)", otherErr)
					}
				}
			}
		})
	}

	// Not understood at the level of the whole policy: an ALLOW allows
	// nothing, a DENY denies everything in its scope.
	whole := []struct {
		name string
		pb   *security.Authorization
		want string
	}{
		{"unknown action", &security.Authorization{Action: 3}, "action 3, want ALLOW or DENY"},
		{"policy extension", &security.Authorization{Extensions: []*workload.Extension{{Name: "x"}}}, `extension "x"`},
		{"unknown field of a rule", &security.Authorization{Rules: []*security.Rule{func() *security.Rule {
			r := &security.Rule{}
			r.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 7, protowire.VarintType), 1))
			return r
		}()}}, "rule 0: unknown fields [7]"},
	}
	for _, tc := range whole {
		for _, action := range []security.Action{security.Action_ALLOW, security.Action_DENY} {
			pb := proto.Clone(tc.pb).(*security.Authorization)
			pb.Name, pb.Namespace, pb.Scope = "p", "shop", security.Scope_NAMESPACE
			if pb.Action != 3 {
				pb.Action = action
			}
			// An empty rule would allow (or deny) everything as written.
			pb.Rules = append(pb.Rules, &security.Rule{})
			it, err := translate(AuthorizationType, resource(t, "shop/p", pb))
			if err != nil {
				t.Fatalf("%s %s: translate: got error %v, want the policy kept", tc.name, action, err)
			}
			if got := strings.Join(it.policy.NotUnderstood(), "; "); !strings.Contains(got, tc.want) {
				t.Errorf("%s %s: not understood: got %q, want it to contain %q", tc.name, action, got, tc.want)
			}
			if err := authz.Evaluate([]*config.Authorization{it.policy}, conn(shop)); err == nil {
				t.Errorf("%s %s: got allowed, want denied", tc.name, pb.Action)
			}
		}
	}
}

// TestServiceAccounts: Istio's istiod sends AuthorizationPolicy
// source.serviceAccounts as Match fields 11 and 12. Dropping them left an
// empty match that matched everything: an ALLOW for frontend let every
// client in, plain text included, and a DENY of everyone but frontend
// denied frontend too.
func TestServiceAccounts(t *testing.T) {
	frontend := identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "frontend"}
	otherTD := identity.Identity{TrustDomain: "example.org", Namespace: "shop", ServiceAccount: "frontend"}
	backend := identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "backend"}
	elsewhere := identity.Identity{TrustDomain: "cluster.local", Namespace: "other", ServiceAccount: "frontend"}
	plain := identity.Identity{}
	sa := []*security.ServiceAccountMatch{{Namespace: "shop", ServiceAccount: "frontend"}}
	allow := &security.Authorization{Name: "allow", Namespace: "shop", Scope: security.Scope_NAMESPACE, Action: security.Action_ALLOW,
		Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{{ServiceAccounts: sa}}}}}}}
	deny := &security.Authorization{Name: "deny", Namespace: "shop", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY,
		Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{{NotServiceAccounts: sa}}}}}}}
	for _, tc := range []struct {
		policy *security.Authorization
		id     identity.Identity
		want   bool
	}{
		{allow, frontend, true},
		{allow, otherTD, true},
		{allow, backend, false},
		{allow, elsewhere, false},
		{allow, plain, false},
		{deny, frontend, true},
		{deny, backend, false},
		{deny, elsewhere, false},
		{deny, plain, false},
	} {
		it, err := translate(AuthorizationType, resource(t, "shop/p", tc.policy))
		if err != nil {
			t.Fatal(err)
		}
		c := authz.Conn{Source: tc.id, SourceIP: netip.MustParseAddr("10.0.0.1"), Destination: netip.MustParseAddrPort("10.0.1.1:80")}
		err = authz.Evaluate([]*config.Authorization{it.policy}, c)
		if got := err == nil; got != tc.want {
			t.Errorf("%s from %q: got allowed %t (%v), want %t", tc.policy.GetName(), tc.id, got, err, tc.want)
		}
	}
}

func TestTranslateNetworkMode(t *testing.T) {
	for mode, want := range map[workload.NetworkMode]config.NetworkMode{
		workload.NetworkMode_STANDARD:     "",
		workload.NetworkMode_HOST_NETWORK: config.NetworkHost,
	} {
		w := &workload.Workload{Uid: "Kubernetes//Pod/kube-system/a", Name: "a", Namespace: "kube-system", Addresses: [][]byte{ip("10.0.0.1")}, NetworkMode: mode}
		it, err := translate(AddressType, resource(t, "x", wlAddress(w)))
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		if it.workload.NetworkMode != want {
			t.Errorf("%s: got network mode %q, want %q", mode, it.workload.NetworkMode, want)
		}
	}
	w := &workload.Workload{Uid: "u", Name: "a", Namespace: "ns", Addresses: [][]byte{ip("10.0.0.1")}, NetworkMode: 9}
	if _, err := translate(AddressType, resource(t, "x", wlAddress(w))); err == nil || !strings.Contains(err.Error(), "network_mode 9, want STANDARD or HOST_NETWORK") {
		t.Errorf("unknown network mode: got %v, want a refusal naming it", err)
	}
}
