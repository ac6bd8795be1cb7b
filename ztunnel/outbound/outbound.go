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
	"time"

	"github.com/ambitmesh/ambit/internal/hbone"
	"github.com/ambitmesh/ambit/internal/hbone/pool"
	"github.com/ambitmesh/ambit/internal/origdst"
	"github.com/ambitmesh/ambit/internal/telemetry"
	"github.com/ambitmesh/ambit/internal/tracker"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

// Outbound serves the outbound listener. Set every field but Dialer.
type Outbound struct {
	Node      string
	Store     *config.Store
	Pool      *pool.Pool
	Metrics   *telemetry.Metrics
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

	conns tracker.Tracker[net.Conn]
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
	// ErrWaypointUnavailable: the destination is bound to a waypoint that
	// is not in the config or has no healthy endpoint. The connection is
	// refused rather than sent around the waypoint.
	ErrWaypointUnavailable = errors.New("destination is bound to a waypoint that cannot be reached; not bypassing it")
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
		if !o.conns.Add(c) {
			c.Close()
			continue
		}
		go func() {
			defer o.conns.Remove(c)
			o.handle(c)
		}()
	}
}

// route is where a connection goes.
type route struct {
	workload *config.Workload // nil for passthrough
	service  *config.Service
	target   netip.AddrPort // the workload address and target port
	// waypoint, when set, carries the connection: workload is the
	// waypoint's workload picked, tunnel its HBONE address, and target
	// the original destination (a Service's VIP:port or a pod's
	// address), which is the CONNECT's :authority.
	waypoint *config.GatewayAddress
	tunnel   netip.AddrPort
}

// resolve maps the original destination of a connection from client src
// to a route: the address of a Service visible to the client picks a
// healthy endpoint that ztunnel can reach, a workload address is that
// workload, anything else passes through.
//
// Waypoints come first, as in Istio's ztunnel: a Service with a waypoint
// is reached through it; so is a workload address whose workload has one
// (bound for workload or all traffic); and, for a Service without a
// waypoint of its own, the endpoint picked, when its workload has one
// (a waypoint bound by service account), with the Service's VIP:port as
// the :authority, as Istio 1.21's ztunnel did. The waypoint's own
// connections go straight on. A waypoint that is not in the config, or
// has no endpoint, fails the connection: it is never sent around it.
func resolve(snap *config.Snapshot, src *config.Workload, dst netip.AddrPort) (route, error) {
	bound := func(g *config.GatewayAddress) bool {
		return g != nil && !snap.IsWaypointMember(g, src)
	}
	if svc := snap.ServiceByAddr(dst.Addr()); svc != nil && svc.VisibleTo(src.Namespace) {
		if bound(svc.Waypoint) {
			return viaWaypoint(snap, svc.Waypoint, svc, dst)
		}
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
		if bound(c.w.Waypoint) {
			return viaWaypoint(snap, c.w.Waypoint, svc, dst)
		}
		return route{workload: c.w, service: svc, target: netip.AddrPortFrom(c.w.Addresses[0], c.port)}, nil
	}
	if w := snap.WorkloadByAddr(dst.Addr()); w != nil {
		if bound(w.Waypoint) {
			return viaWaypoint(snap, w.Waypoint, nil, dst)
		}
		return route{workload: w, target: dst}, nil
	}
	return route{target: dst}, nil
}

// viaWaypoint routes a connection to dst (of service svc, if any)
// through waypoint g: one of its healthy workloads, at g's HBONE port.
func viaWaypoint(snap *config.Snapshot, g *config.GatewayAddress, svc *config.Service, dst netip.AddrPort) (route, error) {
	r := route{service: svc, target: dst, waypoint: g}
	wps, err := snap.Waypoint(g)
	if err != nil {
		return r, fmt.Errorf("route %s: %w: %w", dst, ErrWaypointUnavailable, err)
	}
	w := wps[rand.IntN(len(wps))]
	r.workload, r.tunnel = w, netip.AddrPortFrom(w.Addresses[0], g.Port())
	return r, nil
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
	src := hbone.AddrPort(c.RemoteAddr())
	rec := &telemetry.Conn{Direction: telemetry.Outbound, Source: telemetry.Endpoint{Addr: src}, Start: time.Now()}
	fail := func(err error) {
		c.Close()
		o.telemetry().Refuse(rec, err)
	}
	dst, err := o.OrigDst(c)
	if err != nil {
		fail(err)
		return
	}
	rec.Destination.Addr = dst
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
	rec.Source = srcW.Endpoint(src)
	r, err := resolve(snap, srcW, dst)
	if r.service != nil {
		rec.Service = r.service.Telemetry()
	}
	if r.waypoint != nil {
		rec.Waypoint = r.waypoint.String()
	}
	if err != nil {
		fail(err)
		return
	}
	if w := r.workload; w != nil {
		// Through a waypoint, the destination is the waypoint's workload
		// (as in Istio's ztunnel), dst.addr the original destination.
		rec.Destination = w.Endpoint(dst)
		if r.waypoint == nil && !w.Reachable() {
			fail(fmt.Errorf("outbound to %s (workload %s, tunnel protocol %s): %w", r.target, w.Key(), w.TunnelProtocol, ErrUnsupportedTunnel))
			return
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	var up net.Conn
	// A waypoint is reached over HBONE at its HBONE port whatever its
	// workload's tunnel protocol, as Istio's ztunnel does: Istio's istiod
	// gives a waypoint's pod NONE (its own traffic is not redirected),
	// and plain text to the original destination would bypass it.
	if w := r.workload; w != nil && (w.HBONE() || r.waypoint != nil) {
		key := pool.Key{
			Source:      srcID,
			SourceAddr:  src.Addr(),
			Destination: w.Identity(),
			Addr:        netip.AddrPortFrom(r.target.Addr(), o.HBONEPort),
		}
		if r.tunnel.IsValid() {
			key.Addr = r.tunnel
		}
		rec.Tunnel = key.Addr
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
	o.telemetry().Open(rec)
	st, err := hbone.Join(c, up)
	o.telemetry().Close(rec, st.AToB, st.BToA, err)
}

func (o *Outbound) telemetry() *telemetry.Recorder {
	return &telemetry.Recorder{Metrics: o.Metrics, AccessLog: o.AccessLog}
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

// Shutdown refuses new connections, waits for open ones to end until ctx
// is done, then closes the rest. The caller closes the listener.
func (o *Outbound) Shutdown(ctx context.Context) error {
	if err := o.conns.Shutdown(ctx, nil, func(c net.Conn) { c.Close() }); err != nil {
		return fmt.Errorf("drain outbound connections: %w", err)
	}
	return nil
}
