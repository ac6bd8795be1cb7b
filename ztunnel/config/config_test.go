package config

import (
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/ambitmesh/ambit/internal/identity"
)

func TestLoadFile(t *testing.T) {
	store := NewStore()
	if store.Loaded() {
		t.Fatal("Loaded() before any source: got true, want false")
	}
	var seen []uint64
	cancel := store.Subscribe(func(s *Snapshot) { seen = append(seen, s.Version) })
	defer cancel()
	if err := LoadFile(filepath.Join("testdata", "two-nodes.yaml"), store); err != nil {
		t.Fatal(err)
	}
	snap := store.Snapshot()
	if diff := cmp.Diff([]uint64{1}, seen); diff != "" {
		t.Errorf("subscriber versions (-want +got):\n%s", diff)
	}
	server := snap.WorkloadByAddr(netip.MustParseAddr("127.0.20.1"))
	if server == nil || server.UID != "shop/server" {
		t.Fatalf("WorkloadByAddr(127.0.20.1): got %+v, want shop/server", server)
	}
	want := identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "server"}
	if got := server.Identity(); got != want {
		t.Errorf("Identity(): got %s, want %s", got, want)
	}
	svc := snap.ServiceByAddr(netip.MustParseAddr("127.0.30.1"))
	if svc == nil {
		t.Fatal("ServiceByAddr(127.0.30.1): got nil, want the server service")
	}
	eps := snap.Endpoints(svc)
	if len(eps) != 1 || eps[0] != server {
		t.Errorf("Endpoints: got %v, want [shop/server]", eps)
	}
	pols := snap.PoliciesFor(server)
	if len(pols) != 1 || pols[0].Name != "only-client" {
		t.Errorf("PoliciesFor(server): got %v, want [only-client]", pols)
	}
	if got := snap.PoliciesFor(snap.WorkloadByUID("shop/client")); len(got) != 0 {
		t.Errorf("PoliciesFor(client): got %v, want none", got)
	}
	if got := len(snap.LocalWorkloads("node-a")); got != 1 {
		t.Errorf("LocalWorkloads(node-a): got %d, want 1", got)
	}
}

func TestParseStateRefusals(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown field", "workloads: [{uid: a, name: a, namespace: ns, addresses: [10.0.0.1], colour: red}]", "unknown field"},
		{"bad address", "workloads: [{uid: a, name: a, namespace: ns, addresses: [10.0.0.300]}]", "10.0.0.300"},
		{"duplicate uid", "workloads: [{uid: a, name: a, namespace: ns, addresses: [10.0.0.1]}, {uid: a, name: b, namespace: ns, addresses: [10.0.0.2]}]", "duplicate uid"},
		{"no address", "workloads: [{uid: a, name: a, namespace: ns}]", "no addresses"},
		{"tunnel", "workloads: [{uid: a, name: a, namespace: ns, addresses: [10.0.0.1], tunnelProtocol: PROXY}]", "tunnelProtocol"},
		{"visibility", "services: [{name: s, namespace: ns, hostname: s.ns, addresses: [], ports: [], visibility: CLUSTER}]", `visibility "CLUSTER", want PUBLIC or NAMESPACE`},
		{"prefix length", "services: [{name: s, namespace: ns, hostname: s.ns, addresses: [{address: 10.0.0.0, length: 33}], ports: []}]", "prefix length 33 longer than its 32 bits"},
		{"duplicate address", "services: [{name: s, namespace: ns, hostname: s.ns, addresses: [{address: 10.0.0.1}], ports: []}, {name: t, namespace: ns, hostname: t.ns, addresses: [{address: 10.0.0.1, length: 32}], ports: []}]", "already used by service ns/s.ns"},
		{"action", "policies: [{name: p, namespace: ns, scope: GLOBAL, action: AUDIT}]", "action"},
		{"scope", "policies: [{name: p, namespace: ns, scope: CLUSTER, action: ALLOW}]", "scope"},
		{"string match", "policies: [{name: p, namespace: ns, scope: GLOBAL, action: ALLOW, rules: [{clauses: [{matches: [{principals: [{}]}]}]}]}]", "want 1"},
		{"waypoint with hostname and address", "services: [{name: s, namespace: ns, hostname: s.ns, addresses: [], ports: [], waypoint: {hostname: w.ns, namespace: ns, address: {address: 10.0.0.5}}}]", "exactly one of hostname and address"},
		{"waypoint with neither", "workloads: [{uid: a, name: a, namespace: ns, addresses: [10.0.0.1], waypoint: {hbonePort: 15008}}]", "exactly one of hostname and address"},
		{"waypoint hostname without namespace", "workloads: [{uid: a, name: a, namespace: ns, addresses: [10.0.0.1], waypoint: {hostname: w.ns}}]", "want the namespace"},
		{"waypoint range", "services: [{name: s, namespace: ns, hostname: s.ns, addresses: [], ports: [], waypoint: {address: {address: 10.0.0.0, length: 8}}}]", "want one IP address"},
		{"waypoint port", "services: [{name: s, namespace: ns, hostname: s.ns, addresses: [], ports: [], waypoint: {hostname: w.ns, namespace: ns, hbonePort: 70000}}]", "hbonePort 70000"},
		{"not yaml", "workloads: [", "parse config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseState([]byte(tt.yaml))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestReplaceKeepsLastGood(t *testing.T) {
	store := NewStore()
	good := State{Workloads: []*Workload{{UID: "a", Name: "a", Namespace: "n", Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}}}
	if err := store.Replace(good); err != nil {
		t.Fatal(err)
	}
	bad := State{Workloads: []*Workload{{UID: "", Name: "a", Namespace: "n"}}}
	if err := store.Replace(bad); err == nil {
		t.Fatal("Replace(invalid): got nil, want an error")
	}
	if got := len(store.Snapshot().Workloads); got != 1 {
		t.Errorf("workloads after a refused update: got %d, want 1 (last good state)", got)
	}
}

func TestSharedAddress(t *testing.T) {
	addr := netip.MustParseAddr("10.0.0.1")
	w := func(uid string, tp TunnelProtocol, st WorkloadStatus) *Workload {
		return &Workload{UID: uid, Name: uid, Namespace: "ns", Addresses: []netip.Addr{addr}, TunnelProtocol: tp, Status: st}
	}
	tests := []struct {
		name      string
		workloads []*Workload
		want      string
	}{
		{"smaller uid", []*Workload{w("b", "", ""), w("a", "", "")}, "a"},
		{"HBONE first", []*Workload{w("a", TunnelNone, ""), w("z", TunnelHBONE, "")}, "z"},
		{"HBONE before sidecar mTLS", []*Workload{w("a", TunnelLegacyIstioMTLS, ""), w("z", TunnelHBONE, "")}, "z"},
		// An endpoint entry does not make a sidecar's address plain passthrough.
		{"sidecar mTLS before plain text", []*Workload{w("a", TunnelNone, ""), w("z", TunnelLegacyIstioMTLS, Unhealthy)}, "z"},
		{"healthy first", []*Workload{w("a", "", Unhealthy), w("z", "", Healthy)}, "z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := State{Workloads: tt.workloads}
			if err := st.Validate(); err != nil {
				t.Fatalf("Validate: got %v, want a shared address accepted", err)
			}
			for _, order := range [][]*Workload{tt.workloads, {tt.workloads[1], tt.workloads[0]}} {
				snap := newSnapshot(State{Workloads: order}, 1)
				if got := snap.WorkloadByAddr(addr); got == nil || got.UID != tt.want {
					t.Errorf("WorkloadByAddr: got %v, want %s whatever the order", got, tt.want)
				}
			}
		})
	}
}

// A CIDR range of a service (a ServiceEntry's) is not a virtual address,
// and may repeat across services, as Istio sends it for each host of a
// ServiceEntry.
func TestServiceRanges(t *testing.T) {
	st, err := ParseState([]byte(`services:
- {name: a, namespace: ns, hostname: a.example, addresses: [{address: 192.168.0.0, length: 16}, {address: 10.9.0.1}], ports: []}
- {name: b, namespace: ns, hostname: b.example, addresses: [{address: 192.168.0.0, length: 16}], ports: []}
- {name: c, namespace: ns, hostname: c.example, addresses: [{address: 10.9.0.2, length: 32}], ports: []}
`))
	if err != nil {
		t.Fatalf("ParseState: got %v, want the same range in two services accepted", err)
	}
	snap := newSnapshot(st, 1)
	for addr, want := range map[string]string{"192.168.0.0": "", "192.168.1.1": "", "10.9.0.1": "a.example", "10.9.0.2": "c.example"} {
		got := ""
		if s := snap.ServiceByAddr(netip.MustParseAddr(addr)); s != nil {
			got = s.Hostname
		}
		if got != want {
			t.Errorf("ServiceByAddr(%s): got %q, want %q", addr, got, want)
		}
	}
}

func TestWaypoint(t *testing.T) {
	st, err := ParseState([]byte(`workloads:
- {uid: wp1, name: wp1, namespace: ns, serviceAccount: waypoint, addresses: [10.0.0.5], tunnelProtocol: HBONE, services: {ns/waypoint.ns: {ports: []}}}
- {uid: wp2, name: wp2, namespace: ns, serviceAccount: waypoint, addresses: [10.0.0.6], tunnelProtocol: HBONE, status: UNHEALTHY, services: {ns/waypoint.ns: {ports: []}}}
- {uid: plain, name: plain, namespace: ns, addresses: [10.0.0.7], services: {ns/plain.ns: {ports: []}}}
- {uid: app, name: app, namespace: ns, addresses: [10.0.0.8], tunnelProtocol: HBONE, waypoint: {hostname: waypoint.ns, namespace: ns}}
services:
- {name: waypoint, namespace: ns, hostname: waypoint.ns, addresses: [{address: 10.96.0.5}], ports: [{servicePort: 15008}]}
- {name: plain, namespace: ns, hostname: plain.ns, addresses: [], ports: []}
- {name: app, namespace: ns, hostname: app.ns, addresses: [{address: 10.96.0.8}], ports: [{servicePort: 80}], waypoint: {address: {address: 10.96.0.5}, hbonePort: 15009}}
`))
	if err != nil {
		t.Fatal(err)
	}
	snap := newSnapshot(st, 1)
	app := snap.WorkloadByUID("app")
	svc := snap.ServiceByAddr(netip.MustParseAddr("10.96.0.8"))
	if app.Waypoint == nil || svc.Waypoint == nil {
		t.Fatalf("waypoints: got workload %v, service %v, want both", app.Waypoint, svc.Waypoint)
	}
	if got := []uint16{app.Waypoint.Port(), svc.Waypoint.Port()}; got[0] != 15008 || got[1] != 15009 {
		t.Errorf("Port(): got %v, want [15008 15009]", got)
	}
	addr := func(a string) *NetworkAddress { return &NetworkAddress{Address: netip.MustParseAddr(a)} }
	tests := []struct {
		name    string
		g       *GatewayAddress
		want    []string // uids that can carry a connection
		members int
		err     error
	}{
		{"by hostname", app.Waypoint, []string{"wp1"}, 2, nil},
		{"by service address", svc.Waypoint, []string{"wp1"}, 2, nil},
		{"by workload address", &GatewayAddress{Address: addr("10.0.0.5")}, []string{"wp1"}, 1, nil},
		{"unhealthy workload", &GatewayAddress{Address: addr("10.0.0.6")}, nil, 1, ErrWaypointNoEndpoint},
		// A waypoint's pods are not captured; istiod may send them so.
		{"workload outside the mesh", &GatewayAddress{Hostname: "plain.ns", Namespace: "ns"}, []string{"plain"}, 1, nil},
		{"service without endpoints", &GatewayAddress{Address: addr("10.96.0.8")}, nil, 0, ErrWaypointNoEndpoint},
		{"hostname not in the config", &GatewayAddress{Hostname: "gone.ns", Namespace: "ns"}, nil, 0, ErrWaypointMissing},
		{"hostname in another namespace", &GatewayAddress{Hostname: "waypoint.ns", Namespace: "other"}, nil, 0, ErrWaypointMissing},
		{"address not in the config", &GatewayAddress{Address: addr("10.0.0.99")}, nil, 0, ErrWaypointMissing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := snap.Waypoint(tt.g)
			if !errors.Is(err, tt.err) {
				t.Fatalf("Waypoint: got error %v, want %v", err, tt.err)
			}
			var uids []string
			for _, w := range got {
				uids = append(uids, w.UID)
			}
			if diff := cmp.Diff(tt.want, uids); diff != "" {
				t.Errorf("Waypoint (-want +got):\n%s", diff)
			}
			if got := len(snap.WaypointMembers(tt.g)); got != tt.members {
				t.Errorf("WaypointMembers: got %d, want %d", got, tt.members)
			}
		})
	}
	if !snap.IsWaypointMember(app.Waypoint, snap.WorkloadByUID("wp2")) || snap.IsWaypointMember(app.Waypoint, app) {
		t.Error("IsWaypointMember: got wrong answers for wp2 (a member) and app (not one)")
	}
}

// TestServedOn: a tunnel serves the HBONE workloads of its node, not a
// host-network one, and not a waypoint's pod (native tunnel), which
// terminates HBONE itself: a same-node dial must reach the pod.
func TestServedOn(t *testing.T) {
	for _, tc := range []struct {
		name string
		w    Workload
		want bool
	}{
		{"captured pod", Workload{Node: "n1", TunnelProtocol: TunnelHBONE}, true},
		{"other node", Workload{Node: "n2", TunnelProtocol: TunnelHBONE}, false},
		{"outside the mesh", Workload{Node: "n1", TunnelProtocol: TunnelNone}, false},
		{"host network", Workload{Node: "n1", TunnelProtocol: TunnelHBONE, NetworkMode: NetworkHost}, false},
		{"waypoint pod", Workload{Node: "n1", TunnelProtocol: TunnelHBONE, NativeTunnel: true}, false},
	} {
		if got := tc.w.ServedOn("n1"); got != tc.want {
			t.Errorf("%s: ServedOn(n1) got %v, want %v", tc.name, got, tc.want)
		}
	}
}
