// Package waypoint is Ambit's waypoint proxy: it runs the Envoy
// configuration istiod serves waypoints (Istio's connect_terminate,
// main_internal and connect_originate listeners; inbound-vip clusters
// whose endpoints are the connect_originate internal listener) with
// Envoy's semantics for exactly that subset. HBONE arrives on 15008; each
// CONNECT runs connect_terminate's HTTP filters (set_filter_state) and is
// handed in process, without a socket, to the internal listener its
// route's cluster names; there the filter_chain_matcher picks a chain by
// destination IP, port and application protocol; an HTTP connection
// manager routes each HTTP/1.1 or HTTP/2 (h2c, gRPC) request (RBAC,
// fault, CORS, route matching, rewrites, redirects, direct responses,
// weighted clusters, timeouts, retries, mirrors), a tcp_proxy each
// connection; upstream requests are balanced (round robin or least
// request) under the cluster's circuit breakers and outlier detection,
// over HTTP/1.1 or multiplexed HTTP/2 connections that go through
// connect_originate as HBONE to the endpoint's podIP:15008.
//
// Configuration is an immutable config.Snapshot swapped atomically: a
// connection's chain is chosen once, as Envoy's, but each request on it
// reads the snapshot current when it arrives (its chain looked up again
// by name), so a new route or RBAC rule applies to the next request on
// an open connection, while requests in flight finish with the snapshot
// they started with.
package waypoint

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambitmesh/ambit/internal/hbone"
	"github.com/ambitmesh/ambit/internal/hbone/pool"
	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/internal/tracker"
	"github.com/ambitmesh/ambit/waypoint/config"
)

// Config configures a Proxy.
type Config struct {
	// Identity is the waypoint's own SPIFFE identity; Certificates
	// provides its certificate, Roots the mesh roots.
	Identity     identity.Identity
	Certificates identity.Source
	Roots        *x509.CertPool
	// Dialer makes upstream TCP connections (HBONE to pods); nil is a
	// net.Dialer.
	Dialer interface {
		DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	}
	Log *slog.Logger
}

// Proxy is the waypoint's data path.
type Proxy struct {
	cfg  Config
	log  *slog.Logger
	snap atomic.Pointer[config.Snapshot]

	server    *hbone.Server
	pool      *pool.Pool
	transport *http.Transport
	// h2transport reaches HTTP/2 clusters (h2.go).
	h2transport *http.Transport
	// clusters is the runtime state of clusters by name (balance.go).
	clusters sync.Map
	conns    tracker.Tracker[net.Conn]
	stats    *Stats
	// sanMatchers: see sanCheck.
	sanMatchers sync.Map

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Filter-state keys Istio's waypoint config uses.
const (
	keyOriginalDstLocal  = "envoy.filters.listener.original_dst.local_ip"
	keyOriginalDstRemote = "envoy.filters.listener.original_dst.remote_ip"
	metaOriginalDst      = "envoy.filters.listener.original_dst"
)

// New builds a proxy; it serves once given a snapshot and a listener.
func New(cfg Config) (*Proxy, error) {
	if cfg.Identity.IsZero() || cfg.Certificates == nil || cfg.Roots == nil {
		return nil, errors.New("new waypoint: identity, certificates and roots are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{}
	}
	p := &Proxy{cfg: cfg, log: cfg.Log.With(logkey.Component, "waypoint"), stats: newStats()}
	p.stats.clusters = p.eachClusterStat
	p.ctx, p.cancel = context.WithCancel(context.Background())
	verifier := &identity.Verifier{Roots: cfg.Roots}
	p.server = &hbone.Server{
		Certificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return cfg.Certificates.Certificate(context.Background(), cfg.Identity)
		},
		Verifier: verifier,
		Handler:  hbone.HandlerFunc(p.serveConnect),
		Log:      p.log,
	}
	p.pool = &pool.Pool{
		Dial: func(ctx context.Context, key pool.Key) (*hbone.ClientConn, error) {
			cert, err := cfg.Certificates.Certificate(ctx, cfg.Identity)
			if err != nil {
				return nil, fmt.Errorf("certificate of %s: %w", cfg.Identity, err)
			}
			return hbone.Dial(ctx, key.Addr, hbone.ClientConfig{Certificate: cert, Verifier: verifier, Match: p.sanCheck(key), Dialer: cfg.Dialer})
		},
	}
	p.transport = &http.Transport{
		DialContext:         p.dialHTTP,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
		// The waypoint forwards what it gets, proxies nothing further.
		Proxy: nil,
	}
	p.h2transport = p.newH2Transport()
	tr := newTracer(p)
	p.stats.tel.tracer = tr
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		tr.run(p.ctx)
	}()
	return p, nil
}

// Update installs a new snapshot: the next connection and the next
// request on an open connection use it. Its warnings (a fail-closed
// filter, a part of the config left out or not recorded) are logged when
// they are new: a warning the previous snapshot had too is not repeated
// at every push.
func (p *Proxy) Update(s *config.Snapshot) {
	prev := p.snap.Swap(s)
	var had []string
	if prev != nil {
		had = prev.Warnings
	}
	for _, w := range s.Warnings {
		if !slices.Contains(had, w) {
			p.log.Warn("config applies with a warning", logkey.Error, w)
		}
	}
}

// Snapshot is the current configuration, nil before the first.
func (p *Proxy) Snapshot() *config.Snapshot { return p.snap.Load() }

// Stats are the proxy's counters.
func (p *Proxy) Stats() *Stats { return p.stats }

// ServeHBONE accepts HBONE tunnels on ln (the connect_terminate
// listener's socket) until Close.
func (p *Proxy) ServeHBONE(ln net.Listener) error { return p.server.Serve(ln) }

// Close stops accepting, ends open connections and upstream pools.
func (p *Proxy) Close() error {
	p.cancel()
	err := p.server.Close()
	for _, c := range p.conns.Stop() {
		c.Close()
	}
	p.pool.Close()
	p.transport.CloseIdleConnections()
	p.h2transport.CloseIdleConnections()
	p.closePools()
	p.wg.Wait()
	return err
}

// Shutdown stops accepting and waits for open connections to end, up to
// ctx, then closes the rest.
func (p *Proxy) Shutdown(ctx context.Context) error {
	err := p.server.Shutdown(ctx)
	p.Close()
	return err
}

// connInfo is what a downstream connection carries into a listener:
// addresses, TLS identities, filter state and passthrough metadata.
type connInfo struct {
	local, remote  netip.AddrPort
	peer, localSAN string
	fs             map[string]string
	meta           map[string]map[string]string
}

// serveConnect handles one CONNECT on the HBONE listener: the socket
// listener's single TLS chain, an HTTP connection manager whose route
// upgrades CONNECT to a cluster (main_internal).
func (p *Proxy) serveConnect(ctx context.Context, r *hbone.Request, st *hbone.ServerStream) {
	snap := p.snap.Load()
	var l *config.Listener
	if snap != nil {
		for _, x := range snap.Listeners {
			if !x.Internal && x.Address.Port() == r.LocalAddr.Port() && len(x.Chains) == 1 && x.Chains[0].TLS {
				l = x
			}
		}
	}
	if l == nil || l.Chains[0].HCM == nil {
		st.Refuse(http.StatusServiceUnavailable, errors.New("no connect_terminate listener in the config"))
		return
	}
	hcm := l.Chains[0].HCM
	ci := &connInfo{local: r.LocalAddr, remote: r.PeerAddr, peer: r.Peer.String(), localSAN: p.cfg.Identity.String(), fs: map[string]string{}}
	req := &http.Request{Method: http.MethodConnect, Host: r.Target.String(), Header: r.Header, RequestURI: r.Target.String()}
	v := &view{req: req, ci: ci, fs: ci.fs}
	for _, f := range hcm.Filters {
		switch f.Kind {
		case config.FilterSetFilterState:
			v.setFilterState(f.SetFilterState)
		case config.FilterRBAC:
			if res, pol, ok := f.RBAC.ShadowResult(v); ok {
				p.shadowResult(ctx, f.RBAC, res, pol)
				ci.setShadowMeta(config.RBACMetadataHTTP, f.RBAC.ShadowPrefix, res, pol)
			}
			if ok, _ := f.RBAC.Rules.Allowed(v); !ok {
				st.Refuse(http.StatusForbidden, errors.New("RBAC: access denied"))
				return
			}
		}
	}
	rt := selectRoute(hcm, v, req)
	if rt == nil || rt.Action == nil || !rt.Action.Connect {
		st.Refuse(http.StatusNotFound, errors.New("no route upgrades this CONNECT"))
		return
	}
	c := snap.Clusters[rt.Action.Cluster]
	if c == nil {
		st.Refuse(rt.Action.ClusterNotFoundCode, fmt.Errorf("cluster %s not found", rt.Action.Cluster))
		return
	}
	ep := c.Pick()
	if ep == nil {
		st.Refuse(http.StatusServiceUnavailable, fmt.Errorf("cluster %s: no healthy upstream", c.Name))
		return
	}
	if ep.Listener == "" {
		up, err := p.dialEndpoint(ctx, snap, c, ep, ci)
		if err != nil {
			st.Refuse(http.StatusServiceUnavailable, err)
			return
		}
		if st.Accept() != nil {
			up.Close()
			return
		}
		hbone.Join(st, up)
		return
	}
	il := snap.Listeners[ep.Listener]
	if il == nil {
		st.Refuse(http.StatusServiceUnavailable, fmt.Errorf("internal listener %s not found", ep.Listener))
		return
	}
	if st.Accept() != nil {
		return
	}
	p.serveInternal(ctx, snap, il, st, upstreamInfo(ci, c, ep))
}

// upstreamInfo is what a connection to an internal listener carries: the
// filter state shared with upstream and the endpoint's passthrough
// metadata.
func upstreamInfo(ci *connInfo, c *config.Cluster, ep *config.Endpoint) *connInfo {
	out := &connInfo{fs: map[string]string{}, meta: map[string]map[string]string{}}
	if ci != nil {
		for k, v := range ci.fs {
			out.fs[k] = v
		}
		out.remote = ci.local
	}
	for _, ns := range c.PassthroughHost {
		if md, ok := ep.Metadata[ns]; ok {
			out.meta[ns] = md
		}
	}
	return out
}

// restoreOriginalDst is the original_dst listener filter on an internal
// listener: the local address from passthrough metadata, else from
// filter state; the remote from filter state.
func restoreOriginalDst(l *config.Listener, ci *connInfo) {
	if !l.OriginalDst {
		return
	}
	if v, ok := ci.meta[metaOriginalDst]["local"]; ok {
		if a, err := netip.ParseAddrPort(v); err == nil {
			ci.local = a
		}
	} else if v, ok := ci.fs[keyOriginalDstLocal]; ok {
		if a, err := netip.ParseAddrPort(v); err == nil {
			ci.local = a
		}
	}
	if v, ok := ci.fs[keyOriginalDstRemote]; ok {
		if a, err := netip.ParseAddrPort(v); err == nil {
			ci.remote = a
		}
	}
}

// serveInternal runs an accepted connection through an internal
// listener: original_dst, chain selection, network filters, then its HTTP
// connection manager or tcp_proxy. It closes c.
func (p *Proxy) serveInternal(ctx context.Context, snap *config.Snapshot, l *config.Listener, c net.Conn, ci *connInfo) {
	defer c.Close()
	if !p.conns.Add(c) {
		return
	}
	defer p.conns.Remove(c)
	restoreOriginalDst(l, ci)
	sc := newSniffConn(metered(c))
	chain := p.selectChain(l, sc, ci)
	if chain == nil {
		p.log.Debug("no filter chain matched", logkey.Listener, l.Name, logkey.DestinationAddr, ci.local.String())
		p.stats.noChain.Add(1)
		return
	}
	if !p.networkFilters(chain, ci) {
		return
	}
	switch {
	case chain.TCP != nil:
		p.proxyTCP(ctx, snap, chain.TCP, sc, ci)
	case chain.HCM != nil:
		p.serveHTTP(ctx, l.Name, chain.Name, sc, ci)
		if sc.answered {
			halfClose(sc) // (after the last request was recorded)
		}
	}
}

// shadowResult counts and logs (at debug, as Envoy's "shadow denied,
// matched policy ...") one RBAC shadow result.
func (p *Proxy) shadowResult(ctx context.Context, rb *config.RBAC, result, policy string) {
	p.stats.shadowResult(rb.Shadow.Action, result)
	if p.log.Enabled(ctx, slog.LevelDebug) {
		p.log.Debug("shadow "+result, logkey.Policy, cmpOr(policy, "none"), logkey.Listener, rb.StatPrefix)
	}
}

// setShadowMeta records a shadow result in the connection's dynamic
// metadata (namespace ns; keys after prefix), as Envoy's network RBAC
// filter does. It runs before the connection's first request, while
// nothing else reads ci.
func (ci *connInfo) setShadowMeta(ns, prefix, result, policy string) {
	if ci.meta == nil {
		ci.meta = map[string]map[string]string{}
	}
	ci.meta[ns] = withShadow(ci.meta[ns], prefix, result, policy)
}

// withShadow is md (copied, never changed) with a shadow result's keys.
func withShadow(md map[string]string, prefix, result, policy string) map[string]string {
	out := make(map[string]string, len(md)+2)
	maps.Copy(out, md)
	out[prefix+config.ShadowEngineResultKey] = result
	delete(out, prefix+config.ShadowEffectivePolicyKey)
	if policy != "" {
		out[prefix+config.ShadowEffectivePolicyKey] = policy
	}
	return out
}

// networkFilters runs a chain's set_filter_state and RBAC network
// filters on a new connection: false when RBAC denies it.
func (p *Proxy) networkFilters(chain *config.Chain, ci *connInfo) bool {
	if len(chain.SetFilterState) > 0 {
		v := &view{ci: ci, fs: ci.fs}
		v.setFilterState(chain.SetFilterState)
	}
	for _, rb := range chain.RBAC {
		v := &view{ci: ci, fs: ci.fs}
		if res, pol, ok := rb.ShadowResult(v); ok {
			p.shadowResult(context.Background(), rb, res, pol)
			ci.setShadowMeta(config.RBACMetadataNetwork, rb.ShadowPrefix, res, pol)
		}
		if ok, pol := rb.Rules.Allowed(v); !ok {
			p.stats.rbacDenied.Add(1)
			p.log.Info("connection denied by RBAC", logkey.Policy, pol, logkey.DestinationAddr, ci.local.String(), logkey.Peer, ci.fs["io.istio.peer_principal"])
			return false
		}
	}
	return true
}

// selectChain walks the listener's filter_chain_matcher; a listener
// without one has a single chain.
func (p *Proxy) selectChain(l *config.Listener, sc *sniffConn, ci *connInfo) *config.Chain {
	if l.Matcher == nil {
		if len(l.Chains) == 1 {
			return l.Chains[0]
		}
		return l.Default
	}
	in := &inputs{l: l, sc: sc, ci: ci}
	name := l.Matcher.Match(in)
	if in.timedOut {
		return nil
	}
	if name == "" {
		return l.Default
	}
	return l.Chain(name)
}

// inputs are the matcher inputs of one connection.
type inputs struct {
	l  *config.Listener
	sc *sniffConn
	ci *connInfo
	// timedOut: the listener filters timed out and the listener does not
	// continue without them.
	timedOut bool
}

func (in *inputs) Input(kind config.Input, key string) (string, bool) {
	switch kind {
	case config.InputDestinationIP:
		return in.ci.local.Addr().String(), in.ci.local.IsValid()
	case config.InputDestinationPort:
		return fmt.Sprint(in.ci.local.Port()), in.ci.local.IsValid()
	case config.InputSourceIP:
		return in.ci.remote.Addr().String(), in.ci.remote.IsValid()
	case config.InputFilterState:
		v, ok := in.ci.fs[key]
		return v, ok
	case config.InputApplicationProtocol:
		if !in.l.HTTPInspector {
			return "", false
		}
		for _, port := range in.l.InspectorDisabledPorts {
			if port == in.ci.local.Port() {
				return "", false
			}
		}
		proto, timedOut := in.sc.sniffWithin(in.l.FiltersTimeout)
		if timedOut && !in.l.ContinueOnTimeout {
			in.timedOut = true
		}
		if proto == "" {
			return "", false
		}
		return "'" + proto + "'", true
	default:
		return "", false
	}
}
