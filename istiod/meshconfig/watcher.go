package meshconfig

import (
	"context"
	"log/slog"
	"slices"
	"sync"

	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"

	"github.com/ambitmesh/ambit/internal/logkey"
)

// Event reason of a MeshConfig that istiod refused.
const ReasonInvalid = "InvalidMeshConfig"

// Watcher keeps the MeshConfig of one namespace's ConfigMap "istio".
// Its informer's handler parses each version; subscribers run on that
// goroutine after every change of the MeshConfig in force.
type Watcher struct {
	namespace string
	kube      kubernetes.Interface
	log       *slog.Logger
	informer  cache.SharedIndexInformer

	mu      sync.Mutex
	current *meshv1alpha1.MeshConfig
	// lastErr is the error of the ConfigMap's last version ("" when it
	// was good), for tests and /debug.
	lastErr string
	subs    []func(*meshv1alpha1.MeshConfig)
	rec     events.EventRecorder
	// pending is a refusal seen before Run had a recorder.
	pending *refusal
}

type refusal struct {
	cm  *corev1.ConfigMap
	err error
}

// NewWatcher watches ConfigMap "istio" in namespace; until it is seen,
// the MeshConfig is Default.
func NewWatcher(kube kubernetes.Interface, namespace string, log *slog.Logger) *Watcher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sel := fields.OneTermEqualSelector("metadata.name", ConfigMapName).String()
	cms := kube.CoreV1().ConfigMaps(namespace)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			return cms.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			return cms.Watch(ctx, o)
		},
	}
	w := &Watcher{namespace: namespace, kube: kube, log: log, current: Default(),
		informer: cache.NewSharedIndexInformer(lw, &corev1.ConfigMap{}, 0, cache.Indexers{})}
	_, _ = w.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { w.update(o) },
		UpdateFunc: func(_, o any) { w.update(o) },
		DeleteFunc: func(any) { w.apply(Default(), nil) },
	})
	return w
}

// Informer is the watcher's informer, to start and sync with istiod's
// others (cluster.AddInformer).
func (w *Watcher) Informer() cache.SharedIndexInformer { return w.informer }

// Run records refusals as Events until ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	b := events.NewBroadcaster(&events.EventSinkImpl{Interface: w.kube.EventsV1()})
	b.StartRecordingToSink(ctx.Done())
	w.mu.Lock()
	w.rec = b.NewRecorder(scheme.Scheme, "istiod")
	p := w.pending
	w.pending = nil
	w.mu.Unlock()
	if p != nil {
		w.event(w.rec, p)
	}
	<-ctx.Done()
	b.Shutdown()
}

// Mesh is the MeshConfig in force. Callers must not modify it.
func (w *Watcher) Mesh() *meshv1alpha1.MeshConfig {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.current
}

// LastError is why the ConfigMap's current version was refused ("" when
// it was not).
func (w *Watcher) LastError() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastErr
}

// Subscribe calls f with every MeshConfig that comes into force.
func (w *Watcher) Subscribe(f func(*meshv1alpha1.MeshConfig)) {
	w.mu.Lock()
	w.subs = append(w.subs, f)
	w.mu.Unlock()
}

func (w *Watcher) update(o any) {
	cm, ok := o.(*corev1.ConfigMap)
	if !ok {
		return
	}
	m, err := Parse(cm.Data[ConfigMapKey])
	if err != nil {
		w.log.Error("mesh config refused; the last good one stays in force", logkey.Object, "ConfigMap/"+cm.Namespace+"/"+cm.Name, logkey.Error, err)
		w.mu.Lock()
		w.lastErr = err.Error()
		rec := w.rec
		if rec == nil {
			w.pending = &refusal{cm: cm, err: err}
		}
		w.mu.Unlock()
		if rec != nil {
			w.event(rec, &refusal{cm: cm, err: err})
		}
		return
	}
	w.apply(m, cm)
}

func (w *Watcher) event(rec events.EventRecorder, r *refusal) {
	rec.Eventf(r.cm, nil, corev1.EventTypeWarning, ReasonInvalid, "LoadMeshConfig",
		"mesh config refused, the last good one stays in force: %v", r.err)
}

func (w *Watcher) apply(m *meshv1alpha1.MeshConfig, cm *corev1.ConfigMap) {
	w.mu.Lock()
	w.current = m
	w.lastErr = ""
	w.pending = nil
	subs := slices.Clone(w.subs)
	w.mu.Unlock()
	if cm != nil {
		w.log.Info("mesh config loaded", logkey.Object, "ConfigMap/"+cm.Namespace+"/"+cm.Name)
	}
	for _, f := range subs {
		f(m)
	}
}
