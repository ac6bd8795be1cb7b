package waypoint

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ambitmesh/ambit/internal/hbone"
	"github.com/ambitmesh/ambit/internal/hbone/pool"
	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/waypoint/config"
)

// Upstream failures, as Envoy's response flags name them.
var (
	// ErrNoHealthyUpstream: the cluster has no usable endpoint (UH).
	ErrNoHealthyUpstream = errors.New("no healthy upstream")
	// ErrClusterNotFound: the route or tcp_proxy names a missing
	// cluster (NC).
	ErrClusterNotFound = errors.New("cluster not found")
	// ErrUpstreamConnect: the connection to the endpoint failed (UF).
	ErrUpstreamConnect = errors.New("upstream connect error")
)

// sanCheck is the check the pool's dial for key applies to the peer: the
// SAN matchers of the cluster that last asked for key (p.sanMatchers,
// pool.Key -> func(identity.Identity) error).
func (p *Proxy) sanCheck(key pool.Key) func(identity.Identity) error {
	if m, ok := p.sanMatchers.Load(key); ok {
		return m.(func(identity.Identity) error)
	}
	return func(identity.Identity) error { return errors.New("no SAN matcher for this connection") }
}

func clusterSANCheck(c *config.Cluster) func(identity.Identity) error {
	return func(id identity.Identity) error {
		if len(c.SANMatch) == 0 {
			return nil // Envoy: no matchers, any identity the roots sign
		}
		for _, m := range c.SANMatch {
			if m(id.String()) {
				return nil
			}
		}
		return fmt.Errorf("identity %s matches none of cluster %s's SAN matchers", id, c.Name)
	}
}

// pickWeighted picks a cluster of a weighted set in proportion to the
// weights; zero weights are never picked.
func pickWeighted(ws []config.WeightedCluster) *config.WeightedCluster {
	var total uint64
	for _, w := range ws {
		total += uint64(w.Weight)
	}
	if total == 0 {
		return nil
	}
	n := rand.Uint64N(total)
	for i := range ws {
		if n < uint64(ws[i].Weight) {
			return &ws[i]
		}
		n -= uint64(ws[i].Weight)
	}
	return nil
}

// proxyTCP is a tcp_proxy: it connects upstream and joins the two.
func (p *Proxy) proxyTCP(ctx context.Context, snap *config.Snapshot, tp *config.TCPProxy, c net.Conn, ci *connInfo) {
	rec := p.beginTCP(c, ci, snap, tp)
	up, err := p.dialTCPProxy(ctx, snap, tp, ci)
	if err != nil {
		p.stats.upstreamFail.Add(1)
		p.log.Info("tcp_proxy upstream failed", logkey.Listener, tp.StatPrefix, logkey.DestinationAddr, ci.local.String(), logkey.Error, err.Error(), logkey.ResponseFlags, flagFor(err))
		rec.close(flagFor(err))
		return
	}
	rec.open(up, "")
	defer rec.close("")
	defer up.Close()
	a, b, stop := withIdleTimeout(c, up, tp.IdleTimeout)
	defer stop()
	hbone.Join(a, b)
}

// dialTCPProxy opens the tcp_proxy's upstream: a cluster's endpoint, or,
// with tunneling_config, a CONNECT to the rendered hostname through the
// cluster.
func (p *Proxy) dialTCPProxy(ctx context.Context, snap *config.Snapshot, tp *config.TCPProxy, ci *connInfo) (conn net.Conn, err error) {
	name := tp.Cluster
	if len(tp.Weighted) > 0 {
		w := pickWeighted(tp.Weighted)
		if w == nil {
			return nil, ErrNoHealthyUpstream
		}
		name = w.Name
	}
	c := snap.Clusters[name]
	if c == nil {
		return nil, fmt.Errorf("%w: %s", ErrClusterNotFound, name)
	}
	ctx, cancel := context.WithTimeout(ctx, c.ConnectTimeout)
	defer cancel()
	slot, err := p.tcpAdmit(ctx, c) // max_connections (connpool.go)
	if err != nil {
		return nil, err
	}
	defer slot.bind(&conn, &err)
	if tp.Tunnel == nil {
		ep := p.tcpPick(c)
		if c.Type == config.ClusterOriginalDst {
			ep = &config.Endpoint{Address: originalDst(c, ci)}
		}
		if ep == nil {
			return nil, fmt.Errorf("cluster %s: %w", c.Name, ErrNoHealthyUpstream)
		}
		return p.dialTCPEndpoint(ctx, snap, c, ep, ci)
	}
	hostname, _ := tp.Tunnel.Eval(&view{ci: ci, fs: ci.fs})
	target, err := netip.ParseAddrPort(hostname)
	if err != nil {
		return nil, fmt.Errorf("tunnel hostname %q: the waypoint tunnels to ip:port only: %w", hostname, err)
	}
	if !c.TLS {
		return nil, fmt.Errorf("cluster %s: tunnelling needs an upstream TLS (HBONE) cluster", c.Name)
	}
	var dst netip.AddrPort
	switch c.Type {
	case config.ClusterOriginalDst:
		dst = originalDst(c, ci)
	default:
		ep := p.tcpPick(c)
		if ep == nil || ep.Listener != "" {
			return nil, fmt.Errorf("cluster %s: %w", c.Name, ErrNoHealthyUpstream)
		}
		dst = ep.Address
	}
	if !dst.IsValid() {
		return nil, fmt.Errorf("cluster %s: no original destination", c.Name)
	}
	key := pool.Key{Source: p.cfg.Identity, Addr: dst}
	p.sanMatchers.Store(key, clusterSANCheck(c))
	h := http.Header{}
	for _, hv := range tp.TunnelHeaders {
		h.Add(hv.Name, hv.Value)
	}
	hc, err := p.pool.Connect(ctx, key, target, h)
	if err != nil {
		return nil, fmt.Errorf("%w: hbone %s via %s: %w", ErrUpstreamConnect, target, dst, err)
	}
	return hc, nil
}

// originalDst is an ORIGINAL_DST cluster's destination: the address in
// the dynamic metadata field the cluster names, when there is one (Istio
// puts a destination's waypoint there), else the connection's local
// address; its port overridden.
func originalDst(c *config.Cluster, ci *connInfo) netip.AddrPort {
	a := ci.local
	if m := c.DstMetadata; m != nil {
		if v, ok := ci.meta[m.Namespace][m.Key]; ok && v != "" {
			if ap, err := netip.ParseAddrPort(v); err == nil {
				a = ap
			} else if ip, err := netip.ParseAddr(v); err == nil {
				a = netip.AddrPortFrom(ip, a.Port())
			}
		}
	}
	if c.PortOverride != 0 && a.IsValid() {
		a = netip.AddrPortFrom(a.Addr(), c.PortOverride)
	}
	return a
}

// dialEndpoint connects to one endpoint: an internal listener in
// process, or a socket.
func (p *Proxy) dialEndpoint(ctx context.Context, snap *config.Snapshot, c *config.Cluster, ep *config.Endpoint, ci *connInfo) (net.Conn, error) {
	if ep.Listener == "" {
		if c.TLS {
			return nil, fmt.Errorf("cluster %s: upstream TLS without tunnelling is not supported", c.Name)
		}
		d := p.cfg.Dialer
		conn, err := d.DialContext(ctx, "tcp", ep.Address.String())
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrUpstreamConnect, err)
		}
		return withKeepalive(c, conn), nil
	}
	l := snap.Listeners[ep.Listener]
	if l == nil {
		return nil, fmt.Errorf("%w: internal listener %s not found", ErrUpstreamConnect, ep.Listener)
	}
	ici := upstreamInfo(ci, c, ep)
	restoreOriginalDst(l, ici)
	// An internal listener whose one chain is a tcp_proxy (Istio's
	// connect_originate) is a dial through: its upstream is the
	// connection, with no copy in between.
	if l.Matcher == nil && len(l.Chains) == 1 && l.Chains[0].TCP != nil {
		chain := l.Chains[0]
		if !p.networkFilters(chain, ici) {
			return nil, fmt.Errorf("%w: denied by listener %s", ErrUpstreamConnect, l.Name)
		}
		return p.dialTCPProxy(ctx, snap, chain.TCP, ici)
	}
	// Any other internal listener serves one end of a pipe.
	a, b := net.Pipe()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.serveInternal(p.ctx, snap, l, b, ici)
	}()
	return a, nil
}

// dialKey carries an HTTP request's upstream choice to the transport's
// dial.
type dialKey struct{}

type dialInfo struct {
	snap    *config.Snapshot
	cluster *config.Cluster
	ep      *config.Endpoint
	ci      *connInfo
	// st is the request's streamTimer when the try's context is it
	// (no per-try timeout between): an HTTP/1 exchange registers with
	// it to be ended if the request is cancelled.
	st *streamTimer
}

// tryCtx is a try's context: the request's, with the try's dialInfo as
// the value of dialKey, and the room for its URL (one allocation for
// what context.WithValue, the dialInfo and the URL took three).
type tryCtx struct {
	context.Context
	di  dialInfo
	url url.URL
}

func (t *tryCtx) Value(key any) any {
	if key == (dialKey{}) {
		return &t.di
	}
	return t.Context.Value(key)
}

// dialHTTP is the HTTP transport's dial: the endpoint the request picked.
// Idle connections are pooled per endpoint (the request URL's host is the
// endpoint's key).
func (p *Proxy) dialHTTP(ctx context.Context, _, _ string) (net.Conn, error) {
	di, ok := ctx.Value(dialKey{}).(*dialInfo)
	if !ok {
		return nil, errors.New("dial without an endpoint")
	}
	ctx, cancel := context.WithTimeout(ctx, di.cluster.ConnectTimeout)
	defer cancel()
	return p.dialEndpoint(ctx, di.snap, di.cluster, di.ep, di.ci)
}

// endpointHost is the URL host naming an upstream connection in the
// transport's pool: the endpoint, and for an internal one also where its
// listener will send it (its passthrough original destination, else the
// original destination in the filter state shared with it), as Envoy
// keys its connection pools by the filter state shared upstream. So the
// encap cluster's one endpoint never shares a connection between two
// destinations.
func endpointHost(c *config.Cluster, ep *config.Endpoint, ci *connInfo) string {
	if ep.Listener == "" {
		return ep.Address.String()
	}
	dst := ep.Metadata[metaOriginalDst]["local"]
	if dst == "" {
		dst = ci.fs[keyOriginalDstLocal]
	}
	k := hostKey{ep.Listener, ep.ID, dst, c.Name}
	hostNames.Lock()
	defer hostNames.Unlock()
	if h, ok := hostNames.m[k]; ok {
		return h
	}
	label := func(s string) string { return "x" + strings.ToLower(hostLabel.Replace(s)) }
	h := label(ep.Listener) + "." + label(ep.ID) + "." + label(dst) + "." + label(c.Name) + ".internal"
	if len(hostNames.m) >= maxHostNames {
		clear(hostNames.m) // (names of endpoints and configs gone)
	}
	hostNames.m[k] = h
	return h
}

// hostNames remembers endpointHost's names of internal endpoints: made
// for every request otherwise, they were a few percent of the
// waypoint's CPU time and garbage.
var hostNames = struct {
	sync.Mutex
	m map[hostKey]string
}{m: map[hostKey]string{}}

type hostKey struct{ listener, id, dst, cluster string }

// maxHostNames bounds hostNames (one per internal endpoint and
// destination).
const maxHostNames = 4096

// hostLabel makes a DNS-label-like string of a name (built once: a
// Replacer compiles its table on first use).
var hostLabel = strings.NewReplacer(":", "-", "[", "", "]", "", "/", "-", "|", "-", "_", "-", ".", "-", "%", "-")

// flagFor is the Envoy response flag of an upstream error.
func flagFor(err error) string {
	switch {
	case errors.Is(err, ErrNoHealthyUpstream):
		return "UH"
	case errors.Is(err, ErrClusterNotFound):
		return "NC"
	case errors.Is(err, context.DeadlineExceeded):
		return "UT"
	case errors.Is(err, errOverflow):
		return "UO"
	default:
		return "UF"
	}
}

// shouldRetry is Envoy's retry_on for one try's outcome: a failure to
// get an answer (connect-failure, refused-stream, reset; 5xx and
// gateway-error include them), the status (5xx, gateway-error,
// retriable-4xx, retriable-status-codes), and a gRPC trailers-only
// answer's grpc-status (cancelled, deadline-exceeded, internal,
// resource-exhausted, unavailable).
func shouldRetry(r *config.RetryPolicy, resp *http.Response, err error) bool {
	if r == nil {
		return false
	}
	if err != nil {
		switch {
		case errors.Is(err, errOverflow):
			return false
		case r.On["5xx"] || r.On["gateway-error"] || r.On["reset"]:
			return true // includes a per-try timeout
		case errors.Is(err, context.DeadlineExceeded):
			return false
		case r.On["connect-failure"] && errors.Is(err, ErrUpstreamConnect):
			return true
		case r.On["refused-stream"] && strings.Contains(err.Error(), "REFUSED_STREAM"):
			return true
		}
		return false
	}
	code := resp.StatusCode
	switch {
	case r.On["5xx"] && code >= 500:
		return true
	case r.On["gateway-error"] && (code == 502 || code == 503 || code == 504):
		return true
	case r.On["retriable-4xx"] && code == 409:
		return true
	case r.On["retriable-status-codes"] && slices.Contains(r.StatusCodes, code):
		return true
	}
	if g := resp.Header.Get("Grpc-Status"); g != "" {
		cond := map[string]string{"1": "cancelled", "4": "deadline-exceeded", "8": "resource-exhausted", "13": "internal", "14": "unavailable"}[g]
		return cond != "" && r.On[cond]
	}
	return false
}

// backoff waits before retry try+1 (backoffDelay); false if ctx ended.
func backoff(ctx context.Context, r *config.RetryPolicy, try int) bool {
	d := backoffDelay(r, try)
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// backoffDelay is Envoy's jittered exponential back-off: a random wait
// up to the base interval doubled per try, capped at the max interval.
func backoffDelay(r *config.RetryPolicy, try int) time.Duration {
	d := r.BaseBackoff << min(try, 10)
	if d > r.MaxBackoff {
		d = r.MaxBackoff
	}
	if d <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(d)) + 1)
}

// cancelBody runs cancel (once) when its response body is closed: a
// try's context ends, an endpoint's active request count goes down.
type cancelBody struct {
	io.ReadCloser
	cancel func()
	once   sync.Once
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.cancel)
	return err
}
