package ztunnel_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/ambitmesh/ambit/internal/hbone"
	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/ztunnel"
	"github.com/ambitmesh/ambit/ztunnel/admin"
	"github.com/ambitmesh/ambit/ztunnel/config"
	"github.com/ambitmesh/ambit/ztunnel/inbound"
	"github.com/ambitmesh/ambit/ztunnel/outbound"
)

func TestMeshTraffic(t *testing.T) {
	m := newMesh(t, meshOptions{})
	client, server := m.ip(1), netip.AddrPortFrom(m.ip(11), 8080)

	t.Run("workload address", func(t *testing.T) {
		c := m.outbound(t, client, server)
		expectEcho(t, c, server, "hello")
		expectEcho(t, c, server, "again")
	})
	t.Run("service address", func(t *testing.T) {
		c := m.outbound(t, client, netip.AddrPortFrom(m.ip(20), 80))
		expectEcho(t, c, server, "via service")
	})
	t.Run("the application sees its client's address", func(t *testing.T) {
		app := netip.AddrPortFrom(server.Addr(), 8091)
		serveTCP(t, app, func(c net.Conn) {
			fmt.Fprintf(c, "%s\n", c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr())
		})
		c := m.outbound(t, client, app)
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(line); got != client.String() {
			t.Errorf("the application saw its client at %s, want %s", got, client)
		}
	})
	t.Run("outside the mesh", func(t *testing.T) {
		outside := netip.AddrPortFrom(m.ip(30), 9000)
		echoApp(t, outside)
		c := m.outbound(t, client, outside)
		expectEcho(t, c, outside, "passthrough")
	})
	// The access log has a line per finished connection, with identities.
	m.b.log.waitFor(t, `"direction":"inbound"`, `"src.identity":"spiffe://cluster.local/ns/shop/sa/client"`,
		`"dst.identity":"spiffe://cluster.local/ns/shop/sa/server"`, `"bytes_recv":`)
	m.a.log.waitFor(t, `"direction":"outbound"`, `"dst.service":"server.shop.svc.cluster.local"`)

	opened := func(n *node, labels string) float64 {
		mfs, err := n.z.Metrics().Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var sum float64
		for _, mf := range mfs {
			if mf.GetName() != "istio_tcp_connections_opened_total" {
				continue
			}
			for _, mt := range mf.GetMetric() {
				if strings.Contains(mt.String(), labels) {
					sum += mt.GetCounter().GetValue()
				}
			}
		}
		return sum
	}
	if got := opened(m.b, `value:"destination"`); got != 3 {
		t.Errorf("node B istio_tcp_connections_opened_total{reporter=destination}: got %v, want 3", got)
	}
	if got := opened(m.a, `value:"source"`); got != 4 {
		t.Errorf("node A istio_tcp_connections_opened_total{reporter=source}: got %v, want 4", got)
	}
	if err := testutil.GatherAndCompare(m.b.z.Metrics().Registry, strings.NewReader(""), "istio_tcp_connections_opened_total"); err == nil {
		t.Error("metrics: got an empty istio_tcp_connections_opened_total, want series")
	}
}

func TestIdentityRefusals(t *testing.T) {
	other, err := identity.NewCA(identity.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		src  func(ca *identity.CA) identity.Source
		// bClock is node B's clock, nil for the real one.
		bClock identity.Clock
		want   string
	}{
		{
			name: "wrong san",
			src: func(ca *identity.CA) identity.Source {
				return certSource(func(ctx context.Context, id identity.Identity) (*tls.Certificate, error) {
					id.ServiceAccount = "impostor"
					return ca.Certificate(ctx, id)
				})
			},
			want: identity.ErrWrongIdentity.Error(),
		},
		{
			name: "untrusted root",
			src:  func(*identity.CA) identity.Source { return other },
			want: identity.ErrUntrustedRoot.Error(),
		},
		{
			// Node B's clock runs 2.5h behind: it takes for valid a
			// certificate that expired an hour ago, and A refuses it.
			name: "expired certificate",
			src: func(ca *identity.CA) identity.Source {
				return certSource(func(_ context.Context, id identity.Identity) (*tls.Certificate, error) {
					return ca.IssueValidity(id, time.Now().Add(-3*time.Hour), time.Now().Add(-time.Hour))
				})
			},
			bClock: fakeClock{clocktesting.NewFakeClock(time.Now().Add(-150 * time.Minute))},
			want:   identity.ErrExpired.Error(),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var src identity.Source
			ca := &lateCA{}
			src = certSource(func(ctx context.Context, id identity.Identity) (*tls.Certificate, error) {
				return tt.src(ca.get()).Certificate(ctx, id)
			})
			m := newMesh(t, meshOptions{bSource: src, bClock: tt.bClock, before: func(m *mesh) { ca.set(m.ca) }})
			server := netip.AddrPortFrom(m.ip(11), 8080)
			expectRefused(t, m.outbound(t, m.ip(1), server))
			m.a.log.waitFor(t, `"direction":"outbound"`, tt.want)
		})
	}
}

// lateCA hands a certificate source the mesh's CA once it exists.
type lateCA struct {
	mu sync.Mutex
	ca *identity.CA
}

func (l *lateCA) set(ca *identity.CA) { l.mu.Lock(); l.ca = ca; l.mu.Unlock() }
func (l *lateCA) get() *identity.CA   { l.mu.Lock(); defer l.mu.Unlock(); return l.ca }

// hboneTo dials node B's tunnel port for workload host as the client
// workload.
func (m *mesh) hboneTo(t *testing.T, host byte, expect string) *hbone.ClientConn {
	t.Helper()
	cert, err := m.ca.Issue(identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "client"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := hbone.Dial(context.Background(), netip.AddrPortFrom(m.ip(host), hbone.Port), hbone.ClientConfig{
		Certificate: cert,
		Verifier:    &identity.Verifier{Roots: m.ca.Roots()},
		Expected:    identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: expect},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func TestConnectRefusals(t *testing.T) {
	m := newMesh(t, meshOptions{})
	cc := m.hboneTo(t, 11, "server")
	tests := []struct {
		name   string
		target netip.AddrPort
		want   int
	}{
		{"workload on another node", netip.AddrPortFrom(m.ip(1), 8080), http.StatusUnauthorized},
		{"address outside the mesh", netip.AddrPortFrom(m.ip(30), 8080), http.StatusUnauthorized},
		{"loopback service", netip.MustParseAddrPort("127.0.0.1:22"), http.StatusUnauthorized},
		{"other local workload through this one's tunnel", netip.AddrPortFrom(m.ip(12), 8080), http.StatusUnauthorized},
		{"the tunnel port", netip.AddrPortFrom(m.ip(11), hbone.Port), http.StatusUnauthorized},
		{"the plaintext port", netip.AddrPortFrom(m.ip(11), 15006), http.StatusUnauthorized},
		{"the outbound port", netip.AddrPortFrom(m.ip(11), ztunnel.OutboundPort), http.StatusUnauthorized},
		{"the admin port", netip.AddrPortFrom(m.ip(11), ztunnel.AdminPort), http.StatusUnauthorized},
		{"the metrics port", netip.AddrPortFrom(m.ip(11), ztunnel.MetricsPort), http.StatusUnauthorized},
		{"the readiness port", netip.AddrPortFrom(m.ip(11), ztunnel.ReadinessPort), http.StatusUnauthorized},
		{"the DNS port", netip.AddrPortFrom(m.ip(11), ztunnel.DNSPort), http.StatusUnauthorized},
		{"the workload itself", netip.AddrPortFrom(m.ip(11), 8080), http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := cc.Connect(context.Background(), tt.target, nil)
			if tt.want == http.StatusOK {
				if err != nil {
					t.Fatalf("got %v, want a tunnel", err)
				}
				expectEcho(t, c, tt.target, "direct")
				c.Close()
				return
			}
			if got := hbone.StatusCode(err); got != tt.want {
				t.Errorf("got %v, want status %d", err, tt.want)
			}
		})
	}
	m.b.log.waitFor(t, "hbone connect refused", inbound.ErrUnknownDestination.Error())
}

func TestNoClientCertificate(t *testing.T) {
	m := newMesh(t, meshOptions{})
	c, err := tls.Dial("tcp", netip.AddrPortFrom(m.ip(11), hbone.Port).String(), &tls.Config{
		InsecureSkipVerify: true, NextProtos: []string{hbone.ALPN}, MinVersion: tls.VersionTLS13,
	})
	if err == nil {
		_, err = c.Read(make([]byte, 1)) // TLS 1.3 reports the refusal on the first read
		c.Close()
	}
	if err == nil {
		t.Fatal("tunnel without a client certificate: got a connection, want a refusal")
	}
	m.b.log.waitFor(t, "handshake", "certificate")
}

func allowOnly(sa string) *config.Authorization {
	return &config.Authorization{
		Name: "allow-" + sa, Namespace: "shop", Scope: config.ScopeNamespace, Action: config.Allow,
		Rules: []config.Rule{{Clauses: []config.Clause{{Matches: []config.Match{{
			Principals: []config.StringMatch{{Exact: "cluster.local/ns/shop/sa/" + sa}},
		}}}}}},
	}
}

func denyPort(port uint32) *config.Authorization {
	return &config.Authorization{
		Name: "deny-port", Namespace: "shop", Scope: config.ScopeNamespace, Action: config.Deny,
		Rules: []config.Rule{{Clauses: []config.Clause{{Matches: []config.Match{{DestinationPorts: []uint32{port}}}}}}},
	}
}

func (m *mesh) setPolicies(t *testing.T, p ...*config.Authorization) {
	t.Helper()
	st := m.store.Snapshot().State
	st.Policies = p
	if err := m.store.Replace(st); err != nil {
		t.Fatal(err)
	}
}

func TestAuthorization(t *testing.T) {
	m := newMesh(t, meshOptions{})
	server := netip.AddrPortFrom(m.ip(11), 8080)
	tests := []struct {
		name     string
		policies []*config.Authorization
		src      byte
		allowed  bool
	}{
		{"no policy", nil, 2, true},
		{"allow matches", []*config.Authorization{allowOnly("client")}, 1, true},
		{"allow does not match", []*config.Authorization{allowOnly("client")}, 2, false},
		{"deny matches", []*config.Authorization{allowOnly("client"), denyPort(8080)}, 1, false},
		{"deny does not match", []*config.Authorization{denyPort(22)}, 2, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m.setPolicies(t, tt.policies...)
			c := m.outbound(t, m.ip(tt.src), server)
			if tt.allowed {
				expectEcho(t, c, server, "allowed")
				return
			}
			expectRefused(t, c)
		})
	}
	m.b.log.waitFor(t, "hbone connect refused", `"status":401`, "denied by authorization policy")
}

func TestPolicyChangeClosesConnection(t *testing.T) {
	m := newMesh(t, meshOptions{})
	server := netip.AddrPortFrom(m.ip(11), 8080)
	m.setPolicies(t, allowOnly("client"), allowOnly("other"))
	kept := m.outbound(t, m.ip(1), server)
	expectEcho(t, kept, server, "before")
	dropped := m.outbound(t, m.ip(2), server)
	expectEcho(t, dropped, server, "before")

	m.setPolicies(t, allowOnly("client"))

	// The closed connection reads EOF or an error; no data arrives.
	if _, err := dropped.Read(make([]byte, 1)); err == nil {
		t.Fatal("read on a connection no longer allowed: got data, want it closed")
	}
	m.b.log.waitFor(t, `"direction":"inbound"`, inbound.ErrPolicyChanged.Error())
	expectEcho(t, kept, server, "after")
}

func TestStreamsShareOneConnection(t *testing.T) {
	m := newMesh(t, meshOptions{})
	server := netip.AddrPortFrom(m.ip(11), 8080)
	const n = 20
	var conns []net.Conn
	for range n {
		conns = append(conns, m.outbound(t, m.ip(1), server))
	}
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() { expectEcho(t, c, server, "shared") })
	}
	wg.Wait()
	pc := m.a.z.PoolConns()
	if len(pc) != 1 {
		t.Fatalf("pool keys: got %v, want one", pc)
	}
	for k, v := range pc {
		if v != 1 {
			t.Errorf("connections for %v carrying %d streams: got %d, want 1", k, n, v)
		}
	}
}

func TestPlaintextInbound(t *testing.T) {
	m := newMesh(t, meshOptions{})
	server := netip.AddrPortFrom(m.ip(11), 8080)
	plaintext := netip.AddrPortFrom(m.ip(11), 15006)
	outside := m.ip(30)

	open := m.dial(t, outside, plaintext, server)
	expectEcho(t, open, server, "plain")

	m.setPolicies(t, config.StrictPolicy("shop", config.ScopeNamespace))
	// The open plaintext connection is closed by the policy change, and
	// new ones are refused.
	if _, err := open.Read(make([]byte, 1)); err == nil {
		t.Error("read on a plaintext connection after STRICT: got data, want it closed")
	}
	expectRefused(t, m.dial(t, outside, plaintext, server))
	m.b.log.waitFor(t, `"direction":"inbound_plaintext"`, config.StrictPolicyName)
	// mTLS traffic still passes under STRICT.
	expectEcho(t, m.outbound(t, m.ip(1), server), server, "mtls")
}

func TestDrain(t *testing.T) {
	m := newMesh(t, meshOptions{})
	server := netip.AddrPortFrom(m.ip(11), 8080)
	c := m.outbound(t, m.ip(1), server)
	expectEcho(t, c, server, "open")
	if err := m.b.z.Ready(); err != nil {
		t.Fatalf("Ready(): %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // no grace: open connections are closed at once
	if err := m.b.z.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown with an open connection past its deadline: got %v, want context.Canceled", err)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("read after drain: got data, want the connection closed")
	}
	// New connections to the drained node fail.
	expectRefused(t, m.outbound(t, m.ip(1), server))
}

// flood writes to every connection until it fails.
func flood(t testing.TB, addr netip.AddrPort) {
	t.Helper()
	serveTCP(t, addr, func(c net.Conn) {
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
}

// A connection whose client stopped reading, with the server pushing
// data, is stuck on flow control; a policy change must still close it.
func TestPolicyChangeClosesStalledConnection(t *testing.T) {
	m := newMesh(t, meshOptions{})
	target := netip.AddrPortFrom(m.ip(11), 9100)
	flood(t, target)
	m.setPolicies(t, allowOnly("other"))
	c := m.outbound(t, m.ip(2), target)
	// Read a little, so the tunnel is surely up, then stop reading.
	if _, err := io.ReadFull(c, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	m.setPolicies(t, allowOnly("client"))
	m.b.log.waitFor(t, `"direction":"inbound"`, inbound.ErrPolicyChanged.Error())
}

func TestReadinessAndConfigDump(t *testing.T) {
	ca, err := identity.NewCA(identity.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	store := config.NewStore()
	z, err := ztunnel.New(ztunnel.Config{Node: "node-a", Store: store, Certificates: ca, Roots: ca.Roots()})
	if err != nil {
		t.Fatal(err)
	}
	if err := z.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { z.Shutdown(context.Background()) })
	if err := z.Ready(); err == nil {
		t.Error("Ready() before any config: got nil, want not ready")
	}
	ip := addrs(t)
	if err := store.Replace(defaultState(ip)); err != nil {
		t.Fatal(err)
	}
	if err := z.WaitReady(context.Background()); err != nil {
		t.Fatalf("WaitReady after config: %v", err)
	}
	dump := z.ConfigDump().(admin.Dump)
	var ids []string
	for _, c := range dump.Certificates {
		ids = append(ids, c.Identity)
		if c.State != identity.StateAvailable {
			t.Errorf("config dump certificate %s: got state %q, want %q", c.Identity, c.State, identity.StateAvailable)
		}
	}
	want := []string{"spiffe://cluster.local/ns/shop/sa/client", "spiffe://cluster.local/ns/shop/sa/other"}
	if diff := cmp.Diff(want, ids); diff != "" {
		t.Errorf("config dump certificates (-want +got):\n%s", diff)
	}
	if got := len(dump.Workloads); got != 4 {
		t.Errorf("config dump workloads: got %d, want 4", got)
	}
}

// A connection made straight to the outbound port has itself as its
// original destination; following it would loop.
func TestOutboundLoopRefused(t *testing.T) {
	m := newMesh(t, meshOptions{})
	expectRefused(t, m.outbound(t, m.ip(1), m.a.z.OutboundAddr()))
	m.a.log.waitFor(t, `"direction":"outbound"`, outbound.ErrNotRedirected.Error())
}

// A destination that expects mutual TLS ztunnel does not originate (an
// Istio sidecar's LEGACY_ISTIO_MTLS, or a tunnel protocol of a newer
// control plane) gets no connection at all, plain text or otherwise: the
// client's connection is closed and the access log says why.
func TestUnsupportedTunnelRefused(t *testing.T) {
	for _, tp := range []config.TunnelProtocol{config.TunnelLegacyIstioMTLS, config.TunnelUnknown} {
		t.Run(string(tp), func(t *testing.T) {
			m := newMesh(t, meshOptions{state: func(ip func(byte) netip.Addr) config.State {
				st := defaultState(ip)
				st.Workloads = append(st.Workloads, &config.Workload{
					UID: "shop/sidecar", Name: "sidecar", Namespace: "shop", ServiceAccount: "sidecar",
					Addresses: []netip.Addr{ip(31)}, Node: "node-c", TunnelProtocol: tp,
				})
				return st
			}})
			dst := netip.AddrPortFrom(m.ip(31), 9000)
			arrived := make(chan struct{}, 1)
			serveTCP(t, dst, func(net.Conn) { arrived <- struct{}{} })
			expectRefused(t, m.outbound(t, m.ip(1), dst))
			m.a.log.waitFor(t, `"direction":"outbound"`, `"dst.workload":"sidecar"`, "tunnel protocol "+string(tp), outbound.ErrUnsupportedTunnel.Error())
			select {
			case <-arrived:
				t.Errorf("%s reached the destination; want no connection", tp)
			default:
			}
		})
	}
}

// A server that speaks first and closes first (a banner, then EOF), as
// HTTP/1.0 servers and many databases do: the client gets every byte and
// then a clean EOF, through both tunnels.
func TestServerClosesFirst(t *testing.T) {
	m := newMesh(t, meshOptions{})
	addr := netip.AddrPortFrom(m.ip(11), 9200)
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	banner := strings.Repeat("banner ", 50000)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, banner)
			c.Close()
		}
	}()
	c := m.outbound(t, m.ip(1), addr)
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read banner: got error %v after %d bytes, want a clean EOF", err, len(got))
	}
	if string(got) != banner {
		t.Errorf("banner: got %d bytes, want %d", len(got), len(banner))
	}
}

// TestHostNetworkAndUnenrolledNotServed: istiod sends a hostNetwork pod
// at its node's address (HOST_NETWORK), and pods outside the mesh too.
// Neither is the tunnel's to serve: treating the host-network pod as a
// local workload made the tunnel listen on the node's address, fetch a
// certificate for the pod's identity, and let any mesh identity CONNECT
// to any port of the node (the kubelet's, the tunnel's own).
func TestHostNetworkAndUnenrolledNotServed(t *testing.T) {
	m := newMesh(t, meshOptions{state: func(ip func(byte) netip.Addr) config.State {
		st := defaultState(ip)
		st.Workloads = append(st.Workloads,
			// Even claiming HBONE, a host-network workload is not served.
			&config.Workload{UID: "kube-system/agent", Name: "agent", Namespace: "kube-system", ServiceAccount: "agent",
				Addresses: []netip.Addr{ip(40)}, Node: "node-b", TunnelProtocol: config.TunnelHBONE, NetworkMode: config.NetworkHost},
			&config.Workload{UID: "plain/pod", Name: "pod", Namespace: "plain", ServiceAccount: "pod",
				Addresses: []netip.Addr{ip(41)}, Node: "node-b", TunnelProtocol: config.TunnelNone},
		)
		return st
	}})
	var certs []string
	for _, c := range m.b.z.ConfigDump().(admin.Dump).Certificates {
		certs = append(certs, c.Identity)
	}
	want := []string{"spiffe://cluster.local/ns/shop/sa/server", "spiffe://cluster.local/ns/shop/sa/server2"}
	if diff := cmp.Diff(want, certs); diff != "" {
		t.Errorf("node B's certificates (-want +got):\n%s", diff)
	}
	if err := m.b.z.Ready(); err != nil {
		t.Errorf("node B ready: got %v, want ready without certificates for workloads it does not serve", err)
	}
	for _, host := range []byte{40, 41} {
		for _, port := range []uint16{hbone.Port, ztunnel.InboundPlaintextPort} {
			addr := netip.AddrPortFrom(m.ip(host), port)
			if c, err := net.DialTimeout("tcp", addr.String(), 5*time.Second); err == nil {
				c.Close()
				t.Errorf("dial %s: got a listener, want none (not a workload the tunnel serves)", addr)
			}
		}
	}
	cc := m.hboneTo(t, 11, "server")
	for _, target := range []netip.AddrPort{netip.AddrPortFrom(m.ip(40), 8080), netip.AddrPortFrom(m.ip(40), ztunnel.ReadinessPort), netip.AddrPortFrom(m.ip(41), 8080)} {
		c, err := cc.Connect(context.Background(), target, nil)
		if err == nil {
			c.Close()
		}
		if got := hbone.StatusCode(err); got != http.StatusUnauthorized {
			t.Errorf("CONNECT %s: got %v, want status 401", target, err)
		}
	}
	// The tunnel still serves its own workloads.
	c, err := cc.Connect(context.Background(), netip.AddrPortFrom(m.ip(11), 8080), nil)
	if err != nil {
		t.Fatalf("CONNECT to the server after the refusals: %v", err)
	}
	expectEcho(t, c, netip.AddrPortFrom(m.ip(11), 8080), "after")
	c.Close()
}

// TestStaleTunnelLeadsNowhere: a tunnel opened to a workload's address
// stays open after the workload is gone (its listener closes, its
// connections do not); a new CONNECT on it must not reach another local
// workload.
func TestStaleTunnelLeadsNowhere(t *testing.T) {
	m := newMesh(t, meshOptions{})
	cc := m.hboneTo(t, 11, "server")
	c, err := cc.Connect(context.Background(), netip.AddrPortFrom(m.ip(11), 8080), nil)
	if err != nil {
		t.Fatal(err)
	}
	expectEcho(t, c, netip.AddrPortFrom(m.ip(11), 8080), "before")
	c.Close()
	st := m.store.Snapshot().State
	st.Workloads = slices.DeleteFunc(slices.Clone(st.Workloads), func(w *config.Workload) bool { return w.Name == "server" })
	if err := m.store.Replace(st); err != nil {
		t.Fatal(err)
	}
	for _, target := range []netip.AddrPort{netip.AddrPortFrom(m.ip(12), 8080), netip.AddrPortFrom(m.ip(11), 8080)} {
		c, err := cc.Connect(context.Background(), target, nil)
		if err == nil {
			c.Close()
		}
		if got := hbone.StatusCode(err); got != http.StatusUnauthorized {
			t.Errorf("CONNECT %s through the departed server's tunnel: got %v, want status 401", target, err)
		}
	}
	// server2's own tunnel still leads to it.
	c2, err := m.hboneTo(t, 12, "server2").Connect(context.Background(), netip.AddrPortFrom(m.ip(12), 8080), nil)
	if err != nil {
		t.Fatal(err)
	}
	expectEcho(t, c2, netip.AddrPortFrom(m.ip(12), 8080), "after")
	c2.Close()
}
