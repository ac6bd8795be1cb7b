//lint:file-ignore SA1019 Envoy still honours the cluster's deprecated protocol fields, and a stock config may set them

package config

import (
	"fmt"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// UpstreamProtocol is the HTTP version a cluster speaks to its
// endpoints (the cluster's envoy.extensions.upstreams.http.v3.HttpProtocolOptions).
type UpstreamProtocol int

const (
	// UpstreamHTTP1 is Envoy's default without protocol options.
	UpstreamHTTP1 UpstreamProtocol = iota
	// UpstreamHTTP2 is explicit_http_config with http2_protocol_options
	// (istiod's choice for grpc and http2 ports): cleartext HTTP/2 with
	// prior knowledge, requests multiplexed on one connection.
	UpstreamHTTP2
	// UpstreamDownstream is use_downstream_protocol_config: the
	// downstream request's version.
	UpstreamDownstream
)

// CircuitBreakers are the default-priority thresholds of a cluster's
// circuit_breakers, Envoy's defaults where unset.
type CircuitBreakers struct {
	MaxConnections, MaxPendingRequests, MaxRequests, MaxRetries int
	// RetryBudget, when set, replaces MaxRetries: BudgetPercent of the
	// active and pending requests may retry at once, at least
	// MinRetryConcurrency.
	RetryBudget         bool
	BudgetPercent       float64
	MinRetryConcurrency int
}

// Envoy's default thresholds.
var defaultCircuitBreakers = CircuitBreakers{MaxConnections: 1024, MaxPendingRequests: 1024, MaxRequests: 1024, MaxRetries: 3}

// CircuitBreakers' MaxRetries may instead be a retry budget: at most
// BudgetPercent of the active and pending requests retry at once, and
// never fewer than MinRetryConcurrency.

// ConnPool are the limits of a cluster's upstream connections (the
// HTTP protocol options' common_http_protocol_options and
// http2_protocol_options, and upstream_connection_options): 0 is none.
type ConnPool struct {
	// MaxRequestsPerConnection: requests a connection carries before it
	// is drained (max_requests_per_connection; Istio's
	// connectionPool.http.maxRequestsPerConnection).
	MaxRequestsPerConnection int
	// IdleTimeout closes a connection without requests for it (Envoy's
	// default an hour; Istio's connectionPool.http.idleTimeout).
	IdleTimeout time.Duration
	// MaxConnectionDuration drains a connection that old (Istio's
	// connectionPool.tcp.maxConnectionDuration).
	MaxConnectionDuration time.Duration
	// MaxConcurrentStreams bounds the requests on one HTTP/2 connection
	// (http2_protocol_options.max_concurrent_streams; Envoy's default is
	// 2^31-1, the server's SETTINGS lower it).
	MaxConcurrentStreams int
	// Keepalive: TCP keepalive on upstream sockets
	// (upstream_connection_options.tcp_keepalive; Istio's
	// connectionPool.tcp.tcpKeepalive), nil when off.
	Keepalive *Keepalive
}

// Keepalive is TCP keepalive, the kernel's defaults where 0.
type Keepalive struct {
	Probes         int
	Time, Interval time.Duration
}

// defaultIdleTimeout is Envoy's for upstream connections.
const defaultUpstreamIdleTimeout = time.Hour

// OutlierDetection is a cluster's outlier_detection, Envoy's defaults
// where unset: consecutive 5xx, gateway failures and (split) local
// origin failures eject at once; success rate and failure percentage
// are judged at each interval over the interval's requests.
type OutlierDetection struct {
	Consecutive5xx, ConsecutiveGatewayFailure, ConsecutiveLocalOriginFailure int
	// Enforcing* are the percentages of detections that eject.
	Enforcing5xx, EnforcingGatewayFailure, EnforcingLocalOriginFailure int
	Interval, BaseEjectionTime, MaxEjectionTime, MaxEjectionTimeJitter time.Duration
	MaxEjectionPercent                                                 int
	// SplitLocalOrigin: the waypoint's own failures to reach a host
	// (connect failure, reset, timeout) are counted apart from the
	// host's answers (split_external_local_origin_errors); else they
	// count as 503s.
	SplitLocalOrigin bool
	// Success rate: a host whose rate is below mean - stdev*factor/1000
	// of the hosts with RequestVolume requests in the interval (at least
	// MinimumHosts of them) is an outlier.
	SuccessRateMinimumHosts, SuccessRateRequestVolume, SuccessRateStdevFactor int
	EnforcingSuccessRate, EnforcingLocalOriginSuccessRate                     int
	// Failure percentage: a host failing at least Threshold percent of
	// RequestVolume requests or more in the interval (with MinimumHosts
	// such hosts) is an outlier.
	FailurePercentageThreshold, FailurePercentageMinimumHosts, FailurePercentageRequestVolume int
	EnforcingFailurePercentage, EnforcingFailurePercentageLocalOrigin                         int
	// AlwaysEjectOneHost: one host may be ejected whatever
	// max_ejection_percent says.
	AlwaysEjectOneHost bool
}

// HTTPProtocolOptionsKey is the typed_extension_protocol_options key of
// the upstream HTTP protocol options.
const HTTPProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// buildResilience fills in a cluster's upstream protocol, connection
// pool, load balancer, circuit breakers and outlier detection; a field
// that changes how traffic is balanced, limited or ejected and that the
// waypoint does not implement is refused by name (docs/waypoint-resilience.md
// lists what is ignored, and why that is safe).
func buildResilience(out *Cluster, c *cluster.Cluster) error {
	if err := refuseCluster(c); err != nil {
		return err
	}
	out.Pool.IdleTimeout = defaultUpstreamIdleTimeout
	// The cluster's own (deprecated) protocol fields, which
	// typed_extension_protocol_options override.
	if c.GetHttp2ProtocolOptions() != nil {
		out.Protocol = UpstreamHTTP2
	}
	if c.GetProtocolSelection() == cluster.Cluster_USE_DOWNSTREAM_PROTOCOL {
		out.Protocol = UpstreamDownstream
	}
	if err := poolOptions(out, c.GetCommonHttpProtocolOptions(), c.GetHttp2ProtocolOptions()); err != nil {
		return err
	}
	out.EnableTrailers = c.GetHttpProtocolOptions().GetEnableTrailers()
	if n := c.GetMaxRequestsPerConnection(); n != nil {
		out.Pool.MaxRequestsPerConnection = int(min(n.GetValue(), 1<<31-1))
	}
	for key, a := range c.GetTypedExtensionProtocolOptions() {
		if key != HTTPProtocolOptionsKey && innerType(a) != HTTPProtocolOptionsKey {
			return unsupported(fmt.Sprintf("typed_extension_protocol_options %s", key))
		}
		var po upstreamhttp.HttpProtocolOptions
		if err := anyTo(a, &po); err != nil {
			return fmt.Errorf("protocol options: %w", err)
		}
		switch {
		case po.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil:
			out.Protocol = UpstreamHTTP2
		case po.GetExplicitHttpConfig().GetHttp3ProtocolOptions() != nil:
			return unsupported("upstream HTTP/3")
		case po.GetUseDownstreamProtocolConfig() != nil:
			out.Protocol = UpstreamDownstream
			if po.GetUseDownstreamProtocolConfig().GetHttp3ProtocolOptions() != nil {
				return unsupported("upstream HTTP/3")
			}
		case po.GetAutoConfig() != nil:
			// ALPN needs upstream TLS, which a cluster of the waypoint
			// has only to HBONE: HTTP/1.1 as Envoy falls back to.
			out.Protocol = UpstreamHTTP1
		case po.GetExplicitHttpConfig() != nil:
			out.Protocol = UpstreamHTTP1
		}
		out.EnableTrailers = po.GetExplicitHttpConfig().GetHttpProtocolOptions().GetEnableTrailers() ||
			po.GetUseDownstreamProtocolConfig().GetHttpProtocolOptions().GetEnableTrailers() ||
			po.GetAutoConfig().GetHttpProtocolOptions().GetEnableTrailers()
		if len(po.GetHttpFilters()) > 0 {
			return unsupported("upstream http_filters")
		}
		switch {
		case po.GetRetryPolicy() != nil:
			return unsupported("HttpProtocolOptions retry_policy")
		case po.GetOutlierDetection() != nil:
			return unsupported("HttpProtocolOptions outlier_detection")
		case len(po.GetRequestMirrorPolicies()) > 0:
			return unsupported("HttpProtocolOptions request_mirror_policies")
		case len(po.GetHashPolicy()) > 0:
			return unsupported("HttpProtocolOptions hash_policy")
		case po.GetHeaderValidationConfig() != nil:
			return unsupported("HttpProtocolOptions header_validation_config")
		}
		h2 := po.GetExplicitHttpConfig().GetHttp2ProtocolOptions()
		if h2 == nil {
			h2 = po.GetUseDownstreamProtocolConfig().GetHttp2ProtocolOptions()
		}
		if h2 == nil {
			h2 = po.GetAutoConfig().GetHttp2ProtocolOptions()
		}
		if err := poolOptions(out, po.GetCommonHttpProtocolOptions(), h2); err != nil {
			return err
		}
	}
	if ka := c.GetUpstreamConnectionOptions().GetTcpKeepalive(); ka != nil {
		out.Pool.Keepalive = &Keepalive{
			Probes:   int(ka.GetKeepaliveProbes().GetValue()),
			Time:     time.Duration(ka.GetKeepaliveTime().GetValue()) * time.Second,
			Interval: time.Duration(ka.GetKeepaliveInterval().GetValue()) * time.Second,
		}
	}
	out.LeastRequest = c.GetLbPolicy() == cluster.Cluster_LEAST_REQUEST
	out.ChoiceCount = 2
	if n := c.GetLeastRequestLbConfig().GetChoiceCount(); n != nil {
		out.ChoiceCount = int(n.GetValue())
	}
	out.PanicThreshold = 50
	if pt := c.GetCommonLbConfig().GetHealthyPanicThreshold(); pt != nil {
		out.PanicThreshold = pt.GetValue()
	}
	if err := circuitBreakers(out, c); err != nil {
		return err
	}
	if od := c.GetOutlierDetection(); od != nil {
		o, err := outlierDetection(od)
		if err != nil {
			return err
		}
		out.Outlier = o
	}
	return nil
}

// poolOptions reads the connection options common to both HTTP
// versions and HTTP/2's stream limit; those that bound what an upstream
// may send (and so need the codec's help) are refused.
func poolOptions(out *Cluster, co *core.HttpProtocolOptions, h2 *core.Http2ProtocolOptions) error {
	if co != nil {
		if t := co.GetIdleTimeout(); t != nil {
			out.Pool.IdleTimeout = t.AsDuration() // 0: never
		}
		if t := co.GetMaxConnectionDuration(); t != nil {
			out.Pool.MaxConnectionDuration = t.AsDuration()
		}
		if n := co.GetMaxRequestsPerConnection(); n != nil {
			out.Pool.MaxRequestsPerConnection = int(min(n.GetValue(), 1<<31-1))
		}
		switch {
		case co.GetMaxStreamDuration().AsDuration() > 0:
			return unsupported("upstream common_http_protocol_options max_stream_duration")
		case co.GetMaxConnectionDurationJitter() != nil:
			return unsupported("upstream common_http_protocol_options max_connection_duration_jitter")
		}
	}
	if n := h2.GetMaxConcurrentStreams(); n != nil {
		out.Pool.MaxConcurrentStreams = int(min(n.GetValue(), 1<<31-1))
	}
	return nil
}

// refuseCluster refuses the cluster fields that would change which
// hosts get traffic or how they are protected, and that the waypoint
// does not implement.
func refuseCluster(c *cluster.Cluster) error {
	for _, f := range []struct {
		set  bool
		name string
	}{
		{len(c.GetHealthChecks()) > 0, "health_checks (active health checking)"},
		{c.GetLbSubsetConfig() != nil, "lb_subset_config"},
		{c.GetLoadBalancingPolicy() != nil, "load_balancing_policy (use lb_policy)"},
		{c.GetRingHashLbConfig() != nil || c.GetMaglevLbConfig() != nil || c.GetOriginalDstLbConfig() != nil && c.GetType() != cluster.Cluster_ORIGINAL_DST, "lb_config of another lb_policy"},
		{c.GetUpstreamBindConfig() != nil, "upstream_bind_config"},
		{!peerMetadataFilters(c.GetFilters()), "upstream network filters (other than Istio's peer metadata discovery)"},
		{c.GetUpstreamConfig() != nil, "upstream_config"},
		{c.GetCommonLbConfig().GetZoneAwareLbConfig() != nil, "common_lb_config zone_aware_lb_config"},
		{c.GetCommonLbConfig().GetOverrideHostStatus() != nil, "common_lb_config override_host_status"},
		{c.GetHttpProtocolOptions().GetHeaderKeyFormat() != nil, "http_protocol_options header_key_format"},
	} {
		if f.set {
			return unsupported(f.name)
		}
	}
	return nil
}

// peerMetadataUpstreamFilters are the upstream network filters Istio's
// istiod puts on outbound clusters (a waypoint's telemetry collectors')
// to learn the peer's workload metadata for telemetry: metadata exchange
// and the HBONE peer metadata filter. They do not change what is sent
// where; the waypoint learns its peers from the workload API instead.
var peerMetadataUpstreamFilters = map[string]bool{
	"envoy.tcp.metadataexchange.config.MetadataExchange":            true,
	"envoy.extensions.network_filters.peer_metadata.UpstreamConfig": true,
}

// peerMetadataFilters: fs has only such filters (or none).
func peerMetadataFilters(fs []*cluster.Filter) bool {
	for _, f := range fs {
		if !peerMetadataUpstreamFilters[innerType(f.GetTypedConfig())] {
			return false
		}
	}
	return true
}

// circuitBreakers reads the default-priority thresholds.
func circuitBreakers(out *Cluster, c *cluster.Cluster) error {
	out.CircuitBreakers = defaultCircuitBreakers
	for _, t := range c.GetCircuitBreakers().GetThresholds() {
		if t.GetPriority() != core.RoutingPriority_DEFAULT {
			continue // the waypoint routes at default priority only
		}
		cb := &out.CircuitBreakers
		for _, f := range []struct {
			dst *int
			v   interface{ GetValue() uint32 }
			set bool
		}{
			{&cb.MaxConnections, t.GetMaxConnections(), t.GetMaxConnections() != nil},
			{&cb.MaxPendingRequests, t.GetMaxPendingRequests(), t.GetMaxPendingRequests() != nil},
			{&cb.MaxRequests, t.GetMaxRequests(), t.GetMaxRequests() != nil},
			{&cb.MaxRetries, t.GetMaxRetries(), t.GetMaxRetries() != nil},
		} {
			if f.set {
				*f.dst = int(min(f.v.GetValue(), 1<<31-1))
			}
		}
		if rb := t.GetRetryBudget(); rb != nil {
			cb.RetryBudget = true
			cb.BudgetPercent, cb.MinRetryConcurrency = 20, 3
			if v := rb.GetBudgetPercent(); v != nil {
				cb.BudgetPercent = v.GetValue()
			}
			if v := rb.GetMinRetryConcurrency(); v != nil {
				cb.MinRetryConcurrency = int(min(v.GetValue(), 1<<31-1))
			}
		}
		if t.GetMaxConnectionPools() != nil {
			return unsupported("circuit_breakers max_connection_pools")
		}
	}
	return nil
}

func outlierDetection(od *cluster.OutlierDetection) (*OutlierDetection, error) {
	if len(od.GetMonitors()) > 0 {
		return nil, unsupported("outlier_detection monitors")
	}
	if od.GetDetectDegradedHosts().GetValue() {
		return nil, unsupported("outlier_detection detect_degraded_hosts")
	}
	// (successful_active_health_check_uneject_host needs active health
	// checks, which are refused.)
	o := &OutlierDetection{
		Consecutive5xx: 5, ConsecutiveGatewayFailure: 5, ConsecutiveLocalOriginFailure: 5,
		Enforcing5xx: 100, EnforcingGatewayFailure: 0, EnforcingLocalOriginFailure: 100,
		Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second, MaxEjectionPercent: 10,
		SuccessRateMinimumHosts: 5, SuccessRateRequestVolume: 100, SuccessRateStdevFactor: 1900,
		EnforcingSuccessRate: 100, EnforcingLocalOriginSuccessRate: 100,
		FailurePercentageThreshold: 85, FailurePercentageMinimumHosts: 5, FailurePercentageRequestVolume: 50,
		SplitLocalOrigin: od.GetSplitExternalLocalOriginErrors(), AlwaysEjectOneHost: od.GetAlwaysEjectOneHost().GetValue(),
	}
	for _, f := range []struct {
		dst *int
		v   interface{ GetValue() uint32 }
		set bool
	}{
		{&o.Consecutive5xx, od.GetConsecutive_5Xx(), od.GetConsecutive_5Xx() != nil},
		{&o.ConsecutiveGatewayFailure, od.GetConsecutiveGatewayFailure(), od.GetConsecutiveGatewayFailure() != nil},
		{&o.ConsecutiveLocalOriginFailure, od.GetConsecutiveLocalOriginFailure(), od.GetConsecutiveLocalOriginFailure() != nil},
		{&o.Enforcing5xx, od.GetEnforcingConsecutive_5Xx(), od.GetEnforcingConsecutive_5Xx() != nil},
		{&o.EnforcingGatewayFailure, od.GetEnforcingConsecutiveGatewayFailure(), od.GetEnforcingConsecutiveGatewayFailure() != nil},
		{&o.EnforcingLocalOriginFailure, od.GetEnforcingConsecutiveLocalOriginFailure(), od.GetEnforcingConsecutiveLocalOriginFailure() != nil},
		{&o.MaxEjectionPercent, od.GetMaxEjectionPercent(), od.GetMaxEjectionPercent() != nil},
		{&o.SuccessRateMinimumHosts, od.GetSuccessRateMinimumHosts(), od.GetSuccessRateMinimumHosts() != nil},
		{&o.SuccessRateRequestVolume, od.GetSuccessRateRequestVolume(), od.GetSuccessRateRequestVolume() != nil},
		{&o.SuccessRateStdevFactor, od.GetSuccessRateStdevFactor(), od.GetSuccessRateStdevFactor() != nil},
		{&o.EnforcingSuccessRate, od.GetEnforcingSuccessRate(), od.GetEnforcingSuccessRate() != nil},
		{&o.EnforcingLocalOriginSuccessRate, od.GetEnforcingLocalOriginSuccessRate(), od.GetEnforcingLocalOriginSuccessRate() != nil},
		{&o.FailurePercentageThreshold, od.GetFailurePercentageThreshold(), od.GetFailurePercentageThreshold() != nil},
		{&o.FailurePercentageMinimumHosts, od.GetFailurePercentageMinimumHosts(), od.GetFailurePercentageMinimumHosts() != nil},
		{&o.FailurePercentageRequestVolume, od.GetFailurePercentageRequestVolume(), od.GetFailurePercentageRequestVolume() != nil},
		{&o.EnforcingFailurePercentage, od.GetEnforcingFailurePercentage(), od.GetEnforcingFailurePercentage() != nil},
		{&o.EnforcingFailurePercentageLocalOrigin, od.GetEnforcingFailurePercentageLocalOrigin(), od.GetEnforcingFailurePercentageLocalOrigin() != nil},
	} {
		if f.set {
			*f.dst = int(min(f.v.GetValue(), 1<<31-1))
		}
	}
	if v := od.GetInterval(); v != nil {
		o.Interval = v.AsDuration()
	}
	if v := od.GetBaseEjectionTime(); v != nil {
		o.BaseEjectionTime = v.AsDuration()
	}
	if v := od.GetMaxEjectionTime(); v != nil {
		o.MaxEjectionTime = v.AsDuration()
	}
	if v := od.GetMaxEjectionTimeJitter(); v != nil {
		o.MaxEjectionTimeJitter = v.AsDuration()
	}
	if o.MaxEjectionTime < o.BaseEjectionTime {
		o.MaxEjectionTime = o.BaseEjectionTime
	}
	if o.Interval <= 0 {
		return nil, fmt.Errorf("outlier_detection interval %v: want more than 0", o.Interval)
	}
	return o, nil
}
