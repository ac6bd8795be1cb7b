package waypoint

import (
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	netapi "istio.io/api/networking/v1alpha3"
)

// The DestinationRule connection pool and outlier fields beyond the
// circuit breakers, as Istio's cluster builder maps them
// (pilot/pkg/networking/core/cluster_traffic_policy.go): the waypoint
// implements them all (docs/waypoint-resilience.md).

// connectionOptions sets the cluster's HTTP connection options
// (idleTimeout, else tcp.idleTimeout; maxRequestsPerConnection;
// tcp.maxConnectionDuration; maxConcurrentStreams on an HTTP/2 cluster)
// and TCP keepalive.
func connectionOptions(c *cluster.Cluster, cp *netapi.ConnectionPoolSettings) {
	h, tcp := cp.GetHttp(), cp.GetTcp()
	idle := h.GetIdleTimeout()
	if idle == nil {
		idle = tcp.GetIdleTimeout()
	}
	if idle != nil || h.GetMaxRequestsPerConnection() > 0 || tcp.GetMaxConnectionDuration() != nil || h.GetMaxConcurrentStreams() > 0 {
		opts := &core.HttpProtocolOptions{}
		if idle != nil {
			opts.IdleTimeout = durationpb.New(idle.AsDuration())
		}
		if n := h.GetMaxRequestsPerConnection(); n > 0 {
			opts.MaxRequestsPerConnection = wrapperspb.UInt32(uint32(n))
		}
		if d := tcp.GetMaxConnectionDuration(); d != nil {
			opts.MaxConnectionDuration = durationpb.New(d.AsDuration())
		}
		setCommonHTTPOptions(c, opts)
		if n := h.GetMaxConcurrentStreams(); n > 0 {
			hpo := &upstreamhttp.HttpProtocolOptions{}
			if err := c.TypedExtensionProtocolOptions[httpProtocolOptionsType].UnmarshalTo(hpo); err != nil {
				panic(err) // our own message: a program error
			}
			if h2 := hpo.GetExplicitHttpConfig().GetHttp2ProtocolOptions(); h2 != nil {
				h2.MaxConcurrentStreams = wrapperspb.UInt32(uint32(n))
				c.TypedExtensionProtocolOptions[httpProtocolOptionsType] = mustAny(hpo)
			}
		}
	}
	if ka := tcp.GetTcpKeepalive(); ka != nil {
		// Empty: SO_KEEPALIVE with the kernel's values, as Istio's.
		k := &core.TcpKeepalive{}
		if ka.GetProbes() > 0 {
			k.KeepaliveProbes = wrapperspb.UInt32(ka.GetProbes())
		}
		if ka.GetTime() != nil {
			k.KeepaliveTime = wrapperspb.UInt32(uint32(ka.GetTime().GetSeconds()))
		}
		if ka.GetInterval() != nil {
			k.KeepaliveInterval = wrapperspb.UInt32(uint32(ka.GetInterval().GetSeconds()))
		}
		c.UpstreamConnectionOptions = &cluster.UpstreamConnectionOptions{TcpKeepalive: k}
	}
}

// outlierSplit sets split_external_local_origin_errors and the
// consecutive local-origin failures, success-rate detection off as
// Istio's.
func outlierSplit(out *cluster.OutlierDetection, od *netapi.OutlierDetection) {
	if !od.GetSplitExternalLocalOriginErrors() {
		return
	}
	out.SplitExternalLocalOriginErrors = true
	if n := od.GetConsecutiveLocalOriginFailures().GetValue(); n > 0 {
		out.ConsecutiveLocalOriginFailure = wrapperspb.UInt32(n)
		out.EnforcingConsecutiveLocalOriginFailure = wrapperspb.UInt32(100)
	}
	out.EnforcingLocalOriginSuccessRate = wrapperspb.UInt32(0)
}
