//lint:file-ignore SA1019 Envoy still honours its deprecated fields, and istiod may send them

package config

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	udpatype "github.com/cncf/xds/go/udpa/type/v1"
	xdstype "github.com/cncf/xds/go/xds/type/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	sfsvalue "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/set_filter_state/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	sfshttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/set_filter_state/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnet "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	sfsnet "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/set_filter_state/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	networkinputs "github.com/envoyproxy/go-control-plane/envoy/extensions/matching/common_inputs/network/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

type (
	corev3HeaderValueOption = core.HeaderValueOption
	regexpT                 = regexp.Regexp
	filterStateInput        = networkinputs.FilterStateInput
	stringValue             = wrapperspb.StringValue
)

// Envoy's defaults where the config leaves a timeout out.
const (
	defaultStreamIdleTimeout = 5 * time.Minute
	defaultIdleTimeout       = time.Hour
	defaultRouteTimeout      = 15 * time.Second
	defaultTCPIdleTimeout    = time.Hour
	// defaultBufferLimit is Envoy's per_connection_buffer_limit_bytes.
	defaultBufferLimit = 1 << 20
)

// Type URLs of the filters that observe traffic for telemetry only
// (Istio's peer metadata and stats, grpc_stats): accepted, and changing
// nothing on the request path. TypedStruct wraps Istio's own.
const (
	typePeerMetadata     = "io.istio.http.peer_metadata.Config"
	typeIstioStats       = "stats.PluginConfig"
	typeGRPCStats        = "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"
	typeMetadataExchange = "envoy.tcp.metadataexchange.config.MetadataExchange"
)

// innerType is the type of a filter config: the Any's, or a TypedStruct's
// type_url.
func innerType(a *anypb.Any) string {
	tu := a.GetTypeUrl()
	switch {
	case strings.HasSuffix(tu, "/udpa.type.v1.TypedStruct"):
		var ts udpatype.TypedStruct
		if err := a.UnmarshalTo(&ts); err == nil {
			tu = ts.GetTypeUrl()
		}
	case strings.HasSuffix(tu, "/xds.type.v3.TypedStruct"):
		var ts xdstype.TypedStruct
		if err := a.UnmarshalTo(&ts); err == nil {
			tu = ts.GetTypeUrl()
		}
	}
	if i := strings.LastIndexByte(tu, '/'); i >= 0 {
		tu = tu[i+1:]
	}
	return tu
}

func telemetryType(t string) bool {
	return t == typePeerMetadata || t == typeIstioStats || t == typeGRPCStats || t == typeMetadataExchange
}

func buildChain(fc *listener.FilterChain, name string) (*Chain, []string, error) {
	c := &Chain{Name: name}
	if ts := fc.GetTransportSocket(); ts != nil {
		var d tlsv3.DownstreamTlsContext
		if err := anyTo(ts.GetTypedConfig(), &d); err != nil {
			return nil, nil, unsupported(fmt.Sprintf("transport socket %s", ts.GetName()))
		}
		if !d.GetRequireClientCertificate().GetValue() {
			return nil, nil, unsupported("downstream TLS without a required client certificate")
		}
		c.TLS = true
	}
	var warns []string
	filters := fc.GetFilters()
	for i, f := range filters {
		last := i == len(filters)-1
		t := innerType(f.GetTypedConfig())
		switch t {
		case "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager":
			if !last {
				return nil, nil, fmt.Errorf("filter %s: http_connection_manager is not the last filter", f.GetName())
			}
			var h hcmv3.HttpConnectionManager
			if err := anyTo(f.GetTypedConfig(), &h); err != nil {
				return nil, nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			hcm, w, err := buildHCM(&h)
			if err != nil {
				return nil, nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			warns = append(warns, w...)
			c.HCM = hcm
		case "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy":
			if !last {
				return nil, nil, fmt.Errorf("filter %s: tcp_proxy is not the last filter", f.GetName())
			}
			var tp tcpv3.TcpProxy
			if err := anyTo(f.GetTypedConfig(), &tp); err != nil {
				return nil, nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			t, err := buildTCPProxy(&tp)
			if err != nil {
				return nil, nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			als, w := buildFileAccessLogs(tp.GetAccessLog())
			t.AccessLogs, warns = als, append(warns, w...)
			c.TCP = t
		case "envoy.extensions.filters.network.set_filter_state.v3.Config":
			var s sfsnet.Config
			if err := anyTo(f.GetTypedConfig(), &s); err != nil {
				return nil, nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			vs, err := buildFilterState(s.GetOnNewConnection())
			if err != nil {
				return nil, nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			c.SetFilterState = append(c.SetFilterState, vs...)
		case "envoy.extensions.filters.network.rbac.v3.RBAC":
			var r rbacnet.RBAC
			if err := anyTo(f.GetTypedConfig(), &r); err != nil {
				return nil, nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			if r.GetMatcher() != nil || r.GetShadowMatcher() != nil {
				return nil, nil, unsupported(fmt.Sprintf("filter %s: matcher-based RBAC", f.GetName()))
			}
			rb := &RBAC{StatPrefix: r.GetStatPrefix(), ShadowPrefix: r.GetShadowRulesStatPrefix(), Rules: compileRBACRules(r.GetRules(), false), Shadow: compileRBACRules(r.GetShadowRules(), false)}
			if rb.Rules != nil && rb.Rules.Broken != "" {
				warns = append(warns, fmt.Sprintf("network RBAC %s denies all: %s", f.GetName(), rb.Rules.Broken))
			}
			c.RBAC = append(c.RBAC, rb)
		default:
			if telemetryType(t) {
				continue
			}
			return nil, nil, unsupported(fmt.Sprintf("network filter %s (%s)", f.GetName(), t))
		}
	}
	if c.HCM == nil && c.TCP == nil {
		return nil, nil, fmt.Errorf("no http_connection_manager or tcp_proxy")
	}
	return c, warns, nil
}

func buildFilterState(vs []*sfsvalue.FilterStateValue) ([]*FilterStateValue, error) {
	var out []*FilterStateValue
	for _, v := range vs {
		key := v.GetObjectKey()
		if key == "" {
			return nil, unsupported("filter state value without object_key")
		}
		fs := v.GetFormatString()
		if fs == nil || fs.GetTextFormatSource() == nil && fs.GetTextFormat() == "" {
			return nil, unsupported(fmt.Sprintf("filter state %s: only text format strings", key))
		}
		if len(fs.GetFormatters()) > 0 {
			return nil, unsupported(fmt.Sprintf("filter state %s: formatter extensions (CEL)", key))
		}
		text := fs.GetTextFormat()
		if src := fs.GetTextFormatSource(); src != nil {
			if _, inline := src.GetSpecifier().(*core.DataSource_InlineString); !inline {
				return nil, unsupported(fmt.Sprintf("filter state %s: format source other than inline_string", key))
			}
			text = src.GetInlineString()
		}
		f, err := ParseFormat(text)
		if err != nil {
			return nil, fmt.Errorf("filter state %s: %w", key, err)
		}
		out = append(out, &FilterStateValue{
			Key: key, Value: f, ReadOnly: v.GetReadOnly(), SkipIfEmpty: v.GetSkipIfEmpty(),
			Shared: v.GetSharedWithUpstream() != sfsvalue.FilterStateValue_NONE,
		})
	}
	return out, nil
}

func buildHCM(h *hcmv3.HttpConnectionManager) (*HCM, []string, error) {
	out := &HCM{
		StatPrefix:            h.GetStatPrefix(),
		Upgrades:              map[string]bool{},
		StreamIdleTimeout:     dur(h.GetStreamIdleTimeout()),
		RequestHeadersTimeout: dur(h.GetRequestHeadersTimeout()),
		IdleTimeout:           dur(h.GetCommonHttpProtocolOptions().GetIdleTimeout()),
		MaxRequestHeadersKB:   int(h.GetMaxRequestHeadersKb().GetValue()),
		MaxHeadersCount:       int(h.GetCommonHttpProtocolOptions().GetMaxHeadersCount().GetValue()),
		ServerName:            h.GetServerName(),
		NormalizePath:         h.GetNormalizePath().GetValue(),
		MergeSlashes:          h.GetMergeSlashes(),
		AcceptHTTP10:          h.GetHttpProtocolOptions().GetAcceptHttp_10(),
		Proxy100Continue:      h.GetProxy_100Continue(),
		EnableTrailers:        h.GetHttpProtocolOptions().GetEnableTrailers(),
		AllowConnect:          h.GetHttp2ProtocolOptions().GetAllowConnect(),
	}
	switch h.GetPathWithEscapedSlashesAction() {
	case hcmv3.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT, hcmv3.HttpConnectionManager_KEEP_UNCHANGED:
	case hcmv3.HttpConnectionManager_REJECT_REQUEST:
		out.RejectEscapedSlashes = true
	case hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD:
		out.UnescapeSlashes = true
	default:
		return nil, nil, unsupported(fmt.Sprintf("path_with_escaped_slashes_action %v", h.GetPathWithEscapedSlashesAction()))
	}
	if h.GetPathNormalizationOptions() != nil {
		return nil, nil, unsupported("path_normalization_options")
	}
	if h.GetStreamIdleTimeout() == nil {
		out.StreamIdleTimeout = defaultStreamIdleTimeout
	}
	if h.GetCommonHttpProtocolOptions().GetIdleTimeout() == nil {
		out.IdleTimeout = defaultIdleTimeout
	}
	if out.MaxRequestHeadersKB == 0 {
		out.MaxRequestHeadersKB = 60
	}
	if out.MaxHeadersCount == 0 {
		out.MaxHeadersCount = 100
	}
	if h.GetRds() != nil || h.GetScopedRoutes() != nil {
		return nil, nil, unsupported("RDS and scoped routes (the waypoint reads inline route_config)")
	}
	switch h.GetCodecType() {
	case hcmv3.HttpConnectionManager_AUTO:
	case hcmv3.HttpConnectionManager_HTTP1:
		out.Codec = CodecHTTP1
	case hcmv3.HttpConnectionManager_HTTP2:
		out.Codec = CodecHTTP2
	default:
		return nil, nil, unsupported(fmt.Sprintf("codec_type %v", h.GetCodecType()))
	}
	for _, u := range h.GetUpgradeConfigs() {
		if len(u.GetFilters()) > 0 {
			return nil, nil, unsupported("upgrade_configs with filters")
		}
		if u.GetEnabled() == nil || u.GetEnabled().GetValue() {
			out.Upgrades[strings.ToLower(u.GetUpgradeType())] = true
		}
	}
	tr, warns, err := buildTracing(h.GetTracing())
	if err != nil {
		return nil, nil, err
	}
	out.Tracing = tr
	logs, logWarns, err := buildAccessLogs(h.GetAccessLog())
	if err != nil {
		return nil, nil, err
	}
	out.OTelLogs, warns = logs, append(warns, logWarns...)
	als, w := buildFileAccessLogs(h.GetAccessLog())
	out.AccessLogs, warns = als, append(warns, w...)
	for i, f := range h.GetHttpFilters() {
		if f.GetDisabled() {
			continue
		}
		t := innerType(f.GetTypedConfig())
		hf := &HTTPFilter{Name: f.GetName()}
		switch t {
		case "envoy.extensions.filters.http.set_filter_state.v3.Config":
			var s sfshttp.Config
			if err := anyTo(f.GetTypedConfig(), &s); err != nil {
				return nil, nil, fmt.Errorf("http filter %s: %w", f.GetName(), err)
			}
			vs, err := buildFilterState(s.GetOnRequestHeaders())
			if err != nil {
				return nil, nil, fmt.Errorf("http filter %s: %w", f.GetName(), err)
			}
			hf.Kind, hf.SetFilterState = FilterSetFilterState, vs
		case "envoy.extensions.filters.http.rbac.v3.RBAC":
			var r rbachttp.RBAC
			if err := anyTo(f.GetTypedConfig(), &r); err != nil {
				return nil, nil, fmt.Errorf("http filter %s: %w", f.GetName(), err)
			}
			if r.GetMatcher() != nil || r.GetShadowMatcher() != nil {
				return nil, nil, unsupported(fmt.Sprintf("http filter %s: matcher-based RBAC", f.GetName()))
			}
			hf.Kind = FilterRBAC
			hf.RBAC = &RBAC{StatPrefix: r.GetRulesStatPrefix(), ShadowPrefix: r.GetShadowRulesStatPrefix(), Rules: compileRBACRules(r.GetRules(), true), Shadow: compileRBACRules(r.GetShadowRules(), true)}
			if hf.RBAC.Rules != nil && hf.RBAC.Rules.Broken != "" {
				warns = append(warns, fmt.Sprintf("http RBAC %s denies all: %s", f.GetName(), hf.RBAC.Rules.Broken))
			}
		case "envoy.extensions.filters.http.fault.v3.HTTPFault":
			var fc faultv3.HTTPFault
			if err := anyTo(f.GetTypedConfig(), &fc); err != nil {
				return nil, nil, fmt.Errorf("http filter %s: %w", f.GetName(), err)
			}
			ft, err := buildFault(&fc)
			if err != nil {
				return nil, nil, fmt.Errorf("http filter %s: %w", f.GetName(), err)
			}
			hf.Kind, hf.Fault = FilterFault, ft
		case "envoy.extensions.filters.http.cors.v3.Cors":
			hf.Kind = FilterCORS
		case "envoy.extensions.filters.http.router.v3.Router":
			if i != len(h.GetHttpFilters())-1 {
				return nil, nil, fmt.Errorf("http filter %s: router is not the last filter", f.GetName())
			}
			hf.Kind = FilterRouter
		default:
			if telemetryType(t) {
				hf.Kind = FilterTelemetry
				if t == typeIstioStats {
					st, w, err := buildStats(f.GetTypedConfig())
					if err != nil {
						warns = append(warns, fmt.Sprintf("http filter %s: %v; Istio's default metrics", f.GetName(), err))
						break
					}
					out.Stats, warns = st, append(warns, w...)
				}
				break
			}
			if f.GetIsOptional() {
				continue // Envoy skips an optional filter it does not know
			}
			return nil, nil, unsupported(fmt.Sprintf("http filter %s (%s)", f.GetName(), t))
		}
		out.Filters = append(out.Filters, hf)
	}
	if len(out.Filters) == 0 || out.Filters[len(out.Filters)-1].Kind != FilterRouter {
		return nil, nil, fmt.Errorf("http filters do not end with the router")
	}
	rc := h.GetRouteConfig()
	if rc == nil {
		return nil, nil, fmt.Errorf("no route_config")
	}
	if len(rc.GetRequestHeadersToAdd())+len(rc.GetResponseHeadersToAdd())+len(rc.GetRequestHeadersToRemove())+len(rc.GetResponseHeadersToRemove()) > 0 {
		return nil, nil, unsupported(fmt.Sprintf("route_config %s: header mutation at route_config level", rc.GetName()))
	}
	for _, vh := range rc.GetVirtualHosts() {
		v, err := buildVirtualHost(vh)
		if err != nil {
			return nil, nil, fmt.Errorf("route_config %s: virtual host %s: %w", rc.GetName(), vh.GetName(), err)
		}
		out.VirtualHosts = append(out.VirtualHosts, v)
	}
	return out, warns, nil
}

func mutation(reqAdd []*corev3HeaderValueOption, reqRemove []string, respAdd []*corev3HeaderValueOption, respRemove []string) (HeaderMutation, error) {
	var m HeaderMutation
	var err error
	if m.RequestAdd, err = headerValues(reqAdd); err != nil {
		return m, err
	}
	if m.ResponseAdd, err = headerValues(respAdd); err != nil {
		return m, err
	}
	m.RequestRemove, m.ResponseRemove = reqRemove, respRemove
	return m, nil
}

func buildVirtualHost(vh *route.VirtualHost) (*VirtualHost, error) {
	out := &VirtualHost{Name: vh.GetName(), Domains: vh.GetDomains()}
	if vh.GetCors() != nil || len(vh.GetTypedPerFilterConfig()) > 0 || vh.GetRetryPolicy() != nil && false {
		return nil, unsupported("virtual host cors or per-filter config")
	}
	var err error
	if out.Headers, err = mutation(vh.GetRequestHeadersToAdd(), vh.GetRequestHeadersToRemove(), vh.GetResponseHeadersToAdd(), vh.GetResponseHeadersToRemove()); err != nil {
		return nil, err
	}
	vhRetry, err := buildRetry(vh.GetRetryPolicy())
	if err != nil {
		return nil, err
	}
	vhLimit := int(vh.GetPerRequestBufferLimitBytes().GetValue())
	if l := vh.GetRequestBodyBufferLimit(); l != nil {
		vhLimit = int(min(l.GetValue(), 1<<31-1))
	}
	for i, r := range vh.GetRoutes() {
		rt, err := buildRoute(r)
		if err != nil {
			return nil, fmt.Errorf("route %d %s: %w", i, r.GetName(), err)
		}
		if rt.Action != nil && rt.Action.Retry == nil {
			rt.Action.Retry = vhRetry
		}
		if rt.Action != nil {
			switch {
			case r.GetRequestBodyBufferLimit() != nil:
				rt.Action.BufferLimit = int(min(r.GetRequestBodyBufferLimit().GetValue(), 1<<31-1))
			case r.GetPerRequestBufferLimitBytes() != nil:
				rt.Action.BufferLimit = int(r.GetPerRequestBufferLimitBytes().GetValue())
			case vhLimit > 0:
				rt.Action.BufferLimit = vhLimit
			default:
				rt.Action.BufferLimit = defaultBufferLimit
			}
		}
		out.Routes = append(out.Routes, rt)
	}
	return out, nil
}

func buildRoute(r *route.Route) (*Route, error) {
	out := &Route{Name: r.GetName(), DisabledFilters: map[string]bool{}, Operation: r.GetDecorator().GetOperation()}
	var err error
	if out.Match, err = compileRouteMatch(r.GetMatch()); err != nil {
		return nil, err
	}
	if out.Headers, err = mutation(r.GetRequestHeadersToAdd(), r.GetRequestHeadersToRemove(), r.GetResponseHeadersToAdd(), r.GetResponseHeadersToRemove()); err != nil {
		return nil, err
	}
	for name, cfg := range r.GetTypedPerFilterConfig() {
		t := innerType(cfg)
		switch t {
		case "envoy.extensions.filters.http.fault.v3.HTTPFault":
			var fc faultv3.HTTPFault
			if err := anyTo(cfg, &fc); err != nil {
				return nil, err
			}
			if out.Fault, err = buildFault(&fc); err != nil {
				return nil, fmt.Errorf("fault: %w", err)
			}
		case "envoy.extensions.filters.http.cors.v3.CorsPolicy":
			var cp corsv3.CorsPolicy
			if err := anyTo(cfg, &cp); err != nil {
				return nil, err
			}
			if out.CORS, err = buildCORS(&cp); err != nil {
				return nil, fmt.Errorf("cors: %w", err)
			}
		case "envoy.config.route.v3.FilterConfig":
			var fc route.FilterConfig
			if err := anyTo(cfg, &fc); err != nil {
				return nil, err
			}
			if !fc.GetDisabled() || fc.GetConfig() != nil {
				return nil, unsupported(fmt.Sprintf("per-filter config %s", name))
			}
			out.DisabledFilters[name] = true
		default:
			return nil, unsupported(fmt.Sprintf("per-filter config %s (%s)", name, t))
		}
	}
	switch a := r.GetAction().(type) {
	case *route.Route_Route:
		out.Action, err = buildRouteAction(a.Route)
		if err != nil {
			return nil, err
		}
	case *route.Route_Redirect:
		out.Redirect, err = buildRedirect(a.Redirect)
		if err != nil {
			return nil, err
		}
	case *route.Route_DirectResponse:
		body := a.DirectResponse.GetBody()
		if body != nil && body.GetInlineString() == "" && body.GetInlineBytes() == nil && body.GetSpecifier() != nil {
			return nil, unsupported("direct response body from a file or environment")
		}
		out.Direct = &DirectResponse{Status: int(a.DirectResponse.GetStatus()), Body: body.GetInlineString() + string(body.GetInlineBytes())}
	default:
		return nil, unsupported(fmt.Sprintf("route action %T", a))
	}
	return out, nil
}

func buildRouteAction(a *route.RouteAction) (*RouteAction, error) {
	out := &RouteAction{
		Timeout: defaultRouteTimeout, IdleTimeout: dur(a.GetIdleTimeout()),
		PrefixRewrite: a.GetPrefixRewrite(), HostRewrite: a.GetHostRewriteLiteral(),
		Upgrades: map[string]bool{}, ClusterNotFoundCode: http.StatusServiceUnavailable,
	}
	if a.GetTimeout() != nil {
		out.Timeout = a.GetTimeout().AsDuration()
	}
	switch a.GetClusterNotFoundResponseCode() {
	case route.RouteAction_NOT_FOUND:
		out.ClusterNotFoundCode = http.StatusNotFound
	case route.RouteAction_INTERNAL_SERVER_ERROR:
		out.ClusterNotFoundCode = http.StatusInternalServerError
	}
	switch cs := a.GetClusterSpecifier().(type) {
	case *route.RouteAction_Cluster:
		out.Cluster = cs.Cluster
	case *route.RouteAction_WeightedClusters:
		for _, w := range cs.WeightedClusters.GetClusters() {
			if w.GetName() == "" || len(w.GetTypedPerFilterConfig()) > 0 || w.GetMetadataMatch() != nil {
				return nil, unsupported("weighted cluster by header, with metadata match or per-filter config")
			}
			m, err := mutation(w.GetRequestHeadersToAdd(), w.GetRequestHeadersToRemove(), w.GetResponseHeadersToAdd(), w.GetResponseHeadersToRemove())
			if err != nil {
				return nil, err
			}
			out.Weighted = append(out.Weighted, WeightedCluster{Name: w.GetName(), Weight: w.GetWeight().GetValue(), Headers: m, HostRewrite: w.GetHostRewriteLiteral()})
		}
		if len(out.Weighted) == 0 {
			return nil, fmt.Errorf("weighted_clusters without clusters")
		}
	default:
		return nil, unsupported(fmt.Sprintf("cluster specifier %T", cs))
	}
	if rr := a.GetRegexRewrite(); rr != nil {
		re, err := regexp.Compile(rr.GetPattern().GetRegex())
		if err != nil {
			return nil, fmt.Errorf("regex_rewrite: %w", err)
		}
		out.RegexRewrite = &RegexRewrite{Pattern: re, Substitution: envoySubstitution(rr.GetSubstitution())}
	}
	if a.GetHostRewriteSpecifier() != nil && out.HostRewrite == "" {
		return nil, unsupported(fmt.Sprintf("host rewrite %T", a.GetHostRewriteSpecifier()))
	}
	for _, m := range a.GetRequestMirrorPolicies() {
		if m.GetCluster() == "" || m.GetClusterHeader() != "" {
			return nil, unsupported("request mirror by cluster_header")
		}
		// No runtime layer: the fraction's default value applies, as in
		// Envoy when no runtime sets its key.
		f := 1.0
		if rf := m.GetRuntimeFraction(); rf != nil {
			f = percent(rf.GetDefaultValue())
		}
		out.Mirrors = append(out.Mirrors, Mirror{Cluster: m.GetCluster(), Fraction: f, HostSuffix: !m.GetDisableShadowHostSuffixAppend()})
	}
	if len(a.GetRateLimits()) > 0 || a.GetHedgePolicy() != nil || a.GetInternalRedirectPolicy() != nil {
		return nil, unsupported("rate limits, hedging and internal redirects")
	}
	if m := a.GetMaxGrpcTimeout(); m != nil {
		d := m.AsDuration()
		out.MaxGRPCTimeout = &d
	}
	// hash_policy is accepted and changes nothing
	// (round robin; no gRPC).
	retry, err := buildRetry(a.GetRetryPolicy())
	if err != nil {
		return nil, err
	}
	out.Retry = retry
	for _, u := range a.GetUpgradeConfigs() {
		on := u.GetEnabled() == nil || u.GetEnabled().GetValue()
		t := strings.ToLower(u.GetUpgradeType())
		out.Upgrades[t] = on
		if t == "connect" && u.GetConnectConfig() != nil {
			if u.GetConnectConfig().GetProxyProtocolConfig() != nil {
				return nil, unsupported("connect_config proxy_protocol_config")
			}
			out.Connect = true
		}
	}
	return out, nil
}

// envoySubstitution turns Envoy's \1 back-references into Go's ${1}.
func envoySubstitution(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9' {
			b.WriteString("${" + string(s[i+1]) + "}")
			i++
			continue
		}
		if s[i] == '$' {
			b.WriteString("$$")
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func buildRedirect(r *route.RedirectAction) (*Redirect, error) {
	out := &Redirect{Scheme: r.GetSchemeRedirect(), Host: r.GetHostRedirect(), Port: r.GetPortRedirect(),
		Path: r.GetPathRedirect(), PrefixRewrite: r.GetPrefixRewrite(), StripQuery: r.GetStripQuery()}
	if r.GetHttpsRedirect() {
		out.Scheme = "https"
	}
	if rr := r.GetRegexRewrite(); rr != nil {
		re, err := regexp.Compile(rr.GetPattern().GetRegex())
		if err != nil {
			return nil, fmt.Errorf("redirect regex_rewrite: %w", err)
		}
		out.RegexRewrite = &RegexRewrite{Pattern: re, Substitution: envoySubstitution(rr.GetSubstitution())}
	}
	switch r.GetResponseCode() {
	case route.RedirectAction_MOVED_PERMANENTLY:
		out.Code = http.StatusMovedPermanently
	case route.RedirectAction_FOUND:
		out.Code = http.StatusFound
	case route.RedirectAction_SEE_OTHER:
		out.Code = http.StatusSeeOther
	case route.RedirectAction_TEMPORARY_REDIRECT:
		out.Code = http.StatusTemporaryRedirect
	case route.RedirectAction_PERMANENT_REDIRECT:
		out.Code = http.StatusPermanentRedirect
	}
	return out, nil
}

func buildFault(f *faultv3.HTTPFault) (*Fault, error) {
	out := &Fault{}
	if f.GetUpstreamCluster() != "" || len(f.GetDownstreamNodes()) > 0 || f.GetResponseRateLimit() != nil || f.GetMaxActiveFaults() != nil {
		return nil, unsupported("fault upstream_cluster, downstream_nodes, response_rate_limit, max_active_faults")
	}
	if d := f.GetDelay(); d != nil {
		switch ft := d.GetFaultDelaySecifier().(type) {
		case *faultcommon.FaultDelay_FixedDelay:
			out.Delay = ft.FixedDelay.AsDuration()
		default:
			return nil, unsupported(fmt.Sprintf("fault delay %T", ft))
		}
		out.DelayPercent = percent(d.GetPercentage())
	}
	if a := f.GetAbort(); a != nil {
		switch at := a.GetErrorType().(type) {
		case *faultv3.FaultAbort_HttpStatus:
			out.AbortStatus = int(at.HttpStatus)
		case *faultv3.FaultAbort_HeaderAbort_:
			out.AbortHeader = true
		default:
			return nil, unsupported(fmt.Sprintf("fault abort %T", at))
		}
		out.AbortPercent = percent(a.GetPercentage())
	}
	for _, h := range f.GetHeaders() {
		m, err := compileHeader(h)
		if err != nil {
			return nil, err
		}
		out.Headers = append(out.Headers, m)
	}
	return out, nil
}

func buildCORS(c *corsv3.CorsPolicy) (*CORS, error) {
	out := &CORS{AllowMethods: c.GetAllowMethods(), AllowHeaders: c.GetAllowHeaders(), ExposeHeaders: c.GetExposeHeaders(),
		MaxAge: c.GetMaxAge(), AllowCredentials: c.GetAllowCredentials().GetValue()}
	for _, o := range c.GetAllowOriginStringMatch() {
		m, err := compileString(o)
		if err != nil {
			return nil, err
		}
		out.AllowOrigins = append(out.AllowOrigins, m)
	}
	return out, nil
}

func buildTCPProxy(t *tcpv3.TcpProxy) (*TCPProxy, error) {
	out := &TCPProxy{StatPrefix: t.GetStatPrefix(), IdleTimeout: defaultTCPIdleTimeout}
	if t.GetIdleTimeout() != nil {
		out.IdleTimeout = t.GetIdleTimeout().AsDuration()
	}
	switch cs := t.GetClusterSpecifier().(type) {
	case *tcpv3.TcpProxy_Cluster:
		out.Cluster = cs.Cluster
	case *tcpv3.TcpProxy_WeightedClusters:
		for _, w := range cs.WeightedClusters.GetClusters() {
			if w.GetMetadataMatch() != nil {
				return nil, unsupported("weighted cluster metadata_match")
			}
			out.Weighted = append(out.Weighted, WeightedCluster{Name: w.GetName(), Weight: w.GetWeight()})
		}
	default:
		return nil, unsupported(fmt.Sprintf("tcp_proxy cluster specifier %T", cs))
	}
	if tc := t.GetTunnelingConfig(); tc != nil {
		if tc.GetUsePost() || tc.GetPropagateResponseHeaders() || tc.GetPropagateResponseTrailers() || tc.GetPostPath() != "" {
			return nil, unsupported("tunneling_config use_post, post_path and propagation")
		}
		f, err := ParseFormat(tc.GetHostname())
		if err != nil {
			return nil, fmt.Errorf("tunneling_config hostname: %w", err)
		}
		out.Tunnel = f
		hs, err := headerValues(tc.GetHeadersToAdd())
		if err != nil {
			return nil, fmt.Errorf("tunneling_config: %w", err)
		}
		out.TunnelHeaders = hs
	}
	if t.GetHashPolicy() != nil || t.GetOnDemand() != nil || t.GetMetadataMatch() != nil {
		return nil, unsupported("tcp_proxy hash_policy, on_demand, metadata_match")
	}
	return out, nil
}

func buildRetry(r *route.RetryPolicy) (*RetryPolicy, error) {
	if r == nil {
		return nil, nil
	}
	out := &RetryPolicy{NumRetries: 1, On: map[string]bool{}, PerTryTimeout: dur(r.GetPerTryTimeout()),
		BaseBackoff: 25 * time.Millisecond}
	if r.GetNumRetries() != nil {
		out.NumRetries = int(r.GetNumRetries().GetValue())
	}
	for c := range strings.SplitSeq(r.GetRetryOn(), ",") {
		if c = strings.TrimSpace(c); c != "" {
			out.On[c] = true
		}
	}
	for _, c := range r.GetRetriableStatusCodes() {
		out.StatusCodes = append(out.StatusCodes, int(c))
	}
	for _, p := range r.GetRetryHostPredicate() {
		if !strings.HasSuffix(p.GetName(), "previous_hosts") {
			return nil, unsupported(fmt.Sprintf("retry host predicate %s", p.GetName()))
		}
		out.OtherHosts = true
	}
	if b := r.GetRetryBackOff(); b != nil {
		out.BaseBackoff = dur(b.GetBaseInterval())
		out.MaxBackoff = dur(b.GetMaxInterval())
	}
	if out.MaxBackoff == 0 {
		out.MaxBackoff = 10 * out.BaseBackoff
	}
	if r.GetRetryPriority() != nil || len(r.GetRetriableHeaders()) > 0 || len(r.GetRetriableRequestHeaders()) > 0 || r.GetRateLimitedRetryBackOff() != nil {
		return nil, unsupported("retry priority, retriable headers and rate-limited back-off")
	}
	return out, nil
}
