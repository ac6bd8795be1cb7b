package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	metaapi "istio.io/api/meta/v1alpha1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/istiod/authz"
	"github.com/ambitmesh/ambit/istiod/statusqueue"
	"github.com/ambitmesh/ambit/istiod/waypoint"
)

// ConditionZtunnelAccepted is the condition istiod sets on a security
// policy to say how ztunnels enforce it.
const ConditionZtunnelAccepted = "ZtunnelAccepted"

// statusWriter reports policy translation results in the policies'
// status, from its own goroutine (statusqueue), so a slow apiserver never
// delays a push.
type statusWriter struct {
	istio istioclient.Interface
	log   *slog.Logger
	queue *statusqueue.Queue[string]
}

func newStatusWriter(istio istioclient.Interface, log *slog.Logger) *statusWriter {
	return &statusWriter{istio: istio, log: log, queue: statusqueue.New[string]()}
}

// offer hands over the newest statuses, replacing any not yet written.
func (w *statusWriter) offer(st map[string]string) { w.queue.Offer(st) }

func (w *statusWriter) run(ctx context.Context) {
	w.queue.Run(ctx, func(ctx context.Context, key, msg string) error {
		if msg != "" {
			w.log.Warn("policy not enforced as written", logkey.Policy, key, logkey.Reason, msg)
		}
		err := w.write(ctx, key, msg)
		if err != nil {
			w.log.Warn("write policy status", logkey.Policy, key, logkey.Error, err)
		}
		return err
	}, func(ctx context.Context, key string) {
		// Deleted, or now a waypoint's (targetRefs): no longer
		// ztunnel's to report on.
		if err := w.clear(ctx, key); err != nil {
			w.log.Debug("clear policy status", logkey.Policy, key, logkey.Error, err)
		}
	})
}

func condition(msg string) *metaapi.IstioCondition {
	c := &metaapi.IstioCondition{Type: ConditionZtunnelAccepted, Status: "True", Reason: "Accepted", Message: "enforced by ztunnel as written"}
	switch {
	case strings.HasPrefix(msg, "rejected: "), strings.HasPrefix(msg, "invalid: "):
		// Invalid values are enforced stricter than written (see
		// authz.Translate), but the policy as written is not accepted.
		c.Status, c.Reason, c.Message = "False", "Invalid", msg
	case msg != "":
		c.Reason, c.Message = "UnsupportedValue", msg
	}
	return c
}

func (w *statusWriter) write(ctx context.Context, key, msg string) error {
	c := condition(msg)
	return w.update(ctx, key, func(conds []*metaapi.IstioCondition, gen int64) ([]*metaapi.IstioCondition, bool) {
		c.ObservedGeneration = gen
		return waypoint.SetCondition(conds, c, metav1.Now())
	})
}

// clear removes the ZtunnelAccepted condition of a policy, if it still
// exists.
func (w *statusWriter) clear(ctx context.Context, key string) error {
	return w.update(ctx, key, func(conds []*metaapi.IstioCondition, _ int64) ([]*metaapi.IstioCondition, bool) {
		return waypoint.RemoveCondition(conds, ConditionZtunnelAccepted)
	})
}

// update changes a policy's conditions with f, keeping those of other
// types (the waypoints' WaypointAccepted), and writes them if f changed
// anything.
func (w *statusWriter) update(ctx context.Context, key string, f func([]*metaapi.IstioCondition, int64) ([]*metaapi.IstioCondition, bool)) error {
	kind, rest, _ := strings.Cut(key, "/")
	ns, name, _ := strings.Cut(rest, "/")
	change := func(st *metaapi.IstioStatus, gen int64) bool {
		var changed bool
		st.Conditions, changed = f(st.Conditions, gen)
		return changed
	}
	sec := w.istio.SecurityV1()
	var err error
	switch kind {
	case authz.KindAuthorizationPolicy:
		err = waypoint.UpdateIstioStatus(ctx, sec.AuthorizationPolicies(ns), name,
			func(p *securityv1.AuthorizationPolicy) *metaapi.IstioStatus { return &p.Status }, change)
	case authz.KindPeerAuthentication:
		err = waypoint.UpdateIstioStatus(ctx, sec.PeerAuthentications(ns), name,
			func(p *securityv1.PeerAuthentication) *metaapi.IstioStatus { return &p.Status }, change)
	default:
		err = errors.New("unknown kind")
	}
	if err != nil {
		return fmt.Errorf("write status of %s: %w", key, err)
	}
	return nil
}
