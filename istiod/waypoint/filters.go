package waypoint

import (
	"time"

	xdscore "github.com/cncf/xds/go/xds/core/v3"
	matcher "github.com/cncf/xds/go/xds/type/matcher/v3"
	xdstype "github.com/cncf/xds/go/xds/type/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	sfsvalue "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/set_filter_state/v3"
	cors "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	fault "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	grpcstats "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/grpc_stats/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	sfs "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/set_filter_state/v3"
	httpinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	originaldst "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	sfsnetwork "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/set_filter_state/v3"
	network "github.com/envoyproxy/go-control-plane/envoy/extensions/matching/common_inputs/network/v3"
	internalupstream "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/internal_upstream/v3"
	rawbuffer "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tls "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	envoymatcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	metadata "github.com/envoyproxy/go-control-plane/envoy/type/metadata/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Names of listeners, clusters, filters and filter-state keys, Istio's.
const (
	ConnectTerminate = "connect_terminate"
	MainInternal     = "main_internal"
	ConnectOriginate = "connect_originate"
	Encap            = "encap"
	DirectHTTP       = "direct-http"
	DirectTCP        = "direct-tcp"

	// SDSCluster is the bootstrap cluster that serves the certificates
	// named SDSDefault (the proxy's own) and SDSRoot (the trust roots).
	SDSCluster = "sds-grpc"
	SDSDefault = "default"
	SDSRoot    = "ROOTCA"

	// FilterStateAuthority holds the CONNECT :authority, the original
	// destination "ip:port" (or "host:port").
	FilterStateAuthority = "envoy.filters.listener.original_dst.local_ip"
	// FilterStateRemote holds the downstream's address.
	FilterStateRemote = "envoy.filters.listener.original_dst.remote_ip"
	// FilterStatePeerPrincipal holds the downstream's SPIFFE identity,
	// on which authorization matches principals.
	FilterStatePeerPrincipal = "io.istio.peer_principal"
	// FilterStateLocalPrincipal holds the waypoint's own identity.
	FilterStateLocalPrincipal = "io.istio.local_principal"
	// MetadataOriginalDst is the endpoint metadata namespace whose
	// "local" key is the address connect_originate tunnels to.
	MetadataOriginalDst = "envoy.filters.listener.original_dst"

	filterHCM         = "envoy.filters.network.http_connection_manager"
	filterTCPProxy    = "envoy.filters.network.tcp_proxy"
	filterRouter      = "envoy.filters.http.router"
	filterRBAC        = "envoy.filters.http.rbac"
	filterNetworkRBAC = "envoy.filters.network.rbac"
	filterFault       = "envoy.filters.http.fault"
	filterCORS        = "envoy.filters.http.cors"
	filterGRPCStats   = "envoy.filters.http.grpc_stats"
	filterStats       = "istio.stats"
	filterConnectAuth = "connect_authority"
	filterDownstream  = "waypoint_downstream_peer_metadata"
	filterUpstream    = "waypoint_upstream_peer_metadata"

	peerMetadataType = "type.googleapis.com/io.istio.http.peer_metadata.Config"
)

// Istio's HBONE keepalive, the same as ztunnel's.
const (
	h2KeepaliveInterval = 10 * time.Second
	h2KeepaliveTimeout  = 20 * time.Second
	connectTimeout      = 10 * time.Second
)

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err) // marshalling our own messages: a program error
	}
	return a
}

// typedStruct wraps an Istio-only config the Envoy protos do not know.
func typedStruct(typeURL string, fields map[string]any) *anypb.Any {
	s, err := structpb.NewStruct(fields)
	if err != nil {
		panic(err)
	}
	return mustAny(&xdstype.TypedStruct{TypeUrl: typeURL, Value: s})
}

func sdsConfig(name string) *tls.SdsSecretConfig {
	return &tls.SdsSecretConfig{
		Name: name,
		SdsConfig: &core.ConfigSource{
			ConfigSourceSpecifier: &core.ConfigSource_ApiConfigSource{ApiConfigSource: &core.ApiConfigSource{
				ApiType:                   core.ApiConfigSource_GRPC,
				SetNodeOnFirstMessageOnly: true,
				TransportApiVersion:       core.ApiVersion_V3,
				GrpcServices: []*core.GrpcService{{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: SDSCluster}}}},
			}},
			InitialFetchTimeout: durationpb.New(0),
			ResourceApiVersion:  core.ApiVersion_V3,
		},
	}
}

// hboneTLS is the TLS of both HBONE hops: TLS 1.3, ALPN h2, the
// proxy's certificate, peers of the trust domain.
func (b *builder) hboneTLS() *tls.CommonTlsContext {
	return &tls.CommonTlsContext{
		TlsParams: &tls.TlsParameters{
			TlsMinimumProtocolVersion: tls.TlsParameters_TLSv1_3,
			TlsMaximumProtocolVersion: tls.TlsParameters_TLSv1_3,
		},
		AlpnProtocols:                  []string{"h2"},
		TlsCertificateSdsSecretConfigs: []*tls.SdsSecretConfig{sdsConfig(SDSDefault)},
		ValidationContextType: &tls.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tls.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext: &tls.CertificateValidationContext{
				MatchTypedSubjectAltNames: []*tls.SubjectAltNameMatcher{{
					SanType: tls.SubjectAltNameMatcher_URI,
					Matcher: &envoymatcher.StringMatcher{MatchPattern: &envoymatcher.StringMatcher_Prefix{
						Prefix: "spiffe://" + b.cfg.TrustDomain + "/"}},
				}},
			},
			ValidationContextSdsSecretConfig: sdsConfig(SDSRoot),
		}},
	}
}

func formatString(s string) *core.SubstitutionFormatString {
	return &core.SubstitutionFormatString{Format: &core.SubstitutionFormatString_TextFormatSource{
		TextFormatSource: &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: s}}}}
}

func filterStateValue(key, factory, format string) *sfsvalue.FilterStateValue {
	return &sfsvalue.FilterStateValue{
		Key:                &sfsvalue.FilterStateValue_ObjectKey{ObjectKey: key},
		FactoryKey:         factory,
		Value:              &sfsvalue.FilterStateValue_FormatString{FormatString: formatString(format)},
		SharedWithUpstream: sfsvalue.FilterStateValue_ONCE,
	}
}

// connectAuthorityHTTP keeps what the CONNECT request says for the inner
// hop: the authority, the downstream's address, both identities.
func connectAuthorityHTTP() *hcm.HttpFilter {
	return &hcm.HttpFilter{Name: filterConnectAuth, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&sfs.Config{
		OnRequestHeaders: []*sfsvalue.FilterStateValue{
			filterStateValue(FilterStateAuthority, "", "%REQ(:AUTHORITY)%"),
			filterStateValue(FilterStateRemote, "", "%DOWNSTREAM_REMOTE_ADDRESS%"),
			filterStateValue(FilterStatePeerPrincipal, "envoy.string", "%DOWNSTREAM_PEER_URI_SAN%"),
			filterStateValue(FilterStateLocalPrincipal, "envoy.string", "%DOWNSTREAM_LOCAL_URI_SAN%"),
		},
	})}}
}

// connectAuthorityNetwork passes the authority on to the next internal
// hop of a direct chain.
func connectAuthorityNetwork() *listener.Filter {
	return &listener.Filter{Name: filterConnectAuth, ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(&sfsnetwork.Config{
		OnNewConnection: []*sfsvalue.FilterStateValue{
			filterStateValue(FilterStateAuthority, "", "%FILTER_STATE("+FilterStateAuthority+":PLAIN)%"),
		},
	})}}
}

func downstreamPeerMetadata() *hcm.HttpFilter {
	return &hcm.HttpFilter{Name: filterDownstream, IsOptional: true, ConfigType: &hcm.HttpFilter_TypedConfig{
		TypedConfig: typedStruct(peerMetadataType, map[string]any{
			"downstream_discovery": []any{map[string]any{"workload_discovery": map[string]any{}}},
			"shared_with_upstream": true,
		})}}
}

func upstreamPeerMetadata() *hcm.HttpFilter {
	return &hcm.HttpFilter{Name: filterUpstream, IsOptional: true, ConfigType: &hcm.HttpFilter_TypedConfig{
		TypedConfig: typedStruct(peerMetadataType, map[string]any{
			"upstream_discovery": []any{map[string]any{"workload_discovery": map[string]any{}}},
		})}}
}

func routerFilter() *hcm.HttpFilter {
	return &hcm.HttpFilter{Name: filterRouter, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&router.Router{})}}
}

func grpcStatsFilter() *hcm.HttpFilter {
	return &hcm.HttpFilter{Name: filterGRPCStats, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&grpcstats.FilterConfig{
		EmitFilterState:        true,
		PerMethodStatSpecifier: &grpcstats.FilterConfig_StatsForAllMethods{StatsForAllMethods: wrapperspb.Bool(false)},
	})}}
}

func faultFilter() *hcm.HttpFilter {
	return &hcm.HttpFilter{Name: filterFault, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&fault.HTTPFault{})}}
}

func corsFilter() *hcm.HttpFilter {
	return &hcm.HttpFilter{Name: filterCORS, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&cors.Cors{})}}
}

func originalDstListenerFilter() *listener.ListenerFilter {
	return &listener.ListenerFilter{Name: "envoy.filters.listener.original_dst",
		ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: mustAny(&originaldst.OriginalDst{})}}
}

// httpInspector sniffs HTTP, except on ports whose protocol is known.
func httpInspector(skipPorts []uint32) *listener.ListenerFilter {
	f := &listener.ListenerFilter{Name: "envoy.filters.listener.http_inspector",
		ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: mustAny(&httpinspector.HttpInspector{})}}
	if len(skipPorts) == 0 {
		return f
	}
	portRule := func(p uint32) *listener.ListenerFilterChainMatchPredicate {
		return &listener.ListenerFilterChainMatchPredicate{Rule: &listener.ListenerFilterChainMatchPredicate_DestinationPortRange{
			DestinationPortRange: rangeOf(p)}}
	}
	if len(skipPorts) == 1 {
		f.FilterDisabled = portRule(skipPorts[0])
		return f
	}
	set := &listener.ListenerFilterChainMatchPredicate_MatchSet{}
	for _, p := range skipPorts {
		set.Rules = append(set.Rules, portRule(p))
	}
	f.FilterDisabled = &listener.ListenerFilterChainMatchPredicate{Rule: &listener.ListenerFilterChainMatchPredicate_OrMatch{OrMatch: set}}
	return f
}

// Matcher inputs and actions of main_internal's filter_chain_matcher.
func inputDestinationIP() *xdscore.TypedExtensionConfig {
	return &xdscore.TypedExtensionConfig{Name: "ip", TypedConfig: mustAny(&network.DestinationIPInput{})}
}

func inputDestinationPort() *xdscore.TypedExtensionConfig {
	return &xdscore.TypedExtensionConfig{Name: "port", TypedConfig: mustAny(&network.DestinationPortInput{})}
}

func inputAppProtocol() *xdscore.TypedExtensionConfig {
	return &xdscore.TypedExtensionConfig{Name: "application-protocol", TypedConfig: mustAny(&network.ApplicationProtocolInput{})}
}

func inputAuthority() *xdscore.TypedExtensionConfig {
	return &xdscore.TypedExtensionConfig{Name: "original-dst-filter-state", TypedConfig: mustAny(&network.FilterStateInput{Key: FilterStateAuthority})}
}

func toChain(name string) *matcher.Matcher_OnMatch {
	return &matcher.Matcher_OnMatch{OnMatch: &matcher.Matcher_OnMatch_Action{Action: &xdscore.TypedExtensionConfig{
		Name: name, TypedConfig: mustAny(wrapperspb.String(name))}}}
}

func toMatcher(m *matcher.Matcher) *matcher.Matcher_OnMatch {
	return &matcher.Matcher_OnMatch{OnMatch: &matcher.Matcher_OnMatch_Matcher{Matcher: m}}
}

func exactMap(input *xdscore.TypedExtensionConfig, m map[string]*matcher.Matcher_OnMatch, noMatch *matcher.Matcher_OnMatch) *matcher.Matcher {
	return &matcher.Matcher{
		MatcherType: &matcher.Matcher_MatcherTree_{MatcherTree: &matcher.Matcher_MatcherTree{
			Input:    input,
			TreeType: &matcher.Matcher_MatcherTree_ExactMatchMap{ExactMatchMap: &matcher.Matcher_MatcherTree_MatchMap{Map: m}},
		}},
		OnNoMatch: noMatch,
	}
}

// appProtocol sends sniffed HTTP to one chain and the rest to another.
func appProtocol(httpChain, tcpChain string) *matcher.Matcher {
	return exactMap(inputAppProtocol(), map[string]*matcher.Matcher_OnMatch{
		"'h2c'":      toChain(httpChain),
		"'http/1.1'": toChain(httpChain),
	}, toChain(tcpChain))
}

// Cluster pieces.

func rawBuffer() *core.TransportSocket {
	return &core.TransportSocket{Name: "envoy.transport_sockets.raw_buffer",
		ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(&rawbuffer.RawBuffer{})}}
}

// internalUpstream reaches an internal listener; passthrough carries
// endpoint (and cluster) metadata along to it.
func internalUpstream(passthrough ...*internalupstream.InternalUpstreamTransport_MetadataValueSource) *core.TransportSocket {
	return &core.TransportSocket{Name: "envoy.transport_sockets.internal_upstream",
		ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(&internalupstream.InternalUpstreamTransport{
			PassthroughMetadata: passthrough,
			TransportSocket:     rawBuffer(),
		})}}
}

func hostMetadata(name string) *internalupstream.InternalUpstreamTransport_MetadataValueSource {
	return &internalupstream.InternalUpstreamTransport_MetadataValueSource{Name: name,
		Kind: &metadata.MetadataKind{Kind: &metadata.MetadataKind_Host_{Host: &metadata.MetadataKind_Host{}}}}
}

func clusterMetadata(name string) *internalupstream.InternalUpstreamTransport_MetadataValueSource {
	return &internalupstream.InternalUpstreamTransport_MetadataValueSource{Name: name,
		Kind: &metadata.MetadataKind{Kind: &metadata.MetadataKind_Cluster_{Cluster: &metadata.MetadataKind_Cluster{}}}}
}

// passthroughHTTP lets an internal hop speak whatever the downstream did.
func passthroughHTTP() map[string]*anypb.Any {
	return map[string]*anypb.Any{httpProtocolOptionsType: mustAny(&upstreamhttp.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_UseDownstreamProtocolConfig{
			UseDownstreamProtocolConfig: &upstreamhttp.HttpProtocolOptions_UseDownstreamHttpConfig{
				HttpProtocolOptions:  &core.Http1ProtocolOptions{},
				Http2ProtocolOptions: &core.Http2ProtocolOptions{},
			}},
	})}
}

func explicitHTTP2(allowConnect bool) map[string]*anypb.Any {
	h2 := &core.Http2ProtocolOptions{AllowConnect: allowConnect}
	if allowConnect {
		h2.ConnectionKeepalive = &core.KeepaliveSettings{Interval: durationpb.New(h2KeepaliveInterval), Timeout: durationpb.New(h2KeepaliveTimeout)}
	}
	return map[string]*anypb.Any{httpProtocolOptionsType: mustAny(&upstreamhttp.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: h2},
		}},
	})}
}

const httpProtocolOptionsType = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// defaultCircuitBreakers are Istio's: effectively unlimited.
func defaultCircuitBreakers() *cluster.CircuitBreakers {
	const max = 4294967295
	return &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
		MaxConnections:     wrapperspb.UInt32(max),
		MaxPendingRequests: wrapperspb.UInt32(max),
		MaxRequests:        wrapperspb.UInt32(max),
		MaxRetries:         wrapperspb.UInt32(max),
		TrackRemaining:     true,
	}}}
}

func adsConfig() *core.ConfigSource {
	return &core.ConfigSource{
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
		InitialFetchTimeout:   durationpb.New(0),
		ResourceApiVersion:    core.ApiVersion_V3,
	}
}
