package config

import (
	"errors"
	"testing"

	xdstype "github.com/cncf/xds/go/xds/type/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	rawbuffer "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// TestTransportSocketMatches: Istio's outbound clusters (a telemetry
// collector's, which Istio's istiod gives a waypoint) pick a transport
// per endpoint by its envoy.transport_socket_match metadata: TLS for
// tlsMode istio, plaintext otherwise; endpoints that would need both in
// one cluster are not supported. Before, any transport_socket_matches
// refused the whole cluster update.
func TestTransportSocketMatches(t *testing.T) {
	tlsAny, _ := anypb.New(&tlsv3.UpstreamTlsContext{Sni: "outbound_.9411_._.zipkin.istio-system.svc.cluster.local"})
	rawAny, _ := anypb.New(&rawbuffer.RawBuffer{})
	istioMatch, _ := structpb.NewStruct(map[string]any{"tlsMode": "istio"})
	c := &cluster.Cluster{
		Name: "outbound|9411||zipkin.istio-system.svc.cluster.local", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig: &cluster.Cluster_EdsClusterConfig{ServiceName: "outbound|9411||zipkin.istio-system.svc.cluster.local"},
		ConnectTimeout:   durationpb.New(10e9),
		TransportSocketMatches: []*cluster.Cluster_TransportSocketMatch{
			{Name: "tlsMode-istio", Match: istioMatch, TransportSocket: &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: tlsAny}}},
			{Name: "tlsMode-disabled", Match: &structpb.Struct{}, TransportSocket: &core.TransportSocket{Name: "envoy.transport_sockets.raw_buffer", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: rawAny}}},
		},
	}
	ep := func(ip string, tlsMode string) *endpoint.LbEndpoint {
		e := &endpoint.LbEndpoint{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: &core.Address{
			Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{Address: ip, PortSpecifier: &core.SocketAddress_PortValue{PortValue: 9411}}}}}}}
		if tlsMode != "" {
			md, _ := structpb.NewStruct(map[string]any{"tlsMode": tlsMode})
			e.Metadata = &core.Metadata{FilterMetadata: map[string]*structpb.Struct{"envoy.transport_socket_match": md}}
		}
		return e
	}
	for _, tc := range []struct {
		name    string
		eps     []*endpoint.LbEndpoint
		wantTLS bool
		wantErr bool
	}{
		{name: "no endpoints", wantTLS: false},
		{name: "plaintext endpoints", eps: []*endpoint.LbEndpoint{ep("10.0.0.1", ""), ep("10.0.0.2", "disabled")}, wantTLS: false},
		{name: "istio endpoints", eps: []*endpoint.LbEndpoint{ep("10.0.0.1", "istio")}, wantTLS: true},
		{name: "mixed", eps: []*endpoint.LbEndpoint{ep("10.0.0.1", "istio"), ep("10.0.0.2", "")}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cla := map[string]*endpoint.ClusterLoadAssignment{c.Name: {ClusterName: c.Name,
				Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: tc.eps}}}}
			got, err := buildCluster(c, cla)
			if tc.wantErr {
				if !errors.Is(err, ErrUnsupported) {
					t.Errorf("buildCluster: got %v, want not supported", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("buildCluster: %v", err)
			}
			if got.TLS != tc.wantTLS {
				t.Errorf("TLS: got %v, want %v", got.TLS, tc.wantTLS)
			}
		})
	}
}

// TestIstioPeerMetadataClusterFilters: the upstream network filters
// Istio's istiod puts on outbound clusters to discover peers' metadata
// (telemetry only) are accepted; any other upstream filter is refused.
func TestIstioPeerMetadataClusterFilters(t *testing.T) {
	typed := func(url string) *anypb.Any {
		a, _ := anypb.New(&xdstype.TypedStruct{TypeUrl: url, Value: &structpb.Struct{}})
		return a
	}
	base := func(fs ...*cluster.Filter) *cluster.Cluster {
		return &cluster.Cluster{Name: "outbound|9411||zipkin.istio-system.svc.cluster.local", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
			ConnectTimeout: durationpb.New(10e9), Filters: fs}
	}
	istio := base(
		&cluster.Filter{Name: "istio.metadata_exchange", TypedConfig: typed("type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange")},
		&cluster.Filter{Name: "upstream_hbone_peer_metadata", TypedConfig: typed("type.googleapis.com/envoy.extensions.network_filters.peer_metadata.UpstreamConfig")})
	if _, err := buildCluster(istio, nil); err != nil {
		t.Errorf("Istio's peer metadata filters: got %v, want accepted", err)
	}
	other := base(&cluster.Filter{Name: "proxy_protocol", TypedConfig: typed("type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC")})
	if _, err := buildCluster(other, nil); !errors.Is(err, ErrUnsupported) {
		t.Errorf("another upstream filter: got %v, want not supported", err)
	}
}
