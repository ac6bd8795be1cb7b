package telemetry

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	tpb "istio.io/api/telemetry/v1alpha1"
	typev1beta1 "istio.io/api/type/v1beta1"
	telemetryv1 "istio.io/client-go/pkg/apis/telemetry/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambitmesh/ambit/istiod/meshconfig"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func tel(ns, name string, age int, spec *tpb.Telemetry) *telemetryv1.Telemetry {
	t := &telemetryv1.Telemetry{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
		CreationTimestamp: metav1.NewTime(t0.Add(time.Duration(age) * time.Hour))}}
	proto.Merge(&t.Spec, spec)
	return t
}

func refs(kind, name string) []*typev1beta1.PolicyTargetReference {
	group := "gateway.networking.k8s.io"
	if kind == "Service" {
		group = ""
	}
	return []*typev1beta1.PolicyTargetReference{{Group: group, Kind: kind, Name: name}}
}

func providers(names ...string) []*tpb.ProviderRef {
	var out []*tpb.ProviderRef
	for _, n := range names {
		out = append(out, &tpb.ProviderRef{Name: n})
	}
	return out
}

func TestFor(t *testing.T) {
	m, err := meshconfig.Parse(`
extensionProviders:
- name: zipkin
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
- name: otel
  opentelemetry: {service: otel.istio-system.svc.cluster.local, port: 4317}
- name: json
  envoyFileAccessLog: {path: /dev/stdout}
`)
	if err != nil {
		t.Fatal(err)
	}
	pct := func(v float64) *wrapperspb.DoubleValue { return wrapperspb.Double(v) }
	ts := []*telemetryv1.Telemetry{
		tel("istio-system", "mesh", 0, &tpb.Telemetry{
			Tracing:       []*tpb.Tracing{{Providers: providers("zipkin"), RandomSamplingPercentage: pct(10)}},
			AccessLogging: []*tpb.AccessLogging{{Providers: providers("envoy")}},
		}),
		tel("shop", "ns", 1, &tpb.Telemetry{
			Tracing: []*tpb.Tracing{{RandomSamplingPercentage: pct(50)}},
		}),
		tel("shop", "gw", 2, &tpb.Telemetry{TargetRefs: refs("Gateway", "waypoint"),
			AccessLogging: []*tpb.AccessLogging{{Providers: providers("json"), Filter: &tpb.AccessLogging_Filter{Expression: "response.code >= 400"}}},
			Metrics:       []*tpb.Metrics{{ReportingInterval: durationpb.New(15 * time.Second)}},
		}),
		tel("shop", "svc", 3, &tpb.Telemetry{TargetRefs: refs("Service", "ratings"),
			Tracing:       []*tpb.Tracing{{Providers: providers("otel"), DisableSpanReporting: wrapperspb.Bool(true)}},
			AccessLogging: []*tpb.AccessLogging{{Disabled: wrapperspb.Bool(true)}},
			Metrics: []*tpb.Metrics{{Overrides: []*tpb.MetricsOverrides{{
				Match:    &tpb.MetricSelector{MetricMatch: &tpb.MetricSelector_Metric{Metric: tpb.MetricSelector_ALL_METRICS}},
				Disabled: wrapperspb.Bool(true)}}}},
		}),
		tel("shop", "selected", 4, &tpb.Telemetry{Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"gateway.networking.k8s.io/gateway-name": "waypoint"}},
			Tracing: []*tpb.Tracing{{RandomSamplingPercentage: pct(99)}}}),
		tel("other", "gw", 0, &tpb.Telemetry{TargetRefs: refs("Gateway", "waypoint"),
			Tracing: []*tpb.Tracing{{RandomSamplingPercentage: pct(77)}}}),
	}
	ix := NewIndex(m, ts)

	reviews := ix.For(Target{WaypointNamespace: "shop", WaypointName: "waypoint", ServiceNamespace: "shop", ServiceName: "reviews"})
	if tr := reviews.Tracing; tr == nil || tr.Disabled || tr.Provider.GetName() != "zipkin" || *tr.RandomSamplingPercentage != 50 {
		t.Errorf("reviews tracing: got %+v, want zipkin at the namespace's 50%% (the selector one ignored)", tr)
	}
	if !reviews.AccessLogsSet || len(reviews.AccessLogs) != 1 || reviews.AccessLogs[0].Provider.GetName() != "json" ||
		reviews.AccessLogs[0].Filter != "response.code >= 400" {
		t.Errorf("reviews access logs: got %+v, want the Gateway's json log with its filter only", reviews.AccessLogs)
	}
	if len(reviews.Metrics) != 1 || reviews.Metrics[0].Provider.GetName() != "prometheus" || reviews.Metrics[0].ReportingIntervalSeconds != 15 {
		t.Errorf("reviews metrics: got %+v, want prometheus every 15s", reviews.Metrics)
	}

	ratings := ix.For(Target{WaypointNamespace: "shop", WaypointName: "waypoint", ServiceNamespace: "shop", ServiceName: "ratings"})
	if tr := ratings.Tracing; tr == nil || !tr.Disabled {
		t.Errorf("ratings tracing: got %+v, want disabled", tr)
	}
	if !ratings.AccessLogsSet || len(ratings.AccessLogs) != 0 {
		t.Errorf("ratings access logs: got %+v, want explicitly none", ratings.AccessLogs)
	}
	if len(ratings.Metrics) != 1 || !ratings.Metrics[0].DisabledAll {
		t.Errorf("ratings metrics: got %+v, want all disabled", ratings.Metrics)
	}

	// Another waypoint of the namespace: namespace-wide and root only.
	other := ix.For(Target{WaypointNamespace: "shop", WaypointName: "other"})
	if other.AccessLogs[0].Provider.GetName() != "envoy" {
		t.Errorf("other waypoint access logs: got %+v, want the root's envoy", other.AccessLogs)
	}

	// No Telemetry, no default providers: MeshConfig's fallbacks.
	none := NewIndex(m, nil).For(Target{WaypointNamespace: "shop", WaypointName: "waypoint"})
	if none.Tracing != nil || none.AccessLogsSet || len(none.Metrics) != 1 || none.Metrics[0].Provider.GetName() != "prometheus" {
		t.Errorf("no Telemetry: got %+v, want MeshConfig's fallbacks and prometheus metrics", none)
	}
}

func TestDefaultProviders(t *testing.T) {
	m, err := meshconfig.Parse(`
defaultProviders:
  tracing: [zipkin]
  accessLogging: [envoy]
extensionProviders:
- name: zipkin
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
`)
	if err != nil {
		t.Fatal(err)
	}
	c := NewIndex(m, []*telemetryv1.Telemetry{tel("shop", "off", 0, &tpb.Telemetry{
		AccessLogging: []*tpb.AccessLogging{{Disabled: wrapperspb.Bool(true)}}})}).For(Target{WaypointNamespace: "shop", WaypointName: "w"})
	if c.Tracing == nil || c.Tracing.Provider.GetName() != "zipkin" || c.Tracing.RandomSamplingPercentage != nil {
		t.Errorf("tracing: got %+v, want the default provider, MeshConfig's sampling", c.Tracing)
	}
	if !c.AccessLogsSet || len(c.AccessLogs) != 0 {
		t.Errorf("access logs: got %+v, want the default disabled by the namespace", c.AccessLogs)
	}
	if got := PrometheusMetricName("REQUEST_COUNT"); got != "requests_total" {
		t.Errorf("PrometheusMetricName: got %q", got)
	}
}

// TestEnableIstioTags: Istio's tags are on by default and the last level
// that says decides (Istio's TracingSpec.EnableIstioTags).
func TestEnableIstioTags(t *testing.T) {
	m, err := meshconfig.Parse("extensionProviders:\n- name: zipkin\n  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}\n")
	if err != nil {
		t.Fatal(err)
	}
	root := tel("istio-system", "mesh", 0, &tpb.Telemetry{Tracing: []*tpb.Tracing{{Providers: providers("zipkin")}}})
	off := tel("shop", "ns", 1, &tpb.Telemetry{Tracing: []*tpb.Tracing{{EnableIstioTags: wrapperspb.Bool(false)}}})
	on := tel("shop", "gw", 2, &tpb.Telemetry{TargetRefs: refs("Gateway", "waypoint"), Tracing: []*tpb.Tracing{{EnableIstioTags: wrapperspb.Bool(true)}}})
	tg := Target{WaypointNamespace: "shop", WaypointName: "waypoint"}
	for _, tc := range []struct {
		name string
		ts   []*telemetryv1.Telemetry
		want bool
	}{
		{"default", []*telemetryv1.Telemetry{root}, true},
		{"namespace off", []*telemetryv1.Telemetry{root, off}, false},
		{"gateway on again", []*telemetryv1.Telemetry{root, off, on}, true},
	} {
		if got := NewIndex(m, tc.ts).For(tg).Tracing.EnableIstioTags; got != tc.want {
			t.Errorf("%s: EnableIstioTags got %v, want %v", tc.name, got, tc.want)
		}
	}
}
