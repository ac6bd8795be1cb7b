package ambient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	securitylisters "istio.io/client-go/pkg/listers/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/istiod/authz"
	"github.com/ambitmesh/ambit/istiod/cluster"
)

// Debounce defaults: a burst of events is folded into one flush until
// events stop for Quiet, or at most for Max since the first.
//
// Istio waits 100 ms quiet and 10 s at most (PILOT_DEBOUNCE_AFTER/MAX)
// because each push there rebuilds and compares much of the model. Here a
// flush costs in proportion to what changed (Builder), so folding saves
// little work, and the xDS server folds further by itself: a client has
// at most one response in flight, and whatever changed meanwhile leaves
// in its next one. What the quiet period still buys is that the few
// events of one change (a pod's status update, then its EndpointSlice's;
// a namespace label that touches every pod in it) go out together: they
// arrive within milliseconds of each other from the informers. Hence 10
// ms. Max bounds the delay under steady churn, when events never pause
// for Quiet; 100 ms keeps it within the 100 ms p99 that issue 3 asks for
// a pod to reach every ztunnel, at a cost of at most ten flushes a second.
const (
	DefaultQuiet = 10 * time.Millisecond
	DefaultMax   = 100 * time.Millisecond
)

// IndexOptions configures an Index.
type IndexOptions struct {
	Config Config
	// OnChange receives what each flush changed, from one goroutine, in
	// order; the first holds the whole model (and comes even when empty).
	// It must not modify the delta's resources.
	OnChange func(Delta)
	// OnWaypointStatus receives the complete waypoint binding statuses
	// (Model.WaypointStatus) after each flush that changed them, and after
	// the first; from OnChange's goroutine, after OnChange. It owns the
	// map.
	OnWaypointStatus func(map[string]BindingStatus)
	// Quiet and Max tune the debounce; defaults when zero.
	Quiet, Max time.Duration
	Log        *slog.Logger
}

// Index watches the cluster with shared informers, hands each event's
// object to a Builder and, after each burst of events, flushes what they
// changed to OnChange. It is built (NewIndex), registered on istiod's
// informers (RegisterInformers), then run (Run) once the caller has
// started them.
type Index struct {
	opts  IndexOptions
	log   *slog.Logger
	dirty chan struct{}
	regs  []cache.ResourceEventHandlerRegistration

	accounts  corelisters.ServiceAccountLister
	authzPols securitylisters.AuthorizationPolicyLister
	peerAuths securitylisters.PeerAuthenticationLister

	mu              sync.Mutex
	builder         *Builder
	policiesChanged bool
	flushes         uint64
	// wpStatus is the waypoint status last logged.
	wpStatus map[string]BindingStatus
}

// NewIndex builds an Index that has seen nothing yet.
func NewIndex(opts IndexOptions) *Index {
	if opts.Quiet == 0 {
		opts.Quiet = DefaultQuiet
	}
	if opts.Max == 0 {
		opts.Max = DefaultMax
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	opts.Config = opts.Config.WithDefaults()
	return &Index{opts: opts, log: opts.Log, dirty: make(chan struct{}, 1), builder: NewBuilder(opts.Config)}
}

// RegisterInformers adds the index's event handlers to the cluster's
// informers: Namespaces, Pods, Services, EndpointSlices and Nodes, and
// the security policies when the cluster has an Istio client. Call it
// once, before Run.
func (x *Index) RegisterInformers(c *cluster.Cluster) error {
	core := c.KubeInformers.Core().V1()
	b := x.builder
	handlers := []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{
		{core.Namespaces().Informer(), x.handler(
			func(o any) { b.SetNamespace(o.(*corev1.Namespace)) },
			func(_, name string) { b.DeleteNamespace(name) })},
		{core.Pods().Informer(), x.handler(
			func(o any) { b.SetPod(o.(*corev1.Pod)) },
			b.DeletePod)},
		{core.Services().Informer(), x.handler(
			func(o any) { b.SetService(o.(*corev1.Service)) },
			b.DeleteService)},
		{c.KubeInformers.Discovery().V1().EndpointSlices().Informer(), x.handler(
			func(o any) { b.SetEndpointSlice(o.(*discoveryv1.EndpointSlice)) },
			b.DeleteEndpointSlice)},
		{core.Nodes().Informer(), x.handler(
			func(o any) { b.SetNode(o.(*corev1.Node)) },
			func(_, name string) { b.DeleteNode(name) })},
	}
	// Service accounts are looked up (ServiceAccounts) and carry
	// waypoint bindings.
	handlers = append(handlers, struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{core.ServiceAccounts().Informer(), x.handler(
		func(o any) { b.SetServiceAccount(o.(*corev1.ServiceAccount)) },
		b.DeleteServiceAccount)})
	x.accounts = core.ServiceAccounts().Lister()
	if c.GatewayAPIInformers != nil {
		handlers = append(handlers, struct {
			inf cache.SharedIndexInformer
			h   cache.ResourceEventHandler
		}{c.GatewayAPIInformers.Gateway().V1().Gateways().Informer(), x.handler(
			func(o any) { b.SetGateway(o.(*gatewayv1.Gateway)) },
			b.DeleteGateway)})
	}
	if c.IstioInformers != nil {
		sec := c.IstioInformers.Security().V1()
		// Policies are few and translated together at the next flush.
		changed := func() { x.policiesChanged = true }
		for _, inf := range []cache.SharedIndexInformer{sec.AuthorizationPolicies().Informer(), sec.PeerAuthentications().Informer()} {
			handlers = append(handlers, struct {
				inf cache.SharedIndexInformer
				h   cache.ResourceEventHandler
			}{inf, x.handler(func(any) { changed() }, func(string, string) { changed() })})
		}
		x.authzPols = sec.AuthorizationPolicies().Lister()
		x.peerAuths = sec.PeerAuthentications().Lister()
		x.mu.Lock()
		x.policiesChanged = true
		x.mu.Unlock()
	}
	for _, h := range handlers {
		reg, err := h.inf.AddEventHandler(h.h)
		if err != nil {
			return fmt.Errorf("add event handler: %w", err)
		}
		x.regs = append(x.regs, reg)
	}
	return nil
}

// handler records an informer's events in the builder under the lock and
// wakes the flush loop.
func (x *Index) handler(set func(obj any), del func(namespace, name string)) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			x.mu.Lock()
			set(obj)
			x.mu.Unlock()
			x.markDirty()
		},
		UpdateFunc: func(_, obj any) {
			x.mu.Lock()
			set(obj)
			x.mu.Unlock()
			x.markDirty()
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			m, err := meta.Accessor(obj)
			if err != nil {
				x.log.Error("deleted object without metadata", logkey.Error, err)
				return
			}
			x.mu.Lock()
			del(m.GetNamespace(), m.GetName())
			x.mu.Unlock()
			x.markDirty()
		},
	}
}

func (x *Index) markDirty() {
	select {
	case x.dirty <- struct{}{}:
	default:
	}
}

// Run waits until the builder has seen every object of the informers'
// initial lists, publishes the first model and then what changed after
// each burst of events until ctx ends. The caller starts the informers
// (before or after Run) and stops them.
func (x *Index) Run(ctx context.Context) error {
	if x.regs == nil {
		return errors.New("run ambient index: no informers registered")
	}
	return RunDebounced(ctx, x.regs, x.dirty, x.opts.Quiet, x.opts.Max,
		func() { x.flush(true) }, func() { x.flush(false) })
}

func (x *Index) flush(first bool) {
	start := time.Now()
	x.mu.Lock()
	if x.policiesChanged && x.authzPols != nil {
		x.policiesChanged = false
		if t, err := x.translatePolicies(); err != nil {
			x.log.Error("read security policies", logkey.Error, err)
		} else {
			x.builder.SetPolicies(t)
		}
	}
	d := x.builder.Flush()
	x.flushes++
	wpChanged := x.logWaypointStatus(x.builder.wpStatus)
	var wpStatus map[string]BindingStatus
	if x.opts.OnWaypointStatus != nil && (first || wpChanged) {
		wpStatus = maps.Clone(x.builder.wpStatus)
	}
	x.mu.Unlock()
	x.log.Debug("ambient model flushed", "addresses", len(d.Addresses), "removedAddresses", len(d.RemovedAddresses),
		"authorizations", len(d.Authorizations), "removedAuthorizations", len(d.RemovedAuthorizations), "took", time.Since(start))
	for k, v := range d.PolicyStatus {
		x.log.Debug("policy translation", logkey.Policy, k, logkey.Status, v)
	}
	if x.opts.OnChange != nil && (first || !d.Empty()) {
		x.opts.OnChange(d)
	}
	if wpStatus != nil {
		x.opts.OnWaypointStatus(wpStatus)
	}
}

func (x *Index) translatePolicies() (*authz.Translation, error) {
	all := labels.Everything()
	aps, err := x.authzPols.List(all)
	if err != nil {
		return nil, fmt.Errorf("list authorizationpolicies: %w", err)
	}
	pas, err := x.peerAuths.List(all)
	if err != nil {
		return nil, fmt.Errorf("list peerauthentications: %w", err)
	}
	return authz.Translate(aps, pas, authz.Config{RootNamespace: x.opts.Config.RootNamespace}), nil
}

// Model returns a copy of the current model and how many flushes made
// it; for debugging, it copies the whole model.
func (x *Index) Model() (Model, uint64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.builder.Model(), x.flushes
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

// logWaypointStatus logs each binding whose status changed: a warning
// when a binding was not applied (or waits for its waypoint), so that a
// wrong Gateway or label is visible without reading the model. Writing
// these on the objects is istiod/gateway's part (OnWaypointStatus). It
// reports whether any changed.
func (x *Index) logWaypointStatus(now map[string]BindingStatus) bool {
	changed := false
	for k, st := range now {
		if old, ok := x.wpStatus[k]; ok && old == st {
			continue
		}
		changed = true
		if st.Bound {
			x.log.Info("waypoint binding", logkey.Object, k, logkey.Reason, st.Reason, logkey.Status, st.Message)
		} else {
			x.log.Warn("waypoint binding not applied", logkey.Object, k, logkey.Reason, st.Reason, logkey.Status, st.Message)
		}
	}
	for k := range x.wpStatus {
		if _, ok := now[k]; !ok {
			x.log.Info("waypoint binding removed", logkey.Object, k)
			changed = true
		}
	}
	x.wpStatus = maps.Clone(now)
	return changed
}
