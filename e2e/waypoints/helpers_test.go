package waypoints

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc/metadata"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	watchtools "k8s.io/client-go/tools/watch"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	securityapi "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"

	"github.com/ambitmesh/ambit/internal/echo"
	"github.com/ambitmesh/ambit/internal/kubewatch"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/istiod/gateway"
	"github.com/ambitmesh/ambit/ztunnel/admin"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

// waypointPods returns the n ready pods of waypoint ns/name.
func (s *suite) waypointPods(t *testing.T, ctx context.Context, ns, name string, n int) []*corev1.Pod {
	t.Helper()
	pods, err := s.mesh.WaypointPods(ctx, ns, name, n)
	if err != nil {
		t.Fatal(err)
	}
	return pods
}

// waitWaypointDump waits until the config dump of every pod of the
// waypoint ns/wp satisfies cond.
func (s *suite) waitWaypointDump(t *testing.T, ctx context.Context, ns, wp string, n int, what string, cond func(string) bool) {
	t.Helper()
	if _, err := s.mesh.WaitWaypoint(ctx, ns, wp, n, what, cond); err != nil {
		t.Fatal(err)
	}
}

// waitBound waits until every ztunnel sends Service ns/svc through the
// waypoint wpNS/wp (wp empty: through none).
func (s *suite) waitBound(t *testing.T, ctx context.Context, ns, svc, wp string, wpNS ...string) {
	t.Helper()
	wns := ns
	if len(wpNS) > 0 {
		wns = wpNS[0]
	}
	var vip string
	if wp != "" {
		ws, err := s.l.Client.CoreV1().Services(wns).Get(ctx, wp, metav1.GetOptions{})
		if err == nil {
			vip = ws.Spec.ClusterIP
		} else if !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
	host := wp + "." + wns + ".svc.cluster.local"
	s.waitServiceWaypoint(t, ctx, fmt.Sprintf("service %s/%s through waypoint %q", ns, svc, wp), ns, svc, func(g *config.GatewayAddress) bool {
		if wp == "" {
			return g == nil
		}
		return g != nil && (g.Hostname == host || (g.Address != nil && g.Address.Address.String() == vip))
	})
}

// waitRefused waits until every ztunnel steers Service ns/svc to the
// address istiod gives a binding that fails closed though its waypoint
// wns/wp exists (istiod/ambient: a hostname under "invalid").
func (s *suite) waitRefused(t *testing.T, ctx context.Context, ns, svc, wp, wns string) {
	t.Helper()
	host := wp + "." + wns + ".waypoint.invalid"
	s.waitServiceWaypoint(t, ctx, fmt.Sprintf("service %s/%s refused by waypoint %s/%s", ns, svc, wns, wp), ns, svc, func(g *config.GatewayAddress) bool {
		return g != nil && g.Hostname == host
	})
}

// waitServiceWaypoint waits until every ztunnel's Service ns/svc has a
// waypoint for which ok holds.
func (s *suite) waitServiceWaypoint(t *testing.T, ctx context.Context, what, ns, svc string, ok func(*config.GatewayAddress) bool) {
	t.Helper()
	err := s.mesh.WaitZtunnels(ctx, what, func(d *admin.Dump) bool {
		i := slices.IndexFunc(d.Services, func(x *config.Service) bool { return x.Namespace == ns && x.Name == svc })
		return i >= 0 && ok(d.Services[i].Waypoint)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// waitWorkloadBound waits until every ztunnel has the workload at ip
// bound to a waypoint (or to none).
func (s *suite) waitWorkloadBound(t *testing.T, ctx context.Context, ip string, bound bool) {
	t.Helper()
	err := s.mesh.WaitZtunnels(ctx, fmt.Sprintf("workload %s bound %t", ip, bound), func(d *admin.Dump) bool {
		for _, w := range d.Workloads {
			for _, a := range w.Addresses {
				if a.String() == ip {
					return (w.Waypoint != nil) == bound
				}
			}
		}
		return false
	})
	if err != nil {
		t.Fatal(err)
	}
}

// createPolicy creates AuthorizationPolicy ns/name with action and one
// rule given as JSON; scope says what it applies to (its targetRefs or
// selector).
func (s *suite) createPolicy(t *testing.T, ctx context.Context, ns, name, action, rulesJSON string, scope func(*securityv1.AuthorizationPolicy)) {
	t.Helper()
	ap := &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	scope(ap)
	ap.Spec.Action = securityapi.AuthorizationPolicy_Action(securityapi.AuthorizationPolicy_Action_value[action])
	var rule securityapi.Rule
	if err := json.Unmarshal([]byte(rulesJSON), &rule); err != nil {
		t.Fatalf("policy %s: %v", name, err)
	}
	ap.Spec.Rules = []*securityapi.Rule{&rule}
	if _, err := s.istio.SecurityV1().AuthorizationPolicies(ns).Create(ctx, ap, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// policy applies an AuthorizationPolicy attached to Service target (at
// its waypoint) with rules given as JSON, and waits until the waypoint
// s.wp has it.
func (s *suite) policy(t *testing.T, ctx context.Context, ns, name, target, action, rulesJSON string) {
	t.Helper()
	s.createPolicy(t, ctx, ns, name, action, rulesJSON, func(ap *securityv1.AuthorizationPolicy) {
		ap.Spec.TargetRefs = []*typev1beta1.PolicyTargetReference{{Group: "", Kind: "Service", Name: target}}
	})
	key := fmt.Sprintf("ns[%s]-policy[%s]-rule[0]", ns, name)
	s.waitWaypointDump(t, ctx, ns, s.wp, 1, "policy "+name, func(d string) bool { return strings.Contains(d, key) })
}

// deletePolicy deletes a policy applied with policy and waits until the
// waypoint no longer has it.
func (s *suite) deletePolicy(t *testing.T, ctx context.Context, ns, name string) {
	t.Helper()
	if err := s.istio.SecurityV1().AuthorizationPolicies(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	key := fmt.Sprintf("ns[%s]-policy[%s]-rule[0]", ns, name)
	s.waitWaypointDump(t, ctx, ns, s.wp, 1, "policy "+name+" gone", func(d string) bool { return !strings.Contains(d, key) })
}

// policySelector applies an L4 AuthorizationPolicy selecting workloads
// and waits until every ztunnel has it bound to the workload at on.
func (s *suite) policySelector(t *testing.T, ctx context.Context, ns, name string, selector map[string]string, action, rulesJSON, on string) {
	t.Helper()
	s.createPolicy(t, ctx, ns, name, action, rulesJSON, func(ap *securityv1.AuthorizationPolicy) {
		ap.Spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: selector}
	})
	if err := s.mesh.WaitPolicy(ctx, ns, name, on, true); err != nil {
		t.Fatal(err)
	}
}

// route applies an HTTPRoute parented to port 80 of Service parent with
// rules given as JSON, and waits until the waypoint s.wp has its first
// rule.
func (s *suite) route(t *testing.T, ctx context.Context, ns, name, parent, rulesJSON string) {
	t.Helper()
	applyRoute(t, ctx, s, "route", s.gw.GatewayV1().HTTPRoutes(ns), &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: serviceParent(parent, 80),
			Rules:           decodeRules[gatewayv1.HTTPRouteRule](t, "route "+name, rulesJSON),
		},
	})
}

// deleteRoute deletes a route applied with route and waits until the
// waypoint no longer has it.
func (s *suite) deleteRoute(t *testing.T, ctx context.Context, ns, name string) {
	t.Helper()
	s.removeRoute(t, ctx, "route", s.gw.GatewayV1().HTTPRoutes(ns), ns, name)
}

// grpcRoute applies a GRPCRoute parented to port of Service parent with
// rules given as JSON, and waits until the waypoint s.wp has its first
// rule (istiod routes it as the HTTPRoute it amounts to).
func (s *suite) grpcRoute(t *testing.T, ctx context.Context, ns, name, parent string, port int32, rulesJSON string) {
	t.Helper()
	applyRoute(t, ctx, s, "grpc route", s.gw.GatewayV1().GRPCRoutes(ns), &gatewayv1.GRPCRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: gatewayv1.GRPCRouteSpec{
			CommonRouteSpec: serviceParent(parent, port),
			Rules:           decodeRules[gatewayv1.GRPCRouteRule](t, "grpc route "+name, rulesJSON),
		},
	})
}

// deleteGRPCRoute deletes a route applied with grpcRoute and waits until
// the waypoint no longer has it.
func (s *suite) deleteGRPCRoute(t *testing.T, ctx context.Context, ns, name string) {
	t.Helper()
	s.removeRoute(t, ctx, "grpc route", s.gw.GatewayV1().GRPCRoutes(ns), ns, name)
}

// serviceParent parents a route to port of Service name (GAMMA).
func serviceParent(name string, port int32) gatewayv1.CommonRouteSpec {
	kind, group := gatewayv1.Kind("Service"), gatewayv1.Group("")
	pn := gatewayv1.PortNumber(port)
	return gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{{Group: &group, Kind: &kind, Name: gatewayv1.ObjectName(name), Port: &pn}}}
}

// decodeRules reads a route's rules given as JSON.
func decodeRules[R any](t *testing.T, what, rulesJSON string) []R {
	t.Helper()
	var rules []R
	if err := yaml.Unmarshal([]byte(rulesJSON), &rules); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return rules
}

// applyRoute creates route r (of a kind, named what in messages) with
// client c, and waits until the waypoint s.wp has its first rule.
func applyRoute[T metav1.Object](t *testing.T, ctx context.Context, s *suite, what string, c interface {
	Create(context.Context, T, metav1.CreateOptions) (T, error)
}, r T) {
	t.Helper()
	if _, err := c.Create(ctx, r, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s.awaitRoute(t, ctx, what, r.GetNamespace(), r.GetName(), true)
}

// removeRoute deletes route ns/name with client c and waits until the
// waypoint s.wp no longer has it.
func (s *suite) removeRoute(t *testing.T, ctx context.Context, what string, c interface {
	Delete(context.Context, string, metav1.DeleteOptions) error
}, ns, name string) {
	t.Helper()
	if err := c.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	s.awaitRoute(t, ctx, what, ns, name, false)
}

// awaitRoute waits until the first rule of route ns/name is in (present)
// or gone from the config of the waypoint s.wp.
func (s *suite) awaitRoute(t *testing.T, ctx context.Context, what, ns, name string, present bool) {
	t.Helper()
	key := strconv.Quote(ns + "." + name + ".0")
	desc := what + " " + name
	if !present {
		desc += " gone"
	}
	s.waitWaypointDump(t, ctx, ns, s.wp, 1, desc, func(d string) bool { return strings.Contains(d, key) == present })
}

// waypointRequests is the number of requests a waypoint pod has served
// (istio_requests_total, its metrics on 15020).
func (s *suite) waypointRequests(t *testing.T, ctx context.Context, p *corev1.Pod) int {
	t.Helper()
	return s.waypointCounter(t, ctx, p, "istio_requests_total", nil)
}

// waypointCounter is the sum of the counter name's series whose labels
// include want, in a waypoint pod's metrics on 15020.
func (s *suite) waypointCounter(t *testing.T, ctx context.Context, p *corev1.Pod, name string, want map[string]string) int {
	t.Helper()
	pns, ok := s.l.Node(p.Spec.NodeName).Kubelet.PodNetNS(p.Namespace, p.Name)
	if !ok {
		t.Fatalf("waypoint pod %s/%s: no network namespace", p.Namespace, p.Name)
	}
	body, err := lab.HTTPGet(ctx, pns, "http://127.0.0.1:15020/stats/prometheus")
	if err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("waypoint metrics of %s/%s: %v", p.Namespace, p.Name, err)
	}
	total := 0
	for _, m := range mfs[name].GetMetric() {
		labels := map[string]string{}
		for _, lp := range m.GetLabel() {
			labels[lp.GetName()] = lp.GetValue()
		}
		match := true
		for k, v := range want {
			if labels[k] != v {
				match = false
			}
		}
		if match {
			total += int(m.GetCounter().GetValue())
		}
	}
	return total
}

// roundTrip sends one line on an open echo TCP connection and reads the
// answer.
func roundTrip(c net.Conn, msg string) (echo.Report, error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return echo.RoundTrip(c, msg)
}

// waitCondition waits, watching, until Service ns/name has the
// condition istio.io/WaypointBound with status (and, if message is not
// empty, a message that contains it).
func (s *suite) waitCondition(t *testing.T, ctx context.Context, ns, name, status, message string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	svcs := s.l.Client.CoreV1().Services(ns)
	lw := kubewatch.Named(svcs, name)
	var last []metav1.Condition
	_, err := watchtools.UntilWithSync(ctx, lw, &corev1.Service{}, nil, func(ev watch.Event) (bool, error) {
		svc, ok := ev.Object.(*corev1.Service)
		if !ok || ev.Type == watch.Deleted {
			return false, nil
		}
		last = svc.Status.Conditions
		c := apimeta.FindStatusCondition(svc.Status.Conditions, gateway.ConditionWaypointBound)
		return c != nil && string(c.Status) == status && strings.Contains(c.Message, message), nil
	})
	if err != nil {
		t.Fatalf("service %s/%s: no condition %s=%s with %q: %v; got %+v", ns, name, gateway.ConditionWaypointBound, status, message, err, last)
	}
}

// first is the first value of metadata key k, or "".
func first(md metadata.MD, k string) string {
	if v := md.Get(k); len(v) > 0 {
		return v[0]
	}
	return ""
}
