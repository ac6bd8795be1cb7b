package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	klabels "k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	appsinformers "k8s.io/client-go/informers/apps/v1"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewaylisters "sigs.k8s.io/gateway-api/pkg/client/listers/apis/v1"

	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/istiod/cluster"
)

// ConditionServiceAccountClaimed is the condition a waypoint Gateway
// annotated istio.io/for-service-account gets (False) when another
// waypoint claims the same service account, so that neither serves it.
// Istio has no counterpart: it has no service-account waypoints.
const ConditionServiceAccountClaimed = "ambit.io/ServiceAccountClaimed"

// WaypointOptions configure the waypoint controller.
type WaypointOptions struct {
	Log *slog.Logger
	// Deploy is what every waypoint Deployment shares; no waypoint is
	// deployed while its Image is empty.
	Deploy DeployConfig
	// Namespace is istiod's: class defaults are ConfigMaps there.
	Namespace string
}

// WaypointController deploys waypoints: each Gateway of class
// istio-waypoint becomes a ServiceAccount, a Deployment and a Service of
// its name (and the autoscaler and disruption budget its customisation
// asks for), applied server-side with FieldManager and owned by the
// Gateway, so that the garbage collector deletes them with it (the
// controller deletes them too when the Gateway goes or stops being a
// valid waypoint). It reports the Gateway's Accepted and Programmed
// conditions, its listeners and its addresses in the Gateway's status.
//
// One goroutine (Run) reconciles one Gateway at a time from a queue that
// the informers' handlers and SetClaimConflicts fill.
type WaypointController struct {
	opts      WaypointOptions
	log       *slog.Logger
	kube      kubernetes.Interface
	gwClient  gatewayclient.Interface
	gateways  gatewaylisters.GatewayLister
	deploys   appslisters.DeploymentLister
	services  corelisters.ServiceLister
	accounts  corelisters.ServiceAccountLister
	configMap cache.SharedIndexInformer
	cms       corelisters.ConfigMapLister
	queue     workqueue.TypedRateLimitingInterface[types.NamespacedName]

	mu        sync.Mutex
	conflicts map[types.NamespacedName]string
	// extras says, per Gateway, whether an autoscaler and a disruption
	// budget were applied; a Gateway not in it (first reconcile since
	// start) has any left over deleted.
	extras map[types.NamespacedName][2]bool
}

// NewWaypointController builds the controller.
func NewWaypointController(opts WaypointOptions) *WaypointController {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	return &WaypointController{
		opts: opts, log: opts.Log,
		queue:     workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[types.NamespacedName]()),
		conflicts: map[types.NamespacedName]string{},
		extras:    map[types.NamespacedName][2]bool{},
	}
}

func nameOf(o any) (metav1.Object, bool) {
	if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = d.Obj
	}
	m, err := meta.Accessor(o)
	return m, err == nil
}

// handler calls f with each added, changed or deleted object.
func handler(f func(metav1.Object)) cache.ResourceEventHandler {
	call := func(o any) {
		if m, ok := nameOf(o); ok {
			f(m)
		}
	}
	return cache.ResourceEventHandlerFuncs{AddFunc: call, UpdateFunc: func(_, o any) { call(o) }, DeleteFunc: call}
}

// RegisterInformers watches Gateways, the controller's Deployments and
// Services, service accounts, and ConfigMaps (an informer of its own:
// only customisations keep their data in its cache).
func (c *WaypointController) RegisterInformers(cl *cluster.Cluster) error {
	if cl.GatewayAPIInformers == nil {
		return errors.New("register waypoint controller: no Gateway API client")
	}
	c.kube, c.gwClient = cl.Kube, cl.GatewayAPI
	gws := cl.GatewayAPIInformers.Gateway().V1().Gateways()
	c.gateways = gws.Lister()
	core := cl.KubeInformers.Core().V1()
	c.services = core.Services().Lister()
	c.accounts = core.ServiceAccounts().Lister()
	managed := LabelManaged + "=" + ManagedMesh
	deployInf := cl.KubeInformers.InformerFor(&appsv1.Deployment{}, func(k kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		return appsinformers.NewFilteredDeploymentInformer(k, metav1.NamespaceAll, resync, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
			func(o *metav1.ListOptions) { o.LabelSelector = managed })
	})
	c.deploys = appslisters.NewDeploymentLister(deployInf.GetIndexer())
	c.configMap = coreinformers.NewConfigMapInformer(cl.Kube, metav1.NamespaceAll, 0, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	if err := c.configMap.SetTransform(keepCustomisations); err != nil {
		return fmt.Errorf("set configmap transform: %w", err)
	}
	c.cms = corelisters.NewConfigMapLister(c.configMap.GetIndexer())
	cl.AddInformer(c.configMap)

	owned := func(m metav1.Object) {
		if l := m.GetLabels(); l[LabelManaged] == ManagedMesh && l[LabelGatewayName] != "" {
			c.queue.Add(types.NamespacedName{Namespace: m.GetNamespace(), Name: l[LabelGatewayName]})
		}
	}
	for _, r := range []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{
		{gws.Informer(), handler(func(m metav1.Object) {
			c.queue.Add(types.NamespacedName{Namespace: m.GetNamespace(), Name: m.GetName()})
		})},
		{deployInf, handler(owned)},
		{core.Services().Informer(), handler(owned)},
		{c.configMap, handler(c.configMapChanged)},
	} {
		if _, err := r.inf.AddEventHandler(r.h); err != nil {
			return fmt.Errorf("add waypoint controller handler: %w", err)
		}
	}
	return nil
}

// keepCustomisations is the ConfigMap informer's transform: a ConfigMap
// with none of the customisation keys keeps only its metadata.
func keepCustomisations(o any) (any, error) {
	cm, ok := o.(*corev1.ConfigMap)
	if !ok {
		return o, nil
	}
	cm.ManagedFields = nil
	for _, k := range customisationKeys {
		if _, ok := cm.Data[k]; ok {
			return cm, nil
		}
	}
	cm.Data, cm.BinaryData = nil, nil
	return cm, nil
}

// configMapChanged queues the Gateways a ConfigMap customises: all of the
// class for class defaults, else those of its namespace that name it.
func (c *WaypointController) configMapChanged(m metav1.Object) {
	defaults := m.GetLabels()[LabelDefaultsForClass] == WaypointClass && m.GetNamespace() == c.opts.Namespace
	gws, err := c.gateways.List(klabels.Everything())
	if err != nil {
		return
	}
	for _, gw := range gws {
		if string(gw.Spec.GatewayClassName) != WaypointClass {
			continue
		}
		if defaults || (gw.Namespace == m.GetNamespace() && parametersRef(gw) == m.GetName()) {
			c.queue.Add(types.NamespacedName{Namespace: gw.Namespace, Name: gw.Name})
		}
	}
}

// parametersRef is the name of a Gateway's customisation ConfigMap, ""
// if none.
func parametersRef(gw *gatewayv1.Gateway) string {
	if inf := gw.Spec.Infrastructure; inf != nil && inf.ParametersRef != nil {
		return inf.ParametersRef.Name
	}
	return ""
}

// SetClaimConflicts hands over the waypoint Gateways whose service
// account another waypoint claims too, with the model's message; the
// Gateways whose entry changed are reconciled again.
func (c *WaypointController) SetClaimConflicts(m map[types.NamespacedName]string) {
	c.mu.Lock()
	old := c.conflicts
	c.conflicts = maps.Clone(m)
	c.mu.Unlock()
	for k, v := range m {
		if ov, ok := old[k]; !ok || ov != v {
			c.queue.Add(k)
		}
	}
	for k := range old {
		if _, ok := m[k]; !ok {
			c.queue.Add(k)
		}
	}
}

// Run reconciles queued Gateways until ctx ends; the informers must have
// synced.
func (c *WaypointController) Run(ctx context.Context) {
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	for {
		key, shutdown := c.queue.Get()
		if shutdown {
			return
		}
		if err := c.reconcile(ctx, key); err != nil {
			c.log.Warn("reconcile waypoint", logkey.Object, key.String(), logkey.Error, err)
			c.queue.AddRateLimited(key)
		} else {
			c.queue.Forget(key)
		}
		c.queue.Done(key)
	}
}

// customisation reads a Gateway's class defaults and parametersRef
// ConfigMap; an error says why the parameters are invalid.
func (c *WaypointController) customisation(gw *gatewayv1.Gateway) (customisation, error) {
	cust := customisation{}
	defs, err := c.cms.ConfigMaps(c.opts.Namespace).List(klabels.SelectorFromSet(klabels.Set{LabelDefaultsForClass: WaypointClass}))
	if err != nil {
		return nil, fmt.Errorf("list class defaults: %w", err)
	}
	if len(defs) > 1 {
		return nil, fmt.Errorf("%d ConfigMaps in %s are labelled %s=%s, want at most one", len(defs), c.opts.Namespace, LabelDefaultsForClass, WaypointClass)
	}
	for _, cm := range defs {
		if err := cust.add(cm); err != nil {
			return nil, err
		}
	}
	inf := gw.Spec.Infrastructure
	if inf == nil || inf.ParametersRef == nil {
		return cust, nil
	}
	ref := inf.ParametersRef
	if ref.Group != "" || ref.Kind != "ConfigMap" {
		return nil, fmt.Errorf("parametersRef is %s/%s %s, want a ConfigMap (group \"\")", ref.Group, ref.Kind, ref.Name)
	}
	cm, err := c.cms.ConfigMaps(gw.Namespace).Get(ref.Name)
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("parametersRef: ConfigMap %s/%s does not exist", gw.Namespace, ref.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("get configmap %s/%s: %w", gw.Namespace, ref.Name, err)
	}
	if err := cust.add(cm); err != nil {
		return nil, err
	}
	return cust, nil
}

func (c *WaypointController) reconcile(ctx context.Context, key types.NamespacedName) error {
	gw, err := c.gateways.Gateways(key.Namespace).Get(key.Name)
	if apierrors.IsNotFound(err) {
		c.forget(key)
		return c.deleteChildren(ctx, key)
	}
	if err != nil {
		return fmt.Errorf("get gateway %s: %w", key, err)
	}
	if string(gw.Spec.GatewayClassName) != WaypointClass {
		// Not (or no longer) a waypoint: not ours to report on.
		c.forget(key)
		return c.deleteChildren(ctx, key)
	}
	v := validate(gw)
	st := gatewayState{v: v}
	cust, perr := c.customisation(gw)
	var r rendered
	switch {
	case v.invalid != "":
	case perr != nil:
		st.v.reason, st.v.invalid = string(gatewayv1.GatewayReasonInvalidParameters), perr.Error()
	default:
		if r, err = render(gw, c.opts.Deploy, cust); err != nil {
			st.v.reason, st.v.invalid = string(gatewayv1.GatewayReasonInvalidParameters), err.Error()
		}
	}
	switch {
	case st.v.invalid != "":
		if err := c.deleteChildren(ctx, key); err != nil {
			return err
		}
	case c.opts.Deploy.Image == "":
		st.noImage = true
	default:
		if st.taken = c.taken(key); st.taken != "" {
			break
		}
		if err := c.applyAll(ctx, gw, r); err != nil {
			return err
		}
		if d, err := c.deploys.Deployments(key.Namespace).Get(key.Name); err == nil {
			st.available = available(d)
		}
		if svc, err := c.services.Services(key.Namespace).Get(key.Name); err == nil {
			st.svc = svc
		}
	}
	c.mu.Lock()
	st.conflict = c.conflicts[key]
	c.mu.Unlock()
	return c.writeStatus(ctx, gw, st)
}

func (c *WaypointController) forget(key types.NamespacedName) {
	c.mu.Lock()
	delete(c.extras, key)
	c.mu.Unlock()
}

// available reports whether a Deployment is available, as its
// controller says in its status.
func available(d *appsv1.Deployment) bool {
	if d.Status.ObservedGeneration < d.Generation || d.Status.AvailableReplicas == 0 {
		return false
	}
	for _, cond := range d.Status.Conditions {
		if cond.Type == appsv1.DeploymentAvailable {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// applyAll applies a waypoint's objects server-side, and deletes the
// autoscaler and disruption budget it no longer asks for.
func (c *WaypointController) applyAll(ctx context.Context, gw *gatewayv1.Gateway, r rendered) error {
	ns, name := gw.Namespace, gw.Name
	opts := metav1.PatchOptions{FieldManager: FieldManager, Force: ptr.To(true)}
	if _, err := c.kube.CoreV1().ServiceAccounts(ns).Patch(ctx, name, types.ApplyPatchType, r.serviceAccount, opts); err != nil {
		return fmt.Errorf("apply serviceaccount %s/%s: %w", ns, name, err)
	}
	if _, err := c.kube.CoreV1().Services(ns).Patch(ctx, name, types.ApplyPatchType, r.service, opts); err != nil {
		return fmt.Errorf("apply service %s/%s: %w", ns, name, err)
	}
	if _, err := c.kube.AppsV1().Deployments(ns).Patch(ctx, name, types.ApplyPatchType, r.deployment, opts); err != nil {
		return fmt.Errorf("apply deployment %s/%s: %w", ns, name, err)
	}
	key := types.NamespacedName{Namespace: ns, Name: name}
	c.mu.Lock()
	had, known := c.extras[key]
	c.mu.Unlock()
	now := [2]bool{r.hpa != nil, r.pdb != nil}
	if r.hpa != nil {
		if _, err := c.kube.AutoscalingV2().HorizontalPodAutoscalers(ns).Patch(ctx, name, types.ApplyPatchType, r.hpa, opts); err != nil {
			return fmt.Errorf("apply horizontalpodautoscaler %s/%s: %w", ns, name, err)
		}
	} else if had[0] || !known {
		if err := c.kube.AutoscalingV2().HorizontalPodAutoscalers(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete horizontalpodautoscaler %s/%s: %w", ns, name, err)
		}
	}
	if r.pdb != nil {
		if _, err := c.kube.PolicyV1().PodDisruptionBudgets(ns).Patch(ctx, name, types.ApplyPatchType, r.pdb, opts); err != nil {
			return fmt.Errorf("apply poddisruptionbudget %s/%s: %w", ns, name, err)
		}
	} else if had[1] || !known {
		if err := c.kube.PolicyV1().PodDisruptionBudgets(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete poddisruptionbudget %s/%s: %w", ns, name, err)
		}
	}
	c.mu.Lock()
	c.extras[key] = now
	c.mu.Unlock()
	return nil
}

// taken says which object named after the Gateway key exists but is not
// one the controller made for it (a workload's ServiceAccount, a Service
// or Deployment of the same name), or "" when none is. The controller
// applies nothing over such an object: server-side apply with force would
// take it over, giving the waypoint's pods that account's identity and
// deleting the object with the Gateway.
func (c *WaypointController) taken(key types.NamespacedName) string {
	ns, name := key.Namespace, key.Name
	if sa, err := c.accounts.ServiceAccounts(ns).Get(name); err == nil && !ours(sa, key) {
		return "ServiceAccount " + key.String()
	}
	if s, err := c.services.Services(ns).Get(name); err == nil && !ours(s, key) {
		return "Service " + key.String()
	}
	if d, err := c.deploys.Deployments(ns).Get(name); err == nil && !ours(d, key) {
		return "Deployment " + key.String()
	}
	return ""
}

// ours reports whether an object is one the controller made for the
// Gateway key.
func ours(m metav1.Object, key types.NamespacedName) bool {
	l := m.GetLabels()
	return l[LabelManaged] == ManagedMesh && l[LabelGatewayName] == key.Name
}

// deleteChildren deletes what the controller made for a Gateway that is
// gone or no (valid) waypoint. With a garbage collector the Gateway's
// deletion does it too; this covers a Gateway that stays.
func (c *WaypointController) deleteChildren(ctx context.Context, key types.NamespacedName) error {
	ns, name := key.Namespace, key.Name
	del := func(kind string, f func() error) error {
		if err := f(); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete %s %s: %w", kind, key, err)
		}
		c.log.Info("waypoint object deleted", logkey.Object, key.String(), "kind", kind)
		return nil
	}
	opts := metav1.DeleteOptions{}
	if d, err := c.deploys.Deployments(ns).Get(name); err == nil && ours(d, key) {
		if err := del("deployment", func() error { return c.kube.AppsV1().Deployments(ns).Delete(ctx, name, opts) }); err != nil {
			return err
		}
		// Its autoscaler and budget, if any, go with it.
		if err := del("horizontalpodautoscaler", func() error {
			return c.kube.AutoscalingV2().HorizontalPodAutoscalers(ns).Delete(ctx, name, opts)
		}); err != nil {
			return err
		}
		if err := del("poddisruptionbudget", func() error { return c.kube.PolicyV1().PodDisruptionBudgets(ns).Delete(ctx, name, opts) }); err != nil {
			return err
		}
	}
	if s, err := c.services.Services(ns).Get(name); err == nil && ours(s, key) {
		if err := del("service", func() error { return c.kube.CoreV1().Services(ns).Delete(ctx, name, opts) }); err != nil {
			return err
		}
	}
	if sa, err := c.accounts.ServiceAccounts(ns).Get(name); err == nil && ours(sa, key) {
		if err := del("serviceaccount", func() error { return c.kube.CoreV1().ServiceAccounts(ns).Delete(ctx, name, opts) }); err != nil {
			return err
		}
	}
	return nil
}

// gatewayState is what a Gateway's status is made from.
type gatewayState struct {
	v         validation
	noImage   bool
	available bool
	svc       *corev1.Service
	conflict  string
	// taken names an object in the way of the waypoint's (see taken).
	taken string
}

func (c *WaypointController) writeStatus(ctx context.Context, gw *gatewayv1.Gateway, st gatewayState) error {
	next := gw.DeepCopy()
	s := &next.Status
	gen := gw.Generation
	set := func(conds *[]metav1.Condition, typ string, ok bool, reason, msg string) {
		status := metav1.ConditionFalse
		if ok {
			status = metav1.ConditionTrue
		}
		meta.SetStatusCondition(conds, metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: gen})
	}
	accepted, programmed := string(gatewayv1.GatewayConditionAccepted), string(gatewayv1.GatewayConditionProgrammed)
	switch {
	case st.v.invalid != "":
		set(&s.Conditions, accepted, false, st.v.reason, st.v.invalid)
		set(&s.Conditions, programmed, false, string(gatewayv1.GatewayReasonInvalid), "not deployed: the Gateway is not accepted")
	case st.noImage:
		set(&s.Conditions, accepted, true, string(gatewayv1.GatewayReasonAccepted), acceptedMessage)
		set(&s.Conditions, programmed, false, string(gatewayv1.GatewayReasonNoResources), "istiod has no waypoint image (--waypoint-image): nothing is deployed")
	case st.taken != "":
		set(&s.Conditions, accepted, true, string(gatewayv1.GatewayReasonAccepted), acceptedMessage)
		set(&s.Conditions, programmed, false, string(gatewayv1.GatewayReasonInvalid),
			fmt.Sprintf("not deployed: %s exists and istiod did not make it for this waypoint; the waypoint's objects are named after the Gateway: rename the Gateway", st.taken))
	case st.available:
		set(&s.Conditions, accepted, true, string(gatewayv1.GatewayReasonAccepted), acceptedMessage)
		set(&s.Conditions, programmed, true, string(gatewayv1.GatewayReasonProgrammed), fmt.Sprintf("deployment %s is available", gw.Name))
	default:
		set(&s.Conditions, accepted, true, string(gatewayv1.GatewayReasonAccepted), acceptedMessage)
		set(&s.Conditions, programmed, false, string(gatewayv1.GatewayReasonPending), fmt.Sprintf("waiting for deployment %s to be available", gw.Name))
	}
	if st.conflict != "" {
		set(&s.Conditions, ConditionServiceAccountClaimed, false, "ServiceAccountClaimedTwice", st.conflict)
	} else {
		meta.RemoveStatusCondition(&s.Conditions, ConditionServiceAccountClaimed)
	}
	s.Addresses = nil
	if st.svc != nil && st.v.invalid == "" {
		if ip, err := netip.ParseAddr(st.svc.Spec.ClusterIP); err == nil {
			s.Addresses = append(s.Addresses, gatewayv1.GatewayStatusAddress{Type: ptr.To(gatewayv1.IPAddressType), Value: ip.String()})
		}
		s.Addresses = append(s.Addresses, gatewayv1.GatewayStatusAddress{Type: ptr.To(gatewayv1.HostnameAddressType),
			Value: gw.Name + "." + gw.Namespace + ".svc." + c.opts.Deploy.DomainSuffix})
	}
	var listeners []gatewayv1.ListenerStatus
	for i, l := range gw.Spec.Listeners {
		ls := gatewayv1.ListenerStatus{Name: l.Name, SupportedKinds: []gatewayv1.RouteGroupKind{}}
		for _, old := range gw.Status.Listeners {
			if old.Name == l.Name {
				ls.Conditions = append([]metav1.Condition(nil), old.Conditions...)
				ls.AttachedRoutes = old.AttachedRoutes
			}
		}
		lc := st.v.listeners[i]
		if lc.ok {
			set(&ls.Conditions, string(gatewayv1.ListenerConditionAccepted), true, string(gatewayv1.ListenerReasonAccepted), "HBONE listener of the waypoint")
		} else {
			set(&ls.Conditions, string(gatewayv1.ListenerConditionAccepted), false, lc.reason, lc.message)
		}
		set(&ls.Conditions, string(gatewayv1.ListenerConditionResolvedRefs), true, string(gatewayv1.ListenerReasonResolvedRefs), "no references")
		set(&ls.Conditions, string(gatewayv1.ListenerConditionConflicted), false, string(gatewayv1.ListenerReasonNoConflicts), "no conflicts")
		switch {
		case !lc.ok || st.v.invalid != "" || st.taken != "":
			set(&ls.Conditions, string(gatewayv1.ListenerConditionProgrammed), false, string(gatewayv1.ListenerReasonInvalid), "listener not deployed")
		case st.available:
			set(&ls.Conditions, string(gatewayv1.ListenerConditionProgrammed), true, string(gatewayv1.ListenerReasonProgrammed), "deployed")
		default:
			set(&ls.Conditions, string(gatewayv1.ListenerConditionProgrammed), false, string(gatewayv1.ListenerReasonPending), "waiting for the waypoint's deployment")
		}
		listeners = append(listeners, ls)
	}
	s.Listeners = listeners
	if equality.Semantic.DeepEqual(gw.Status, next.Status) {
		return nil
	}
	if _, err := c.gwClient.GatewayV1().Gateways(gw.Namespace).UpdateStatus(ctx, next, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update gateway %s/%s status: %w", gw.Namespace, gw.Name, err)
	}
	if st.taken != "" {
		c.log.Warn("waypoint not deployed: an object it would be is not istiod's", logkey.Object, gw.Namespace+"/"+gw.Name, logkey.Status, st.taken)
	}
	if st.v.invalid != "" {
		c.log.Warn("waypoint gateway not accepted", logkey.Object, gw.Namespace+"/"+gw.Name, logkey.Reason, st.v.reason, logkey.Status, st.v.invalid)
	}
	return nil
}
