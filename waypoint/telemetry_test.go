package waypoint_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/waypoint"
)

// syncBuffer is an access log the test reads while the waypoint writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(s.b.Bytes()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("access log line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// meshWorkloads is what istiod's workload API says of the test's pods:
// the client (.1), the server pods (.11, .12) and the service.
func meshWorkloads(ip func(byte) netip.Addr) []*workload.Address {
	wl := func(name, sa, rev string, h byte) *workload.Address {
		return &workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{
			Uid: "Kubernetes//Pod/shop/" + name + "-" + rev + "-abc", Name: name + "-" + rev + "-abc", Namespace: "shop",
			Addresses: [][]byte{ip(h).AsSlice()}, ServiceAccount: sa, WorkloadName: name + "-" + rev,
			CanonicalName: name, CanonicalRevision: rev, ClusterId: "Kubernetes",
		}}}
	}
	return []*workload.Address{
		wl("client", "client", "v1", 1), wl("server", "server", "v1", 11), wl("server", "server2", "v2", 12),
		{Type: &workload.Address_Service{Service: &workload.Service{Name: "server", Namespace: "shop", Hostname: host}}},
	}
}

// scrape reads the waypoint's /stats/prometheus as Prometheus does.
func scrape(t *testing.T, wp *waypoint.Proxy) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(wp.Stats())
	srv := httptest.NewServer(wp.AdminHandler(reg, nil))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/stats/prometheus")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse metrics: %v", err)
	}
	return mfs
}

func labelsOf(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// find is the one metric of family name whose labels include want.
func find(t *testing.T, mfs map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	t.Helper()
	mf := mfs[name]
	if mf == nil {
		t.Fatalf("metric %s: missing", name)
	}
	var found []*dto.Metric
	for _, m := range mf.GetMetric() {
		l := labelsOf(m)
		ok := true
		for k, v := range want {
			if l[k] != v {
				ok = false
			}
		}
		if ok {
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		var all []string
		for _, m := range mf.GetMetric() {
			all = append(all, fmt.Sprint(labelsOf(m)))
		}
		t.Fatalf("metric %s with %v: got %d series, want 1; have:\n%s", name, want, len(found), strings.Join(all, "\n"))
	}
	return found[0]
}

// Istio's standard labels (istio/proxy istio_stats.cc), HTTP and TCP.
var (
	istioTCPLabels = []string{"reporter",
		"source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
		"source_canonical_service", "source_canonical_revision", "source_cluster",
		"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
		"destination_service", "destination_service_name", "destination_service_namespace",
		"destination_canonical_service", "destination_canonical_revision", "destination_cluster",
		"request_protocol", "response_flags", "connection_security_policy"}
	istioHTTPLabels = append(append([]string(nil), istioTCPLabels...), "response_code", "grpc_response_status")
	// Envoy's default histogram buckets.
	envoyBuckets = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}
)

// TestTelemetry: real requests and a TCP connection through the
// waypoint, then a scrape of its metrics: Istio's names, types, labels
// (with peer metadata from the workload API) and values, Envoy's
// response flags, and one JSON access-log line per request with the
// request ids the backend got.
func TestTelemetry(t *testing.T) {
	e := newEnv(t, func(ip func(byte) netip.Addr) *waypointConfig {
		w := basicConfig(ip)
		w.ports[0].routes = []*route.Route{prefixRoute("/ok", clusterName("http", 80, host)),
			prefixRoute("/down", clusterName("http", 80, "down."+host))}
		w.extraClusters = map[string][]netip.AddrPort{clusterName("http", 80, "down."+host): {netip.AddrPortFrom(ip(13), 8080)}}
		return w
	})
	log := &syncBuffer{}
	e.wp.Stats().SetAccessLog(log)
	e.wp.Stats().SetNode(waypoint.NodeInfo{Namespace: "shop", ClusterID: "Kubernetes"})
	e.wp.Stats().SetWorkloads(waypoint.NewWorkloads(meshWorkloads(e.ip)))

	c := e.client(t, clientID)
	const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	for i := range 3 {
		req := get(t, "/ok")
		if i == 0 {
			req.Header.Set("Traceparent", traceparent)
			req.Header.Set("X-Request-Id", "given-id")
		}
		resp := c.do(t, req)
		expectStatus(t, resp, http.StatusOK)
		tp, id := resp.Header.Get("X-Got-Traceparent"), resp.Header.Get("X-Got-X-Request-Id")
		if i == 0 && (tp != traceparent || id != "given-id") {
			t.Errorf("ids the backend got: traceparent %q, x-request-id %q; want the client's %q and %q", tp, id, traceparent, "given-id")
		}
		if i > 0 && (!regexp.MustCompile(`^00-[0-9a-f]{32}-[0-9a-f]{16}-00$`).MatchString(tp) ||
			!regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(id)) {
			t.Errorf("ids the backend got: traceparent %q, x-request-id %q; want a generated traceparent and UUID", tp, id)
		}
	}
	expectStatus(t, c.do(t, get(t, "/none")), http.StatusNotFound)
	expectStatus(t, c.do(t, get(t, "/down")), http.StatusServiceUnavailable)

	// The next request on the connection is read once the last one is
	// recorded.
	expectStatus(t, c.do(t, get(t, "/ok")), http.StatusOK)

	tc := e.tunnel(t, clientID, e.vip(90))
	fmt.Fprintf(tc, "hello\n")
	line, err := bufio.NewReader(tc).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	tc.Close()

	base := map[string]string{
		"reporter": "waypoint", "source_workload": "client-v1", "source_workload_namespace": "shop",
		"source_principal": clientID.String(), "source_app": "unknown", "source_version": "unknown",
		"source_canonical_service": "client", "source_canonical_revision": "v1", "source_cluster": "Kubernetes",
		"destination_service": host, "destination_service_name": "server", "destination_service_namespace": "shop",
		"destination_cluster": "Kubernetes", "connection_security_policy": "mutual_tls",
		"destination_app": "unknown", "destination_version": "unknown",
	}
	with := func(m map[string]string, kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range m {
			out[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	server := with(base, "destination_workload", "server-v1", "destination_workload_namespace", "shop",
		"destination_principal", "spiffe://cluster.local/ns/shop/sa/server", "destination_canonical_service", "server",
		"destination_canonical_revision", "v1")

	// The TCP connection's close is counted once the waypoint sees it.
	var mfs map[string]*dto.MetricFamily
	for range 200 {
		mfs = scrape(t, e.wp)
		if mfs["istio_tcp_connections_closed_total"] != nil {
			break
		}
		c.do(t, get(t, "/ok")) // a round trip: lets the close through
	}
	mfs = scrape(t, e.wp)

	types := map[string]dto.MetricType{
		"istio_requests_total": dto.MetricType_COUNTER, "istio_request_duration_milliseconds": dto.MetricType_HISTOGRAM,
		"istio_request_bytes": dto.MetricType_HISTOGRAM, "istio_response_bytes": dto.MetricType_HISTOGRAM,
		"istio_tcp_connections_opened_total": dto.MetricType_COUNTER, "istio_tcp_connections_closed_total": dto.MetricType_COUNTER,
		"istio_tcp_sent_bytes_total": dto.MetricType_COUNTER, "istio_tcp_received_bytes_total": dto.MetricType_COUNTER,
		"istio_build": dto.MetricType_GAUGE,
	}
	for name, typ := range types {
		mf := mfs[name]
		if mf == nil {
			t.Errorf("metric %s: missing", name)
			continue
		}
		if mf.GetType() != typ {
			t.Errorf("metric %s: type %v, want %v", name, mf.GetType(), typ)
		}
		want := istioHTTPLabels
		switch {
		case strings.HasPrefix(name, "istio_tcp_"):
			want = istioTCPLabels
		case name == "istio_build":
			want = []string{"component", "tag"}
		}
		for _, m := range mf.GetMetric() {
			var got []string
			for k := range labelsOf(m) {
				got = append(got, k)
			}
			if diff := cmp.Diff(sorted(want), sorted(got)); diff != "" {
				t.Errorf("metric %s: label names (-want +got):\n%s", name, diff)
			}
		}
	}

	ok := with(server, "request_protocol", "http", "response_code", "200", "response_flags", "-", "grpc_response_status", "")
	if got := find(t, mfs, "istio_requests_total", ok).GetCounter().GetValue(); got < 3 {
		t.Errorf("istio_requests_total 200: got %v, want at least 3", got)
	}
	h := find(t, mfs, "istio_request_duration_milliseconds", ok).GetHistogram()
	var bounds []float64
	for _, b := range h.GetBucket() {
		bounds = append(bounds, b.GetUpperBound())
	}
	if diff := cmp.Diff(append(envoyBuckets, math.Inf(1)), bounds); diff != "" {
		t.Errorf("duration buckets (-want +got):\n%s", diff)
	}
	if h.GetSampleCount() < 3 {
		t.Errorf("duration count: got %d, want at least 3", h.GetSampleCount())
	}
	// GET /ok with Host and the client's headers: more than 50 bytes in;
	// the backend's answer (status line, echoed headers, body) out.
	if rb := find(t, mfs, "istio_request_bytes", ok).GetHistogram(); rb.GetSampleSum() < 3*50 {
		t.Errorf("request bytes: sum %v over %d requests, want at least 50 each", rb.GetSampleSum(), rb.GetSampleCount())
	}
	if rb := find(t, mfs, "istio_response_bytes", ok).GetHistogram(); rb.GetSampleSum() < 3*100 {
		t.Errorf("response bytes: sum %v over %d requests, want at least 100 each", rb.GetSampleSum(), rb.GetSampleCount())
	}
	unknownDst := map[string]string{"destination_workload": "unknown", "destination_principal": "unknown", "destination_canonical_revision": "unknown"}
	find(t, mfs, "istio_requests_total", with(with(base, "response_code", "404", "response_flags", "NR"), flatten(unknownDst)...))
	down := with(with(base, "response_code", "503", "response_flags", "UF", "destination_service", "down."+host, "destination_service_name", "down"), flatten(unknownDst)...)
	find(t, mfs, "istio_requests_total", down)

	tcp := with(server, "request_protocol", "tcp", "response_flags", "-")
	if got := find(t, mfs, "istio_tcp_connections_opened_total", tcp).GetCounter().GetValue(); got != 1 {
		t.Errorf("tcp opened: got %v, want 1", got)
	}
	find(t, mfs, "istio_tcp_connections_closed_total", tcp)
	if got := find(t, mfs, "istio_tcp_received_bytes_total", tcp).GetCounter().GetValue(); got != float64(len("hello\n")) {
		t.Errorf("tcp received bytes: got %v, want %d", got, len("hello\n"))
	}
	if got := find(t, mfs, "istio_tcp_sent_bytes_total", tcp).GetCounter().GetValue(); got != float64(len(line)) {
		t.Errorf("tcp sent bytes: got %v, want %d", got, len(line))
	}
	find(t, mfs, "istio_build", map[string]string{"component": "proxy", "tag": waypoint.IstioVersion})

	// The access log: a line per request, Istio's JSON fields.
	lines := log.lines(t)
	var first, nr, uf, tcpLine map[string]any
	for _, l := range lines {
		switch {
		case l["request_id"] == "given-id":
			first = l
		case l["response_code"] == float64(404):
			nr = l
		case l["response_code"] == float64(503):
			uf = l
		case l["method"] == nil:
			tcpLine = l
		}
	}
	if first == nil || nr == nil || uf == nil || tcpLine == nil {
		t.Fatalf("access log: got %d lines, want those of the first request, the 404, the 503 and the TCP connection:\n%v", len(lines), lines)
	}
	for _, k := range []string{"start_time", "route_name", "method", "path", "protocol", "response_code", "response_flags",
		"response_code_details", "connection_termination_details", "upstream_transport_failure_reason", "bytes_received",
		"bytes_sent", "duration", "upstream_service_time", "x_forwarded_for", "user_agent", "request_id", "authority",
		"upstream_host", "upstream_cluster", "upstream_local_address", "downstream_local_address", "downstream_remote_address",
		"requested_server_name"} {
		if _, ok := first[k]; !ok {
			t.Errorf("access log: field %s missing in %v", k, first)
		}
	}
	for k, want := range map[string]any{"method": "GET", "path": "/ok", "protocol": "HTTP/1.1", "response_code": float64(200),
		"response_flags": "-", "response_code_details": "via_upstream", "authority": host, "traceparent": traceparent,
		"upstream_cluster": clusterName("http", 80, host), "downstream_local_address": e.vip(80).String()} {
		if first[k] != want {
			t.Errorf("access log of the first request: %s = %v, want %v", k, first[k], want)
		}
	}
	if nr["response_flags"] != "NR" || nr["response_code_details"] != "route_not_found" {
		t.Errorf("access log of the 404: flags %v, details %v; want NR, route_not_found", nr["response_flags"], nr["response_code_details"])
	}
	if uf["response_flags"] != "UF" {
		t.Errorf("access log of the 503: flags %v, want UF", uf["response_flags"])
	}
	if tcpLine["bytes_received"] != float64(len("hello\n")) || tcpLine["upstream_cluster"] != clusterName("tcp", 90, host) {
		t.Errorf("access log of the TCP connection: got %v, want %d bytes received through %s", tcpLine, len("hello\n"), clusterName("tcp", 90, host))
	}
}

func flatten(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, k, v)
	}
	return out
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// TestResponseFlags: Envoy's flags and details in the metrics and the
// access log: URX when the retries ran out (with UF), and an RBAC denial
// (no flag; details rbac_access_denied_matched_policy[...]).
func TestResponseFlags(t *testing.T) {
	down := clusterName("http", 80, "down."+host)
	e := newEnv(t, func(ip func(byte) netip.Addr) *waypointConfig {
		w := basicConfig(ip)
		r := prefixRoute("/retry", down)
		r.GetRoute().RetryPolicy = &route.RetryPolicy{RetryOn: "connect-failure", NumRetries: wrapU32(1)}
		w.ports[0].routes = []*route.Route{r, prefixRoute("/", clusterName("http", 80, host))}
		w.extraClusters = map[string][]netip.AddrPort{down: {netip.AddrPortFrom(ip(13), 8080)}}
		w.ports[0].httpFilters = []*hcmFilter{rbacFilter("rbac-deny", rbacv3.RBAC_DENY, map[string]*rbacv3.Policy{"ns[shop]-policy[no admin]-rule[0]": {
			Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_UrlPath{UrlPath: &pathMatcher{Rule: &pathMatcherPath{Path: prefix("/admin")}}}}},
			Principals:  []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Any{Any: true}}}}})}
		return w
	})
	log := &syncBuffer{}
	e.wp.Stats().SetAccessLog(log)
	c := e.client(t, clientID)
	expectStatus(t, c.do(t, get(t, "/retry")), http.StatusServiceUnavailable)
	expectStatus(t, c.do(t, get(t, "/admin")), http.StatusForbidden)
	// The next request on the connection is read once the last one is
	// recorded.
	expectStatus(t, c.do(t, get(t, "/")), http.StatusOK)
	// A smuggling attempt: refused as Envoy's codec refuses it (DPE); the
	// connection closes once it is recorded.
	bad := e.tunnel(t, clientID, e.vip(80))
	io.WriteString(bad, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
	if out, _ := io.ReadAll(bad); !strings.HasPrefix(string(out), "HTTP/1.1 400 ") {
		t.Errorf("smuggling attempt: got %q, want 400", out)
	}
	// A transfer coding the codec does not read: 501, as Envoy's codec.
	gzip := e.tunnel(t, clientID, e.vip(80))
	io.WriteString(gzip, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n")
	if out, _ := io.ReadAll(gzip); !strings.HasPrefix(string(out), "HTTP/1.1 501 ") {
		t.Errorf("gzip transfer coding: got %q, want 501", out)
	}
	mfs := scrape(t, e.wp)
	find(t, mfs, "istio_requests_total", map[string]string{"response_code": "400", "response_flags": "DPE"})
	find(t, mfs, "istio_requests_total", map[string]string{"response_code": "501", "response_flags": "DPE"})
	find(t, mfs, "istio_requests_total", map[string]string{"response_code": "503", "response_flags": "UF,URX"})
	find(t, mfs, "istio_requests_total", map[string]string{"response_code": "403", "response_flags": "-"})
	var details []any
	for _, l := range log.lines(t) {
		if l["response_code"] == float64(200) {
			continue
		}
		details = append(details, l["response_flags"], l["response_code_details"])
	}
	want := []any{"UF,URX", "upstream_reset_before_response_started{connection_failure}", "-", "rbac_access_denied_matched_policy[ns[shop]-policy[no_admin]-rule[0]]",
		"DPE", "http1.codec_error", "DPE", "http1.invalid_transfer_encoding"}
	if diff := cmp.Diff(want, details); diff != "" {
		t.Errorf("access log flags and details (-want +got):\n%s", diff)
	}
}

// TestTCPTelemetryUpstreamDown: a tcp_proxy connection whose upstream
// cannot be reached is counted opened and closed with flag UF, and logged.
func TestTCPTelemetryUpstreamDown(t *testing.T) {
	e := newEnv(t, func(ip func(byte) netip.Addr) *waypointConfig {
		w := basicConfig(ip)
		w.backends = []netip.AddrPort{netip.AddrPortFrom(ip(13), 8080)} // no ztunnel serves .13
		return w
	})
	log := &syncBuffer{}
	e.wp.Stats().SetAccessLog(log)
	c := e.tunnel(t, clientID, e.vip(90))
	fmt.Fprintf(c, "hello\n")
	// The waypoint closes the connection once it has recorded it.
	if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
		t.Fatal("read through a tcp_proxy without upstream: got a line, want the connection closed")
	}
	mfs := scrape(t, e.wp)
	for _, name := range []string{"istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total"} {
		if got := find(t, mfs, name, map[string]string{"response_flags": "UF", "request_protocol": "tcp"}).GetCounter().GetValue(); got != 1 {
			t.Errorf("%s with UF: got %v, want 1", name, got)
		}
	}
	lines := log.lines(t)
	if len(lines) != 1 || lines[0]["response_flags"] != "UF" || lines[0]["upstream_cluster"] != clusterName("tcp", 90, host) {
		t.Errorf("access log: got %v, want one line with UF through %s", lines, clusterName("tcp", 90, host))
	}
}
