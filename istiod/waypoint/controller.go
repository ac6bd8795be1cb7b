package waypoint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	telemetryv1 "istio.io/client-go/pkg/apis/telemetry/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	networkinglisters "istio.io/client-go/pkg/listers/networking/v1"
	securitylisters "istio.io/client-go/pkg/listers/security/v1"
	telemetrylisters "istio.io/client-go/pkg/listers/telemetry/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewaylisters "sigs.k8s.io/gateway-api/pkg/client/listers/apis/v1"

	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/istiod/ambient"
	"github.com/ambitmesh/ambit/istiod/authz"
	"github.com/ambitmesh/ambit/istiod/cluster"
	"github.com/ambitmesh/ambit/istiod/gateway"
	"github.com/ambitmesh/ambit/istiod/meshconfig"
	"github.com/ambitmesh/ambit/istiod/telemetry"
	"github.com/ambitmesh/ambit/istiod/xds"
)

// Type URLs of a waypoint's resources.
const (
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// Publisher takes what changed in one waypoint's resources of one type
// (xds.Server).
type Publisher interface {
	ApplyPartition(typeURL, partition string, changed map[string]proto.Message, removed []string) error
}

var _ Publisher = (*xds.Server)(nil)

// ControllerOptions configure a Controller.
type ControllerOptions struct {
	Config ambient.Config
	// Quiet and Max debounce bursts of changes, as the ambient index
	// does (ambient.DefaultQuiet, ambient.DefaultMax when zero).
	Quiet, Max time.Duration
	Log        *slog.Logger
}

// Controller keeps every waypoint's resources up to date and hands what
// changed to the Publisher, one partition per waypoint ("namespace/name"
// of its Gateway; Run's publisher). Its inputs are the ambient model's changes (OnModel)
// and the objects it watches itself: Services (port protocols) and
// Gateways (which waypoints exist), HTTPRoutes, whose status it writes
// (Accepted, ResolvedRefs per Service parentRef), ReferenceGrants,
// AuthorizationPolicies with targetRefs (WaypointAccepted),
// VirtualServices and DestinationRules (Accepted, ResolvedRefs),
// Telemetry objects with the MeshConfig istiod reads (SetMesh), and
// pods' labels (which DestinationRule subsets select). After each burst of changes it
// computes what every waypoint serves in one pass over the model and
// rebuilds only the waypoints whose inputs changed (scope fingerprint),
// and of those publishes only the resources that differ.
//
// OnModel and the informers' handlers may run on any goroutine; the
// building and publishing run on Run's.
type Controller struct {
	opts ControllerOptions
	cfg  ambient.Config
	log  *slog.Logger
	pub  Publisher // Run's

	services corelisters.ServiceLister
	pods     corelisters.PodLister
	// podsSynced says whether pods has seen the initial list.
	podsSynced cache.InformerSynced
	gateways   gatewaylisters.GatewayLister
	httpRoutes gatewaylisters.HTTPRouteLister
	grpcRoutes gatewaylisters.GRPCRouteLister
	grants     gatewaylisters.ReferenceGrantLister
	policies   securitylisters.AuthorizationPolicyLister // nil without Istio's CRDs
	vss        networkinglisters.VirtualServiceLister    // nil without their CRD
	drs        networkinglisters.DestinationRuleLister   // nil without their CRD
	telemetry  telemetrylisters.TelemetryLister          // nil without its CRD
	gwClient   gatewayclient.Interface
	istio      istioclient.Interface // nil without Istio's CRDs
	regs       []cache.ResourceEventHandlerRegistration
	dirty      chan struct{}

	mu        sync.Mutex
	addrs     map[string]*workload.Address
	haveModel bool
	// baseGen counts changes of what base scopes depend on (the model,
	// Services, Gateways).
	baseGen uint64
	// mesh is the MeshConfig in force (SetMesh); meshGen counts its
	// changes.
	mesh    *meshv1alpha1.MeshConfig
	meshGen uint64

	// Owned by Run's goroutine: the base scopes of baseAt.
	base   *baseScopes
	baseAt uint64

	// Owned by Run's goroutine.
	published map[Ref]*publishedWaypoint
	// wroteStatus are the conditions last written per Istio object
	// ("Kind/namespace/name"); Run's.
	wroteStatus map[string]string
	// pushed counts flushes that published something, for tests.
	pushed chan struct{}
}

type publishedWaypoint struct {
	fingerprint string
	byType      map[string]map[string]proto.Message
	// notes are the build's PolicyNotes.
	notes map[string][]string
}

// NewController builds a Controller that has seen nothing yet.
func NewController(opts ControllerOptions) *Controller {
	if opts.Quiet == 0 {
		opts.Quiet = ambient.DefaultQuiet
	}
	if opts.Max == 0 {
		opts.Max = ambient.DefaultMax
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	return &Controller{
		opts: opts, cfg: opts.Config.WithDefaults(), log: opts.Log,
		dirty: make(chan struct{}, 1), addrs: map[string]*workload.Address{},
		published: map[Ref]*publishedWaypoint{}, wroteStatus: map[string]string{},
	}
}

// XDSTypes are the waypoint's resource types, partitioned by waypoint
// (Partition), in the order Envoy wants them: clusters, their endpoints,
// then the listeners that name the clusters.
func (c *Controller) XDSTypes() []xds.Type {
	return []xds.Type{{URL: ClusterType, Partition: c.Partition}, {URL: EndpointType, Partition: c.Partition}, {URL: ListenerType, Partition: c.Partition}}
}

// RegisterInformers adds the controller's handlers to the cluster's
// informers; it needs the Gateway API's. Call it once, before Run.
func (c *Controller) RegisterInformers(cl *cluster.Cluster) error {
	if cl.GatewayAPIInformers == nil {
		return errors.New("register waypoint informers: no Gateway API client")
	}
	core := cl.KubeInformers.Core().V1()
	c.services = core.Services().Lister()
	c.pods = core.Pods().Lister()
	gw := cl.GatewayAPIInformers.Gateway().V1()
	c.gateways = gw.Gateways().Lister()
	c.gwClient = cl.GatewayAPI
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.markDirty() },
		UpdateFunc: func(any, any) { c.markDirty() },
		DeleteFunc: func(any) { c.markDirty() },
	}
	baseChanged := func() {
		c.mu.Lock()
		c.baseGen++
		c.mu.Unlock()
		c.markDirty()
	}
	hb := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { baseChanged() },
		UpdateFunc: func(any, any) { baseChanged() },
		DeleteFunc: func(any) { baseChanged() },
	}
	type watched struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}
	ws := []watched{{core.Services().Informer(), hb}, {gw.Gateways().Informer(), hb}}
	// Routes and grants only where the API server serves them: an
	// informer of a resource without its CRD never syncs, and istiod
	// would wait for it forever.
	served := c.servedResources(cl)
	if served["httproutes"] {
		c.httpRoutes = gw.HTTPRoutes().Lister()
		ws = append(ws, watched{gw.HTTPRoutes().Informer(), h})
	}
	if served["grpcroutes"] {
		c.grpcRoutes = gw.GRPCRoutes().Lister()
		ws = append(ws, watched{gw.GRPCRoutes().Informer(), h})
	}
	if served["referencegrants"] {
		c.grants = gw.ReferenceGrants().Lister()
		ws = append(ws, watched{gw.ReferenceGrants().Informer(), h})
	}
	for _, x := range ws {
		reg, err := x.inf.AddEventHandler(x.h)
		if err != nil {
			return fmt.Errorf("add event handler: %w", err)
		}
		c.regs = append(c.regs, reg)
	}
	if cl.IstioInformers != nil {
		c.istio = cl.Istio
		pi := cl.IstioInformers.Security().V1().AuthorizationPolicies()
		c.policies = pi.Lister()
		ws := []watched{{pi.Informer(), h}}
		// VirtualServices and DestinationRules only where their CRDs
		// are installed (the chart installs them).
		if c.servedNetworking(cl) {
			net := cl.IstioInformers.Networking().V1()
			c.vss, c.drs = net.VirtualServices().Lister(), net.DestinationRules().Lister()
			ws = append(ws, watched{net.VirtualServices().Informer(), h}, watched{net.DestinationRules().Informer(), h})
		}
		// Telemetry only where its CRD is installed (the chart installs
		// it).
		if c.servedTelemetry(cl) {
			ti := cl.IstioInformers.Telemetry().V1().Telemetries()
			c.telemetry = ti.Lister()
			ws = append(ws, watched{ti.Informer(), h})
		}
		for _, x := range ws {
			reg, err := x.inf.AddEventHandler(x.h)
			if err != nil {
				return fmt.Errorf("add event handler: %w", err)
			}
			c.regs = append(c.regs, reg)
		}
	}
	// The pod informer is the ambient index's; the controller looks pods
	// up (Partition, workload labels) and rebuilds when a pod's labels
	// change (DestinationRule subsets select by them; the model does not
	// keep them).
	c.podsSynced = core.Pods().Informer().HasSynced
	reg, err := core.Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(o, n any) {
			op, ok1 := o.(*corev1.Pod)
			np, ok2 := n.(*corev1.Pod)
			if ok1 && ok2 && !maps.Equal(op.Labels, np.Labels) {
				baseChanged()
			}
		},
	})
	if err != nil {
		return fmt.Errorf("add event handler: %w", err)
	}
	c.regs = append(c.regs, reg)
	return nil
}

// servedNetworking reports whether the API server serves
// VirtualServices and DestinationRules (networking.istio.io/v1).
func (c *Controller) servedNetworking(cl *cluster.Cluster) bool {
	rl, err := cl.Istio.Discovery().ServerResourcesForGroupVersion("networking.istio.io/v1")
	if err != nil {
		c.log.Info("networking.istio.io/v1 not served; VirtualServices and DestinationRules are not watched", logkey.Error, err)
		return false
	}
	have := map[string]bool{}
	for _, r := range rl.APIResources {
		have[r.Name] = true
	}
	if !have["virtualservices"] || !have["destinationrules"] {
		c.log.Info("VirtualServices or DestinationRules not served; neither is watched")
		return false
	}
	return true
}

// servedTelemetry reports whether the API server serves Telemetry
// (telemetry.istio.io/v1).
func (c *Controller) servedTelemetry(cl *cluster.Cluster) bool {
	rl, err := cl.Istio.Discovery().ServerResourcesForGroupVersion("telemetry.istio.io/v1")
	if err != nil {
		c.log.Info("telemetry.istio.io/v1 not served; Telemetry is not watched", logkey.Error, err)
		return false
	}
	for _, r := range rl.APIResources {
		if r.Name == "telemetries" {
			return true
		}
	}
	c.log.Info("Telemetry not served; not watched")
	return false
}

// SetMesh makes m the MeshConfig waypoints are built with (until the
// first call, Istio's default); waypoints whose config changes are
// pushed.
func (c *Controller) SetMesh(m *meshv1alpha1.MeshConfig) {
	c.mu.Lock()
	c.mesh = m
	c.meshGen++
	c.mu.Unlock()
	c.markDirty()
}

// workloadLabels are a pod workload's labels, from the pod informer.
func (c *Controller) workloadLabels(uid string) map[string]string {
	parts := strings.Split(uid, "/")
	// <cluster>//Pod/<namespace>/<name>
	if len(parts) != 5 || parts[2] != "Pod" || c.pods == nil {
		return nil
	}
	p, err := c.pods.Pods(parts[3]).Get(parts[4])
	if err != nil {
		return nil
	}
	return p.Labels
}

// servedResources are the Gateway API v1 resources the API server serves.
func (c *Controller) servedResources(cl *cluster.Cluster) map[string]bool {
	out := map[string]bool{}
	rl, err := cl.GatewayAPI.Discovery().ServerResourcesForGroupVersion(gatewayv1.GroupVersion.String())
	if err != nil {
		c.log.Warn("discover Gateway API resources; routes on waypoints are not watched", logkey.Error, err)
		return out
	}
	for _, r := range rl.APIResources {
		out[r.Name] = true
	}
	for _, r := range []string{"httproutes", "grpcroutes", "referencegrants"} {
		if !out[r] {
			c.log.Info("Gateway API resource not served; not watched", "resource", r)
		}
	}
	return out
}

// OnModel takes what a flush of the ambient model changed; the first
// delta holds the whole model.
func (c *Controller) OnModel(d ambient.Delta) {
	c.mu.Lock()
	for k, v := range d.Addresses {
		c.addrs[k] = v
	}
	for _, k := range d.RemovedAddresses {
		delete(c.addrs, k)
	}
	c.haveModel = true
	c.baseGen++
	c.mu.Unlock()
	c.markDirty()
}

func (c *Controller) markDirty() {
	select {
	case c.dirty <- struct{}{}:
	default:
	}
}

// Run builds and publishes to pub until ctx ends, starting once the
// informers synced and the first model came.
func (c *Controller) Run(ctx context.Context, pub Publisher) error {
	if c.regs == nil {
		return errors.New("run waypoint controller: no informers registered")
	}
	c.pub = pub
	return ambient.RunDebounced(ctx, c.regs, c.dirty, c.opts.Quiet, c.opts.Max,
		nil, func() { c.flush(ctx) })
}

// waypointRefs are the Gateways of the waypoint class.
func (c *Controller) waypointRefs() ([]Ref, error) {
	gws, err := c.gateways.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list gateways: %w", err)
	}
	var refs []Ref
	for _, gw := range gws {
		if string(gw.Spec.GatewayClassName) == gateway.WaypointClass {
			refs = append(refs, Ref{Namespace: gw.Namespace, Name: gw.Name})
		}
	}
	return refs, nil
}

// flush rebuilds the waypoints whose inputs changed and publishes the
// difference.
func (c *Controller) flush(ctx context.Context) {
	start := time.Now()
	refs, err := c.waypointRefs()
	if err != nil {
		c.log.Error("list waypoints", logkey.Error, err)
		return
	}
	var routes []*gatewayv1.HTTPRoute
	var grpcRoutes []*gatewayv1.GRPCRoute
	var grants []*gatewayv1.ReferenceGrant
	if c.httpRoutes != nil {
		if routes, err = c.httpRoutes.List(labels.Everything()); err != nil {
			c.log.Error("list httproutes", logkey.Error, err)
			return
		}
	}
	if c.grpcRoutes != nil {
		if grpcRoutes, err = c.grpcRoutes.List(labels.Everything()); err != nil {
			c.log.Error("list grpcroutes", logkey.Error, err)
			return
		}
	}
	if c.grants != nil {
		if grants, err = c.grants.List(labels.Everything()); err != nil {
			c.log.Error("list referencegrants", logkey.Error, err)
			return
		}
	}
	in := &Input{Config: c.cfg, Service: c.service, HTTPRoutes: routes, GRPCRoutes: grpcRoutes, ReferenceGrants: grants, WorkloadLabels: c.workloadLabels}
	if c.vss != nil {
		if in.VirtualServices, err = c.vss.List(labels.Everything()); err != nil {
			c.log.Error("list virtualservices", logkey.Error, err)
			return
		}
		if in.DestinationRules, err = c.drs.List(labels.Everything()); err != nil {
			c.log.Error("list destinationrules", logkey.Error, err)
			return
		}
	}
	if c.policies != nil {
		if in.AuthorizationPolicies, err = c.policies.List(labels.Everything()); err != nil {
			c.log.Error("list authorizationpolicies", logkey.Error, err)
			return
		}
	}
	var telemetries []*telemetryv1.Telemetry
	if c.telemetry != nil {
		if telemetries, err = c.telemetry.List(labels.Everything()); err != nil {
			c.log.Error("list telemetries", logkey.Error, err)
			return
		}
	}
	c.mu.Lock()
	if !c.haveModel {
		c.mu.Unlock()
		return
	}
	mesh, meshGen := c.mesh, c.meshGen
	if mesh == nil {
		mesh = meshconfig.Default()
	}
	// istiod's root namespace (its flag) is the one policies use.
	if c.cfg.RootNamespace != "" && mesh.GetRootNamespace() != c.cfg.RootNamespace {
		mesh = proto.Clone(mesh).(*meshv1alpha1.MeshConfig)
		mesh.RootNamespace = c.cfg.RootNamespace
	}
	in.Telemetry = telemetry.NewIndex(mesh, telemetries)
	in.Addresses = c.addrs
	if c.base == nil || c.baseAt != c.baseGen {
		c.base, c.baseAt = computeBase(in, c.cfg, refs), c.baseGen
	}
	c.mu.Unlock()
	scs, statuses := c.base.attach(in, c.cfg)
	// ReferenceGrants decide which backends resolve, in any scope.
	var gd strings.Builder
	for _, g := range grants {
		fmt.Fprintf(&gd, "G%s/%s/%s\n", g.Namespace, g.Name, g.ResourceVersion)
	}
	// So do VirtualServices and DestinationRules (any change rebuilds
	// all: a host's routes may name any other host). Their generation,
	// not resource version: istiod's own status writes must not rebuild.
	for _, vs := range in.VirtualServices {
		fmt.Fprintf(&gd, "V%s/%s/%d/%s\n", vs.Namespace, vs.Name, vs.Generation, vs.UID)
	}
	for _, dr := range in.DestinationRules {
		fmt.Fprintf(&gd, "D%s/%s/%d/%s\n", dr.Namespace, dr.Name, dr.Generation, dr.UID)
	}
	// So do policies with targetRefs (few; any change rebuilds all): the
	// spec's generation and the dry-run annotation.
	for _, ap := range in.AuthorizationPolicies {
		if len(ap.Spec.GetTargetRefs()) > 0 || ap.Spec.GetTargetRef() != nil {
			fmt.Fprintf(&gd, "P%s/%s/%d/%s/%q\n", ap.Namespace, ap.Name, ap.Generation, ap.UID, ap.Annotations[authz.DryRunAnnotation])
		}
	}
	// So do MeshConfig and Telemetry objects (any change rebuilds all).
	fmt.Fprintf(&gd, "M%d\n", meshGen)
	for _, t := range telemetries {
		fmt.Fprintf(&gd, "T%s/%s/%d/%s\n", t.Namespace, t.Name, t.Generation, t.UID)
	}
	rebuilt := 0
	for ref, sc := range scs {
		fp := gd.String() + sc.fingerprint()
		if p := c.published[ref]; p != nil && p.fingerprint == fp {
			continue
		}
		res, err := buildScope(in, c.cfg, sc)
		if err != nil {
			// A program error: keep serving the last good config.
			c.log.Error("build waypoint", logkey.Object, ref.String(), logkey.Error, err)
			continue
		}
		rebuilt++
		for k, v := range res.PolicyNotes {
			c.log.Warn("waypoint policy enforced stricter than written", logkey.Object, ref.String(), logkey.Policy, k, logkey.Status, strings.Join(v, "; "))
		}
		for _, n := range res.TelemetryNotes {
			c.log.Warn("waypoint telemetry not configured as asked", logkey.Object, ref.String(), logkey.Status, n)
		}
		c.publish(ref, fp, res.byType())
		if p := c.published[ref]; p != nil {
			p.notes = res.PolicyNotes
		}
	}
	for ref := range c.published {
		if _, ok := scs[ref]; !ok {
			c.publish(ref, "", nil)
			delete(c.published, ref)
		}
	}
	c.log.Debug("waypoints flushed", "waypoints", len(scs), "rebuilt", rebuilt, "took", time.Since(start))
	c.writeStatuses(ctx, statuses)
	c.writeIstioStatuses(ctx, append(append([]ObjectStatus(nil), c.base.istioStatus...), c.policyStatuses(in, refs)...))
	if c.pushed != nil && rebuilt > 0 {
		select {
		case c.pushed <- struct{}{}:
		default:
		}
	}
}

// policyStatuses are the WaypointAccepted conditions of the policies
// with targetRefs, with what every waypoint noted of them.
func (c *Controller) policyStatuses(in *Input, refs []Ref) []ObjectStatus {
	notes := map[string][]string{}
	for _, p := range c.published {
		for k, v := range p.notes {
			notes[k] = append(notes[k], v...)
		}
	}
	for k, v := range notes {
		slices.Sort(v)
		notes[k] = slices.Compact(v)
	}
	wps := map[Ref]bool{}
	for _, r := range refs {
		wps[r] = true
	}
	return policyStatuses(in.AuthorizationPolicies, policyTargets{
		rootNS: c.cfg.RootNamespace, waypoints: wps,
		service: func(ns, name string) (string, bool) { return c.base.serviceWaypoint(c.cfg, ns, name) },
	}, notes)
}

func (c *Controller) service(namespace, name string) *corev1.Service {
	svc, err := c.services.Services(namespace).Get(name)
	if err != nil {
		return nil
	}
	return svc
}

// publish hands the resources of ref that differ from what it published
// to the Publisher; nil byType removes them all.
func (c *Controller) publish(ref Ref, fp string, byType map[string]map[string]proto.Message) {
	old := c.published[ref]
	next := &publishedWaypoint{fingerprint: fp, byType: byType}
	for _, typ := range []string{ClusterType, EndpointType, ListenerType} {
		var before map[string]proto.Message
		if old != nil {
			before = old.byType[typ]
		}
		now := byType[typ]
		changed := map[string]proto.Message{}
		for name, m := range now {
			if o, ok := before[name]; !ok || !proto.Equal(o, m) {
				changed[name] = m
			}
		}
		var removed []string
		for name := range before {
			if _, ok := now[name]; !ok {
				removed = append(removed, name)
			}
		}
		if err := c.pub.ApplyPartition(typ, ref.String(), changed, removed); err != nil {
			c.log.Error("publish waypoint", logkey.Object, ref.String(), logkey.Error, err)
			// Publish it all again next time.
			next.fingerprint = ""
		}
	}
	if byType != nil {
		c.published[ref] = next
	}
}

func (r *Resources) byType() map[string]map[string]proto.Message {
	out := map[string]map[string]proto.Message{ListenerType: {}, ClusterType: {}, EndpointType: {}}
	for _, l := range r.Listeners {
		out[ListenerType][l.Name] = l
	}
	for _, cl := range r.Clusters {
		out[ClusterType][cl.Name] = cl
	}
	for _, e := range r.Endpoints {
		out[EndpointType][e.ClusterName] = e
	}
	return out
}

// podSyncWait bounds how long Partition waits for the pod informer.
const podSyncWait = 10 * time.Second

// Node metadata keys Istio's proxies send.
const (
	metadataLabels    = "LABELS"
	metadataNamespace = "NAMESPACE"
)

// Partition names the waypoint a proxy is, "namespace/name" of its
// Gateway, as Istio tells: the node id is
// "waypoint~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>"; the Gateway
// is the pod's gateway.networking.k8s.io/gateway-name label, from the
// node's LABELS metadata or else from the pod itself. "" when the node
// is no waypoint or names none: it is served nothing.
func (c *Controller) Partition(n *core.Node) string {
	parts := strings.Split(n.GetId(), "~")
	if len(parts) != 4 || parts[0] != "waypoint" {
		return ""
	}
	pod, ns, ok := strings.Cut(parts[2], ".")
	if !ok || pod == "" || ns == "" {
		return ""
	}
	md := n.GetMetadata().GetFields()
	if v := md[metadataNamespace].GetStringValue(); v != "" && v != ns {
		return ""
	}
	name := md[metadataLabels].GetStructValue().GetFields()[ambient.LabelGatewayName].GetStringValue()
	if name == "" && c.pods != nil {
		// A stream keeps its partition: a proxy that connects while
		// istiod is starting waits for the pods to be known.
		if c.podsSynced != nil && !c.podsSynced() {
			stop := make(chan struct{})
			t := time.AfterFunc(podSyncWait, func() { close(stop) })
			cache.WaitForCacheSync(stop, c.podsSynced)
			t.Stop()
		}
		if p, err := c.pods.Pods(ns).Get(pod); err == nil {
			name = p.Labels[ambient.LabelGatewayName]
		}
	}
	if name == "" {
		return ""
	}
	return Ref{Namespace: ns, Name: name}.String()
}
