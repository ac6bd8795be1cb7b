package config

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	detectorsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/tracers/opentelemetry/resource_detectors/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ambitmesh/ambit/internal/version"
)

// OTel is envoy.tracers.opentelemetry (what istiod configures for
// MeshConfig's opentelemetry extension providers): spans as OTLP to a
// collector cluster, over gRPC or HTTP, W3C trace context only.
type OTel struct {
	// Resource is the resource's attributes, sorted by key: service.name
	// (Envoy's default unknown_service:envoy), telemetry.sdk.*, then
	// what the resource detectors found.
	Resource []Attribute
	// Scope: spans carry the instrumentation scope
	// (set_instrumentation_scope, default true).
	Scope bool
	// AlwaysSample is the always_on sampler: every span is sampled,
	// whatever the HCM's sampling and the caller said.
	AlwaysSample bool
	// Exporter is where spans go; its Cluster is empty when the waypoint
	// cannot export (google_grpc, a custom exporter): requests are then
	// sampled and propagated as Envoy's tracer would, and no spans made.
	Exporter OTLPExporter
}

// Attribute is a key and a string value (Envoy's resource and span
// attributes are strings).
type Attribute struct{ Key, Value string }

// OTLPExporter is where OTLP goes: the OTLP/gRPC service or an OTLP/HTTP
// endpoint on a cluster.
type OTLPExporter struct {
	Cluster string
	// GRPC is OTLP/gRPC (envoy_grpc); else OTLP/HTTP with protobuf
	// bodies (http_service).
	GRPC bool
	// Authority is the :authority of the gRPC calls (envoy_grpc's
	// authority, the cluster name when unset, as Envoy's) or the Host of
	// the HTTP POST (http_uri's host).
	Authority string
	// Path is the HTTP POST's path.
	Path string
	// Headers go with every export: gRPC initial_metadata or HTTP
	// request_headers_to_add.
	Headers []Attribute
	// Timeout bounds one export (0: the waypoint's default).
	Timeout time.Duration
}

// Telemetry SDK attributes: the waypoint's, not Envoy's (it is not).
const (
	SDKName     = "ambit-waypoint"
	SDKLanguage = "go"
)

// defaultServiceName is Envoy's service.name when the config sets none.
const defaultServiceName = "unknown_service:envoy"

// buildOTel reads an OpenTelemetryConfig. A malformed config (no or two
// exporters, an HTTP service without a cluster or URI) is an error that
// refuses the listener, as Envoy refuses it; what the waypoint does not
// implement (google_grpc, samplers other than always_on, the Dynatrace
// resource detector) is a warning: the HCM still samples and
// propagates.
func buildOTel(name string, c *tracev3.OpenTelemetryConfig) (*OTel, []string, error) {
	if err := c.Validate(); err != nil {
		return nil, nil, fmt.Errorf("tracing provider %s: %w", name, err)
	}
	var warns []string
	n := 0
	for _, set := range []bool{c.GetGrpcService() != nil, c.GetHttpService() != nil, c.GetExporter() != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, nil, fmt.Errorf("tracing provider %s: want exactly one of grpc_service, http_service and exporter, got %d", name, n)
	}
	out := &OTel{Scope: boolOr(c.GetSetInstrumentationScope(), true)}
	switch {
	case c.GetGrpcService() != nil:
		e, err := grpcExporter(c.GetGrpcService())
		if err != nil {
			return nil, nil, fmt.Errorf("tracing provider %s: %w", name, err)
		}
		if e == nil {
			warns = append(warns, fmt.Sprintf("tracing provider %s: grpc_service without envoy_grpc (google_grpc) not supported; no spans are sent", name))
		} else {
			out.Exporter = *e
		}
	case c.GetHttpService() != nil:
		e, err := httpExporter(c.GetHttpService())
		if err != nil {
			return nil, nil, fmt.Errorf("tracing provider %s: %w", name, err)
		}
		out.Exporter = *e
	default:
		warns = append(warns, fmt.Sprintf("tracing provider %s: custom exporter %s not supported; no spans are sent", name, c.GetExporter().GetName()))
	}
	attrs := map[string]string{}
	if boolOr(c.GetSetServiceNameResourceAttribute(), true) {
		attrs["service.name"] = cmpOr(c.GetServiceName(), defaultServiceName)
	}
	if boolOr(c.GetSetTelemetrySdkResourceAttributes(), true) {
		attrs["telemetry.sdk.name"], attrs["telemetry.sdk.language"], attrs["telemetry.sdk.version"] = SDKName, SDKLanguage, version.Get().Version
	}
	for _, d := range c.GetResourceDetectors() {
		w, err := detectResource(d, attrs)
		if err != nil {
			return nil, nil, fmt.Errorf("tracing provider %s: %w", name, err)
		}
		warns = append(warns, w...)
	}
	out.Resource = sortedAttributes(attrs)
	if s := c.GetSampler(); s != nil {
		switch innerType(s.GetTypedConfig()) {
		case "envoy.extensions.tracers.opentelemetry.samplers.v3.AlwaysOnSamplerConfig":
			out.AlwaysSample = true
		default:
			warns = append(warns, fmt.Sprintf("tracing provider %s: sampler %s (%s) not supported; the connection manager's sampling decides",
				name, s.GetName(), innerType(s.GetTypedConfig())))
		}
	}
	return out, warns, nil
}

// detectResource merges what one resource detector finds into attrs.
func detectResource(d *core.TypedExtensionConfig, attrs map[string]string) ([]string, error) {
	switch innerType(d.GetTypedConfig()) {
	case "envoy.extensions.tracers.opentelemetry.resource_detectors.v3.EnvironmentResourceDetectorConfig":
		// OTEL_RESOURCE_ATTRIBUTES: key=value pairs separated by commas.
		var warns []string
		for kv := range strings.SplitSeq(os.Getenv("OTEL_RESOURCE_ATTRIBUTES"), ",") {
			if strings.TrimSpace(kv) == "" {
				continue
			}
			k, v, ok := strings.Cut(kv, "=")
			if k = strings.TrimSpace(k); !ok || k == "" {
				warns = append(warns, fmt.Sprintf("resource detector %s: OTEL_RESOURCE_ATTRIBUTES entry %q is not key=value; skipped", d.GetName(), kv))
				continue
			}
			attrs[k] = strings.TrimSpace(v)
		}
		return warns, nil
	case "envoy.extensions.tracers.opentelemetry.resource_detectors.v3.StaticConfigResourceDetectorConfig":
		var s detectorsv3.StaticConfigResourceDetectorConfig
		if err := anyTo(d.GetTypedConfig(), &s); err != nil {
			return nil, fmt.Errorf("resource detector %s: %w", d.GetName(), err)
		}
		for k, v := range s.GetAttributes() {
			attrs[k] = v
		}
		return nil, nil
	}
	return []string{fmt.Sprintf("resource detector %s (%s) not supported; skipped", d.GetName(), innerType(d.GetTypedConfig()))}, nil
}

// grpcExporter reads a GrpcService: nil without envoy_grpc.
func grpcExporter(g *core.GrpcService) (*OTLPExporter, error) {
	eg := g.GetEnvoyGrpc()
	if eg == nil {
		return nil, nil
	}
	if eg.GetClusterName() == "" {
		return nil, fmt.Errorf("grpc_service: envoy_grpc has no cluster_name")
	}
	e := &OTLPExporter{GRPC: true, Cluster: eg.GetClusterName(), Authority: cmpOr(eg.GetAuthority(), eg.GetClusterName()), Timeout: dur(g.GetTimeout())}
	for _, h := range g.GetInitialMetadata() {
		e.Headers = append(e.Headers, Attribute{Key: strings.ToLower(h.GetKey()), Value: h.GetValue()})
	}
	return e, nil
}

// httpExporter reads an HttpService: POSTs to http_uri's path on its
// cluster, Host its host.
func httpExporter(h *core.HttpService) (*OTLPExporter, error) {
	hu := h.GetHttpUri()
	if hu.GetCluster() == "" {
		return nil, fmt.Errorf("http_service: http_uri %q has no cluster", hu.GetUri())
	}
	host, path := hostPath(hu.GetUri())
	if host == "" {
		return nil, fmt.Errorf("http_service: http_uri %q: want a host", hu.GetUri())
	}
	e := &OTLPExporter{Cluster: hu.GetCluster(), Authority: host, Path: path, Timeout: dur(hu.GetTimeout())}
	for _, o := range h.GetRequestHeadersToAdd() {
		e.Headers = append(e.Headers, Attribute{Key: strings.ToLower(o.GetHeader().GetKey()), Value: o.GetHeader().GetValue()})
	}
	return e, nil
}

// hostPath splits a URI as Envoy's HTTP services do: the scheme is
// optional (istiod writes "<hostname>/v1/traces"), the host runs to the
// first slash, the path is the rest ("/" when none).
func hostPath(uri string) (host, path string) {
	if _, rest, ok := strings.Cut(uri, "://"); ok {
		uri = rest
	}
	i := strings.IndexByte(uri, '/')
	if i < 0 {
		return uri, "/"
	}
	return uri[:i], uri[i:]
}

func sortedAttributes(m map[string]string) []Attribute {
	out := make([]Attribute, 0, len(m))
	for k, v := range m {
		out = append(out, Attribute{Key: k, Value: v})
	}
	slices.SortFunc(out, func(a, b Attribute) int { return strings.Compare(a.Key, b.Key) })
	return out
}

func boolOr(b *wrapperspb.BoolValue, def bool) bool {
	if b == nil {
		return def
	}
	return b.GetValue()
}
