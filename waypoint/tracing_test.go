package waypoint_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tracingtype "github.com/envoyproxy/go-control-plane/envoy/type/tracing/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// zipkinV2Span is a span as Zipkin's API v2 JSON defines it (what the
// collector decodes).
type zipkinV2Span struct {
	TraceID       string            `json:"traceId"`
	ParentID      string            `json:"parentId"`
	ID            string            `json:"id"`
	Kind          string            `json:"kind"`
	Name          string            `json:"name"`
	Timestamp     int64             `json:"timestamp"`
	Duration      int64             `json:"duration"`
	LocalEndpoint map[string]any    `json:"localEndpoint"`
	Tags          map[string]string `json:"tags"`
}

// zipkinCollector is a Zipkin collector on loopback: it decodes what is
// POSTed to /api/v2/spans and hands each span over in order.
func zipkinCollector(t *testing.T) (netip.AddrPort, <-chan zipkinV2Span) {
	t.Helper()
	spans := make(chan zipkinV2Span, 100)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/api/v2/spans" || r.Header.Get("Content-Type") != "application/json" || r.Host != "zipkin.istio-system:9411" {
			t.Errorf("collector got %s %s host %q content type %q, want POST /api/v2/spans host zipkin.istio-system:9411 application/json",
				r.Method, r.URL.Path, r.Host, r.Header.Get("Content-Type"))
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		var batch []zipkinV2Span
		if err := json.NewDecoder(r.Body).Decode(&batch); err != nil {
			t.Errorf("collector: decode spans: %v", err)
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		for _, s := range batch {
			spans <- s
		}
		w.WriteHeader(http.StatusAccepted)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return netip.MustParseAddrPort(ln.Addr().String()), spans
}

// tracingHCM configures the HTTP chain's tracing as istiod does for a
// zipkin extension provider (Istio's tracing.go): sampling, the Zipkin
// provider on its collector cluster, and custom tags.
func tracingHCM(sampling float64) func(*hcmv3.HttpConnectionManager) {
	return tracingProvider(sampling, "envoy.tracers.zipkin", &tracev3.ZipkinConfig{
		CollectorCluster: zipkinCluster, CollectorEndpoint: "/api/v2/spans",
		CollectorEndpointVersion: tracev3.ZipkinConfig_HTTP_JSON, TraceId_128Bit: true, CollectorHostname: "zipkin.istio-system:9411",
	})
}

// tracingProvider configures the HTTP chain's tracing with a provider,
// the sampling and custom tags of each kind.
func tracingProvider(sampling float64, name string, provider proto.Message) func(*hcmv3.HttpConnectionManager) {
	return func(h *hcmv3.HttpConnectionManager) {
		h.Tracing = &hcmv3.HttpConnectionManager_Tracing{
			RandomSampling: &typev3.Percent{Value: sampling},
			CustomTags: []*tracingtype.CustomTag{
				{Tag: "istio.canonical_service", Type: &tracingtype.CustomTag_Literal_{Literal: &tracingtype.CustomTag_Literal{Value: "waypoint"}}},
				{Tag: "tenant", Type: &tracingtype.CustomTag_RequestHeader{RequestHeader: &tracingtype.CustomTag_Header{Name: "x-tenant", DefaultValue: "none"}}},
				{Tag: "home", Type: &tracingtype.CustomTag_Environment_{Environment: &tracingtype.CustomTag_Environment{Name: "AMBIT_TRACING_TEST_ENV", DefaultValue: "unset"}}},
			},
			Provider: &tracev3.Tracing_Http{Name: name, ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: mustAny(provider)}},
		}
	}
}

// withCollector adds a collector's cluster to the env's config, as
// istiod adds the outbound cluster of a tracing provider's service.
func withCollector(e *env, name string, a netip.AddrPort) {
	e.res = func() *config.Resources {
		r := e.cfg.resources()
		r.Clusters = append(r.Clusters, staticCluster(name, a))
		return r
	}
}

// receive is the next value a collector got.
func receive[T any](t testing.TB, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatal("nothing reached the collector")
	}
	var zero T
	return zero
}

// tracedEnv is a waypoint whose HTTP chain traces with edit's provider
// to a collector at a (cluster name), its route decorated.
func tracedEnv(t *testing.T, edit func(*hcmv3.HttpConnectionManager), name string, a netip.AddrPort, setup ...func(*env)) *env {
	t.Helper()
	e := newEnvWith(t, host, [2]uint16{80, 90}, [2]uint16{8080, 9090}, func(e *env) {
		w := basicConfig(e.ip)
		w.ports[0].editHCM = edit
		w.ports[0].routes = []*route.Route{{Name: "default", Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
			Decorator: &route.Decorator{Operation: host + ":80/*"},
			Action:    &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: clusterName("http", 80, host)}}}}}
		e.cfg = w
		for _, f := range setup {
			f(e)
		}
	})
	withCollector(e, name, a)
	e.apply(t)
	return e
}

// counter is a counter's value on the waypoint's metrics.
func counter(t *testing.T, e *env, name string) float64 {
	t.Helper()
	return find(t, scrape(t, e.wp), name, nil).GetCounter().GetValue()
}

// expectCounters checks counters: exactly the value given, except
// reports, of which there may be more (how spans are batched is timing).
func expectCounters(t *testing.T, e *env, want map[string]float64) {
	t.Helper()
	mfs := scrape(t, e.wp)
	for name, v := range want {
		got := find(t, mfs, name, nil).GetCounter().GetValue()
		if got != v && !(strings.Contains(name, "reports_") && got > v) {
			t.Errorf("%s: got %v, want %v", name, got, v)
		}
	}
}

// firstRequestTags are the tags Envoy gives the span of TestTracing's
// and TestOTelTracingGRPC's first request (GET /first?q=1 with X-Tenant
// acme and User-Agent tester), custom tags included.
func firstRequestTags(resp *http.Response) map[string]string {
	return map[string]string{
		"component": "proxy", "http.method": "GET", "http.url": "http://" + host + "/first?q=1", "http.status_code": "200",
		"http.protocol": "HTTP/1.1", "response_flags": "-", "upstream_cluster": clusterName("http", 80, host), "user_agent": "tester",
		"guid:x-request-id": resp.Header.Get("X-Got-X-Request-Id"), "request_size": "0",
		"istio.canonical_service": "waypoint", "tenant": "acme", "home": "from-env",
	}
}

func expectTags(t *testing.T, got, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("span tag %s: got %q, want %q", k, got[k], v)
		}
	}
}

const zipkinCluster = "outbound|9411||zipkin.istio-system.svc.cluster.local"

func staticCluster(name string, a netip.AddrPort) *cluster.Cluster {
	return &cluster.Cluster{
		Name: name, ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC}, ConnectTimeout: durationpb.New(5 * time.Second),
		LoadAssignment: &endpoint.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
			HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: &core.Address{Address: &core.Address_SocketAddress{
				SocketAddress: &core.SocketAddress{Address: a.Addr().String(), PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(a.Port())}}}}}},
		}}}}},
	}
}

// TestTracing: real requests through a waypoint whose HCM traces to a
// Zipkin collector: each sampled request's server span arrives with
// Envoy's tags and the custom tags, parented by the caller's span
// (traceparent or B3), and the request goes upstream with the waypoint's
// span id; an incoming unsampled traceparent is honoured.
func TestTracing(t *testing.T) {
	t.Setenv("AMBIT_TRACING_TEST_ENV", "from-env")
	collector, spans := zipkinCollector(t)
	e := tracedEnv(t, tracingHCM(100), zipkinCluster, collector)
	c := e.client(t, clientID)
	next := func() zipkinV2Span { t.Helper(); return receive(t, spans) }
	upstreamContext := func(resp *http.Response) (trace, span, flags string) {
		t.Helper()
		tp := resp.Header.Get("X-Got-Traceparent")
		parts := strings.Split(tp, "-")
		if len(parts) != 4 {
			t.Fatalf("traceparent upstream: got %q, want one", tp)
		}
		if got := resp.Header.Get("X-Got-X-B3-Spanid"); got != parts[2] {
			t.Errorf("x-b3-spanid upstream: got %q, want the traceparent's span %q", got, parts[2])
		}
		return parts[1], parts[2], parts[3]
	}

	// A new trace: a root span, sampled at 100%.
	resp := c.do(t, get(t, "/first?q=1", "X-Tenant", "acme", "User-Agent", "tester"))
	expectStatus(t, resp, http.StatusOK)
	trace, span, flags := upstreamContext(resp)
	if flags != "01" {
		t.Errorf("traceparent flags upstream: got %s, want 01 (sampled)", flags)
	}
	s := next()
	if s.TraceID != trace || s.ID != span || s.ParentID != "" || s.Kind != "SERVER" {
		t.Errorf("span: got trace %s id %s parent %q kind %s, want trace %s id %s, no parent, SERVER", s.TraceID, s.ID, s.ParentID, s.Kind, trace, span)
	}
	if s.Name != host+":80/*" {
		t.Errorf("span name: got %q, want the route's decorator operation %q", s.Name, host+":80/*")
	}
	if s.Timestamp <= 0 || s.Duration <= 0 {
		t.Errorf("span timestamp and duration: got %d and %d, want both positive", s.Timestamp, s.Duration)
	}
	expectTags(t, s.Tags, firstRequestTags(resp))
	if s.Tags["upstream_address"] == "" || s.Tags["peer.address"] == "" || s.Tags["response_size"] == "0" {
		t.Errorf("span tags upstream_address %q, peer.address %q, response_size %q: want them set", s.Tags["upstream_address"], s.Tags["peer.address"], s.Tags["response_size"])
	}

	// An unsampled caller: not recorded, propagated unsampled with a new span.
	parent := "00f067aa0ba902b7"
	callerTrace := "4bf92f3577b34da6a3ce929d0e0e4736"
	resp = c.do(t, get(t, "/unsampled", "Traceparent", "00-"+callerTrace+"-"+parent+"-00"))
	trace, span, flags = upstreamContext(resp)
	if trace != callerTrace || span == parent || flags != "00" {
		t.Errorf("unsampled caller upstream: got trace %s span %s flags %s, want trace %s, a new span, flags 00", trace, span, flags, callerTrace)
	}

	// A sampled caller by traceparent: the waypoint's span is its child.
	resp = c.do(t, get(t, "/sampled", "Traceparent", "00-"+callerTrace+"-"+parent+"-01", "X-Tenant", ""))
	trace, span, _ = upstreamContext(resp)
	s = next() // spans arrive in order: the unsampled request's never came
	if s.Tags["http.url"] != "http://"+host+"/sampled" {
		t.Fatalf("next span: got one for %s, want /sampled's (the unsampled request must record none)", s.Tags["http.url"])
	}
	if s.TraceID != callerTrace || s.ParentID != parent || s.ID != span || trace != callerTrace {
		t.Errorf("child span: got trace %s parent %s id %s (upstream span %s), want trace %s parent %s", s.TraceID, s.ParentID, s.ID, span, callerTrace, parent)
	}
	if s.Tags["tenant"] != "none" {
		t.Errorf("header tag without the header: got %q, want the default none", s.Tags["tenant"])
	}

	// A sampled caller by B3 headers.
	b3Trace, b3Span := "463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312"
	resp = c.do(t, get(t, "/b3", "X-B3-Traceid", b3Trace, "X-B3-Spanid", b3Span, "X-B3-Sampled", "1"))
	trace, span, _ = upstreamContext(resp)
	if got := resp.Header.Get("X-Got-X-B3-Parentspanid"); got != b3Span {
		t.Errorf("x-b3-parentspanid upstream: got %q, want the caller's span %s", got, b3Span)
	}
	s = next()
	if s.TraceID != b3Trace || s.ParentID != b3Span || s.ID != span || trace != b3Trace {
		t.Errorf("B3 child span: got trace %s parent %s id %s, want trace %s parent %s id %s", s.TraceID, s.ParentID, s.ID, b3Trace, b3Span, span)
	}

	expectCounters(t, e, map[string]float64{"envoy_tracing_zipkin_spans_sent": 3, "envoy_tracing_zipkin_reports_sent": 1})
}

// TestTracingSampling: at 0% nothing is recorded, yet the request goes
// on with a trace context (unsampled), and a caller's sampled decision
// still wins.
func TestTracingSampling(t *testing.T) {
	collector, spans := zipkinCollector(t)
	e := newEnv(t, func(ip func(byte) netip.Addr) *waypointConfig {
		w := basicConfig(ip)
		w.ports[0].editHCM = tracingHCM(0)
		return w
	})
	withCollector(e, zipkinCluster, collector)
	e.apply(t)
	c := e.client(t, clientID)
	for range 20 {
		resp := c.do(t, get(t, "/unsampled"))
		if tp := resp.Header.Get("X-Got-Traceparent"); !strings.HasSuffix(tp, "-00") || resp.Header.Get("X-Got-X-B3-Sampled") != "0" {
			t.Fatalf("upstream trace context at 0%%: got traceparent %q x-b3-sampled %q, want unsampled", tp, resp.Header.Get("X-Got-X-B3-Sampled"))
		}
	}
	resp := c.do(t, get(t, "/forced", "X-B3-Sampled", "1"))
	expectStatus(t, resp, http.StatusOK)
	if s := receive(t, spans); s.Tags["http.url"] != "http://"+host+"/forced" {
		t.Errorf("first span at 0%%: got %s, want only the caller-sampled /forced", s.Tags["http.url"])
	}
}

// TestTracingGRPC: a gRPC call over HTTP/2 through a tracing waypoint
// makes a span with the HTTP/2 protocol and the gRPC status, and a
// failing call's span carries its status too.
func TestTracingGRPC(t *testing.T) {
	collector, spans := zipkinCollector(t)
	gs := &grpcServer{}
	e := newEnvWith(t, host, [2]uint16{80, 90}, [2]uint16{8080, 9090}, func(e *env) {
		e.cfg = grpcConfig(func(p *svcPort) { p.editHCM = tracingHCM(100) })(e.ip)
		startGRPC(t, netip.AddrPortFrom(e.ip(11), 7070), gs)
		withCollector(e, zipkinCluster, collector)
	})
	client := e.grpcClient(t, 7070)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	next := func() zipkinV2Span { t.Helper(); return receive(t, spans) }
	if _, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte("hi")}}); err != nil {
		t.Fatalf("unary call: %v", err)
	}
	s := next()
	want := map[string]string{"http.protocol": "HTTP/2", "http.method": "POST", "grpc.status_code": "0", "http.status_code": "200",
		"http.url": "http://" + host + ":7070/grpc.testing.TestService/UnaryCall"}
	for k, v := range want {
		if s.Tags[k] != v {
			t.Errorf("span tag %s: got %q, want %q", k, s.Tags[k], v)
		}
	}
	gs.fails.Store(1)
	if _, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte(fmt.Sprintf("fail:%d", codes.NotFound))}}); status.Code(err) != codes.NotFound {
		t.Fatalf("failing call: got %v, want NotFound", err)
	}
	if s := next(); s.Tags["grpc.status_code"] != "5" {
		t.Errorf("failing call's span: got grpc.status_code %q, want 5", s.Tags["grpc.status_code"])
	}
}

// TestTracingZipkinCollectorService: the Zipkin tracer configured in the
// collector_service form (what Istio's istiod, and Ambit's, send proxies
// of Istio 1.29+) reports to the service's cluster, at the URI's path,
// with its host as Host and its headers; TestTracing covers the older
// collector_cluster form.
func TestTracingZipkinCollectorService(t *testing.T) {
	type report struct {
		host, path, token, contentType string
		spans                          []zipkinV2Span
	}
	reports := make(chan report, 10)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rep := report{host: r.Host, path: r.URL.Path, token: r.Header.Get("X-Token"), contentType: r.Header.Get("Content-Type")}
		if err := json.NewDecoder(r.Body).Decode(&rep.spans); err != nil {
			t.Errorf("collector: decode spans: %v", err)
		}
		reports <- rep
		w.WriteHeader(http.StatusAccepted)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	const collectorHost = "zipkin.istio-system.svc.cluster.local"
	e := tracedEnv(t, tracingProvider(100, "envoy.tracers.zipkin", &tracev3.ZipkinConfig{
		CollectorEndpointVersion: tracev3.ZipkinConfig_HTTP_JSON, TraceId_128Bit: true, SharedSpanContext: wrapperspb.Bool(false),
		CollectorService: &core.HttpService{
			HttpUri: &core.HttpUri{Uri: "http://" + collectorHost + "/custom/spans",
				HttpUpstreamType: &core.HttpUri_Cluster{Cluster: zipkinCluster}, Timeout: durationpb.New(5 * time.Second)},
			RequestHeadersToAdd: []*core.HeaderValueOption{{Header: &core.HeaderValue{Key: "x-token", Value: "secret"},
				AppendAction: core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}},
		},
	}), zipkinCluster, netip.MustParseAddrPort(ln.Addr().String()))
	resp := e.client(t, clientID).do(t, get(t, "/first"))
	expectStatus(t, resp, http.StatusOK)
	rep := receive(t, reports)
	if rep.host != collectorHost || rep.path != "/custom/spans" || rep.token != "secret" || rep.contentType != "application/json" {
		t.Errorf("report: got host %q path %q x-token %q content type %q, want %s /custom/spans secret application/json",
			rep.host, rep.path, rep.token, rep.contentType, collectorHost)
	}
	if len(rep.spans) != 1 || len(rep.spans[0].TraceID) != 32 || rep.spans[0].Tags["http.url"] != "http://"+host+"/first" {
		t.Errorf("report spans: got %+v, want /first's span with a 128-bit trace id", rep.spans)
	}
}
