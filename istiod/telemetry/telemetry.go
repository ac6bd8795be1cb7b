// Package telemetry computes what Istio's Telemetry API
// (telemetry.istio.io/v1 Telemetry) and MeshConfig ask of one waypoint's
// HTTP and TCP chains, merged as Istio's pilot/pkg/model/telemetry.go
// merges them, in the order root namespace, namespace, then policies
// attached by targetRefs (each level overriding the one before):
//
//   - the root namespace's mesh-wide Telemetry (no selector, no
//     targetRefs; the oldest if there are several);
//   - the waypoint's namespace-wide one, and, for a chain of a Service
//     of another namespace, that namespace's too;
//   - those of the chain's namespace whose targetRefs name the waypoint's
//     Gateway, the chain's Service, or (in the root namespace) the
//     istio-waypoint GatewayClass. A Telemetry with only a selector
//     never applies to a waypoint, as in Istio.
//
// The mode of a waypoint is SERVER (Istio builds waypoint chains as
// inbound). The result says which providers apply; istiod/waypoint
// translates it to Envoy config.
package telemetry

import (
	"sort"
	"strings"

	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	tpb "istio.io/api/telemetry/v1alpha1"
	telemetryv1 "istio.io/client-go/pkg/apis/telemetry/v1"

	"github.com/ambitmesh/ambit/istiod/meshconfig"
)

// Target is what a chain belongs to: a waypoint and, for a service's
// chain, the Service.
type Target struct {
	WaypointNamespace, WaypointName string
	// ServiceNamespace and ServiceName are empty for a chain of no
	// service (direct-http, direct-tcp).
	ServiceNamespace, ServiceName string
}

// Tracing is the merged tracing of a chain.
type Tracing struct {
	// Provider is the extension provider spans go to; nil: none (the
	// chain samples and propagates, and records nothing).
	Provider *meshv1alpha1.MeshConfig_ExtensionProvider
	// Disabled: no tracing config at all (disableSpanReporting, or no
	// provider found).
	Disabled bool
	// RandomSamplingPercentage, when set; else MeshConfig's.
	RandomSamplingPercentage *float64
	CustomTags               map[string]*tpb.Tracing_CustomTag
	// EnableIstioTags: spans get Istio's own tags (the proxy's canonical
	// service, namespace, mesh and cluster, and the dry-run policy
	// results); true unless a Telemetry's enableIstioTags says false.
	EnableIstioTags bool
}

// AccessLog is one access log provider of a chain with its filter.
type AccessLog struct {
	Provider *meshv1alpha1.MeshConfig_ExtensionProvider
	// Filter is a CEL expression ("" for none).
	Filter string
}

// MetricOverride is one metric's merged override.
type MetricOverride struct {
	// Name is Istio's enum name (REQUEST_COUNT) or a custom metric's.
	Name     string
	Disabled bool
	// Tags: upserted tags with their CEL value, and removed tags.
	Tags   map[string]string
	Remove []string
}

// Metrics is one metrics provider's merged config.
type Metrics struct {
	Provider  *meshv1alpha1.MeshConfig_ExtensionProvider
	Overrides []MetricOverride // sorted by name
	// ReportingInterval of TCP metrics in seconds (0: the default).
	ReportingIntervalSeconds float64
	// DisabledAll: an override disabled ALL_METRICS (Istio then emits no
	// stats filter).
	DisabledAll bool
}

// Config is what applies to one chain.
type Config struct {
	// Tracing is nil when no Telemetry and no default provider says
	// anything: MeshConfig's enableTracing and defaultConfig.tracing
	// then decide (Istio's fallback).
	Tracing *Tracing
	// AccessLogsSet: Telemetry or defaultProviders decided the access
	// logs (AccessLogs, possibly none); false: MeshConfig's
	// accessLogFile decides.
	AccessLogsSet bool
	AccessLogs    []AccessLog
	// Metrics are the metrics providers in force (Istio's default:
	// "prometheus" when none is named anywhere).
	Metrics []Metrics
}

// Index holds the cluster's Telemetry objects by namespace, oldest
// first, and the MeshConfig they refer to.
type Index struct {
	mesh   *meshv1alpha1.MeshConfig
	rootNS string
	byNS   map[string][]*telemetryv1.Telemetry
}

// NewIndex indexes ts under mesh (rootNS: MeshConfig's root namespace).
func NewIndex(mesh *meshv1alpha1.MeshConfig, ts []*telemetryv1.Telemetry) *Index {
	if mesh == nil {
		mesh = meshconfig.Default()
	}
	ix := &Index{mesh: mesh, rootNS: mesh.GetRootNamespace(), byNS: map[string][]*telemetryv1.Telemetry{}}
	if ix.rootNS == "" {
		ix.rootNS = "istio-system"
	}
	sorted := append([]*telemetryv1.Telemetry(nil), ts...)
	sort.SliceStable(sorted, func(i, j int) bool {
		a, b := sorted[i], sorted[j]
		if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
			return a.CreationTimestamp.Before(&b.CreationTimestamp)
		}
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	for _, t := range sorted {
		ix.byNS[t.Namespace] = append(ix.byNS[t.Namespace], t)
	}
	return ix
}

// Mesh is the MeshConfig of the index.
func (ix *Index) Mesh() *meshv1alpha1.MeshConfig { return ix.mesh }

func targetRefs(t *telemetryv1.Telemetry) []interface {
	GetGroup() string
	GetKind() string
	GetName() string
	GetNamespace() string
} {
	var out []interface {
		GetGroup() string
		GetKind() string
		GetName() string
		GetNamespace() string
	}
	if r := t.Spec.GetTargetRef(); r != nil {
		out = append(out, r)
	}
	for _, r := range t.Spec.GetTargetRefs() {
		out = append(out, r)
	}
	return out
}

func namespaceWide(t *telemetryv1.Telemetry) bool {
	return len(t.Spec.GetSelector().GetMatchLabels()) == 0 && len(targetRefs(t)) == 0
}

func (ix *Index) namespaceWide(ns string) *telemetryv1.Telemetry {
	for _, t := range ix.byNS[ns] {
		if namespaceWide(t) {
			return t
		}
	}
	return nil
}

// attaches says whether t, of the chain's namespace, names the target.
func (ix *Index) attaches(t *telemetryv1.Telemetry, tg Target) bool {
	for _, r := range targetRefs(t) {
		if r.GetNamespace() != "" && r.GetNamespace() != t.Namespace {
			continue
		}
		switch {
		case r.GetGroup() == "gateway.networking.k8s.io" && r.GetKind() == "Gateway":
			if t.Namespace == tg.WaypointNamespace && r.GetName() == tg.WaypointName {
				return true
			}
		case r.GetGroup() == "" && r.GetKind() == "Service":
			if tg.ServiceName != "" && t.Namespace == tg.ServiceNamespace && r.GetName() == tg.ServiceName {
				return true
			}
		case r.GetGroup() == "gateway.networking.k8s.io" && r.GetKind() == "GatewayClass":
			if t.Namespace == ix.rootNS && r.GetName() == "istio-waypoint" {
				return true
			}
		}
	}
	return false
}

// applicable are the Telemetry objects of a target, in merge order.
func (ix *Index) applicable(tg Target) []*telemetryv1.Telemetry {
	var out []*telemetryv1.Telemetry
	if t := ix.namespaceWide(ix.rootNS); t != nil {
		out = append(out, t)
	}
	ns := tg.WaypointNamespace
	if ns != ix.rootNS {
		if t := ix.namespaceWide(ns); t != nil {
			out = append(out, t)
		}
	}
	if tg.ServiceName != "" && tg.ServiceNamespace != ns {
		ns = tg.ServiceNamespace
		if t := ix.namespaceWide(ns); t != nil && ns != ix.rootNS {
			out = append(out, t)
		}
	}
	seen := map[*telemetryv1.Telemetry]bool{}
	for _, n := range []string{ns, ix.rootNS} {
		for _, t := range ix.byNS[n] {
			if !namespaceWide(t) && !seen[t] && ix.attaches(t, tg) {
				seen[t] = true
				out = append(out, t)
			}
		}
	}
	return out
}

// For computes the config of one chain.
func (ix *Index) For(tg Target) Config {
	ts := ix.applicable(tg)
	var c Config
	c.Tracing = ix.tracing(ts)
	c.AccessLogsSet, c.AccessLogs = ix.accessLogs(ts)
	c.Metrics = ix.metrics(ts)
	return c
}

func providerNames(ps []*tpb.ProviderRef) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.GetName())
	}
	return out
}

func modeMatches(m tpb.WorkloadMode) bool {
	return m == tpb.WorkloadMode_SERVER || m == tpb.WorkloadMode_CLIENT_AND_SERVER
}

func (ix *Index) tracing(ts []*telemetryv1.Telemetry) *Tracing {
	defaults := ix.mesh.GetDefaultProviders().GetTracing()
	var specs []*tpb.Tracing
	for _, t := range ts {
		specs = append(specs, t.Spec.GetTracing()...)
	}
	if len(specs) == 0 && len(defaults) == 0 {
		return nil
	}
	out := &Tracing{EnableIstioTags: true}
	if len(defaults) > 0 {
		out.Provider = meshconfig.Provider(ix.mesh, defaults[0])
	}
	for _, s := range specs {
		if s.GetMatch() != nil && !modeMatches(s.GetMatch().GetMode()) {
			continue
		}
		if names := providerNames(s.GetProviders()); len(names) > 0 {
			out.Provider = meshconfig.Provider(ix.mesh, names[0])
		}
		if s.GetDisableSpanReporting() != nil {
			out.Disabled = s.GetDisableSpanReporting().GetValue()
		}
		if s.GetCustomTags() != nil {
			out.CustomTags = s.GetCustomTags()
		}
		if s.GetRandomSamplingPercentage() != nil {
			v := s.GetRandomSamplingPercentage().GetValue()
			out.RandomSamplingPercentage = &v
		}
		if s.GetEnableIstioTags() != nil {
			out.EnableIstioTags = s.GetEnableIstioTags().GetValue()
		}
	}
	if out.Provider == nil {
		out.Disabled = true
	}
	return out
}

func (ix *Index) accessLogs(ts []*telemetryv1.Telemetry) (bool, []AccessLog) {
	defaults := ix.mesh.GetDefaultProviders().GetAccessLogging()
	var levels [][]*tpb.AccessLogging
	for _, t := range ts {
		if len(t.Spec.GetAccessLogging()) > 0 {
			levels = append(levels, t.Spec.GetAccessLogging())
		}
	}
	if len(levels) == 0 && len(defaults) == 0 {
		return false, nil
	}
	providers := map[string]string{} // name -> filter
	if len(levels) == 0 {
		for _, d := range defaults {
			providers[d] = ""
		}
	} else {
		// The providers in scope are the last level's that names any;
		// each entry's filter goes with its providers.
		inScope := defaults
		filters := map[string]string{}
		for _, l := range levels {
			var names []string
			for _, a := range l {
				ns := providerNames(a.GetProviders())
				names = append(names, ns...)
				for _, n := range ns {
					filters[n] = a.GetFilter().GetExpression()
				}
			}
			if len(names) > 0 {
				inScope = names
			}
		}
		in := map[string]bool{}
		for _, n := range inScope {
			in[n] = true
		}
		parent := defaults
		for _, l := range levels {
			for _, a := range l {
				names := providerNames(a.GetProviders())
				if len(names) == 0 {
					names = parent
				}
				parent = names
				for _, n := range names {
					if !in[n] || a.GetMatch() != nil && !modeMatches(a.GetMatch().GetMode()) {
						continue
					}
					if a.GetDisabled().GetValue() {
						delete(providers, n)
						continue
					}
					providers[n] = filters[n]
				}
			}
		}
	}
	names := make([]string, 0, len(providers))
	for n := range providers {
		names = append(names, n)
	}
	sort.Strings(names)
	out := []AccessLog{}
	for _, n := range names {
		if p := meshconfig.Provider(ix.mesh, n); p != nil {
			out = append(out, AccessLog{Provider: p, Filter: providers[n]})
		}
	}
	return true, out
}

// allMetrics are Istio's standard metrics' enum names.
var allMetrics = func() []string {
	var out []string
	for k := range tpb.MetricSelector_IstioMetric_value {
		if k != "ALL_METRICS" {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}()

func (ix *Index) metrics(ts []*telemetryv1.Telemetry) []Metrics {
	defaults := ix.mesh.GetDefaultProviders().GetMetrics()
	if len(defaults) == 0 {
		// Istio's built-in default: Prometheus metrics.
		defaults = []string{"prometheus"}
	}
	var specs []*tpb.Metrics
	for _, t := range ts {
		specs = append(specs, t.Spec.GetMetrics()...)
	}
	type override struct {
		disabled *bool
		tags     map[string]*tpb.MetricsOverrides_TagOverride
	}
	providers := map[string]map[string]*override{}
	interval := map[string]float64{}
	if len(specs) == 0 {
		for _, d := range defaults {
			providers[d] = map[string]*override{}
		}
	}
	inScope := defaults
	for _, m := range specs {
		if names := providerNames(m.GetProviders()); len(names) > 0 {
			inScope = names
		}
	}
	in := map[string]bool{}
	for _, n := range inScope {
		in[n] = true
	}
	parent := defaults
	disabledAll := map[string]bool{}
	for _, m := range specs {
		names := providerNames(m.GetProviders())
		if len(names) == 0 {
			names = parent
		}
		parent = names
		for _, p := range names {
			if !in[p] {
				continue
			}
			if providers[p] == nil {
				providers[p] = map[string]*override{}
			}
			if ri := m.GetReportingInterval(); ri != nil {
				interval[p] = ri.AsDuration().Seconds()
			}
			for _, o := range m.GetOverrides() {
				if !modeMatches(o.GetMatch().GetMode()) {
					continue
				}
				sel := o.GetMatch()
				all := sel.GetMetricMatch() == nil || sel.GetMetric() == tpb.MetricSelector_ALL_METRICS && sel.GetCustomMetric() == ""
				if all && o.GetDisabled().GetValue() {
					disabledAll[p] = true
					continue
				}
				disabledAll[p] = false
				metricNames := allMetrics
				switch {
				case sel.GetCustomMetric() != "":
					metricNames = []string{sel.GetCustomMetric()}
				case !all:
					metricNames = []string{sel.GetMetric().String()}
				}
				for _, name := range metricNames {
					ov := providers[p][name]
					if ov == nil {
						ov = &override{}
						providers[p][name] = ov
					}
					if o.GetDisabled() != nil {
						v := o.GetDisabled().GetValue()
						ov.disabled = &v
					}
					for k, v := range o.GetTagOverrides() {
						if ov.tags == nil {
							ov.tags = map[string]*tpb.MetricsOverrides_TagOverride{}
						}
						ov.tags[k] = v
					}
				}
			}
		}
	}
	names := make([]string, 0, len(providers))
	for n := range providers {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []Metrics
	for _, n := range names {
		p := meshconfig.Provider(ix.mesh, n)
		if p == nil {
			continue
		}
		m := Metrics{Provider: p, ReportingIntervalSeconds: interval[n], DisabledAll: disabledAll[n]}
		if m.DisabledAll {
			out = append(out, m)
			continue
		}
		for name, ov := range providers[n] {
			mo := MetricOverride{Name: name, Disabled: ov.disabled != nil && *ov.disabled}
			for k, v := range ov.tags {
				if v.GetOperation() == tpb.MetricsOverrides_TagOverride_REMOVE {
					mo.Remove = append(mo.Remove, k)
					continue
				}
				if mo.Tags == nil {
					mo.Tags = map[string]string{}
				}
				mo.Tags[k] = v.GetValue()
			}
			sort.Strings(mo.Remove)
			m.Overrides = append(m.Overrides, mo)
		}
		sort.Slice(m.Overrides, func(i, j int) bool { return m.Overrides[i].Name < m.Overrides[j].Name })
		out = append(out, m)
	}
	return out
}

// PrometheusMetricName is the stats filter's name of an Istio metric
// (REQUEST_COUNT: requests_total); a custom metric keeps its name.
func PrometheusMetricName(enum string) string {
	switch enum {
	case "REQUEST_COUNT":
		return "requests_total"
	case "REQUEST_DURATION":
		return "request_duration_milliseconds"
	case "REQUEST_SIZE":
		return "request_bytes"
	case "RESPONSE_SIZE":
		return "response_bytes"
	case "TCP_OPENED_CONNECTIONS":
		return "tcp_connections_opened_total"
	case "TCP_CLOSED_CONNECTIONS":
		return "tcp_connections_closed_total"
	case "TCP_SENT_BYTES":
		return "tcp_sent_bytes_total"
	case "TCP_RECEIVED_BYTES":
		return "tcp_received_bytes_total"
	case "GRPC_REQUEST_MESSAGES":
		return "request_messages_total"
	case "GRPC_RESPONSE_MESSAGES":
		return "response_messages_total"
	}
	return strings.TrimPrefix(enum, "istio_")
}
