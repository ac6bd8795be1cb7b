package waypoint

// Telemetry of a waypoint's chains, from MeshConfig and the Telemetry
// API (istiod/telemetry merges them), in the Envoy config Istio's
// pilot/pkg/networking/core/tracing.go and pilot/pkg/model/telemetry*.go
// emit for a waypoint:
//
//   - the HCM's tracing: zipkin (envoy.tracers.zipkin, HTTP_JSON v2 to
//     the collector's outbound cluster) or opentelemetry
//     (envoy.tracers.opentelemetry, grpc_service envoy_grpc, or
//     http_service when the provider says http); sampling client 100,
//     overall 100, random the Telemetry's randomSamplingPercentage, else
//     defaultConfig.tracing.sampling, else 1%; custom tags. Without any
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
	cfg := &stats.PluginConfig{Reporter: stats.Reporter_SERVER_GATEWAY}
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

// tracing is an HCM's tracing (nil: none).
func (b *builder) tracing(t *telemetry.Tracing) *hcm.HttpConnectionManager_Tracing {
	mesh := b.mesh()
	pc := mesh.GetDefaultConfig()
	if t == nil {
		if !mesh.GetEnableTracing() {
			return nil
		}
		out := &hcm.HttpConnectionManager_Tracing{}
		sampling(out, proxyConfigSampling(pc))
		out.CustomTags = append(b.istioTags(), proxyConfigTags(pc.GetTracing().GetCustomTags())...)
		sortTags(out.CustomTags)
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
	tags := b.istioTags()
	if len(t.CustomTags) == 0 {
		tags = append(tags, proxyConfigTags(pc.GetTracing().GetCustomTags())...)
	} else {
		tags = append(tags, telemetryTags(t.CustomTags)...)
	}
	sortTags(tags)
	out.CustomTags = tags
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

// istioTags are the literal tags Istio gives a proxy's spans.
func (b *builder) istioTags() []*tracingtype.CustomTag {
	lit := func(tag, v string) *tracingtype.CustomTag {
		return &tracingtype.CustomTag{Tag: tag, Type: &tracingtype.CustomTag_Literal_{Literal: &tracingtype.CustomTag_Literal{Value: v}}}
	}
	return []*tracingtype.CustomTag{
		lit("istio.canonical_revision", "latest"),
		lit("istio.canonical_service", b.sc.ref.Name),
		lit("istio.cluster_id", b.cfg.ClusterID),
		lit("istio.mesh_id", b.cfg.TrustDomain),
		lit("istio.namespace", b.sc.ref.Namespace),
	}
}

func sortTags(tags []*tracingtype.CustomTag) {
	sort.SliceStable(tags, func(i, j int) bool { return tags[i].Tag < tags[j].Tag })
}

func proxyConfigTags(m map[string]*meshv1alpha1.Tracing_CustomTag) []*tracingtype.CustomTag {
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
		default:
			continue
		}
		out = append(out, ct)
	}
	return out
}

func telemetryTags(m map[string]*tpb.Tracing_CustomTag) []*tracingtype.CustomTag {
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
		path := pr.Zipkin.GetPath()
		if path == "" {
			path = "/api/v2/spans"
		}
		// The collector_cluster form (Istio's for proxies before 1.29).
		zc := &trace.ZipkinConfig{
			CollectorCluster:         cl,
			CollectorEndpoint:        path,
			CollectorHostname:        host,
			CollectorEndpointVersion: trace.ZipkinConfig_HTTP_JSON,
			TraceId_128Bit:           !pr.Zipkin.GetEnable_64BitTraceId(),
			SharedSpanContext:        wrapperspb.Bool(false),
		}
		out.Provider = &trace.Tracing_Http{Name: tracerZipkin, ConfigType: &trace.Tracing_Http_TypedConfig{TypedConfig: mustAny(zc)}}
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
	}}
}

func jsonFormat(labels *structpb.Struct, omitEmpty bool) *fileal.FileAccessLog_LogFormat {
	return &fileal.FileAccessLog_LogFormat{LogFormat: &core.SubstitutionFormatString{
		Format:          &core.SubstitutionFormatString_JsonFormat{JsonFormat: labels},
		OmitEmptyValues: omitEmpty,
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
