package waypoint

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"
	metaapi "istio.io/api/meta/v1alpha1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/istiod/authz"
	"github.com/ambitmesh/ambit/istiod/gateway"
)

// ConditionWaypointAccepted is the condition istiod sets on an
// AuthorizationPolicy with targetRefs to say how waypoints enforce it
// (Istio's name and reasons).
const ConditionWaypointAccepted = "WaypointAccepted"

// Reasons of WaypointAccepted, Istio's.
const (
	ReasonPolicyAccepted   = "Accepted"
	ReasonInvalid          = "Invalid"
	ReasonPartiallyInvalid = "PartiallyInvalid"
	ReasonAncestorNotBound = "AncestorNotBound"
	ReasonTargetNotFound   = "TargetNotFound"
)

// policyBinding is one targetRef's outcome.
type policyBinding struct {
	ancestor, reason, message string
	bound                     bool
}

// policyTargets says what the targetRefs of policies may name: which
// waypoints exist, and which waypoint serves a Service ("" when none;
// ok false when there is no such Service).
type policyTargets struct {
	rootNS    string
	waypoints map[Ref]bool
	service   func(ns, name string) (waypoint string, ok bool)
}

// policyStatuses are the WaypointAccepted conditions of the policies with
// targetRefs, as Istio writes them (one binding per targetRef, flattened
// into one condition), and, where a waypoint enforces part of a policy
// stricter than written (notes, by authz.StatusKey), what and how.
func policyStatuses(aps []*securityv1.AuthorizationPolicy, t policyTargets, notes map[string][]string) []ObjectStatus {
	var out []ObjectStatus
	for _, ap := range aps {
		refs := ap.Spec.GetTargetRefs()
		if r := ap.Spec.GetTargetRef(); r != nil {
			refs = append(refs, r)
		}
		if len(refs) == 0 {
			continue // ztunnel's (ConditionZtunnelAccepted)
		}
		var bs []policyBinding
		for _, r := range refs {
			ns := ap.Namespace
			if r.GetNamespace() != "" {
				ns = r.GetNamespace()
			}
			group := r.GetGroup()
			if group == "" {
				group = "core"
			}
			b := policyBinding{ancestor: r.GetKind() + "." + group + ":" + ns + "/" + r.GetName()}
			switch {
			case ns != ap.Namespace:
				b.reason, b.message = ReasonInvalid, fmt.Sprintf("targetRef %s: a policy may only target objects of its own namespace", b.ancestor)
			case r.GetKind() == "GatewayClass" && r.GetGroup() == "gateway.networking.k8s.io":
				switch {
				case ns != t.rootNS:
					b.reason, b.message = ReasonInvalid, fmt.Sprintf("AuthorizationPolicy must be in the root namespace `%s` when referencing a GatewayClass", t.rootNS)
				case r.GetName() != gateway.WaypointClass:
					b.reason, b.message = ReasonInvalid, fmt.Sprintf("GatewayClass %s is not the waypoint class %s", r.GetName(), gateway.WaypointClass)
				default:
					b.bound, b.reason, b.message = true, ReasonPolicyAccepted, "bound to "+r.GetName()
				}
			case r.GetKind() == "Gateway" && r.GetGroup() == "gateway.networking.k8s.io":
				if t.waypoints[Ref{Namespace: ns, Name: r.GetName()}] {
					b.bound, b.reason, b.message = true, ReasonPolicyAccepted, "bound to "+ns+"/"+r.GetName()
				} else {
					b.reason, b.message = ReasonTargetNotFound, fmt.Sprintf("Gateway %s/%s is no waypoint", ns, r.GetName())
				}
			case r.GetKind() == "Service" && (r.GetGroup() == "" || r.GetGroup() == "core"):
				wp, ok := t.service(ns, r.GetName())
				switch {
				case !ok:
					b.reason, b.message = ReasonTargetNotFound, fmt.Sprintf("Service %s/%s was not found", ns, r.GetName())
				case wp == "":
					b.reason, b.message = ReasonAncestorNotBound, fmt.Sprintf("Service %s/%s is not bound to a waypoint", ns, r.GetName())
				default:
					b.bound, b.reason, b.message = true, ReasonPolicyAccepted, "bound to "+wp
				}
			default:
				b.reason, b.message = ReasonInvalid, fmt.Sprintf("targetRef %s: waypoints enforce policies on a Gateway, a Service or the %s GatewayClass", b.ancestor, gateway.WaypointClass)
			}
			bs = append(bs, b)
		}
		c := flattenBindings(bs, ap.Generation)
		if n := notes[authz.StatusKey(authz.KindAuthorizationPolicy, ap.Namespace, ap.Name)]; c.Status == metav1.ConditionTrue && len(n) > 0 {
			// Enforced, but part of it stricter than written: an ALLOW
			// allows less, a DENY denies more.
			c.Reason = ReasonUnsupportedValue
			c.Message += "; enforced stricter than written (failing safe): " + strings.Join(n, "; ")
		}
		out = append(out, ObjectStatus{Kind: authz.KindAuthorizationPolicy, Namespace: ap.Namespace, Name: ap.Name, Generation: ap.Generation, Conditions: []metav1.Condition{c}})
	}
	return out
}

// flattenBindings is Istio's one condition of many bindings: bound if
// any is; PartiallyInvalid when some are not.
func flattenBindings(bs []policyBinding, gen int64) metav1.Condition {
	if len(bs) == 1 {
		return cond(ConditionWaypointAccepted, bs[0].bound, bs[0].reason, bs[0].message, gen)
	}
	bound := false
	var unbound, msgs []string
	for _, b := range bs {
		if b.bound {
			bound = true
			msgs = append(msgs, b.message)
		} else {
			unbound = append(unbound, b.ancestor)
		}
	}
	reason, msg := ReasonInvalid, ""
	if bound {
		reason, msg = ReasonPolicyAccepted, strings.Join(msgs, ", ")
	}
	if len(unbound) > 0 {
		if bound {
			reason = ReasonPartiallyInvalid
			msg += "; "
		}
		msg += "Invalid targetRefs: " + strings.Join(unbound, ", ")
	}
	return cond(ConditionWaypointAccepted, bound, reason, msg, gen)
}

// SetCondition puts c among conds in place of the condition of its type,
// keeping the transition time when the status did not change; changed
// reports whether anything but times differs.
func SetCondition(conds []*metaapi.IstioCondition, c *metaapi.IstioCondition, now metav1.Time) ([]*metaapi.IstioCondition, bool) {
	out := make([]*metaapi.IstioCondition, 0, len(conds)+1)
	found, changed := false, true
	for _, o := range conds {
		if o.GetType() != c.GetType() {
			out = append(out, o)
			continue
		}
		found = true
		n := &metaapi.IstioCondition{Type: c.Type, Status: c.Status, Reason: c.Reason, Message: c.Message, ObservedGeneration: c.ObservedGeneration, LastTransitionTime: o.GetLastTransitionTime()}
		if o.GetStatus() != c.GetStatus() || n.LastTransitionTime == nil {
			n.LastTransitionTime = timestamppb.New(now.Time)
		}
		changed = o.GetStatus() != c.GetStatus() || o.GetReason() != c.GetReason() || o.GetMessage() != c.GetMessage() || o.GetObservedGeneration() != c.GetObservedGeneration()
		out = append(out, n)
	}
	if !found {
		n := &metaapi.IstioCondition{Type: c.Type, Status: c.Status, Reason: c.Reason, Message: c.Message, ObservedGeneration: c.ObservedGeneration, LastTransitionTime: timestamppb.New(now.Time)}
		out = append(out, n)
	}
	return out, changed
}

// RemoveCondition drops the condition of a type; changed reports
// whether there was one.
func RemoveCondition(conds []*metaapi.IstioCondition, typ string) ([]*metaapi.IstioCondition, bool) {
	out := make([]*metaapi.IstioCondition, 0, len(conds))
	for _, o := range conds {
		if o.GetType() != typ {
			out = append(out, o)
		}
	}
	return out, len(out) != len(conds)
}

// IstioStatusClient is what UpdateIstioStatus needs of a typed Istio
// client of one kind in one namespace (AuthorizationPolicies(ns), ...).
type IstioStatusClient[T any] interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error)
	UpdateStatus(ctx context.Context, obj T, opts metav1.UpdateOptions) (T, error)
}

// UpdateIstioStatus reads object name with c, lets change edit its
// status (status returns the object's) knowing its generation, and
// writes the status back when change says it changed anything; it
// retries on conflict.
func UpdateIstioStatus[T metav1.Object](ctx context.Context, c IstioStatusClient[T], name string, status func(T) *metaapi.IstioStatus, change func(st *metaapi.IstioStatus, generation int64) bool) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		o, err := c.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get %s: %w", name, err)
		}
		if !change(status(o), o.GetGeneration()) {
			return nil
		}
		if _, err := c.UpdateStatus(ctx, o, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("update status of %s: %w", name, err)
		}
		return nil
	})
}

// The status fields of the kinds whose status istiod writes.
func authorizationPolicyStatus(o *securityv1.AuthorizationPolicy) *metaapi.IstioStatus {
	return &o.Status
}
func virtualServiceStatus(o *networkingv1.VirtualService) *metaapi.IstioStatus   { return &o.Status }
func destinationRuleStatus(o *networkingv1.DestinationRule) *metaapi.IstioStatus { return &o.Status }

func istioCondition(c metav1.Condition) *metaapi.IstioCondition {
	return &metaapi.IstioCondition{Type: c.Type, Status: string(c.Status), Reason: c.Reason, Message: c.Message, ObservedGeneration: c.ObservedGeneration}
}

// istioStatusKey names an object's status for the writer's memory.
func (s ObjectStatus) key() string { return s.Kind + "/" + s.Namespace + "/" + s.Name }

// writeIstioStatuses writes the conditions of VirtualServices,
// DestinationRules and AuthorizationPolicies where they differ from what
// the objects have; other condition types (ztunnel's) stay. A policy
// that no longer has targetRefs loses its WaypointAccepted.
func (c *Controller) writeIstioStatuses(ctx context.Context, sts []ObjectStatus) {
	if c.istio == nil {
		return
	}
	sort.Slice(sts, func(i, j int) bool { return sts[i].key() < sts[j].key() })
	seen := map[string]bool{}
	for _, st := range sts {
		seen[st.key()] = true
		if err := c.writeIstioStatus(ctx, st); err != nil {
			c.log.Warn("write status", logkey.Object, st.key(), logkey.Error, err)
		}
	}
	for k := range c.wroteStatus {
		if seen[k] {
			continue
		}
		delete(c.wroteStatus, k)
		kind, rest, _ := strings.Cut(k, "/")
		ns, name, _ := strings.Cut(rest, "/")
		if kind != authz.KindAuthorizationPolicy {
			continue // deleted
		}
		err := UpdateIstioStatus(ctx, c.istio.SecurityV1().AuthorizationPolicies(ns), name, authorizationPolicyStatus, func(st *metaapi.IstioStatus, _ int64) bool {
			var changed bool
			st.Conditions, changed = RemoveCondition(st.Conditions, ConditionWaypointAccepted)
			return changed
		})
		if err != nil {
			c.log.Debug("clear waypoint policy status", logkey.Object, k, logkey.Error, err)
		}
	}
}

func (c *Controller) writeIstioStatus(ctx context.Context, st ObjectStatus) error {
	if c.wroteStatus[st.key()] == fmt.Sprint(st.Conditions) {
		return nil
	}
	now := metav1.Now()
	apply := func(have *metaapi.IstioStatus, _ int64) bool {
		any := false
		for _, cd := range st.Conditions {
			var changed bool
			have.Conditions, changed = SetCondition(have.Conditions, istioCondition(cd), now)
			any = any || changed
		}
		return any
	}
	var err error
	switch st.Kind {
	case KindVirtualService:
		err = UpdateIstioStatus(ctx, c.istio.NetworkingV1().VirtualServices(st.Namespace), st.Name, virtualServiceStatus, apply)
	case KindDestinationRule:
		err = UpdateIstioStatus(ctx, c.istio.NetworkingV1().DestinationRules(st.Namespace), st.Name, destinationRuleStatus, apply)
	case authz.KindAuthorizationPolicy:
		err = UpdateIstioStatus(ctx, c.istio.SecurityV1().AuthorizationPolicies(st.Namespace), st.Name, authorizationPolicyStatus, apply)
	default:
		err = errors.New("unknown kind")
	}
	if err != nil {
		return fmt.Errorf("update status of %s: %w", st.key(), err)
	}
	c.wroteStatus[st.key()] = fmt.Sprint(st.Conditions)
	return nil
}
