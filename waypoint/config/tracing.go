package config

import (
	"fmt"
	"strings"
	"time"

	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
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

// CustomTag is a span tag from a literal, a request header or an
// environment variable (with a default when absent).
type CustomTag struct {
	Tag string
	// One of Literal (set), Header, Env.
	Literal, Header, Env string
	Default              string
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
		default:
			unrecorded = append(unrecorded, ct.GetTag())
			continue
		}
		out.CustomTags = append(out.CustomTags, tag)
	}
	if len(unrecorded) > 0 {
		// One warning for them all: both istiods give every waypoint
		// chain Istio's 22 dry-run policy (metadata) and peer (value)
		// tags.
		warns = append(warns, fmt.Sprintf("tracing custom tags %s: only literal, request_header and environment tags are recorded",
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
