package ca

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/ambitmesh/ambit/internal/logkey"
)

// RootCertConfigMap is the ConfigMap, in every namespace, that carries the
// mesh root certificate under RootCertKey, as in Istio.
const (
	RootCertConfigMap = "istio-ca-root-cert"
	RootCertKey       = "root-cert.pem"
)

// systemNamespaces get no RootCertConfigMap: Kubernetes' own, where no
// mesh workload runs (Istio skips the same ones).
var systemNamespaces = map[string]bool{"kube-system": true, "kube-public": true, "kube-node-lease": true, "local-path-storage": true}

// RootCertPublisher keeps RootCertConfigMap in every namespace but
// Kubernetes' system namespaces, driven by the namespace informer and by
// changes to the ConfigMaps themselves.
type RootCertPublisher struct {
	kube    kubernetes.Interface
	rootPEM string
	queue   workqueue.TypedRateLimitingInterface[string]
	log     *slog.Logger
}

// NewRootCertPublisher registers its handlers on the informers; they must
// be started by the caller. Namespaces are queued as the informers report
// them and worked by Run.
func NewRootCertPublisher(kube kubernetes.Interface, namespaces coreinformers.NamespaceInformer, configMaps coreinformers.ConfigMapInformer, log *slog.Logger) (*RootCertPublisher, error) {
	p := &RootCertPublisher{
		kube: kube, log: log,
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
	}
	if _, err := namespaces.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { p.enqueue(o) },
		UpdateFunc: func(_, o any) { p.enqueue(o) },
	}); err != nil {
		return nil, fmt.Errorf("add namespace handler: %w", err)
	}
	if _, err := configMaps.Informer().AddEventHandler(cache.FilteringResourceEventHandler{
		FilterFunc: func(o any) bool {
			if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = d.Obj
			}
			cm, ok := o.(*corev1.ConfigMap)
			return ok && cm.Name == RootCertConfigMap && !systemNamespaces[cm.Namespace]
		},
		Handler: cache.ResourceEventHandlerFuncs{
			UpdateFunc: func(_, o any) { p.queue.Add(o.(*corev1.ConfigMap).Namespace) },
			DeleteFunc: func(o any) {
				if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
					o = d.Obj
				}
				p.queue.Add(o.(*corev1.ConfigMap).Namespace)
			},
		},
	}); err != nil {
		return nil, fmt.Errorf("add configmap handler: %w", err)
	}
	return p, nil
}

func (p *RootCertPublisher) enqueue(o any) {
	if ns, ok := o.(*corev1.Namespace); ok && ns.Status.Phase != corev1.NamespaceTerminating && !systemNamespaces[ns.Name] {
		p.queue.Add(ns.Name)
	}
}

// Run works the queue until ctx ends, publishing rootPEM. Call it once.
func (p *RootCertPublisher) Run(ctx context.Context, rootPEM string) {
	p.rootPEM = rootPEM
	go func() {
		<-ctx.Done()
		p.queue.ShutDown()
	}()
	for {
		ns, shutdown := p.queue.Get()
		if shutdown {
			return
		}
		if err := p.ensure(ctx, ns); err != nil {
			p.log.Warn("publish root certificate", logkey.Namespace, ns, logkey.Error, err)
			p.queue.AddRateLimited(ns)
		} else {
			p.queue.Forget(ns)
		}
		p.queue.Done(ns)
	}
}

func (p *RootCertPublisher) ensure(ctx context.Context, ns string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cms := p.kube.CoreV1().ConfigMaps(ns)
	cm, err := cms.Get(ctx, RootCertConfigMap, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: RootCertConfigMap, Namespace: ns, Labels: map[string]string{"istio.io/config": "true"}},
			Data:       map[string]string{RootCertKey: p.rootPEM},
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) || apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause) {
			return nil // created meanwhile, or the namespace is going away
		}
		if err != nil {
			return fmt.Errorf("create configmap %s/%s: %w", ns, RootCertConfigMap, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("get configmap %s/%s: %w", ns, RootCertConfigMap, err)
	}
	if cm.Data[RootCertKey] == p.rootPEM {
		return nil
	}
	cm = cm.DeepCopy()
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[RootCertKey] = p.rootPEM
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update configmap %s/%s: %w", ns, RootCertConfigMap, err)
	}
	return nil
}
