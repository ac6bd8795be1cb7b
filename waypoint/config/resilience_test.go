package config

import (
	"errors"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
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
		{"defaults", base(func(*cluster.Cluster) {}), &Cluster{ChoiceCount: 2, CircuitBreakers: CircuitBreakers{1024, 1024, 1024, 3}}, nil},
		{"explicit h2, least request", base(func(c *cluster.Cluster) {
			c.TypedExtensionProtocolOptions = map[string]*anypb.Any{HTTPProtocolOptionsKey: mustAny(t, h2)}
			c.LbPolicy = cluster.Cluster_LEAST_REQUEST
			c.LbConfig = &cluster.Cluster_LeastRequestLbConfig_{LeastRequestLbConfig: &cluster.Cluster_LeastRequestLbConfig{ChoiceCount: wrapperspb.UInt32(3)}}
		}), &Cluster{Protocol: UpstreamHTTP2, LeastRequest: true, ChoiceCount: 3, CircuitBreakers: CircuitBreakers{1024, 1024, 1024, 3}}, nil},
		{"downstream protocol, istiod's circuit breakers", base(func(c *cluster.Cluster) {
			c.TypedExtensionProtocolOptions = map[string]*anypb.Any{HTTPProtocolOptionsKey: mustAny(t, down)}
			max := wrapperspb.UInt32(4294967295)
			c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{MaxConnections: max, MaxPendingRequests: max, MaxRequests: max, MaxRetries: max}}}
		}), &Cluster{Protocol: UpstreamDownstream, ChoiceCount: 2, CircuitBreakers: CircuitBreakers{1<<31 - 1, 1<<31 - 1, 1<<31 - 1, 1<<31 - 1}}, nil},
		{"outlier detection", base(func(c *cluster.Cluster) {
			c.OutlierDetection = &cluster.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(7), BaseEjectionTime: durationpb.New(time.Minute), MaxEjectionPercent: wrapperspb.UInt32(100)}
		}), &Cluster{ChoiceCount: 2, CircuitBreakers: CircuitBreakers{1024, 1024, 1024, 3}, Outlier: &OutlierDetection{
			Consecutive5xx: 7, ConsecutiveGatewayFailure: 5, Enforcing5xx: 100, Interval: 10 * time.Second,
			BaseEjectionTime: time.Minute, MaxEjectionTime: 300 * time.Second, MaxEjectionPercent: 100}}, nil},
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
