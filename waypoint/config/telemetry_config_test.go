//lint:file-ignore SA1019 Envoy still honours its deprecated access-log fields, and a control plane may send them

package config

import (
	"strings"
	"testing"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"istio.io/api/envoy/extensions/stats"
)

func TestParseStatExpr(t *testing.T) {
	for _, tc := range []struct {
		in, kind, lit, header string
		err                   bool
	}{
		{in: "request.host", kind: "request.host"},
		{in: " request.url_path ", kind: "request.url_path"},
		{in: "'fixed'", kind: "literal", lit: "fixed"},
		{in: `"fixed"`, kind: "literal", lit: "fixed"},
		{in: "request.headers['X-App']", kind: "request.header", header: "x-app"},
		{in: "request.headers[x]", err: true},
		{in: "upstream_peer.labels['app'].value", err: true},
		{in: "request.host + 'x'", err: true},
	} {
		e, err := ParseStatExpr(tc.in)
		if tc.err {
			if err == nil || !strings.Contains(err.Error(), "not supported") && !strings.Contains(err.Error(), "want request.headers") {
				t.Errorf("ParseStatExpr(%q): err %v, want a refusal naming what is supported", tc.in, err)
			}
			continue
		}
		if err != nil || e.Kind != tc.kind || e.Literal != tc.lit || e.Header != tc.header {
			t.Errorf("ParseStatExpr(%q) = %+v, %v; want kind %q literal %q header %q", tc.in, e, err, tc.kind, tc.lit, tc.header)
		}
	}
}

func TestBuildStats(t *testing.T) {
	a, err := anypb.New(&stats.PluginConfig{Reporter: stats.Reporter_SERVER_GATEWAY, Metrics: []*stats.MetricConfig{
		{Name: "requests_total", TagsToRemove: []string{"source_principal"}, Dimensions: map[string]string{
			"destination_service": "request.host", "request_host": "request.host", "source_app": "filter_state['x']"}},
		{Drop: true},
		{Name: "my_custom"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	st, warns, err := buildStats(a)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Overrides || !st.Drop["requests_total"] || !st.Drop["tcp_sent_bytes_total"] {
		t.Errorf("drop: got %v, want every metric (an unnamed metric config is all of them)", st.Drop)
	}
	if got := st.Remove["requests_total"]; len(got) != 1 || got[0] != "source_principal" {
		t.Errorf("remove: got %v", got)
	}
	if e := st.Values["requests_total"]["destination_service"]; e == nil || e.Kind != "request.host" {
		t.Errorf("destination_service: got %+v, want request.host", e)
	}
	joined := strings.Join(warns, "\n")
	for _, w := range []string{"tag request_host: only Istio's standard labels", "tag source_app: expression", "my_custom: custom metrics are not supported"} {
		if !strings.Contains(joined, w) {
			t.Errorf("warnings %q: want one saying %q", joined, w)
		}
	}
}

func TestBuildFileAccessLogs(t *testing.T) {
	file := func(fl *filev3.FileAccessLog) *accesslogv3.AccessLog {
		a, err := anypb.New(fl)
		if err != nil {
			t.Fatal(err)
		}
		return &accesslogv3.AccessLog{Name: AccessLoggerFile, ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: a}}
	}
	filtered := file(&filev3.FileAccessLog{Path: "/dev/stdout"})
	filtered.Filter = &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ExtensionFilter{
		ExtensionFilter: &accesslogv3.ExtensionFilter{Name: "envoy.access_loggers.extension_filters.cel"}}}
	als, warns := buildFileAccessLogs([]*accesslogv3.AccessLog{
		file(&filev3.FileAccessLog{Path: "/dev/stdout"}),
		filtered,
		file(&filev3.FileAccessLog{Path: "/tmp/x", AccessLogFormat: &filev3.FileAccessLog_Format{Format: "%UPSTREAM_WIRE_BYTES_SENT% %REQ(A?B):3%\n"}}),
		file(&filev3.FileAccessLog{Path: "/tmp/y", AccessLogFormat: &filev3.FileAccessLog_Format{Format: "%FOO% %REQ(A)%\n"}}),
	})
	if len(als) != 2 {
		t.Fatalf("got %d logs, want 2 (the filtered one and the one with an unknown operator off)", len(als))
	}
	if parts := als[0].Text.Parts; len(parts) < 2 || parts[0].Literal != "[" || parts[1].Code != OpStartTime {
		t.Errorf("default format: got %+v, want Envoy's default", als[0].Text)
	}
	p := als[1].Text.Parts[2]
	if p.Code != OpReq || p.Arg != "a" || p.Alt != "b" || p.Max != 3 {
		t.Errorf("REQ(A?B):3: got %+v", p)
	}
	joined := strings.Join(warns, "\n")
	for _, w := range []string{
		"filters (envoy.access_loggers.extension_filters.cel) are not evaluated",
		"UPSTREAM_WIRE_BYTES_SENT not recorded by the waypoint; logged as -",
		`format "%FOO% %REQ(A)%\n": operator FOO: not a known command operator; this log is off`,
	} {
		if !strings.Contains(joined, w) {
			t.Errorf("warnings %q: want one saying %q", joined, w)
		}
	}
}
