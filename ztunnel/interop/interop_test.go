package interop_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	istiohbone "istio.io/istio/pkg/hbone"
	pkiutil "istio.io/istio/security/pkg/pki/util"

	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/internal/testutil"
	"github.com/ambitmesh/ambit/ztunnel"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

const (
	ambitNode = "node-ambit"
	istioNode = "node-istio"
	appPort   = 8080
)

func id(sa string) identity.Identity {
	return identity.Identity{TrustDomain: identity.DefaultTrustDomain, Namespace: "shop", ServiceAccount: sa}
}

var blocks atomic.Uint32

// block hands out a loopback block per mesh, different in each test and
// each test process, so that listeners on the standard port (15008) do
// not collide.
func block() func(host byte) netip.Addr {
	n := uint32(os.Getpid())*16 + blocks.Add(1)
	a, b := byte(100+n/250%150), byte(n%250+1)
	return func(host byte) netip.Addr { return netip.AddrFrom4([4]byte{127, a, b, host}) }
}

// echoApp answers each line with "<addr>: <line>" until the test ends.
func echoApp(t *testing.T, addr netip.AddrPort) {
	t.Helper()
	testutil.ServeTCP(t, addr.String(), func(c net.Conn) {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			fmt.Fprintf(c, "%s: %s\n", addr, sc.Text())
		}
	})
}

// roundTrip sends a line over c and returns the line it gets back.
func roundTrip(c net.Conn, msg string) (string, error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\n", msg); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSuffix(line, "\n"), err
}

// mesh is one Ambit ztunnel (node-ambit: workloads client and server)
// beside workloads that an Istio HBONE peer serves (node-istio).
type mesh struct {
	ca    *identity.CA
	ip    func(byte) netip.Addr
	z     *ztunnel.Ztunnel
	store *config.Store
}

// Workloads: .1 client and .11 server on the Ambit node, .21 istio-server
// behind Istio's HBONE server.
func newMesh(t *testing.T, policies ...*config.Authorization) *mesh {
	t.Helper()
	ca, err := identity.NewCA(identity.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	m := &mesh{ca: ca, ip: block(), store: config.NewStore()}
	wl := func(name, node string, host byte) *config.Workload {
		return &config.Workload{
			UID: "shop/" + name, Name: name, Namespace: "shop", ServiceAccount: name,
			Addresses: []netip.Addr{m.ip(host)}, Node: node, TunnelProtocol: config.TunnelHBONE,
		}
	}
	st := config.State{
		Workloads: []*config.Workload{wl("client", ambitNode, 1), wl("server", ambitNode, 11), wl("istio-server", istioNode, 21)},
		Policies:  policies,
	}
	if err := m.store.Replace(st); err != nil {
		t.Fatal(err)
	}
	z, err := ztunnel.New(ztunnel.Config{
		Node: ambitNode, Store: m.store, Certificates: ca, Roots: ca.Roots(),
		OutboundAddr: netip.AddrPortFrom(m.ip(1), 15001).String(),
		// Every captured connection in these tests goes to the app behind
		// Istio's server.
		OrigDst:    func(net.Conn) (netip.AddrPort, error) { return netip.AddrPortFrom(m.ip(21), appPort), nil },
		BindSource: true,
		Log:        slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := z.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		z.Shutdown(ctx)
	})
	if err := z.WaitReady(context.Background()); err != nil {
		t.Fatal(err)
	}
	m.z = z
	echoApp(t, netip.AddrPortFrom(m.ip(11), appPort))
	echoApp(t, netip.AddrPortFrom(m.ip(21), appPort))
	return m
}

// istioTLS is the TLS an Istio HBONE peer holds: TLS 1.3, its workload
// certificate from the mesh CA, the peer's chain verified against the mesh
// root and its SPIFFE URI SAN read with Istio's own parser. want, if set,
// is the identity the peer must have; seen receives the one it has.
func istioTLS(t *testing.T, m *mesh, self identity.Identity, want string, seen *atomic.Value) *tls.Config {
	t.Helper()
	cert, err := m.ca.Issue(self, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{*cert},
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{"h2"},
		ClientAuth:   tls.RequireAnyClientCert,
		// The peer is a SPIFFE identity, not a host name: the chain and
		// the URI SAN are checked below.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("verify peer: no certificate")
			}
			certs := make([]*x509.Certificate, len(raw))
			for i, r := range raw {
				c, err := x509.ParseCertificate(r)
				if err != nil {
					return fmt.Errorf("verify peer: %w", err)
				}
				certs[i] = c
			}
			inter := x509.NewCertPool()
			for _, c := range certs[1:] {
				inter.AddCert(c)
			}
			if _, err := certs[0].Verify(x509.VerifyOptions{Roots: m.ca.Roots(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
				return fmt.Errorf("verify peer: %w", err)
			}
			ids, err := pkiutil.ExtractIDs(certs[0].Extensions)
			if err != nil || len(ids) != 1 {
				return fmt.Errorf("verify peer: SAN %v, %v: want one SPIFFE identity", ids, err)
			}
			if want != "" && ids[0] != want {
				return fmt.Errorf("verify peer: got identity %s, want %s", ids[0], want)
			}
			if seen != nil {
				seen.Store(ids[0])
			}
			return nil
		},
	}
}

// TestIstioDialerToAmbitInbound: Istio's HBONE dialer, with a certificate
// of the mesh CA, reaches an app through Ambit's inbound (15008), and
// Ambit's policy sees the dialer's identity.
func TestIstioDialerToAmbitInbound(t *testing.T) {
	m := newMesh(t, &config.Authorization{
		Name: "allow-istio-client", Namespace: "shop", Scope: config.ScopeNamespace, Action: config.Allow,
		Rules: []config.Rule{{Clauses: []config.Clause{{Matches: []config.Match{{
			Principals: []config.StringMatch{{Exact: id("istio-client").Principal()}},
		}}}}}},
	})
	app := netip.AddrPortFrom(m.ip(11), appPort)
	tests := []struct {
		name   string
		client identity.Identity
		// expect is the identity the dialer requires of the server.
		expect identity.Identity
		want   string // the echo, or "" for a refusal
	}{
		{"allowed", id("istio-client"), id("server"), app.String() + ": hello"},
		{"denied by policy", id("other"), id("server"), ""},
		{"server is not who the dialer expects", id("istio-client"), id("someone-else"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := istiohbone.NewDialer(istiohbone.Config{
				ProxyAddress: netip.AddrPortFrom(m.ip(11), 15008).String(),
				TLS:          istioTLS(t, m, tt.client, tt.expect.String(), nil),
			})
			c, err := d.DialContext(context.Background(), "tcp", app.String())
			if tt.want == "" {
				if err == nil {
					// Istio's dialer does not look at the status: a
					// refused CONNECT shows as a stream that never echoes.
					got, rerr := roundTrip(c, "hello")
					c.Close()
					if strings.HasPrefix(got, app.String()) {
						t.Errorf("round trip: got %q, %v; want a refusal", got, rerr)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("dial through Istio's dialer: %v", err)
			}
			defer c.Close()
			got, err := roundTrip(c, "hello")
			if err != nil || got != tt.want {
				t.Errorf("round trip: got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// TestAmbitOutboundToIstioServer: a connection captured by Ambit's
// outbound crosses HBONE to Istio's HBONE server, which proxies it to the
// app; Istio's side sees the client's identity, and Ambit refuses an
// Istio server that presents the wrong one.
func TestAmbitOutboundToIstioServer(t *testing.T) {
	tests := []struct {
		name string
		// serverID is the identity Istio's server presents; Ambit expects
		// istio-server, the workload's service account.
		serverID identity.Identity
		want     bool
	}{
		{"expected identity", id("istio-server"), true},
		{"wrong identity", id("impostor"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMesh(t)
			var seen atomic.Value
			srv := istiohbone.NewServer()
			// Istio's server speaks HTTP/2 in the clear (h2c) only; its
			// handler is served here over mutual TLS as HBONE requires.
			srv.Protocols.SetHTTP2(true)
			srv.TLSConfig = istioTLS(t, m, tt.serverID, "", &seen)
			ln, err := net.Listen("tcp", netip.AddrPortFrom(m.ip(21), 15008).String())
			if err != nil {
				t.Fatal(err)
			}
			served := make(chan error, 1)
			go func() { served <- srv.ServeTLS(ln, "", "") }()
			t.Cleanup(func() { srv.Close(); <-served })

			d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(m.ip(1), 0))}
			c, err := d.Dial("tcp", m.z.OutboundAddr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got, err := roundTrip(c, "hello")
			if !tt.want {
				if err == nil {
					t.Errorf("round trip: got %q, want the connection refused", got)
				}
				return
			}
			want := fmt.Sprintf("%s: hello", netip.AddrPortFrom(m.ip(21), appPort))
			if err != nil || got != want {
				t.Fatalf("round trip: got %q, %v; want %q", got, err, want)
			}
			if got := seen.Load(); got != id("client").String() {
				t.Errorf("identity Istio's server saw: got %v, want %s", got, id("client"))
			}
		})
	}
}
