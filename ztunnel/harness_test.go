package ztunnel_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/internal/testutil"
	"github.com/ambitmesh/ambit/ztunnel"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

// fakeClock adapts k8s.io/utils' fake clock to identity.Clock.
type fakeClock struct{ *clocktesting.FakeClock }

func (f fakeClock) NewTimer(d time.Duration) identity.Timer { return f.FakeClock.NewTimer(d) }

// subnet hands each test its own block of loopback addresses, so that
// tunnels can listen on the standard ports without colliding.
var subnet atomic.Uint32

func addrs(t testing.TB) func(host byte) netip.Addr {
	t.Helper()
	n := subnet.Add(1) + uint32(time.Now().UnixNano()%200)*64
	a, b := byte(100+n/250%150), byte(n%250+1)
	return func(host byte) netip.Addr { return netip.AddrFrom4([4]byte{127, a, b, host}) }
}

// redirector stands in for the kernel's record of original destinations:
// the test registers where a connection was going, the tunnel asks.
type redirector struct {
	mu      sync.Mutex
	dst     map[netip.AddrPort]netip.AddrPort
	waiters map[netip.AddrPort]chan struct{}
}

func newRedirector() *redirector {
	return &redirector{dst: map[netip.AddrPort]netip.AddrPort{}, waiters: map[netip.AddrPort]chan struct{}{}}
}

func (r *redirector) waiter(src netip.AddrPort) chan struct{} {
	ch, ok := r.waiters[src]
	if !ok {
		ch = make(chan struct{})
		r.waiters[src] = ch
	}
	return ch
}

// set registers dst for the connection from src. A source port is
// reused once its connection has gone (a benchmark's many short
// connections): the registration of a connection the tunnel never asked
// about is replaced.
func (r *redirector) set(src, dst netip.AddrPort) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dst[src] = dst
	ch := r.waiter(src)
	select {
	case <-ch: // registered before and not yet asked for
	default:
		close(ch)
	}
}

func (r *redirector) OrigDst(c net.Conn) (netip.AddrPort, error) {
	src := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	r.mu.Lock()
	ch := r.waiter(src)
	r.mu.Unlock()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		return netip.AddrPort{}, fmt.Errorf("no original destination registered for %s", src)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// Asked once per connection: the next connection from the same
	// port waits for its own registration.
	dst := r.dst[src]
	delete(r.dst, src)
	delete(r.waiters, src)
	return dst, nil
}

// logBuffer collects JSON log lines from several goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	// notify is signalled after each write.
	notify chan struct{}
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	select {
	case l.notify <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// waitFor returns the first log line containing all of want, waiting
// for it to be written.
func (l *logBuffer) waitFor(t testing.TB, want ...string) string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		for line := range strings.SplitSeq(l.String(), "\n") {
			if containsAll(line, want) {
				return line
			}
		}
		select {
		case <-l.notify:
		case <-timeout:
			t.Fatalf("log: got no line containing %q; log:\n%s", want, l.String())
			return ""
		}
	}
}

func containsAll(s string, want []string) bool {
	for _, w := range want {
		if !strings.Contains(s, w) {
			return false
		}
	}
	return true
}

type node struct {
	z   *ztunnel.Ztunnel
	log *logBuffer
}

// mesh is two nodes on loopback sharing one config store and test CA.
type mesh struct {
	ca    *identity.CA
	store *config.Store
	redir *redirector
	ip    func(byte) netip.Addr
	a, b  *node
	// shared, handoverWait: see meshOptions.
	shared       bool
	handoverWait time.Duration
}

// certSource lets a test make one node misbehave.
type certSource func(ctx context.Context, id identity.Identity) (*tls.Certificate, error)

func (f certSource) Certificate(ctx context.Context, id identity.Identity) (*tls.Certificate, error) {
	return f(ctx, id)
}

type meshOptions struct {
	// aSource and bSource replace node A's and B's certificate sources.
	aSource, bSource identity.Source
	// aClock and bClock replace the nodes' clocks of certificate
	// management.
	aClock, bClock identity.Clock
	// before runs once the CA and store exist, before the nodes start.
	before func(m *mesh)
	state  func(ip func(byte) netip.Addr) config.State
	// shared opens the nodes' listeners as the ztunnel command does
	// (Config.Shared and ListenWhenReady), so that a second tunnel of
	// the same node can listen beside the first (startNodeAt).
	shared bool
	// handoverWait is the shared tunnels' Config.HandoverWait. (A tunnel
	// stopped without a successor waits for it, up to the cleanup's
	// five seconds.)
	handoverWait time.Duration
}

// Workload addresses: node A holds .1 (client) and .2 (other), node B .11
// (server) and .12 (server2); .20 is the server's Service; .30 is outside
// the mesh.
func defaultState(ip func(byte) netip.Addr) config.State {
	wl := func(name, node string, host byte, sa string) *config.Workload {
		return &config.Workload{
			UID: "shop/" + name, Name: name, Namespace: "shop", ServiceAccount: sa,
			Addresses: []netip.Addr{ip(host)}, Node: node, TunnelProtocol: config.TunnelHBONE,
		}
	}
	server := wl("server", "node-b", 11, "server")
	server.Services = map[string]config.PortList{"shop/server.shop.svc.cluster.local": {Ports: []config.Port{{ServicePort: 80, TargetPort: 8080}}}}
	return config.State{
		Workloads: []*config.Workload{
			wl("client", "node-a", 1, "client"),
			wl("other", "node-a", 2, "other"),
			server,
			wl("server2", "node-b", 12, "server2"),
		},
		Services: []*config.Service{{
			Name: "server", Namespace: "shop", Hostname: "server.shop.svc.cluster.local",
			Addresses: []config.NetworkAddress{{Address: ip(20)}},
			Ports:     []config.Port{{ServicePort: 80, TargetPort: 8080}},
		}},
	}
}

func newMesh(t testing.TB, o meshOptions) *mesh {
	t.Helper()
	ca, err := identity.NewCA(identity.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	m := &mesh{ca: ca, store: config.NewStore(), redir: newRedirector(), ip: addrs(t), shared: o.shared, handoverWait: o.handoverWait}
	st := defaultState(m.ip)
	if o.state != nil {
		st = o.state(m.ip)
	}
	if err := m.store.Replace(st); err != nil {
		t.Fatal(err)
	}
	if o.before != nil {
		o.before(m)
	}
	srcA, srcB := identity.Source(ca), identity.Source(ca)
	if o.aSource != nil {
		srcA = o.aSource
	}
	if o.bSource != nil {
		srcB = o.bSource
	}
	m.a = m.startNode(t, "node-a", srcA, o.aClock)
	m.b = m.startNode(t, "node-b", srcB, o.bClock)
	// Every workload gets an echo app on port 8080.
	for _, w := range st.Workloads {
		echoApp(t, netip.AddrPortFrom(w.Addresses[0], 8080))
	}
	return m
}

func (m *mesh) startNode(t testing.TB, name string, src identity.Source, clk identity.Clock) *node {
	t.Helper()
	return m.startNodeAt(t, name, src, clk, "127.0.0.1:0", "127.0.0.1:0")
}

// startNodeAt is startNode with the outbound listener on outbound and,
// in a shared mesh, the readiness listener on readiness.
func (m *mesh) startNodeAt(t testing.TB, name string, src identity.Source, clk identity.Clock, outbound, readiness string) *node {
	t.Helper()
	lb := &logBuffer{notify: make(chan struct{}, 1)}
	z, err := ztunnel.New(ztunnel.Config{
		Node:            name,
		Store:           m.store,
		Certificates:    src,
		Roots:           m.ca.Roots(),
		Clock:           clk,
		OutboundAddr:    outbound,
		OrigDst:         m.redir.OrigDst,
		Shared:          m.shared,
		ListenWhenReady: m.shared,
		HandoverWait:    m.handoverWait,
		ReadinessAddr:   readinessAddr(m.shared, readiness),
		BindSource:      true,
		// Loopback addresses are the test host's own: bound without
		// IP_TRANSPARENT.
		PreserveSource: true,
		Log:            slog.New(slog.NewJSONHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})),
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
	if err := z.WaitReady(context.Background()); err != nil && src == identity.Source(m.ca) {
		t.Fatalf("%s ready: %v", name, err)
	}
	return &node{z: z, log: lb}
}

// serveTCP listens on addr until the test ends and runs handle for each
// connection, closing it when handle returns.
func serveTCP(tb testing.TB, addr netip.AddrPort, handle func(net.Conn)) {
	tb.Helper()
	testutil.ServeTCP(tb, addr.String(), handle)
}

// echoApp answers each line it reads with "<addr>: <line>".
func echoApp(t testing.TB, addr netip.AddrPort) {
	t.Helper()
	serveTCP(t, addr, func(c net.Conn) {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			fmt.Fprintf(c, "%s: %s\n", addr, sc.Text())
		}
	})
}

// dial connects from src to the listener at via, as if redirected there
// on the way to dst.
func (m *mesh) dial(t testing.TB, src netip.Addr, via, dst netip.AddrPort) net.Conn {
	t.Helper()
	c, err := m.redirected(context.Background(), src, via, dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// redirected is dial for goroutines other than the test's: it returns the
// error, and the caller closes the connection.
func (m *mesh) redirected(ctx context.Context, src netip.Addr, via, dst netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
	c, err := d.DialContext(ctx, "tcp", via.String())
	if err != nil {
		return nil, err
	}
	m.redir.set(c.LocalAddr().(*net.TCPAddr).AddrPort(), dst)
	return c, nil
}

// outbound connects from workload address src through node A's outbound
// listener to dst.
func (m *mesh) outbound(t testing.TB, src netip.Addr, dst netip.AddrPort) net.Conn {
	t.Helper()
	return m.dial(t, src, m.a.z.OutboundAddr(), dst)
}

// roundTrip sends a line and returns the answer, or the error.
func roundTrip(c net.Conn, msg string) (string, error) {
	if _, err := fmt.Fprintf(c, "%s\n", msg); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(line, "\n"), nil
}

func expectEcho(t testing.TB, c net.Conn, from netip.AddrPort, msg string) {
	t.Helper()
	got, err := roundTrip(c, msg)
	if err != nil {
		t.Fatalf("round trip %q: %v", msg, err)
	}
	if want := fmt.Sprintf("%s: %s", from, msg); got != want {
		t.Errorf("round trip: got %q, want %q", got, want)
	}
}

func expectRefused(t testing.TB, c net.Conn) {
	t.Helper()
	got, err := roundTrip(c, "hello")
	if err == nil {
		t.Fatalf("round trip: got %q, want the connection closed", got)
	}
}

// readinessAddr is Config.ReadinessAddr of a shared mesh's tunnels.
func readinessAddr(shared bool, addr string) string {
	if shared {
		return addr
	}
	return ""
}
