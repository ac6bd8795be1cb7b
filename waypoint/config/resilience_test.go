//lint:file-ignore SA1019 the tests set the cluster's deprecated protocol fields, which Envoy still honours

package config

import (
	"errors"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestClusterResilience: protocol options, load balancer, circuit
// breakers (Envoy's defaults where unset) and outlier detection as the
// waypoint reads them; an option it does not implement is refused by
// name.
func TestClusterResilience(t *testing.T) {
	h2 := &upstreamhttp.HttpProtocolOptions{UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{
		ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}}}}}
	down := &upstreamhttp.HttpProtocolOptions{UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_UseDownstreamProtocolConfig{
		UseDownstreamProtocolConfig: &upstreamhttp.HttpProtocolOptions_UseDownstreamHttpConfig{}}}
	cb1024 := CircuitBreakers{MaxConnections: 1024, MaxPendingRequests: 1024, MaxRequests: 1024, MaxRetries: 3}
	hour := ConnPool{IdleTimeout: time.Hour}
	withOptions := func(c *cluster.Cluster, po *upstreamhttp.HttpProtocolOptions) {
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{HTTPProtocolOptionsKey: mustAny(t, po)}
	}
	base := func(edit func(c *cluster.Cluster)) *cluster.Cluster {
		c := &cluster.Cluster{Name: "c", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC}, LoadAssignment: nil}
		edit(c)
		return c
	}
	for _, tc := range []struct {
		name    string
		cluster *cluster.Cluster
		want    *Cluster
		wantErr error
	}{
		{"defaults", base(func(*cluster.Cluster) {}), &Cluster{ChoiceCount: 2, CircuitBreakers: cb1024, Pool: hour, PanicThreshold: 50}, nil},
		{"explicit h2, least request", base(func(c *cluster.Cluster) {
			c.TypedExtensionProtocolOptions = map[string]*anypb.Any{HTTPProtocolOptionsKey: mustAny(t, h2)}
			c.LbPolicy = cluster.Cluster_LEAST_REQUEST
			c.LbConfig = &cluster.Cluster_LeastRequestLbConfig_{LeastRequestLbConfig: &cluster.Cluster_LeastRequestLbConfig{ChoiceCount: wrapperspb.UInt32(3)}}
		}), &Cluster{Protocol: UpstreamHTTP2, LeastRequest: true, ChoiceCount: 3, CircuitBreakers: cb1024, Pool: hour, PanicThreshold: 50}, nil},
		{"downstream protocol, istiod's circuit breakers", base(func(c *cluster.Cluster) {
			c.TypedExtensionProtocolOptions = map[string]*anypb.Any{HTTPProtocolOptionsKey: mustAny(t, down)}
			max := wrapperspb.UInt32(4294967295)
			c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{MaxConnections: max, MaxPendingRequests: max, MaxRequests: max, MaxRetries: max}}}
		}), &Cluster{Protocol: UpstreamDownstream, ChoiceCount: 2, CircuitBreakers: CircuitBreakers{MaxConnections: 1<<31 - 1, MaxPendingRequests: 1<<31 - 1, MaxRequests: 1<<31 - 1, MaxRetries: 1<<31 - 1}, Pool: hour, PanicThreshold: 50}, nil},
		{"outlier detection", base(func(c *cluster.Cluster) {
			c.OutlierDetection = &cluster.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(7), BaseEjectionTime: durationpb.New(time.Minute), MaxEjectionPercent: wrapperspb.UInt32(100)}
		}), &Cluster{ChoiceCount: 2, CircuitBreakers: cb1024, Pool: hour, PanicThreshold: 50, Outlier: &OutlierDetection{
			Consecutive5xx: 7, ConsecutiveGatewayFailure: 5, ConsecutiveLocalOriginFailure: 5, Enforcing5xx: 100, EnforcingLocalOriginFailure: 100,
			Interval: 10 * time.Second, BaseEjectionTime: time.Minute, MaxEjectionTime: 300 * time.Second, MaxEjectionPercent: 100,
			SuccessRateMinimumHosts: 5, SuccessRateRequestVolume: 100, SuccessRateStdevFactor: 1900, EnforcingSuccessRate: 100, EnforcingLocalOriginSuccessRate: 100,
			FailurePercentageThreshold: 85, FailurePercentageMinimumHosts: 5, FailurePercentageRequestVolume: 50}}, nil},
		{"istiod's DestinationRule: connection pool, outlier detection, minHealthPercent", base(func(c *cluster.Cluster) {
			withOptions(c, &upstreamhttp.HttpProtocolOptions{
				CommonHttpProtocolOptions: &core.HttpProtocolOptions{IdleTimeout: durationpb.New(time.Minute), MaxRequestsPerConnection: wrapperspb.UInt32(5),
					MaxConnectionDuration: durationpb.New(time.Hour)},
				UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
					ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{MaxConcurrentStreams: wrapperspb.UInt32(7)}}}}})
			c.UpstreamConnectionOptions = &cluster.UpstreamConnectionOptions{TcpKeepalive: &core.TcpKeepalive{KeepaliveTime: wrapperspb.UInt32(30), KeepaliveInterval: wrapperspb.UInt32(10), KeepaliveProbes: wrapperspb.UInt32(3)}}
			c.CommonLbConfig = &cluster.Cluster_CommonLbConfig{HealthyPanicThreshold: &typev3.Percent{}}
			c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{MaxRetries: wrapperspb.UInt32(2), TrackRemaining: true,
				RetryBudget: &cluster.CircuitBreakers_Thresholds_RetryBudget{BudgetPercent: &typev3.Percent{Value: 25}}}}}
			c.OutlierDetection = &cluster.OutlierDetection{SplitExternalLocalOriginErrors: true, ConsecutiveLocalOriginFailure: wrapperspb.UInt32(2),
				EnforcingSuccessRate: wrapperspb.UInt32(0), FailurePercentageThreshold: wrapperspb.UInt32(60), EnforcingFailurePercentage: wrapperspb.UInt32(100),
				MaxEjectionTimeJitter: durationpb.New(time.Second), AlwaysEjectOneHost: wrapperspb.Bool(true)}
		}), &Cluster{Protocol: UpstreamHTTP2, ChoiceCount: 2,
			CircuitBreakers: CircuitBreakers{MaxConnections: 1024, MaxPendingRequests: 1024, MaxRequests: 1024, MaxRetries: 2, RetryBudget: true, BudgetPercent: 25, MinRetryConcurrency: 3},
			Pool: ConnPool{MaxRequestsPerConnection: 5, IdleTimeout: time.Minute, MaxConnectionDuration: time.Hour, MaxConcurrentStreams: 7,
				Keepalive: &Keepalive{Probes: 3, Time: 30 * time.Second, Interval: 10 * time.Second}},
			Outlier: &OutlierDetection{
				Consecutive5xx: 5, ConsecutiveGatewayFailure: 5, ConsecutiveLocalOriginFailure: 2, Enforcing5xx: 100, EnforcingLocalOriginFailure: 100,
				Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second, MaxEjectionTimeJitter: time.Second, MaxEjectionPercent: 10,
				SplitLocalOrigin: true, AlwaysEjectOneHost: true,
				SuccessRateMinimumHosts: 5, SuccessRateRequestVolume: 100, SuccessRateStdevFactor: 1900, EnforcingLocalOriginSuccessRate: 100,
				FailurePercentageThreshold: 60, FailurePercentageMinimumHosts: 5, FailurePercentageRequestVolume: 50, EnforcingFailurePercentage: 100}}, nil},
		{"deprecated cluster fields", base(func(c *cluster.Cluster) {
			c.Http2ProtocolOptions = &core.Http2ProtocolOptions{}
			c.MaxRequestsPerConnection = wrapperspb.UInt32(9)
			c.CommonHttpProtocolOptions = &core.HttpProtocolOptions{IdleTimeout: durationpb.New(0)}
		}), &Cluster{Protocol: UpstreamHTTP2, ChoiceCount: 2, CircuitBreakers: cb1024, Pool: ConnPool{MaxRequestsPerConnection: 9}, PanicThreshold: 50}, nil},
		{"active health checks", base(func(c *cluster.Cluster) {
			c.HealthChecks = []*core.HealthCheck{{}}
		}), nil, ErrUnsupported},
		{"subset load balancer", base(func(c *cluster.Cluster) {
			c.LbSubsetConfig = &cluster.Cluster_LbSubsetConfig{}
		}), nil, ErrUnsupported},
		{"cluster retry policy", base(func(c *cluster.Cluster) {
			withOptions(c, &upstreamhttp.HttpProtocolOptions{RetryPolicy: &routev3.RetryPolicy{RetryOn: "5xx"}})
		}), nil, ErrUnsupported},
		{"upstream max_stream_duration", base(func(c *cluster.Cluster) {
			withOptions(c, &upstreamhttp.HttpProtocolOptions{CommonHttpProtocolOptions: &core.HttpProtocolOptions{MaxStreamDuration: durationpb.New(time.Second)}})
		}), nil, ErrUnsupported},
		{"max_connection_pools", base(func(c *cluster.Cluster) {
			c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{MaxConnectionPools: wrapperspb.UInt32(1)}}}
		}), nil, ErrUnsupported},
		{"outlier monitors", base(func(c *cluster.Cluster) {
			c.OutlierDetection = &cluster.OutlierDetection{Monitors: []*core.TypedExtensionConfig{{Name: "m"}}}
		}), nil, ErrUnsupported},
		{"unknown protocol options", base(func(c *cluster.Cluster) {
			c.TypedExtensionProtocolOptions = map[string]*anypb.Any{"envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions": mustAny(t, wrapperspb.String("x"))}
		}), &Cluster{}, ErrUnsupported},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := &Cluster{}
			err := buildResilience(got, tc.cluster)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error: got %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.IgnoreUnexported(Cluster{})); diff != "" {
				t.Errorf("cluster (-want +got):\n%s", diff)
			}
		})
	}
}

// TestEndpointPriority: a locality's priority reaches its endpoints,
// and a cluster with any below priority 0 is marked prioritized.
func TestEndpointPriority(t *testing.T) {
	ep := func(ip string) *endpoint.LbEndpoint {
		return &endpoint.LbEndpoint{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: &core.Address{
			Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{Address: ip, PortSpecifier: &core.SocketAddress_PortValue{PortValue: 80}}}}}}}
	}
	c := &cluster.Cluster{Name: "c", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		LoadAssignment: &endpoint.ClusterLoadAssignment{ClusterName: "c", Endpoints: []*endpoint.LocalityLbEndpoints{
			{LbEndpoints: []*endpoint.LbEndpoint{ep("10.0.0.1")}},
			{Priority: 1, LbEndpoints: []*endpoint.LbEndpoint{ep("10.0.0.2")}},
		}}}
	got, err := buildCluster(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Prioritized || len(got.Endpoints) != 2 || got.Endpoints[0].Priority != 0 || got.Endpoints[1].Priority != 1 {
		t.Errorf("got prioritized %v, endpoints %+v; want prioritized, priorities 0 and 1", got.Prioritized, got.Endpoints)
	}
}
