//lint:file-ignore SA1019 Istio writes common_config (deprecated in Envoy, still honoured)
package config

import (
	"os"
	"strings"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	otelalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/open_telemetry/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// istioTextFormat is Istio's default text access-log format
// (EnvoyTextLogFormat in istio/istio pilot/pkg/model/telemetry_logging.go).
const istioTextFormat = `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" ` +
	`%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% ` +
	`"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% ` +
	`%DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" ` +
	`"%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% ` +
	`%DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%` + "\n"

func str(s string) *commonpb.AnyValue {
	return &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: s}}
}

// TestBuildAccessLogs: an HCM's OpenTelemetry access loggers as istiod
// writes them for an envoyOtelAls provider (Istio's
// buildOpenTelemetryAccessLogConfig); other loggers are not this
// reader's; a malformed one refuses the listener.
func TestBuildAccessLogs(t *testing.T) {
	envoyGrpc := &core.GrpcService{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{
		ClusterName: "outbound|4317||otel.observability.svc.cluster.local", Authority: "otel.observability.svc.cluster.local"}}}
	istio := &otelalsv3.OpenTelemetryAccessLogConfig{
		CommonConfig: &grpcalsv3.CommonGrpcAccessLogConfig{LogName: "otel_envoy_accesslog", GrpcService: envoyGrpc,
			TransportApiVersion: core.ApiVersion_V3, FilterStateObjectsToLog: []string{"wasm.upstream_peer"}},
		DisableBuiltinLabels: true,
		Body:                 str(istioTextFormat),
		Attributes: &commonpb.KeyValueList{Values: []*commonpb.KeyValue{
			{Key: "peer", Value: str("%DOWNSTREAM_PEER_URI_SAN%")},
			{Key: "codes", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{Values: []*commonpb.AnyValue{
				str("%RESPONSE_CODE%"), {Value: &commonpb.AnyValue_IntValue{IntValue: 7}}}}}}},
		}},
		ResourceAttributes: &commonpb.KeyValueList{Values: []*commonpb.KeyValue{{Key: "k8s.cluster.name", Value: str("c1")}}},
	}
	httpALS := &otelalsv3.OpenTelemetryAccessLogConfig{LogName: "http", BufferFlushInterval: durationpb.New(200 * time.Millisecond),
		Attributes: &commonpb.KeyValueList{Values: []*commonpb.KeyValue{{Key: "x", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_KvlistValue{
			KvlistValue: &commonpb.KeyValueList{Values: []*commonpb.KeyValue{{Key: "cel", Value: str("%CEL(request.path)% %METADATA(ROUTE:a)% %CEL(x)%")}}}}}}}},
		HttpService: &core.HttpService{HttpUri: &core.HttpUri{Uri: "http://otel:4318/v1/logs", HttpUpstreamType: &core.HttpUri_Cluster{Cluster: "otel-http"},
			Timeout: durationpb.New(time.Second)}}}
	logger := func(name string, c *otelalsv3.OpenTelemetryAccessLogConfig, filter *accesslogv3.AccessLogFilter) *accesslogv3.AccessLog {
		a, err := anypb.New(c)
		if err != nil {
			t.Fatal(err)
		}
		return &accesslogv3.AccessLog{Name: name, Filter: filter, ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: a}}
	}
	file, _ := anypb.New(&grpcalsv3.HttpGrpcAccessLogConfig{CommonConfig: &grpcalsv3.CommonGrpcAccessLogConfig{LogName: "x", GrpcService: envoyGrpc}})

	got, warns, err := buildAccessLogs([]*accesslogv3.AccessLog{
		logger("envoy.access_loggers.open_telemetry", istio, nil),
		{Name: "envoy.access_loggers.http_grpc", ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: file}},
		logger("envoy.access_loggers.open_telemetry", httpALS, nil),
		logger("filtered", httpALS, &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_NotHealthCheckFilter{}}),
	})
	if err != nil {
		t.Fatalf("buildAccessLogs: %v", err)
	}
	if len(got) != 2 {
		t.Fatalf("loggers: got %d, want 2 (the OpenTelemetry ones without filters)", len(got))
	}
	if w := strings.Join(warns, "; "); !strings.Contains(w, "access log filtered: filters not supported") ||
		!strings.Contains(w, "access log http: operators CEL, METADATA not recorded by the waypoint; logged as -") {
		t.Errorf("warnings: got %q, want the filtered logger's and the unrecorded operators'", w)
	}
	a := got[0]
	if a.Name != "otel_envoy_accesslog" || a.BuiltinLabels || a.Body.Format.String() != istioTextFormat {
		t.Errorf("istio logger: got name %q builtin labels %v body %q", a.Name, a.BuiltinLabels, a.Body.Format)
	}
	wantExp := OTLPExporter{Cluster: "outbound|4317||otel.observability.svc.cluster.local", GRPC: true, Authority: "otel.observability.svc.cluster.local"}
	if diff := cmp.Diff(wantExp, a.Exporter); diff != "" {
		t.Errorf("istio exporter (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]Attribute{{"k8s.cluster.name", "c1"}}, a.Resource); diff != "" {
		t.Errorf("resource (-want +got):\n%s", diff)
	}
	if len(a.Attributes) != 2 || a.Attributes[0].Value.Format.Parts[0].Op != "DOWNSTREAM_PEER_URI_SAN" ||
		len(a.Attributes[1].Value.Array) != 2 || a.Attributes[1].Value.Array[1].Const.GetIntValue() != 7 {
		t.Errorf("attributes: got %+v, want peer and [code, 7]", a.Attributes)
	}
	h := got[1]
	wantHTTP := OTLPExporter{Cluster: "otel-http", Authority: "otel:4318", Path: "/v1/logs", Timeout: time.Second}
	if diff := cmp.Diff(wantHTTP, h.Exporter); diff != "" || h.FlushInterval != 200*time.Millisecond || !h.BuiltinLabels || h.Body != nil || len(h.Attributes) != 1 {
		t.Errorf("http logger: got flush %v builtin %v body %v, exporter (-want +got):\n%s", h.FlushInterval, h.BuiltinLabels, h.Body, diff)
	}

	for _, tc := range []struct {
		name    string
		c       *otelalsv3.OpenTelemetryAccessLogConfig
		wantErr string
	}{
		{name: "no exporter", c: &otelalsv3.OpenTelemetryAccessLogConfig{LogName: "x"},
			wantErr: "access log bad: want exactly one of common_config.grpc_service, grpc_service and http_service, got 0"},
		{name: "two exporters", c: &otelalsv3.OpenTelemetryAccessLogConfig{GrpcService: envoyGrpc, HttpService: httpALS.HttpService},
			wantErr: "got 2"},
		{name: "unknown operator", c: &otelalsv3.OpenTelemetryAccessLogConfig{GrpcService: envoyGrpc, Body: str("%NOT_AN_OPERATOR%")},
			wantErr: `body: format "%NOT_AN_OPERATOR%": operator NOT_AN_OPERATOR: not a known command operator`},
		{name: "bad attribute", c: &otelalsv3.OpenTelemetryAccessLogConfig{GrpcService: envoyGrpc,
			Attributes: &commonpb.KeyValueList{Values: []*commonpb.KeyValue{{Key: "a", Value: str("%REQ(x")}}}},
			wantErr: `attributes: a: format "%REQ(x": unterminated operator`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := buildAccessLogs([]*accesslogv3.AccessLog{logger("bad", tc.c, nil)})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error: got %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

// TestParseLogFormat: Envoy's command operators as the access log
// writes them: arguments, alternatives, lengths, START_TIME's strftime,
// %% and refusals.
func TestParseLogFormat(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []LogPart
		wantErr string
	}{
		{in: "plain", want: []LogPart{{Literal: "plain"}}},
		{in: "%REQ(X-Envoy-Original-Path?:PATH):10% 100%%", want: []LogPart{{Op: "REQ", Code: OpReq, Arg: "x-envoy-original-path", Alt: ":path", Key: "X-Envoy-Original-Path", AltKey: ":path", Max: 10}, {Literal: " 100%"}}},
		{in: "[%START_TIME(%Y-%m-%dT%H:%M:%E3S)%] %PROTOCOL%", want: []LogPart{{Literal: "["}, {Op: "START_TIME", Code: OpStartTime, Arg: "%Y-%m-%dT%H:%M:%E3S"}, {Literal: "] "}, {Op: "PROTOCOL", Code: OpProtocol}}},
		{in: "%FILTER_STATE(io.istio.peer_principal:PLAIN)%", want: []LogPart{{Op: "FILTER_STATE", Code: OpFilterState, Arg: "io.istio.peer_principal"}}},
		{in: istioTextFormat},
		{in: "%DYNAMIC_METADATA(istio:x):5%", want: []LogPart{{Op: "DYNAMIC_METADATA", Code: OpDynamicMetadata, Arg: "istio", Alt: "x", Max: 5}}},
		{in: "%REQ_WITHOUT_QUERY(:PATH)%", want: []LogPart{{Op: "REQ_WITHOUT_QUERY", Code: OpReqWithoutQuery, Arg: ":path", Key: ":path"}}},
		{in: "%BOGUS%", wantErr: "operator BOGUS: not a known command operator"},
		{in: "%PROTOCOL(x)%", wantErr: "operator PROTOCOL: takes no argument"},
		{in: "%REQ()%", wantErr: "operator REQ: wants an argument"},
		{in: "%REQ(a):x%", wantErr: `length "x" is not a positive number`},
		{in: "%START_TIME(%Q)%", wantErr: `strftime conversion "%Q" not supported`},
		{in: "%FILTER_STATE(k:FIELD)%", wantErr: "want FILTER_STATE(key[:PLAIN|:TYPED|:FIELD:name])"},
		{in: "%FILTER_STATE(k:FIELD:)%", wantErr: "want FILTER_STATE(key:FIELD:name) with one field name"},
		{in: "%FILTER_STATE(k:FIELD:a:b)%", wantErr: "want FILTER_STATE(key:FIELD:name) with one field name"},
		{in: "%FILTER_STATE(k:PLAIN:x)%", wantErr: "want FILTER_STATE(key[:PLAIN|:TYPED|:FIELD:name])"},
		{in: "%FILTER_STATE(upstream_peer_obj:FIELD:app)%", want: []LogPart{{Op: "FILTER_STATE", Code: OpFilterState, Arg: "upstream_peer_obj", Alt: "app"}}},
		{in: "%DYNAMIC_METADATA(ns)%", wantErr: "want DYNAMIC_METADATA(namespace:key"},
		{in: "%GRPC_STATUS(LOUD)%", wantErr: "want CAMEL_STRING, SNAKE_STRING or NUMBER"},
		{in: "%PATH(XQ)%", wantErr: "want PATH(WQ|NQ"},
		{in: "%REQ(a", wantErr: "unterminated operator"},
		{in: "100%", wantErr: "unterminated operator"},
		{in: "%UPSTREAM_HOST:0%", wantErr: `length "0" is not a positive number`},
		{in: "%UPSTREAM_HOST:12%", want: []LogPart{{Op: "UPSTREAM_HOST", Code: OpUpstreamHost, Max: 12}}},
		{in: "%START_TIME(%s.%3f)%", want: []LogPart{{Op: "START_TIME", Code: OpStartTime, Arg: "%s.%3f"}}},
	} {
		t.Run(tc.in, func(t *testing.T) {
			f, err := ParseLogFormat(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error: got %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if tc.want != nil {
				if diff := cmp.Diff(tc.want, f.Parts, cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("parts (-want +got):\n%s", diff)
				}
			}
		})
	}
}

// TestStrftime: START_TIME's default and a custom format.
func TestStrftime(t *testing.T) {
	at := time.Date(2026, 12, 3, 9, 5, 7, 123456789, time.UTC)
	for f, want := range map[string]string{
		"":                       "2026-12-03T09:05:07.123Z",
		"%Y-%m-%dT%H:%M:%E6S%z":  "2026-12-03T09:05:07.123456+0000",
		"%s %j %e %I%p %b %a %%": "1796288707 337  3 09AM Dec Thu %",
		"%s.%3f|%f|%1f|%6f":      "1796288707.123|123456789|1|123456",
		"%E9S %T %y%B%A %Z %H":   "07.123456789 09:05:07 26DecemberThursday UTC 09",
	} {
		if got := Strftime(at, f); got != want {
			t.Errorf("Strftime(%q): got %q, want %q", f, got, want)
		}
	}
}

// TestLogOperatorsDocumented: docs/telemetry.md lists every operator the
// waypoint renders.
func TestLogOperatorsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/telemetry.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range LogOperatorNames() {
		if !strings.Contains(string(doc), "`"+name+"`") && !strings.Contains(string(doc), "`"+name+"(") {
			t.Errorf("docs/telemetry.md: operator %s not listed", name)
		}
	}
}
