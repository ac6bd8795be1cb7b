package config

import (
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	metadatav3 "github.com/envoyproxy/go-control-plane/envoy/type/metadata/v3"
	tracingtype "github.com/envoyproxy/go-control-plane/envoy/type/tracing/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestBuildTracing: an HCM's tracing as Envoy reads it, Envoy's defaults
// where unset, and what the waypoint cannot record is a warning, never a
// refused listener.
func TestBuildTracing(t *testing.T) {
	zipkin, _ := anypb.New(&tracev3.ZipkinConfig{CollectorCluster: "zipkin", CollectorEndpointVersion: tracev3.ZipkinConfig_HTTP_JSON, TraceId_128Bit: true})
	otel, _ := anypb.New(&tracev3.OpenTelemetryConfig{ServiceName: "waypoint",
		GrpcService: &core.GrpcService{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: "otel"}}}})
	datadog, _ := anypb.New(&tracev3.DatadogConfig{CollectorCluster: "dd", ServiceName: "waypoint"})
	// The form Istio's istiod (and Ambit's) sends proxies of Istio 1.29+.
	zipkinService, _ := anypb.New(&tracev3.ZipkinConfig{CollectorEndpointVersion: tracev3.ZipkinConfig_HTTP_JSON, TraceId_128Bit: true,
		CollectorService: &core.HttpService{
			HttpUri: &core.HttpUri{Uri: "http://zipkin.istio-system.svc.cluster.local/api/v2/spans",
				HttpUpstreamType: &core.HttpUri_Cluster{Cluster: "outbound|9411||zipkin.istio-system.svc.cluster.local"}, Timeout: durationpb.New(3 * time.Second)},
			RequestHeadersToAdd: []*core.HeaderValueOption{{Header: &core.HeaderValue{Key: "X-Token", Value: "t"}}},
		},
		// Envoy ignores the older fields when collector_service is set.
		CollectorCluster: "ignored", CollectorEndpoint: "/ignored"})
	protoZipkin, _ := anypb.New(&tracev3.ZipkinConfig{CollectorCluster: "zipkin", CollectorEndpointVersion: tracev3.ZipkinConfig_HTTP_PROTO})
	for _, tc := range []struct {
		name     string
		in       *hcmv3.HttpConnectionManager_Tracing
		want     *Tracing
		wantWarn string
	}{
		{name: "defaults", in: &hcmv3.HttpConnectionManager_Tracing{},
			want: &Tracing{RandomSampling: 100, OverallSampling: 100, MaxPathTagLength: 256}},
		{name: "zipkin", in: &hcmv3.HttpConnectionManager_Tracing{RandomSampling: &typev3.Percent{Value: 1.5},
			CustomTags: []*tracingtype.CustomTag{
				{Tag: "a", Type: &tracingtype.CustomTag_Literal_{Literal: &tracingtype.CustomTag_Literal{Value: "x"}}},
				{Tag: "b", Type: &tracingtype.CustomTag_RequestHeader{RequestHeader: &tracingtype.CustomTag_Header{Name: "h", DefaultValue: "d"}}},
				{Tag: "c", Type: &tracingtype.CustomTag_Environment_{Environment: &tracingtype.CustomTag_Environment{Name: "E"}}},
			},
			Provider: &tracev3.Tracing_Http{Name: "envoy.tracers.zipkin", ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: zipkin}}},
			want: &Tracing{RandomSampling: 1.5, OverallSampling: 100, MaxPathTagLength: 256,
				CustomTags: []CustomTag{{Tag: "a", Literal: "x"}, {Tag: "b", Header: "h", Default: "d"}, {Tag: "c", Env: "E"}},
				Zipkin:     &Zipkin{Cluster: "zipkin", Endpoint: "/api/v2/spans", Hostname: "zipkin", TraceID128: true}}},
		{name: "zipkin collector_service", in: &hcmv3.HttpConnectionManager_Tracing{
			Provider: &tracev3.Tracing_Http{Name: "envoy.tracers.zipkin", ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: zipkinService}}},
			want: &Tracing{RandomSampling: 100, OverallSampling: 100, MaxPathTagLength: 256,
				Zipkin: &Zipkin{Cluster: "outbound|9411||zipkin.istio-system.svc.cluster.local", Endpoint: "/api/v2/spans",
					Hostname: "zipkin.istio-system.svc.cluster.local", TraceID128: true, Timeout: 3 * time.Second, Headers: "x-token\x00t\x00"}}},
		{name: "opentelemetry", in: &hcmv3.HttpConnectionManager_Tracing{
			Provider: &tracev3.Tracing_Http{Name: "envoy.tracers.opentelemetry", ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: otel}}},
			want: &Tracing{RandomSampling: 100, OverallSampling: 100, MaxPathTagLength: 256, OTel: &OTel{Scope: true,
				Resource: []Attribute{{"service.name", "waypoint"}, {"telemetry.sdk.language", "go"}, {"telemetry.sdk.name", "ambit-waypoint"}, {"telemetry.sdk.version", "dev"}},
				Exporter: OTLPExporter{Cluster: "otel", GRPC: true, Authority: "otel"}}}},
		{name: "istio's value and metadata tags", in: &hcmv3.HttpConnectionManager_Tracing{CustomTags: []*tracingtype.CustomTag{
			{Tag: "istio.source_workload", Type: &tracingtype.CustomTag_Value{Value: "%FILTER_STATE(downstream_peer_obj:FIELD:workload)%"}},
			{Tag: "istio.destination_workload", Type: &tracingtype.CustomTag_Value{Value: "%FILTER_STATE(upstream_peer_obj:FIELD:workload)%"}},
			{Tag: "istio.authorization.dry_run.allow_policy.result", Type: &tracingtype.CustomTag_Metadata_{Metadata: &tracingtype.CustomTag_Metadata{
				Kind:         &metadatav3.MetadataKind{Kind: &metadatav3.MetadataKind_Request_{Request: &metadatav3.MetadataKind_Request{}}},
				MetadataKey:  &metadatav3.MetadataKey{Key: "envoy.filters.http.rbac", Path: []*metadatav3.MetadataKey_PathSegment{{Segment: &metadatav3.MetadataKey_PathSegment_Key{Key: "istio_dry_run_allow_shadow_engine_result"}}}},
				DefaultValue: "none"}}},
		}},
			want: &Tracing{RandomSampling: 100, OverallSampling: 100, MaxPathTagLength: 256, CustomTags: []CustomTag{
				{Tag: "istio.source_workload", Value: mustLogFormat(t, "%FILTER_STATE(downstream_peer_obj:FIELD:workload)%")},
				{Tag: "istio.destination_workload", Value: mustLogFormat(t, "%FILTER_STATE(upstream_peer_obj:FIELD:workload)%")},
				{Tag: "istio.authorization.dry_run.allow_policy.result", MetaNamespace: "envoy.filters.http.rbac", MetaKey: "istio_dry_run_allow_shadow_engine_result", Default: "none"},
			}}},
		{name: "tags the waypoint cannot record", in: &hcmv3.HttpConnectionManager_Tracing{CustomTags: []*tracingtype.CustomTag{
			{Tag: "route_meta", Type: &tracingtype.CustomTag_Metadata_{Metadata: &tracingtype.CustomTag_Metadata{
				Kind:        &metadatav3.MetadataKind{Kind: &metadatav3.MetadataKind_Route_{Route: &metadatav3.MetadataKind_Route{}}},
				MetadataKey: &metadatav3.MetadataKey{Key: "ns", Path: []*metadatav3.MetadataKey_PathSegment{{Segment: &metadatav3.MetadataKey_PathSegment_Key{Key: "k"}}}}}}},
			{Tag: "no_path", Type: &tracingtype.CustomTag_Metadata_{Metadata: &tracingtype.CustomTag_Metadata{
				Kind:        &metadatav3.MetadataKind{Kind: &metadatav3.MetadataKind_Request_{Request: &metadatav3.MetadataKind_Request{}}},
				MetadataKey: &metadatav3.MetadataKey{Key: "ns"}}}},
			{Tag: "bad_value", Type: &tracingtype.CustomTag_Value{Value: "%BOGUS%"}},
			{Tag: "unrecorded_value", Type: &tracingtype.CustomTag_Value{Value: "%UPSTREAM_FILTER_STATE(k)%"}},
		}},
			want: &Tracing{RandomSampling: 100, OverallSampling: 100, MaxPathTagLength: 256, CustomTags: []CustomTag{
				{Tag: "unrecorded_value", Value: mustLogFormat(t, "%UPSTREAM_FILTER_STATE(k)%")},
			}},
			wantWarn: "tracing custom tag no_path: metadata tag without a namespace and key path; " +
				"tracing custom tag bad_value: format \"%BOGUS%\": operator BOGUS: not a known command operator; " +
				"tracing custom tag unrecorded_value: operators UPSTREAM_FILTER_STATE are not recorded and render empty; " +
				"tracing custom tags route_meta: metadata tags are recorded from the request's dynamic metadata only"},
		{name: "custom provider", in: &hcmv3.HttpConnectionManager_Tracing{
			Provider: &tracev3.Tracing_Http{Name: "envoy.tracers.datadog", ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: datadog}}},
			want:     &Tracing{RandomSampling: 100, OverallSampling: 100, MaxPathTagLength: 256},
			wantWarn: "envoy.tracers.datadog (envoy.config.trace.v3.DatadogConfig) not supported"},
		{name: "zipkin proto", in: &hcmv3.HttpConnectionManager_Tracing{
			Provider: &tracev3.Tracing_Http{Name: "envoy.tracers.zipkin", ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: protoZipkin}}},
			want:     &Tracing{RandomSampling: 100, OverallSampling: 100, MaxPathTagLength: 256},
			wantWarn: "collector_endpoint_version HTTP_PROTO not supported"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, warns, err := buildTracing(tc.in)
			if err != nil {
				t.Fatalf("buildTracing: %v", err)
			}
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b *LogFormat) bool {
				return a == nil && b == nil || a != nil && b != nil && a.String() == b.String()
			})); diff != "" {
				t.Errorf("tracing (-want +got):\n%s", diff)
			}
			if w := strings.Join(warns, "; "); tc.wantWarn == "" && w != "" || !strings.Contains(w, tc.wantWarn) {
				t.Errorf("warnings: got %q, want %q", w, tc.wantWarn)
			}
		})
	}
}

// TestBuildTracingZipkinServiceInvalid: a collector_service Envoy would
// refuse (no cluster) refuses the listener.
func TestBuildTracingZipkinServiceInvalid(t *testing.T) {
	z, _ := anypb.New(&tracev3.ZipkinConfig{CollectorEndpointVersion: tracev3.ZipkinConfig_HTTP_JSON,
		CollectorService: &core.HttpService{HttpUri: &core.HttpUri{Uri: "http://zipkin/api/v2/spans"}}})
	_, _, err := buildTracing(&hcmv3.HttpConnectionManager_Tracing{
		Provider: &tracev3.Tracing_Http{Name: "envoy.tracers.zipkin", ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: z}}})
	if err == nil || !strings.Contains(err.Error(), "collector_service") {
		t.Errorf("buildTracing: got %v, want an error naming collector_service", err)
	}
}

func mustLogFormat(t *testing.T, s string) *LogFormat {
	t.Helper()
	f, err := ParseLogFormat(s)
	if err != nil {
		t.Fatalf("ParseLogFormat(%q): %v", s, err)
	}
	return f
}
