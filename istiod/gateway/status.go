package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"

	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/istiod/cluster"
	"github.com/ambitmesh/ambit/istiod/statusqueue"
)

// ConditionWaypointBound is the condition Istio puts on a bound Service
// to say whether its waypoint binding took.
const ConditionWaypointBound = "istio.io/WaypointBound"

// Binding is the outcome of one object's waypoint binding, as the
// ambient model computes it (its BindingStatus, field for field).
type Binding struct {
	Bound   bool   `json:"bound"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// BindingWriter reports waypoint bindings on the bound objects:
//   - a Service gets the istio.io/WaypointBound condition in its status,
//     as Istio writes it (server-side apply of status.conditions, field
//     manager FieldManager; removed when the Service loses its binding);
//   - a Namespace or ServiceAccount has no condition list (Istio writes
//     nothing on them): each change of its binding is an Event
//     (events.k8s.io) regarding it, Warning when the binding did not
//     take, Normal when it did, shown by `kubectl describe`.
//
// Keys are the model's ("Kind/namespace/name", "Namespace/name"); other
// kinds are left to their own writers (Gateways: WaypointController).
// Like the policy status writer it writes from its own goroutine only
// what changed since its last write, so a slow apiserver never delays a
// push.
type BindingWriter struct {
	kube       kubernetes.Interface
	log        *slog.Logger
	services   corelisters.ServiceLister
	namespaces corelisters.NamespaceLister
	accounts   corelisters.ServiceAccountLister
	queue      *statusqueue.Queue[Binding]
}

// NewBindingWriter builds the writer; RegisterInformers, then Run.
func NewBindingWriter(log *slog.Logger) *BindingWriter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &BindingWriter{log: log, queue: statusqueue.New[Binding]()}
}

// RegisterInformers takes the listers it reads current objects from.
func (w *BindingWriter) RegisterInformers(cl *cluster.Cluster) {
	w.kube = cl.Kube
	core := cl.KubeInformers.Core().V1()
	w.services = core.Services().Lister()
	w.namespaces = core.Namespaces().Lister()
	w.accounts = core.ServiceAccounts().Lister()
}

// Offer hands over the complete binding statuses, replacing any not yet
// written.
func (w *BindingWriter) Offer(st map[string]Binding) { w.queue.Offer(st) }

// Run writes until ctx ends.
func (w *BindingWriter) Run(ctx context.Context) {
	b := events.NewBroadcaster(&events.EventSinkImpl{Interface: w.kube.EventsV1()})
	b.StartRecordingToSink(ctx.Done())
	defer b.Shutdown()
	rec := b.NewRecorder(scheme.Scheme, "istiod")
	w.queue.Run(ctx, func(ctx context.Context, key string, cur Binding) error {
		err := w.write(ctx, rec, key, &cur)
		if err != nil {
			w.log.Warn("write waypoint binding status", logkey.Object, key, logkey.Error, err)
		}
		return err
	}, func(ctx context.Context, key string) {
		if err := w.write(ctx, rec, key, nil); err != nil {
			w.log.Debug("clear waypoint binding status", logkey.Object, key, logkey.Error, err)
		}
	})
}

// write reports one object's binding; b nil: it has none any more.
func (w *BindingWriter) write(ctx context.Context, rec events.EventRecorder, key string, b *Binding) error {
	kind, rest, _ := strings.Cut(key, "/")
	switch kind {
	case "Service":
		ns, name, _ := strings.Cut(rest, "/")
		return w.writeService(ctx, ns, name, b)
	case "Namespace", "ServiceAccount":
		if b == nil {
			return nil // nothing to take back: events are history
		}
		var obj runtime.Object
		var err error
		if kind == "Namespace" {
			obj, err = w.namespaces.Get(rest)
		} else {
			ns, name, _ := strings.Cut(rest, "/")
			obj, err = w.accounts.ServiceAccounts(ns).Get(name)
		}
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("get %s: %w", key, err)
		}
		typ := corev1.EventTypeNormal
		if !b.Bound {
			typ = corev1.EventTypeWarning
		}
		rec.Eventf(obj, nil, typ, b.Reason, "BindWaypoint", "%s", b.Message)
		return nil
	}
	return nil
}

// writeService applies the Service's WaypointBound condition (or, b nil,
// takes it back), keeping its transition time while its status stays.
func (w *BindingWriter) writeService(ctx context.Context, ns, name string, b *Binding) error {
	svc, err := w.services.Services(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("get service %s/%s: %w", ns, name, err)
	}
	var conds []metav1.Condition
	if b != nil {
		cond := metav1.Condition{Type: ConditionWaypointBound, Status: metav1.ConditionFalse, Reason: b.Reason, Message: b.Message,
			ObservedGeneration: svc.Generation, LastTransitionTime: metav1.Now()}
		if b.Bound {
			cond.Status = metav1.ConditionTrue
		}
		if old := meta.FindStatusCondition(svc.Status.Conditions, ConditionWaypointBound); old != nil && old.Status == cond.Status {
			cond.LastTransitionTime = old.LastTransitionTime
		}
		conds = []metav1.Condition{cond}
	}
	status := map[string]any{}
	if conds != nil {
		status["conditions"] = conds
	}
	body, err := json.Marshal(map[string]any{
		"apiVersion": "v1", "kind": "Service",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"status":   status,
	})
	if err != nil {
		return fmt.Errorf("encode service %s/%s status: %w", ns, name, err)
	}
	_, err = w.kube.CoreV1().Services(ns).Patch(ctx, name, types.ApplyPatchType, body,
		metav1.PatchOptions{FieldManager: FieldManager, Force: ptr.To(true)}, "status")
	if err != nil {
		return fmt.Errorf("apply service %s/%s status: %w", ns, name, err)
	}
	return nil
}
