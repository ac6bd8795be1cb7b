package api_test

import (
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambitmesh/ambit/api"
	"github.com/ambitmesh/ambit/api/security"
	"github.com/ambitmesh/ambit/api/workload"
)

// TestFieldNumbers pins names and numbers to those of Istio's published
// workload.proto and authorization.proto: a change here breaks the wire.
func TestFieldNumbers(t *testing.T) {
	tests := []struct {
		msg    proto.Message
		field  protoreflect.Name
		number protoreflect.FieldNumber
	}{
		{&workload.Address{}, "workload", 1},
		{&workload.Address{}, "service", 2},
		{&workload.Workload{}, "uid", 20},
		{&workload.Workload{}, "name", 1},
		{&workload.Workload{}, "namespace", 2},
		{&workload.Workload{}, "addresses", 3},
		{&workload.Workload{}, "hostname", 21},
		{&workload.Workload{}, "network", 4},
		{&workload.Workload{}, "tunnel_protocol", 5},
		{&workload.Workload{}, "trust_domain", 6},
		{&workload.Workload{}, "service_account", 7},
		{&workload.Workload{}, "waypoint", 8},
		{&workload.Workload{}, "node", 9},
		{&workload.Workload{}, "canonical_name", 10},
		{&workload.Workload{}, "canonical_revision", 11},
		{&workload.Workload{}, "workload_type", 12},
		{&workload.Workload{}, "workload_name", 13},
		{&workload.Workload{}, "authorization_policies", 16},
		{&workload.Workload{}, "status", 17},
		{&workload.Workload{}, "cluster_id", 18},
		{&workload.Workload{}, "network_gateway", 19},
		{&workload.Workload{}, "services", 22},
		{&workload.Workload{}, "capacity", 27},
		{&workload.Service{}, "name", 1},
		{&workload.Service{}, "namespace", 2},
		{&workload.Service{}, "hostname", 3},
		{&workload.Service{}, "addresses", 4},
		{&workload.Service{}, "ports", 5},
		{&workload.Service{}, "waypoint", 7},
		{&workload.Service{}, "canonical", 11},
		{&workload.Service{}, "ingress_use_waypoint", 12},
		{&workload.Service{}, "weighted_waypoints", 13},
		{&workload.Service{}, "visibility", 14},
		{&workload.Port{}, "service_port", 1},
		{&workload.Port{}, "target_port", 2},
		{&workload.Port{}, "app_protocol", 3},
		{&workload.NetworkAddress{}, "network", 1},
		{&workload.NetworkAddress{}, "address", 2},
		{&workload.NetworkAddress{}, "length", 3},
		{&workload.GatewayAddress{}, "hbone_mtls_port", 3},
		{&workload.WeightedWaypoint{}, "destination", 1},
		{&workload.WeightedWaypoint{}, "weight", 2},
		{&security.Authorization{}, "name", 1},
		{&security.Authorization{}, "namespace", 2},
		{&security.Authorization{}, "scope", 3},
		{&security.Authorization{}, "action", 4},
		{&security.Authorization{}, "rules", 5},
		{&security.Rule{}, "clauses", 1},
		{&security.Clause{}, "matches", 2},
		{&security.Match{}, "namespaces", 1},
		{&security.Match{}, "not_principals", 4},
		{&security.Match{}, "source_ips", 5},
		{&security.Match{}, "destination_ports", 9},
		{&security.Match{}, "not_destination_ports", 10},
		{&security.Match{}, "service_accounts", 11},
		{&security.Match{}, "not_service_accounts", 12},
		{&security.Match{}, "extensions", 13},
		{&security.Authorization{}, "dry_run", 6},
		{&security.Authorization{}, "extensions", 7},
		{&security.ServiceAccountMatch{}, "namespace", 1},
		{&security.ServiceAccountMatch{}, "serviceAccount", 2},
		{&security.StringMatch{}, "presence", 4},
	}
	for _, tc := range tests {
		md := tc.msg.ProtoReflect().Descriptor()
		f := md.Fields().ByName(tc.field)
		if f == nil {
			t.Errorf("%s.%s: got no such field, want number %d", md.FullName(), tc.field, tc.number)
			continue
		}
		if f.Number() != tc.number {
			t.Errorf("%s.%s: got number %d, want %d", md.FullName(), tc.field, f.Number(), tc.number)
		}
	}
	names := []struct {
		msg  proto.Message
		want protoreflect.FullName
	}{
		{&workload.Address{}, "istio.workload.Address"},
		{&security.Authorization{}, "istio.security.Authorization"},
	}
	for _, n := range names {
		if got := n.msg.ProtoReflect().Descriptor().FullName(); got != n.want {
			t.Errorf("full name: got %s, want %s", got, n.want)
		}
	}
	enums := []struct {
		got, want protoreflect.EnumNumber
		name      string
	}{
		{workload.TunnelProtocol_HBONE.Number(), 1, "TunnelProtocol.HBONE"},
		{workload.TunnelProtocol_LEGACY_ISTIO_MTLS.Number(), 2, "TunnelProtocol.LEGACY_ISTIO_MTLS"},
		{workload.Service_NAMESPACE.Number(), 1, "Service.Visibility.NAMESPACE"},
		{workload.AppProtocol_HTTP11.Number(), 1, "AppProtocol.HTTP11"},
		{workload.AppProtocol_TLS.Number(), 5, "AppProtocol.TLS"},
		{workload.WorkloadStatus_UNHEALTHY.Number(), 1, "WorkloadStatus.UNHEALTHY"},
		{security.Scope_WORKLOAD_SELECTOR.Number(), 2, "Scope.WORKLOAD_SELECTOR"},
		{security.Action_DENY.Number(), 1, "Action.DENY"},
	}
	for _, e := range enums {
		if e.got != e.want {
			t.Errorf("%s: got %d, want %d", e.name, e.got, e.want)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	ip := netip.MustParseAddr("10.244.1.5").AsSlice()
	cfg, err := anypb.New(&workload.Locality{Region: "r"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		msg  proto.Message
	}{
		{"workload", &workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{
			Uid:            "Kubernetes//Pod/shop/reviews-1",
			Name:           "reviews-1",
			Namespace:      "shop",
			Addresses:      [][]byte{ip},
			TunnelProtocol: workload.TunnelProtocol_HBONE,
			TrustDomain:    "cluster.local",
			ServiceAccount: "reviews",
			Node:           "node1",
			CanonicalName:  "reviews",
			Services: map[string]*workload.PortList{
				"shop/reviews.shop.svc.cluster.local": {Ports: []*workload.Port{{ServicePort: 80, TargetPort: 8080}}},
			},
			Extensions: []*workload.Extension{{Name: "x", Config: cfg}},
		}}}},
		{"service", &workload.Address{Type: &workload.Address_Service{Service: &workload.Service{
			Name:      "reviews",
			Namespace: "shop",
			Hostname:  "reviews.shop.svc.cluster.local",
			Addresses: []*workload.NetworkAddress{
				{Address: netip.MustParseAddr("10.96.0.20").AsSlice()},
				{Address: netip.MustParseAddr("192.168.0.0").AsSlice(), Length: proto.Uint32(16)},
			},
			Ports:              []*workload.Port{{ServicePort: 80, TargetPort: 8080, AppProtocol: workload.AppProtocol_HTTP2}},
			IngressUseWaypoint: true,
			WeightedWaypoints: []*workload.WeightedWaypoint{{
				Destination: &workload.GatewayAddress{
					Destination:   &workload.GatewayAddress_Hostname{Hostname: &workload.NamespacedHostname{Namespace: "shop", Hostname: "waypoint.shop.svc.cluster.local"}},
					HboneMtlsPort: 15008,
				},
				Weight: 90,
			}},
			Visibility: workload.Service_NAMESPACE,
		}}}},
		{"authorization", &security.Authorization{
			Name: "allow-frontend", Namespace: "shop", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY,
			Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{{
				Principals:       []*security.StringMatch{{MatchType: &security.StringMatch_Exact{Exact: "cluster.local/ns/shop/sa/frontend"}}},
				SourceIps:        []*security.Address{{Address: ip, Length: 24}},
				DestinationPorts: []uint32{8080},
			}}}}}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := proto.Marshal(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			got := tc.msg.ProtoReflect().New().Interface()
			if err := proto.Unmarshal(b, got); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.msg, got, protocmp.Transform()); diff != "" {
				t.Errorf("after round trip (-want +got):\n%s", diff)
			}
		})
	}
}

// TestWireBytes checks one encoding by hand: the uid is field 20 of type
// bytes (tag 20<<3|2 = 0xa2 0x01).
func TestWireBytes(t *testing.T) {
	b, err := proto.Marshal(&workload.Workload{Uid: "u"})
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{0xa2, 0x01, 0x01, 'u'}
	if diff := cmp.Diff(want, b); diff != "" {
		t.Errorf("Workload{Uid: \"u\"} encoding (-want +got):\n%s", diff)
	}
}

// TestPrefixLengthPresence: NetworkAddress.length is proto3 optional, so a
// prefix of length 0 (a whole address family) is sent and told apart from
// a single address, which leaves the field out.
func TestPrefixLengthPresence(t *testing.T) {
	host, err := proto.Marshal(&workload.NetworkAddress{})
	if err != nil {
		t.Fatal(err)
	}
	if len(host) != 0 {
		t.Errorf("single address: got % x, want no bytes", host)
	}
	b, err := proto.Marshal(&workload.NetworkAddress{Length: proto.Uint32(0)})
	if err != nil {
		t.Fatal(err)
	}
	// Field 3, varint: tag 3<<3|0 = 0x18, value 0.
	if diff := cmp.Diff([]byte{0x18, 0x00}, b); diff != "" {
		t.Errorf("NetworkAddress{Length: 0} encoding (-want +got):\n%s", diff)
	}
}

// TestIstioVersion: IstioVersion is a release, the one of the istio.io/api
// that go.mod requires; bump them together.
func TestIstioVersion(t *testing.T) {
	if !regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+$`).MatchString(api.IstioVersion) {
		t.Errorf("IstioVersion: got %q, want a release, major.minor.patch", api.IstioVersion)
	}
	mod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	want := "\tistio.io/api v" + api.IstioVersion + "\n"
	if !strings.Contains(string(mod), want) {
		t.Errorf("go.mod: got no %q, want istio.io/api at IstioVersion", strings.TrimSpace(want))
	}
}
