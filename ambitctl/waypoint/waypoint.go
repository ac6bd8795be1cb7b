// Package waypoint makes and manages waypoint Gateways the way
// `istioctl waypoint` does (a Gateway of class istio-waypoint with one
// HBONE listener on 15008, istio.io/waypoint-for when asked, a namespace
// enrolled with istio.io/use-waypoint), plus Ambit's per-service-account
// waypoint, which Istio dropped: the Gateway carries the annotation
// istio.io/for-service-account and the ServiceAccount the label
// istio.io/use-waypoint, as istiod/ambient reads them.
package waypoint

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	watchtools "k8s.io/client-go/tools/watch"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambitmesh/ambit/internal/enrolment"
	"github.com/ambitmesh/ambit/internal/kubewatch"
	"github.com/ambitmesh/ambit/internal/mesh"
	"github.com/ambitmesh/ambit/istiod/ambient"
	"github.com/ambitmesh/ambit/istiod/gateway"
)

// DefaultName is the name of a namespace's waypoint, as istioctl's.
const DefaultName = "waypoint"

// FieldManager names ambitctl's server-side applies.
const FieldManager = "ambitctl"

// ListenerName is the waypoint's one listener, as istioctl names it.
const ListenerName = "mesh"

// TrafficTypes are the values of --for (istio.io/waypoint-for).
var TrafficTypes = []string{ambient.WaypointForAll, ambient.WaypointForNone, ambient.WaypointForService, ambient.WaypointForWorkload}

// Spec says which waypoint to make.
type Spec struct {
	// Name is the Gateway's; DefaultName, or the service account's
	// name for a service-account waypoint, when empty.
	Name      string
	Namespace string
	// For is istio.io/waypoint-for; unset when empty, so that istiod
	// takes its default (service; all for a service-account waypoint).
	For string
	// ServiceAccount makes the waypoint that account's (Ambit's
	// per-service-account waypoint).
	ServiceAccount string
}

// GatewayName is the name the Gateway gets.
func (s Spec) GatewayName() string {
	switch {
	case s.Name != "":
		return s.Name
	case s.ServiceAccount != "":
		return s.ServiceAccount + ServiceAccountSuffix
	}
	return DefaultName
}

// ServiceAccountSuffix ends the default name of a service account's
// waypoint. The waypoint controller names the waypoint's own
// ServiceAccount, Service and Deployment after the Gateway, so a Gateway
// named as the workloads' account would collide with that account; the
// controller refuses to take it over, and the suffix keeps the default
// clear of it, as Istio 1.18-1.21 suffixed the objects of its
// service-account waypoints.
const ServiceAccountSuffix = "-waypoint"

// Gateway returns the waypoint Gateway of s, or an error that names the
// bad input.
func (s Spec) Gateway() (*gatewayv1.Gateway, error) {
	name := s.GatewayName()
	if name == ambient.UseWaypointNone {
		return nil, fmt.Errorf("waypoint name %q: reserved (it opts objects out of a waypoint)", name)
	}
	if errs := validation.IsDNS1035Label(name); len(errs) > 0 {
		return nil, fmt.Errorf("waypoint name %q: %s (its Service is named after it): choose one with --name", name, strings.Join(errs, "; "))
	}
	if s.ServiceAccount != "" && name == s.ServiceAccount {
		return nil, fmt.Errorf("waypoint name %q: the name of the service account it serves; the waypoint's own ServiceAccount is named after the waypoint, and would be that account: choose another name", name)
	}
	if s.For == "service-account" {
		return nil, errors.New(`traffic type "service-account": a service account's waypoint is made with --service-account NAME`)
	}
	if s.For != "" && !slices.Contains(TrafficTypes, s.For) {
		return nil, fmt.Errorf("traffic type %q: want one of %s", s.For, strings.Join(TrafficTypes, ", "))
	}
	gw := &gatewayv1.Gateway{
		TypeMeta:   metav1.TypeMeta{APIVersion: gatewayv1.GroupVersion.String(), Kind: "Gateway"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: s.Namespace},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: gateway.WaypointClass,
			Listeners: []gatewayv1.Listener{{
				Name:     ListenerName,
				Port:     mesh.HBONEPort,
				Protocol: ambient.WaypointListenerProtocol,
			}},
		},
	}
	if s.For != "" {
		gw.Labels = map[string]string{ambient.LabelWaypointFor: s.For}
	}
	if s.ServiceAccount != "" {
		gw.Annotations = map[string]string{ambient.AnnotationForServiceAccount: s.ServiceAccount}
	}
	return gw, nil
}

// Client manages waypoints in a cluster.
type Client struct {
	Kube    kubernetes.Interface
	Gateway gatewayclient.Interface
	// Out gets what a person reads: what was done, warnings.
	Out io.Writer
}

// ApplyOptions are apply's flags.
type ApplyOptions struct {
	// EnrollNamespace labels the namespace istio.io/use-waypoint.
	EnrollNamespace bool
	// Overwrite replaces a namespace's (or service account's) binding to
	// another waypoint.
	Overwrite bool
	// Wait waits until the Gateway is Programmed, at most Timeout.
	Wait    bool
	Timeout time.Duration
}

// ErrCRDs is returned when the cluster has no Gateway API.
var ErrCRDs = errors.New("the cluster has no Gateway API CRDs: install them before a waypoint (kubectl apply -f the standard install of sigs.k8s.io/gateway-api)")

// Apply creates or updates the waypoint of s (server-side apply) and
// binds the namespace or the service account to it when asked.
func (c *Client) Apply(ctx context.Context, s Spec, o ApplyOptions) error {
	if o.EnrollNamespace && s.ServiceAccount != "" {
		return errors.New("apply waypoint: --enroll-namespace binds the whole namespace; a --service-account waypoint binds that account only: choose one")
	}
	gw, err := s.Gateway()
	if err != nil {
		return fmt.Errorf("apply waypoint: %w", err)
	}
	ns := s.Namespace
	if o.EnrollNamespace {
		n, err := c.Kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get namespace %s: %w", ns, err)
		}
		if cur := n.Labels[ambient.LabelUseWaypoint]; cur != "" && cur != gw.Name && !o.Overwrite {
			fmt.Fprintf(c.Out, "warning: namespace %s already uses waypoint %s; add --overwrite to use %s instead\n", ns, cur, gw.Name)
			return nil
		}
		if n.Labels[enrolment.LabelDataplaneMode] != enrolment.ModeAmbient {
			fmt.Fprintf(c.Out, "warning: namespace %s is not in the ambient mesh; consider `kubectl label namespace %s %s=%s`\n", ns, ns, enrolment.LabelDataplaneMode, enrolment.ModeAmbient)
		}
	}
	if s.ServiceAccount != "" {
		sa, err := c.Kube.CoreV1().ServiceAccounts(ns).Get(ctx, s.ServiceAccount, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get serviceaccount %s/%s: %w", ns, s.ServiceAccount, err)
		}
		if cur := sa.Labels[ambient.LabelUseWaypoint]; cur != "" && cur != gw.Name && !o.Overwrite {
			fmt.Fprintf(c.Out, "warning: serviceaccount %s/%s already uses waypoint %s; add --overwrite to use %s instead\n", ns, s.ServiceAccount, cur, gw.Name)
			return nil
		}
	}
	body, err := json.Marshal(gw)
	if err != nil {
		return fmt.Errorf("marshal gateway: %w", err)
	}
	force := o.Overwrite
	_, err = c.Gateway.GatewayV1().Gateways(ns).Patch(ctx, gw.Name, types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: FieldManager, Force: &force})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("apply waypoint %s/%s: %w", ns, gw.Name, ErrCRDs)
		}
		return fmt.Errorf("apply waypoint %s/%s: %w", ns, gw.Name, err)
	}
	fmt.Fprintf(c.Out, "waypoint %s/%s applied\n", ns, gw.Name)
	if o.Wait {
		if err := c.WaitProgrammed(ctx, ns, gw.Name, o.Timeout); err != nil {
			return err
		}
		fmt.Fprintf(c.Out, "waypoint %s/%s is ready\n", ns, gw.Name)
	}
	if o.EnrollNamespace {
		if err := c.label(ctx, "namespaces", "", ns, gw.Name); err != nil {
			return err
		}
		fmt.Fprintf(c.Out, "namespace %s labeled with %q: %q\n", ns, ambient.LabelUseWaypoint, gw.Name)
	}
	if s.ServiceAccount != "" {
		if err := c.label(ctx, "serviceaccounts", ns, s.ServiceAccount, gw.Name); err != nil {
			return err
		}
		fmt.Fprintf(c.Out, "serviceaccount %s/%s labeled with %q: %q\n", ns, s.ServiceAccount, ambient.LabelUseWaypoint, gw.Name)
	}
	return nil
}

// label sets (value != "") or removes (value == "") istio.io/use-waypoint
// on a namespace or a service account with a merge patch.
func (c *Client) label(ctx context.Context, resource, ns, name, value string) error {
	var v any = value
	if value == "" {
		v = nil
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]any{ambient.LabelUseWaypoint: v}}})
	var err error
	switch resource {
	case "namespaces":
		_, err = c.Kube.CoreV1().Namespaces().Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: FieldManager})
	default:
		_, err = c.Kube.CoreV1().ServiceAccounts(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: FieldManager})
	}
	if err != nil {
		return fmt.Errorf("label %s %s: %w", strings.TrimSuffix(resource, "s"), strings.TrimPrefix(ns+"/"+name, "/"), err)
	}
	return nil
}

// WaitProgrammed watches the Gateway until its Programmed condition
// (Gateway API's) is True, for at most timeout (no limit when 0).
func (c *Client) WaitProgrammed(ctx context.Context, ns, name string, timeout time.Duration) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	gws := c.Gateway.GatewayV1().Gateways(ns)
	lw := kubewatch.Named(gws, name)
	var last *gatewayv1.Gateway
	_, err := watchtools.UntilWithSync(ctx, lw, &gatewayv1.Gateway{}, nil, func(ev watch.Event) (bool, error) {
		gw, ok := ev.Object.(*gatewayv1.Gateway)
		if !ok {
			return false, nil
		}
		if ev.Type == watch.Deleted {
			return false, fmt.Errorf("wait for waypoint %s/%s: deleted", ns, name)
		}
		last = gw
		return Programmed(gw) == metav1.ConditionTrue, nil
	})
	if err != nil {
		if errors.Is(err, watchtools.ErrWatchClosed) || errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			why := "no Programmed condition yet (is istiod's waypoint controller running?)"
			if last != nil {
				if cond := condition(last, string(gatewayv1.GatewayConditionProgrammed)); cond != nil {
					why = fmt.Sprintf("Programmed is %s: %s: %s", cond.Status, cond.Reason, cond.Message)
				}
			}
			return fmt.Errorf("wait for waypoint %s/%s to be programmed: timed out after %s: %s", ns, name, timeout, why)
		}
		return err
	}
	return nil
}

func condition(gw *gatewayv1.Gateway, t string) *metav1.Condition {
	for i := range gw.Status.Conditions {
		if gw.Status.Conditions[i].Type == t {
			return &gw.Status.Conditions[i]
		}
	}
	return nil
}

// Programmed is the status of the Gateway's Programmed condition,
// Unknown when it has none.
func Programmed(gw *gatewayv1.Gateway) metav1.ConditionStatus {
	if c := condition(gw, string(gatewayv1.GatewayConditionProgrammed)); c != nil {
		return c.Status
	}
	return metav1.ConditionUnknown
}

// IsWaypoint says whether gw is of the waypoint class.
func IsWaypoint(gw *gatewayv1.Gateway) bool {
	return string(gw.Spec.GatewayClassName) == gateway.WaypointClass
}

// List returns the waypoints of namespace ns (all when empty), sorted by
// namespace and name.
func (c *Client) List(ctx context.Context, ns string) ([]gatewayv1.Gateway, error) {
	l, err := c.Gateway.GatewayV1().Gateways(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("list waypoints: %w", ErrCRDs)
		}
		return nil, fmt.Errorf("list waypoints: %w", err)
	}
	out := slices.DeleteFunc(l.Items, func(gw gatewayv1.Gateway) bool { return !IsWaypoint(&gw) })
	slices.SortFunc(out, func(a, b gatewayv1.Gateway) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out, nil
}

// TrafficType is what traffic gw takes: its istio.io/waypoint-for, or
// istiod's default (all for a service-account waypoint, service
// otherwise) marked as such.
func TrafficType(gw *gatewayv1.Gateway) string {
	if v := gw.Labels[ambient.LabelWaypointFor]; v != "" {
		return v
	}
	if gw.Annotations[ambient.AnnotationForServiceAccount] != "" {
		return ambient.WaypointForAll + " (default)"
	}
	return ambient.WaypointForService + " (default)"
}

// Delete deletes the named waypoints of ns, or all of them when all is
// set, and takes the istio.io/use-waypoint label that apply put on a
// service account off it.
func (c *Client) Delete(ctx context.Context, ns string, names []string, all bool) error {
	if all == (len(names) > 0) {
		return errors.New("delete waypoint: name waypoints or give --all, not both or neither")
	}
	var gws []gatewayv1.Gateway
	if all {
		var err error
		if gws, err = c.List(ctx, ns); err != nil {
			return err
		}
		if len(gws) == 0 {
			fmt.Fprintf(c.Out, "no waypoints in namespace %s\n", ns)
			return nil
		}
	} else {
		for _, n := range names {
			gw, err := c.Gateway.GatewayV1().Gateways(ns).Get(ctx, n, metav1.GetOptions{})
			if err != nil {
				return fmt.Errorf("get waypoint %s/%s: %w", ns, n, err)
			}
			if !IsWaypoint(gw) {
				return fmt.Errorf("delete waypoint %s/%s: gateway of class %q, not a waypoint (%s)", ns, n, gw.Spec.GatewayClassName, gateway.WaypointClass)
			}
			gws = append(gws, *gw)
		}
	}
	var errs []error
	for _, gw := range gws {
		if err := c.Gateway.GatewayV1().Gateways(ns).Delete(ctx, gw.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete waypoint %s/%s: %w", ns, gw.Name, err))
			continue
		}
		fmt.Fprintf(c.Out, "waypoint %s/%s deleted\n", ns, gw.Name)
		if sa := gw.Annotations[ambient.AnnotationForServiceAccount]; sa != "" {
			acct, err := c.Kube.CoreV1().ServiceAccounts(ns).Get(ctx, sa, metav1.GetOptions{})
			if err == nil && acct.Labels[ambient.LabelUseWaypoint] == gw.Name {
				if err := c.label(ctx, "serviceaccounts", ns, sa, ""); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintf(c.Out, "serviceaccount %s/%s no longer uses it\n", ns, sa)
			}
		}
	}
	return errors.Join(errs...)
}
