package waypoint

import (
	"fmt"
	"sort"
	"strings"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoytype "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	netapi "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// trafficPolicyFields are the TrafficPolicy fields a waypoint applies.
var trafficPolicyFields = []string{
	"load_balancer.simple",
	"connection_pool.tcp.max_connections", "connection_pool.tcp.connect_timeout",
	"connection_pool.http.http1_max_pending_requests", "connection_pool.http.http2_max_requests",
	"connection_pool.http.max_requests_per_connection", "connection_pool.http.max_retries", "connection_pool.http.idle_timeout",
	"connection_pool.http.max_concurrent_streams", "connection_pool.tcp.max_connection_duration", "connection_pool.tcp.idle_timeout",
	"connection_pool.tcp.tcp_keepalive.probes", "connection_pool.tcp.tcp_keepalive.time", "connection_pool.tcp.tcp_keepalive.interval",
	"outlier_detection.consecutive_5xx_errors", "outlier_detection.consecutive_gateway_errors",
	"outlier_detection.split_external_local_origin_errors", "outlier_detection.consecutive_local_origin_failures",
	"outlier_detection.interval", "outlier_detection.base_ejection_time",
	"outlier_detection.max_ejection_percent", "outlier_detection.min_health_percent",
	"tls.mode",
}

var drFields = func() fieldSet {
	paths := []string{"host", "subsets.name", "subsets.labels"}
	for _, p := range trafficPolicyFields {
		paths = append(paths, "traffic_policy."+p, "subsets.traffic_policy."+p)
	}
	return newFieldSet(paths...)
}()

// drProblem is why a DestinationRule cannot be applied at all; "" when
// it can.
func drProblem(dr *networkingv1.DestinationRule) (reason, msg string) {
	spec := &dr.Spec
	if bad := drFields.unsupported(spec); len(bad) > 0 {
		return ReasonUnsupportedValue, fmt.Sprintf("%s: not supported on waypoints", strings.Join(bad, ", "))
	}
	if spec.GetHost() == "" {
		return ReasonUnsupportedValue, "host: required"
	}
	check := func(where string, tp *netapi.TrafficPolicy) (string, string) {
		if tp == nil {
			return "", ""
		}
		if s := tp.GetLoadBalancer().GetSimple(); s == netapi.LoadBalancerSettings_PASSTHROUGH {
			return ReasonUnsupportedValue, where + "loadBalancer.simple: PASSTHROUGH is not supported on waypoints"
		}
		switch tp.GetTls().GetMode() {
		case netapi.ClientTLSSettings_DISABLE, netapi.ClientTLSSettings_ISTIO_MUTUAL:
			// Waypoint to workload is HBONE, mTLS either way.
		default:
			return ReasonUnsupportedValue, fmt.Sprintf("%stls.mode: %v is not supported on waypoints (their upstream is HBONE, always Istio mutual TLS)", where, tp.GetTls().GetMode())
		}
		for name, d := range map[string]*durationpb.Duration{
			"connectionPool.tcp.connectTimeout":        tp.GetConnectionPool().GetTcp().GetConnectTimeout(),
			"connectionPool.http.idleTimeout":          tp.GetConnectionPool().GetHttp().GetIdleTimeout(),
			"connectionPool.tcp.idleTimeout":           tp.GetConnectionPool().GetTcp().GetIdleTimeout(),
			"connectionPool.tcp.maxConnectionDuration": tp.GetConnectionPool().GetTcp().GetMaxConnectionDuration(),
			"connectionPool.tcp.tcpKeepalive.time":     tp.GetConnectionPool().GetTcp().GetTcpKeepalive().GetTime(),
			"connectionPool.tcp.tcpKeepalive.interval": tp.GetConnectionPool().GetTcp().GetTcpKeepalive().GetInterval(),
			"outlierDetection.interval":                tp.GetOutlierDetection().GetInterval(),
			"outlierDetection.baseEjectionTime":        tp.GetOutlierDetection().GetBaseEjectionTime(),
		} {
			if d != nil && (d.CheckValid() != nil || d.AsDuration() < 0) {
				return ReasonUnsupportedValue, fmt.Sprintf("%s%s: %v is not a valid duration", where, name, d)
			}
		}
		if od := tp.GetOutlierDetection(); od != nil && (od.GetMaxEjectionPercent() < 0 || od.GetMaxEjectionPercent() > 100) {
			return ReasonUnsupportedValue, fmt.Sprintf("%soutlierDetection.maxEjectionPercent: %d is not within 0-100", where, od.GetMaxEjectionPercent())
		}
		return "", ""
	}
	if r, m := check("trafficPolicy.", spec.GetTrafficPolicy()); r != "" {
		return r, m
	}
	seen := map[string]bool{}
	for i, ss := range spec.GetSubsets() {
		if ss.GetName() == "" {
			return ReasonUnsupportedValue, fmt.Sprintf("subsets[%d].name: required", i)
		}
		if seen[ss.GetName()] {
			return ReasonUnsupportedValue, fmt.Sprintf("subsets[%d].name: %q is defined twice", i, ss.GetName())
		}
		seen[ss.GetName()] = true
		if strings.ContainsAny(ss.GetName(), "|/") {
			return ReasonUnsupportedValue, fmt.Sprintf("subsets[%d].name: %q: '|' and '/' are not allowed (they separate the parts of cluster names)", i, ss.GetName())
		}
		if r, m := check(fmt.Sprintf("subsets[%d].trafficPolicy.", i), ss.GetTrafficPolicy()); r != "" {
			return r, m
		}
	}
	return "", ""
}

// ObjectStatus is istiod's verdict on one Istio object on waypoints:
// VirtualServices and DestinationRules (Accepted, and ResolvedRefs for a
// VirtualService's destinations), AuthorizationPolicies with targetRefs
// (WaypointAccepted).
type ObjectStatus struct {
	Kind, Namespace, Name string
	Generation            int64
	Conditions            []metav1.Condition
}

// istioTraffic are the accepted VirtualServices and DestinationRules,
// shared by every waypoint's build.
type istioTraffic struct {
	domain, rootNS  string
	virtualServices []*networkingv1.VirtualService // oldest first
	// destinationRules by namespace then resolved host: the rule that
	// applies there (the oldest).
	destinationRules map[string]map[string]*networkingv1.DestinationRule
}

func olderFirst(a, b metav1.Object) bool {
	ta, tb := a.GetCreationTimestamp(), b.GetCreationTimestamp()
	if !ta.Equal(&tb) {
		return ta.Before(&tb)
	}
	return serviceKey(a.GetNamespace(), a.GetName()) < serviceKey(b.GetNamespace(), b.GetName())
}

// newIstioTraffic accepts or refuses every VirtualService and
// DestinationRule of in and says so in their status; hostExists says
// whether a resolved host is a Service's.
func newIstioTraffic(in *Input, domain, rootNS string, hostExists func(host string) bool) (*istioTraffic, []ObjectStatus) {
	t := &istioTraffic{domain: domain, rootNS: rootNS, destinationRules: map[string]map[string]*networkingv1.DestinationRule{}}
	var out []ObjectStatus
	drs := append([]*networkingv1.DestinationRule(nil), in.DestinationRules...)
	sort.Slice(drs, func(i, j int) bool { return olderFirst(drs[i], drs[j]) })
	for _, dr := range drs {
		st := ObjectStatus{Kind: KindDestinationRule, Namespace: dr.Namespace, Name: dr.Name, Generation: dr.Generation}
		reason, msg := drProblem(dr)
		host := resolveHost(dr.Spec.GetHost(), dr.Namespace, domain)
		if reason == "" {
			if prev := t.destinationRules[dr.Namespace][host]; prev != nil {
				reason, msg = ReasonConflicted, fmt.Sprintf("DestinationRule %s/%s, older, already applies to host %s in this namespace; Istio would merge the two, Ambit applies only the oldest", prev.Namespace, prev.Name, host)
			}
		}
		if reason != "" {
			st.Conditions = append(st.Conditions, cond(ConditionAccepted, false, reason, msg, dr.Generation))
		} else {
			if t.destinationRules[dr.Namespace] == nil {
				t.destinationRules[dr.Namespace] = map[string]*networkingv1.DestinationRule{}
			}
			t.destinationRules[dr.Namespace][host] = dr
			st.Conditions = append(st.Conditions, cond(ConditionAccepted, true, ReasonAccepted, "", dr.Generation))
		}
		out = append(out, st)
	}
	vss := append([]*networkingv1.VirtualService(nil), in.VirtualServices...)
	sort.Slice(vss, func(i, j int) bool { return olderFirst(vss[i], vss[j]) })
	for _, vs := range vss {
		st := ObjectStatus{Kind: KindVirtualService, Namespace: vs.Namespace, Name: vs.Name, Generation: vs.Generation}
		if reason, msg := vsProblem(vs); reason != "" {
			st.Conditions = append(st.Conditions, cond(ConditionAccepted, false, reason, msg, vs.Generation))
			out = append(out, st)
			continue
		}
		t.virtualServices = append(t.virtualServices, vs)
		st.Conditions = append(st.Conditions, cond(ConditionAccepted, true, ReasonAccepted, "", vs.Generation))
		if reason, msg := t.resolveVS(vs, hostExists); reason != "" {
			st.Conditions = append(st.Conditions, cond(ConditionResolvedRefs, false, reason, msg, vs.Generation))
		} else {
			st.Conditions = append(st.Conditions, cond(ConditionResolvedRefs, true, ReasonResolvedRefs, "", vs.Generation))
		}
		out = append(out, st)
	}
	return t, out
}

// resolveVS checks a VirtualService's destinations and mirror: a Service
// of the mesh, and a subset some DestinationRule defines for it.
func (t *istioTraffic) resolveVS(vs *networkingv1.VirtualService, hostExists func(string) bool) (string, string) {
	check := func(where string, d *netapi.Destination) (string, string) {
		host := resolveHost(d.GetHost(), vs.Namespace, t.domain)
		if !hostExists(host) {
			return ReasonBackendNotFound, fmt.Sprintf("%s: host %s is no Service of the mesh; its requests get 503", where, host)
		}
		if s := d.GetSubset(); s != "" {
			if !t.hasSubset(host, s) {
				return ReasonSubsetNotFound, fmt.Sprintf("%s: no DestinationRule defines subset %q of %s; its requests get 503", where, s, host)
			}
		}
		return "", ""
	}
	for i, h := range vs.Spec.GetHttp() {
		for j, d := range h.GetRoute() {
			if r, m := check(fmt.Sprintf("http[%d].route[%d].destination", i, j), d.GetDestination()); r != "" {
				return r, m
			}
		}
		if h.GetMirror() != nil {
			if r, m := check(fmt.Sprintf("http[%d].mirror", i), h.GetMirror()); r != "" {
				return r, m
			}
		}
	}
	return "", ""
}

// hasSubset: an accepted DestinationRule for host, of any namespace,
// defines the subset (which rule applies on a waypoint depends on the
// waypoint's namespace; status is written once for all waypoints).
func (t *istioTraffic) hasSubset(host, subset string) bool {
	for _, byHost := range t.destinationRules {
		for h, dr := range byHost {
			if !hostMatches(h, host) {
				continue
			}
			for _, ss := range dr.Spec.GetSubsets() {
				if ss.GetName() == subset {
					return true
				}
			}
		}
	}
	return false
}

// destinationRuleFor is the DestinationRule a waypoint of namespace wpNS
// applies to a service, as Istio looks it up: the waypoint's namespace
// first, then the service's, then the root namespace; in each, an exact
// host before a wildcard.
func (t *istioTraffic) destinationRuleFor(wpNS string, sv *served) *networkingv1.DestinationRule {
	if t == nil {
		return nil
	}
	for _, ns := range []string{wpNS, sv.namespace, t.rootNS} {
		byHost := t.destinationRules[ns]
		if dr := byHost[sv.hostname]; dr != nil {
			return dr
		}
		var best *networkingv1.DestinationRule
		bestLen := -1
		for h, dr := range byHost {
			if hostMatches(h, sv.hostname) && len(h) > bestLen {
				best, bestLen = dr, len(h)
			}
		}
		if best != nil {
			return best
		}
	}
	return nil
}

// leastConn is LoadBalancerSettings_LEAST_CONN, deprecated for
// LEAST_REQUEST and still accepted.
const leastConn netapi.LoadBalancerSettings_SimpleLB = 1

// mergeTrafficPolicy is a subset's policy over the rule's, by component
// (load balancer, connection pool, outlier detection, TLS), as Istio
// merges them.
func mergeTrafficPolicy(base, subset *netapi.TrafficPolicy) *netapi.TrafficPolicy {
	if subset == nil {
		return base
	}
	if base == nil {
		return subset
	}
	out := proto.Clone(base).(*netapi.TrafficPolicy)
	if subset.GetLoadBalancer() != nil {
		out.LoadBalancer = subset.GetLoadBalancer()
	}
	if subset.GetConnectionPool() != nil {
		out.ConnectionPool = subset.GetConnectionPool()
	}
	if subset.GetOutlierDetection() != nil {
		out.OutlierDetection = subset.GetOutlierDetection()
	}
	if subset.GetTls() != nil {
		out.Tls = subset.GetTls()
	}
	return out
}

// applyTrafficPolicy sets what a DestinationRule's traffic policy says
// on a waypoint's cluster of a service, as Istio's cluster builder does.
func applyTrafficPolicy(c *cluster.Cluster, tp *netapi.TrafficPolicy) {
	if tp == nil {
		return
	}
	switch tp.GetLoadBalancer().GetSimple() {
	case leastConn:
		// LEAST_CONN is LEAST_REQUEST's old name.
		c.LbPolicy = cluster.Cluster_LEAST_REQUEST
	case netapi.LoadBalancerSettings_LEAST_REQUEST:
		c.LbPolicy = cluster.Cluster_LEAST_REQUEST
	case netapi.LoadBalancerSettings_RANDOM:
		c.LbPolicy = cluster.Cluster_RANDOM
	case netapi.LoadBalancerSettings_ROUND_ROBIN:
		c.LbPolicy = cluster.Cluster_ROUND_ROBIN
	}
	if cp := tp.GetConnectionPool(); cp != nil {
		th := defaultCircuitBreakers().Thresholds[0]
		if h := cp.GetHttp(); h != nil {
			if h.GetHttp2MaxRequests() > 0 {
				th.MaxRequests = wrapperspb.UInt32(uint32(h.GetHttp2MaxRequests()))
			}
			if h.GetHttp1MaxPendingRequests() > 0 {
				th.MaxPendingRequests = wrapperspb.UInt32(uint32(h.GetHttp1MaxPendingRequests()))
			}
			if h.GetMaxRetries() > 0 {
				th.MaxRetries = wrapperspb.UInt32(uint32(h.GetMaxRetries()))
			}
		}
		if tcp := cp.GetTcp(); tcp != nil {
			if tcp.GetConnectTimeout() != nil {
				c.ConnectTimeout = durationpb.New(tcp.GetConnectTimeout().AsDuration())
			}
			if tcp.GetMaxConnections() > 0 {
				th.MaxConnections = wrapperspb.UInt32(uint32(tcp.GetMaxConnections()))
			}
		}
		c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{th}}
		connectionOptions(c, cp) // (drresilience.go)
	}
	if od := tp.GetOutlierDetection(); od != nil {
		out := &cluster.OutlierDetection{EnforcingSuccessRate: wrapperspb.UInt32(0)}
		if e := od.GetConsecutive_5XxErrors(); e != nil {
			out.Consecutive_5Xx = wrapperspb.UInt32(e.GetValue())
			out.EnforcingConsecutive_5Xx = wrapperspb.UInt32(min(e.GetValue(), 1) * 100)
		}
		if e := od.GetConsecutiveGatewayErrors(); e != nil {
			out.ConsecutiveGatewayFailure = wrapperspb.UInt32(e.GetValue())
			out.EnforcingConsecutiveGatewayFailure = wrapperspb.UInt32(min(e.GetValue(), 1) * 100)
		}
		if od.GetInterval() != nil {
			out.Interval = durationpb.New(od.GetInterval().AsDuration())
		}
		if od.GetBaseEjectionTime() != nil {
			out.BaseEjectionTime = durationpb.New(od.GetBaseEjectionTime().AsDuration())
		}
		if od.GetMaxEjectionPercent() > 0 {
			out.MaxEjectionPercent = wrapperspb.UInt32(uint32(od.GetMaxEjectionPercent()))
		}
		outlierSplit(out, od)
		c.OutlierDetection = out
		// Istio turns the panic threshold off unless asked (few pods per
		// service are the rule in Kubernetes).
		if od.GetMinHealthPercent() >= 0 {
			c.CommonLbConfig = &cluster.Cluster_CommonLbConfig{HealthyPanicThreshold: &envoytype.Percent{Value: float64(od.GetMinHealthPercent())}}
		}
	}
}

// addClusterMetadata records, as Istio does, the DestinationRule that
// configured a cluster and the subset it is.
func addClusterMetadata(c *cluster.Cluster, dr *networkingv1.DestinationRule, subset string) {
	if c.Metadata == nil {
		c.Metadata = &core.Metadata{}
	}
	if c.Metadata.FilterMetadata == nil {
		c.Metadata.FilterMetadata = map[string]*structpb.Struct{}
	}
	im := c.Metadata.FilterMetadata["istio"]
	if im == nil {
		im = &structpb.Struct{Fields: map[string]*structpb.Value{}}
		c.Metadata.FilterMetadata["istio"] = im
	}
	im.Fields["config"] = structpb.NewStringValue("/apis/networking.istio.io/v1/namespaces/" + dr.Namespace + "/destination-rule/" + dr.Name)
	if subset != "" {
		im.Fields["subset"] = structpb.NewStringValue(subset)
	}
}

// subsetSelects: the subset's labels select a workload of these labels.
func subsetSelects(ss *netapi.Subset, l map[string]string) bool {
	return labels.SelectorFromSet(ss.GetLabels()).Matches(labels.Set(l))
}
