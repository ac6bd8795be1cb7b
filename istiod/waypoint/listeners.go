package waypoint

import (
	"net/netip"
	"slices"
	"strconv"

	xdscore "github.com/cncf/xds/go/xds/core/v3"
	matcher "github.com/cncf/xds/go/xds/type/matcher/v3"
	accesslog "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tls "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	envoytype "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"

	"github.com/ambitmesh/ambit/internal/mesh"
)

func rangeOf(p uint32) *envoytype.Int32Range {
	return &envoytype.Int32Range{Start: int32(p), End: int32(p) + 1}
}

// connectTerminate ends the HBONE tunnel: mTLS, then each CONNECT stream
// goes on to main_internal with what it said kept in filter state.
func (b *builder) connectTerminate() *listener.Listener {
	h := &hcm.HttpConnectionManager{
		StatPrefix: ConnectTerminate,
		RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: &route.RouteConfiguration{
			Name: "default",
			VirtualHosts: []*route.VirtualHost{{
				Name:    "default",
				Domains: []string{"*"},
				Routes: []*route.Route{{
					Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_ConnectMatcher_{ConnectMatcher: &route.RouteMatch_ConnectMatcher{}}},
					Action: &route.Route_Route{Route: &route.RouteAction{
						UpgradeConfigs: []*route.RouteAction_UpgradeConfig{{
							UpgradeType:   "CONNECT",
							ConnectConfig: &route.RouteAction_UpgradeConfig_ConnectConfig{},
						}},
						ClusterSpecifier: &route.RouteAction_Cluster{Cluster: MainInternal},
					}},
				}},
			}},
		}},
		UseRemoteAddress:  wrapperspb.Bool(false),
		StreamIdleTimeout: durationpb.New(0),
		UpgradeConfigs:    []*hcm.HttpConnectionManager_UpgradeConfig{{UpgradeType: "CONNECT"}},
		Http2ProtocolOptions: &core.Http2ProtocolOptions{
			AllowConnect:         true,
			MaxConcurrentStreams: wrapperspb.UInt32(100),
			ConnectionKeepalive:  &core.KeepaliveSettings{Interval: durationpb.New(h2KeepaliveInterval), Timeout: durationpb.New(h2KeepaliveTimeout)},
		},
		HttpFilters: []*hcm.HttpFilter{downstreamPeerMetadata(), connectAuthorityHTTP(), routerFilter()},
	}
	return &listener.Listener{
		Name:    ConnectTerminate,
		Address: socketAddress("0.0.0.0", mesh.HBONEPort),
		FilterChains: []*listener.FilterChain{{
			Name: "default",
			TransportSocket: &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{
				TypedConfig: mustAny(&tls.DownstreamTlsContext{
					CommonTlsContext:         b.hboneTLS(),
					RequireClientCertificate: wrapperspb.Bool(true),
				})}},
			Filters: []*listener.Filter{{Name: filterHCM, ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(h)}}},
		}},
		ConnectionBalanceConfig: &listener.Listener_ConnectionBalanceConfig{BalanceType: &listener.Listener_ConnectionBalanceConfig_ExactBalance_{
			ExactBalance: &listener.Listener_ConnectionBalanceConfig_ExactBalance{}}},
	}
}

func socketAddress(ip string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address: ip, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port}}}}
}

// mainInternal dispatches each inner connection to its chain.
func (b *builder) mainInternal() *listener.Listener {
	ipm := &matcher.IPMatcher{}
	byAuthority := map[string]*matcher.Matcher_OnMatch{}
	var chains []*listener.FilterChain
	protos := map[uint32]protocol{} // port -> protocol over all services
	for _, sv := range b.sc.services {
		byPort := map[string]*matcher.Matcher_OnMatch{}
		for _, p := range sv.ports {
			httpName := clusterName("http", p.port, sv.hostname)
			tcpName := clusterName("tcp", p.port, sv.hostname)
			var to *matcher.Matcher_OnMatch
			switch p.proto {
			case protoHTTP, protoHTTP2:
				chains = append(chains, b.httpChain(httpName, sv, p, httpName))
				to = toChain(httpName)
			case protoTCP:
				chains = append(chains, b.tcpChain(tcpName, sv, tcpName))
				to = toChain(tcpName)
			default:
				chains = append(chains, b.tcpChain(tcpName, sv, tcpName), b.httpChain(httpName, sv, p, httpName))
				to = toMatcher(appProtocol(httpName, tcpName))
			}
			ps := strconv.FormatUint(uint64(p.port), 10)
			byPort[ps] = to
			byAuthority[sv.hostname+":"+ps] = to
			if old, ok := protos[p.port]; ok && !sameKind(old, p.proto) {
				protos[p.port] = protoUnknown
			} else {
				protos[p.port] = p.proto
			}
		}
		if len(byPort) == 0 || len(sv.vips) == 0 {
			continue
		}
		rm := &matcher.IPMatcher_IPRangeMatcher{OnMatch: toMatcher(exactMap(inputDestinationPort(), byPort, nil))}
		for _, ip := range sv.vips {
			rm.Ranges = append(rm.Ranges, &xdscore.CidrRange{AddressPrefix: ip.String(), PrefixLen: wrapperspb.UInt32(uint32(ip.BitLen()))})
		}
		ipm.RangeMatchers = append(ipm.RangeMatchers, rm)
	}
	// Traffic addressed to a bound workload itself.
	chains = append(chains,
		&listener.FilterChain{Name: DirectTCP, Filters: append(append([]*listener.Filter{connectAuthorityNetwork()},
			b.networkRBACFilters(b.chainPolicies(nil), DirectTCP, b.notes)...), tcpProxy(Encap, Encap, b.tcpAccessLogs(nil)...))},
		&listener.FilterChain{Name: DirectHTTP, Filters: []*listener.Filter{connectAuthorityNetwork(), b.hcm(Encap, nil, servedPort{proto: protoUnknown}, Encap)}},
	)
	var wlRanges []*xdscore.CidrRange
	for _, w := range b.sc.workloads {
		for _, a := range w.GetAddresses() {
			if ip, ok := netip.AddrFromSlice(a); ok {
				ip = ip.Unmap()
				wlRanges = append(wlRanges, &xdscore.CidrRange{AddressPrefix: ip.String(), PrefixLen: wrapperspb.UInt32(uint32(ip.BitLen()))})
			}
		}
	}
	if len(wlRanges) > 0 {
		ipm.RangeMatchers = append(ipm.RangeMatchers, &matcher.IPMatcher_IPRangeMatcher{
			Ranges: wlRanges, OnMatch: toMatcher(appProtocol(DirectHTTP, DirectTCP))})
	}

	// A known protocol on a port needs no sniffing there, unless
	// workloads are served (any of their ports may carry anything).
	var skip []uint32
	if len(wlRanges) == 0 {
		for p, pr := range protos {
			if pr != protoUnknown {
				skip = append(skip, p)
			}
		}
		slices.Sort(skip)
	}
	l := &listener.Listener{
		Name:              MainInternal,
		ListenerSpecifier: &listener.Listener_InternalListener{InternalListener: &listener.Listener_InternalListenerConfig{}},
		ListenerFilters:   []*listener.ListenerFilter{originalDstListenerFilter(), httpInspector(skip)},
		TrafficDirection:  core.TrafficDirection_INBOUND,
		FilterChains:      chains,
	}
	// The tree: destination IP (VIPs, then port; workloads, then
	// protocol), else the authority kept in filter state. An empty
	// IPMatcher matches nothing; an empty map is invalid, so it is left
	// out (with nothing served, no chain matches: connections close).
	l.FilterChainMatcher = &matcher.Matcher{
		MatcherType: &matcher.Matcher_MatcherTree_{MatcherTree: &matcher.Matcher_MatcherTree{
			Input:    inputDestinationIP(),
			TreeType: &matcher.Matcher_MatcherTree_CustomMatch{CustomMatch: &xdscore.TypedExtensionConfig{Name: "ip", TypedConfig: mustAny(ipm)}},
		}},
	}
	if len(byAuthority) > 0 {
		l.FilterChainMatcher.OnNoMatch = toMatcher(exactMap(inputAuthority(), byAuthority, nil))
	}
	return l
}

func sameKind(a, b protocol) bool {
	isHTTP := func(p protocol) bool { return p == protoHTTP || p == protoHTTP2 }
	return a == b || isHTTP(a) && isHTTP(b)
}

func tcpProxy(statPrefix, cluster string, logs ...*accesslog.AccessLog) *listener.Filter {
	return &listener.Filter{Name: filterTCPProxy, ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(&tcp.TcpProxy{
		StatPrefix:       statPrefix,
		ClusterSpecifier: &tcp.TcpProxy_Cluster{Cluster: cluster},
		AccessLog:        logs,
	})}}
}

func (b *builder) tcpChain(name string, sv *served, cluster string) *listener.FilterChain {
	fs := b.networkRBACFilters(b.chainPolicies(sv), name, b.notes)
	return &listener.FilterChain{Name: name, Filters: append(fs, tcpProxy(name, cluster, b.tcpAccessLogs(sv)...))}
}

func (b *builder) httpChain(name string, sv *served, p servedPort, cluster string) *listener.FilterChain {
	return &listener.FilterChain{Name: name, Filters: []*listener.Filter{b.hcm(name, sv, p, cluster)}}
}

// hcm is a waypoint's HTTP connection manager for one service port (sv
// nil: a direct chain), routes inline.
func (b *builder) hcm(statPrefix string, sv *served, p servedPort, cluster string) *listener.Filter {
	h := &hcm.HttpConnectionManager{
		StatPrefix:                   statPrefix,
		CodecType:                    hcm.HttpConnectionManager_AUTO,
		RouteSpecifier:               &hcm.HttpConnectionManager_RouteConfig{RouteConfig: b.routeConfig(cluster, sv, p)},
		UseRemoteAddress:             wrapperspb.Bool(false),
		NormalizePath:                wrapperspb.Bool(true),
		PathWithEscapedSlashesAction: hcm.HttpConnectionManager_KEEP_UNCHANGED,
		UpgradeConfigs:               []*hcm.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}},
		StreamIdleTimeout:            durationpb.New(0),
	}
	if p.proto == protoHTTP2 {
		h.Http2ProtocolOptions = &core.Http2ProtocolOptions{}
	}
	h.HttpFilters = append(h.HttpFilters, b.policyFilters(sv)...)
	statsFilters := b.applyHTTPTelemetry(h, sv)
	h.HttpFilters = append(h.HttpFilters, grpcStatsFilter(), faultFilter(), corsFilter(), upstreamPeerMetadata())
	h.HttpFilters = append(append(h.HttpFilters, statsFilters...), routerFilter())
	return &listener.Filter{Name: filterHCM, ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(h)}}
}

// policyFilters are the authorization filters of a chain (sv nil: a
// direct chain, the waypoint's own policies only).
func (b *builder) policyFilters(sv *served) []*hcm.HttpFilter {
	return b.rbacFilters(b.chainPolicies(sv), b.notes)
}

func (b *builder) chainPolicies(sv *served) []*securityv1.AuthorizationPolicy {
	if b.in == nil {
		return nil
	}
	k := ""
	if sv != nil {
		k = serviceKey(sv.namespace, sv.name)
	}
	return policiesFor(b.in.AuthorizationPolicies, b.cfg.RootNamespace, b.sc.ref, k)
}

// routeConfig is a chain's route table: the default route to the
// chain's own cluster, as Istio's inbound route.
func (b *builder) routeConfig(cluster string, sv *served, p servedPort) *route.RouteConfiguration {
	vhName := "inbound|http|" + strconv.FormatUint(uint64(p.port), 10)
	op := cluster
	if sv != nil {
		op = sv.hostname + ":" + strconv.FormatUint(uint64(p.port), 10) + "/*"
	}
	rc := &route.RouteConfiguration{
		Name:             cluster,
		ValidateClusters: wrapperspb.Bool(false),
		VirtualHosts: []*route.VirtualHost{{
			Name:    vhName,
			Domains: []string{"*"},
			Routes: []*route.Route{{
				Name:  "default",
				Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
				Action: &route.Route_Route{Route: &route.RouteAction{
					ClusterSpecifier: &route.RouteAction_Cluster{Cluster: cluster},
					Timeout:          durationpb.New(0),
					MaxStreamDuration: &route.RouteAction_MaxStreamDuration{
						MaxStreamDuration:    durationpb.New(0),
						GrpcTimeoutHeaderMax: durationpb.New(0),
					},
				}},
				Decorator: &route.Decorator{Operation: op},
			}},
		}},
	}
	if sv != nil {
		// HTTPRoutes' rules first, then VirtualServices' routes, oldest
		// VirtualService first; the first match wins (docs/waypoint.md).
		var routes []*route.Route
		if len(sv.rules[p.port]) > 0 {
			routes = b.httpRoutes(sv.rules[p.port], sv, p.port)
		}
		routes = append(routes, b.vsRoutes(sv, p.port)...)
		if len(routes) > 0 {
			rc.VirtualHosts[0].Routes = routes
		}
	}
	return rc
}

// connectOriginateListener tunnels each connection again as HBONE, to the
// address the endpoint's metadata names.
func (b *builder) connectOriginateListener() *listener.Listener {
	return &listener.Listener{
		Name:              ConnectOriginate,
		UseOriginalDst:    wrapperspb.Bool(false),
		ListenerSpecifier: &listener.Listener_InternalListener{InternalListener: &listener.Listener_InternalListenerConfig{}},
		ListenerFilters:   []*listener.ListenerFilter{originalDstListenerFilter()},
		FilterChains: []*listener.FilterChain{{
			Filters: []*listener.Filter{{Name: filterTCPProxy, ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(&tcp.TcpProxy{
				StatPrefix:       ConnectOriginate,
				ClusterSpecifier: &tcp.TcpProxy_Cluster{Cluster: ConnectOriginate},
				TunnelingConfig:  &tcp.TcpProxy_TunnelingConfig{Hostname: "%DOWNSTREAM_LOCAL_ADDRESS%"},
			})}}},
		}},
	}
}
