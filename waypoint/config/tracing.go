package config

import (
	"fmt"
	"slices"
	"strings"
	"time"

	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tracingtype "github.com/envoyproxy/go-control-plane/envoy/type/tracing/v3"
)

// Tracing is an HTTP connection manager's tracing: whether a request is
// sampled, the tags its span gets, and where spans go.
type Tracing struct {
	// RandomSampling and OverallSampling are percentages (Envoy's
	// defaults: 100 when unset).
	RandomSampling, OverallSampling float64
	// MaxPathTagLength bounds the http.url tag (Envoy's default 256).
	MaxPathTagLength int
	CustomTags       []CustomTag
	// Zipkin or OTel is the span sink; both nil when the provider is one
	// the waypoint does not export to (the HCM then samples and
	// propagates, and records nothing).
	Zipkin *Zipkin
	OTel   *OTel
}

// Zipkin is envoy.tracers.zipkin: spans POSTed as JSON (Zipkin API v2)
// to a cluster (zipkin.go reads both of its config forms). It is
// comparable: reports are batched per Zipkin.
type Zipkin struct {
	Cluster  string
	Endpoint string
	// Hostname is the Host of the POST (the cluster name when unset, as
	// Envoy).
	Hostname string
	// TraceID128: new traces get 128-bit ids (else 64-bit).
	TraceID128 bool
	// Timeout bounds one report (0: the waypoint's default, 5 s);
	// Headers go with every report (collector_service only).
	Timeout time.Duration
	Headers ZipkinHeaders
}

// CustomTag is a span tag from a literal, a request header, an
// environment variable or the request's dynamic metadata (with a
// default when absent), or a format string (Value).
type CustomTag struct {
	Tag string
	// One of Literal (set), Header, Env, MetaNamespace (with MetaKey, a
	// nested key's path joined by dots, as DYNAMIC_METADATA's), Value.
	Literal, Header, Env   string
	MetaNamespace, MetaKey string
	// Value is rendered as access logs render a format string, except
	// that a missing value is empty: an empty result sets no tag.
	Value   *LogFormat
	Default string
}

// isValueTag: ct's value is a format string.
func isValueTag(ct *tracingtype.CustomTag) bool {
	_, ok := ct.GetType().(*tracingtype.CustomTag_Value)
	return ok
}

// defaultMaxPathTagLength is Envoy's max_path_tag_length default.
const defaultMaxPathTagLength = 256

// buildTracing reads an HCM's tracing; unsupported parts are warnings,
// never a refusal: tracing must not stop traffic. A provider config that
// Envoy itself would refuse (a malformed OpenTelemetryConfig) is an
// error.
func buildTracing(t *hcmv3.HttpConnectionManager_Tracing) (*Tracing, []string, error) {
	if t == nil {
		return nil, nil, nil
	}
	pct := func(p interface{ GetValue() float64 }, set bool) float64 {
		if !set {
			return 100
		}
		return p.GetValue()
	}
	out := &Tracing{
		RandomSampling:   pct(t.GetRandomSampling(), t.GetRandomSampling() != nil),
		OverallSampling:  pct(t.GetOverallSampling(), t.GetOverallSampling() != nil),
		MaxPathTagLength: int(t.GetMaxPathTagLength().GetValue()),
	}
	if out.MaxPathTagLength == 0 {
		out.MaxPathTagLength = defaultMaxPathTagLength
	}
	var warns, unrecorded []string
	for _, ct := range t.GetCustomTags() {
		tag := CustomTag{Tag: ct.GetTag()}
		switch {
		case ct.GetLiteral() != nil:
			tag.Literal = ct.GetLiteral().GetValue()
		case ct.GetRequestHeader() != nil:
			tag.Header, tag.Default = ct.GetRequestHeader().GetName(), ct.GetRequestHeader().GetDefaultValue()
		case ct.GetEnvironment() != nil:
			tag.Env, tag.Default = ct.GetEnvironment().GetName(), ct.GetEnvironment().GetDefaultValue()
		case ct.GetMetadata() != nil && ct.GetMetadata().GetKind().GetRequest() != nil:
			md := ct.GetMetadata()
			var path []string
			for _, seg := range md.GetMetadataKey().GetPath() {
				path = append(path, seg.GetKey())
			}
			if md.GetMetadataKey().GetKey() == "" || len(path) == 0 || slices.Contains(path, "") {
				warns = append(warns, fmt.Sprintf("tracing custom tag %s: metadata tag without a namespace and key path", ct.GetTag()))
				continue
			}
			tag.MetaNamespace, tag.MetaKey, tag.Default = md.GetMetadataKey().GetKey(), strings.Join(path, "."), md.GetDefaultValue()
		case isValueTag(ct):
			f, err := ParseLogFormat(ct.GetValue())
			if err != nil {
				warns = append(warns, fmt.Sprintf("tracing custom tag %s: %v", ct.GetTag(), err))
				continue
			}
			if u := f.Unrecorded(); len(u) > 0 {
				warns = append(warns, fmt.Sprintf("tracing custom tag %s: operators %s are not recorded and render empty", ct.GetTag(), strings.Join(u, ", ")))
			}
			tag.Value = f
		default:
			// Metadata of a route, cluster or host.
			unrecorded = append(unrecorded, ct.GetTag())
			continue
		}
		out.CustomTags = append(out.CustomTags, tag)
	}
	if len(unrecorded) > 0 {
		warns = append(warns, fmt.Sprintf("tracing custom tags %s: metadata tags are recorded from the request's dynamic metadata only",
			strings.Join(unrecorded, ", ")))
	}
	if p := t.GetProvider(); p != nil {
		switch innerType(p.GetTypedConfig()) {
		case "envoy.config.trace.v3.ZipkinConfig":
			var z tracev3.ZipkinConfig
			if err := anyTo(p.GetTypedConfig(), &z); err != nil {
				return nil, nil, fmt.Errorf("tracing provider %s: %w", p.GetName(), err)
			}
			zc, w, err := buildZipkin(p.GetName(), &z)
			if err != nil {
				return nil, nil, err
			}
			out.Zipkin, warns = zc, append(warns, w...)
		case "envoy.config.trace.v3.OpenTelemetryConfig":
			var c tracev3.OpenTelemetryConfig
			if err := anyTo(p.GetTypedConfig(), &c); err != nil {
				return nil, nil, fmt.Errorf("tracing provider %s: %w", p.GetName(), err)
			}
			o, w, err := buildOTel(p.GetName(), &c)
			if err != nil {
				return nil, nil, err
			}
			out.OTel, warns = o, append(warns, w...)
		default:
			warns = append(warns, fmt.Sprintf("tracing provider %s (%s) not supported (zipkin and opentelemetry only); requests are sampled and propagated, no spans are sent",
				p.GetName(), innerType(p.GetTypedConfig())))
		}
	}
	return out, warns, nil
}
