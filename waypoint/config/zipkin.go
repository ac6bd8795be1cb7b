package config

import (
	"fmt"
	"strings"

	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
)

// buildZipkin reads envoy.tracers.zipkin's config in either of the forms
// Istio's istiod sends: collector_service (an HttpService, for proxies
// of Istio 1.29 and later: cluster, URI whose host is the report's Host
// and whose path is its endpoint, timeout and headers), which wins, as
// in Envoy, or the older collector_cluster, collector_endpoint and
// collector_hostname. Nil with a warning for what the waypoint cannot
// send (an encoding other than HTTP_JSON); an error for a config Envoy
// refuses too (a collector_service without a cluster or host).
func buildZipkin(name string, z *tracev3.ZipkinConfig) (*Zipkin, []string, error) {
	if z.GetCollectorEndpointVersion() != tracev3.ZipkinConfig_HTTP_JSON {
		return nil, []string{fmt.Sprintf("tracing provider %s: collector_endpoint_version %v not supported (HTTP_JSON only); no spans are sent",
			name, z.GetCollectorEndpointVersion())}, nil
	}
	out := &Zipkin{TraceID128: z.GetTraceId_128Bit()}
	if hs := z.GetCollectorService(); hs != nil {
		e, err := httpExporter(hs)
		if err != nil {
			return nil, nil, fmt.Errorf("tracing provider %s: collector_service: %w", name, err)
		}
		out.Cluster, out.Hostname, out.Endpoint, out.Timeout = e.Cluster, e.Authority, e.Path, e.Timeout
		out.Headers = zipkinHeaders(e.Headers)
		return out, nil, nil
	}
	out.Cluster, out.Endpoint, out.Hostname = z.GetCollectorCluster(), z.GetCollectorEndpoint(), z.GetCollectorHostname()
	if out.Hostname == "" {
		out.Hostname = out.Cluster
	}
	if out.Endpoint == "" {
		out.Endpoint = "/api/v2/spans"
	}
	return out, nil, nil
}

// zipkinHeaders keeps headers in a comparable form: Zipkin values are
// map keys (reports are batched per collector).
func zipkinHeaders(hs []Attribute) ZipkinHeaders {
	var out strings.Builder
	for _, h := range hs {
		out.WriteString(h.Key + "\x00" + h.Value + "\x00")
	}
	return ZipkinHeaders(out.String())
}

// ZipkinHeaders are the headers of a Zipkin report, each
// "name\x00value\x00", in order.
type ZipkinHeaders string

// List is the headers as names and values.
func (h ZipkinHeaders) List() []Attribute {
	var out []Attribute
	for s := string(h); s != ""; {
		var k, v string
		k, s, _ = strings.Cut(s, "\x00")
		v, s, _ = strings.Cut(s, "\x00")
		out = append(out, Attribute{Key: k, Value: v})
	}
	return out
}
