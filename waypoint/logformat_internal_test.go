package waypoint

import (
	"encoding/json"
	"net/http"
	"os"
	"strconv"
	"testing"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// renderedThreeWays is format f for e as a file log's text line, as the
// value of a JSON log's key (decoded), and as an OpenTelemetry log's
// attribute.
func renderedThreeWays(t *testing.T, e *accessEntry, format string) (text string, js any, otel string) {
	t.Helper()
	f, err := config.ParseLogFormat(format)
	if err != nil {
		t.Fatalf("parse %q: %v", format, err)
	}
	text = string(e.render(&config.AccessLog{Text: f}))
	line := e.render(&config.AccessLog{JSON: []config.FileLogField{{Key: "v", QuotedKey: `"v"`, Format: f}}})
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		t.Fatalf("%q: JSON line %q: %v", format, line, err)
	}
	kvs := e.keyValues([]config.LogKeyValue{{Key: "v", Value: &config.LogValue{Format: f}}})
	return text, m["v"], kvs[0].GetValue().GetStringValue()
}

// TestLogOperatorsRenderedAlike: each command operator says the same in
// a file log's text, a JSON log (typed: a number for codes, bytes,
// durations and ports, null when missing) and an OpenTelemetry log's
// attribute, for an HTTP request and for a TCP connection.
func TestLogOperatorsRenderedAlike(t *testing.T) {
	t.Setenv("AMBIT_LOG_TEST", "on")
	host, _ := os.Hostname()
	r := benchRecord()
	r.path = "/api/v1/reviews?id=7"
	r.req.Header.Set("X-Quote", "a\"b\\c\u2028")
	r.req.Header.Add("X-Multi", "1")
	r.req.Header.Add("X-Multi", "2")
	r.Details, r.Retries, r.grpc, r.GRPCStatus = "via_upstream", 2, true, "14"
	r.resp = &http.Response{Header: http.Header{"X-Envoy-Upstream-Service-Time": {"3"}}, Trailer: http.Header{"Grpc-Message": {"fine"}}}
	r.trace = &spanContext{traceID: "4bf92f3577b34da6a3ce929d0e0e4736", spanID: "00f067aa0ba902b7"}
	r.ci.localSAN = "spiffe://cluster.local/ns/default/sa/waypoint"
	r.ci.fs["io.istio.peer_principal"] = "spiffe://cluster.local/ns/default/sa/productpage"
	r.ci.meta = map[string]map[string]string{"istio": {"double_hbone.target": "reviews:9080"}}
	e := r.accessEntry("UF,URX", "spiffe://cluster.local/ns/default/sa/productpage", 120, 4300, 3500000)
	unix := strconv.FormatInt(r.start.Unix(), 10)

	type row struct {
		format string
		want   string // text and OTel; "-" is JSON null
		num    bool   // a number in JSON
	}
	http := []row{
		{"%START_TIME%", "2026-12-03T16:40:05.123Z", false},
		{"%START_TIME(%s.%3f)%", unix + ".123", false},
		{"%START_TIME(%Y/%m/%d %H:%M:%E6S %f %9f %1f)%", "2026/12/03 16:40:05.123456 123456789 123456789 1", false},
		{"%REQ(:METHOD)%", "GET", false},
		{"%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "/api/v1/reviews?id=7", false},
		{"%REQ(:AUTHORITY)%", "reviews.default.svc.cluster.local", false},
		{"%REQ(USER-AGENT):6%", "fortio", false},
		{"%REQ(x-request-id)%", "2f1c7a5e-6a51-4e8a-9d0b-7b9e0a6c1d2e", false},
		{"%REQ(X-MISSING)%", "-", false},
		{"%REQ(X-MISSING?X-FORWARDED-FOR)%", "10.0.0.7", false},
		{"%REQ(X-MULTI)%", "1,2", false},
		{"%REQ(X-QUOTE)%", "a\"b\\c\u2028", false},
		{"%REQ_WITHOUT_QUERY(:PATH)%", "/api/v1/reviews", false},
		{"%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", "3", false},
		{"%RESP(X-MISSING)%", "-", false},
		{"%TRAILER(GRPC-MESSAGE)%", "fine", false},
		{"%METHOD%", "GET", false},
		{"%PATH%", "/api/v1/reviews?id=7", false},
		{"%PATH(NQ)%", "/api/v1/reviews", false},
		{"%PATH(WQ:ORIG)%", "-", false},
		{"%PROTOCOL%", "HTTP/1.1", false},
		{"%RESPONSE_CODE%", "200", true},
		{"%RESPONSE_FLAGS%", "UF,URX", false},
		{"%RESPONSE_FLAGS_LONG%", "UpstreamConnectionFailure,UpstreamRetryLimitExceeded", false},
		{"%RESPONSE_CODE_DETAILS%", "via_upstream", false},
		{"%CONNECTION_TERMINATION_DETAILS%", "-", false},
		{"%UPSTREAM_TRANSPORT_FAILURE_REASON%", "-", false},
		{"%BYTES_RECEIVED%", "120", true},
		{"%BYTES_SENT%", "4300", true},
		{"%DURATION%", "3", true},
		{"%UPSTREAM_HOST%", "10.0.1.4:9080", false},
		{"%UPSTREAM_HOST:7%", "10.0.1.", false},
		{"%UPSTREAM_REMOTE_ADDRESS%", "10.0.1.4:9080", false},
		{"%UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "10.0.1.4", false},
		{"%UPSTREAM_REMOTE_PORT%", "9080", true},
		{"%UPSTREAM_CLUSTER%", "inbound-vip|9080|http|reviews.default.svc.cluster.local", false},
		{"%UPSTREAM_CLUSTER_RAW%", "inbound-vip|9080|http|reviews.default.svc.cluster.local", false},
		{"%UPSTREAM_LOCAL_ADDRESS%", "-", false},
		{"%UPSTREAM_REQUEST_ATTEMPT_COUNT%", "3", true},
		{"%DOWNSTREAM_LOCAL_ADDRESS%", "10.0.0.9:15008", false},
		{"%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", "10.0.0.9", false},
		{"%DOWNSTREAM_LOCAL_PORT%", "15008", true},
		{"%DOWNSTREAM_REMOTE_ADDRESS%", "10.0.0.7:43210", false},
		{"%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "10.0.0.7", false},
		{"%DOWNSTREAM_REMOTE_PORT%", "43210", true},
		{"%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%", "10.0.0.7:43210", false},
		{"%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%", "10.0.0.7", false},
		{"%DOWNSTREAM_DIRECT_REMOTE_PORT%", "43210", true},
		{"%DOWNSTREAM_PEER_URI_SAN%", "spiffe://cluster.local/ns/default/sa/productpage", false},
		{"%DOWNSTREAM_LOCAL_URI_SAN%", "spiffe://cluster.local/ns/default/sa/waypoint", false},
		{"%REQUESTED_SERVER_NAME%", "-", false},
		{"%ROUTE_NAME%", "default", false},
		{"%GRPC_STATUS%", "Unavailable", false},
		{"%GRPC_STATUS(CAMEL_STRING)%", "Unavailable", false},
		{"%GRPC_STATUS(SNAKE_STRING)%", "UNAVAILABLE", false},
		{"%GRPC_STATUS(NUMBER)%", "14", true},
		{"%GRPC_STATUS_NUMBER%", "14", true},
		{"%TRACE_ID%", "4bf92f3577b34da6a3ce929d0e0e4736", false},
		{"%HOSTNAME%", host, false},
		{"%ENVIRONMENT(AMBIT_LOG_TEST)%", "on", false},
		{"%ENVIRONMENT(AMBIT_LOG_TEST_UNSET)%", "-", false},
		{"%FILTER_STATE(io.istio.peer_principal:PLAIN)%", "spiffe://cluster.local/ns/default/sa/productpage", false},
		{"%FILTER_STATE(missing)%", "-", false},
		{"%DYNAMIC_METADATA(istio:double_hbone:target)%", "reviews:9080", false},
		{"%METADATA(ROUTE:a)%", "-", false},
		{"%CEL(request.path)%", "-", false},
		// Not one operator: a string in JSON, missing values "-".
		{"code=%RESPONSE_CODE% %REQ(X-MISSING)% 100%%", "code=200 - 100%", false},
		{"plain", "plain", false},
	}
	check := func(t *testing.T, e *accessEntry, rows []row) {
		for _, tc := range rows {
			text, js, otel := renderedThreeWays(t, e, tc.format)
			if text != tc.want {
				t.Errorf("%s: text %q, want %q", tc.format, text, tc.want)
			}
			if otel != tc.want {
				t.Errorf("%s: OTel attribute %q, want %q", tc.format, otel, tc.want)
			}
			var want any = tc.want
			switch {
			case tc.num:
				n, _ := strconv.ParseFloat(tc.want, 64)
				want = n
			case tc.want == "-" && tc.format[0] == '%' && tc.format[len(tc.format)-1] == '%':
				want = nil
			}
			if js != want {
				t.Errorf("%s: JSON %#v, want %#v", tc.format, js, want)
			}
		}
	}
	check(t, e, http)

	tcp := &accessEntry{start: r.start, tcp: true, flags: "UF", details: "upstream_connect_failed", received: 7, sent: 9,
		duration: 1500000, cluster: "outbound|443||db", local: r.ci.local, remote: r.ci.remote, peer: "spiffe://x"}
	check(t, tcp, []row{
		{"%REQ(:METHOD)%", "-", false},
		{"%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", "-", false},
		{"%PROTOCOL%", "-", false},
		{"%RESPONSE_CODE%", "0", true},
		{"%RESPONSE_FLAGS_LONG%", "UpstreamConnectionFailure", false},
		{"%RESPONSE_CODE_DETAILS%", "-", false},
		{"%CONNECTION_TERMINATION_DETAILS%", "upstream_connect_failed", false},
		{"%BYTES_RECEIVED% %BYTES_SENT% %DURATION%", "7 9 1", false},
		{"%UPSTREAM_CLUSTER%", "outbound|443||db", false},
		{"%UPSTREAM_HOST%", "-", false},
		{"%DOWNSTREAM_PEER_URI_SAN%", "spiffe://x", false},
		{"%GRPC_STATUS%", "-", false},
		{"%UPSTREAM_REQUEST_ATTEMPT_COUNT%", "0", true},
	})
}

// TestOmitEmptyValues: omit_empty_values renders a missing value as ""
// in text and leaves a JSON key out.
func TestOmitEmptyValues(t *testing.T) {
	e := benchRecord().accessEntry("-", "", 1, 2, 0)
	f, err := config.ParseLogFormat("[%REQ(X-MISSING)%] %RESPONSE_CODE%")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(e.render(&config.AccessLog{Text: f, OmitEmpty: true})), "[] 200"; got != want {
		t.Errorf("text: got %q, want %q", got, want)
	}
	missing, _ := config.ParseLogFormat("%REQ(X-MISSING)%")
	code, _ := config.ParseLogFormat("%RESPONSE_CODE%")
	al := &config.AccessLog{OmitEmpty: true, JSON: []config.FileLogField{{Key: "a", QuotedKey: `"a"`, Format: missing}, {Key: "b", QuotedKey: `"b"`, Format: code}}}
	if got, want := string(e.render(al)), "{\"b\":200}\n"; got != want {
		t.Errorf("JSON: got %q, want %q", got, want)
	}
}

// TestAppendJSONString: what a JSON log escapes, checked by decoding.
func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "plain", "q\"b\\s/", "\x00\x1f\n\r\t", "<&>", "é€😀", "\u2028"} {
		b := appendJSONString(nil, []byte(s))
		var got string
		if err := json.Unmarshal(b, &got); err != nil || got != s {
			t.Errorf("%q: encoded %s, decoded %q (%v)", s, b, got, err)
		}
	}
	if got, want := string(appendJSONString(nil, []byte("a\xffb"))), `"a\ufffdb"`; got != want {
		t.Errorf("invalid UTF-8: got %s, want %s", got, want)
	}
}
