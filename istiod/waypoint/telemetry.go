package waypoint

// Telemetry of a waypoint's chains, from MeshConfig and the Telemetry
// API (istiod/telemetry merges them), in the Envoy config Istio's
// pilot/pkg/networking/core/tracing.go and pilot/pkg/model/telemetry*.go
// emit for a waypoint:
//
//   - the HCM's tracing: zipkin (envoy.tracers.zipkin, HTTP_JSON v2 to
//     the collector's outbound cluster in the collector_service form
//     Istio sends proxies of 1.29+) or opentelemetry
//     (envoy.tracers.opentelemetry, grpc_service envoy_grpc, or
//     http_service when the provider says http); sampling client 100,
//     overall 100, random the Telemetry's randomSamplingPercentage, else
//     defaultConfig.tracing.sampling, else 1%; tags as Istio's for a
//     waypoint (its own and the dry-run policy tags unless
//     enableIstioTags is false, the peers' always), then the custom
//     tags. Without any
//     Telemetry tracing or default tracing provider, MeshConfig's
//     enableTracing keeps Istio's legacy tracing (sampling and tags, the
//     provider being the proxy's bootstrap's, which Ambit's waypoint has
//     not: it then propagates and records nothing).
//   - access_log on HCMs and tcp_proxy: envoy.access_loggers.file (text
//     with Istio's default format, or JSON labels) and
//     envoy.access_loggers.open_telemetry for envoyOtelAls, a
//     Telemetry's filter as Envoy's CEL extension filter; without
//     Telemetry or default providers, MeshConfig's accessLogFile.
//   - the istio.stats filter's stats.PluginConfig (reporter
//     SERVER_GATEWAY, metrics overrides: drop, dimensions, tags_to_remove,
//     tcp_reporting_duration); no filter when a Telemetry disables all
//     metrics or names no prometheus provider.
//
// Collector clusters are Istio's outbound|<port>||<host>, EDS, whose
// endpoints are the collector Service's workloads, reached directly
// (plaintext; docs/telemetry.md).

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	accesslog "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	trace "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	fileal "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	celfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/filters/cel/v3"
	grpcal "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	otelal "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/open_telemetry/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	reqwoq "github.com/envoyproxy/go-control-plane/envoy/extensions/formatter/req_without_query/v3"
	metadatatype "github.com/envoyproxy/go-control-plane/envoy/type/metadata/v3"
	tracingtype "github.com/envoyproxy/go-control-plane/envoy/type/tracing/v3"
	xdstype "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	otlpcommon "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"istio.io/api/envoy/extensions/stats"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	tpb "istio.io/api/telemetry/v1alpha1"

	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/istiod/meshconfig"
	"github.com/ambitmesh/ambit/istiod/telemetry"
)

// Names of Envoy's tracers and access loggers, and Istio's defaults.
const (
	tracerZipkin        = "envoy.tracers.zipkin"
	tracerOpenTelemetry = "envoy.tracers.opentelemetry"
	accessLogFile       = "envoy.access_loggers.file"
	accessLogOTel       = "envoy.access_loggers.open_telemetry"
	accessLogCELFilter  = "envoy.access_loggers.extension_filters.cel"
	otelLogName         = "otel_envoy_accesslog"
	devStdout           = "/dev/stdout"

	// EnvoyTextLogFormat is Istio's default text access-log format.
	EnvoyTextLogFormat = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% " +
		"%PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% " +
		"%RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% " +
		"\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% " +
		"%DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" " +
		"\"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" " +
		"%UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% " +
		"%DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)

// envoyJSONLogFormat is Istio's default JSON access-log format
// (EnvoyJSONLogFormatIstio).
func envoyJSONLogFormat() *structpb.Struct {
	fields := map[string]any{
		"start_time":                        "%START_TIME%",
		"route_name":                        "%ROUTE_NAME%",
		"method":                            "%REQ(:METHOD)%",
		"path":                              "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
		"protocol":                          "%PROTOCOL%",
		"response_code":                     "%RESPONSE_CODE%",
		"response_flags":                    "%RESPONSE_FLAGS%",
		"response_code_details":             "%RESPONSE_CODE_DETAILS%",
		"connection_termination_details":    "%CONNECTION_TERMINATION_DETAILS%",
		"upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
		"bytes_received":                    "%BYTES_RECEIVED%",
		"bytes_sent":                        "%BYTES_SENT%",
		"duration":                          "%DURATION%",
		"upstream_service_time":             "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
		"x_forwarded_for":                   "%REQ(X-FORWARDED-FOR)%",
		"user_agent":                        "%REQ(USER-AGENT)%",
		"request_id":                        "%REQ(X-REQUEST-ID)%",
		"authority":                         "%REQ(:AUTHORITY)%",
		"upstream_host":                     "%UPSTREAM_HOST%",
		"upstream_cluster":                  "%UPSTREAM_CLUSTER_RAW%",
		"upstream_local_address":            "%UPSTREAM_LOCAL_ADDRESS%",
		"downstream_local_address":          "%DOWNSTREAM_LOCAL_ADDRESS%",
		"downstream_remote_address":         "%DOWNSTREAM_REMOTE_ADDRESS%",
		"requested_server_name":             "%REQUESTED_SERVER_NAME%",
	}
	s, err := structpb.NewStruct(fields)
	if err != nil {
		panic(err)
	}
	return s
}

func (b *builder) mesh() *meshv1alpha1.MeshConfig { return b.telemetryIndex().Mesh() }

func (b *builder) telemetryIndex() *telemetry.Index {
	if b.tel == nil {
		if b.in != nil && b.in.Telemetry != nil {
			b.tel = b.in.Telemetry
		} else {
			b.tel = telemetry.NewIndex(meshconfig.Default(), nil)
		}
	}
	return b.tel
}

// chainTelemetry is what applies to a chain of sv (nil: a direct chain).
func (b *builder) chainTelemetry(sv *served) telemetry.Config {
	tg := telemetry.Target{WaypointNamespace: b.sc.ref.Namespace, WaypointName: b.sc.ref.Name}
	if sv != nil {
		tg.ServiceNamespace, tg.ServiceName = sv.namespace, sv.name
	}
	return b.telemetryIndex().For(tg)
}

// applyHTTPTelemetry sets an HCM's tracing and access logs and returns
// its stats filters (none: metrics off).
func (b *builder) applyHTTPTelemetry(h *hcm.HttpConnectionManager, sv *served) []*hcm.HttpFilter {
	tc := b.chainTelemetry(sv)
	h.Tracing = b.tracing(tc.Tracing)
	h.AccessLog = b.accessLogs(tc)
	var out []*hcm.HttpFilter
	for _, m := range tc.Metrics {
		if cfg := statsConfig(m); cfg != nil {
			out = append(out, &hcm.HttpFilter{Name: filterStats, IsOptional: true, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(cfg)}})
		}
	}
	return out
}

// tcpAccessLogs are a tcp_proxy chain's access logs.
func (b *builder) tcpAccessLogs(sv *served) []*accesslog.AccessLog {
	return b.accessLogs(b.chainTelemetry(sv))
}

// statsConfig is the istio.stats filter's config for a metrics provider
// (nil: not a Prometheus provider).
func statsConfig(m telemetry.Metrics) *stats.PluginConfig {
	if m.Provider.GetPrometheus() == nil {
		return nil
	}
	// A waypoint's chains are inbound to Istio (ListenerClassSidecarInbound):
	// destination_service never falls back to the Host header.
	cfg := &stats.PluginConfig{Reporter: stats.Reporter_SERVER_GATEWAY, DisableHostHeaderFallback: true}
	if m.DisabledAll {
		// Istio emits no filter; Envoy without it reports nothing, while
		// Ambit's waypoint reports Istio's defaults for a chain without
		// one. One unnamed dropped metric (all of them) says "none" to
		// both.
		cfg.Metrics = []*stats.MetricConfig{{Drop: true}}
		return cfg
	}
	if m.ReportingIntervalSeconds > 0 {
		cfg.TcpReportingDuration = durationpb.New(secondsDuration(m.ReportingIntervalSeconds))
	}
	for _, o := range m.Overrides {
		mc := &stats.MetricConfig{Name: telemetry.PrometheusMetricName(o.Name), Drop: o.Disabled, Dimensions: map[string]string{}, TagsToRemove: o.Remove}
		for k, v := range o.Tags {
			mc.Dimensions[k] = v
		}
		cfg.Metrics = append(cfg.Metrics, mc)
	}
	return cfg
}

// tracing is an HCM's tracing (nil: none), as Istio's
// configureTracingFromTelemetry builds a waypoint's (server side).
func (b *builder) tracing(t *telemetry.Tracing) *hcm.HttpConnectionManager_Tracing {
	mesh := b.mesh()
	pc := mesh.GetDefaultConfig()
	if t == nil {
		if !mesh.GetEnableTracing() {
			return nil
		}
		out := &hcm.HttpConnectionManager_Tracing{}
		sampling(out, proxyConfigSampling(pc))
		istioTags := pc.GetTracing().GetEnableIstioTags() == nil || pc.GetTracing().GetEnableIstioTags().GetValue()
		out.CustomTags = b.spanTags(istioTags, proxyConfigTags(pc.GetTracing().GetCustomTags()))
		if l := pc.GetTracing().GetMaxPathTagLength(); l != 0 {
			out.MaxPathTagLength = wrapperspb.UInt32(l)
		}
		return out
	}
	if t.Disabled {
		return nil
	}
	out, err := b.tracingProvider(t.Provider)
	if err != nil {
		// As Istio: the chain has no tracing then.
		b.telNotes = append(b.telNotes, err.Error())
		return nil
	}
	pct := proxyConfigSampling(pc)
	if t.RandomSamplingPercentage != nil {
		pct = *t.RandomSamplingPercentage
	}
	sampling(out, pct)
	tags := t.CustomTags
	if len(tags) == 0 {
		tags = proxyConfigTags(pc.GetTracing().GetCustomTags())
	}
	out.CustomTags = b.spanTags(t.EnableIstioTags, tags)
	if out.MaxPathTagLength == nil && pc.GetTracing().GetMaxPathTagLength() != 0 {
		out.MaxPathTagLength = wrapperspb.UInt32(pc.GetTracing().GetMaxPathTagLength())
	}
	return out
}

func sampling(t *hcm.HttpConnectionManager_Tracing, pct float64) {
	t.ClientSampling = &xdstype.Percent{Value: 100}
	t.OverallSampling = &xdstype.Percent{Value: 100}
	t.RandomSampling = &xdstype.Percent{Value: pct}
}

// proxyConfigSampling is defaultConfig.tracing.sampling, else Istio's
// PILOT_TRACE_SAMPLING default.
func proxyConfigSampling(pc *meshv1alpha1.ProxyConfig) float64 {
	if s := pc.GetTracing().GetSampling(); s != 0 {
		if s > 100 {
			return 1
		}
		return s
	}
	return meshconfig.DefaultTraceSampling
}

// spanTags are a waypoint HCM's span tags, sorted by name as Istio sorts
// them: with istioTags Istio's literal tags of the proxy and its dry-run
// policy tags; always, as for every waypoint, the peers' tags; then the
// user's.
func (b *builder) spanTags(istioTags bool, user map[string]*tpb.Tracing_CustomTag) []*tracingtype.CustomTag {
	var tags []*tracingtype.CustomTag
	if istioTags {
		tags = append(b.istioTags(), dryRunPolicyTags()...)
	}
	tags = append(tags, waypointPeerTags()...)
	tags = append(tags, customTags(user)...)
	sort.SliceStable(tags, func(i, j int) bool { return tags[i].Tag < tags[j].Tag })
	return tags
}

// istioTags are the literal tags Istio gives a proxy's spans, from its
// node: the waypoint's canonical service (its Gateway's name, the
// service.istio.io/canonical-name label of its pods), namespace, mesh
// (MeshConfig's defaultConfig.meshId, else the trust domain, as Istio's
// agent reports MESH_ID) and cluster.
func (b *builder) istioTags() []*tracingtype.CustomTag {
	meshID := b.mesh().GetDefaultConfig().GetMeshId()
	if meshID == "" {
		meshID = b.cfg.TrustDomain
	}
	return []*tracingtype.CustomTag{
		literalTag("istio.canonical_revision", "latest"),
		literalTag("istio.canonical_service", b.sc.ref.Name),
		literalTag("istio.cluster_id", b.cfg.ClusterID),
		literalTag("istio.mesh_id", meshID),
		literalTag("istio.namespace", b.sc.ref.Namespace),
	}
}

func literalTag(tag, v string) *tracingtype.CustomTag {
	return &tracingtype.CustomTag{Tag: tag, Type: &tracingtype.CustomTag_Literal_{Literal: &tracingtype.CustomTag_Literal{Value: v}}}
}

// dryRunPolicyTags are Istio's tags of the RBAC filter's shadow (dry-run)
// results, read from the request's dynamic metadata; absent when no
// dry-run policy ran.
func dryRunPolicyTags() []*tracingtype.CustomTag {
	tag := func(name, key string) *tracingtype.CustomTag {
		return &tracingtype.CustomTag{Tag: name, Type: &tracingtype.CustomTag_Metadata_{Metadata: &tracingtype.CustomTag_Metadata{
			Kind: &metadatatype.MetadataKind{Kind: &metadatatype.MetadataKind_Request_{Request: &metadatatype.MetadataKind_Request{}}},
			MetadataKey: &metadatatype.MetadataKey{Key: filterRBAC, Path: []*metadatatype.MetadataKey_PathSegment{
				{Segment: &metadatatype.MetadataKey_PathSegment_Key{Key: key}}}},
		}}}
	}
	return []*tracingtype.CustomTag{
		tag("istio.authorization.dry_run.allow_policy.name", "istio_dry_run_allow_shadow_effective_policy_id"),
		tag("istio.authorization.dry_run.allow_policy.result", "istio_dry_run_allow_shadow_engine_result"),
		tag("istio.authorization.dry_run.deny_policy.name", "istio_dry_run_deny_shadow_effective_policy_id"),
		tag("istio.authorization.dry_run.deny_policy.result", "istio_dry_run_deny_shadow_engine_result"),
	}
}

// peerFields are the fields of Istio's peer metadata object a
// waypoint's spans are tagged with (tag suffix, field).
var peerFields = [][2]string{
	{"workload", "workload"}, {"namespace", "namespace"}, {"cluster_id", "cluster"},
	{"canonical_service", "service"}, {"canonical_revision", "revision"}, {"app", "app"},
	{"app_version", "version"}, {"workload_type", "type"}, {"instance_name", "name"},
}

// waypointPeerTags are the tags Istio gives a waypoint's spans about its
// client and its destination: formatter values of the peer metadata
// filter's downstream_peer_obj and upstream_peer_obj filter state.
func waypointPeerTags() []*tracingtype.CustomTag {
	var out []*tracingtype.CustomTag
	for _, side := range [][2]string{{"destination", "upstream"}, {"source", "downstream"}} {
		for _, f := range peerFields {
			out = append(out, &tracingtype.CustomTag{Tag: "istio." + side[0] + "_" + f[0],
				Type: &tracingtype.CustomTag_Value{Value: "%FILTER_STATE(" + side[1] + "_peer_obj:FIELD:" + f[1] + ")%"}})
		}
	}
	return out
}

// proxyConfigTags are defaultConfig.tracing.customTags in the Telemetry
// API's form (the same three kinds), so that one converter serves both.
func proxyConfigTags(m map[string]*meshv1alpha1.Tracing_CustomTag) map[string]*tpb.Tracing_CustomTag {
	out := make(map[string]*tpb.Tracing_CustomTag, len(m))
	for name, t := range m {
		var ct *tpb.Tracing_CustomTag
		switch {
		case t.GetLiteral() != nil:
			ct = &tpb.Tracing_CustomTag{Type: &tpb.Tracing_CustomTag_Literal{Literal: &tpb.Tracing_Literal{Value: t.GetLiteral().GetValue()}}}
		case t.GetEnvironment() != nil:
			ct = &tpb.Tracing_CustomTag{Type: &tpb.Tracing_CustomTag_Environment{Environment: &tpb.Tracing_Environment{
				Name: t.GetEnvironment().GetName(), DefaultValue: t.GetEnvironment().GetDefaultValue()}}}
		case t.GetHeader() != nil:
			ct = &tpb.Tracing_CustomTag{Type: &tpb.Tracing_CustomTag_Header{Header: &tpb.Tracing_RequestHeader{
				Name: t.GetHeader().GetName(), DefaultValue: t.GetHeader().GetDefaultValue()}}}
		default:
			continue
		}
		out[name] = ct
	}
	return out
}

// customTags are Envoy's custom tags of a Telemetry's (or, normalised by
// proxyConfigTags, MeshConfig's) customTags.
func customTags(m map[string]*tpb.Tracing_CustomTag) []*tracingtype.CustomTag {
	var out []*tracingtype.CustomTag
	for name, t := range m {
		ct := &tracingtype.CustomTag{Tag: name}
		switch {
		case t.GetLiteral() != nil:
			ct.Type = &tracingtype.CustomTag_Literal_{Literal: &tracingtype.CustomTag_Literal{Value: t.GetLiteral().GetValue()}}
		case t.GetEnvironment() != nil:
			ct.Type = &tracingtype.CustomTag_Environment_{Environment: &tracingtype.CustomTag_Environment{
				Name: t.GetEnvironment().GetName(), DefaultValue: t.GetEnvironment().GetDefaultValue()}}
		case t.GetHeader() != nil:
			ct.Type = &tracingtype.CustomTag_RequestHeader{RequestHeader: &tracingtype.CustomTag_Header{
				Name: t.GetHeader().GetName(), DefaultValue: t.GetHeader().GetDefaultValue()}}
		case t.GetFormatter() != nil:
			ct.Type = &tracingtype.CustomTag_Value{Value: t.GetFormatter().GetValue()}
		default:
			continue
		}
		out = append(out, ct)
	}
	return out
}

// tracingProvider is the HCM tracing of a provider, its collector
// cluster added to the waypoint's.
func (b *builder) tracingProvider(p *meshv1alpha1.MeshConfig_ExtensionProvider) (*hcm.HttpConnectionManager_Tracing, error) {
	out := &hcm.HttpConnectionManager_Tracing{}
	switch pr := p.GetProvider().(type) {
	case *meshv1alpha1.MeshConfig_ExtensionProvider_Zipkin:
		host, cl, err := b.collector(pr.Zipkin.GetService(), pr.Zipkin.GetPort(), false)
		if err != nil {
			return nil, fmt.Errorf("tracing provider %s: %w", p.GetName(), err)
		}
		out.Provider = &trace.Tracing_Http{Name: tracerZipkin, ConfigType: &trace.Tracing_Http_TypedConfig{TypedConfig: mustAny(zipkinConfig(pr.Zipkin, host, cl))}}
		if l := pr.Zipkin.GetMaxTagLength(); l != 0 {
			out.MaxPathTagLength = wrapperspb.UInt32(l)
		}
	case *meshv1alpha1.MeshConfig_ExtensionProvider_Opentelemetry:
		o := pr.Opentelemetry
		host, cl, err := b.collector(o.GetService(), o.GetPort(), o.GetHttp() == nil)
		if err != nil {
			return nil, fmt.Errorf("tracing provider %s: %w", p.GetName(), err)
		}
		oc := &trace.OpenTelemetryConfig{ServiceName: b.sc.ref.Name + "." + b.sc.ref.Namespace}
		if hs := o.GetHttp(); hs != nil {
			oc.HttpService = &core.HttpService{
				HttpUri: &core.HttpUri{Uri: strings.TrimSuffix(host, "/") + "/" + strings.TrimPrefix(hs.GetPath(), "/"),
					HttpUpstreamType: &core.HttpUri_Cluster{Cluster: cl}, Timeout: hs.GetTimeout()},
				RequestHeadersToAdd: headersToAdd(hs.GetHeaders()),
			}
			if oc.HttpService.HttpUri.Timeout == nil {
				oc.HttpService.HttpUri.Timeout = durationpb.New(0)
			}
		} else {
			oc.GrpcService = &core.GrpcService{
				TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: cl, Authority: host}},
				Timeout:         o.GetGrpc().GetTimeout(),
				InitialMetadata: headerValues(o.GetGrpc().GetInitialMetadata()),
			}
		}
		out.Provider = &trace.Tracing_Http{Name: tracerOpenTelemetry, ConfigType: &trace.Tracing_Http_TypedConfig{TypedConfig: mustAny(oc)}}
		if l := o.GetMaxTagLength(); l != 0 {
			out.MaxPathTagLength = wrapperspb.UInt32(l)
		}
	case nil:
		return nil, fmt.Errorf("tracing provider %q not found in MeshConfig extensionProviders", p.GetName())
	default:
		return nil, fmt.Errorf("tracing provider %s: %T is not supported for tracing on waypoints (zipkin and opentelemetry are)", p.GetName(), pr)
	}
	return out, nil
}

// zipkinTimeout is Istio's timeout of a span report when the provider
// sets none (Envoy requires one in collector_service).
const zipkinTimeout = 5 * time.Second

// zipkinConfig is a zipkin provider's tracer config in the form Istio
// sends proxies of Istio 1.29 and later (Envoy 1.29+): the collector as
// collector_service (an HttpService: http://<host><path> on the
// collector's cluster, the provider's timeout, default 5 s, and
// headers) rather than collector_cluster/_endpoint/_hostname, which
// cannot carry either.
func zipkinConfig(z *meshv1alpha1.MeshConfig_ExtensionProvider_ZipkinTracingProvider, host, cl string) *trace.ZipkinConfig {
	path := z.GetPath()
	if path == "" {
		path = "/api/v2/spans"
	}
	timeout := z.GetTimeout()
	if timeout == nil {
		timeout = durationpb.New(zipkinTimeout)
	}
	tc := trace.ZipkinConfig_USE_B3
	if z.GetTraceContextOption() == meshv1alpha1.MeshConfig_ExtensionProvider_ZipkinTracingProvider_USE_B3_WITH_W3C_PROPAGATION {
		tc = trace.ZipkinConfig_USE_B3_WITH_W3C_PROPAGATION
	}
	return &trace.ZipkinConfig{
		CollectorService: &core.HttpService{
			HttpUri: &core.HttpUri{Uri: "http://" + host + path,
				HttpUpstreamType: &core.HttpUri_Cluster{Cluster: cl}, Timeout: timeout},
			RequestHeadersToAdd: headersToAdd(z.GetHeaders()),
		},
		CollectorEndpointVersion: trace.ZipkinConfig_HTTP_JSON,
		TraceId_128Bit:           !z.GetEnable_64BitTraceId(),
		SharedSpanContext:        wrapperspb.Bool(false),
		TraceContextOption:       tc,
	}
}

func headersToAdd(hs []*meshv1alpha1.MeshConfig_ExtensionProvider_HttpHeader) []*core.HeaderValueOption {
	var out []*core.HeaderValueOption
	for _, h := range headerValues(hs) {
		out = append(out, &core.HeaderValueOption{Header: h, AppendAction: core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD})
	}
	return out
}

func headerValues(hs []*meshv1alpha1.MeshConfig_ExtensionProvider_HttpHeader) []*core.HeaderValue {
	var out []*core.HeaderValue
	for _, h := range hs {
		v := h.GetValue()
		if e := h.GetEnvName(); e != "" {
			v = "%ENVIRONMENT(" + e + ")%"
		}
		out = append(out, &core.HeaderValue{Key: h.GetName(), Value: v})
	}
	return out
}

// accessLogs are a chain's access logs.
func (b *builder) accessLogs(tc telemetry.Config) []*accesslog.AccessLog {
	mesh := b.mesh()
	if !tc.AccessLogsSet {
		if mesh.GetAccessLogFile() == "" {
			return nil
		}
		return []*accesslog.AccessLog{fileAccessLogFromMesh(mesh.GetAccessLogFile(), mesh)}
	}
	var out []*accesslog.AccessLog
	for _, al := range tc.AccessLogs {
		var l *accesslog.AccessLog
		switch pr := al.Provider.GetProvider().(type) {
		case *meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyFileAccessLog:
			f := pr.EnvoyFileAccessLog
			if al.Provider.GetName() == "envoy" && f.GetLogFormat() == nil && !f.GetOmitEmptyValues() {
				l = fileAccessLogFromMesh(f.GetPath(), mesh)
			} else {
				l = fileAccessLog(f)
			}
		case *meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyOtelAls:
			var err error
			if l, err = b.otelAccessLog(pr.EnvoyOtelAls); err != nil {
				b.telNotes = append(b.telNotes, fmt.Sprintf("access log provider %s: %v", al.Provider.GetName(), err))
				continue
			}
		default:
			b.notes["Telemetry"] = append(b.notes["Telemetry"],
				fmt.Sprintf("access log provider %s: %T is not supported on waypoints (envoyFileAccessLog and envoyOtelAls are)", al.Provider.GetName(), pr))
			continue
		}
		if al.Filter != "" {
			l.Filter = &accesslog.AccessLogFilter{FilterSpecifier: &accesslog.AccessLogFilter_ExtensionFilter{ExtensionFilter: &accesslog.ExtensionFilter{
				Name: accessLogCELFilter, ConfigType: &accesslog.ExtensionFilter_TypedConfig{TypedConfig: mustAny(&celfilter.ExpressionFilter{Expression: al.Filter})}}}}
		}
		out = append(out, l)
	}
	return out
}

func fileAccessLogFromMesh(path string, mesh *meshv1alpha1.MeshConfig) *accesslog.AccessLog {
	fl := &fileal.FileAccessLog{Path: path}
	if mesh.GetAccessLogEncoding() == meshv1alpha1.MeshConfig_JSON {
		labels := envoyJSONLogFormat()
		if f := mesh.GetAccessLogFormat(); f != "" {
			var s structpb.Struct
			if err := s.UnmarshalJSON([]byte(f)); err == nil {
				labels = &s
			}
		}
		fl.AccessLogFormat = jsonFormat(labels, false)
	} else {
		fl.AccessLogFormat = textFormat(mesh.GetAccessLogFormat(), false)
	}
	return &accesslog.AccessLog{Name: accessLogFile, ConfigType: &accesslog.AccessLog_TypedConfig{TypedConfig: mustAny(fl)}}
}

func fileAccessLog(f *meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyFileAccessLogProvider) *accesslog.AccessLog {
	path := f.GetPath()
	if path == "" {
		path = devStdout
	}
	fl := &fileal.FileAccessLog{Path: path}
	switch lf := f.GetLogFormat().GetLogFormat().(type) {
	case *meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyFileAccessLogProvider_LogFormat_Labels:
		labels := lf.Labels
		if len(labels.GetFields()) == 0 {
			labels = envoyJSONLogFormat()
		}
		fl.AccessLogFormat = jsonFormat(labels, f.GetOmitEmptyValues())
	case *meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyFileAccessLogProvider_LogFormat_Text:
		fl.AccessLogFormat = textFormat(lf.Text, f.GetOmitEmptyValues())
	default:
		fl.AccessLogFormat = textFormat("", f.GetOmitEmptyValues())
	}
	return &accesslog.AccessLog{Name: accessLogFile, ConfigType: &accesslog.AccessLog_TypedConfig{TypedConfig: mustAny(fl)}}
}

// textFormat is a text log format; Istio ends every format with a newline.
func textFormat(f string, omitEmpty bool) *fileal.FileAccessLog_LogFormat {
	if f == "" {
		f = EnvoyTextLogFormat
	} else if !strings.HasSuffix(f, "\n") {
		f += "\n"
	}
	return &fileal.FileAccessLog_LogFormat{LogFormat: &core.SubstitutionFormatString{
		Format: &core.SubstitutionFormatString_TextFormatSource{TextFormatSource: &core.DataSource{
			Specifier: &core.DataSource_InlineString{InlineString: f}}},
		OmitEmptyValues: omitEmpty,
		Formatters:      formatters(strings.Contains(f, reqWithoutQuery)),
	}}
}

// reqWithoutQuery is the operator that needs Envoy's req_without_query
// formatter extension named in the format (Envoy refuses the format
// without it; Istio adds it).
const reqWithoutQuery = "%REQ_WITHOUT_QUERY"

func formatters(reqWithoutQueryUsed bool) []*core.TypedExtensionConfig {
	if !reqWithoutQueryUsed {
		return nil
	}
	return []*core.TypedExtensionConfig{{Name: "envoy.formatter.req_without_query", TypedConfig: mustAny(&reqwoq.ReqWithoutQuery{})}}
}

func jsonFormat(labels *structpb.Struct, omitEmpty bool) *fileal.FileAccessLog_LogFormat {
	used := false
	for _, v := range labels.GetFields() {
		used = used || strings.Contains(v.GetStringValue(), reqWithoutQuery)
	}
	return &fileal.FileAccessLog_LogFormat{LogFormat: &core.SubstitutionFormatString{
		Format:            &core.SubstitutionFormatString_JsonFormat{JsonFormat: labels},
		JsonFormatOptions: &core.JsonFormatOptions{}, // Istio's (sort_properties false, the default)
		OmitEmptyValues:   omitEmpty,
		Formatters:        formatters(used),
	}}
}

func (b *builder) otelAccessLog(p *meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyOpenTelemetryLogProvider) (*accesslog.AccessLog, error) {
	host, cl, err := b.collector(p.GetService(), p.GetPort(), true)
	if err != nil {
		return nil, err
	}
	name := p.GetLogName()
	if name == "" {
		name = otelLogName
	}
	body := EnvoyTextLogFormat
	if t := p.GetLogFormat().GetText(); t != "" {
		body = t
	}
	cfg := &otelal.OpenTelemetryAccessLogConfig{
		//lint:ignore SA1019 Istio's form, which Envoy still honours
		CommonConfig: &grpcal.CommonGrpcAccessLogConfig{
			LogName: name,
			GrpcService: &core.GrpcService{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{
				EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: cl, Authority: host}}},
			TransportApiVersion: core.ApiVersion_V3,
		},
		DisableBuiltinLabels: true,
		Body:                 &otlpcommon.AnyValue{Value: &otlpcommon.AnyValue_StringValue{StringValue: body}},
	}
	if labels := p.GetLogFormat().GetLabels(); len(labels.GetFields()) > 0 {
		keys := make([]string, 0, len(labels.GetFields()))
		for k := range labels.GetFields() {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		cfg.Attributes = &otlpcommon.KeyValueList{}
		for _, k := range keys {
			cfg.Attributes.Values = append(cfg.Attributes.Values, &otlpcommon.KeyValue{Key: k,
				Value: &otlpcommon.AnyValue{Value: &otlpcommon.AnyValue_StringValue{StringValue: labels.GetFields()[k].GetStringValue()}}})
		}
	}
	return &accesslog.AccessLog{Name: accessLogOTel, ConfigType: &accesslog.AccessLog_TypedConfig{TypedConfig: mustAny(cfg)}}, nil
}

// collectorCluster is an outbound cluster to a telemetry collector.
type collectorCluster struct {
	name  string
	http2 bool
	eps   []netip.AddrPort
}

// collector resolves a provider's service ("host" or "namespace/host")
// and port to its hostname and Istio's outbound cluster name, which the
// waypoint then has.
func (b *builder) collector(service string, port uint32, http2 bool) (string, string, error) {
	if service == "" {
		return "", "", fmt.Errorf("no service")
	}
	ns, host, ok := strings.Cut(service, "/")
	if !ok {
		ns, host = "", service
	}
	var found *workload.Service
	var key string
	if b.in != nil {
		for k, a := range b.in.Addresses {
			s := a.GetService()
			if s == nil || s.GetHostname() != host || ns != "" && s.GetNamespace() != ns {
				continue
			}
			if found != nil && found.GetNamespace() != s.GetNamespace() {
				return "", "", fmt.Errorf("service %s is in several namespaces; name it as <namespace>/<hostname>", service)
			}
			found, key = s, k
		}
	}
	if found == nil {
		return "", "", fmt.Errorf("collector service %s not found", service)
	}
	name := "outbound|" + strconv.FormatUint(uint64(port), 10) + "||" + host
	if b.collectors == nil {
		b.collectors = map[string]*collectorCluster{}
	}
	if c := b.collectors[name]; c != nil {
		c.http2 = c.http2 || http2
		return host, name, nil
	}
	cc := &collectorCluster{name: name, http2: http2}
	for _, a := range b.in.Addresses {
		w := a.GetWorkload()
		if w == nil || w.GetStatus() != workload.WorkloadStatus_HEALTHY {
			continue
		}
		ps, ok := w.GetServices()[key]
		if !ok {
			continue
		}
		target := port
		for _, p := range ps.GetPorts() {
			if p.GetServicePort() == port && p.GetTargetPort() != 0 {
				target = p.GetTargetPort()
			}
		}
		if ip, ok := workloadIP(w); ok {
			cc.eps = append(cc.eps, netip.AddrPortFrom(ip, uint16(target)))
		}
	}
	sort.Slice(cc.eps, func(i, j int) bool { return cc.eps[i].Compare(cc.eps[j]) < 0 })
	b.collectors[name] = cc
	return host, name, nil
}

// collectorClusters are the clusters and endpoints of the collectors the
// chains named, sorted by name.
func (b *builder) collectorClusters() ([]*cluster.Cluster, []*endpoint.ClusterLoadAssignment) {
	names := make([]string, 0, len(b.collectors))
	for n := range b.collectors {
		names = append(names, n)
	}
	sort.Strings(names)
	var cls []*cluster.Cluster
	var cla []*endpoint.ClusterLoadAssignment
	for _, n := range names {
		cc := b.collectors[n]
		c := &cluster.Cluster{
			Name:                 n,
			ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
			EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: adsConfig(), ServiceName: n},
			ConnectTimeout:       durationpb.New(connectTimeout),
			LbPolicy:             cluster.Cluster_ROUND_ROBIN,
			CircuitBreakers:      defaultCircuitBreakers(),
		}
		if cc.http2 {
			c.TypedExtensionProtocolOptions = explicitHTTP2(false)
		}
		cls = append(cls, c)
		l := &endpoint.ClusterLoadAssignment{ClusterName: n}
		if len(cc.eps) > 0 {
			le := &endpoint.LocalityLbEndpoints{}
			for _, ep := range cc.eps {
				le.LbEndpoints = append(le.LbEndpoints, &endpoint.LbEndpoint{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
					Address: socketAddress(ep.Addr().String(), uint32(ep.Port()))}}})
			}
			l.Endpoints = []*endpoint.LocalityLbEndpoints{le}
		}
		cla = append(cla, l)
	}
	return cls, cla
}

func secondsDuration(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
