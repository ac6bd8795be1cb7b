package waypoint_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	xdscore "github.com/cncf/xds/go/xds/core/v3"
	cncfmatcher "github.com/cncf/xds/go/xds/type/matcher/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	sfsvalue "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/set_filter_state/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	sfshttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/set_filter_state/v3"
	httpinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	originaldst "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	networkinputs "github.com/envoyproxy/go-control-plane/envoy/extensions/matching/common_inputs/network/v3"
	internalup "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/internal_upstream/v3"
	rawbuffer "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	metadatav3 "github.com/envoyproxy/go-control-plane/envoy/type/metadata/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// The test's config is built the way istiod builds a waypoint's
// (pilot/pkg/networking/core/listener_waypoint.go and
// cluster_waypoint.go in istio/istio): connect_terminate on 15008 with
// set_filter_state and a CONNECT route to main_internal; main_internal
// choosing inbound-vip chains by destination IP and port; clusters whose
// EDS endpoints are connect_originate with the pod's address as
// passthrough metadata; connect_originate tunnelling to podIP:15008.

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

// svcPort is one port of the service the waypoint serves.
type svcPort struct {
	port   uint32
	target uint16 // the pods' port; the backends' own when 0
	http   bool
	// sniff: protocol unknown, both chains and the application-protocol
	// matcher, as istiod configures a port without a declared protocol.
	sniff bool
	// routes replace the default route to the port's cluster.
	routes []*route.Route
	// httpFilters go before the router (RBAC, fault).
	httpFilters []*hcmv3.HttpFilter
	// upstream is the HTTP cluster's protocol: "" (HTTP/1.1), "h2"
	// (explicit, istiod's for grpc and http2 ports) or "downstream".
	upstream string
	// editHCM and editCluster change the port's HTTP connection manager
	// and HTTP cluster.
	editHCM     func(*hcmv3.HttpConnectionManager)
	editCluster func(*cluster.Cluster)
	// editTCPCluster changes the port's TCP cluster.
	editTCPCluster func(*cluster.Cluster)
}

// waypointConfig is the test's istiod.
type waypointConfig struct {
	host     string
	vip      netip.Addr
	ports    []svcPort
	backends []netip.AddrPort // pod ip:targetPort, same target port assumed per service port offset
	// filtersTimeout and continueOnTimeout are main_internal's
	// listener_filters_timeout and continue_on_listener_filters_timeout.
	filtersTimeout    time.Duration
	continueOnTimeout bool
	// tcpIdleTimeout is the TCP chains' idle_timeout.
	tcpIdleTimeout time.Duration
	// requestHeadersTimeout is the HTTP chains' request_headers_timeout.
	requestHeadersTimeout time.Duration
	// extraClusters are more service clusters (for weighted routes):
	// name -> backends.
	extraClusters map[string][]netip.AddrPort
}

func clusterName(kind string, port uint32, host string) string {
	return fmt.Sprintf("inbound-vip|%d|%s|%s", port, kind, host)
}

func sfsValue(key, format string, factory string) *sfsvalue.FilterStateValue {
	return &sfsvalue.FilterStateValue{
		Key: &sfsvalue.FilterStateValue_ObjectKey{ObjectKey: key},
		Value: &sfsvalue.FilterStateValue_FormatString{FormatString: &core.SubstitutionFormatString{
			Format: &core.SubstitutionFormatString_TextFormatSource{TextFormatSource: &core.DataSource{
				Specifier: &core.DataSource_InlineString{InlineString: format}}},
		}},
		FactoryKey:         factory,
		SharedWithUpstream: sfsvalue.FilterStateValue_ONCE,
	}
}

func routerFilter() *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})}}
}

func connectTerminate() *listener.Listener {
	sfs := &sfshttp.Config{OnRequestHeaders: []*sfsvalue.FilterStateValue{
		sfsValue("envoy.filters.listener.original_dst.local_ip", "%REQ(:AUTHORITY)%", ""),
		sfsValue("io.istio.connect_authority", "%REQ(:AUTHORITY)%", "envoy.string"),
		sfsValue("envoy.filters.listener.original_dst.remote_ip", "%DOWNSTREAM_REMOTE_ADDRESS%", ""),
		sfsValue("io.istio.peer_principal", "%DOWNSTREAM_PEER_URI_SAN%", "envoy.string"),
		sfsValue("io.istio.local_principal", "%DOWNSTREAM_LOCAL_URI_SAN%", "envoy.string"),
	}}
	h := &hcmv3.HttpConnectionManager{
		StatPrefix: "connect_terminate",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &route.RouteConfiguration{
			Name: "default",
			VirtualHosts: []*route.VirtualHost{{Name: "default", Domains: []string{"*"}, Routes: []*route.Route{{
				Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_ConnectMatcher_{ConnectMatcher: &route.RouteMatch_ConnectMatcher{}}},
				Action: &route.Route_Route{Route: &route.RouteAction{
					UpgradeConfigs:   []*route.RouteAction_UpgradeConfig{{UpgradeType: "CONNECT", ConnectConfig: &route.RouteAction_UpgradeConfig_ConnectConfig{}}},
					ClusterSpecifier: &route.RouteAction_Cluster{Cluster: "main_internal"},
				}},
			}}}},
		}},
		UpgradeConfigs: []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "CONNECT"}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: "connect_authority", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(sfs)}},
			routerFilter(),
		},
	}
	return &listener.Listener{
		Name:    "connect_terminate",
		Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{Address: "0.0.0.0", PortSpecifier: &core.SocketAddress_PortValue{PortValue: 15008}}}},
		FilterChains: []*listener.FilterChain{{
			Name: "default",
			TransportSocket: &core.TransportSocket{Name: "tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(&tlsv3.DownstreamTlsContext{
				RequireClientCertificate: wrapperspb.Bool(true),
				CommonTlsContext:         &tlsv3.CommonTlsContext{AlpnProtocols: []string{"h2"}},
			})}},
			Filters: []*listener.Filter{{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(h)}}},
		}},
	}
}

func toChain(name string) *cncfmatcher.Matcher_OnMatch {
	return &cncfmatcher.Matcher_OnMatch{OnMatch: &cncfmatcher.Matcher_OnMatch_Action{Action: &xdscore.TypedExtensionConfig{Name: name, TypedConfig: mustAny(wrapperspb.String(name))}}}
}

func (w *waypointConfig) mainInternal() *listener.Listener {
	portMap := map[string]*cncfmatcher.Matcher_OnMatch{}
	var chains []*listener.FilterChain
	for _, p := range w.ports {
		var httpChain, tcpChain string
		if p.http || p.sniff {
			name := clusterName("http", p.port, w.host)
			httpChain = name
			routes := p.routes
			if routes == nil {
				routes = []*route.Route{{Name: "default", Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
					Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: name}, Timeout: durationpb.New(0)}}}}
			}
			h := &hcmv3.HttpConnectionManager{
				StatPrefix: name,
				RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &route.RouteConfiguration{
					Name:         name,
					VirtualHosts: []*route.VirtualHost{{Name: fmt.Sprintf("inbound|http|%d", p.port), Domains: []string{"*"}, Routes: routes}},
				}},
				UpgradeConfigs:        []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}},
				NormalizePath:         wrapperspb.Bool(true), // as istiod sets it
				RequestHeadersTimeout: durationpb.New(w.requestHeadersTimeout),
				HttpFilters:           append(append([]*hcmv3.HttpFilter{}, p.httpFilters...), routerFilter()),
			}
			if p.editHCM != nil {
				p.editHCM(h)
			}
			chains = append(chains, &listener.FilterChain{Name: name, Filters: []*listener.Filter{{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(h)}}}})
			portMap[fmt.Sprint(p.port)] = toChain(name)
		}
		if !p.http || p.sniff {
			name := clusterName("tcp", p.port, w.host)
			tcpChain = name
			tp := &tcpv3.TcpProxy{StatPrefix: name, ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: name}}
			if w.tcpIdleTimeout > 0 {
				tp.IdleTimeout = durationpb.New(w.tcpIdleTimeout)
			}
			chains = append(chains, &listener.FilterChain{Name: name, Filters: []*listener.Filter{{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(tp)}}}})
			portMap[fmt.Sprint(p.port)] = toChain(name)
		}
		if p.sniff {
			portMap[fmt.Sprint(p.port)] = &cncfmatcher.Matcher_OnMatch{OnMatch: &cncfmatcher.Matcher_OnMatch_Matcher{Matcher: &cncfmatcher.Matcher{
				MatcherType: &cncfmatcher.Matcher_MatcherTree_{MatcherTree: &cncfmatcher.Matcher_MatcherTree{
					Input: &xdscore.TypedExtensionConfig{Name: "application-protocol", TypedConfig: mustAny(&networkinputs.ApplicationProtocolInput{})},
					TreeType: &cncfmatcher.Matcher_MatcherTree_ExactMatchMap{ExactMatchMap: &cncfmatcher.Matcher_MatcherTree_MatchMap{Map: map[string]*cncfmatcher.Matcher_OnMatch{
						"'http/1.1'": toChain(httpChain), "'h2c'": toChain(httpChain)}}},
				}},
				OnNoMatch: toChain(tcpChain),
			}}}
		}
	}
	portMatcher := &cncfmatcher.Matcher{MatcherType: &cncfmatcher.Matcher_MatcherTree_{MatcherTree: &cncfmatcher.Matcher_MatcherTree{
		Input:    &xdscore.TypedExtensionConfig{Name: "port", TypedConfig: mustAny(&networkinputs.DestinationPortInput{})},
		TreeType: &cncfmatcher.Matcher_MatcherTree_ExactMatchMap{ExactMatchMap: &cncfmatcher.Matcher_MatcherTree_MatchMap{Map: portMap}},
	}}}
	ipm := &cncfmatcher.IPMatcher{RangeMatchers: []*cncfmatcher.IPMatcher_IPRangeMatcher{{
		Ranges:  []*xdscore.CidrRange{{AddressPrefix: w.vip.String(), PrefixLen: wrapperspb.UInt32(32)}},
		OnMatch: &cncfmatcher.Matcher_OnMatch{OnMatch: &cncfmatcher.Matcher_OnMatch_Matcher{Matcher: portMatcher}},
	}}}
	return &listener.Listener{
		Name:              "main_internal",
		ListenerSpecifier: &listener.Listener_InternalListener{InternalListener: &listener.Listener_InternalListenerConfig{}},
		ListenerFilters: []*listener.ListenerFilter{
			{Name: "envoy.filters.listener.original_dst", ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: mustAny(&originaldst.OriginalDst{})}},
			{Name: "envoy.filters.listener.http_inspector", ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: mustAny(&httpinspector.HttpInspector{})}},
		},
		TrafficDirection:                 core.TrafficDirection_INBOUND,
		ListenerFiltersTimeout:           durationpb.New(w.filtersTimeout),
		ContinueOnListenerFiltersTimeout: w.continueOnTimeout,
		FilterChains:                     chains,
		FilterChainMatcher: &cncfmatcher.Matcher{MatcherType: &cncfmatcher.Matcher_MatcherTree_{MatcherTree: &cncfmatcher.Matcher_MatcherTree{
			Input:    &xdscore.TypedExtensionConfig{Name: "ip", TypedConfig: mustAny(&networkinputs.DestinationIPInput{})},
			TreeType: &cncfmatcher.Matcher_MatcherTree_CustomMatch{CustomMatch: &xdscore.TypedExtensionConfig{Name: "ip", TypedConfig: mustAny(ipm)}},
		}}},
	}
}

func connectOriginate() *listener.Listener {
	tp := &tcpv3.TcpProxy{StatPrefix: "connect_originate", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "connect_originate"},
		TunnelingConfig: &tcpv3.TcpProxy_TunnelingConfig{Hostname: "%DOWNSTREAM_LOCAL_ADDRESS%"}}
	return &listener.Listener{
		Name:              "connect_originate",
		UseOriginalDst:    wrapperspb.Bool(false),
		ListenerSpecifier: &listener.Listener_InternalListener{InternalListener: &listener.Listener_InternalListenerConfig{}},
		ListenerFilters:   []*listener.ListenerFilter{{Name: "envoy.filters.listener.original_dst", ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: mustAny(&originaldst.OriginalDst{})}}},
		FilterChains:      []*listener.FilterChain{{Filters: []*listener.Filter{{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(tp)}}}}},
	}
}

func internalTransport() *core.TransportSocket {
	return &core.TransportSocket{Name: "internal_upstream", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(&internalup.InternalUpstreamTransport{
		PassthroughMetadata: []*internalup.InternalUpstreamTransport_MetadataValueSource{{
			Kind: &metadatav3.MetadataKind{Kind: &metadatav3.MetadataKind_Host_{Host: &metadatav3.MetadataKind_Host{}}},
			Name: "envoy.filters.listener.original_dst",
		}},
		TransportSocket: &core.TransportSocket{Name: "raw_buffer", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(&rawbuffer.RawBuffer{})}},
	})}}
}

func edsCluster(name string) *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: &core.ConfigSource{ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}}},
		ConnectTimeout:       durationpb.New(5e9),
		TransportSocket:      internalTransport(),
	}
}

func originateEndpoints(name string, backends []netip.AddrPort) *endpoint.ClusterLoadAssignment {
	var lbs []*endpoint.LbEndpoint
	for _, b := range backends {
		md, _ := structpb.NewStruct(map[string]any{"local": b.String()})
		lbs = append(lbs, &endpoint.LbEndpoint{
			HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: &core.Address{Address: &core.Address_EnvoyInternalAddress{
				EnvoyInternalAddress: &core.EnvoyInternalAddress{AddressNameSpecifier: &core.EnvoyInternalAddress_ServerListenerName{ServerListenerName: "connect_originate"}, EndpointId: b.String()},
			}}}},
			HealthStatus: core.HealthStatus_HEALTHY,
			Metadata:     &core.Metadata{FilterMetadata: map[string]*structpb.Struct{"envoy.filters.listener.original_dst": md}},
		})
	}
	return &endpoint.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: lbs}}}
}

// resources is the whole config.
func (w *waypointConfig) resources() *config.Resources {
	r := &config.Resources{Listeners: []*listener.Listener{connectTerminate(), w.mainInternal(), connectOriginate()}}
	r.Clusters = append(r.Clusters,
		&cluster.Cluster{
			Name: "main_internal", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
			LoadAssignment: &endpoint.ClusterLoadAssignment{ClusterName: "main_internal", Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
				HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: &core.Address{Address: &core.Address_EnvoyInternalAddress{
					EnvoyInternalAddress: &core.EnvoyInternalAddress{AddressNameSpecifier: &core.EnvoyInternalAddress_ServerListenerName{ServerListenerName: "main_internal"}}}}}},
			}}}}},
			TransportSocket: &core.TransportSocket{Name: "internal_upstream", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(&internalup.InternalUpstreamTransport{
				TransportSocket: &core.TransportSocket{Name: "raw_buffer", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(&rawbuffer.RawBuffer{})}}})}},
		},
		&cluster.Cluster{
			Name: "connect_originate", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST},
			LbPolicy:       cluster.Cluster_CLUSTER_PROVIDED,
			ConnectTimeout: durationpb.New(5e9),
			LbConfig:       &cluster.Cluster_OriginalDstLbConfig_{OriginalDstLbConfig: &cluster.Cluster_OriginalDstLbConfig{UpstreamPortOverride: wrapperspb.UInt32(15008)}},
			TransportSocket: &core.TransportSocket{Name: "tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(&tlsv3.UpstreamTlsContext{
				CommonTlsContext: &tlsv3.CommonTlsContext{AlpnProtocols: []string{"h2"}, ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
					CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{DefaultValidationContext: &tlsv3.CertificateValidationContext{
						MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{SanType: tlsv3.SubjectAltNameMatcher_URI,
							Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://cluster.local/"}}}},
					}}}},
			})}},
		},
	)
	for _, p := range w.ports {
		var kinds []string
		if p.http || p.sniff {
			kinds = append(kinds, "http")
		}
		if !p.http || p.sniff {
			kinds = append(kinds, "tcp")
		}
		for _, kind := range kinds {
			name := clusterName(kind, p.port, w.host)
			c := edsCluster(name)
			if kind == "http" {
				switch p.upstream {
				case "h2":
					c.TypedExtensionProtocolOptions = map[string]*anypb.Any{config.HTTPProtocolOptionsKey: mustAny(&upstreamhttp.HttpProtocolOptions{
						UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
							ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}}}}})}
				case "downstream":
					c.TypedExtensionProtocolOptions = map[string]*anypb.Any{config.HTTPProtocolOptionsKey: mustAny(&upstreamhttp.HttpProtocolOptions{
						UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_UseDownstreamProtocolConfig{UseDownstreamProtocolConfig: &upstreamhttp.HttpProtocolOptions_UseDownstreamHttpConfig{
							HttpProtocolOptions: &core.Http1ProtocolOptions{}, Http2ProtocolOptions: &core.Http2ProtocolOptions{}}}})}
				}
				if p.editCluster != nil {
					p.editCluster(c)
				}
			} else if p.editTCPCluster != nil {
				p.editTCPCluster(c)
			}
			r.Clusters = append(r.Clusters, c)
			bs := w.backends
			if p.target != 0 {
				bs = nil
				for _, b := range w.backends {
					bs = append(bs, netip.AddrPortFrom(b.Addr(), p.target))
				}
			}
			r.Endpoints = append(r.Endpoints, originateEndpoints(name, bs))
		}
	}
	for name, bs := range w.extraClusters {
		r.Clusters = append(r.Clusters, edsCluster(name))
		r.Endpoints = append(r.Endpoints, originateEndpoints(name, bs))
	}
	return r
}

// Helpers for routes and filters.

func prefixRoute(prefix, cluster string) *route.Route {
	return &route.Route{Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: prefix}},
		Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: cluster}, Timeout: durationpb.New(0)}}}
}

func rbacFilter(name string, action rbacv3.RBAC_Action, policies map[string]*rbacv3.Policy) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&rbachttp.RBAC{Rules: &rbacv3.RBAC{Action: action, Policies: policies}})}}
}

func faultFilter() *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: "envoy.filters.http.fault", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&faultv3.HTTPFault{})}}
}

func exact(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}
}

func prefix(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: s}}
}

type (
	matcherRegex       = matcherv3.RegexMatcher
	coreDataSource     = core.DataSource
	coreInline         = core.DataSource_InlineString
	hcmFilter          = hcmv3.HttpFilter
	filterStateMatcher = matcherv3.FilterStateMatcher
	filterStateString  = matcherv3.FilterStateMatcher_StringMatch
	pathMatcher        = matcherv3.PathMatcher
	pathMatcherPath    = matcherv3.PathMatcher_Path
)

func wrapU32(v uint32) *wrapperspb.UInt32Value { return wrapperspb.UInt32(v) }

func headerOpts(k, v string) []*core.HeaderValueOption {
	return []*core.HeaderValueOption{{Header: &core.HeaderValue{Key: k, Value: v}, AppendAction: core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}}
}

// jwtHCM is f's HTTP connection manager with a jwt_authn filter first.
func jwtHCM(t testing.TB, f *listener.Filter) *listener.Filter_TypedConfig {
	t.Helper()
	var h hcmv3.HttpConnectionManager
	if err := f.GetTypedConfig().UnmarshalTo(&h); err != nil {
		t.Fatal(err)
	}
	h.HttpFilters = append([]*hcmv3.HttpFilter{{Name: "envoy.filters.http.jwt_authn", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&jwtv3.JwtAuthentication{})}}}, h.HttpFilters...)
	return &listener.Filter_TypedConfig{TypedConfig: mustAny(&h)}
}
