package istio_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tracingtype "github.com/envoyproxy/go-control-plane/envoy/type/tracing/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"istio.io/api/envoy/extensions/stats"
	tpb "istio.io/api/telemetry/v1alpha1"
	telemetryv1 "istio.io/client-go/pkg/apis/telemetry/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambitmesh/ambit/e2e/internal/labmesh"
	"github.com/ambitmesh/ambit/e2e/istio"
	"github.com/ambitmesh/ambit/internal/anytypes"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/istiod/ambient"
	"github.com/ambitmesh/ambit/istiod/meshconfig"
	"github.com/ambitmesh/ambit/istiod/telemetry"
	"github.com/ambitmesh/ambit/istiod/waypoint"
)

// webChain is the waypoint's HTTP chain of Service shop/web, in Istio's
// name.
const webChain = "inbound-vip|80|http|web.shop.svc." + lab.ClusterDomain

// telemetryAsIstio applies MeshConfig's extension providers (istio.MeshConfig,
// which Istio's istiod runs with) and two Telemetry objects, one mesh-wide
// in the root namespace (a file access log with a custom format, Zipkin
// tracing at 20% with custom tags) and one for namespace shop (tracing
// at 50%, a metric disabled, a metric's tags overridden), then compares
// the HTTP connection manager of the waypoint's web chain as Istio's
// istiod sent it (read from the Go waypoint's /config_dump) with what
// Ambit's istiod builds (istiod/waypoint) from the same objects, listed
// from the same kube-apiserver: the tracing (provider, collector,
// sampling, tags), the access logs (format, path, formatters) and the
// istio.stats filter's config (reporter, overrides).
func (m *mesh) telemetryAsIstio(t *testing.T) {
	ctx := t.Context()
	// The collectors' Services (nothing serves them: the test compares
	// configuration).
	for _, c := range []*corev1.Service{
		{
			ObjectMeta: metav1.ObjectMeta{Name: "zipkin", Namespace: labmesh.IstiodNamespace},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "zipkin"},
				Ports: []corev1.ServicePort{{Name: "http-zipkin", Port: 9411, TargetPort: intstr.FromInt32(9411)}}},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "otel-collector", Namespace: labmesh.IstiodNamespace},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "otel-collector"},
				Ports: []corev1.ServicePort{{Name: "grpc-otlp", Port: 4317, TargetPort: intstr.FromInt32(4317)}}},
		},
	} {
		if _, err := m.l.Client.CoreV1().Services(c.Namespace).Create(ctx, c, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	root := &telemetryv1.Telemetry{ObjectMeta: metav1.ObjectMeta{Name: "mesh-default", Namespace: labmesh.IstiodNamespace}}
	root.Spec.AccessLogging = []*tpb.AccessLogging{{Providers: []*tpb.ProviderRef{{Name: "custom-log"}}}}
	root.Spec.Tracing = []*tpb.Tracing{{
		Providers:                []*tpb.ProviderRef{{Name: "zipkin"}},
		RandomSamplingPercentage: wrapperspb.Double(20),
		CustomTags: map[string]*tpb.Tracing_CustomTag{
			"team":   {Type: &tpb.Tracing_CustomTag_Literal{Literal: &tpb.Tracing_Literal{Value: "shop"}}},
			"tenant": {Type: &tpb.Tracing_CustomTag_Header{Header: &tpb.Tracing_RequestHeader{Name: "x-tenant", DefaultValue: "none"}}},
			"node":   {Type: &tpb.Tracing_CustomTag_Environment{Environment: &tpb.Tracing_Environment{Name: "NODE_NAME", DefaultValue: "unknown"}}},
		},
	}}
	shop := &telemetryv1.Telemetry{ObjectMeta: metav1.ObjectMeta{Name: "shop", Namespace: "shop"}}
	shop.Spec.Tracing = []*tpb.Tracing{{RandomSamplingPercentage: wrapperspb.Double(50)}}
	shop.Spec.Metrics = []*tpb.Metrics{{
		Providers: []*tpb.ProviderRef{{Name: "prometheus"}},
		Overrides: []*tpb.MetricsOverrides{
			{Match: &tpb.MetricSelector{MetricMatch: &tpb.MetricSelector_Metric{Metric: tpb.MetricSelector_REQUEST_DURATION}},
				Disabled: wrapperspb.Bool(true)},
			{Match: &tpb.MetricSelector{MetricMatch: &tpb.MetricSelector_Metric{Metric: tpb.MetricSelector_REQUEST_COUNT}, Mode: tpb.WorkloadMode_SERVER},
				TagOverrides: map[string]*tpb.MetricsOverrides_TagOverride{
					"source_principal": {Operation: tpb.MetricsOverrides_TagOverride_REMOVE},
					"request_protocol": {Value: "request.protocol"},
				}},
		},
	}}
	for _, tel := range []*telemetryv1.Telemetry{root, shop} {
		if _, err := m.istio.TelemetryV1().Telemetries(tel.Namespace).Create(ctx, tel, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = m.istio.TelemetryV1().Telemetries(tel.Namespace).Delete(context.Background(), tel.Name, metav1.DeleteOptions{})
		})
	}

	// Istio's, once its push with both Telemetry objects reached the
	// waypoint.
	var theirs *hcm.HttpConnectionManager
	var lastErr error
	if _, err := m.mesh.WaitWaypoint(ctx, "shop", "waypoint", 1, "Istio's telemetry config", func(dump string) bool {
		h, err := dumpedHCM(dump, webChain)
		if err != nil {
			lastErr = err
			return false
		}
		if h.GetTracing().GetRandomSampling().GetValue() != 50 || len(h.GetAccessLog()) == 0 {
			lastErr = fmt.Errorf("chain %s: tracing %v, %d access logs: not yet the Telemetry's", webChain, h.GetTracing(), len(h.GetAccessLog()))
			return false
		}
		theirs = h
		return true
	}); err != nil {
		t.Fatalf("%v (last: %v)", err, lastErr)
	}

	// Ambit's, from the same objects.
	res, err := m.ambitWaypoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ours, err := builtHCM(res, webChain)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.TelemetryNotes) > 0 {
		t.Errorf("Ambit's istiod noted: %q", res.TelemetryNotes)
	}

	opts := []cmp.Option{protocmp.Transform(),
		// Sorted by tag name on both sides; equal names keep no order.
		protocmp.SortRepeated(func(a, b *tracingtype.CustomTag) bool { return a.GetTag() < b.GetTag() }),
	}
	if diff := cmp.Diff(theirs.GetTracing(), ours.GetTracing(), opts...); diff != "" {
		t.Errorf("tracing of %s (-Istio's +Ambit's):\n%s", webChain, diff)
	}
	if diff := cmp.Diff(theirs.GetAccessLog(), ours.GetAccessLog(), opts...); diff != "" {
		t.Errorf("access logs of %s (-Istio's +Ambit's):\n%s", webChain, diff)
	}
	theirStats, err := statsConfig(theirs)
	if err != nil {
		t.Fatalf("Istio's: %v", err)
	}
	ourStats, err := statsConfig(ours)
	if err != nil {
		t.Fatalf("Ambit's: %v", err)
	}
	if diff := cmp.Diff(theirStats, ourStats, protocmp.Transform()); diff != "" {
		t.Errorf("istio.stats config of %s (-Istio's +Ambit's):\n%s", webChain, diff)
	}
	// And what the comparison rests on is there at all.
	if len(theirStats.GetMetrics()) != 2 || theirs.GetTracing().GetProvider().GetName() != "envoy.tracers.zipkin" || len(theirs.GetAccessLog()) != 1 {
		t.Errorf("Istio's config of %s: got metrics %v, tracer %q, %d access logs; want 2 overrides, zipkin, 1 log",
			webChain, theirStats.GetMetrics(), theirs.GetTracing().GetProvider().GetName(), len(theirs.GetAccessLog()))
	}

	// The namespace's tracing moved to the OpenTelemetry provider: its
	// service name (the waypoint's service cluster), exporter and
	// resource as Istio's.
	tels := m.istio.TelemetryV1().Telemetries("shop")
	cur, err := tels.Get(ctx, shop.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Spec.Tracing = []*tpb.Tracing{{Providers: []*tpb.ProviderRef{{Name: "otel"}}, RandomSamplingPercentage: wrapperspb.Double(50)}}
	if _, err := tels.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	theirs = nil
	if _, err := m.mesh.WaitWaypoint(ctx, "shop", "waypoint", 1, "Istio's OpenTelemetry tracing", func(dump string) bool {
		h, err := dumpedHCM(dump, webChain)
		if err != nil {
			lastErr = err
			return false
		}
		if h.GetTracing().GetProvider().GetName() != "envoy.tracers.opentelemetry" {
			lastErr = fmt.Errorf("chain %s: tracer %q: not yet the Telemetry's", webChain, h.GetTracing().GetProvider().GetName())
			return false
		}
		theirs = h
		return true
	}); err != nil {
		t.Fatalf("%v (last: %v)", err, lastErr)
	}
	if res, err = m.ambitWaypoint(ctx); err != nil {
		t.Fatal(err)
	}
	if ours, err = builtHCM(res, webChain); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(theirs.GetTracing(), ours.GetTracing(), opts...); diff != "" {
		t.Errorf("OpenTelemetry tracing of %s (-Istio's +Ambit's):\n%s", webChain, diff)
	}

	for line := range strings.Lines(m.pilot.Logs(1 << 20)) {
		if strings.Contains(line, "NACK") || strings.Contains(line, "ACK ERROR") {
			t.Errorf("Istio's istiod logged a rejection: %s", line)
		}
	}
}

// dumpedHCM is the HTTP connection manager of the filter chain named
// chain in a waypoint's /config_dump.
func dumpedHCM(dump, chain string) (*hcm.HttpConnectionManager, error) {
	var cd adminv3.ConfigDump
	if err := (protojson.UnmarshalOptions{Resolver: anytypes.Lenient{}, DiscardUnknown: true}).Unmarshal([]byte(dump), &cd); err != nil {
		return nil, fmt.Errorf("decode config dump: %w", err)
	}
	var ls []*listener.Listener
	for _, c := range cd.GetConfigs() {
		var ld adminv3.ListenersConfigDump
		if c.MessageIs(&ld) {
			if err := c.UnmarshalTo(&ld); err != nil {
				return nil, fmt.Errorf("decode listeners dump: %w", err)
			}
			for _, dl := range ld.GetDynamicListeners() {
				var l listener.Listener
				if err := dl.GetActiveState().GetListener().UnmarshalTo(&l); err != nil {
					return nil, fmt.Errorf("decode listener %s: %w", dl.GetName(), err)
				}
				ls = append(ls, &l)
			}
		}
	}
	return chainHCM(ls, chain)
}

// builtHCM is the HTTP connection manager of chain in res.
func builtHCM(res *waypoint.Resources, chain string) (*hcm.HttpConnectionManager, error) {
	// Through the wire form, as a proxy gets it.
	var ls []*listener.Listener
	for _, l := range res.Listeners {
		b, err := proto.Marshal(l)
		if err != nil {
			return nil, err
		}
		var c listener.Listener
		if err := proto.Unmarshal(b, &c); err != nil {
			return nil, err
		}
		ls = append(ls, &c)
	}
	return chainHCM(ls, chain)
}

func chainHCM(ls []*listener.Listener, chain string) (*hcm.HttpConnectionManager, error) {
	var names []string
	for _, l := range ls {
		for _, fc := range l.GetFilterChains() {
			names = append(names, fc.GetName())
			if fc.GetName() != chain {
				continue
			}
			for _, f := range fc.GetFilters() {
				var h hcm.HttpConnectionManager
				if f.GetTypedConfig().MessageIs(&h) {
					if err := f.GetTypedConfig().UnmarshalTo(&h); err != nil {
						return nil, fmt.Errorf("chain %s: %w", chain, err)
					}
					return &h, nil
				}
			}
			return nil, fmt.Errorf("chain %s: no HTTP connection manager", chain)
		}
	}
	sort.Strings(names)
	return nil, fmt.Errorf("no chain %s (chains %q)", chain, names)
}

// statsConfig is the config of the HCM's istio.stats filter.
func statsConfig(h *hcm.HttpConnectionManager) (*stats.PluginConfig, error) {
	for _, f := range h.GetHttpFilters() {
		if f.GetName() != "istio.stats" {
			continue
		}
		var pc stats.PluginConfig
		if err := f.GetTypedConfig().UnmarshalTo(&pc); err != nil {
			return nil, fmt.Errorf("istio.stats config: %w", err)
		}
		return &pc, nil
	}
	return nil, fmt.Errorf("no istio.stats filter")
}

// ambitWaypoint is what Ambit's istiod builds for waypoint shop/waypoint
// from the lab's objects, with the MeshConfig Istio's istiod runs with.
func (m *mesh) ambitWaypoint(ctx context.Context) (*waypoint.Resources, error) {
	c := m.l.Client
	var st ambient.State
	nss, err := c.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range nss.Items {
		st.Namespaces = append(st.Namespaces, &nss.Items[i])
	}
	pods, err := c.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range pods.Items {
		st.Pods = append(st.Pods, &pods.Items[i])
	}
	svcs, err := c.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	byName := map[string]*corev1.Service{}
	for i := range svcs.Items {
		s := &svcs.Items[i]
		st.Services = append(st.Services, s)
		byName[s.Namespace+"/"+s.Name] = s
	}
	eps, err := c.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range eps.Items {
		st.EndpointSlices = append(st.EndpointSlices, &eps.Items[i])
	}
	nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range nodes.Items {
		st.Nodes = append(st.Nodes, &nodes.Items[i])
	}
	sas, err := c.CoreV1().ServiceAccounts("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range sas.Items {
		st.ServiceAccounts = append(st.ServiceAccounts, &sas.Items[i])
	}
	gwc, err := gwclient.NewForConfig(m.l.RESTConfig)
	if err != nil {
		return nil, err
	}
	gws, err := gwc.GatewayV1().Gateways("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range gws.Items {
		st.Gateways = append(st.Gateways, &gws.Items[i])
	}
	tl, err := m.istio.TelemetryV1().Telemetries("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	tels := tl.Items
	mc, err := meshconfig.Parse(istio.MeshConfig)
	if err != nil {
		return nil, err
	}
	cfg := ambient.Config{ClusterID: "Kubernetes", TrustDomain: "cluster.local", DomainSuffix: lab.ClusterDomain}
	in := &waypoint.Input{
		Config: cfg, Addresses: ambient.Build(st, cfg).Addresses,
		Service:   func(ns, name string) *corev1.Service { return byName[ns+"/"+name] },
		Telemetry: telemetry.NewIndex(mc, tels),
	}
	return waypoint.Build(in, waypoint.Ref{Namespace: "shop", Name: "waypoint"})
}
