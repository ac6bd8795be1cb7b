package waypoint_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	celv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/filters/cel/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/structpb"
	"istio.io/api/envoy/extensions/stats"

	"github.com/ambitmesh/ambit/waypoint"
)

// TestConfiguredTelemetry: the access logs and istio.stats overrides
// istiod sends (as for a Telemetry resource) change what the waypoint
// writes and reports: a text log on stdout in the configured format, a
// JSON log appended to a file with typed values, a log with a CEL filter
// off (not evaluated), the duration histogram dropped, a tag removed and
// others set from request.host and a request header.
func TestConfiguredTelemetry(t *testing.T) {
	jsonPath := filepath.Join(t.TempDir(), "access.json")
	fileLog := func(path string, lf *core.SubstitutionFormatString) *accesslogv3.AccessLog {
		return &accesslogv3.AccessLog{Name: "envoy.access_loggers.file", ConfigType: &accesslogv3.AccessLog_TypedConfig{
			TypedConfig: mustAny(&filev3.FileAccessLog{Path: path, AccessLogFormat: &filev3.FileAccessLog_LogFormat{LogFormat: lf}})}}
	}
	text := &core.SubstitutionFormatString{Format: &core.SubstitutionFormatString_TextFormatSource{TextFormatSource: &core.DataSource{
		Specifier: &core.DataSource_InlineString{InlineString: "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE% %UPSTREAM_CLUSTER_RAW% %REQ(X-MISSING)% %RESP(X-PROTO)%\n"}}}}
	labels, err := structpb.NewStruct(map[string]any{"code": "%RESPONSE_CODE%", "authority": "%REQ(:AUTHORITY)%", "route": "at %ROUTE_NAME%", "missing": "%REQ(X-MISSING)%"})
	if err != nil {
		t.Fatal(err)
	}
	filtered := fileLog("/dev/stdout", text)
	filtered.Filter = &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ExtensionFilter{ExtensionFilter: &accesslogv3.ExtensionFilter{
		Name: "envoy.access_loggers.extension_filters.cel", ConfigType: &accesslogv3.ExtensionFilter_TypedConfig{TypedConfig: mustAny(&celv3.ExpressionFilter{Expression: "response.code >= 400"})}}}}
	statsCfg := &stats.PluginConfig{Reporter: stats.Reporter_SERVER_GATEWAY, Metrics: []*stats.MetricConfig{
		{Name: "requests_total", TagsToRemove: []string{"source_principal"}, Dimensions: map[string]string{"destination_service": "request.host", "source_app": "request.headers['x-app']"}},
		{Name: "request_duration_milliseconds", Drop: true},
	}}
	e := newEnv(t, func(ip func(byte) netip.Addr) *waypointConfig {
		w := basicConfig(ip)
		w.ports[0].httpFilters = []*hcmv3.HttpFilter{{Name: "istio.stats", IsOptional: true, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(statsCfg)}}}
		w.ports[0].editHCM = func(h *hcmv3.HttpConnectionManager) {
			h.AccessLog = []*accesslogv3.AccessLog{
				fileLog("/dev/stdout", text),
				fileLog(jsonPath, &core.SubstitutionFormatString{Format: &core.SubstitutionFormatString_JsonFormat{JsonFormat: labels}}),
				filtered,
			}
		}
		return w
	})
	stdout := &syncBuffer{}
	e.wp.Stats().SetAccessLogStdout(stdout)
	e.wp.Stats().SetWorkloads(waypoint.NewWorkloads(meshWorkloads(e.ip)))
	c := e.client(t, clientID)
	expectStatus(t, c.do(t, get(t, "/one", "X-App", "checkout")), http.StatusOK)
	// The next request on the connection is read once the last one is
	// recorded.
	expectStatus(t, c.do(t, get(t, "/two")), http.StatusOK)

	stdout.mu.Lock()
	out := stdout.b.String()
	stdout.mu.Unlock()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	// X-Proto is the backend's response header (the upstream's
	// protocol): %RESP% reads the upstream's response.
	want := "GET /one 200 " + clusterName("http", 80, host) + " - HTTP/1.1"
	if len(lines) == 0 || lines[0] != want {
		t.Fatalf("stdout access log: got %q, want first line %q and no line of the filtered log", out, want)
	}
	if len(lines) != 1 && !(len(lines) == 2 && strings.HasPrefix(lines[1], "GET /two ")) {
		t.Errorf("stdout access log: got %d lines %q, want the unfiltered log's only", len(lines), lines)
	}

	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	first, _, _ := bytes.Cut(b, []byte("\n"))
	var got map[string]any
	if err := json.Unmarshal(first, &got); err != nil {
		t.Fatalf("JSON access log line %q: %v", first, err)
	}
	wantJSON := map[string]any{"code": float64(200), "authority": host, "route": "at default", "missing": nil}
	for k, v := range wantJSON {
		if got[k] != v {
			t.Errorf("JSON access log %s: got %#v, want %#v (line %s)", k, got[k], v, first)
		}
	}

	mfs := scrape(t, e.wp)
	if mfs["istio_request_duration_milliseconds"] != nil {
		t.Errorf("istio_request_duration_milliseconds: reported, want dropped")
	}
	m := find(t, mfs, "istio_requests_total", map[string]string{"response_code": "200", "destination_service": host, "source_app": "checkout"})
	// Removed: an empty value, which Prometheus stores as no label.
	if p := labelsOf(m)["source_principal"]; p != "" {
		t.Errorf("istio_requests_total: source_principal %q, want removed (empty)", p)
	}
	if mfs["istio_request_bytes"] == nil {
		t.Errorf("istio_request_bytes: missing, want reported (not overridden)")
	}
}
