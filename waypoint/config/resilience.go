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
}

// Envoy's default thresholds.
var defaultCircuitBreakers = CircuitBreakers{MaxConnections: 1024, MaxPendingRequests: 1024, MaxRequests: 1024, MaxRetries: 3}

// OutlierDetection is the part of a cluster's outlier_detection the
// waypoint acts on: ejection after consecutive 5xx (or gateway errors),
// for base_ejection_time times the host's ejection count, at most
// max_ejection_percent of the hosts at once.
type OutlierDetection struct {
	Consecutive5xx, ConsecutiveGatewayFailure int
	// Enforcing5xx and EnforcingGatewayFailure are the percentages of
	// detections that eject.
	Enforcing5xx, EnforcingGatewayFailure       int
	Interval, BaseEjectionTime, MaxEjectionTime time.Duration
	MaxEjectionPercent                          int
}

// HTTPProtocolOptionsKey is the typed_extension_protocol_options key of
// the upstream HTTP protocol options.
const HTTPProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// buildResilience fills in a cluster's upstream protocol, load balancer,
// circuit breakers and outlier detection.
func buildResilience(out *Cluster, c *cluster.Cluster) error {
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
		case po.GetAutoConfig() != nil:
			// ALPN needs upstream TLS, which a cluster of the waypoint
			// has only to HBONE: HTTP/1.1 as Envoy falls back to.
			out.Protocol = UpstreamHTTP1
		}
		out.EnableTrailers = po.GetExplicitHttpConfig().GetHttpProtocolOptions().GetEnableTrailers() ||
			po.GetUseDownstreamProtocolConfig().GetHttpProtocolOptions().GetEnableTrailers() ||
			po.GetAutoConfig().GetHttpProtocolOptions().GetEnableTrailers()
		if len(po.GetHttpFilters()) > 0 {
			return unsupported("upstream http_filters")
		}
		if t := po.GetCommonHttpProtocolOptions().GetIdleTimeout(); t != nil {
			out.IdleTimeout = t.AsDuration()
		}
	}
	out.LeastRequest = c.GetLbPolicy() == cluster.Cluster_LEAST_REQUEST
	out.ChoiceCount = 2
	if n := c.GetLeastRequestLbConfig().GetChoiceCount(); n != nil {
		out.ChoiceCount = int(n.GetValue())
	}
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
	}
	if od := c.GetOutlierDetection(); od != nil {
		o := &OutlierDetection{
			Consecutive5xx: 5, ConsecutiveGatewayFailure: 5, Enforcing5xx: 100, EnforcingGatewayFailure: 0,
			Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second, MaxEjectionPercent: 10,
		}
		if v := od.GetConsecutive_5Xx(); v != nil {
			o.Consecutive5xx = int(v.GetValue())
		}
		if v := od.GetConsecutiveGatewayFailure(); v != nil {
			o.ConsecutiveGatewayFailure = int(v.GetValue())
		}
		if v := od.GetEnforcingConsecutive_5Xx(); v != nil {
			o.Enforcing5xx = int(v.GetValue())
		}
		if v := od.GetEnforcingConsecutiveGatewayFailure(); v != nil {
			o.EnforcingGatewayFailure = int(v.GetValue())
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
		if v := od.GetMaxEjectionPercent(); v != nil {
			o.MaxEjectionPercent = int(v.GetValue())
		}
		if o.MaxEjectionTime < o.BaseEjectionTime {
			o.MaxEjectionTime = o.BaseEjectionTime
		}
		out.Outlier = o
	}
	return nil
}
