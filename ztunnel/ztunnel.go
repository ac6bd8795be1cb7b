// Package ztunnel assembles the node tunnel: it opens the outbound
// listener, one HBONE and one plaintext inbound listener per local
// workload, the metrics, admin and readiness servers, keeps certificates
// for local workloads, re-checks open connections when policy changes, and
// drains on shutdown.
package ztunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/ambitmesh/ambit/internal/hbone"
	"github.com/ambitmesh/ambit/internal/hbone/pool"
	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/internal/mesh"
	"github.com/ambitmesh/ambit/internal/origdst"
	"github.com/ambitmesh/ambit/internal/telemetry"
	"github.com/ambitmesh/ambit/ztunnel/admin"
	"github.com/ambitmesh/ambit/ztunnel/config"
	"github.com/ambitmesh/ambit/ztunnel/inbound"
	"github.com/ambitmesh/ambit/ztunnel/outbound"
)

// Default ports, as Istio's.
const (
	OutboundPort         = mesh.OutboundPort
	InboundPlaintextPort = mesh.InboundPlaintextPort
	AdminPort            = mesh.AdminPort
	MetricsPort          = mesh.MetricsPort
	ReadinessPort        = mesh.ReadinessPort
	LivenessPort         = mesh.LivenessPort
	DNSPort              = mesh.DNSPort
)

// Config is everything the tunnel needs. Zero values take Istio's
// defaults where there is one.
type Config struct {
	// Node is this node's name; workloads with this node are local.
	Node string
	// Store holds the mesh model; a source (static file, xDS) fills it.
	Store *config.Store
	// Certificates issues workload certificates: istiod's CA through
	// internal/caclient, or the test CA. The tunnel keeps the certificates
	// of its local workloads and renews them at half-life.
	Certificates identity.Source
	// Roots are the mesh trust anchors.
	Roots *x509.CertPool
	// Clock drives certificate renewal; nil means the real clock. Tests
	// inject a fake one.
	Clock identity.Clock

	// OutboundAddr is the outbound listener, e.g. "127.0.0.1:15001".
	OutboundAddr string
	// HBONEPort and PlaintextPort are the inbound ports opened on every
	// local workload's address; 0 means 15008 and 15006.
	HBONEPort, PlaintextPort uint16
	// AdminAddr, MetricsAddr and ReadinessAddr are the HTTP listeners;
	// empty disables one.
	AdminAddr, MetricsAddr, ReadinessAddr string
	// LivenessAddr answers /healthz/live whenever the process runs, on a
	// listener of its own: load never makes it fail (a failing liveness
	// probe restarts ztunnel and drops the whole node's traffic).
	LivenessAddr string

	// ListenInbound opens an inbound listener on a local workload's
	// address; nil means net.Listen in the tunnel's own network
	// namespace. The node agent will supply one that opens the socket
	// inside the pod's namespace (Istio's in-pod mode).
	ListenInbound func(w *config.Workload, addr netip.AddrPort) (net.Listener, error)
	// Shared opens every listener with SO_REUSEPORT, and the newest
	// listener on an address takes its new connections
	// (origdst.NewestTakesOver): the next ztunnel of an upgrade listens
	// beside this one on the node, takes over new connections once it
	// is ready, and this one drains (docs/upgrades.md). With Transparent
	// it needs Linux 6.5 (origdst.AssignsReusePort).
	Shared bool
	// ListenWhenReady opens the data listeners (outbound, inbound) only
	// once Ready: before, the redirection keeps delivering new
	// connections to the ztunnel that still serves (with Shared) or
	// drops them (fail closed), instead of handing them to a tunnel that
	// has no config or certificates yet. The HTTP servers open at Start.
	ListenWhenReady bool
	// HandoverWait, with Shared and a readiness listener, is how long
	// Shutdown keeps the listeners open, waiting for another tunnel of
	// the node to answer ready on the shared readiness port, before it
	// closes them and drains. In an upgrade the new tunnel is ready
	// before the old one is told to stop, and the wait ends at once; it
	// covers the kubelet having taken the old tunnel's answer to a probe
	// for the new one's. 0 closes at once.
	HandoverWait time.Duration
	// Transparent is for Ambit's eBPF redirection (and TPROXY): listeners
	// are transparent, inbound ones bind workload addresses that are not
	// the node's, and a connection's original destination is its local
	// address. Without it, redirection is NAT (iptables REDIRECT) and the
	// original destination comes from SO_ORIGINAL_DST.
	Transparent bool
	// LocalMark, in transparent mode, is the socket mark that the node's
	// policy routing delivers locally (bpf/redirect.Mark, 0x400). HBONE
	// connections to workloads on this node carry it, so they reach this
	// tunnel's own inbound listener on the workload's address: the
	// same-node path, with the destination's full inbound checks.
	LocalMark uint32
	// OrigDst finds a redirected connection's original destination;
	// nil means what Transparent says. Tests inject their own.
	OrigDst func(net.Conn) (netip.AddrPort, error)
	// BindSource makes HBONE connections leave from the source
	// workload's address, so the peer sees and authorizes it.
	BindSource bool
	// PreserveSource makes the connections this tunnel makes to pods
	// leave from their client's address, as Istio's ztunnel does: to
	// local workloads (see inbound.Inbound.PreserveSource) and passthrough
	// to pods outside the mesh (outbound.Outbound.PreserveSource). In
	// transparent mode the eBPF redirection delivers the replies.
	PreserveSource bool
	// PodPathMark, in transparent mode, is the socket mark of the
	// connections this tunnel makes on behalf of a pod of this node
	// (bpf/redirect.PathMark, 0x800): HBONE to other nodes and
	// passthrough. They leave from the pod's address, and the node agent
	// routes their packets back through the pod's own veth, so the node's
	// firewall and the primary CNI's policy treat them as the pod's
	// traffic. 0 makes HBONE leave from the node's address and
	// passthrough (pods outside the mesh only) straight out of the node.
	PodPathMark uint32

	// MaxStreams and IdleTimeout tune the connection pool.
	MaxStreams  int
	IdleTimeout time.Duration

	// Log is the operational log; AccessLog gets one line per
	// connection (default: Log). LogLevel, if set, is what /logging
	// adjusts.
	Log       *slog.Logger
	AccessLog *slog.Logger
	LogLevel  *slog.LevelVar
}

// Ztunnel is a running node tunnel.
type Ztunnel struct {
	cfg      Config
	log      *slog.Logger
	certs    *identity.Cache
	verifier *identity.Verifier
	metrics  *telemetry.Metrics
	pool     *pool.Pool
	in       *inbound.Inbound
	out      *outbound.Outbound

	// instance tells this tunnel's readiness answers from another's
	// on a shared port (the Ambit-Instance header).
	instance string
	// readyAddr is the bound readiness listener.
	readyAddr string

	mu      sync.Mutex
	serving bool // data listeners open (see Config.ListenWhenReady)
	outLn   net.Listener
	inLns   map[netip.Addr][]net.Listener
	https   []*http.Server
	unsub   func()
	stopped bool
}

// New builds a tunnel from cfg; Start runs it.
func New(cfg Config) (*Ztunnel, error) {
	if cfg.Node == "" {
		return nil, errors.New("new ztunnel: no node name")
	}
	if cfg.Store == nil || cfg.Certificates == nil || cfg.Roots == nil {
		return nil, errors.New("new ztunnel: want a config store, a certificate source and mesh roots")
	}
	if cfg.HBONEPort == 0 {
		cfg.HBONEPort = hbone.Port
	}
	if cfg.PlaintextPort == 0 {
		cfg.PlaintextPort = InboundPlaintextPort
	}
	if cfg.ListenInbound == nil {
		cfg.ListenInbound = func(_ *config.Workload, addr netip.AddrPort) (net.Listener, error) {
			return origdst.Listen(context.Background(), addr.String(), origdst.ListenOptions{Transparent: cfg.Transparent, Shared: cfg.Shared})
		}
	}
	if cfg.OrigDst == nil {
		cfg.OrigDst = origdst.Get
		if cfg.Transparent {
			cfg.OrigDst = origdst.Transparent(outboundPort(cfg.OutboundAddr), cfg.PlaintextPort, cfg.HBONEPort)
		}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.AccessLog == nil {
		cfg.AccessLog = cfg.Log
	}
	log := cfg.Log.With(logkey.Node, cfg.Node)
	z := &Ztunnel{
		cfg:      cfg,
		log:      log,
		verifier: &identity.Verifier{Roots: cfg.Roots},
		metrics:  telemetry.New(),
		inLns:    map[netip.Addr][]net.Listener{},
		instance: fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano()),
	}
	z.certs = &identity.Cache{Source: cfg.Certificates, Clock: cfg.Clock, OnRefresh: z.onRefresh}
	z.pool = &pool.Pool{
		MaxStreams: cfg.MaxStreams, IdleTimeout: cfg.IdleTimeout, Dial: z.dialHBONE,
		// A pooled connection takes new streams only while it presents
		// its source's current certificate: after a rotation new streams
		// get a new connection, open ones keep theirs.
		Current: func(key pool.Key, cc *hbone.ClientConn) bool { return cc.Certificate() == z.certs.Current(key.Source) },
	}
	z.in = &inbound.Inbound{
		Node: cfg.Node, Store: cfg.Store, Certs: z.certs, Verifier: z.verifier, Metrics: z.metrics,
		Log: log.With(logkey.Component, "inbound"), AccessLog: cfg.AccessLog, OrigDst: cfg.OrigDst, Transparent: cfg.Transparent,
		// The tunnel never leads to a port of its own, wherever it
		// listens.
		ReservedPorts: []uint16{cfg.HBONEPort, cfg.PlaintextPort, OutboundPort, outboundPort(cfg.OutboundAddr),
			AdminPort, MetricsPort, ReadinessPort, LivenessPort, DNSPort},
		// Unauthenticated connections may hold at most a quarter of the
		// descriptors the process may open.
		MaxHandshakes:  handshakeBound(),
		PreserveSource: cfg.PreserveSource,
		Pool:           z.pool,
	}
	if cfg.Transparent {
		// Workloads have addresses of their own, never the node's: the
		// tunnel never leads into the node itself. (On loopback, in tests
		// and development, workload addresses are the host's.)
		z.in.NodeAddr = new(origdst.LocalAddrs).Contains
	}
	z.out = &outbound.Outbound{
		Node: cfg.Node, Store: cfg.Store, Pool: z.pool, Metrics: z.metrics,
		Log: log.With(logkey.Component, "outbound"), AccessLog: cfg.AccessLog, OrigDst: cfg.OrigDst, Transparent: cfg.Transparent,
		HBONEPort: cfg.HBONEPort, PreserveSource: cfg.PreserveSource,
	}
	if cfg.Transparent {
		z.out.PodPathMark = cfg.PodPathMark
	}
	return z, nil
}

// onRefresh logs the outcome of a certificate fetch; the last missing
// certificate may make the tunnel ready to serve.
func (z *Ztunnel) onRefresh(r identity.Refresh) {
	if r.Err != nil {
		z.log.Warn("fetch certificate; retrying", logkey.Identity, r.Identity.String(),
			logkey.NextRefresh, r.Next, logkey.Error, r.Err.Error())
		return
	}
	z.log.Info("certificate issued", logkey.Identity, r.Identity.String(),
		logkey.Serial, r.Certificate.Leaf.SerialNumber.String(),
		logkey.Expires, r.Certificate.Leaf.NotAfter, logkey.NextRefresh, r.Next)
	if z.cfg.ListenWhenReady && !z.Serving() {
		// Not on the refresher's own goroutine: onConfig tracks and
		// forgets certificates.
		go z.onConfig(z.cfg.Store.Snapshot())
	}
}

func (z *Ztunnel) dialHBONE(ctx context.Context, key pool.Key) (*hbone.ClientConn, error) {
	cert, err := z.certs.Certificate(ctx, key.Source)
	if err != nil {
		return nil, err
	}
	cfg := hbone.ClientConfig{Certificate: cert, Verifier: z.verifier, Expected: key.Destination}
	if z.cfg.BindSource && key.SourceAddr.IsValid() {
		cfg.Dialer = &net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(key.SourceAddr, 0))}
	}
	sameNode := false
	if z.cfg.Transparent {
		// Only a workload this tunnel serves has a listener here to
		// deliver to; a waypoint's pod on this node speaks HBONE itself.
		w := z.cfg.Store.Snapshot().WorkloadByAddr(key.Addr.Addr())
		sameNode = w != nil && w.ServedOn(z.cfg.Node)
	}
	if z.cfg.Transparent && z.cfg.PodPathMark != 0 && key.SourceAddr.IsValid() && !sameNode {
		// The pod's own path out of the node, from its address.
		cfg.Dialer = origdst.FromDialer(key.SourceAddr, z.cfg.PodPathMark)
	}
	if z.cfg.Transparent && z.cfg.LocalMark != 0 {
		if sameNode {
			// From an address the node owns (not the default, which would
			// be the non-local destination itself) and not loopback (kube-
			// proxy drops untracked replies to 127/8).
			src, err := origdst.NodeAddr()
			if err != nil {
				return nil, fmt.Errorf("dial hbone %s on this node: %w", key.Addr, err)
			}
			cfg.Dialer = &net.Dialer{
				Control:   origdst.MarkControl(z.cfg.LocalMark),
				LocalAddr: &net.TCPAddr{IP: src.AsSlice()},
			}
		}
	}
	return hbone.Dial(ctx, key.Addr, cfg)
}

// Start opens the listeners and returns once they are bound; serving goes
// on in the background until Shutdown. With Config.ListenWhenReady the
// data listeners open later, once the tunnel is ready.
func (z *Ztunnel) Start() error {
	listen := func(addr string) (net.Listener, error) {
		return origdst.Listen(context.Background(), addr, origdst.ListenOptions{Shared: z.cfg.Shared})
	}
	ready := admin.Readiness(z.Ready)
	servers := []struct {
		addr string
		h    http.Handler
	}{
		{z.cfg.AdminAddr, admin.Handler(admin.Options{Dump: z.ConfigDump, Level: z.cfg.LogLevel})},
		{z.cfg.MetricsAddr, z.metricsHandler()},
		{z.cfg.ReadinessAddr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set(InstanceHeader, z.instance)
			ready.ServeHTTP(w, r)
		})},
		{z.cfg.LivenessAddr, admin.Liveness()},
	}
	for _, s := range servers {
		if s.addr == "" {
			continue
		}
		ln, err := listen(s.addr)
		if err != nil {
			z.closeListeners()
			return fmt.Errorf("listen %s: %w", s.addr, err)
		}
		if s.addr == z.cfg.ReadinessAddr {
			z.readyAddr = ln.Addr().String()
		}
		srv := &http.Server{Handler: s.h, ReadHeaderTimeout: 10 * time.Second}
		z.mu.Lock()
		z.https = append(z.https, srv)
		z.mu.Unlock()
		go srv.Serve(ln)
	}
	if !z.cfg.ListenWhenReady {
		z.mu.Lock()
		err := z.serveLocked()
		z.mu.Unlock()
		if err != nil {
			z.closeListeners()
			return err
		}
	}
	z.unsub = z.cfg.Store.Subscribe(z.onConfig)
	z.onConfig(z.cfg.Store.Snapshot())
	return nil
}

// serveLocked opens the outbound listener; from now on onConfig opens
// the inbound ones. z.mu is held.
func (z *Ztunnel) serveLocked() error {
	z.serving = true
	if z.cfg.OutboundAddr == "" {
		return nil
	}
	ln, err := origdst.Listen(context.Background(), z.cfg.OutboundAddr,
		origdst.ListenOptions{Transparent: z.cfg.Transparent, Shared: z.cfg.Shared})
	if err != nil {
		return fmt.Errorf("listen outbound %s: %w", z.cfg.OutboundAddr, err)
	}
	z.outLn = ln
	go z.out.Serve(ln)
	return nil
}

// Serving reports whether the data listeners are open.
func (z *Ztunnel) Serving() bool {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.serving
}

func (z *Ztunnel) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/stats/prometheus", z.metrics.Handler())
	mux.Handle("/metrics", z.metrics.Handler())
	return mux
}

// onConfig applies a new snapshot: listeners for local workloads appear
// and disappear, the certificates of local workloads are fetched ahead
// of their first connection and those of departed ones forgotten, and
// open connections are re-checked against the policies.
func (z *Ztunnel) onConfig(snap *config.Snapshot) {
	z.mu.Lock()
	if z.stopped {
		z.mu.Unlock()
		return
	}
	want := map[netip.Addr]*config.Workload{}
	ids := map[identity.Identity]bool{}
	for _, w := range snap.LocalWorkloads(z.cfg.Node) {
		ids[w.Identity()] = true
		for _, a := range w.Addresses {
			want[a.Unmap()] = w
		}
	}
	for _, id := range z.certs.Identities() {
		if !ids[id] {
			z.certs.Forget(id)
		}
	}
	for id := range ids {
		z.certs.Track(id)
	}
	for a, lns := range z.inLns {
		if _, ok := want[a]; !ok {
			for _, ln := range lns {
				ln.Close()
			}
			delete(z.inLns, a)
		}
	}
	if !z.serving && z.cfg.ListenWhenReady && z.readyFor(snap) == nil {
		if err := z.serveLocked(); err != nil {
			// Fail closed: the redirection keeps dropping new
			// connections it cannot deliver; the next update retries.
			z.serving = false
			z.log.Error("open data listeners", logkey.Error, err.Error())
		} else {
			z.log.Info("ready: data listeners open", logkey.Version, snap.Version)
		}
	}
	for a, w := range want {
		if !z.serving {
			break
		}
		if _, ok := z.inLns[a]; ok {
			continue
		}
		hb, err := z.cfg.ListenInbound(w, netip.AddrPortFrom(a, z.cfg.HBONEPort))
		if err != nil {
			z.log.Error("listen hbone", logkey.Addr, a.String(), logkey.Error, err.Error())
			continue
		}
		pt, err := z.cfg.ListenInbound(w, netip.AddrPortFrom(a, z.cfg.PlaintextPort))
		if err != nil {
			hb.Close()
			z.log.Error("listen plaintext", logkey.Addr, a.String(), logkey.Error, err.Error())
			continue
		}
		z.inLns[a] = []net.Listener{hb, pt}
		go z.in.ServeHBONE(hb)
		go z.in.ServePlaintext(pt)
	}
	z.mu.Unlock()
	if n := z.in.Reevaluate(snap); n > 0 {
		z.log.Info("closed connections after policy change", logkey.Count, n, logkey.Version, snap.Version)
	}
}

// Ready is nil once the config is loaded, every local workload has a
// certificate and the data listeners are open; otherwise it says what is
// missing. (Readiness ends an upgrade's overlap: the previous tunnel of
// the node drains once this one is ready, so it must be serving.)
func (z *Ztunnel) Ready() error {
	if err := z.readyFor(z.cfg.Store.Snapshot()); err != nil {
		return err
	}
	if !z.Serving() {
		return errors.New("data listeners not open yet")
	}
	return nil
}

// readyFor is nil once the config is loaded and every local workload of
// snap has a certificate: the tunnel can serve.
func (z *Ztunnel) readyFor(snap *config.Snapshot) error {
	if !z.cfg.Store.Loaded() {
		return errors.New("config not loaded")
	}
	for _, w := range snap.LocalWorkloads(z.cfg.Node) {
		if !z.certs.Has(w.Identity()) {
			return fmt.Errorf("no certificate yet for %s", w.Identity())
		}
	}
	return nil
}

// WaitReady blocks until Ready is nil or ctx is done.
func (z *Ztunnel) WaitReady(ctx context.Context) error {
	for _, w := range z.cfg.Store.Snapshot().LocalWorkloads(z.cfg.Node) {
		if _, err := z.certs.Certificate(ctx, w.Identity()); err != nil {
			return err
		}
	}
	// Open the data listeners now rather than on the certificate's
	// refresh callback, which runs apart.
	z.onConfig(z.cfg.Store.Snapshot())
	return z.Ready()
}

// ConfigDump returns the current model and certificates.
func (z *Ztunnel) ConfigDump() any {
	snap := z.cfg.Store.Snapshot()
	return admin.Dump{
		Node: z.cfg.Node, Version: snap.Version,
		Workloads: snap.Workloads, Services: snap.Services, Policies: snap.Policies,
		Certificates: z.certs.Dump(),
	}
}

// OutboundAddr is the bound outbound listener address.
func (z *Ztunnel) OutboundAddr() netip.AddrPort {
	if z.outLn == nil {
		return netip.AddrPort{}
	}
	return z.outLn.Addr().(*net.TCPAddr).AddrPort()
}

// ReadinessAddr is the bound readiness listener address, empty without one.
func (z *Ztunnel) ReadinessAddr() string { return z.readyAddr }

// Metrics are the tunnel's collectors.
func (z *Ztunnel) Metrics() *telemetry.Metrics { return z.metrics }

// PoolConns is the number of pooled HBONE connections per key.
func (z *Ztunnel) PoolConns() map[pool.Key]int { return z.pool.Conns() }

// Certificate returns the certificate the tunnel holds for id, fetching
// it if needed.
func (z *Ztunnel) Certificate(ctx context.Context, id identity.Identity) (*tls.Certificate, error) {
	return z.certs.Certificate(ctx, id)
}

func (z *Ztunnel) closeListeners() {
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.outLn != nil {
		z.outLn.Close()
	}
	for a, lns := range z.inLns {
		for _, ln := range lns {
			ln.Close()
		}
		delete(z.inLns, a)
	}
}

// Shutdown drains the tunnel: it stops accepting, lets open connections
// finish until ctx is done, closes the rest, and stops the HTTP servers.
func (z *Ztunnel) Shutdown(ctx context.Context) error {
	z.mu.Lock()
	z.stopped = true
	z.mu.Unlock()
	if z.unsub != nil {
		z.unsub()
	}
	z.awaitSuccessor(ctx)
	z.closeListeners()
	var wg sync.WaitGroup
	var inErr, outErr error
	wg.Go(func() { inErr = z.in.Shutdown(ctx) })
	wg.Go(func() { outErr = z.out.Shutdown(ctx) })
	wg.Wait()
	z.pool.Close()
	z.certs.Close()
	z.mu.Lock()
	for _, s := range z.https {
		s.Close()
	}
	z.mu.Unlock()
	return errors.Join(inErr, outErr)
}

// InstanceHeader names the tunnel instance that answered a readiness
// request: on a shared readiness port, a tunnel tells its own answers
// from a successor's.
const InstanceHeader = "Ambit-Instance"

// awaitSuccessor waits, up to Config.HandoverWait or until ctx is done,
// until another tunnel answers ready on the shared readiness port (the
// newest listener takes the connection).
func (z *Ztunnel) awaitSuccessor(ctx context.Context) {
	if !z.cfg.Shared || z.cfg.HandoverWait <= 0 || z.readyAddr == "" {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, z.cfg.HandoverWait)
	defer cancel()
	_, port, _ := net.SplitHostPort(z.readyAddr)
	url := "http://" + net.JoinHostPort("127.0.0.1", port) + "/healthz/ready"
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Second}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return
		}
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if id := resp.Header.Get(InstanceHeader); resp.StatusCode == http.StatusOK && id != z.instance {
				z.log.Info("successor ready; closing listeners", logkey.Instance, id)
				return
			}
		}
		select {
		case <-ctx.Done():
			z.log.Info("no successor ready; closing listeners")
			return
		case <-tick.C:
		}
	}
}

// handshakeBound is how many connections may be in the HBONE handshake
// at once: hbone's default, or a quarter of the process's descriptor
// limit if that is less (Go raises the soft limit to the hard one at
// start; this is what is left).
func handshakeBound() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur == 0 {
		return hbone.DefaultMaxHandshakes
	}
	return int(min(uint64(hbone.DefaultMaxHandshakes), max(lim.Cur/4, 16)))
}

// outboundPort is the port of the outbound listen address, 15001 if it
// has none.
func outboundPort(addr string) uint16 {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return ap.Port()
	}
	if _, p, err := net.SplitHostPort(addr); err == nil {
		var port uint16
		if _, err := fmt.Sscan(p, &port); err == nil {
			return port
		}
	}
	return mesh.OutboundPort
}
