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
	// pool are the cluster's upstream HTTP connections (connpool.go).
	pool connPool

	mu    sync.Mutex
	hosts map[string]*hostState
	// odNext: when outlier detection next judges the interval's
	// success rates and failure percentages (outlier.go).
	odMu   sync.Mutex
	odNext time.Time
}

// hostState is the runtime state of one endpoint.
type hostState struct {
	active atomic.Int64

	mu sync.Mutex
	// consecutive failures of each kind (outlier.go)
	consec5xx, consecGw, consecLocal int
	// this interval's tries: answered (external) and all (local origin)
	win          window
	ejections    int
	ejectedUntil time.Time
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
// unless fewer than the panic threshold's share are healthy (Envoy's
// panic mode then uses them all; with a threshold of 0, Istio's when a
// DestinationRule sets no minHealthPercent, never); with otherHosts (the
// previous_hosts predicate), endpoints already tried are left out while
// there are others. Round robin, or Envoy's least request: the endpoint
// with fewer active requests of ChoiceCount drawn at random.
func (p *Proxy) pick(cl *config.Cluster, cs *clusterState, tried map[*config.Endpoint]bool, otherHosts bool) *config.Endpoint {
	eps := cl.Endpoints
	if len(eps) == 0 {
		return nil
	}
	if cl.Prioritized {
		eps = cs.priorityLevel(cl, eps)
	}
	if cl.Outlier != nil {
		now := time.Now()
		var healthy []*config.Endpoint
		for _, ep := range eps {
			if !cs.host(ep).ejected(now) {
				healthy = append(healthy, ep)
			}
		}
		if len(healthy) < len(eps) && float64(100*len(healthy)) >= cl.PanicThreshold*float64(len(eps)) {
			if len(healthy) == 0 {
				cs.st.od.noHealthy.Add(1)
				return nil
			}
			eps = healthy
		} else if len(healthy) < len(eps) {
			cs.st.od.panic.Add(1)
		}
	}
	if otherHosts && len(tried) > 0 {
		var ok []*config.Endpoint
		for _, ep := range eps {
			if !tried[ep] {
				ok = append(ok, ep)
			}
		}
		if len(ok) > 0 {
			eps = ok // else every usable endpoint was tried: again
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

// priorityLevel are the endpoints of the highest priority (lowest
// number) that has one not ejected, as Envoy's priority load (without
// its overprovisioning factor's partial spill to the next level); all
// of them when none is healthy (panic mode decides then).
func (cs *clusterState) priorityLevel(cl *config.Cluster, eps []*config.Endpoint) []*config.Endpoint {
	now := time.Now()
	best, found := uint32(0), false
	for _, ep := range eps {
		if (!found || ep.Priority < best) && (cl.Outlier == nil || !cs.host(ep).ejected(now)) {
			best, found = ep.Priority, true
		}
	}
	if !found {
		return eps
	}
	var out []*config.Endpoint
	for _, ep := range eps {
		if ep.Priority == best {
			out = append(out, ep)
		}
	}
	return out
}

// errOverflow is a circuit breaker's refusal (response flag UO).
var errOverflow = errors.New("upstream overflow")

// admit applies the cluster's max_requests to a new request; the
// connection limits and pending requests are the pool's (connpool.go).
// The returned release ends the request's share. (started is always
// nil: a request is pending inside the pool.)
func (cs *clusterState) admit(_ context.Context, cl *config.Cluster, _ bool) (release, started func(), err error) {
	if cs.active.Add(1) > int64(cl.CircuitBreakers.MaxRequests) {
		cs.active.Add(-1)
		cs.st.rqPendingOverflow.Add(1) // (Envoy counts max_requests here too)
		return nil, nil, errOverflow
	}
	return func() { cs.active.Add(-1) }, nil, nil
}

// retry takes a retry slot (max_retries); false is an overflow.
func (cs *clusterState) retry(cl *config.Cluster) bool {
	if cs.retries.Add(1) > int64(cs.maxRetries(cl)) {
		cs.retries.Add(-1)
		cs.st.rqRetryOverflow.Add(1)
		return false
	}
	return true
}

// maxRetries is the retries the cluster allows at once: max_retries,
// or with a retry budget its share of the active and pending requests
// (at least min_retry_concurrency), as Envoy's.
func (cs *clusterState) maxRetries(cl *config.Cluster) int {
	cb := cl.CircuitBreakers
	if !cb.RetryBudget {
		return cb.MaxRetries
	}
	_, pending := cs.pool.stats()
	n := int(cb.BudgetPercent / 100 * float64(cs.active.Load()+int64(pending)))
	return max(n, cb.MinRetryConcurrency)
}
