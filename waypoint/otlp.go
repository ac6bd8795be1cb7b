package waypoint

// Tracing as Envoy's OpenTelemetry tracer (envoy.tracers.opentelemetry)
// does it, which istiod configures for MeshConfig's opentelemetry
// extension providers: the trace context is W3C only (traceparent and
// tracestate; B3 headers are neither read nor written); a request whose
// traceparent is sampled is sampled, one without a traceparent is a new
// trace sampled by random_sampling and overall_sampling (or always,
// with the always_on sampler), and one with a traceparent that does not
// parse is not traced at all, as Envoy's null span. The server span
// carries the same tags as the Zipkin tracer's, as string attributes;
// spans go in batches as an ExportTraceServiceRequest (one
// ResourceSpans with the provider's resource, one ScopeSpans) to the
// collector cluster: OTLP/gRPC through a gRPC client connection whose
// dial is the waypoint's own upstream dial (an endpoint of the cluster
// picked by its load balancer, internal listeners and HBONE included),
// or OTLP/HTTP, a protobuf POST through the waypoint's upstream
// transport. Export is never on the request path: a full queue drops
// and counts, an unreachable collector costs failed reports only.

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/internal/version"
	"github.com/ambitmesh/ambit/waypoint/config"
)

// otlpUserAgent is the exporters' User-Agent, in the form the OTLP
// exporter specification asks for.
var otlpUserAgent = "OTel-OTLP-Exporter-Ambit/" + version.Get().Version

// startW3CSpan starts a span from W3C trace context only; nil when the
// request has a traceparent that does not parse (Envoy's null span: the
// request goes on untraced).
func startW3CSpan(tr *config.Tracing, h http.Header) *spanContext {
	s := &spanContext{tracing: tr, spanID: newID(8)}
	switch tp := h.Values("Traceparent"); {
	case len(tp) == 0:
		s.traceID = newID(16)
		s.sampled = rollPercent(tr.RandomSampling/100) && rollPercent(tr.OverallSampling/100)
	case len(tp) == 1 && validTraceparent(tp[0]):
		s.traceID, s.parentID = tp[0][3:35], tp[0][36:52]
		flags, _ := strconv.ParseUint(tp[0][53:], 16, 8)
		s.sampled = flags&1 == 1
		s.tracestate = strings.Join(h.Values("Tracestate"), ",")
	default:
		return nil
	}
	if tr.OTel.AlwaysSample {
		s.sampled = true
	}
	flag := "00"
	if s.sampled {
		flag = "01"
	}
	h.Set("Traceparent", "00-"+s.traceID+"-"+s.spanID+"-"+flag)
	if s.tracestate != "" {
		h.Set("Tracestate", s.tracestate)
	}
	return s
}

// otelStats are Envoy's tracing.opentelemetry counters, plus the
// waypoint's own for drops and gRPC reports.
type otelStats struct {
	spansSent, spansDropped, timerFlushed           prometheus.Counter
	httpReportsSent, httpReportsOK, httpReportsFail prometheus.Counter
	grpcReportsSent, grpcReportsOK, grpcReportsFail prometheus.Counter
	reportsNoCluster                                prometheus.Counter
}

func newOTelStats(c func(prefix, name, help string) prometheus.Counter) otelStats {
	const o = "envoy_tracing_opentelemetry_"
	return otelStats{
		spansSent:        c(o, "spans_sent", "Spans handed to OpenTelemetry exporters."),
		spansDropped:     c(o, "spans_dropped", "Spans dropped because the export queue was full (Ambit's own)."),
		timerFlushed:     c(o, "timer_flushed", "Span batches sent because the flush interval passed."),
		httpReportsSent:  c(o, "http_reports_sent", "OTLP/HTTP export requests sent."),
		httpReportsOK:    c(o, "http_reports_success", "OTLP/HTTP export requests the collector accepted."),
		httpReportsFail:  c(o, "http_reports_failed", "OTLP/HTTP export requests that failed or were refused."),
		grpcReportsSent:  c(o, "grpc_reports_sent", "OTLP/gRPC export calls made (Ambit's own)."),
		grpcReportsOK:    c(o, "grpc_reports_success", "OTLP/gRPC export calls the collector accepted (Ambit's own)."),
		grpcReportsFail:  c(o, "grpc_reports_failed", "OTLP/gRPC export calls that failed (Ambit's own)."),
		reportsNoCluster: c(o, "reports_skipped_no_cluster", "Exports skipped because the collector cluster does not exist (Ambit's own)."),
	}
}

func (s *otelStats) collectors() []prometheus.Collector {
	return []prometheus.Collector{s.spansSent, s.spansDropped, s.timerFlushed, s.httpReportsSent, s.httpReportsOK, s.httpReportsFail,
		s.grpcReportsSent, s.grpcReportsOK, s.grpcReportsFail, s.reportsNoCluster}
}

// exportSpans sends one provider's spans as one ExportTraceServiceRequest.
func (tr *tracer) exportSpans(ctx context.Context, o *config.OTel, spans []*finishedSpan) {
	scope := &tracepb.ScopeSpans{Spans: make([]*tracepb.Span, 0, len(spans))}
	if o.Scope {
		scope.Scope = &commonpb.InstrumentationScope{Name: config.SDKName, Version: version.Get().Version}
	}
	for _, s := range spans {
		scope.Spans = append(scope.Spans, s.otlp())
	}
	req := &collectortrace.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{
		Resource: &resourcepb.Resource{Attributes: attributes(o.Resource)}, ScopeSpans: []*tracepb.ScopeSpans{scope},
	}}}
	st := &tr.otel
	e := &o.Exporter
	if !tr.hasCluster(e.Cluster) {
		st.reportsNoCluster.Inc()
		tr.p.log.Debug("export spans", logkey.Cluster, e.Cluster, logkey.Error, errNoCluster.Error())
		return
	}
	st.spansSent.Add(float64(len(spans)))
	if e.GRPC {
		st.grpcReportsSent.Inc()
		resp := &collectortrace.ExportTraceServiceResponse{}
		if err := tr.invoke(ctx, e, "/opentelemetry.proto.collector.trace.v1.TraceService/Export", req, resp); err != nil {
			tr.exportFailed(e, err)
			return
		}
		if ps := resp.GetPartialSuccess(); ps.GetRejectedSpans() > 0 {
			tr.p.log.Debug("export spans: collector rejected some", logkey.Cluster, e.Cluster, logkey.Error, ps.GetErrorMessage())
		}
		st.grpcReportsOK.Inc()
		return
	}
	st.httpReportsSent.Inc()
	if err := tr.postProto(ctx, e, req); err != nil {
		tr.exportFailed(e, err)
		return
	}
	st.httpReportsOK.Inc()
}

func (tr *tracer) exportFailed(e *config.OTLPExporter, err error) {
	if e.GRPC {
		tr.otel.grpcReportsFail.Inc()
	} else {
		tr.otel.httpReportsFail.Inc()
	}
	tr.p.log.Debug("export spans", logkey.Cluster, e.Cluster, logkey.Error, err.Error())
}

// postProto POSTs an OTLP message as OTLP/HTTP binary protobuf.
func (tr *tracer) postProto(ctx context.Context, e *config.OTLPExporter, m proto.Message) error {
	c, err := tr.collector(e.Cluster)
	if err != nil {
		return err
	}
	body, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("marshal %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	h := http.Header{"Content-Type": {"application/x-protobuf"}, "User-Agent": {otlpUserAgent}}
	for _, kv := range e.Headers {
		h.Set(kv.Key, kv.Value)
	}
	return tr.post(ctx, c, e.Authority, e.Path, e.Timeout, h, body)
}

// otlpTarget names a gRPC client connection: a cluster and the
// authority its calls carry.
type otlpTarget struct{ cluster, authority string }

// invoke makes one unary OTLP/gRPC call on the cluster's client
// connection (made on first use; its dial picks an endpoint of the
// cluster as it is configured then).
func (tr *tracer) invoke(ctx context.Context, e *config.OTLPExporter, method string, req, resp proto.Message) error {
	k := otlpTarget{e.Cluster, e.Authority}
	cc := tr.grpc[k]
	if cc == nil {
		var err error
		cc, err = grpc.NewClient("passthrough:///"+e.Authority,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithAuthority(e.Authority),
			grpc.WithUserAgent(otlpUserAgent),
			grpc.WithContextDialer(tr.dialCollector(e.Cluster)),
			// A collector that comes back is tried again within seconds,
			// not gRPC's default two minutes.
			grpc.WithConnectParams(grpc.ConnectParams{Backoff: grpcbackoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second}}),
			// An idle connection is closed, so the next export picks an
			// endpoint of the cluster as it is then.
			grpc.WithIdleTimeout(time.Minute),
		)
		if err != nil {
			return fmt.Errorf("grpc client for %s: %w", e.Cluster, err)
		}
		tr.grpc[k] = cc
	}
	timeout := e.Timeout
	if timeout <= 0 {
		timeout = reportTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if len(e.Headers) > 0 {
		kv := make([]string, 0, 2*len(e.Headers))
		for _, h := range e.Headers {
			kv = append(kv, h.Key, h.Value)
		}
		ctx = metadata.AppendToOutgoingContext(ctx, kv...)
	}
	if err := cc.Invoke(ctx, method, req, resp); err != nil {
		return fmt.Errorf("call %s on %s: %w", method, e.Cluster, err)
	}
	return nil
}

// pruneGRPC closes the client connections of clusters no longer
// configured.
func (tr *tracer) pruneGRPC() {
	for k, cc := range tr.grpc {
		if !tr.hasCluster(k.cluster) {
			cc.Close()
			delete(tr.grpc, k)
		}
	}
}

// dialCollector is a gRPC dialer that connects to an endpoint of the
// cluster, as the waypoint dials any upstream.
func (tr *tracer) dialCollector(cluster string) func(context.Context, string) (net.Conn, error) {
	return func(ctx context.Context, _ string) (net.Conn, error) {
		c, err := tr.collector(cluster)
		if err != nil {
			return nil, err
		}
		if t := c.cluster.ConnectTimeout; t > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, t)
			defer cancel()
		}
		return tr.p.dialEndpoint(ctx, c.snap, c.cluster, c.ep, &connInfo{fs: map[string]string{}})
	}
}

// hasCluster: the cluster is in the current configuration.
func (tr *tracer) hasCluster(name string) bool {
	snap := tr.p.snap.Load()
	return snap != nil && snap.Clusters[name] != nil
}

// otlp is the span as Envoy's OpenTelemetry tracer sends it.
func (s *finishedSpan) otlp() *tracepb.Span {
	sp := &tracepb.Span{
		TraceId: hexBytes(s.ctx.traceID, 16), SpanId: hexBytes(s.ctx.spanID, 8), TraceState: s.ctx.tracestate,
		Name: s.name, Kind: tracepb.Span_SPAN_KIND_SERVER,
		StartTimeUnixNano: uint64(s.start.UnixNano()), EndTimeUnixNano: uint64(s.start.Add(s.dur).UnixNano()),
		Attributes: attributes(s.tags),
	}
	if s.ctx.parentID != "" {
		sp.ParentSpanId = hexBytes(s.ctx.parentID, 8)
	}
	return sp
}

// hexBytes decodes a hex id into n bytes, left-padded with zeros.
func hexBytes(h string, n int) []byte {
	b := make([]byte, n)
	d, err := hex.DecodeString(h)
	if err == nil && len(d) <= n {
		copy(b[n-len(d):], d)
	}
	return b
}

// attributes are string attributes in OTLP.
func attributes(as []config.Attribute) []*commonpb.KeyValue {
	out := make([]*commonpb.KeyValue, len(as))
	for i, a := range as {
		out[i] = &commonpb.KeyValue{Key: a.Key, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: a.Value}}}
	}
	return out
}
