// Package cluster is istiod's one view of the cluster: a client and one
// shared informer factory per API group set istiod watches (Kubernetes,
// Istio's security.istio.io, Gateway API), started and synced in one place. istiod's
// subsystems (istiod/ambient, istiod/ca) register the informers they read
// on these factories, so that each kind of object is listed and watched
// once however many parts of istiod read it; the server starts them all
// after every subsystem has registered, and waits for them to sync before
// anything serves from their caches.
package cluster

import (
	"context"
	"fmt"
	"sync"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"
)

// Cluster holds the clients and their informer factories.
type Cluster struct {
	// Kube is the Kubernetes client; KubeInformers its shared factory.
	Kube          kubernetes.Interface
	KubeInformers informers.SharedInformerFactory
	// Istio is the client of Istio's APIs and IstioInformers its factory;
	// both nil when istiod watches no Istio policies (their CRDs are not
	// installed).
	Istio          istioclient.Interface
	IstioInformers istioinformers.SharedInformerFactory
	// GatewayAPI is the Gateway API client and GatewayAPIInformers its
	// factory; both nil when istiod does not watch Gateway API objects.
	GatewayAPI          gatewayclient.Interface
	GatewayAPIInformers gatewayinformers.SharedInformerFactory

	// extra are informers of their own (AddInformer), started and synced
	// with the factories'.
	extra        []cache.SharedIndexInformer
	startedExtra int
	running      sync.WaitGroup
}

// AddInformer adds an informer that cannot share a factory's (one kind
// watched with other options than the factory's informer of that kind
// uses), to be started and synced with the rest.
func (c *Cluster) AddInformer(inf cache.SharedIndexInformer) {
	c.extra = append(c.extra, inf)
}

// New makes the factories of the clients; istio may be nil. Nothing
// reaches the apiserver before Start.
func New(kube kubernetes.Interface, istio istioclient.Interface) *Cluster {
	return NewWithGatewayAPI(kube, istio, nil)
}

// NewWithGatewayAPI is New with a Gateway API client too (nil: none).
func NewWithGatewayAPI(kube kubernetes.Interface, istio istioclient.Interface, gw gatewayclient.Interface) *Cluster {
	// Managed fields are most of a typical object's size and nothing in
	// istiod reads them: drop them from every cache, as Istio does. No
	// resync: every consumer is driven by changes.
	c := &Cluster{
		Kube:          kube,
		KubeInformers: informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithTransform(dropManagedFields)),
	}
	if istio != nil {
		c.Istio = istio
		c.IstioInformers = istioinformers.NewSharedInformerFactoryWithOptions(istio, 0, istioinformers.WithTransform(dropManagedFields))
	}
	if gw != nil {
		c.GatewayAPI = gw
		c.GatewayAPIInformers = gatewayinformers.NewSharedInformerFactoryWithOptions(gw, 0, gatewayinformers.WithTransform(dropManagedFields))
	}
	return c
}

// dropManagedFields is the informers' transform: it clears
// metadata.managedFields of every object.
func dropManagedFields(obj any) (any, error) {
	if m, err := meta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

// Start starts every informer registered so far; they stop when ctx
// ends. Informers registered later need another Start.
func (c *Cluster) Start(ctx context.Context) {
	c.KubeInformers.Start(ctx.Done())
	if c.IstioInformers != nil {
		c.IstioInformers.Start(ctx.Done())
	}
	if c.GatewayAPIInformers != nil {
		c.GatewayAPIInformers.Start(ctx.Done())
	}
	for _, inf := range c.extra[c.startedExtra:] {
		c.running.Add(1)
		go func() {
			defer c.running.Done()
			inf.RunWithContext(ctx)
		}()
	}
	c.startedExtra = len(c.extra)
}

// WaitForCacheSync waits until every started informer has listed its
// objects, or ctx ends (an error naming the informer that was not
// synced).
func (c *Cluster) WaitForCacheSync(ctx context.Context) error {
	for typ, ok := range c.KubeInformers.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("sync informer %v: %w", typ, context.Cause(ctx))
		}
	}
	if c.IstioInformers != nil {
		for typ, ok := range c.IstioInformers.WaitForCacheSync(ctx.Done()) {
			if !ok {
				return fmt.Errorf("sync informer %v: %w", typ, context.Cause(ctx))
			}
		}
	}
	if c.GatewayAPIInformers != nil {
		for typ, ok := range c.GatewayAPIInformers.WaitForCacheSync(ctx.Done()) {
			if !ok {
				return fmt.Errorf("sync informer %v: %w", typ, context.Cause(ctx))
			}
		}
	}
	for _, inf := range c.extra {
		if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			return fmt.Errorf("sync informer: %w", context.Cause(ctx))
		}
	}
	return nil
}

// Shutdown waits for the informers' goroutines to end; the context
// passed to Start must have ended (or must end) first.
func (c *Cluster) Shutdown() {
	c.KubeInformers.Shutdown()
	if c.IstioInformers != nil {
		c.IstioInformers.Shutdown()
	}
	if c.GatewayAPIInformers != nil {
		c.GatewayAPIInformers.Shutdown()
	}
	c.running.Wait()
}
