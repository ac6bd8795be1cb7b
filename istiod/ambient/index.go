package ambient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	securitylisters "istio.io/client-go/pkg/listers/security/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/ambitmesh/ambit/istiod/authz"
)

// Debounce defaults: a burst of events is folded into one model until
// events stop for Quiet, or at most for Max.
const (
	DefaultQuiet = 100 * time.Millisecond
	DefaultMax   = time.Second
)

// IndexOptions configures an Index.
type IndexOptions struct {
	Config Config
	// Kube is the cluster client; required.
	Kube kubernetes.Interface
	// Istio is the client for security.istio.io policies; nil watches no
	// policies (their CRDs must be installed otherwise).
	Istio istioclient.Interface
	// OnModel receives each new model, from one goroutine, in order.
	OnModel func(Model)
	// Quiet and Max tune the debounce; defaults when zero.
	Quiet, Max time.Duration
	// Resync of the informers; none when zero.
	Resync time.Duration
	// Informers is a shared factory to register on, so that other parts
	// of istiod share the caches; a new one when nil. Run starts it.
	Informers informers.SharedInformerFactory
	Log       *slog.Logger
}

// Index watches the cluster with shared informers and rebuilds the model
// after each burst of changes.
type Index struct {
	opts    IndexOptions
	log     *slog.Logger
	kubeInf informers.SharedInformerFactory
	istInf  istioinformers.SharedInformerFactory
	dirty   chan struct{}

	namespaces corelisters.NamespaceLister
	pods       corelisters.PodLister
	services   corelisters.ServiceLister
	slices     discoverylisters.EndpointSliceLister
	accounts   corelisters.ServiceAccountLister
	nodes      corelisters.NodeLister
	authzPols  securitylisters.AuthorizationPolicyLister
	peerAuths  securitylisters.PeerAuthenticationLister

	mu      sync.Mutex
	current Model
	builds  uint64
}

// NewIndex sets up the informers; Run starts them.
func NewIndex(opts IndexOptions) (*Index, error) {
	if opts.Kube == nil {
		return nil, errors.New("new ambient index: no Kubernetes client")
	}
	if opts.Quiet == 0 {
		opts.Quiet = DefaultQuiet
	}
	if opts.Max == 0 {
		opts.Max = DefaultMax
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	opts.Config = opts.Config.withDefaults()
	x := &Index{opts: opts, log: opts.Log, dirty: make(chan struct{}, 1)}
	x.kubeInf = opts.Informers
	if x.kubeInf == nil {
		x.kubeInf = informers.NewSharedInformerFactory(opts.Kube, opts.Resync)
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { x.markDirty() },
		UpdateFunc: func(any, any) { x.markDirty() },
		DeleteFunc: func(any) { x.markDirty() },
	}
	core := x.kubeInf.Core().V1()
	for _, inf := range []cache.SharedIndexInformer{
		core.Namespaces().Informer(), core.Pods().Informer(), core.Services().Informer(),
		x.kubeInf.Discovery().V1().EndpointSlices().Informer(), core.ServiceAccounts().Informer(), core.Nodes().Informer(),
	} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return nil, fmt.Errorf("add event handler: %w", err)
		}
	}
	x.namespaces = core.Namespaces().Lister()
	x.pods = core.Pods().Lister()
	x.services = core.Services().Lister()
	x.slices = x.kubeInf.Discovery().V1().EndpointSlices().Lister()
	x.accounts = core.ServiceAccounts().Lister()
	x.nodes = core.Nodes().Lister()
	if opts.Istio != nil {
		x.istInf = istioinformers.NewSharedInformerFactory(opts.Istio, opts.Resync)
		sec := x.istInf.Security().V1()
		for _, inf := range []cache.SharedIndexInformer{sec.AuthorizationPolicies().Informer(), sec.PeerAuthentications().Informer()} {
			if _, err := inf.AddEventHandler(handler); err != nil {
				return nil, fmt.Errorf("add event handler: %w", err)
			}
		}
		x.authzPols = sec.AuthorizationPolicies().Lister()
		x.peerAuths = sec.PeerAuthentications().Lister()
	}
	return x, nil
}

func (x *Index) markDirty() {
	select {
	case x.dirty <- struct{}{}:
	default:
	}
}

// Run starts the informers, waits for their caches, publishes the first
// model and then one per burst of changes until ctx ends.
func (x *Index) Run(ctx context.Context) error {
	x.kubeInf.Start(ctx.Done())
	defer x.kubeInf.Shutdown()
	if x.istInf != nil {
		x.istInf.Start(ctx.Done())
		defer x.istInf.Shutdown()
	}
	for typ, ok := range x.kubeInf.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("sync informer %v: %w", typ, context.Cause(ctx))
		}
	}
	if x.istInf != nil {
		for typ, ok := range x.istInf.WaitForCacheSync(ctx.Done()) {
			if !ok {
				return fmt.Errorf("sync informer %v: %w", typ, context.Cause(ctx))
			}
		}
	}
	x.rebuild()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-x.dirty:
		}
		if !x.debounce(ctx) {
			return nil
		}
		x.rebuild()
	}
}

// debounce waits until no event came for Quiet, or Max passed.
func (x *Index) debounce(ctx context.Context) bool {
	deadline := time.NewTimer(x.opts.Max)
	defer deadline.Stop()
	quiet := time.NewTimer(x.opts.Quiet)
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return true
		case <-quiet.C:
			return true
		case <-x.dirty:
			quiet.Reset(x.opts.Quiet)
		}
	}
}

func (x *Index) rebuild() {
	start := time.Now()
	st, err := x.state()
	if err != nil {
		x.log.Error("read cluster state", "err", err)
		return
	}
	m := Build(st, x.opts.Config)
	x.mu.Lock()
	x.current = m
	x.builds++
	x.mu.Unlock()
	x.log.Debug("ambient model built", "addresses", len(m.Addresses), "authorizations", len(m.Authorizations), "took", time.Since(start))
	for k, v := range m.PolicyStatus {
		x.log.Debug("policy translation", "policy", k, "status", v)
	}
	if x.opts.OnModel != nil {
		x.opts.OnModel(m)
	}
}

func (x *Index) state() (State, error) {
	var st State
	var err error
	all := labels.Everything()
	if st.Namespaces, err = x.namespaces.List(all); err != nil {
		return st, fmt.Errorf("list namespaces: %w", err)
	}
	if st.Pods, err = x.pods.List(all); err != nil {
		return st, fmt.Errorf("list pods: %w", err)
	}
	if st.Services, err = x.services.List(all); err != nil {
		return st, fmt.Errorf("list services: %w", err)
	}
	if st.EndpointSlices, err = x.slices.List(all); err != nil {
		return st, fmt.Errorf("list endpointslices: %w", err)
	}
	if st.Nodes, err = x.nodes.List(all); err != nil {
		return st, fmt.Errorf("list nodes: %w", err)
	}
	if x.authzPols != nil {
		var aps []*securityv1.AuthorizationPolicy
		var pas []*securityv1.PeerAuthentication
		if aps, err = x.authzPols.List(all); err != nil {
			return st, fmt.Errorf("list authorizationpolicies: %w", err)
		}
		if pas, err = x.peerAuths.List(all); err != nil {
			return st, fmt.Errorf("list peerauthentications: %w", err)
		}
		st.Policies = authz.Translate(aps, pas, authz.Config{RootNamespace: x.opts.Config.RootNamespace})
	}
	return st, nil
}

// Model returns the latest model and how many were built; the model must
// not be modified.
func (x *Index) Model() (Model, uint64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.current, x.builds
}

// ServiceAccounts lists the service accounts of a namespace known to the
// informer cache, for callers that check identities.
func (x *Index) ServiceAccounts(namespace string) ([]string, error) {
	sas, err := x.accounts.ServiceAccounts(namespace).List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list service accounts in %s: %w", namespace, err)
	}
	out := make([]string, 0, len(sas))
	for _, sa := range sas {
		out = append(out, sa.Name)
	}
	return out, nil
}

// Pods is the lister of the pod informer the index watches.
func (x *Index) Pods() corelisters.PodLister { return x.pods }
