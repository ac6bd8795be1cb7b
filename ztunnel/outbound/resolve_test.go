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
	wl := func(uid, addr string, status config.WorkloadStatus, ports ...config.Port) *config.Workload {
		w := &config.Workload{UID: uid, Name: uid, Namespace: "shop", Addresses: []netip.Addr{ip(addr)}, Status: status, TunnelProtocol: config.TunnelHBONE}
		if ports != nil {
			w.Services = map[string]config.PortList{svcKey: {Ports: ports}}
		}
		return w
	}
	st := config.State{
		Workloads: []*config.Workload{
			wl("ready", "10.0.0.1", config.Healthy, config.Port{ServicePort: 80, TargetPort: 8080}),
			wl("sick", "10.0.0.2", config.Unhealthy, config.Port{ServicePort: 80, TargetPort: 8080}),
			wl("lone", "10.0.0.3", ""),
		},
		Services: []*config.Service{{
			Name: "web", Namespace: "shop", Hostname: "web.shop.svc.cluster.local",
			Addresses: []config.NetworkAddress{{Address: ip("10.96.0.1")}},
			Ports:     []config.Port{{ServicePort: 80, TargetPort: 8080}, {ServicePort: 443, TargetPort: 8443}},
		}},
	}
	store := config.NewStore()
	if err := store.Replace(st); err != nil {
		t.Fatal(err)
	}
	snap := store.Snapshot()
	tests := []struct {
		name         string
		dst          string
		wantWorkload string
		wantTarget   string
		wantErr      error
	}{
		{"service picks the healthy endpoint", "10.96.0.1:80", "ready", "10.0.0.1:8080", nil},
		{"service port from the service when the workload maps none", "10.96.0.1:443", "ready", "10.0.0.1:8443", nil},
		{"service port not exposed", "10.96.0.1:81", "", "", ErrNoEndpoint},
		{"workload address", "10.0.0.3:9000", "lone", "10.0.0.3:9000", nil},
		{"outside the mesh", "192.0.2.1:443", "", "192.0.2.1:443", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range 20 { // the pick is random; the unhealthy one must never win
				r, err := resolve(snap, netip.MustParseAddrPort(tt.dst))
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
