package waypoint

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// Cluster statistics as Envoy names them (its cluster manager's
// "cluster.<name>." tree: upstream_rq_pending_overflow,
// outlier_detection.ejections_active, circuit_breakers.default.rq_open,
// ...), so that tools written for Envoy read them: the admin /stats
// ("cluster.<name>.<stat>: <value>" lines, or JSON) and Prometheus
// ("envoy_cluster_<stat>" with the stat's dots as underscores, label
// cluster_name, the tag Istio's bootstrap extracts from the name).
// Counters are atomics bumped where the event happens; gauges are read
// from the cluster's state when scraped.

// clusterCounters are one cluster's counters.
type clusterCounters struct {
	rqPendingOverflow, cxOverflow           atomic.Uint64
	rqRetry, rqRetryOverflow                atomic.Uint64
	rqTimeout, rqPerTryTimeout              atomic.Uint64
	ejEnforced, ejEnforced5xx, ejEnforcedGw atomic.Uint64
	ejDetected5xx, ejDetectedGw, ejOverflow atomic.Uint64
	// the connection pool's (connpool.go)
	cxTotal, cxMaxRequests       atomic.Uint64
	cxIdleTimeout, cxMaxDuration atomic.Uint64
	// outlier detection's other kinds (outlier.go)
	od outlierCounters
}

// clusterStat is one statistic of every cluster.
type clusterStat struct {
	name  string
	gauge bool
	help  string
	value func(cs *clusterState, cl *config.Cluster, now time.Time) uint64
	desc  *prometheus.Desc
}

func counter(name, help string, c func(*clusterCounters) *atomic.Uint64) *clusterStat {
	return &clusterStat{name: name, help: help, value: func(cs *clusterState, _ *config.Cluster, _ time.Time) uint64 { return c(&cs.st).Load() }}
}

func gauge(name, help string, v func(cs *clusterState, cl *config.Cluster, now time.Time) uint64) *clusterStat {
	return &clusterStat{name: name, gauge: true, help: help, value: v}
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// clusterStats are the statistics reported for every cluster, in
// Envoy's names (docs: configuration/upstream/cluster_manager/cluster_stats).
var clusterStats = func() []*clusterStat {
	st := []*clusterStat{
		counter("upstream_rq_pending_overflow", "Requests that overflowed the connection pool or requests circuit breaking and were failed.", func(c *clusterCounters) *atomic.Uint64 { return &c.rqPendingOverflow }),
		counter("upstream_cx_overflow", "Times the cluster's connection circuit breaker overflowed.", func(c *clusterCounters) *atomic.Uint64 { return &c.cxOverflow }),
		counter("upstream_cx_total", "Connections opened (or being opened).", func(c *clusterCounters) *atomic.Uint64 { return &c.cxTotal }),
		counter("upstream_cx_max_requests", "Connections closed for reaching max_requests_per_connection.", func(c *clusterCounters) *atomic.Uint64 { return &c.cxMaxRequests }),
		counter("upstream_cx_idle_timeout", "Connections closed by the idle timeout.", func(c *clusterCounters) *atomic.Uint64 { return &c.cxIdleTimeout }),
		counter("upstream_cx_max_duration_reached", "Connections drained for reaching max_connection_duration.", func(c *clusterCounters) *atomic.Uint64 { return &c.cxMaxDuration }),
		gauge("upstream_cx_active", "Connections open or being established.", func(cs *clusterState, _ *config.Cluster, _ time.Time) uint64 {
			open, _ := cs.pool.stats()
			return uint64(open)
		}),
		counter("upstream_rq_retry", "Request retries.", func(c *clusterCounters) *atomic.Uint64 { return &c.rqRetry }),
		counter("upstream_rq_retry_overflow", "Requests not retried due to circuit breaking.", func(c *clusterCounters) *atomic.Uint64 { return &c.rqRetryOverflow }),
		counter("upstream_rq_timeout", "Requests that timed out waiting for a response.", func(c *clusterCounters) *atomic.Uint64 { return &c.rqTimeout }),
		counter("upstream_rq_per_try_timeout", "Requests that hit the per-try timeout.", func(c *clusterCounters) *atomic.Uint64 { return &c.rqPerTryTimeout }),
		gauge("upstream_rq_active", "Active requests.", func(cs *clusterState, _ *config.Cluster, _ time.Time) uint64 {
			return uint64(max(cs.active.Load(), 0))
		}),
		gauge("upstream_rq_pending_active", "Active requests pending a connection or stream.", func(cs *clusterState, _ *config.Cluster, _ time.Time) uint64 {
			return uint64(cs.pendingActive())
		}),
		counter("outlier_detection.ejections_enforced_total", "Enforced ejections of any outlier type.", func(c *clusterCounters) *atomic.Uint64 { return &c.ejEnforced }),
		gauge("outlier_detection.ejections_active", "Hosts ejected now.", func(cs *clusterState, cl *config.Cluster, now time.Time) uint64 {
			n := uint64(0)
			if cl.Outlier != nil {
				for _, ep := range cl.Endpoints {
					n += b2u(cs.host(ep).ejected(now))
				}
			}
			return n
		}),
		counter("outlier_detection.ejections_overflow", "Ejections aborted by max_ejection_percent.", func(c *clusterCounters) *atomic.Uint64 { return &c.ejOverflow }),
		counter("outlier_detection.ejections_enforced_consecutive_5xx", "Enforced consecutive 5xx ejections.", func(c *clusterCounters) *atomic.Uint64 { return &c.ejEnforced5xx }),
		counter("outlier_detection.ejections_detected_consecutive_5xx", "Detected consecutive 5xx ejections (even if not enforced).", func(c *clusterCounters) *atomic.Uint64 { return &c.ejDetected5xx }),
		counter("outlier_detection.ejections_enforced_consecutive_gateway_failure", "Enforced consecutive gateway failure ejections.", func(c *clusterCounters) *atomic.Uint64 { return &c.ejEnforcedGw }),
		counter("outlier_detection.ejections_detected_consecutive_gateway_failure", "Detected consecutive gateway failure ejections (even if not enforced).", func(c *clusterCounters) *atomic.Uint64 { return &c.ejDetectedGw }),
		gauge("circuit_breakers.default.cx_open", "Whether the connection circuit breaker is at its limit (0 or 1).", func(cs *clusterState, cl *config.Cluster, _ time.Time) uint64 {
			open, _ := cs.pool.stats()
			return b2u(open >= cl.CircuitBreakers.MaxConnections)
		}),
		gauge("circuit_breakers.default.rq_pending_open", "Whether the pending requests circuit breaker is at its limit (0 or 1).", func(cs *clusterState, cl *config.Cluster, _ time.Time) uint64 {
			return b2u(cs.pendingActive() >= cl.CircuitBreakers.MaxPendingRequests)
		}),
		gauge("circuit_breakers.default.rq_open", "Whether the requests circuit breaker is at its limit (0 or 1).", func(cs *clusterState, cl *config.Cluster, _ time.Time) uint64 {
			return b2u(cs.active.Load() >= int64(cl.CircuitBreakers.MaxRequests))
		}),
		gauge("circuit_breakers.default.rq_retry_open", "Whether the retry circuit breaker is at its limit (0 or 1).", func(cs *clusterState, cl *config.Cluster, _ time.Time) uint64 {
			return b2u(cs.retries.Load() >= int64(cs.maxRetries(cl)))
		}),
	}
	st = append(st, outlierStats()...)
	for _, s := range st {
		s.desc = prometheus.NewDesc("envoy_cluster_"+strings.ReplaceAll(s.name, ".", "_"), s.help, []string{"cluster_name"}, nil)
	}
	return st
}()

// pendingActive: requests waiting for a connection or a stream.
func (cs *clusterState) pendingActive() int {
	_, pending := cs.pool.stats()
	return pending
}

// eachClusterStat calls f with every statistic of every cluster of the
// current configuration, clusters in name order.
func (p *Proxy) eachClusterStat(f func(cluster string, st *clusterStat, v uint64)) {
	snap := p.snap.Load()
	if snap == nil {
		return
	}
	names := make([]string, 0, len(snap.Clusters))
	for name := range snap.Clusters {
		names = append(names, name)
	}
	slices.Sort(names)
	now := time.Now()
	for _, name := range names {
		cl, cs := snap.Clusters[name], p.clusterState(name)
		for _, st := range clusterStats {
			f(name, st, st.value(cs, cl, now))
		}
	}
}

// statsHandler serves Envoy's admin /stats: "name: value" lines in name
// order, filter (an RE2 regular expression over the names) and
// usedonly (non-zero values) as Envoy's; format=json gives
// {"stats": [{"name", "value"}]}, format=prometheus the Prometheus text
// (as /stats/prometheus).
func (p *Proxy) statsHandler(prom http.Handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("format") == "prometheus" {
			prom.ServeHTTP(w, r)
			return
		}
		var filter *regexp.Regexp
		if f := q.Get("filter"); f != "" {
			var err error
			if filter, err = regexp.Compile(f); err != nil {
				http.Error(w, fmt.Sprintf("filter %q: %v", f, err), http.StatusBadRequest)
				return
			}
		}
		_, usedOnly := q["usedonly"]
		type stat struct {
			Name  string `json:"name"`
			Value uint64 `json:"value"`
		}
		var out []stat
		p.eachClusterStat(func(cluster string, st *clusterStat, v uint64) {
			name := "cluster." + cluster + "." + st.name
			if usedOnly && v == 0 || filter != nil && !filter.MatchString(name) {
				return
			}
			out = append(out, stat{name, v})
		})
		slices.SortFunc(out, func(a, b stat) int { return strings.Compare(a.Name, b.Name) })
		if q.Get("format") == "json" {
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(struct {
				Stats []stat `json:"stats"`
			}{out})
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=UTF-8")
		for _, s := range out {
			fmt.Fprintf(w, "%s: %d\n", s.Name, s.Value)
		}
	}
}
