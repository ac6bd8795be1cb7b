package server

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	metaapi "istio.io/api/meta/v1alpha1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/istiod/authz"
)

// ConditionZtunnelAccepted is the condition istiod sets on a security
// policy to say how ztunnels enforce it.
const ConditionZtunnelAccepted = "ZtunnelAccepted"

// statusWriter reports policy translation results in the policies'
// status. It writes only what changed since its last write, from its own
// goroutine, so a slow apiserver never delays a push.
type statusWriter struct {
	istio   istioclient.Interface
	log     *slog.Logger
	latest  chan map[string]string
	written map[string]string
}

func newStatusWriter(istio istioclient.Interface, log *slog.Logger) *statusWriter {
	return &statusWriter{istio: istio, log: log, latest: make(chan map[string]string, 1), written: map[string]string{}}
}

// offer hands over the newest statuses, replacing any not yet written.
func (w *statusWriter) offer(st map[string]string) {
	for {
		select {
		case w.latest <- st:
			return
		default:
		}
		select {
		case <-w.latest:
		default:
		}
	}
}

func (w *statusWriter) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case st := <-w.latest:
			for key, msg := range st {
				if old, ok := w.written[key]; ok && old == msg {
					continue
				}
				if msg != "" {
					w.log.Warn("policy not enforced as written", logkey.Policy, key, logkey.Reason, msg)
				}
				if err := w.write(ctx, key, msg); err != nil {
					w.log.Warn("write policy status", logkey.Policy, key, logkey.Error, err)
					continue
				}
				w.written[key] = msg
			}
			for key := range w.written {
				if _, ok := st[key]; !ok {
					if err := w.write(ctx, key, ""); err != nil {
						w.log.Debug("clear policy status", logkey.Policy, key, logkey.Error, err)
					}
					delete(w.written, key)
				}
			}
		}
	}
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
	kind, rest, _ := strings.Cut(key, "/")
	ns, name, _ := strings.Cut(rest, "/")
	cond := condition(msg)
	sec := w.istio.SecurityV1()
	switch kind {
	case authz.KindAuthorizationPolicy:
		p, err := sec.AuthorizationPolicies(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get %s: %w", key, err)
		}
		cond.ObservedGeneration = p.Generation
		p.Status.Conditions = []*metaapi.IstioCondition{cond}
		_, err = sec.AuthorizationPolicies(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("update status of %s: %w", key, err)
		}
	case authz.KindPeerAuthentication:
		p, err := sec.PeerAuthentications(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get %s: %w", key, err)
		}
		cond.ObservedGeneration = p.Generation
		p.Status.Conditions = []*metaapi.IstioCondition{cond}
		_, err = sec.PeerAuthentications(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("update status of %s: %w", key, err)
		}
	default:
		return fmt.Errorf("write status of %s: unknown kind", key)
	}
	return nil
}
