//lint:file-ignore SA1019 Istio writes common_config (deprecated in Envoy, still honoured)
package config

import (
	"fmt"
	"slices"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	otelalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/open_telemetry/v3"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
)

// OTelAccessLog is envoy.access_loggers.open_telemetry (what istiod
// configures for MeshConfig's envoyOtelAls providers): one OTLP
// LogRecord per request, body and attributes from Envoy format
// strings, sent in batches to a collector over gRPC or HTTP.
type OTelAccessLog struct {
	// Name is the log_name (a built-in resource label).
	Name string
	// BuiltinLabels: the resource carries log_name, zone_name,
	// cluster_name and node_name before Resource (disable_builtin_labels
	// unset).
	BuiltinLabels bool
	Resource      []Attribute
	// Body is nil when the config sets none.
	Body       *LogValue
	Attributes []LogKeyValue
	Exporter   OTLPExporter
	// FlushInterval is buffer_flush_interval: how long a record waits
	// for its batch (0: the waypoint's default, Envoy's 1 s).
	FlushInterval time.Duration
}

// LogValue is an OTLP AnyValue whose strings are format strings: one of
// Format, KV, Array, or Const (a non-string value sent as it is).
type LogValue struct {
	Format *LogFormat
	KV     []LogKeyValue
	Array  []*LogValue
	Const  *commonpb.AnyValue
}

// LogKeyValue is a key and a formatted value.
type LogKeyValue struct {
	Key   string
	Value *LogValue
}

// buildAccessLogs reads an HTTP connection manager's access_log: the
// OpenTelemetry loggers. Other loggers are left to the waypoint's own
// JSON access log (Run's AccessLog), not read here; a logger
// with a filter the waypoint cannot evaluate logs nothing, with a
// warning; a malformed OpenTelemetry logger refuses the listener.
func buildAccessLogs(logs []*accesslogv3.AccessLog) ([]*OTelAccessLog, []string, error) {
	var out []*OTelAccessLog
	var warns []string
	for _, l := range logs {
		t := innerType(l.GetTypedConfig())
		if t != "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig" {
			continue
		}
		if l.GetFilter() != nil {
			warns = append(warns, fmt.Sprintf("access log %s: filters not supported; it logs nothing", l.GetName()))
			continue
		}
		var c otelalsv3.OpenTelemetryAccessLogConfig
		if err := anyTo(l.GetTypedConfig(), &c); err != nil {
			return nil, nil, fmt.Errorf("access log %s: %w", l.GetName(), err)
		}
		a, w, err := buildOTelAccessLog(&c)
		if err != nil {
			return nil, nil, fmt.Errorf("access log %s: %w", l.GetName(), err)
		}
		warns = append(warns, w...)
		if a != nil {
			out = append(out, a)
		}
	}
	return out, warns, nil
}

func buildOTelAccessLog(c *otelalsv3.OpenTelemetryAccessLogConfig) (*OTelAccessLog, []string, error) {
	if err := c.Validate(); err != nil {
		return nil, nil, err
	}
	cc := c.GetCommonConfig()
	n := 0
	for _, set := range []bool{cc.GetGrpcService() != nil, c.GetGrpcService() != nil, c.GetHttpService() != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, nil, fmt.Errorf("want exactly one of common_config.grpc_service, grpc_service and http_service, got %d", n)
	}
	out := &OTelAccessLog{Name: cmpOr(c.GetLogName(), cc.GetLogName()), BuiltinLabels: !c.GetDisableBuiltinLabels(),
		FlushInterval: dur(firstSet(c.GetBufferFlushInterval(), cc.GetBufferFlushInterval()))}
	var warns []string
	switch g := firstSet(c.GetGrpcService(), cc.GetGrpcService()); {
	case g != nil:
		e, err := grpcExporter(g)
		if err != nil {
			return nil, nil, err
		}
		if e == nil {
			return nil, []string{fmt.Sprintf("access log %s: grpc_service without envoy_grpc (google_grpc) not supported; nothing is sent", out.Name)}, nil
		}
		out.Exporter = *e
	default:
		e, err := httpExporter(c.GetHttpService())
		if err != nil {
			return nil, nil, err
		}
		out.Exporter = *e
	}
	if len(c.GetResourceDetectors()) > 0 {
		warns = append(warns, fmt.Sprintf("access log %s: resource_detectors not supported; skipped", out.Name))
	}
	// formatters name the extensions (req_without_query, metadata, CEL)
	// whose operators the formats use: the operators are read below.
	for _, kv := range c.GetResourceAttributes().GetValues() {
		out.Resource = append(out.Resource, Attribute{Key: kv.GetKey(), Value: kv.GetValue().GetStringValue()})
	}
	if c.GetBody() != nil {
		v, err := logValue(c.GetBody())
		if err != nil {
			return nil, nil, fmt.Errorf("body: %w", err)
		}
		out.Body = v
	}
	kvs, err := logKeyValues(c.GetAttributes().GetValues())
	if err != nil {
		return nil, nil, fmt.Errorf("attributes: %w", err)
	}
	out.Attributes = kvs
	var unrecorded []string
	walkFormats(&LogValue{KV: append([]LogKeyValue{{Value: out.Body}}, kvs...)}, func(f *LogFormat) {
		for _, op := range f.Unrecorded() {
			if !slices.Contains(unrecorded, op) {
				unrecorded = append(unrecorded, op)
			}
		}
	})
	if len(unrecorded) > 0 {
		for _, w := range unrecordedWarning(unrecorded) {
			warns = append(warns, fmt.Sprintf("access log %s: %s", out.Name, w))
		}
	}
	return out, warns, nil
}

// walkFormats calls fn on each format string in v.
func walkFormats(v *LogValue, fn func(*LogFormat)) {
	if v == nil {
		return
	}
	if v.Format != nil {
		fn(v.Format)
	}
	for _, kv := range v.KV {
		walkFormats(kv.Value, fn)
	}
	for _, e := range v.Array {
		walkFormats(e, fn)
	}
}

func logKeyValues(kvs []*commonpb.KeyValue) ([]LogKeyValue, error) {
	var out []LogKeyValue
	for _, kv := range kvs {
		v, err := logValue(kv.GetValue())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", kv.GetKey(), err)
		}
		out = append(out, LogKeyValue{Key: kv.GetKey(), Value: v})
	}
	return out, nil
}

func logValue(v *commonpb.AnyValue) (*LogValue, error) {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		f, err := ParseLogFormat(x.StringValue)
		if err != nil {
			return nil, err
		}
		return &LogValue{Format: f}, nil
	case *commonpb.AnyValue_KvlistValue:
		kvs, err := logKeyValues(x.KvlistValue.GetValues())
		if err != nil {
			return nil, err
		}
		return &LogValue{KV: kvs}, nil
	case *commonpb.AnyValue_ArrayValue:
		out := &LogValue{Array: []*LogValue{}}
		for _, e := range x.ArrayValue.GetValues() {
			lv, err := logValue(e)
			if err != nil {
				return nil, err
			}
			out.Array = append(out.Array, lv)
		}
		return out, nil
	}
	return &LogValue{Const: v}, nil
}

// firstSet is a unless it is nil, else b.
func firstSet[T any](a, b *T) *T {
	if a != nil {
		return a
	}
	return b
}
