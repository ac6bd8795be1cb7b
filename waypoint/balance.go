package waypoint

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// Load balancing, outlier detection and circuit breaking keep state
// that outlives a snapshot (Envoy keeps a host's active requests and
// ejection across EDS updates): it lives in the proxy, per cluster name
// and endpoint, not in config.Cluster, which each update rebuilds.
//
// Concurrency: clusterState's counters are atomics; its host map and
// connection slots have a mutex each; a hostState's outlier fields have
// its own mutex, taken only when a try ends on a cluster with outlier
// detection.

// clusterState is the runtime state of one cluster.
type clusterState struct {
	rr atomic.Uint64
	// active requests and active retries (circuit breakers max_requests,
	// max_retries).
	active, retries atomic.Int64
	// st are the cluster's counters as Envoy names them (clusterstats.go).
	st clusterCounters
	// conns are HTTP/1 connection slots (max_connections, with
	// max_pending_requests waiting for one).
	conns slots
	// pending are HTTP/2 requests admitted whose stream has not started
	// (waiting for a connection to be established, or for a stream):
	// max_pending_requests.
	pending atomic.Int64

	mu    sync.Mutex
	hosts map[string]*hostState
}

// hostState is the runtime state of one endpoint.
type hostState struct {
	active atomic.Int64

	mu                  sync.Mutex
	consec5xx, consecGw int
	ejections           int
	ejectedUntil        time.Time
}

func (p *Proxy) clusterState(name string) *clusterState {
	if v, ok := p.clusters.Load(name); ok {
		return v.(*clusterState)
	}
	v, _ := p.clusters.LoadOrStore(name, &clusterState{hosts: map[string]*hostState{}})
	return v.(*clusterState)
}

func (cs *clusterState) host(ep *config.Endpoint) *hostState {
	key := ep.String()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	h := cs.hosts[key]
	if h == nil {
		h = &hostState{}
		cs.hosts[key] = h
	}
	return h
}

func (h *hostState) ejected(now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return now.Before(h.ejectedUntil)
}

// pick chooses an endpoint of cl: outlier-ejected endpoints are left out
// unless all are (Envoy's panic mode then uses them all); with
// otherHosts (the previous_hosts predicate), endpoints already tried are
// left out while there are others. Round robin, or Envoy's least
// request: the endpoint with fewer active requests of ChoiceCount drawn
// at random.
func (p *Proxy) pick(cl *config.Cluster, cs *clusterState, tried map[*config.Endpoint]bool, otherHosts bool) *config.Endpoint {
	eps := cl.Endpoints
	if len(eps) == 0 {
		return nil
	}
	if cl.Outlier != nil || otherHosts && len(tried) > 0 {
		now := time.Now()
		var ok []*config.Endpoint
		for _, ep := range eps {
			if cl.Outlier != nil && cs.host(ep).ejected(now) {
				continue
			}
			if otherHosts && tried[ep] {
				continue
			}
			ok = append(ok, ep)
		}
		if len(ok) == 0 && otherHosts && len(tried) > 0 && cl.Outlier != nil {
			// Every healthy endpoint was tried: try the healthy ones again.
			for _, ep := range eps {
				if !cs.host(ep).ejected(now) {
					ok = append(ok, ep)
				}
			}
		}
		if len(ok) > 0 {
			eps = ok
		}
	}
	if len(eps) == 1 {
		return eps[0]
	}
	if cl.LeastRequest {
		n := max(cl.ChoiceCount, 2)
		var best *config.Endpoint
		var bestActive int64
		for range n {
			ep := eps[rand.IntN(len(eps))]
			a := cs.host(ep).active.Load()
			if best == nil || a < bestActive {
				best, bestActive = ep, a
			}
		}
		return best
	}
	return eps[(cs.rr.Add(1)-1)%uint64(len(eps))]
}

// outcome is how one try ended, for outlier detection.
type outcome struct {
	status int
	// local: the waypoint's own failure to reach the endpoint
	// (connect failure, reset, timeout), counted as a 503 (Envoy without
	// split_external_local_origin_errors).
	local bool
}

// report feeds one try's outcome to outlier detection: consecutive
// 5xx (or gateway errors) eject the endpoint for base_ejection_time
// times its ejection count (capped at max_ejection_time), unless
// max_ejection_percent of the endpoints are out already.
func (p *Proxy) report(cl *config.Cluster, cs *clusterState, ep *config.Endpoint, o outcome) {
	od := cl.Outlier
	if od == nil {
		return
	}
	status := o.status
	if o.local {
		status = 503
	}
	h := cs.host(ep)
	now := time.Now()
	h.mu.Lock()
	gw := status == 502 || status == 503 || status == 504
	if status >= 500 {
		h.consec5xx++
	} else {
		h.consec5xx = 0
	}
	if gw {
		h.consecGw++
	} else {
		h.consecGw = 0
	}
	already := now.Before(h.ejectedUntil)
	det5xx := od.Consecutive5xx > 0 && h.consec5xx == od.Consecutive5xx && !already
	detGw := od.ConsecutiveGatewayFailure > 0 && h.consecGw == od.ConsecutiveGatewayFailure && !already
	enf5xx := det5xx && rollPercent(float64(od.Enforcing5xx)/100)
	enfGw := !enf5xx && detGw && rollPercent(float64(od.EnforcingGatewayFailure)/100)
	h.mu.Unlock()
	if det5xx {
		cs.st.ejDetected5xx.Add(1)
	}
	if detGw {
		cs.st.ejDetectedGw.Add(1)
	}
	if !enf5xx && !enfGw {
		return
	}
	// max_ejection_percent over the endpoints ejected now (Envoy ejects
	// while the ejected share is below it).
	ejected := 0
	for _, e := range cl.Endpoints {
		if e != ep && cs.host(e).ejected(now) {
			ejected++
		}
	}
	if len(cl.Endpoints) == 0 || 100*ejected/len(cl.Endpoints) >= od.MaxEjectionPercent {
		cs.st.ejOverflow.Add(1)
		return
	}
	h.mu.Lock()
	// Each interval a host spent back in service since its last
	// ejection takes one off its ejection count (Envoy lowers the
	// multiplier at each interval the host is healthy).
	if h.ejections > 0 && od.Interval > 0 {
		h.ejections = max(0, h.ejections-int(now.Sub(h.ejectedUntil)/od.Interval))
	}
	h.ejections++
	d := time.Duration(h.ejections) * od.BaseEjectionTime
	if d > od.MaxEjectionTime {
		d = od.MaxEjectionTime
	}
	h.ejectedUntil = now.Add(d)
	h.consec5xx, h.consecGw = 0, 0
	h.mu.Unlock()
	cs.st.ejEnforced.Add(1)
	if enf5xx {
		cs.st.ejEnforced5xx.Add(1)
	} else {
		cs.st.ejEnforcedGw.Add(1)
	}
}

// errOverflow is a circuit breaker's refusal (response flag UO).
var errOverflow = errors.New("upstream overflow")

// admit applies the cluster's circuit breakers to a new request:
// max_requests, and for HTTP/1 (a connection per request in flight)
// max_connections with up to max_pending_requests waiting for one. On
// HTTP/2 a request is pending until its stream starts (its headers are
// written: until then it waits for a connection being established, or
// for a stream); at most max_pending_requests are. The returned release
// ends the request's share; started, when not nil, ends its pending
// time (idempotent: the caller calls it when the stream's headers are
// written and when the try has ended).
func (cs *clusterState) admit(ctx context.Context, cl *config.Cluster, http1 bool) (release, started func(), err error) {
	cb := cl.CircuitBreakers
	if cs.active.Add(1) > int64(cb.MaxRequests) {
		cs.active.Add(-1)
		cs.st.rqPendingOverflow.Add(1) // (Envoy counts max_requests here too)
		return nil, nil, errOverflow
	}
	if !http1 {
		release = func() { cs.active.Add(-1) }
		if cb.MaxPendingRequests >= cb.MaxRequests {
			// Pending requests are admitted ones: the limit cannot be
			// reached, and nothing needs counting (Envoy's defaults).
			return release, nil, nil
		}
		if cs.pending.Add(1) > int64(cb.MaxPendingRequests) {
			cs.pending.Add(-1)
			cs.active.Add(-1)
			cs.st.rqPendingOverflow.Add(1)
			return nil, nil, errOverflow
		}
		var done atomic.Bool
		return release, func() {
			if done.CompareAndSwap(false, true) {
				cs.pending.Add(-1)
			}
		}, nil
	}
	if err := cs.conns.acquire(ctx, cb.MaxConnections, cb.MaxPendingRequests, &cs.st.cxOverflow); err != nil {
		cs.active.Add(-1)
		if errors.Is(err, errOverflow) {
			cs.st.rqPendingOverflow.Add(1)
		}
		return nil, nil, err
	}
	return func() {
		cs.conns.release()
		cs.active.Add(-1)
	}, nil, nil
}

// retry takes a retry slot (max_retries); false is an overflow.
func (cs *clusterState) retry(cl *config.Cluster) bool {
	if cs.retries.Add(1) > int64(cl.CircuitBreakers.MaxRetries) {
		cs.retries.Add(-1)
		cs.st.rqRetryOverflow.Add(1)
		return false
	}
	return true
}

// slots is a counting semaphore with a bounded queue of waiters, handed
// over in arrival order.
type slots struct {
	mu      sync.Mutex
	busy    int
	waiters []chan struct{}
}

// acquire takes a slot, waiting for one among at most maxWaiting;
// cxOverflow counts the times all limit slots were busy (Envoy's
// upstream_cx_overflow: a connection the breaker did not allow).
func (s *slots) acquire(ctx context.Context, limit, maxWaiting int, cxOverflow *atomic.Uint64) error {
	s.mu.Lock()
	if s.busy < limit {
		s.busy++
		s.mu.Unlock()
		return nil
	}
	cxOverflow.Add(1)
	if len(s.waiters) >= maxWaiting {
		s.mu.Unlock()
		return errOverflow
	}
	ch := make(chan struct{})
	s.waiters = append(s.waiters, ch)
	s.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for i, w := range s.waiters {
			if w == ch {
				s.waiters = append(s.waiters[:i], s.waiters[i+1:]...)
				s.mu.Unlock()
				return ctx.Err()
			}
		}
		s.mu.Unlock()
		s.release() // handed over as we gave up: pass it on
		return ctx.Err()
	}
}

func (s *slots) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.waiters) > 0 {
		ch := s.waiters[0]
		s.waiters = s.waiters[1:]
		close(ch) // the slot passes to the waiter: busy unchanged
		return
	}
	s.busy--
}
