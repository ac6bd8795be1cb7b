// Package analyze finds mesh configuration that does not do what its
// author meant, from the objects in the apiserver, each finding with a
// message that says what to do: bindings to waypoints that do not exist
// (their traffic fails closed), policies and routes that need a waypoint
// and have none, selectors that select nothing. It reads what istiod
// reads; it does not ask istiod.
package analyze

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambitmesh/ambit/istiod/ambient"
	"github.com/ambitmesh/ambit/istiod/gateway"
)

// Level of a finding.
type Level string

const (
	// Error: traffic is refused or a resource is ignored.
	Error Level = "Error"
	// Warning: configuration that has no effect, or less than meant.
	Warning Level = "Warning"
)

// Codes of findings.
const (
	CodeWaypointNotFound      = "WaypointNotFound"
	CodeNotAWaypoint          = "NotAWaypoint"
	CodeSelectsNothing        = "SelectsNothing"
	CodeL7WithoutWaypoint     = "L7PolicyWithoutWaypoint"
	CodeTargetWithoutWaypoint = "TargetWithoutWaypoint"
	CodeRouteWithoutWaypoint  = "RouteParentWithoutWaypoint"
	CodeReferenceNotFound     = "ReferenceNotFound"
)

// Finding is one problem.
type Finding struct {
	Level   Level  `json:"level"`
	Code    string `json:"code"`
	Object  string `json:"object"` // Kind namespace/name
	Message string `json:"message"`
	Fix     string `json:"fix"`
}

// Clients read the cluster. Gateway may be nil or the cluster may lack
// the Gateway API: then there are no waypoints and no routes.
type Clients struct {
	Kube    kubernetes.Interface
	Istio   istioclient.Interface
	Gateway gatewayclient.Interface
}

// state is what Run read.
type state struct {
	namespaces map[string]*corev1.Namespace
	pods       []corev1.Pod
	services   map[string]*corev1.Service // ns/name
	accounts   []corev1.ServiceAccount
	gateways   map[string]*gatewayv1.Gateway // ns/name
	httpRoutes []gatewayv1.HTTPRoute
	authz      []*securityv1.AuthorizationPolicy
	peerAuthn  []*securityv1.PeerAuthentication
	rootNS     string
}

// Run analyzes namespace ns (every namespace when empty); rootNS is the
// mesh's root namespace, whose policies apply to every namespace.
func Run(ctx context.Context, c Clients, ns, rootNS string) ([]Finding, error) {
	s, err := read(ctx, c, ns, rootNS)
	if err != nil {
		return nil, err
	}
	var out []Finding
	out = append(out, s.bindings()...)
	out = append(out, s.policies()...)
	out = append(out, s.routeFindings()...)
	slices.SortFunc(out, func(a, b Finding) int {
		return cmp.Or(cmp.Compare(a.Object, b.Object), cmp.Compare(a.Code, b.Code), cmp.Compare(a.Message, b.Message))
	})
	return out, nil
}

func read(ctx context.Context, c Clients, ns, rootNS string) (*state, error) {
	s := &state{namespaces: map[string]*corev1.Namespace{}, services: map[string]*corev1.Service{}, gateways: map[string]*gatewayv1.Gateway{}, rootNS: rootNS}
	nss, err := c.Kube.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	for i := range nss.Items {
		s.namespaces[nss.Items[i].Name] = &nss.Items[i]
	}
	pods, err := c.Kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	s.pods = pods.Items
	svcs, err := c.Kube.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	for i := range svcs.Items {
		s.services[key(svcs.Items[i].Namespace, svcs.Items[i].Name)] = &svcs.Items[i]
	}
	sas, err := c.Kube.CoreV1().ServiceAccounts(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list serviceaccounts: %w", err)
	}
	s.accounts = sas.Items
	if c.Gateway != nil {
		// Waypoints may be in other namespaces than the objects bound
		// to them: read them all.
		gws, err := c.Gateway.GatewayV1().Gateways("").List(ctx, metav1.ListOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("list gateways: %w", err)
		}
		if gws != nil {
			for i := range gws.Items {
				s.gateways[key(gws.Items[i].Namespace, gws.Items[i].Name)] = &gws.Items[i]
			}
		}
		rts, err := c.Gateway.GatewayV1().HTTPRoutes(ns).List(ctx, metav1.ListOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("list httproutes: %w", err)
		}
		if rts != nil {
			s.httpRoutes = rts.Items
		}
	}
	if c.Istio != nil {
		aps, err := c.Istio.SecurityV1().AuthorizationPolicies(ns).List(ctx, metav1.ListOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("list authorizationpolicies: %w", err)
		}
		if aps != nil {
			s.authz = aps.Items
		}
		pas, err := c.Istio.SecurityV1().PeerAuthentications(ns).List(ctx, metav1.ListOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("list peerauthentications: %w", err)
		}
		if pas != nil {
			s.peerAuthn = pas.Items
		}
	}
	return s, nil
}

func key(ns, name string) string { return ns + "/" + name }

// checkBinding checks the istio.io/use-waypoint binding of an object and
// returns a finding when it names no waypoint.
func (s *state) checkBinding(kind, ns, name string, lbls map[string]string) *Finding {
	wp := lbls[ambient.LabelUseWaypoint]
	if wp == "" || wp == ambient.UseWaypointNone {
		return nil
	}
	obj := kind + " " + strings.TrimPrefix(key(ns, name), "/")
	if kind == "Namespace" {
		// A namespace's waypoint is in the namespace itself.
		ns = name
	}
	wns := lbls[ambient.LabelUseWaypointNamespace]
	if wns == "" {
		wns = ns
	}
	gw := s.gateways[key(wns, wp)]
	switch {
	case gw == nil:
		return &Finding{Level: Error, Code: CodeWaypointNotFound, Object: obj,
			Message: fmt.Sprintf("bound to waypoint %s/%s (%s), which does not exist: its traffic is refused until it does", wns, wp, ambient.LabelUseWaypoint),
			Fix:     fmt.Sprintf("create it (ambitctl waypoint apply -n %s --name %s) or remove the label", wns, wp)}
	case string(gw.Spec.GatewayClassName) != gateway.WaypointClass:
		return &Finding{Level: Error, Code: CodeNotAWaypoint, Object: obj,
			Message: fmt.Sprintf("bound to Gateway %s/%s of class %q, not a waypoint (%s): its traffic is refused until it binds to one", wns, wp, gw.Spec.GatewayClassName, gateway.WaypointClass),
			Fix:     "bind to a Gateway of class " + gateway.WaypointClass}
	}
	return nil
}

func (s *state) bindings() []Finding {
	var out []Finding
	add := func(f *Finding) {
		if f != nil {
			out = append(out, *f)
		}
	}
	for _, n := range s.namespaces {
		add(s.checkBinding("Namespace", "", n.Name, n.Labels))
	}
	for _, svc := range s.services {
		add(s.checkBinding("Service", svc.Namespace, svc.Name, svc.Labels))
	}
	for _, p := range s.pods {
		add(s.checkBinding("Pod", p.Namespace, p.Name, p.Labels))
	}
	for _, sa := range s.accounts {
		add(s.checkBinding("ServiceAccount", sa.Namespace, sa.Name, sa.Labels))
	}
	return out
}

// serviceWaypoint says whether traffic to the Service goes through a
// waypoint: its own binding, else its namespace's.
func (s *state) serviceWaypoint(svc *corev1.Service) bool {
	if v := svc.Labels[ambient.LabelUseWaypoint]; v != "" {
		return v != ambient.UseWaypointNone
	}
	if n := s.namespaces[svc.Namespace]; n != nil {
		v := n.Labels[ambient.LabelUseWaypoint]
		return v != "" && v != ambient.UseWaypointNone
	}
	return false
}

// selects says whether a selector in namespace ns (every namespace for
// the root namespace) matches a pod.
func (s *state) selects(ns string, sel *typeapi.WorkloadSelector) bool {
	set := labels.SelectorFromSet(sel.GetMatchLabels())
	for _, p := range s.pods {
		if (ns == s.rootNS || p.Namespace == ns) && set.Matches(labels.Set(p.Labels)) {
			return true
		}
	}
	return false
}

// l7 lists the HTTP-only attributes a policy uses, which ztunnel cannot
// check.
func l7(ap *securityapi.AuthorizationPolicy) []string {
	var out []string
	for _, r := range ap.GetRules() {
		for _, f := range r.GetFrom() {
			src := f.GetSource()
			if len(src.GetRequestPrincipals()) > 0 || len(src.GetNotRequestPrincipals()) > 0 {
				out = append(out, "requestPrincipals")
			}
		}
		for _, t := range r.GetTo() {
			op := t.GetOperation()
			if len(op.GetMethods()) > 0 || len(op.GetNotMethods()) > 0 {
				out = append(out, "methods")
			}
			if len(op.GetPaths()) > 0 || len(op.GetNotPaths()) > 0 {
				out = append(out, "paths")
			}
			if len(op.GetHosts()) > 0 || len(op.GetNotHosts()) > 0 {
				out = append(out, "hosts")
			}
		}
		for _, w := range r.GetWhen() {
			if strings.HasPrefix(w.GetKey(), "request.") {
				out = append(out, w.GetKey())
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (s *state) policies() []Finding {
	var out []Finding
	for _, ap := range s.authz {
		obj := "AuthorizationPolicy " + key(ap.Namespace, ap.Name)
		spec := &ap.Spec
		refs := spec.GetTargetRefs()
		if r := spec.GetTargetRef(); r != nil {
			refs = append(refs, r)
		}
		if sel := spec.GetSelector(); sel != nil && len(sel.GetMatchLabels()) > 0 && len(refs) == 0 && !s.selects(ap.Namespace, sel) {
			out = append(out, Finding{Level: Warning, Code: CodeSelectsNothing, Object: obj,
				Message: fmt.Sprintf("its selector %v matches no pod", sel.GetMatchLabels()),
				Fix:     "fix the selector's labels, or delete the policy"})
		}
		if attrs := l7(spec); len(attrs) > 0 && len(refs) == 0 && spec.GetAction() != securityapi.AuthorizationPolicy_CUSTOM {
			out = append(out, Finding{Level: Warning, Code: CodeL7WithoutWaypoint, Object: obj,
				Message: fmt.Sprintf("uses HTTP attributes (%s) that only a waypoint checks; attached by selector it is ztunnel's, which cannot: as ALLOW it allows less, as DENY it denies whole connections", strings.Join(attrs, ", ")),
				Fix:     "give the workloads a waypoint (ambitctl waypoint apply) and attach the policy to it with targetRefs (kind Gateway or Service)"})
		}
		for _, r := range refs {
			ns := ap.Namespace
			if r.GetNamespace() != "" {
				ns = r.GetNamespace()
			}
			switch r.GetKind() {
			case "Gateway":
				gw := s.gateways[key(ns, r.GetName())]
				if gw == nil {
					out = append(out, Finding{Level: Warning, Code: CodeReferenceNotFound, Object: obj,
						Message: fmt.Sprintf("targets Gateway %s/%s, which does not exist: the policy applies nowhere", ns, r.GetName()),
						Fix:     "create the waypoint or fix targetRefs"})
				}
			case "Service":
				svc := s.services[key(ns, r.GetName())]
				switch {
				case svc == nil:
					out = append(out, Finding{Level: Warning, Code: CodeReferenceNotFound, Object: obj,
						Message: fmt.Sprintf("targets Service %s/%s, which does not exist", ns, r.GetName()),
						Fix:     "fix targetRefs"})
				case !s.serviceWaypoint(svc):
					out = append(out, Finding{Level: Warning, Code: CodeTargetWithoutWaypoint, Object: obj,
						Message: fmt.Sprintf("targets Service %s/%s, which has no waypoint: the policy is enforced nowhere", ns, r.GetName()),
						Fix:     fmt.Sprintf("give the service a waypoint (ambitctl waypoint apply -n %s --enroll-namespace, or label the Service %s)", ns, ambient.LabelUseWaypoint)})
				}
			}
		}
	}
	for _, pa := range s.peerAuthn {
		if sel := pa.Spec.GetSelector(); sel != nil && len(sel.GetMatchLabels()) > 0 && !s.selects(pa.Namespace, sel) {
			out = append(out, Finding{Level: Warning, Code: CodeSelectsNothing, Object: "PeerAuthentication " + key(pa.Namespace, pa.Name),
				Message: fmt.Sprintf("its selector %v matches no pod", sel.GetMatchLabels()),
				Fix:     "fix the selector's labels, or delete the policy"})
		}
	}
	return out
}

func (s *state) routeFindings() []Finding {
	var out []Finding
	for _, rt := range s.httpRoutes {
		obj := "HTTPRoute " + key(rt.Namespace, rt.Name)
		for _, p := range rt.Spec.ParentRefs {
			ns := rt.Namespace
			if p.Namespace != nil {
				ns = string(*p.Namespace)
			}
			kind := "Gateway"
			if p.Kind != nil {
				kind = string(*p.Kind)
			}
			group := gatewayv1.GroupName
			if p.Group != nil {
				group = string(*p.Group)
			}
			if kind != "Service" || (group != "" && group != "core") {
				continue
			}
			svc := s.services[key(ns, string(p.Name))]
			switch {
			case svc == nil:
				out = append(out, Finding{Level: Warning, Code: CodeReferenceNotFound, Object: obj,
					Message: fmt.Sprintf("parent Service %s/%s does not exist", ns, p.Name),
					Fix:     "fix parentRefs"})
			case !s.serviceWaypoint(svc):
				out = append(out, Finding{Level: Warning, Code: CodeRouteWithoutWaypoint, Object: obj,
					Message: fmt.Sprintf("parent Service %s/%s has no waypoint: in the ambient mesh only a waypoint applies routes, so this one has no effect", ns, p.Name),
					Fix:     fmt.Sprintf("give the service a waypoint (ambitctl waypoint apply -n %s --enroll-namespace, or label the Service %s)", ns, ambient.LabelUseWaypoint)})
			}
		}
	}
	return out
}
