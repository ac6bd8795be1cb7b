package waypoint

import (
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	netapi "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
)

// TestDestinationRuleConnectionOptions: a DestinationRule's
// maxConnectionDuration, tcp idleTimeout, tcpKeepalive,
// maxConcurrentStreams and split local-origin outlier detection are
// accepted and become Istio's cluster fields.
func TestDestinationRuleConnectionOptions(t *testing.T) {
	tp := &netapi.TrafficPolicy{
		ConnectionPool: &netapi.ConnectionPoolSettings{
			Tcp: &netapi.ConnectionPoolSettings_TCPSettings{
				MaxConnectionDuration: durationpb.New(time.Hour), IdleTimeout: durationpb.New(time.Minute),
				TcpKeepalive: &netapi.ConnectionPoolSettings_TCPSettings_TcpKeepalive{Probes: 3, Time: durationpb.New(30 * time.Second), Interval: durationpb.New(5 * time.Second)},
			},
			Http: &netapi.ConnectionPoolSettings_HTTPSettings{MaxConcurrentStreams: 10},
		},
		OutlierDetection: &netapi.OutlierDetection{SplitExternalLocalOriginErrors: true, ConsecutiveLocalOriginFailures: wrapperspb.UInt32(4)},
	}
	dr := &networkingv1.DestinationRule{}
	dr.Spec.Host = "reviews.default.svc.cluster.local"
	dr.Spec.TrafficPolicy = tp
	if reason, msg := drProblem(dr); reason != "" {
		t.Fatalf("drProblem: %s %s, want none", reason, msg)
	}
	h2 := &upstreamhttp.HttpProtocolOptions{UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
		ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}}}}}
	a, err := anypb.New(h2)
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster.Cluster{Name: "c", TypedExtensionProtocolOptions: map[string]*anypb.Any{httpProtocolOptionsType: a}}
	applyTrafficPolicy(c, tp)
	var got upstreamhttp.HttpProtocolOptions
	if err := c.TypedExtensionProtocolOptions[httpProtocolOptionsType].UnmarshalTo(&got); err != nil {
		t.Fatal(err)
	}
	want := &upstreamhttp.HttpProtocolOptions{
		CommonHttpProtocolOptions: &core.HttpProtocolOptions{IdleTimeout: durationpb.New(time.Minute), MaxConnectionDuration: durationpb.New(time.Hour)},
		UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{MaxConcurrentStreams: wrapperspb.UInt32(10)}}}},
	}
	if !proto.Equal(&got, want) {
		t.Errorf("protocol options: got %v, want %v", &got, want)
	}
	wantKA := &core.TcpKeepalive{KeepaliveProbes: wrapperspb.UInt32(3), KeepaliveTime: wrapperspb.UInt32(30), KeepaliveInterval: wrapperspb.UInt32(5)}
	if ka := c.GetUpstreamConnectionOptions().GetTcpKeepalive(); !proto.Equal(ka, wantKA) {
		t.Errorf("tcp_keepalive: got %v, want %v", ka, wantKA)
	}
	od := c.GetOutlierDetection()
	if !od.GetSplitExternalLocalOriginErrors() || od.GetConsecutiveLocalOriginFailure().GetValue() != 4 ||
		od.GetEnforcingConsecutiveLocalOriginFailure().GetValue() != 100 || od.GetEnforcingLocalOriginSuccessRate() == nil {
		t.Errorf("outlier detection: got %v, want the split with 4 consecutive local-origin failures enforced", od)
	}
}
