// Package inbound is the receiving side of the node tunnel: the HBONE
// listener (15008) that terminates mutual TLS tunnels for workloads on
// this node, and the plaintext listener (15006) for sources outside the
// mesh. Both authorize each connection against the destination's
// policies before connecting to it, and re-check open connections when
// policies change.
package inbound

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/ambitmesh/ambit/internal/hbone"
	"github.com/ambitmesh/ambit/internal/hbone/pool"
	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/internal/origdst"
	"github.com/ambitmesh/ambit/internal/telemetry"
	"github.com/ambitmesh/ambit/internal/tracker"
	"github.com/ambitmesh/ambit/ztunnel/authz"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

// Inbound serves the node's inbound listeners. Set every field but
// Dialer before use.
type Inbound struct {
	// Node is this node's name; only its workloads are reachable.
	Node     string
	Store    *config.Store
	Certs    *identity.Cache
	Verifier *identity.Verifier
	Metrics  *telemetry.Metrics
	// Log is the operational log, AccessLog gets one line per connection.
	Log       *slog.Logger
	AccessLog *slog.Logger
	// ReservedPorts are the tunnel's own ports (15001, 15006, 15008,
	// 15000, 15020, 15021, 15022, 15053); no connection is forwarded to
	// them, whatever the address.
	ReservedPorts []uint16
	// NodeAddr, when set, reports whether an address belongs to the node
	// itself (ztunnel's own network namespace); no connection is
	// forwarded to one.
	NodeAddr func(netip.Addr) bool
	// OrigDst finds where a plaintext connection was going.
	OrigDst func(net.Conn) (netip.AddrPort, error)
	// Transparent: see outbound.Outbound.Transparent.
	Transparent bool
	// MaxHandshakes bounds the HBONE connections in the handshake at once
	// (hbone.Server.MaxHandshakes; 0 is its default).
	MaxHandshakes int
	// PreserveSource makes connections to workloads leave from their
	// client's address (origdst.DialFrom), as Istio's ztunnel does: the
	// destination application sees who called it. The client's address
	// is the plaintext connection's source, or for HBONE the address the
	// source tunnel names in Forwarded when it belongs to a workload with
	// the identity the peer proved. Ignored when Dialer is set.
	PreserveSource bool
	// Pool carries plaintext connections to a workload bound to a
	// waypoint through that waypoint, over HBONE.
	Pool *pool.Pool
	// Dialer connects to local workloads; nil means a net.Dialer.
	Dialer interface {
		DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	}

	once      sync.Once
	server    *hbone.Server
	telemetry *telemetry.Recorder
	conns     tracker.Tracker[*tracked]
}

// ErrUnknownDestination is wrapped when a connection asks for an address
// that is not a workload on this node.
var ErrUnknownDestination = errors.New("destination is not a workload on this node")

// Waypoint refusals: a workload bound to a waypoint (for workload or
// all traffic) takes HBONE only from that waypoint, and none at all when
// the waypoint cannot be found.
var (
	ErrNotFromWaypoint     = errors.New("destination is bound to a waypoint and takes tunnels only from it")
	ErrWaypointUnavailable = errors.New("destination is bound to a waypoint that cannot be reached; not bypassing it")
)

// tracked is an open proxied connection, kept so that a policy change or
// a shutdown can close it.
type tracked struct {
	conn     authz.Conn
	local    netip.AddrPort
	client   net.Conn
	upstream net.Conn
	// viaWaypoint: a plaintext connection sent through the destination's
	// waypoint rather than to it directly.
	viaWaypoint bool
	closeOnce   sync.Once
	reason      error
}

// recheck authorizes t again against snap: as a new connection would be,
// and, for plaintext that went to its destination directly, refused once
// the destination is bound to a waypoint (the bypass a new connection
// would not get).
func (in *Inbound) recheck(snap *config.Snapshot, t *tracked) error {
	w, err := in.authorize(snap, t.conn.Source, t.conn.SourceIP, t.local, t.conn.Destination)
	if err != nil {
		return err
	}
	if t.conn.Source.IsZero() && !t.viaWaypoint && w.Waypoint != nil {
		return fmt.Errorf("%w: %w: plaintext sent to it directly", hbone.ErrDenied, ErrNotFromWaypoint)
	}
	return nil
}

func (t *tracked) close(reason error) {
	t.closeOnce.Do(func() {
		t.reason = reason
		t.client.Close()
		t.upstream.Close()
	})
}

func (in *Inbound) init() {
	in.once.Do(func() {
		in.telemetry = &telemetry.Recorder{Metrics: in.Metrics, AccessLog: in.AccessLog}
		in.server = &hbone.Server{
			Certificate:   in.certificate,
			Verifier:      in.Verifier,
			Handler:       hbone.HandlerFunc(in.handleHBONE),
			Log:           in.Log.With(logkey.Component, "hbone"),
			MaxHandshakes: in.MaxHandshakes,
		}
	})
}

// certificate presents the certificate of the workload whose address the
// client reached.
func (in *Inbound) certificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	local := hbone.AddrPort(hello.Conn.LocalAddr())
	w := in.Store.Snapshot().WorkloadByAddr(local.Addr())
	if w == nil || !w.ServedOn(in.Node) {
		return nil, fmt.Errorf("pick certificate for %s: %w", local.Addr(), ErrUnknownDestination)
	}
	return in.Certs.Certificate(hello.Context(), w.Identity())
}

// authorize decides whether src may reach target through the tunnel port
// at local. It returns the destination workload. A target that is not
// this tunnel's to reach is refused as a policy denial is (401), so that
// the answer does not tell a peer which addresses are workloads here;
// the log says which it was.
func (in *Inbound) authorize(snap *config.Snapshot, src identity.Identity, srcIP netip.Addr, local, target netip.AddrPort) (*config.Workload, error) {
	w := snap.WorkloadByAddr(target.Addr())
	if w == nil || !w.ServedOn(in.Node) {
		return nil, fmt.Errorf("%w: %w: %s", hbone.ErrDenied, ErrUnknownDestination, target)
	}
	if slices.Contains(in.ReservedPorts, target.Port()) {
		return nil, fmt.Errorf("%w: %s is a port of the tunnel itself", hbone.ErrDenied, target)
	}
	if in.NodeAddr != nil && in.NodeAddr(target.Addr()) {
		// A workload claiming one of the node's own addresses: never
		// reach the node through the tunnel.
		return nil, fmt.Errorf("%w: %w: %s is an address of the node itself", hbone.ErrDenied, ErrUnknownDestination, target)
	}
	// A workload's tunnel port leads to that workload only; a tunnel
	// opened to an address whose workload has gone (its listener closed,
	// the connection still open) leads nowhere.
	if lw := snap.WorkloadByAddr(local.Addr()); lw != w {
		return nil, fmt.Errorf("%w: %w: %s reached through the tunnel of %s", hbone.ErrDenied, ErrUnknownDestination, target, tunnelOf(lw, local))
	}
	if err := fromWaypoint(snap, w, src); err != nil {
		return w, fmt.Errorf("%w: %w", hbone.ErrDenied, err)
	}
	c := authz.Conn{Source: src, SourceIP: srcIP, Destination: target}
	if err := authz.Evaluate(snap.PoliciesFor(w), c); err != nil {
		return w, fmt.Errorf("%w: %w", hbone.ErrDenied, err)
	}
	return w, nil
}

// fromWaypoint checks that a tunnel from peer src to w, when w is bound
// to a waypoint, comes from that waypoint: src (proven by mutual TLS) is
// the identity of one of its workloads. Stricter than Istio, which lets
// any peer reach such a workload directly. A zero src is a plaintext
// connection, which handlePlaintext sends through the waypoint.
func fromWaypoint(snap *config.Snapshot, w *config.Workload, src identity.Identity) error {
	g := w.Waypoint
	if g == nil || src.IsZero() {
		return nil
	}
	members := snap.WaypointMembers(g)
	if len(members) == 0 {
		// Not in the config, or nothing behind it: say which.
		_, err := snap.Waypoint(g)
		return fmt.Errorf("%w: %w", ErrWaypointUnavailable, err)
	}
	for _, m := range members {
		if m.Identity() == src {
			return nil
		}
	}
	return fmt.Errorf("%w: %s is not waypoint %s", ErrNotFromWaypoint, src, g)
}

// tunnelOf names the workload whose tunnel a connection arrived on.
func tunnelOf(w *config.Workload, local netip.AddrPort) string {
	if w == nil {
		return local.String() + " (no workload there now)"
	}
	return w.Key()
}

// logDryRun logs the verdict the dry-run policies of w would reach for
// c, when it has any: they are never enforced.
func (in *Inbound) logDryRun(snap *config.Snapshot, w *config.Workload, c authz.Conn) {
	if w == nil {
		return
	}
	verdict, ok := authz.DryRun(snap.PoliciesFor(w), c)
	if !ok {
		return
	}
	result := "allow"
	if verdict != nil {
		result = verdict.Error()
	}
	in.Log.Info("dry-run authorization", logkey.SourceAddr, c.SourceIP.String(), logkey.SourceIdentity, c.Source.String(),
		logkey.DestinationAddr, c.Destination.String(), logkey.Result, result)
}

// dial connects to a workload on this node, from src when the client's
// address is preserved.
func (in *Inbound) dial(ctx context.Context, target netip.AddrPort, src netip.Addr) (net.Conn, error) {
	if in.PreserveSource && in.Dialer == nil && src.IsValid() && src != target.Addr() {
		c, err := origdst.DialFrom(ctx, src, target, 10*time.Second)
		if err != nil {
			return nil, fmt.Errorf("connect to workload %s: %w", target, err)
		}
		return c, nil
	}
	var d interface {
		DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	} = &net.Dialer{Timeout: 10 * time.Second}
	if in.Dialer != nil {
		d = in.Dialer
	}
	c, err := d.DialContext(ctx, "tcp", target.String())
	if err != nil {
		return nil, fmt.Errorf("connect to workload %s: %w", target, err)
	}
	return c, nil
}

// ServeHBONE serves tunnels on ln, a workload's tunnel port.
func (in *Inbound) ServeHBONE(ln net.Listener) error {
	in.init()
	return in.server.Serve(ln)
}

// handleHBONE serves one CONNECT in one pass over one snapshot of the
// config: authorize, dial, answer 200, track, join. A target that is not
// this tunnel's to reach and a denial by policy both answer 401 (see
// authorize), a failed dial 503.
func (in *Inbound) handleHBONE(ctx context.Context, r *hbone.Request, st *hbone.ServerStream) {
	snap := in.Store.Snapshot()
	src, srcW := clientAddr(snap, r)
	c := authz.Conn{Source: r.Peer, SourceIP: src.Addr(), Destination: r.Target}
	w, err := in.authorize(snap, r.Peer, src.Addr(), r.LocalAddr, r.Target)
	in.logDryRun(snap, w, c)
	rec := &telemetry.Conn{Direction: telemetry.Inbound, Source: telemetry.Endpoint{Addr: src, Identity: r.Peer}, Destination: telemetry.Endpoint{Addr: r.Target}}
	if w != nil {
		rec.Destination = w.Endpoint(r.Target)
	}
	if err != nil {
		// The destination's access log shows refusals too, with who was
		// refused.
		in.telemetry.Refuse(rec, err)
		st.Refuse(http.StatusUnauthorized, err)
		return
	}
	if srcW != nil {
		rec.Source.Workload = srcW.Telemetry()
	}
	if err := ctx.Err(); err != nil {
		// The client reset the stream meanwhile: dial nothing for it.
		st.Refuse(http.StatusServiceUnavailable, fmt.Errorf("stream ended before the dial: %w", err))
		return
	}
	up, err := in.dial(ctx, r.Target, src.Addr())
	if err != nil {
		st.Refuse(http.StatusServiceUnavailable, err)
		return
	}
	// 200 before tracking: a tracked connection may be closed by
	// Reevaluate or Shutdown at any time, and an answer must not follow
	// the reset that closing sends.
	if err := st.Accept(); err != nil {
		up.Close()
		return
	}
	t := &tracked{conn: c, local: r.LocalAddr, client: st, upstream: up}
	if err := in.admit(snap, t); err != nil {
		t.close(err)
		in.telemetry.Refuse(rec, err)
		return
	}
	defer in.conns.Remove(t)
	in.join(t, rec)
}

// errShuttingDown refuses connections once Shutdown began.
var errShuttingDown = errors.New("shutting down")

// admit tracks t, authorized against snap, so that Reevaluate sees it
// from now on. A policy change after snap was read and before t was
// tracked is one Reevaluate could not apply to t: when the config moved
// on meanwhile, t is authorized again against the current snapshot. An
// error (ErrPolicyChanged, or shutting down) means t was not tracked.
func (in *Inbound) admit(snap *config.Snapshot, t *tracked) error {
	if !in.conns.Add(t) {
		return errShuttingDown
	}
	if now := in.Store.Snapshot(); now != snap {
		if err := in.recheck(now, t); err != nil {
			in.conns.Remove(t)
			return fmt.Errorf("%w: %w", ErrPolicyChanged, err)
		}
	}
	return nil
}

// join proxies a tracked connection until it ends, with telemetry.
func (in *Inbound) join(t *tracked, rec *telemetry.Conn) {
	in.telemetry.Open(rec)
	st, err := hbone.Join(t.client, t.upstream)
	// Settle closeOnce: a later close is a no-op, and reason, written
	// inside an earlier one, is safe to read.
	t.closeOnce.Do(func() {})
	if t.reason != nil {
		err = errors.Join(t.reason, err)
	}
	in.telemetry.Close(rec, st.AToB, st.BToA, err)
}

// ErrPolicyChanged is the reason a connection closed because policy no
// longer allows it.
var ErrPolicyChanged = errors.New("closed: no longer allowed by policy")

// Reevaluate checks every open connection against snap and closes those
// it no longer allows. It returns how many it closed.
func (in *Inbound) Reevaluate(snap *config.Snapshot) int {
	in.init()
	var deny []*tracked
	for _, t := range in.conns.Items() {
		if err := in.recheck(snap, t); err != nil {
			deny = append(deny, t)
		}
	}
	for _, t := range deny {
		in.Log.Info("closing connection no longer allowed", logkey.SourceAddr, t.conn.SourceIP.String(),
			logkey.SourceIdentity, t.conn.Source.String(), logkey.DestinationAddr, t.conn.Destination.String())
		t.close(ErrPolicyChanged)
	}
	return len(deny)
}

// ServePlaintext serves connections from outside the mesh redirected to
// a workload's plaintext port (15006).
func (in *Inbound) ServePlaintext(ln net.Listener) error {
	in.init()
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		go in.handlePlaintext(c)
	}
}

func (in *Inbound) handlePlaintext(c net.Conn) {
	src := hbone.AddrPort(c.RemoteAddr())
	local := hbone.AddrPort(c.LocalAddr())
	rec := &telemetry.Conn{Direction: telemetry.InboundPlaintext, Source: telemetry.Endpoint{Addr: src}}
	fail := func(err error) {
		c.Close()
		in.telemetry.Refuse(rec, err)
	}
	target, err := in.OrigDst(c)
	if err != nil {
		fail(err)
		return
	}
	rec.Destination.Addr = target
	if !in.Transparent && target == local {
		// Not redirected; following it would loop into this listener.
		fail(fmt.Errorf("plaintext to %s: connection addressed to the inbound port itself, not redirected", target))
		return
	}
	snap := in.Store.Snapshot()
	w, err := in.authorize(snap, identity.Identity{}, src.Addr(), local, target)
	in.logDryRun(snap, w, authz.Conn{SourceIP: src.Addr(), Destination: target})
	if err != nil {
		fail(err)
		return
	}
	rec.Destination = w.Endpoint(target)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	var up net.Conn
	if w.Waypoint != nil {
		rec.Waypoint = w.Waypoint.String()
		up, err = in.viaWaypoint(ctx, snap, w, src, target)
	} else {
		up, err = in.dial(ctx, target, src.Addr())
	}
	cancel()
	if err != nil {
		fail(err)
		return
	}
	t := &tracked{conn: authz.Conn{SourceIP: src.Addr(), Destination: target}, local: local, client: c, upstream: up, viaWaypoint: w.Waypoint != nil}
	if err := in.admit(snap, t); err != nil {
		up.Close()
		fail(err)
		return
	}
	defer in.conns.Remove(t)
	in.join(t, rec)
}

// viaWaypoint carries a plaintext connection from src to w (at target)
// through w's waypoint: HBONE to one of the waypoint's workloads, with
// w's own identity (the source has none), target as the :authority and
// the client named in Forwarded. The waypoint then tunnels it back to w,
// whose tunnel accepts it as the waypoint's. No waypoint workload: the
// connection fails, it never goes to w directly.
func (in *Inbound) viaWaypoint(ctx context.Context, snap *config.Snapshot, w *config.Workload, src, target netip.AddrPort) (net.Conn, error) {
	wps, err := snap.Waypoint(w.Waypoint)
	if err != nil {
		return nil, fmt.Errorf("plaintext to %s: %w: %w", target, ErrWaypointUnavailable, err)
	}
	if in.Pool == nil {
		return nil, fmt.Errorf("plaintext to %s: %w: no HBONE pool", target, ErrWaypointUnavailable)
	}
	wp := wps[rand.IntN(len(wps))]
	key := pool.Key{Source: w.Identity(), Destination: wp.Identity(), Addr: netip.AddrPortFrom(wp.Addresses[0], w.Waypoint.Port())}
	c, err := in.Pool.Connect(ctx, key, target, http.Header{hbone.HeaderForwarded: {hbone.Forwarded(src.Addr())}})
	if err != nil {
		return nil, fmt.Errorf("plaintext to %s through waypoint %s: %w", target, w.Waypoint, err)
	}
	return c, nil
}

// Shutdown stops accepting tunnels, lets open connections finish until ctx
// is done, then closes the rest. The HBONE server's GOAWAY ends the
// tunnels: a stream the peer opened before it got the GOAWAY (up to the
// last stream id it names) is still served, as HTTP/2 requires, not
// refused after its 200; later ones are refused at the HTTP/2 layer,
// which the peer retries elsewhere (in an upgrade, at the new ztunnel).
func (in *Inbound) Shutdown(ctx context.Context) error {
	in.init()
	serr := in.server.Shutdown(ctx)
	if err := in.conns.Shutdown(ctx, nil, func(t *tracked) { t.close(errors.New("closed: shutdown deadline")) }); err != nil {
		return fmt.Errorf("drain inbound connections: %w", err)
	}
	return serr
}

// OpenConns is the number of connections being proxied.
func (in *Inbound) OpenConns() int { return in.conns.Len() }

// clientAddr is the address of an HBONE connection's client workload:
// the one the source tunnel names in Forwarded (for=), when it is the
// address of a workload with the identity the peer proved (a tunnel on
// another node connects from the node's own address), with port 0, as
// Forwarded carries none; otherwise the peer's own address. The workload
// is returned when one matched either way.
func clientAddr(snap *config.Snapshot, r *hbone.Request) (netip.AddrPort, *config.Workload) {
	if a, ok := hbone.ParseForwarded(r.Header.Get(hbone.HeaderForwarded)); ok && a != r.PeerAddr.Addr() {
		if w := snap.WorkloadByAddr(a); w != nil && w.Identity() == r.Peer {
			return netip.AddrPortFrom(a, 0), w
		}
	}
	if w := snap.WorkloadByAddr(r.PeerAddr.Addr()); w != nil && w.Identity() == r.Peer {
		return r.PeerAddr, w
	}
	return r.PeerAddr, nil
}
