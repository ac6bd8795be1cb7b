package waypoint

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	trace "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	fileal "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tracingtype "github.com/envoyproxy/go-control-plane/envoy/type/tracing/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"istio.io/api/envoy/extensions/stats"
	telemetryv1 "istio.io/client-go/pkg/apis/telemetry/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambitmesh/ambit/istiod/ambient"
	"github.com/ambitmesh/ambit/istiod/meshconfig"
	"github.com/ambitmesh/ambit/istiod/telemetry"
)

// telemetryBuilder is a builder for waypoint shop/waypoint over the
// telemetry golden case's cluster (its collectors), with mesh as
// MeshConfig and ts as the only Telemetry objects.
func telemetryBuilder(t *testing.T, mesh string, ts ...string) *builder {
	t.Helper()
	f, err := os.Open("testdata/telemetry/input.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	o, err := loadObjects(f)
	if err != nil {
		t.Fatal(err)
	}
	mc, err := meshconfig.Parse(mesh)
	if err != nil {
		t.Fatal(err)
	}
	var tels []*telemetryv1.Telemetry
	for _, s := range ts {
		var tel telemetryv1.Telemetry
		if err := yaml.Unmarshal([]byte(s), &tel); err != nil {
			t.Fatal(err)
		}
		tels = append(tels, &tel)
	}
	cfg := ambient.Config{}.WithDefaults()
	in := o.input(cfg)
	in.Telemetry = telemetry.NewIndex(mc, tels)
	return &builder{cfg: cfg, in: in, sc: &scope{ref: Ref{Namespace: "shop", Name: "waypoint"}}, notes: map[string][]string{}}
}

const zipkinMesh = `
extensionProviders:
- name: zipkin
  zipkin:
    service: zipkin.istio-system.svc.cluster.local
    port: 9411
    headers:
    - name: x-token
      value: secret
`

func chainTracing(t *testing.T, b *builder) *hcm.HttpConnectionManager_Tracing {
	t.Helper()
	tr := b.tracing(b.chainTelemetry(nil).Tracing)
	if tr == nil {
		t.Fatalf("tracing: got none (notes %q)", b.telNotes)
	}
	return tr
}

func tagNames(tags []*tracingtype.CustomTag) []string {
	var out []string
	for _, t := range tags {
		out = append(out, t.GetTag())
	}
	return out
}

// TestZipkinCollectorService: a zipkin provider becomes the
// collector_service form Istio's pilot sends proxies of Istio 1.29+
// (tracing.go zipkinConfig): http://<host><path> on the outbound cluster,
// a 5 s timeout when the provider sets none, its headers, B3 context.
func TestZipkinCollectorService(t *testing.T) {
	b := telemetryBuilder(t, zipkinMesh, `
metadata: {name: mesh, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: zipkin}]
`)
	tr := chainTracing(t, b)
	var z trace.ZipkinConfig
	if err := tr.GetProvider().GetTypedConfig().UnmarshalTo(&z); err != nil {
		t.Fatal(err)
	}
	hs := z.GetCollectorService()
	if z.GetCollectorCluster() != "" || z.GetCollectorEndpoint() != "" || z.GetCollectorHostname() != "" {
		t.Errorf("zipkin: got the pre-1.29 fields cluster %q endpoint %q hostname %q, want only collector_service",
			z.GetCollectorCluster(), z.GetCollectorEndpoint(), z.GetCollectorHostname())
	}
	const host = "zipkin.istio-system.svc.cluster.local"
	if got, want := hs.GetHttpUri().GetUri(), "http://"+host+"/api/v2/spans"; got != want {
		t.Errorf("collector_service uri: got %q, want %q", got, want)
	}
	if got, want := hs.GetHttpUri().GetCluster(), "outbound|9411||"+host; got != want {
		t.Errorf("collector_service cluster: got %q, want %q", got, want)
	}
	if got := hs.GetHttpUri().GetTimeout().AsDuration(); got != 5*time.Second {
		t.Errorf("collector_service timeout: got %v, want Istio's default 5s", got)
	}
	if h := hs.GetRequestHeadersToAdd(); len(h) != 1 || h[0].GetHeader().GetKey() != "x-token" || h[0].GetHeader().GetValue() != "secret" {
		t.Errorf("collector_service headers: got %v, want x-token: secret", h)
	}
	if z.GetTraceContextOption() != trace.ZipkinConfig_USE_B3 || !z.GetTraceId_128Bit() || z.GetCollectorEndpointVersion() != trace.ZipkinConfig_HTTP_JSON {
		t.Errorf("zipkin: got context %v, 128-bit %v, version %v; want USE_B3, true, HTTP_JSON", z.GetTraceContextOption(), z.GetTraceId_128Bit(), z.GetCollectorEndpointVersion())
	}
	if err := tr.Validate(); err != nil {
		t.Error(err)
	}
}

// TestWaypointSpanTags: a waypoint's spans get Istio's tags as Istio's
// pilot gives them (tracing.go configureCustomTags): its own literal tags
// and the dry-run policy tags unless enableIstioTags is false, the
// peers' source and destination tags always, then the user's.
func TestWaypointSpanTags(t *testing.T) {
	peer := []string{}
	for _, side := range []string{"destination", "source"} {
		for _, f := range []string{"app", "app_version", "canonical_revision", "canonical_service", "cluster_id", "instance_name", "namespace", "workload", "workload_type"} {
			peer = append(peer, "istio."+side+"_"+f)
		}
	}
	istio := []string{"istio.authorization.dry_run.allow_policy.name", "istio.authorization.dry_run.allow_policy.result",
		"istio.authorization.dry_run.deny_policy.name", "istio.authorization.dry_run.deny_policy.result",
		"istio.canonical_revision", "istio.canonical_service", "istio.cluster_id", "istio.mesh_id", "istio.namespace"}
	sorted := func(s ...[]string) []string { out := slices.Concat(s...); slices.Sort(out); return out }
	for _, tc := range []struct {
		name, enable string
		want         []string
	}{
		{"istio tags", "", sorted(istio, peer, []string{"team"})},
		{"enableIstioTags false", "enableIstioTags: false", sorted(peer, []string{"team"})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := telemetryBuilder(t, zipkinMesh, `
metadata: {name: mesh, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: zipkin}]
    customTags: {team: {literal: {value: shop}}}
    `+tc.enable)
			tr := chainTracing(t, b)
			if diff := cmp.Diff(tc.want, tagNames(tr.GetCustomTags())); diff != "" {
				t.Errorf("tags (-want +got):\n%s", diff)
			}
			for _, tag := range tr.GetCustomTags() {
				switch tag.GetTag() {
				case "istio.source_workload":
					if got, want := tag.GetValue(), "%FILTER_STATE(downstream_peer_obj:FIELD:workload)%"; got != want {
						t.Errorf("istio.source_workload: got %q, want %q", got, want)
					}
				case "istio.destination_cluster_id":
					if got, want := tag.GetValue(), "%FILTER_STATE(upstream_peer_obj:FIELD:cluster)%"; got != want {
						t.Errorf("istio.destination_cluster_id: got %q, want %q", got, want)
					}
				case "istio.authorization.dry_run.deny_policy.result":
					md := tag.GetMetadata().GetMetadataKey()
					if md.GetKey() != "envoy.filters.http.rbac" || len(md.GetPath()) != 1 || md.GetPath()[0].GetKey() != "istio_dry_run_deny_shadow_engine_result" {
						t.Errorf("dry-run deny result tag: got %v, want the RBAC filter's istio_dry_run_deny_shadow_engine_result", md)
					}
				case "istio.mesh_id":
					if got := tag.GetLiteral().GetValue(); got != "cluster.local" {
						t.Errorf("istio.mesh_id: got %q, want the trust domain", got)
					}
				}
			}
		})
	}
}

// TestCustomTagsOneConverter: MeshConfig's defaultConfig.tracing.customTags
// and a Telemetry's customTags of the same kinds become the same Envoy
// tags (one converter, duplicates D4).
func TestCustomTagsOneConverter(t *testing.T) {
	const tags = `{lit: {literal: {value: v}}, env: {environment: {name: E, defaultValue: d}}, hdr: {header: {name: x-h, defaultValue: d}}}`
	fromMesh := telemetryBuilder(t, zipkinMesh+"defaultConfig:\n  tracing:\n    customTags: "+tags+"\n", `
metadata: {name: mesh, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: zipkin}]
`)
	fromTelemetry := telemetryBuilder(t, zipkinMesh, `
metadata: {name: mesh, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: zipkin}]
    customTags: `+tags)
	m, tl := chainTracing(t, fromMesh).GetCustomTags(), chainTracing(t, fromTelemetry).GetCustomTags()
	if diff := cmp.Diff(tl, m, protocmp.Transform()); diff != "" {
		t.Errorf("tags from MeshConfig (-Telemetry +MeshConfig):\n%s", diff)
	}
	if !slices.Contains(tagNames(m), "env") || !slices.Contains(tagNames(m), "hdr") || !slices.Contains(tagNames(m), "lit") {
		t.Errorf("tags: got %v, want env, hdr and lit among them", tagNames(m))
	}
}

// TestStatsHostHeaderFallback: the istio.stats filter of a waypoint
// chain disables the Host header fallback, as Istio's pilot does for its
// waypoint chains (inbound class).
func TestStatsHostHeaderFallback(t *testing.T) {
	b := telemetryBuilder(t, "")
	filters := b.applyHTTPTelemetry(&hcm.HttpConnectionManager{}, nil)
	if len(filters) != 1 {
		t.Fatalf("stats filters: got %d, want 1", len(filters))
	}
	var pc stats.PluginConfig
	if err := filters[0].GetTypedConfig().UnmarshalTo(&pc); err != nil {
		t.Fatal(err)
	}
	if !pc.GetDisableHostHeaderFallback() || pc.GetReporter() != stats.Reporter_SERVER_GATEWAY {
		t.Errorf("stats config: got disable_host_header_fallback %v reporter %v, want true and SERVER_GATEWAY", pc.GetDisableHostHeaderFallback(), pc.GetReporter())
	}
}

// TestAccessLogReqWithoutQueryFormatter: a format using
// %REQ_WITHOUT_QUERY% names Envoy's formatter extension for it (Envoy
// refuses the format otherwise), as Istio's pilot adds it.
func TestAccessLogReqWithoutQueryFormatter(t *testing.T) {
	for _, tc := range []struct{ name, mesh string }{
		{"text", `accessLogFile: /dev/stdout
accessLogFormat: "%REQ_WITHOUT_QUERY(:PATH)% %RESPONSE_CODE%"`},
		{"json", `accessLogFile: /dev/stdout
accessLogEncoding: JSON
accessLogFormat: '{"path": "%REQ_WITHOUT_QUERY(:PATH)%"}'`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := telemetryBuilder(t, tc.mesh)
			logs := b.accessLogs(b.chainTelemetry(nil))
			if len(logs) != 1 {
				t.Fatalf("access logs: got %d, want 1", len(logs))
			}
			var fl fileal.FileAccessLog
			if err := logs[0].GetTypedConfig().UnmarshalTo(&fl); err != nil {
				t.Fatal(err)
			}
			fs := fl.GetLogFormat().GetFormatters()
			if len(fs) != 1 || fs[0].GetName() != "envoy.formatter.req_without_query" {
				t.Errorf("formatters: got %v, want envoy.formatter.req_without_query", fs)
			}
			if err := fl.Validate(); err != nil {
				t.Error(err)
			}
		})
	}
	b := telemetryBuilder(t, "accessLogFile: /dev/stdout")
	var fl fileal.FileAccessLog
	if err := b.accessLogs(b.chainTelemetry(nil))[0].GetTypedConfig().UnmarshalTo(&fl); err != nil {
		t.Fatal(err)
	}
	if fs := fl.GetLogFormat().GetFormatters(); len(fs) != 0 || !strings.Contains(fl.GetLogFormat().GetTextFormatSource().GetInlineString(), "%START_TIME%") {
		t.Errorf("default format: got formatters %v, want none (Istio's default format has no REQ_WITHOUT_QUERY)", fs)
	}
}
