// Package outbound is the sending side of the node tunnel (15001): for
// each connection a local workload makes, it finds where the connection
// was going, picks an endpoint when that is a Service, and carries the
// connection over HBONE with the source workload's certificate to mesh
// destinations, or passes it through as plain TCP to everything else.
package outbound

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/ambitmesh/ambit/internal/hbone"
	"github.com/ambitmesh/ambit/internal/origdst"
	"github.com/ambitmesh/ambit/ztunnel/accesslog"
	"github.com/ambitmesh/ambit/ztunnel/config"
	"github.com/ambitmesh/ambit/ztunnel/metrics"
	"github.com/ambitmesh/ambit/ztunnel/pool"
)

// Outbound serves the outbound listener. Set every field but Dialer.
type Outbound struct {
	Node      string
	Store     *config.Store
	Pool      *pool.Pool
	Metrics   *metrics.Metrics
	Log       *slog.Logger
	AccessLog *slog.Logger
	// OrigDst finds where a captured connection was going.
	OrigDst func(net.Conn) (netip.AddrPort, error)
	// Transparent says connections arrive on a transparent listener,
	// where the local address is the original destination (OrigDst then
	// tells redirected connections from direct ones).
	Transparent bool
	// HBONEPort is the peers' tunnel port, normally hbone.Port.
	HBONEPort uint16
	// PreserveSource makes passthrough connections to pods outside the
	// mesh (addresses of workloads in the config, which no NAT rewrites)
	// leave from the source workload's address, as they would without a
	// mesh. Other destinations are dialed from the node's address: behind
	// NAT (a Service VIP, masquerading) the replies could not be steered
	// back. Ignored when Dialer is set.
	PreserveSource bool
	// PodPathMark, when not 0, makes every passthrough connection
	// (whatever its destination) leave from the source pod's address
	// with this socket mark, which the node agent routes through the
	// pod's own veth (see ztunnel.Config.PodPathMark). Ignored when
	// Dialer is set.
	PodPathMark uint32
	// Dialer makes passthrough connections; nil means a net.Dialer.
	Dialer interface {
		DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	}

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// Errors a captured connection can end with.
var (
	ErrUnknownSource = errors.New("source is not a workload on this node")
	ErrNoEndpoint    = errors.New("service has no healthy endpoint for the port")
	ErrNotRedirected = errors.New("connection addressed to the outbound port itself, not redirected")
	// ErrUnsupportedTunnel: the destination expects mutual TLS that
	// ztunnel does not originate (an Istio sidecar's, or a tunnel
	// protocol it does not know). The connection is refused rather than
	// sent in plain text.
	ErrUnsupportedTunnel = errors.New("destination expects a tunnel protocol ztunnel does not originate; not sending plain text")
)

// Serve handles connections accepted on ln until ln fails.
func (o *Outbound) Serve(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		if !o.track(c) {
			c.Close()
			continue
		}
		go func() {
			defer o.untrack(c)
			o.handle(c)
		}()
	}
}

// route is where a connection goes.
type route struct {
	workload *config.Workload // nil for passthrough
	service  *config.Service
	target   netip.AddrPort // the workload address and target port
}

// resolve maps the original destination of a connection from a client
// in namespace ns to a route: the address of a Service visible to the
// client picks a healthy endpoint that ztunnel can reach, a workload
// address is that workload, anything else passes through.
func resolve(snap *config.Snapshot, ns string, dst netip.AddrPort) (route, error) {
	if svc := snap.ServiceByAddr(dst.Addr()); svc != nil && svc.VisibleTo(ns) {
		type candidate struct {
			w    *config.Workload
			port uint16
		}
		var cands []candidate
		unreachable := 0
		for _, w := range snap.Endpoints(svc) {
			if !w.Healthy() || len(w.Addresses) == 0 {
				continue
			}
			port, ok := targetPort(svc, w, dst.Port())
			switch {
			case !ok:
			case !w.Reachable():
				unreachable++
			default:
				cands = append(cands, candidate{w, port})
			}
		}
		if len(cands) == 0 && unreachable > 0 {
			return route{service: svc}, fmt.Errorf("route %s (%s): %d healthy endpoints, none over HBONE or plain text: %w", dst, svc.Hostname, unreachable, ErrUnsupportedTunnel)
		}
		if len(cands) == 0 {
			return route{service: svc}, fmt.Errorf("route %s (%s): %w", dst, svc.Hostname, ErrNoEndpoint)
		}
		c := cands[rand.IntN(len(cands))]
		return route{workload: c.w, service: svc, target: netip.AddrPortFrom(c.w.Addresses[0], c.port)}, nil
	}
	if w := snap.WorkloadByAddr(dst.Addr()); w != nil {
		return route{workload: w, target: dst}, nil
	}
	return route{target: dst}, nil
}

// targetPort maps a service port to w's port: the workload's own mapping
// for the service, else the service's, else the same port.
func targetPort(svc *config.Service, w *config.Workload, port uint16) (uint16, bool) {
	if pl, ok := w.Services[svc.Key()]; ok {
		for _, p := range pl.Ports {
			if p.ServicePort == uint32(port) {
				if p.TargetPort == 0 {
					return port, true
				}
				return uint16(p.TargetPort), true
			}
		}
	}
	for _, p := range svc.Ports {
		if p.ServicePort == uint32(port) {
			if p.TargetPort == 0 {
				return port, true
			}
			return uint16(p.TargetPort), true
		}
	}
	return 0, false
}

func (o *Outbound) handle(c net.Conn) {
	start := time.Now()
	src := hbone.AddrPort(c.RemoteAddr())
	e := accesslog.Entry{Direction: accesslog.Outbound, SourceAddr: src}
	fail := func(err error) {
		c.Close()
		e.Err, e.Duration = err, time.Since(start)
		e.Log(o.AccessLog)
	}
	dst, err := o.OrigDst(c)
	if err != nil {
		fail(err)
		return
	}
	e.DestinationAddr = dst
	if !o.Transparent && dst == hbone.AddrPort(c.LocalAddr()) {
		// Not redirected: conntrack reports a direct connection's own
		// destination, and following it would loop into this listener.
		fail(fmt.Errorf("outbound to %s: %w", dst, ErrNotRedirected))
		return
	}
	snap := o.Store.Snapshot()
	srcW := snap.WorkloadByAddr(src.Addr())
	// A host-network workload is never captured: its address is the
	// node's, and the node's own connections are not a workload's.
	if srcW == nil || srcW.Node != o.Node || srcW.HostNetwork() {
		fail(fmt.Errorf("outbound from %s: %w", src.Addr(), ErrUnknownSource))
		return
	}
	srcID := srcW.Identity()
	e.SourceWorkload, e.SourceNamespace, e.SourceIdentity = srcW.Name, srcW.Namespace, srcID.String()
	labels := metrics.Labels{
		Reporter:                 metrics.ReporterSource,
		SourceWorkload:           srcW.MetricName(),
		SourceWorkloadNamespace:  srcW.Namespace,
		SourcePrincipal:          srcID.String(),
		SourceCanonicalService:   srcW.CanonicalName,
		SourceCanonicalRevision:  srcW.CanonicalRevision,
		RequestProtocol:          "tcp",
		ConnectionSecurityPolicy: metrics.None,
	}
	r, err := resolve(snap, srcW.Namespace, dst)
	if r.service != nil {
		e.DestinationService = r.service.Hostname
		labels.DestinationService = r.service.Hostname
		labels.DestinationServiceName = r.service.Name
		labels.DestinationServiceNamespace = r.service.Namespace
	}
	if err != nil {
		fail(err)
		return
	}
	if w := r.workload; w != nil {
		dstID := w.Identity()
		e.DestinationWorkload, e.DestinationIdentity = w.Name, dstID.String()
		labels.DestinationWorkload = w.MetricName()
		labels.DestinationWorkloadNamespace = w.Namespace
		labels.DestinationPrincipal = dstID.String()
		labels.DestinationCanonicalService = w.CanonicalName
		labels.DestinationCanonicalRevision = w.CanonicalRevision
		if !w.Reachable() {
			fail(fmt.Errorf("outbound to %s (workload %s, tunnel protocol %s): %w", r.target, w.Key(), w.TunnelProtocol, ErrUnsupportedTunnel))
			return
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	var up net.Conn
	if w := r.workload; w != nil && w.HBONE() {
		key := pool.Key{
			Source:      srcID,
			SourceAddr:  src.Addr(),
			Destination: w.Identity(),
			Addr:        netip.AddrPortFrom(r.target.Addr(), o.HBONEPort),
		}
		e.DestinationHBONE = key.Addr
		labels.ConnectionSecurityPolicy = metrics.MutualTLS
		up, err = o.Pool.Connect(ctx, key, r.target, http.Header{
			hbone.HeaderForwarded: {hbone.Forwarded(src.Addr())},
		})
	} else {
		var from netip.Addr
		if r.workload != nil || o.PodPathMark != 0 {
			from = src.Addr()
		}
		up, err = o.dial(ctx, r.target, from)
	}
	cancel()
	if err != nil {
		fail(err)
		return
	}
	o.Metrics.Opened(labels)
	st, err := hbone.Join(c, up)
	e.Received, e.Sent, e.Duration, e.Err = st.AToB, st.BToA, time.Since(start), err
	o.Metrics.Closed(labels, st.AToB, st.BToA)
	e.Log(o.AccessLog)
}

// dial makes a passthrough connection, from the address from when the
// source is preserved.
func (o *Outbound) dial(ctx context.Context, target netip.AddrPort, from netip.Addr) (net.Conn, error) {
	if o.Dialer == nil && from.IsValid() && (o.PreserveSource || o.PodPathMark != 0) {
		c, err := origdst.FromDialer(from, o.PodPathMark).DialContext(ctx, "tcp", target.String())
		if err != nil {
			return nil, fmt.Errorf("passthrough to %s from %s: %w", target, from, err)
		}
		return c, nil
	}
	var d interface {
		DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	} = &net.Dialer{}
	if o.Dialer != nil {
		d = o.Dialer
	}
	c, err := d.DialContext(ctx, "tcp", target.String())
	if err != nil {
		return nil, fmt.Errorf("passthrough to %s: %w", target, err)
	}
	return c, nil
}

func (o *Outbound) track(c net.Conn) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return false
	}
	if o.conns == nil {
		o.conns = map[net.Conn]struct{}{}
	}
	o.conns[c] = struct{}{}
	o.wg.Add(1)
	return true
}

func (o *Outbound) untrack(c net.Conn) {
	o.mu.Lock()
	delete(o.conns, c)
	o.mu.Unlock()
	o.wg.Done()
}

// Shutdown refuses new connections, waits for open ones to end until ctx
// is done, then closes the rest. The caller closes the listener.
func (o *Outbound) Shutdown(ctx context.Context) error {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
	done := make(chan struct{})
	go func() { o.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	o.mu.Lock()
	for c := range o.conns {
		c.Close()
	}
	o.mu.Unlock()
	<-done
	return fmt.Errorf("drain outbound connections: %w", ctx.Err())
}
