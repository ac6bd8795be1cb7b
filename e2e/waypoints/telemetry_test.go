package waypoints

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/wrapperspb"
	tpb "istio.io/api/telemetry/v1alpha1"
	typev1beta1 "istio.io/api/type/v1beta1"
	telemetryv1 "istio.io/client-go/pkg/apis/telemetry/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambitmesh/ambit/e2e/internal/labmesh"
	"github.com/ambitmesh/ambit/istiod/meshconfig"
)

// telemetry (the last subtest of TestWaypoints: it changes the
// mesh-wide MeshConfig): MeshConfig (ConfigMap istio) names a Zipkin
// provider, and a Telemetry attached to namespace ns's waypoint Gateway
// "waypoint" sets its tracing and access logs as in Istio. With sampling
// 0 the requests the backend gets through the waypoint carry a trace
// context that is not sampled; changing the Telemetry to 100% (and
// turning on the built-in "envoy" access log) reaches the running
// waypoint, and every request is then sampled. c is a client in ns
// whose requests to Service echo pass that waypoint.
func (s *suite) telemetry(t *testing.T, ctx context.Context, ns string, c *http.Client) {
	l := s.l
	// The collector: any HTTP server takes the spans' POSTs.
	if _, err := l.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "zipkin", Namespace: ns},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "echo"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 9411, TargetPort: intstr.FromString("http")}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The chart's MeshConfig (none set), edited as a user would.
	cms := l.Client.CoreV1().ConfigMaps(labmesh.IstiodNamespace)
	cm, err := cms.Get(ctx, meshconfig.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the chart's MeshConfig: %v", err)
	}
	cm.Data[meshconfig.ConfigMapKey] = `
extensionProviders:
- name: zipkin
  zipkin:
    service: zipkin.` + ns + `.svc.cluster.local
    port: 9411
`
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	tels := s.istio.TelemetryV1().Telemetries(ns)
	spec := func(pct float64, phase string, logs bool) *tpb.Telemetry {
		sp := &tpb.Telemetry{
			TargetRefs: []*typev1beta1.PolicyTargetReference{{Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: "waypoint"}},
			Tracing: []*tpb.Tracing{{Providers: []*tpb.ProviderRef{{Name: "zipkin"}}, RandomSamplingPercentage: wrapperspb.Double(pct),
				CustomTags: map[string]*tpb.Tracing_CustomTag{"phase": {Type: &tpb.Tracing_CustomTag_Literal{Literal: &tpb.Tracing_Literal{Value: phase}}}}}},
		}
		if logs {
			sp.AccessLogging = []*tpb.AccessLogging{{Providers: []*tpb.ProviderRef{{Name: "envoy"}}}}
		}
		return sp
	}
	tel := &telemetryv1.Telemetry{ObjectMeta: metav1.ObjectMeta{Name: "waypoint-tracing", Namespace: ns}}
	first := spec(0, "phase-none", false)
	tel.Spec.TargetRefs, tel.Spec.Tracing = first.TargetRefs, first.Tracing
	if tel, err = tels.Create(ctx, tel, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s.waitWaypointDump(t, ctx, ns, "waypoint", 1, "zipkin tracing at 0%", func(d string) bool {
		return strings.Contains(d, "envoy.tracers.zipkin") && strings.Contains(d, "phase-none") && !strings.Contains(d, "envoy.access_loggers.file")
	})
	sampled := func(t *testing.T, want string) {
		t.Helper()
		for i := range 5 {
			r := get(t, ctx, c, s.url(ns, "echo", "/traced"), nil)
			tp := r.report.Headers["Traceparent"]
			if r.code != 200 || len(tp) != 1 || !strings.HasSuffix(tp[0], "-"+want) {
				t.Fatalf("request %d: got %d with traceparent %v, want 200 and a trace context with flags %s", i, r.code, tp, want)
			}
		}
	}
	sampled(t, "00")

	// 100% and access logs on: the running waypoint gets it.
	next := spec(100, "phase-all", true)
	tel.Spec.Tracing, tel.Spec.AccessLogging = next.Tracing, next.AccessLogging
	if _, err = tels.Update(ctx, tel, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	s.waitWaypointDump(t, ctx, ns, "waypoint", 1, "zipkin tracing at 100% and the envoy access log", func(d string) bool {
		return strings.Contains(d, "phase-all") && strings.Contains(d, "envoy.access_loggers.file")
	})
	sampled(t, "01")
}
