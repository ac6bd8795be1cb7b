package ztunnel_test

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/internal/hbone"
	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/ztunnel/config"
	"github.com/ambitmesh/ambit/ztunnel/inbound"
	"github.com/ambitmesh/ambit/ztunnel/outbound"
)

// The waypoint of these tests: workload "waypoint" at .50 on node A
// (so that its own connections pass node A's outbound, as a captured
// waypoint's would, and a loop would show), behind the Service
// waypoint.shop (.51). Node A serves its standard tunnel ports; the
// stand-in takes HBONE on waypointPort.
const (
	waypointPort = 15009
	waypointHost = "waypoint.shop.svc.cluster.local"
)

var waypointID = identity.Identity{TrustDomain: identity.DefaultTrustDomain, Namespace: "shop", ServiceAccount: "waypoint"}

func waypointAddr() *config.GatewayAddress {
	return &config.GatewayAddress{Hostname: waypointHost, Namespace: "shop", HBONEPort: waypointPort}
}

// waypointState is defaultState with the waypoint, changed by edit.
func waypointState(ip func(byte) netip.Addr, edit func(wl map[string]*config.Workload, svc *config.Service)) config.State {
	st := defaultState(ip)
	st.Workloads = append(st.Workloads, &config.Workload{
		UID: "shop/waypoint", Name: "waypoint", Namespace: "shop", ServiceAccount: "waypoint",
		Addresses: []netip.Addr{ip(50)}, Node: "node-a", TunnelProtocol: config.TunnelHBONE,
		Services: map[string]config.PortList{"shop/" + waypointHost: {Ports: []config.Port{{ServicePort: waypointPort}}}},
	})
	st.Services = append(st.Services, &config.Service{
		Name: "waypoint", Namespace: "shop", Hostname: waypointHost,
		Addresses: []config.NetworkAddress{{Address: ip(51)}},
		Ports:     []config.Port{{ServicePort: waypointPort}},
	})
	wl := map[string]*config.Workload{}
	for _, w := range st.Workloads {
		wl[w.Name] = w
	}
	if edit != nil {
		edit(wl, st.Services[0])
	}
	return st
}

// connect is one CONNECT the waypoint stand-in took.
type connect struct {
	authority netip.AddrPort
	peer      identity.Identity
}

// standIn is a waypoint in-process: an HBONE server with the waypoint's
// certificate that records each CONNECT and sends it on to its
// :authority as the waypoint's own connection, through node A's outbound
// (where the real waypoint's connections would be captured, were it in
// the mesh's data plane).
type standIn struct {
	mu    sync.Mutex
	seen  []connect
	event chan struct{}
}

func (s *standIn) connects() []connect {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]connect(nil), s.seen...)
}

func startStandIn(t *testing.T, m *mesh) *standIn {
	t.Helper()
	cert, err := m.ca.Issue(waypointID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	s := &standIn{event: make(chan struct{}, 16)}
	srv := &hbone.Server{
		Certificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil },
		Verifier:    &identity.Verifier{Roots: m.ca.Roots()},
		Handler: hbone.HandlerFunc(func(ctx context.Context, r *hbone.Request, st *hbone.ServerStream) {
			s.mu.Lock()
			s.seen = append(s.seen, connect{r.Target, r.Peer})
			s.mu.Unlock()
			select {
			case s.event <- struct{}{}:
			default:
			}
			up, err := m.redirected(ctx, m.ip(50), m.a.z.OutboundAddr(), r.Target)
			if err != nil {
				st.Refuse(http.StatusServiceUnavailable, err)
				return
			}
			if err := st.Accept(); err != nil {
				up.Close()
				return
			}
			hbone.Join(st, up)
		}),
	}
	ln, err := net.Listen("tcp", netip.AddrPortFrom(m.ip(50), waypointPort).String())
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

// expect checks what the stand-in saw since the last check.
func (s *standIn) expect(t *testing.T, want ...connect) {
	t.Helper()
	got := s.connects()
	s.mu.Lock()
	s.seen = nil
	s.mu.Unlock()
	if len(got) != len(want) {
		t.Fatalf("waypoint CONNECTs: got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("waypoint CONNECT %d: got %v, want %v", i, got[i], want[i])
		}
	}
}

func TestWaypointSteering(t *testing.T) {
	var ip func(byte) netip.Addr
	m := newMesh(t, meshOptions{state: func(f func(byte) netip.Addr) config.State {
		ip = f
		return waypointState(f, nil)
	}})
	wp := startStandIn(t, m)
	set := func(t *testing.T, edit func(wl map[string]*config.Workload, svc *config.Service)) {
		t.Helper()
		if err := m.store.Replace(waypointState(ip, edit)); err != nil {
			t.Fatal(err)
		}
	}
	clientID := identity.Identity{TrustDomain: identity.DefaultTrustDomain, Namespace: "shop", ServiceAccount: "client"}
	serverID := identity.Identity{TrustDomain: identity.DefaultTrustDomain, Namespace: "shop", ServiceAccount: "server"}
	client, server, vip := ip(1), netip.AddrPortFrom(ip(11), 8080), netip.AddrPortFrom(ip(20), 80)

	t.Run("service addressed", func(t *testing.T) {
		set(t, func(_ map[string]*config.Workload, svc *config.Service) { svc.Waypoint = waypointAddr() })
		c := m.outbound(t, client, vip)
		expectEcho(t, c, server, "via the service's waypoint")
		c.Close() // access-log lines are written when connections end
		// One CONNECT: the waypoint's own connection to the service went
		// straight to the endpoint, not back to the waypoint.
		wp.expect(t, connect{vip, clientID})
		// The client's ztunnel logs the hop: to the waypoint's workload,
		// for the service.
		m.a.log.waitFor(t, `"direction":"outbound"`, `"src.workload":"client"`, `"dst.addr":"`+vip.String()+`"`,
			`"dst.hbone_addr":"`+netip.AddrPortFrom(ip(50), waypointPort).String()+`"`, `"dst.workload":"waypoint"`,
			`"dst.service":"server.shop.svc.cluster.local"`, `"waypoint":"shop/`+waypointHost+`"`)
		// Its metrics: the waypoint's workload as the destination, the
		// service addressed as the destination service.
		mfs, err := m.a.z.Metrics().Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, mf := range mfs {
			if mf.GetName() != "istio_tcp_connections_opened_total" {
				continue
			}
			for _, mt := range mf.GetMetric() {
				labels := map[string]string{}
				for _, l := range mt.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				if labels["reporter"] == "source" && labels["source_workload"] == "client" && labels["destination_workload"] == "waypoint" &&
					labels["destination_service"] == "server.shop.svc.cluster.local" && labels["destination_principal"] == waypointID.String() {
					found = true
				}
			}
		}
		if !found {
			t.Error("node A istio_tcp_connections_opened_total: no series from client to the waypoint for the service")
		}
		// The server's ztunnel sees the waypoint as its peer.
		m.b.log.waitFor(t, `"direction":"inbound"`, `"src.identity":"`+waypointID.String()+`"`, `"dst.workload":"server"`)
	})

	t.Run("waypoint's workload not HBONE", func(t *testing.T) {
		// Istio's istiod gives a waypoint's pod tunnel protocol NONE (its
		// traffic is not redirected); it is reached over HBONE all the
		// same, at its Gateway's HBONE port, never bypassed in plain text.
		set(t, func(wl map[string]*config.Workload, svc *config.Service) {
			svc.Waypoint = waypointAddr()
			wl["waypoint"].TunnelProtocol = config.TunnelNone
		})
		c := m.outbound(t, client, vip)
		expectEcho(t, c, server, "via the service's waypoint")
		c.Close()
		wp.expect(t, connect{vip, clientID})
	})

	t.Run("pod addressed", func(t *testing.T) {
		set(t, func(wl map[string]*config.Workload, _ *config.Service) { wl["server"].Waypoint = waypointAddr() })
		expectEcho(t, m.outbound(t, client, server), server, "via the pod's waypoint")
		wp.expect(t, connect{server, clientID})
	})

	t.Run("service account: through a service without a waypoint", func(t *testing.T) {
		// The waypoint binds the endpoint (istio.io/use-waypoint on its
		// service account), not the Service.
		set(t, func(wl map[string]*config.Workload, _ *config.Service) { wl["server"].Waypoint = waypointAddr() })
		expectEcho(t, m.outbound(t, client, vip), server, "via the endpoint's waypoint")
		wp.expect(t, connect{vip, clientID})
	})

	t.Run("bypass refused", func(t *testing.T) {
		set(t, nil)
		open := m.outbound(t, client, server)
		expectEcho(t, open, server, "before the binding")
		plain := m.dial(t, ip(30), netip.AddrPortFrom(ip(11), 15006), server)
		expectEcho(t, plain, server, "plaintext before the binding")
		set(t, func(wl map[string]*config.Workload, _ *config.Service) { wl["server"].Waypoint = waypointAddr() })
		// A tunnel, and plaintext, that reached the server directly
		// before it was bound are closed by the binding, as by a policy
		// change.
		if _, err := roundTrip(open, "after the binding"); err == nil {
			t.Error("direct tunnel opened before the binding: still open after it, want it closed")
		}
		if _, err := roundTrip(plain, "after the binding"); err == nil {
			t.Error("direct plaintext opened before the binding: still open after it, want it closed")
		}
		// A client that tunnels to the server's ztunnel directly.
		cc := m.hboneTo(t, 11, "server")
		_, err := cc.Connect(context.Background(), server, nil)
		if got := hbone.StatusCode(err); got != http.StatusUnauthorized {
			t.Errorf("direct tunnel to a waypoint-bound workload: got %v, want status 401", err)
		}
		m.b.log.waitFor(t, `"direction":"inbound"`, `"src.identity":"`+clientID.String()+`"`, inbound.ErrNotFromWaypoint.Error())
		// Plaintext from outside the mesh goes through the waypoint, as
		// the server's own identity (the source has none).
		outside := ip(30)
		c := m.dial(t, outside, netip.AddrPortFrom(ip(11), 15006), server)
		expectEcho(t, c, server, "plaintext via the waypoint")
		c.Close()
		wp.expect(t, connect{server, serverID})
		m.b.log.waitFor(t, `"direction":"inbound_plaintext"`, `"waypoint":"shop/`+waypointHost+`"`)
	})

	t.Run("fail closed", func(t *testing.T) {
		tests := []struct {
			name string
			edit func(wl map[string]*config.Workload, svc *config.Service)
			dst  netip.AddrPort
			want error
		}{
			{"service bound to a waypoint not in the config", func(_ map[string]*config.Workload, svc *config.Service) {
				svc.Waypoint = &config.GatewayAddress{Hostname: "gone.shop.svc.cluster.local", Namespace: "shop"}
			}, vip, config.ErrWaypointMissing},
			{"service bound to a waypoint without a healthy endpoint", func(wl map[string]*config.Workload, svc *config.Service) {
				svc.Waypoint = waypointAddr()
				wl["waypoint"].Status = config.Unhealthy
			}, vip, config.ErrWaypointNoEndpoint},
			{"pod bound to a waypoint address with nothing there", func(wl map[string]*config.Workload, _ *config.Service) {
				wl["server"].Waypoint = &config.GatewayAddress{Address: &config.NetworkAddress{Address: ip(99)}}
			}, server, config.ErrWaypointMissing},
			{"endpoint's waypoint without a healthy endpoint", func(wl map[string]*config.Workload, _ *config.Service) {
				wl["server"].Waypoint = waypointAddr()
				wl["waypoint"].Status = config.Unhealthy
			}, vip, config.ErrWaypointNoEndpoint},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				set(t, tt.edit)
				expectRefused(t, m.outbound(t, client, tt.dst))
				m.a.log.waitFor(t, `"direction":"outbound"`, `"dst.addr":"`+tt.dst.String()+`"`,
					outbound.ErrWaypointUnavailable.Error(), tt.want.Error())
				wp.expect(t)
			})
		}
		// The server's ztunnel refuses every tunnel to a workload whose
		// waypoint it cannot find, and plaintext too.
		set(t, func(wl map[string]*config.Workload, _ *config.Service) {
			wl["server"].Waypoint = &config.GatewayAddress{Hostname: "gone.shop.svc.cluster.local", Namespace: "shop"}
		})
		cc := m.hboneTo(t, 11, "server")
		if _, err := cc.Connect(context.Background(), server, nil); hbone.StatusCode(err) != http.StatusUnauthorized {
			t.Errorf("tunnel to a workload with a missing waypoint: got %v, want status 401", err)
		}
		expectRefused(t, m.dial(t, ip(30), netip.AddrPortFrom(ip(11), 15006), server))
		m.b.log.waitFor(t, `"direction":"inbound_plaintext"`, inbound.ErrWaypointUnavailable.Error(), config.ErrWaypointMissing.Error())
		wp.expect(t)
	})
}
