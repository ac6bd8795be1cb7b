package config

import (
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	detectorsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/tracers/opentelemetry/resource_detectors/v3"
	samplersv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/tracers/opentelemetry/samplers/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func typed(t *testing.T, name string, m proto.Message) *core.TypedExtensionConfig {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return &core.TypedExtensionConfig{Name: name, TypedConfig: a}
}

// TestBuildOTel: an OpenTelemetryConfig as istiod writes it for an
// opentelemetry extension provider (Istio's tracing.go), gRPC and HTTP;
// a malformed one is refused with an error naming the provider, what
// the waypoint does not implement is a warning.
func TestBuildOTel(t *testing.T) {
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.namespace.name=shop, service.name=from-env,broken")
	envGrpc := func(cluster, authority string) *core.GrpcService {
		return &core.GrpcService{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: cluster, Authority: authority}}}
	}
	httpSvc := func(uri, cluster string) *core.HttpService {
		return &core.HttpService{HttpUri: &core.HttpUri{Uri: uri, HttpUpstreamType: &core.HttpUri_Cluster{Cluster: cluster}, Timeout: durationpb.New(2 * time.Second)},
			RequestHeadersToAdd: []*core.HeaderValueOption{{Header: &core.HeaderValue{Key: "Authorization", Value: "Bearer x"}}}}
	}
	sdk := []Attribute{{"telemetry.sdk.language", "go"}, {"telemetry.sdk.name", "ambit-waypoint"}, {"telemetry.sdk.version", "dev"}}
	for _, tc := range []struct {
		name     string
		in       *tracev3.OpenTelemetryConfig
		want     *OTel
		wantWarn string
		wantErr  string
	}{
		{name: "grpc as istiod", in: func() *tracev3.OpenTelemetryConfig {
			g := envGrpc("outbound|4317||otel.observability.svc.cluster.local", "otel.observability.svc.cluster.local")
			g.Timeout = durationpb.New(3 * time.Second)
			g.InitialMetadata = []*core.HeaderValue{{Key: "X-Tenant", Value: "shop"}}
			return &tracev3.OpenTelemetryConfig{GrpcService: g, ServiceName: "waypoint.shop",
				ResourceDetectors: []*core.TypedExtensionConfig{
					typed(t, "envoy.tracers.opentelemetry.resource_detectors.environment", &detectorsv3.EnvironmentResourceDetectorConfig{}),
					typed(t, "envoy.tracers.opentelemetry.resource_detectors.static_config", &detectorsv3.StaticConfigResourceDetectorConfig{Attributes: map[string]string{"zone": "z1"}}),
				}}
		}(),
			want: &OTel{Scope: true,
				Resource: append([]Attribute{{"k8s.namespace.name", "shop"}, {"service.name", "from-env"}}, append(sdk, Attribute{"zone", "z1"})...),
				Exporter: OTLPExporter{Cluster: "outbound|4317||otel.observability.svc.cluster.local", GRPC: true, Authority: "otel.observability.svc.cluster.local",
					Headers: []Attribute{{"x-tenant", "shop"}}, Timeout: 3 * time.Second}},
			wantWarn: `OTEL_RESOURCE_ATTRIBUTES entry "broken" is not key=value`},
		{name: "http as istiod", in: &tracev3.OpenTelemetryConfig{HttpService: httpSvc("otel.observability.svc.cluster.local/v1/traces", "outbound|4318||otel"),
			SetTelemetrySdkResourceAttributes: wrapperspb.Bool(false), SetInstrumentationScope: wrapperspb.Bool(false)},
			want: &OTel{Resource: []Attribute{{"service.name", "unknown_service:envoy"}},
				Exporter: OTLPExporter{Cluster: "outbound|4318||otel", Authority: "otel.observability.svc.cluster.local", Path: "/v1/traces",
					Headers: []Attribute{{"authorization", "Bearer x"}}, Timeout: 2 * time.Second}}},
		{name: "http with scheme and port", in: &tracev3.OpenTelemetryConfig{HttpService: httpSvc("https://otel:4318/otlp/v1/traces?x=1", "c"),
			SetTelemetrySdkResourceAttributes: wrapperspb.Bool(false)},
			want: &OTel{Scope: true, Resource: []Attribute{{"service.name", "unknown_service:envoy"}},
				Exporter: OTLPExporter{Cluster: "c", Authority: "otel:4318", Path: "/otlp/v1/traces?x=1",
					Headers: []Attribute{{"authorization", "Bearer x"}}, Timeout: 2 * time.Second}}},
		{name: "always_on sampler", in: &tracev3.OpenTelemetryConfig{GrpcService: envGrpc("otel", ""), SetServiceNameResourceAttribute: wrapperspb.Bool(false),
			SetTelemetrySdkResourceAttributes: wrapperspb.Bool(false),
			Sampler:                           typed(t, "envoy.tracers.opentelemetry.samplers.always_on", &samplersv3.AlwaysOnSamplerConfig{})},
			want: &OTel{Scope: true, AlwaysSample: true, Resource: []Attribute{}, Exporter: OTLPExporter{Cluster: "otel", GRPC: true, Authority: "otel"}}},
		{name: "dynatrace sampler", in: &tracev3.OpenTelemetryConfig{GrpcService: envGrpc("otel", ""), SetTelemetrySdkResourceAttributes: wrapperspb.Bool(false),
			Sampler: typed(t, "envoy.tracers.opentelemetry.samplers.dynatrace", &samplersv3.DynatraceSamplerConfig{Tenant: "t"})},
			want:     &OTel{Scope: true, Resource: []Attribute{{"service.name", "unknown_service:envoy"}}, Exporter: OTLPExporter{Cluster: "otel", GRPC: true, Authority: "otel"}},
			wantWarn: "sampler envoy.tracers.opentelemetry.samplers.dynatrace (envoy.extensions.tracers.opentelemetry.samplers.v3.DynatraceSamplerConfig) not supported"},
		{name: "google_grpc", in: &tracev3.OpenTelemetryConfig{GrpcService: &core.GrpcService{TargetSpecifier: &core.GrpcService_GoogleGrpc_{
			GoogleGrpc: &core.GrpcService_GoogleGrpc{TargetUri: "otel:4317", StatPrefix: "otel"}}}, SetTelemetrySdkResourceAttributes: wrapperspb.Bool(false)},
			want:     &OTel{Scope: true, Resource: []Attribute{{"service.name", "unknown_service:envoy"}}},
			wantWarn: "google_grpc) not supported; no spans are sent"},
		{name: "no exporter", in: &tracev3.OpenTelemetryConfig{ServiceName: "w"},
			wantErr: "tracing provider otel: want exactly one of grpc_service, http_service and exporter, got 0"},
		{name: "two exporters", in: &tracev3.OpenTelemetryConfig{GrpcService: envGrpc("a", ""), HttpService: httpSvc("http://b/v1/traces", "b")},
			wantErr: "want exactly one of grpc_service, http_service and exporter, got 2"},
		{name: "http uri without host", in: &tracev3.OpenTelemetryConfig{HttpService: httpSvc("/v1/traces", "b")},
			wantErr: `http_uri "/v1/traces": want a host`},
		{name: "envoy_grpc without cluster", in: &tracev3.OpenTelemetryConfig{GrpcService: envGrpc("", "")},
			wantErr: "tracing provider otel: invalid OpenTelemetryConfig.GrpcService"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, warns, err := buildOTel("otel", tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error: got %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("buildOTel: %v", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
			if w := strings.Join(warns, "; "); tc.wantWarn == "" && w != "" || !strings.Contains(w, tc.wantWarn) {
				t.Errorf("warnings: got %q, want %q", w, tc.wantWarn)
			}
		})
	}
}
