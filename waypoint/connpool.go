package waypoint

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// Each cluster has its own pool of upstream HTTP connections, as
// Envoy's cluster manager has, so that the cluster's circuit breakers
// and connection options hold on both HTTP versions (Envoy's
// arch_overview/upstream/connection_pooling and circuit_breaking):
//
//   - max_connections bounds the connections open or being established
//     across the cluster's endpoints. A request that finds no
//     connection with room (HTTP/1: an idle one; HTTP/2: one with a
//     free stream) opens one while the breaker allows, else waits
//     (upstream_cx_overflow); an endpoint without any connection gets
//     one anyway, as Envoy's pool does, so that its requests are not
//     queued with no way to be served. An idle connection to another
//     endpoint is closed to make room before a request waits (Envoy
//     drains the pools of endpoints EDS removes; the waypoint's pool
//     keys do not tell which those are).
//   - max_pending_requests bounds the requests waiting for a
//     connection or a stream (HTTP/2 requests wait for a connection
//     being established, which will carry them all); one more
//     overflows at once (upstream_rq_pending_overflow, flag UO).
//   - max_requests_per_connection, max_connection_duration: the
//     connection takes no new request and closes when its last ends
//     (upstream_cx_max_requests, upstream_cx_max_duration_reached).
//   - idle_timeout closes a connection without requests
//     (upstream_cx_idle_timeout); max_concurrent_streams bounds the
//     streams of an HTTP/2 connection below the server's SETTINGS.
//
// HTTP/1 connections are the waypoint's own client (h1Conn, h1client.go:
// the request's goroutine writes the request and reads the answer);
// HTTP/2 ones are net/http's ClientConn (Transport.NewClientConn, the
// HTTP/2 transport's settings). Both dial through the transports' dial,
// one connection per dial. Only upgrades (which take the connection
// over) use the transport's own pool.
//
// Concurrency: connPool.mu guards the hosts map and every upConn's
// fields; poolConn methods other than RoundTrip may run under it,
// because the state hook a ClientConn calls synchronously only signals
// (sigMu, taken under mu, never the other way round), and h1Conn's
// take no lock.

// connPool is one cluster's upstream connections.
type connPool struct {
	mu      sync.Mutex
	hosts   map[string][]*upConn
	open    int // connections open or being established
	pending int // requests waiting for a connection or stream
	closed  bool

	sigMu   sync.Mutex
	changed chan struct{}
}

// poolConn is an upstream connection the pool hands out: an h1Conn, or
// net/http's ClientConn for HTTP/2.
type poolConn interface {
	RoundTrip(*http.Request) (*http.Response, error)
	// Reserve takes a request's room on the connection before
	// RoundTrip; an error if it has none.
	Reserve() error
	// Err is non-nil once the connection can carry no request.
	Err() error
	Close() error
}

var (
	_ poolConn = (*http.ClientConn)(nil)
	_ poolConn = (*h1Conn)(nil)
)

// upConn is one upstream connection of a pool.
type upConn struct {
	host string
	cc   poolConn // nil while being established
	// dialErr: the establishment failed (the conn is out of the pool).
	dialErr error
	ready   chan struct{} // closed when the dial has ended
	http2   bool
	// tcp: a tcp_proxy connection's slot (no ClientConn).
	tcp bool
	// active requests on it, requests it has carried.
	active, served int
	draining, gone bool
	idle, maxAge   *time.Timer
}

// signal wakes every request waiting on the pool.
func (cp *connPool) signal() {
	cp.sigMu.Lock()
	if cp.changed != nil {
		close(cp.changed)
		cp.changed = nil
	}
	cp.sigMu.Unlock()
}

// waitCh is closed at the next signal.
func (cp *connPool) waitCh() <-chan struct{} {
	cp.sigMu.Lock()
	defer cp.sigMu.Unlock()
	if cp.changed == nil {
		cp.changed = make(chan struct{})
	}
	return cp.changed
}

// roundTrip sends out (a try of cluster cl, its endpoint's key the URL
// host) on a connection of the cluster's pool; tr is the transport
// whose dial and protocols the connection uses. An upgrade goes through
// the transport.
func (p *Proxy) roundTrip(cs *clusterState, cl *config.Cluster, tr *http.Transport, out *http.Request) (*http.Response, error) {
	if out.Header.Get("Upgrade") != "" {
		return p.upgradeTrip(cs, cl, tr, out)
	}
	http2 := tr != p.transport
	uc, err := cs.pool.get(out.Context(), cl, tr, out.URL.Host, http2, &cs.st)
	if err != nil {
		return nil, err
	}
	resp, err := uc.cc.RoundTrip(out)
	if err != nil {
		cs.pool.done(uc, cl, &cs.st)
		if h, ok := uc.cc.(*h1Conn); !ok || h.served < 2 || !errors.Is(err, errClosedBeforeResponse) || !resendable(out) {
			return nil, err
		}
		// A kept-alive connection the upstream had closed (as idle, most
		// likely) before this request reached it: once more on another,
		// as net/http's transport does for a request it may send twice
		// (its reading goroutine saw such closes before a request came;
		// this client has none).
		if uc, err = cs.pool.get(out.Context(), cl, tr, out.URL.Host, http2, &cs.st); err != nil {
			return nil, err
		}
		if resp, err = uc.cc.RoundTrip(out); err != nil {
			cs.pool.done(uc, cl, &cs.st)
			return nil, err
		}
	}
	resp.Body = &poolBody{ReadCloser: resp.Body, pool: &cs.pool, uc: uc, cl: cl, st: &cs.st}
	return resp, nil
}

// resendable: out may be sent again (an idempotent method, or an
// Idempotency-Key, as net/http's transport has it), its body from the
// start; resetting it if so.
func resendable(out *http.Request) bool {
	switch out.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
	default:
		if _, ok := out.Header["Idempotency-Key"]; !ok {
			if _, ok := out.Header["X-Idempotency-Key"]; !ok {
				return false
			}
		}
	}
	switch b := out.Body.(type) {
	case nil:
		return true
	case *memBody:
		b.off = 0
		return true
	}
	return false
}

// poolBody ends its request's share of the connection when closed (a
// pool's connection, or an upgrade's slot). Its fields rather than a
// closure: one allocation per request, not two.
type poolBody struct {
	io.ReadCloser
	once sync.Once
	pool *connPool
	uc   *upConn
	cl   *config.Cluster
	st   *clusterCounters
	slot *tcpSlot
}

func (b *poolBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}

func (b *poolBody) done() {
	if b.slot != nil {
		b.slot.release()
		return
	}
	b.pool.done(b.uc, b.cl, b.st)
}

// streamLimit is the requests one connection carries at once.
func streamLimit(cl *config.Cluster, http2 bool) int {
	if !http2 {
		return 1
	}
	if n := cl.Pool.MaxConcurrentStreams; n > 0 {
		return n
	}
	return 1 << 31
}

// get returns a connection to host with a request reserved on it,
// waiting (as a pending request) for one while the circuit breakers
// allow.
func (cp *connPool) get(ctx context.Context, cl *config.Cluster, tr *http.Transport, host string, http2 bool, st *clusterCounters) (*upConn, error) {
	cb := cl.CircuitBreakers
	limit := streamLimit(cl, http2)
	var mine *upConn // the connection this request is establishing
	var got *upConn
	overflowed := false
	grab := func() (bool, error) {
		if mine != nil && mine.dialErr != nil {
			return true, mine.dialErr
		}
		if got = cp.take(host, limit, cl); got != nil {
			return true, nil
		}
		if mine != nil && mine.cc != nil {
			mine = nil // established, and taken by another request
		}
		return false, nil
	}
	prepare := func() (after func()) {
		if mine != nil {
			return nil
		}
		// An HTTP/2 connection being established takes this request;
		// else a new connection while the breaker allows (or the
		// endpoint has none).
		if http2 {
			for _, uc := range cp.hosts[host] {
				if uc.cc == nil && !uc.gone && !uc.tcp {
					return nil
				}
			}
		}
		cp.reapLocked()
		if cp.open >= cb.MaxConnections && len(cp.hosts[host]) > 0 {
			// An idle connection to another endpoint (one EDS may have
			// removed) makes room rather than hold this request back.
			if cc := cp.evictIdleLocked(host); cc != nil {
				return func() { cc.Close() }
			}
		}
		switch {
		case cp.open < cb.MaxConnections || len(cp.hosts[host]) == 0:
			if cp.open >= cb.MaxConnections && !overflowed {
				st.cxOverflow.Add(1)
			}
			mine = cp.dial(ctx, cl, tr, host, http2, st)
		case !overflowed:
			overflowed = true
			st.cxOverflow.Add(1)
		}
		return nil
	}
	if err := cp.admit(ctx, cb.MaxPendingRequests, st, grab, prepare); err != nil {
		return nil, err
	}
	return got, nil
}

// admit is a request's wait for room in the pool (a connection, a
// stream, a slot), shared by get and slot: under cp.mu, grab takes the
// room if there is some (done, or an error to return); else the request
// counts as pending while max_pending_requests allows (one more
// overflows, UO), and prepare may start making room (a dial). When
// prepare returns an after, it runs without the lock and the request
// looks again at once; else the request waits for the pool to change,
// or for ctx to end.
func (cp *connPool) admit(ctx context.Context, maxPending int, st *clusterCounters, grab func() (bool, error), prepare func() (after func())) error {
	pending := false
	defer func() {
		if pending {
			cp.mu.Lock()
			cp.pending--
			cp.mu.Unlock()
		}
	}()
	for {
		wait := cp.waitCh()
		cp.mu.Lock()
		if cp.closed {
			cp.mu.Unlock()
			return ErrUpstreamConnect
		}
		if done, err := grab(); done {
			cp.mu.Unlock()
			return err
		}
		if !pending {
			if cp.pending >= maxPending {
				cp.mu.Unlock()
				st.rqPendingOverflow.Add(1)
				return errOverflow
			}
			cp.pending++
			pending = true
		}
		var after func()
		if prepare != nil {
			after = prepare()
		}
		cp.mu.Unlock()
		if after != nil {
			after()
			continue
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// take reserves a request on a usable connection to host (cp.mu held).
func (cp *connPool) take(host string, limit int, cl *config.Cluster) *upConn {
	var dead []*upConn
	defer func() {
		for _, uc := range dead {
			cp.removeLocked(uc)
		}
	}()
	for _, uc := range cp.hosts[host] {
		if uc.cc == nil || uc.gone || uc.draining || uc.active >= limit {
			continue
		}
		if uc.cc.Err() != nil {
			dead = append(dead, uc)
			continue
		}
		if uc.cc.Reserve() != nil {
			continue // the server's stream limit, or closing
		}
		uc.active++
		uc.served++
		if uc.idle != nil {
			uc.idle.Stop()
		}
		if n := cl.Pool.MaxRequestsPerConnection; n > 0 && uc.served >= n {
			uc.draining = true // (counted when it closes)
		}
		return uc
	}
	return nil
}

// dial starts establishing a connection to host (cp.mu held); the
// request waits for it as for any other.
func (cp *connPool) dial(ctx context.Context, cl *config.Cluster, tr *http.Transport, host string, http2 bool, st *clusterCounters) *upConn {
	uc := &upConn{host: host, ready: make(chan struct{}), http2: http2}
	if cp.hosts == nil {
		cp.hosts = map[string][]*upConn{}
	}
	cp.hosts[host] = append(cp.hosts[host], uc)
	cp.open++
	st.cxTotal.Add(1)
	// The connection outlives the request that opens it: the dial keeps
	// the request's values (the endpoint to reach) but not its end.
	dctx := context.WithoutCancel(ctx)
	go func() {
		var cc poolConn
		var err error
		if http2 {
			var hc *http.ClientConn
			if hc, err = tr.NewClientConn(dctx, "http", net.JoinHostPort(host, "80")); err == nil {
				hc.SetStateHook(func(*http.ClientConn) { cp.signal() })
				cc = hc
			}
		} else {
			var c net.Conn
			if c, err = tr.DialContext(dctx, "tcp", net.JoinHostPort(host, "80")); err == nil {
				cc = newH1Conn(c, host, cp.signal)
			}
		}
		cp.mu.Lock()
		if err != nil {
			uc.dialErr = err
			cp.removeLocked(uc)
		} else if cp.closed || uc.gone {
			cp.mu.Unlock()
			cc.Close()
			cp.signal()
			close(uc.ready)
			return
		} else {
			uc.cc = cc
			if d := cl.Pool.MaxConnectionDuration; d > 0 {
				uc.maxAge = time.AfterFunc(d, func() { cp.expire(uc, st) })
			}
			cp.idleLocked(uc, cl, st)
		}
		cp.mu.Unlock()
		close(uc.ready)
		cp.signal()
	}()
	return uc
}

// done ends a request on uc: a drained connection closes with its last
// request, an idle one after the idle timeout.
func (cp *connPool) done(uc *upConn, cl *config.Cluster, st *clusterCounters) {
	cp.mu.Lock()
	uc.active--
	var closeCC poolConn
	switch {
	case uc.active == 0 && uc.draining && !uc.gone:
		if n := cl.Pool.MaxRequestsPerConnection; n > 0 && uc.served >= n {
			st.cxMaxRequests.Add(1)
		}
		closeCC = uc.cc
		cp.removeLocked(uc)
	case uc.cc.Err() != nil:
		cp.removeLocked(uc) // the server closed it (or it broke)
	default:
		cp.idleLocked(uc, cl, st)
	}
	cp.mu.Unlock()
	if closeCC != nil {
		closeCC.Close()
	}
	cp.signal()
}

// idleLocked arms uc's idle timer when it has no request.
func (cp *connPool) idleLocked(uc *upConn, cl *config.Cluster, st *clusterCounters) {
	d := cl.Pool.IdleTimeout
	if uc.active > 0 || d <= 0 || uc.gone {
		return
	}
	if uc.idle == nil {
		uc.idle = time.AfterFunc(d, func() {
			cp.mu.Lock()
			if uc.active > 0 || uc.gone {
				cp.mu.Unlock()
				return
			}
			st.cxIdleTimeout.Add(1)
			cc := uc.cc
			cp.removeLocked(uc)
			cp.mu.Unlock()
			cc.Close()
			cp.signal()
		})
		return
	}
	uc.idle.Reset(d)
}

// expire drains uc at its max_connection_duration.
func (cp *connPool) expire(uc *upConn, st *clusterCounters) {
	cp.mu.Lock()
	if uc.gone {
		cp.mu.Unlock()
		return
	}
	st.cxMaxDuration.Add(1)
	uc.draining = true
	var cc poolConn
	if uc.active == 0 {
		cc = uc.cc
		cp.removeLocked(uc)
	}
	cp.mu.Unlock()
	if cc != nil {
		cc.Close()
	}
	cp.signal()
}

// removeLocked takes uc out of the pool (cp.mu held); its ClientConn,
// if any, is the caller's to close.
func (cp *connPool) removeLocked(uc *upConn) {
	if uc.gone {
		return
	}
	uc.gone = true
	cp.open--
	list := cp.hosts[uc.host]
	for i, c := range list {
		if c == uc {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(cp.hosts, uc.host)
	} else {
		cp.hosts[uc.host] = list
	}
	for _, t := range []*time.Timer{uc.idle, uc.maxAge} {
		if t != nil {
			t.Stop()
		}
	}
}

// evictIdleLocked takes an idle connection to another host than host
// out of the pool (cp.mu held) and returns it for the caller to close.
func (cp *connPool) evictIdleLocked(host string) poolConn {
	for h, list := range cp.hosts {
		if h == host {
			continue
		}
		for _, uc := range list {
			if uc.cc != nil && !uc.tcp && uc.active == 0 {
				cp.removeLocked(uc)
				return uc.cc
			}
		}
	}
	return nil
}

// reapLocked takes closed connections out (cp.mu held), so that they
// no longer count against max_connections.
func (cp *connPool) reapLocked() {
	var dead []*upConn
	for _, list := range cp.hosts {
		for _, uc := range list {
			if uc.cc != nil && uc.cc.Err() != nil {
				dead = append(dead, uc)
			}
		}
	}
	for _, uc := range dead {
		cp.removeLocked(uc)
	}
}

// stats: connections open, requests pending.
func (cp *connPool) stats() (open, pending int) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.reapLocked()
	return cp.open, cp.pending
}

// close ends every connection of the pool.
func (cp *connPool) close() {
	cp.mu.Lock()
	cp.closed = true
	var ccs []poolConn
	for _, list := range cp.hosts {
		for _, uc := range list {
			if uc.cc != nil {
				ccs = append(ccs, uc.cc)
			}
		}
	}
	for _, list := range cp.hosts {
		for _, uc := range append([]*upConn(nil), list...) {
			cp.removeLocked(uc)
		}
	}
	cp.mu.Unlock()
	for _, cc := range ccs {
		cc.Close()
	}
	cp.signal()
}

// closePools ends the upstream connections of every cluster (Close).
func (p *Proxy) closePools() {
	p.clusters.Range(func(_, v any) bool {
		v.(*clusterState).pool.close()
		return true
	})
}

// withKeepalive turns on the cluster's TCP keepalive on an upstream
// socket (upstream_connection_options.tcp_keepalive); other connections
// (internal ones, HBONE streams) are returned as they are.
func withKeepalive(cl *config.Cluster, c net.Conn) net.Conn {
	ka := cl.Pool.Keepalive
	tc, ok := c.(*net.TCPConn)
	if ka == nil || !ok {
		return c
	}
	cfg := net.KeepAliveConfig{Enable: true, Idle: ka.Time, Interval: ka.Interval, Count: ka.Probes}
	for _, d := range []*time.Duration{&cfg.Idle, &cfg.Interval} {
		if *d == 0 {
			*d = -1 // the kernel's default
		}
	}
	if cfg.Count == 0 {
		cfg.Count = -1
	}
	tc.SetKeepAliveConfig(cfg)
	return c
}

// A tcp_proxy connection holds one of its cluster's max_connections
// while it is open; with all taken it waits as a pending request (within
// the connect timeout) or overflows (UO), as Envoy's TCP pool.

// tcpSlot is one tcp_proxy connection's share of its cluster.
type tcpSlot struct {
	cp *connPool
	uc *upConn
}

// tcpAdmit takes a connection slot of cl for a tcp_proxy connection.
func (p *Proxy) tcpAdmit(ctx context.Context, cl *config.Cluster) (*tcpSlot, error) {
	return p.clusterState(cl.Name).pool.slot(ctx, cl, tcpHost, &p.clusterState(cl.Name).st)
}

// slot takes a connection slot of cl that the pool does not manage
// itself (a tcp_proxy connection, an upgraded one), counted as one of
// host's connections.
func (cp *connPool) slot(ctx context.Context, cl *config.Cluster, host string, st *clusterCounters) (*tcpSlot, error) {
	cb := cl.CircuitBreakers
	overflowed := false
	var s *tcpSlot
	grab := func() (bool, error) {
		cp.reapLocked()
		if cp.open < cb.MaxConnections || len(cp.hosts[host]) == 0 {
			if cp.open >= cb.MaxConnections && !overflowed {
				st.cxOverflow.Add(1)
			}
			uc := &upConn{host: host, tcp: true}
			if cp.hosts == nil {
				cp.hosts = map[string][]*upConn{}
			}
			cp.hosts[host] = append(cp.hosts[host], uc)
			cp.open++
			st.cxTotal.Add(1)
			s = &tcpSlot{cp, uc}
			return true, nil
		}
		if !overflowed {
			overflowed = true
			st.cxOverflow.Add(1)
		}
		return false, nil
	}
	if err := cp.admit(ctx, cb.MaxPendingRequests, st, grab, nil); err != nil {
		return nil, err
	}
	return s, nil
}

// tcpHost keys a cluster's tcp_proxy connections in its pool: tcp_proxy
// picks its endpoint after taking the slot, so they count as one
// endpoint's (which always may have one).
const tcpHost = "tcp_proxy"

// upgradeTrip sends an upgrade (WebSocket) through the transport, its
// connection one of the cluster's max_connections until the upgraded
// stream (or the refusal's body) is closed.
func (p *Proxy) upgradeTrip(cs *clusterState, cl *config.Cluster, tr *http.Transport, out *http.Request) (*http.Response, error) {
	s, err := cs.pool.slot(out.Context(), cl, "upgrade "+out.URL.Host, &cs.st)
	if err != nil {
		return nil, err
	}
	resp, err := tr.RoundTrip(out)
	if err != nil {
		s.release()
		return nil, err
	}
	if rwc, ok := resp.Body.(io.ReadWriteCloser); ok {
		resp.Body = &slotRWC{ReadWriteCloser: rwc, slot: s}
	} else {
		resp.Body = &poolBody{ReadCloser: resp.Body, slot: s}
	}
	return resp, nil
}

// slotRWC is an upgraded stream that releases its slot when closed.
type slotRWC struct {
	io.ReadWriteCloser
	slot *tcpSlot
	once sync.Once
}

func (c *slotRWC) Close() error {
	err := c.ReadWriteCloser.Close()
	c.once.Do(c.slot.release)
	return err
}

// bind gives the slot to the dialled connection, released when it
// closes, or releases it at once when the dial failed.
func (s *tcpSlot) bind(conn *net.Conn, err *error) {
	if *err != nil || *conn == nil {
		s.release()
		return
	}
	*conn = &slotConn{Conn: *conn, slot: s}
}

func (s *tcpSlot) release() {
	s.cp.mu.Lock()
	s.cp.removeLocked(s.uc)
	s.cp.mu.Unlock()
	s.cp.signal()
}

// slotConn releases its slot when closed.
type slotConn struct {
	net.Conn
	slot *tcpSlot
	once sync.Once
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.slot.release)
	return err
}

// CloseWrite passes a half close on, where the connection has one.
func (c *slotConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// tcpPick is tcp_proxy's endpoint choice: the cluster's balancer, with
// outlier detection.
func (p *Proxy) tcpPick(cl *config.Cluster) *config.Endpoint {
	return p.pick(cl, p.clusterState(cl.Name), nil, false)
}

// dialTCPEndpoint dials a tcp_proxy's endpoint and feeds the outcome to
// outlier detection: a failure to connect is a local-origin failure, a
// connection a success.
func (p *Proxy) dialTCPEndpoint(ctx context.Context, snap *config.Snapshot, cl *config.Cluster, ep *config.Endpoint, ci *connInfo) (net.Conn, error) {
	conn, err := p.dialEndpoint(ctx, snap, cl, ep, ci)
	if cl.Outlier != nil && cl.Type != config.ClusterOriginalDst {
		o := outcome{status: 200, local: err != nil}
		p.report(cl, p.clusterState(cl.Name), ep, o)
	}
	return conn, err
}
