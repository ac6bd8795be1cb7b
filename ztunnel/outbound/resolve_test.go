package outbound

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/ambitmesh/ambit/ztunnel/config"
)

func TestResolve(t *testing.T) {
	ip := netip.MustParseAddr
	svcKey := "shop/web.shop.svc.cluster.local"
	sidecarKey := "shop/sidecars.shop.svc.cluster.local"
	wl := func(uid, addr string, status config.WorkloadStatus, ports ...config.Port) *config.Workload {
		w := &config.Workload{UID: uid, Name: uid, Namespace: "shop", Addresses: []netip.Addr{ip(addr)}, Status: status, TunnelProtocol: config.TunnelHBONE}
		if ports != nil {
			w.Services = map[string]config.PortList{svcKey: {Ports: ports}}
		}
		return w
	}
	// sidecar is an endpoint of both services that ztunnel cannot reach.
	sidecar := wl("sidecar", "10.0.0.4", config.Healthy)
	sidecar.TunnelProtocol = config.TunnelLegacyIstioMTLS
	sidecar.Services = map[string]config.PortList{svcKey: {}, sidecarKey: {}}
	length := uint32(16)
	st := config.State{
		Workloads: []*config.Workload{
			wl("ready", "10.0.0.1", config.Healthy, config.Port{ServicePort: 80, TargetPort: 8080}),
			wl("sick", "10.0.0.2", config.Unhealthy, config.Port{ServicePort: 80, TargetPort: 8080}),
			wl("lone", "10.0.0.3", ""),
			sidecar,
		},
		Services: []*config.Service{{
			Name: "web", Namespace: "shop", Hostname: "web.shop.svc.cluster.local",
			Addresses: []config.NetworkAddress{{Address: ip("10.96.0.1")}},
			Ports:     []config.Port{{ServicePort: 80, TargetPort: 8080}, {ServicePort: 443, TargetPort: 8443}},
		}, {
			Name: "sidecars", Namespace: "shop", Hostname: "sidecars.shop.svc.cluster.local",
			Addresses: []config.NetworkAddress{{Address: ip("10.96.0.2")}},
			Ports:     []config.Port{{ServicePort: 80}},
		}, {
			Name: "internal", Namespace: "shop", Hostname: "internal.example",
			Addresses:  []config.NetworkAddress{{Address: ip("240.240.0.1")}},
			Ports:      []config.Port{{ServicePort: 80}},
			Visibility: config.VisibilityNamespace,
		}, {
			// A ServiceEntry's CIDR range: not a virtual address.
			Name: "range", Namespace: "shop", Hostname: "range.example",
			Addresses: []config.NetworkAddress{{Address: ip("192.168.0.0"), Length: &length}},
			Ports:     []config.Port{{ServicePort: 80}},
		}},
	}
	store := config.NewStore()
	if err := store.Replace(st); err != nil {
		t.Fatal(err)
	}
	snap := store.Snapshot()
	tests := []struct {
		name         string
		ns           string // the client's namespace; shop when empty
		dst          string
		wantWorkload string
		wantTarget   string
		wantErr      error
	}{
		{name: "service picks the healthy endpoint ztunnel can reach", dst: "10.96.0.1:80", wantWorkload: "ready", wantTarget: "10.0.0.1:8080"},
		{name: "service port from the service when the workload maps none", dst: "10.96.0.1:443", wantWorkload: "ready", wantTarget: "10.0.0.1:8443"},
		{name: "service port not exposed", dst: "10.96.0.1:81", wantErr: ErrNoEndpoint},
		{name: "service whose endpoints expect sidecar mTLS", dst: "10.96.0.2:80", wantErr: ErrUnsupportedTunnel},
		{name: "workload address", dst: "10.0.0.3:9000", wantWorkload: "lone", wantTarget: "10.0.0.3:9000"},
		// The route names the workload; handle refuses it.
		{name: "workload expecting sidecar mTLS", dst: "10.0.0.4:9000", wantWorkload: "sidecar", wantTarget: "10.0.0.4:9000"},
		{name: "outside the mesh", dst: "192.0.2.1:443", wantTarget: "192.0.2.1:443"},
		{name: "namespace-visible service, client in its namespace", dst: "240.240.0.1:80", wantErr: ErrNoEndpoint},
		{name: "namespace-visible service, client elsewhere", ns: "other", dst: "240.240.0.1:80", wantTarget: "240.240.0.1:80"},
		{name: "inside a service's CIDR range", dst: "192.168.3.4:80", wantTarget: "192.168.3.4:80"},
		{name: "first address of a service's CIDR range", dst: "192.168.0.0:80", wantTarget: "192.168.0.0:80"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := tt.ns
			if ns == "" {
				ns = "shop"
			}
			for range 20 { // the pick is random; the unhealthy one must never win
				r, err := resolve(snap, &config.Workload{Namespace: ns}, netip.MustParseAddrPort(tt.dst))
				if tt.wantErr != nil {
					if !errors.Is(err, tt.wantErr) {
						t.Fatalf("got %v, want %v", err, tt.wantErr)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				got := ""
				if r.workload != nil {
					got = r.workload.UID
				}
				if got != tt.wantWorkload || r.target.String() != tt.wantTarget {
					t.Fatalf("got %q %s, want %q %s", got, r.target, tt.wantWorkload, tt.wantTarget)
				}
			}
		})
	}
}

func TestResolveWaypoint(t *testing.T) {
	ip := netip.MustParseAddr
	wpHost := "waypoint.shop.svc.cluster.local"
	byName := &config.GatewayAddress{Hostname: wpHost, Namespace: "shop"}
	wl := func(uid, addr string, services ...string) *config.Workload {
		w := &config.Workload{UID: uid, Name: uid, Namespace: "shop", Addresses: []netip.Addr{ip(addr)}, TunnelProtocol: config.TunnelHBONE}
		for _, s := range services {
			if w.Services == nil {
				w.Services = map[string]config.PortList{}
			}
			w.Services["shop/"+s] = config.PortList{Ports: []config.Port{{ServicePort: 80, TargetPort: 8080}}}
		}
		return w
	}
	client, wp := wl("client", "10.0.0.1"), wl("waypoint", "10.0.0.5", wpHost)
	bound := wl("bound", "10.0.0.2", "plain.shop")
	bound.Waypoint = byName
	st := config.State{
		Workloads: []*config.Workload{client, wp, bound, wl("free", "10.0.0.3", "l7.shop")},
		Services: []*config.Service{
			{Name: "waypoint", Namespace: "shop", Hostname: wpHost, Addresses: []config.NetworkAddress{{Address: ip("10.96.0.5")}}},
			{Name: "l7", Namespace: "shop", Hostname: "l7.shop", Addresses: []config.NetworkAddress{{Address: ip("10.96.0.1")}}, Ports: []config.Port{{ServicePort: 80}},
				Waypoint: &config.GatewayAddress{Address: &config.NetworkAddress{Address: ip("10.96.0.5")}, HBONEPort: 15009}},
			{Name: "plain", Namespace: "shop", Hostname: "plain.shop", Addresses: []config.NetworkAddress{{Address: ip("10.96.0.2")}}, Ports: []config.Port{{ServicePort: 80}}},
		},
	}
	store := config.NewStore()
	if err := store.Replace(st); err != nil {
		t.Fatal(err)
	}
	snap := store.Snapshot()
	tests := []struct {
		name                 string
		src                  *config.Workload
		dst                  string
		wantWorkload         string
		wantTarget, wantPeer string // wantPeer empty: no waypoint
	}{
		{"service with a waypoint", client, "10.96.0.1:80", "waypoint", "10.96.0.1:80", "10.0.0.5:15009"},
		{"pod with a waypoint", client, "10.0.0.2:8080", "waypoint", "10.0.0.2:8080", "10.0.0.5:15008"},
		{"service without one, endpoint with one", client, "10.96.0.2:80", "waypoint", "10.96.0.2:80", "10.0.0.5:15008"},
		{"pod without one", client, "10.0.0.3:8080", "free", "10.0.0.3:8080", ""},
		{"the waypoint's own connection to the service", wp, "10.96.0.1:80", "free", "10.0.0.3:8080", ""},
		{"the waypoint's own connection to the pod", wp, "10.0.0.2:8080", "bound", "10.0.0.2:8080", ""},
		{"the waypoint's own connection through the endpoint's", wp, "10.96.0.2:80", "bound", "10.0.0.2:8080", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := resolve(snap, tt.src, netip.MustParseAddrPort(tt.dst))
			if err != nil {
				t.Fatal(err)
			}
			peer := ""
			if r.waypoint != nil {
				peer = r.tunnel.String()
			}
			if r.workload == nil || r.workload.UID != tt.wantWorkload || r.target.String() != tt.wantTarget || peer != tt.wantPeer {
				t.Errorf("got workload %v, target %s, waypoint %q; want %s, %s, %q", r.workload, r.target, peer, tt.wantWorkload, tt.wantTarget, tt.wantPeer)
			}
		})
	}
}
