package waypoint

import (
	"math/rand/v2"
	"sync/atomic"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// Stats are the proxy's counters, exported as Prometheus metrics: Envoy's
// own names where one exists, and Istio's standard metrics with
// reporter="waypoint" (telemetry.go).
type Stats struct {
	requests2xx, requests3xx, requests4xx, requests5xx atomic.Uint64
	rbacDenied, upstreamFail, badRequests, noChain     atomic.Uint64
	retries                                            atomic.Uint64
	// shadow counts RBAC shadow (dry-run) results by the shadow rules'
	// action (ALLOW, DENY, LOG) and result (allowed, denied).
	shadow [3][2]atomic.Uint64
	tel    *telemetry
	// clusters reports every cluster's statistics (clusterstats.go);
	// nil reports none.
	clusters func(f func(cluster string, st *clusterStat, v uint64))
}

func newStats() *Stats { return &Stats{tel: newTelemetry()} }

func (s *Stats) request(status int) {
	switch {
	case status >= 500:
		s.requests5xx.Add(1)
	case status >= 400:
		s.requests4xx.Add(1)
	case status >= 300:
		s.requests3xx.Add(1)
	case status >= 200:
		s.requests2xx.Add(1)
	}
}

// RBACDenied counts requests and connections RBAC denied.
func (s *Stats) RBACDenied() uint64 { return s.rbacDenied.Load() }

// shadowResult counts one RBAC shadow (dry-run) result.
func (s *Stats) shadowResult(action rbacv3.RBAC_Action, result string) {
	if action < 0 || int(action) >= len(s.shadow) {
		return
	}
	i := 0
	if result == config.ShadowDenied {
		i = 1
	}
	s.shadow[action][i].Add(1)
}

// shadowActions and shadowResults are the label values of the shadow
// counters' indexes: Istio's authz_dry_run_action and
// authz_dry_run_result tags.
var (
	shadowActions = [3]string{"allow", "deny", "log"}
	shadowResults = [2]string{config.ShadowAllowed, config.ShadowDenied}
)

// Describe and Collect make Stats a prometheus.Collector.
func (s *Stats) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRequests, descRBAC, descShadow, descUF, descBad, descNoChain} {
		ch <- d
	}
	for _, st := range clusterStats {
		ch <- st.desc
	}
	for _, c := range s.tel.collectors() {
		c.Describe(ch)
	}
}

var (
	descRequests = prometheus.NewDesc("envoy_http_downstream_rq_xx", "Requests answered, by status class.", []string{"envoy_response_code_class"}, nil)
	descRBAC     = prometheus.NewDesc("envoy_http_rbac_denied", "Requests and connections denied by RBAC.", nil, nil)
	// descShadow is Envoy's rbac.<shadow_rules_stat_prefix>shadow_allowed
	// and shadow_denied as Istio's bootstrap tags them (the dry-run
	// task's envoy_..._rbac{authz_dry_run_action, authz_dry_run_result}).
	descShadow = prometheus.NewDesc("envoy_http_rbac", "Requests and connections RBAC shadow (dry-run) rules would allow or deny.",
		[]string{"authz_dry_run_action", "authz_dry_run_result"}, nil)
	descUF      = prometheus.NewDesc("envoy_cluster_upstream_cx_connect_fail", "Upstream connections that failed.", nil, nil)
	descBad     = prometheus.NewDesc("envoy_http_downstream_rq_rx_reset", "Malformed requests answered 4xx and closed.", nil, nil)
	descNoChain = prometheus.NewDesc("envoy_listener_no_filter_chain_match", "Connections no filter chain matched.", nil, nil)
)

func (s *Stats) Collect(ch chan<- prometheus.Metric) {
	for class, v := range map[string]uint64{"2": s.requests2xx.Load(), "3": s.requests3xx.Load(), "4": s.requests4xx.Load(), "5": s.requests5xx.Load()} {
		ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(v), class)
	}
	ch <- prometheus.MustNewConstMetric(descRBAC, prometheus.CounterValue, float64(s.rbacDenied.Load()))
	for a := range s.shadow {
		for r := range s.shadow[a] {
			if v := s.shadow[a][r].Load(); v > 0 {
				ch <- prometheus.MustNewConstMetric(descShadow, prometheus.CounterValue, float64(v), shadowActions[a], shadowResults[r])
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(descUF, prometheus.CounterValue, float64(s.upstreamFail.Load()))
	ch <- prometheus.MustNewConstMetric(descBad, prometheus.CounterValue, float64(s.badRequests.Load()))
	ch <- prometheus.MustNewConstMetric(descNoChain, prometheus.CounterValue, float64(s.noChain.Load()))
	if s.clusters != nil {
		s.clusters(func(cluster string, st *clusterStat, v uint64) {
			typ := prometheus.CounterValue
			if st.gauge {
				typ = prometheus.GaugeValue
			}
			ch <- prometheus.MustNewConstMetric(st.desc, typ, float64(v), cluster)
		})
	}
	for _, c := range s.tel.collectors() {
		c.Collect(ch)
	}
}

// rollPercent is true with probability p.
func rollPercent(p float64) bool {
	if p >= 1 {
		return true
	}
	return rand.Float64() < p
}

// BadRequests counts malformed requests the waypoint answered itself.
func (s *Stats) BadRequests() uint64 { return s.badRequests.Load() }

// Retries counts requests retried.
func (s *Stats) Retries() uint64 { return s.retries.Load() }
