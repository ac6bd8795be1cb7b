//lint:file-ignore SA1019 Istio writes common_config (deprecated in Envoy, still honoured)
package waypoint_test

import (
	"context"
	"encoding/hex"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	otelalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/open_telemetry/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	detectorsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/tracers/opentelemetry/resource_detectors/v3"
	collectorlogs "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// The OTLP collector stand-ins: a real gRPC server with OTLP's trace
// and logs services and an HTTP server for OTLP/HTTP, decoding the
// published protos. Each hands over what it got one span or log
// record at a time, with the export it came in.

// otlpSpan is one span a collector got.
type otlpSpan struct {
	span     *tracepb.Span
	resource map[string]string
	scope    *commonpb.InstrumentationScope
	// header is the export's gRPC metadata or HTTP header; authority
	// its :authority or Host.
	header    map[string][]string
	authority string
}

// otlpLog is one log record a collector got.
type otlpLog struct {
	record   *logspb.LogRecord
	resource map[string]string
	header   map[string][]string
}

func attrMap(kvs []*commonpb.KeyValue) map[string]string {
	m := map[string]string{}
	for _, kv := range kvs {
		m[kv.GetKey()] = kv.GetValue().GetStringValue()
	}
	return m
}

type collector struct {
	spans chan otlpSpan
	logs  chan otlpLog
}

func newCollector() *collector {
	return &collector{spans: make(chan otlpSpan, 100), logs: make(chan otlpLog, 100)}
}

func (c *collector) traces(req *collectortrace.ExportTraceServiceRequest, header map[string][]string, authority string) {
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				c.spans <- otlpSpan{span: s, resource: attrMap(rs.GetResource().GetAttributes()), scope: ss.GetScope(), header: header, authority: authority}
			}
		}
	}
}

func (c *collector) records(req *collectorlogs.ExportLogsServiceRequest, header map[string][]string) {
	for _, rl := range req.GetResourceLogs() {
		for _, sl := range rl.GetScopeLogs() {
			for _, r := range sl.GetLogRecords() {
				c.logs <- otlpLog{record: r, resource: attrMap(rl.GetResource().GetAttributes()), header: header}
			}
		}
	}
}

type traceService struct {
	collectortrace.UnimplementedTraceServiceServer
	c *collector
}

func (s *traceService) Export(ctx context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	s.c.traces(req, md, strings.Join(md.Get(":authority"), ","))
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

type logsService struct {
	collectorlogs.UnimplementedLogsServiceServer
	c *collector
}

func (s *logsService) Export(ctx context.Context, req *collectorlogs.ExportLogsServiceRequest) (*collectorlogs.ExportLogsServiceResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	s.c.records(req, md)
	return &collectorlogs.ExportLogsServiceResponse{}, nil
}

// otlpGRPCCollector is an OTLP/gRPC collector on loopback.
func otlpGRPCCollector(t *testing.T) (netip.AddrPort, *collector) {
	t.Helper()
	c := newCollector()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, &traceService{c: c})
	collectorlogs.RegisterLogsServiceServer(srv, &logsService{c: c})
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return netip.MustParseAddrPort(ln.Addr().String()), c
}

// otlpHTTPCollector is an OTLP/HTTP collector on loopback: protobuf
// POSTs to /v1/traces and /v1/logs.
func otlpHTTPCollector(t *testing.T) (netip.AddrPort, *collector) {
	t.Helper()
	c := newCollector()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil || r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/x-protobuf" {
			t.Errorf("collector got %s %s content type %q (%v), want a POST of application/x-protobuf", r.Method, r.URL.Path, r.Header.Get("Content-Type"), err)
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		var m proto.Message
		switch r.URL.Path {
		case "/v1/traces":
			m = &collectortrace.ExportTraceServiceRequest{}
		case "/v1/logs":
			m = &collectorlogs.ExportLogsServiceRequest{}
		default:
			t.Errorf("collector got a POST to %s, want /v1/traces or /v1/logs", r.URL.Path)
			w.WriteHeader(http.StatusNotFound)
			return
		}
		if err := proto.Unmarshal(body, m); err != nil {
			t.Errorf("collector: decode %s: %v", r.URL.Path, err)
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		switch m := m.(type) {
		case *collectortrace.ExportTraceServiceRequest:
			c.traces(m, r.Header, r.Host)
		case *collectorlogs.ExportLogsServiceRequest:
			c.records(m, r.Header)
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(nil)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return netip.MustParseAddrPort(ln.Addr().String()), c
}

const (
	otelHost        = "opentelemetry-collector.observability.svc.cluster.local"
	otelGRPCCluster = "outbound|4317||" + otelHost
	otelHTTPCluster = "outbound|4318||" + otelHost
)

// otelGRPCProvider is the OpenTelemetryConfig istiod writes for an
// opentelemetry provider on port 4317 (Istio's tracing.go).
func otelGRPCProvider() *tracev3.OpenTelemetryConfig {
	return &tracev3.OpenTelemetryConfig{
		GrpcService: &core.GrpcService{
			TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: otelGRPCCluster, Authority: otelHost}},
			Timeout:         durationpb.New(3 * time.Second),
			InitialMetadata: []*core.HeaderValue{{Key: "x-otel-tenant", Value: "shop"}},
		},
		ServiceName: "waypoint.shop",
		ResourceDetectors: []*core.TypedExtensionConfig{{Name: "envoy.tracers.opentelemetry.resource_detectors.environment",
			TypedConfig: mustAny(&detectorsv3.EnvironmentResourceDetectorConfig{})}},
	}
}

// otelHTTPProvider is the same on port 4318 with an http path: istiod
// writes the URI as url.JoinPath(hostname, path), no scheme.
func otelHTTPProvider() *tracev3.OpenTelemetryConfig {
	return &tracev3.OpenTelemetryConfig{
		HttpService: &core.HttpService{
			HttpUri: &core.HttpUri{Uri: otelHost + "/v1/traces", HttpUpstreamType: &core.HttpUri_Cluster{Cluster: otelHTTPCluster},
				Timeout: durationpb.New(3 * time.Second)},
			RequestHeadersToAdd: []*core.HeaderValueOption{{Header: &core.HeaderValue{Key: "Authorization", Value: "Bearer shop"}}},
		},
		ServiceName: "waypoint.shop",
	}
}

// upstreamTraceparent is the traceparent the app got.
func upstreamTraceparent(t *testing.T, resp *http.Response) (trace, span, flags string) {
	t.Helper()
	parts := strings.Split(resp.Header.Get("X-Got-Traceparent"), "-")
	if len(parts) != 4 {
		t.Fatalf("traceparent upstream: got %q, want one", resp.Header.Get("X-Got-Traceparent"))
	}
	return parts[1], parts[2], parts[3]
}

// TestOTelTracingGRPC: real requests through a waypoint whose HCM
// traces with the OpenTelemetry provider over OTLP/gRPC: each sampled
// request's span reaches the collector's TraceService as Envoy's
// OpenTelemetry tracer sends it (ids as bytes matching the traceparent
// the app got, the caller's span as parent, kind SERVER, the
// decorator's name, Envoy's tags and the custom tags as string
// attributes, tracestate kept), under the provider's resource, with the
// configured authority and metadata; the trace context is W3C only, and
// a traceparent that does not parse is not traced.
func TestOTelTracingGRPC(t *testing.T) {
	t.Setenv("AMBIT_TRACING_TEST_ENV", "from-env")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.namespace.name=shop,deployment.environment=test")
	addr, col := otlpGRPCCollector(t)
	e := tracedEnv(t, tracingProvider(100, "envoy.tracers.opentelemetry", otelGRPCProvider()), otelGRPCCluster, addr)
	c := e.client(t, clientID)

	// A sampled caller with tracestate and B3 headers: the B3 headers
	// pass untouched (W3C only), the span is the caller's child.
	callerTrace, parent := "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	resp := c.do(t, get(t, "/first?q=1", "Traceparent", "00-"+callerTrace+"-"+parent+"-01", "Tracestate", "vendor=abc",
		"X-B3-Spanid", "a2fb4a1d1a96d312", "X-Tenant", "acme", "User-Agent", "tester"))
	expectStatus(t, resp, http.StatusOK)
	trace, span, flags := upstreamTraceparent(t, resp)
	if trace != callerTrace || span == parent || flags != "01" {
		t.Errorf("traceparent upstream: got trace %s span %s flags %s, want trace %s, a new span, 01", trace, span, flags, callerTrace)
	}
	if got := resp.Header.Get("X-Got-Tracestate"); got != "vendor=abc" {
		t.Errorf("tracestate upstream: got %q, want vendor=abc", got)
	}
	if got, sampled := resp.Header.Get("X-Got-X-B3-Spanid"), resp.Header.Get("X-Got-X-B3-Sampled"); got != "a2fb4a1d1a96d312" || sampled != "" {
		t.Errorf("b3 upstream: got x-b3-spanid %q x-b3-sampled %q, want the caller's, untouched, and none", got, sampled)
	}
	s := receive(t, col.spans)
	if s.authority != otelHost || strings.Join(s.header["x-otel-tenant"], ",") != "shop" || !strings.HasPrefix(strings.Join(s.header["user-agent"], ","), "OTel-OTLP-Exporter-Ambit/") {
		t.Errorf("export call: got authority %q, x-otel-tenant %q, user-agent %q; want %s, shop, OTel-OTLP-Exporter-Ambit/...",
			s.authority, s.header["x-otel-tenant"], s.header["user-agent"], otelHost)
	}
	wantResource := map[string]string{"service.name": "waypoint.shop", "k8s.namespace.name": "shop", "deployment.environment": "test",
		"telemetry.sdk.name": "ambit-waypoint", "telemetry.sdk.language": "go", "telemetry.sdk.version": "dev"}
	for k, v := range wantResource {
		if s.resource[k] != v {
			t.Errorf("resource attribute %s: got %q, want %q", k, s.resource[k], v)
		}
	}
	if s.scope.GetName() != "ambit-waypoint" {
		t.Errorf("instrumentation scope: got %q, want ambit-waypoint", s.scope.GetName())
	}
	sp := s.span
	if got, want := hex.EncodeToString(sp.GetTraceId()), callerTrace; got != want {
		t.Errorf("span trace id: got %s, want %s", got, want)
	}
	if got := hex.EncodeToString(sp.GetSpanId()); got != span {
		t.Errorf("span id: got %s, want the span the app got as parent, %s", got, span)
	}
	if got := hex.EncodeToString(sp.GetParentSpanId()); got != parent {
		t.Errorf("parent span id: got %s, want the caller's %s", got, parent)
	}
	if sp.GetKind() != tracepb.Span_SPAN_KIND_SERVER || sp.GetName() != host+":80/*" || sp.GetTraceState() != "vendor=abc" {
		t.Errorf("span: got kind %v name %q tracestate %q, want SERVER, %q, vendor=abc", sp.GetKind(), sp.GetName(), sp.GetTraceState(), host+":80/*")
	}
	if start, end := sp.GetStartTimeUnixNano(), sp.GetEndTimeUnixNano(); start == 0 || end <= start {
		t.Errorf("span times: got start %d end %d, want 0 < start < end", start, end)
	}
	for _, a := range sp.GetAttributes() {
		if _, ok := a.GetValue().GetValue().(*commonpb.AnyValue_StringValue); !ok {
			t.Errorf("attribute %s: got %T, want a string (as Envoy's setTag)", a.GetKey(), a.GetValue().GetValue())
		}
	}
	expectTags(t, attrMap(sp.GetAttributes()), firstRequestTags(resp))

	// No traceparent: a new root span, sampled at 100%, no B3 written.
	resp = c.do(t, get(t, "/root"))
	trace, span, _ = upstreamTraceparent(t, resp)
	if got := resp.Header.Get("X-Got-X-B3-Traceid"); got != "" {
		t.Errorf("x-b3-traceid upstream: got %q, want none (W3C only)", got)
	}
	sp = receive(t, col.spans).span
	if hex.EncodeToString(sp.GetTraceId()) != trace || hex.EncodeToString(sp.GetSpanId()) != span || len(sp.GetParentSpanId()) != 0 {
		t.Errorf("root span: got trace %x span %x parent %x, want trace %s span %s, no parent", sp.GetTraceId(), sp.GetSpanId(), sp.GetParentSpanId(), trace, span)
	}

	// A traceparent that does not parse, then an unsampled caller: no
	// spans; the next one is the sampled request's.
	c.do(t, get(t, "/malformed", "Traceparent", "00-xyz-00f067aa0ba902b7-01"))
	resp = c.do(t, get(t, "/unsampled", "Traceparent", "00-"+callerTrace+"-"+parent+"-00"))
	if _, _, flags := upstreamTraceparent(t, resp); flags != "00" {
		t.Errorf("unsampled caller upstream: got flags %s, want 00", flags)
	}
	c.do(t, get(t, "/last"))
	if got := attrMap(receive(t, col.spans).span.GetAttributes())["http.url"]; got != "http://"+host+"/last" {
		t.Errorf("next span: got one for %s, want /last's (malformed and unsampled requests record none)", got)
	}

	expectCounters(t, e, map[string]float64{"envoy_tracing_opentelemetry_spans_sent": 3, "envoy_tracing_opentelemetry_grpc_reports_success": 1})
}

// TestOTelTracingHTTP: the same provider over OTLP/HTTP: protobuf
// POSTs to the URI's path with its host and the configured headers.
func TestOTelTracingHTTP(t *testing.T) {
	addr, col := otlpHTTPCollector(t)
	e := tracedEnv(t, tracingProvider(100, "envoy.tracers.opentelemetry", otelHTTPProvider()), otelHTTPCluster, addr)
	resp := e.client(t, clientID).do(t, get(t, "/over-http"))
	expectStatus(t, resp, http.StatusOK)
	trace, span, _ := upstreamTraceparent(t, resp)
	s := receive(t, col.spans)
	if s.authority != otelHost || strings.Join(s.header["Authorization"], ",") != "Bearer shop" ||
		!strings.HasPrefix(strings.Join(s.header["User-Agent"], ","), "OTel-OTLP-Exporter-Ambit/") {
		t.Errorf("export POST: got host %q, authorization %q, user-agent %q; want %s, Bearer shop, OTel-OTLP-Exporter-Ambit/...",
			s.authority, s.header["Authorization"], s.header["User-Agent"], otelHost)
	}
	if hex.EncodeToString(s.span.GetTraceId()) != trace || hex.EncodeToString(s.span.GetSpanId()) != span || s.resource["service.name"] != "waypoint.shop" {
		t.Errorf("span: got trace %x span %x service %q, want %s %s waypoint.shop", s.span.GetTraceId(), s.span.GetSpanId(), s.resource["service.name"], trace, span)
	}
	expectCounters(t, e, map[string]float64{"envoy_tracing_opentelemetry_http_reports_success": 1})
}

// TestOTelCollectorDown: with the collector's cluster pointing at a
// closed port, or missing, requests go through as ever, and the failed
// exports are counted.
func TestOTelCollectorDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	for _, tc := range []struct {
		name, cluster, metric string
		provider              *tracev3.OpenTelemetryConfig
	}{
		{name: "grpc", cluster: otelGRPCCluster, metric: "envoy_tracing_opentelemetry_grpc_reports_failed", provider: otelGRPCProvider()},
		{name: "http", cluster: otelHTTPCluster, metric: "envoy_tracing_opentelemetry_http_reports_failed", provider: otelHTTPProvider()},
		{name: "no cluster", cluster: "outbound|1||elsewhere", metric: "envoy_tracing_opentelemetry_reports_skipped_no_cluster", provider: otelGRPCProvider()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exports := make(chan string, 10)
			e := tracedEnv(t, tracingProvider(100, "envoy.tracers.opentelemetry", tc.provider), tc.cluster, closed,
				func(e *env) { e.log = slog.New(&messages{msg: "export spans", ch: exports}) })
			c := e.client(t, clientID)
			for range 3 {
				expectStatus(t, c.do(t, get(t, "/down")), http.StatusOK)
			}
			// The batch goes within a second of the first span; the
			// export is counted, then logged, when it gives up.
			receive(t, exports)
			if got := counter(t, e, tc.metric); got < 1 {
				t.Errorf("%s: got %v, want at least 1", tc.metric, got)
			}
		})
	}
}

// messages is a log handler that hands over the messages msg logged.
type messages struct {
	msg string
	ch  chan<- string
}

func (m *messages) Enabled(context.Context, slog.Level) bool { return true }
func (m *messages) Handle(_ context.Context, r slog.Record) error {
	if r.Message == m.msg {
		select {
		case m.ch <- r.Message:
		default:
		}
	}
	return nil
}
func (m *messages) WithAttrs([]slog.Attr) slog.Handler { return m }
func (m *messages) WithGroup(string) slog.Handler      { return m }

// otelAccessLog is the access logger istiod writes for an envoyOtelAls
// provider with a format and labels (Istio's
// buildOpenTelemetryAccessLogConfig), on the given exporter.
func otelAccessLog(edit func(*otelalsv3.OpenTelemetryAccessLogConfig)) func(*hcmv3.HttpConnectionManager) {
	str := func(s string) *commonpb.AnyValue {
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: s}}
	}
	c := &otelalsv3.OpenTelemetryAccessLogConfig{
		DisableBuiltinLabels: true,
		Body:                 str(`%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% "%REQ(:AUTHORITY)%" %UPSTREAM_CLUSTER_RAW% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% %REQ(X-TENANT):3% %REQ_WITHOUT_QUERY(:PATH)% %DOWNSTREAM_REMOTE_PORT%`),
		Attributes: &commonpb.KeyValueList{Values: []*commonpb.KeyValue{
			{Key: "peer", Value: str("%DOWNSTREAM_PEER_URI_SAN%")},
			{Key: "trace", Value: str("%TRACE_ID%")},
			{Key: "start", Value: str("%START_TIME(%s)%")},
			{Key: "fixed", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: 7}}},
		}},
		ResourceAttributes: &commonpb.KeyValueList{Values: []*commonpb.KeyValue{{Key: "k8s.cluster.name", Value: str("c1")}}},
	}
	edit(c)
	return func(h *hcmv3.HttpConnectionManager) {
		h.AccessLog = append(h.AccessLog, &accesslogv3.AccessLog{Name: "envoy.access_loggers.open_telemetry",
			ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(c)}})
	}
}

// TestOTelAccessLog: each request through a chain with an
// OpenTelemetry access logger reaches the collector's LogsService (or
// its OTLP/HTTP /v1/logs) as one LogRecord: body and attributes the
// format strings evaluated against the request, constants kept, the
// request's trace and span ids, the resource attributes, and the
// built-in labels unless disabled.
func TestOTelAccessLog(t *testing.T) {
	grpcAddr, grpcCol := otlpGRPCCollector(t)
	httpAddr, httpCol := otlpHTTPCollector(t)
	for _, tc := range []struct {
		name    string
		cluster string
		addr    netip.AddrPort
		col     *collector
		edit    func(*otelalsv3.OpenTelemetryAccessLogConfig)
	}{
		{name: "grpc", cluster: otelGRPCCluster, addr: grpcAddr, col: grpcCol, edit: func(c *otelalsv3.OpenTelemetryAccessLogConfig) {
			c.CommonConfig = &grpcalsv3.CommonGrpcAccessLogConfig{LogName: "otel_envoy_accesslog", TransportApiVersion: core.ApiVersion_V3,
				GrpcService: &core.GrpcService{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: otelGRPCCluster, Authority: otelHost}}}}
		}},
		{name: "http", cluster: otelHTTPCluster, addr: httpAddr, col: httpCol, edit: func(c *otelalsv3.OpenTelemetryAccessLogConfig) {
			c.LogName, c.DisableBuiltinLabels = "http_log", false
			c.HttpService = &core.HttpService{HttpUri: &core.HttpUri{Uri: "http://" + otelHost + ":4318/v1/logs",
				HttpUpstreamType: &core.HttpUri_Cluster{Cluster: otelHTTPCluster}, Timeout: durationpb.New(3 * time.Second)}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			traced := func(h *hcmv3.HttpConnectionManager) {
				tracingProvider(100, "envoy.tracers.opentelemetry", otelGRPCProvider())(h)
				otelAccessLog(tc.edit)(h)
			}
			e := tracedEnv(t, traced, tc.cluster, tc.addr)
			resp := e.client(t, clientID).do(t, get(t, "/logged?x=1", "X-Tenant", "acme-corp"))
			expectStatus(t, resp, http.StatusOK)
			trace, span, _ := upstreamTraceparent(t, resp)
			l := receive(t, tc.col.logs)
			rec := l.record
			wantBody := `GET /logged?x=1 HTTP/1.1 200 - "` + host + `" ` + clusterName("http", 80, host) + ` - acm /logged `
			if got := rec.GetBody().GetStringValue(); !strings.HasPrefix(got, wantBody) || strings.TrimLeft(strings.TrimPrefix(got, wantBody), "0123456789") != "" {
				t.Errorf("body: got %q, want %q and the downstream port", got, wantBody)
			}
			attrs := map[string]*commonpb.AnyValue{}
			for _, kv := range rec.GetAttributes() {
				attrs[kv.GetKey()] = kv.GetValue()
			}
			if got, want := attrs["peer"].GetStringValue(), clientID.String(); got != want {
				t.Errorf("peer attribute: got %q, want %q", got, want)
			}
			if got := attrs["trace"].GetStringValue(); got != trace {
				t.Errorf("trace attribute: got %q, want %s", got, trace)
			}
			if got, want := attrs["start"].GetStringValue(), strconv.FormatInt(int64(rec.GetTimeUnixNano()/1e9), 10); got != want {
				t.Errorf("start attribute: got %q, want the record's time in seconds, %s", got, want)
			}
			if attrs["fixed"].GetIntValue() != 7 {
				t.Errorf("constant attribute: got %v, want 7", attrs["fixed"])
			}
			if hex.EncodeToString(rec.GetTraceId()) != trace || hex.EncodeToString(rec.GetSpanId()) != span {
				t.Errorf("record ids: got trace %x span %x, want %s %s (the request's span)", rec.GetTraceId(), rec.GetSpanId(), trace, span)
			}
			if l.resource["k8s.cluster.name"] != "c1" {
				t.Errorf("resource: got %v, want k8s.cluster.name=c1", l.resource)
			}
			if _, builtin := l.resource["log_name"]; builtin != (tc.name == "http") || tc.name == "http" && l.resource["log_name"] != "http_log" {
				t.Errorf("built-in labels: got %v, want log_name only when not disabled", l.resource)
			}
			expectCounters(t, e, map[string]float64{"envoy_access_logs_open_telemetry_access_log_logs_written": 1})
		})
	}
}

// TestOTelConfigRefused: a malformed OpenTelemetry provider or access
// logger refuses the listener with an error naming it (a NACK: the
// waypoint keeps its last good config), where a merely unsupported part
// would only warn.
func TestOTelConfigRefused(t *testing.T) {
	bad := otelGRPCProvider()
	bad.HttpService = otelHTTPProvider().HttpService
	for _, tc := range []struct {
		name    string
		edit    func(*hcmv3.HttpConnectionManager)
		wantErr string
	}{
		{name: "two exporters", edit: tracingProvider(100, "envoy.tracers.opentelemetry", bad),
			wantErr: "tracing provider envoy.tracers.opentelemetry: want exactly one of grpc_service, http_service and exporter, got 2"},
		{name: "unknown operator", edit: otelAccessLog(func(c *otelalsv3.OpenTelemetryAccessLogConfig) {
			c.GrpcService = otelGRPCProvider().GrpcService
			c.Body = &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "%NOT_AN_OPERATOR%"}}
		}), wantErr: `access log envoy.access_loggers.open_telemetry: body: format "%NOT_AN_OPERATOR%": operator NOT_AN_OPERATOR: not a known command operator`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := basicConfig(addrs())
			w.ports[0].editHCM = tc.edit
			_, err := w.resources().Build()
			if err == nil || !strings.Contains(err.Error(), "listener main_internal") || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("build: got %v, want an error naming main_internal and %q", err, tc.wantErr)
			}
		})
	}
}
