package ambient

import (
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambitmesh/ambit/api/security"
	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/istiod/authz"
)

// Delta is what one Flush changed in the model.
type Delta struct {
	// Addresses are the added and changed addresses, by resource name.
	Addresses        map[string]*workload.Address
	RemovedAddresses []string
	// Authorizations are the added and changed policies.
	Authorizations        map[string]*security.Authorization
	RemovedAuthorizations []string
	// PolicyStatus is the complete policy status when the policies were
	// translated again since the last flush, nil otherwise.
	PolicyStatus map[string]string
}

// Empty reports whether the delta changes nothing.
func (d Delta) Empty() bool {
	return len(d.Addresses)+len(d.RemovedAddresses)+len(d.Authorizations)+len(d.RemovedAuthorizations) == 0 && d.PolicyStatus == nil
}

// Builder keeps the model up to date as cluster objects change, doing
// for each change only the work it needs: a pod's event recomputes that
// pod's Workload; a Service's event its Service and the Workloads of the
// pods its old or new selector picks (or that its EndpointSlices name); a
// namespace's or a node's event the Workloads of its pods (a node's only
// when its locality labels changed); new policies the Authorizations and
// the policy list of each Workload. The result equals Build over the same
// objects (a property test checks this).
//
// Set and Delete record an object and what it affects; Flush does the
// work and returns what changed. The objects must not be modified after
// they were handed over (informer caches' objects never are). A Builder
// is not safe for concurrent use.
type Builder struct {
	cfg Config

	namespaces map[string]*corev1.Namespace
	nodes      map[string]*corev1.Node
	pods       map[string]*corev1.Pod // "namespace/name"
	services   map[string]*corev1.Service
	slices     map[string]*discoveryv1.EndpointSlice
	accounts   map[string]*corev1.ServiceAccount
	gateways   map[string]*gatewayv1.Gateway
	policies   *authz.Translation
	waypoints  *waypoints

	podsByNS    map[string]set // namespace -> pod keys
	podsByNode  map[string]set // node -> pod keys
	svcsByNS    map[string]set // namespace -> service keys
	slicesBySvc map[string]set // "namespace/service" -> slice keys
	slicesByPod map[string]set // pod key -> keys of slices naming it

	addrs     map[string]*workload.Address
	auths     map[string]*security.Authorization
	status    map[string]string
	wpStatus  map[string]BindingStatus
	sliceUIDs map[string][]string // slice key -> uids of its non-pod workloads

	dirtyPods, dirtySvcs, dirtySlices set
	dirtyNSs, dirtyAccounts           set
	policiesDirty, waypointsDirty     bool
}

type set map[string]struct{}

func (s set) add(k string) { s[k] = struct{}{} }

func addTo(m map[string]set, k, v string) {
	s := m[k]
	if s == nil {
		s = set{}
		m[k] = s
	}
	s.add(v)
}

func removeFrom(m map[string]set, k, v string) {
	if s := m[k]; s != nil {
		delete(s, v)
		if len(s) == 0 {
			delete(m, k)
		}
	}
}

// NewBuilder returns a Builder of an empty cluster.
func NewBuilder(cfg Config) *Builder {
	return &Builder{
		cfg:           cfg.WithDefaults(),
		namespaces:    map[string]*corev1.Namespace{},
		nodes:         map[string]*corev1.Node{},
		pods:          map[string]*corev1.Pod{},
		services:      map[string]*corev1.Service{},
		slices:        map[string]*discoveryv1.EndpointSlice{},
		accounts:      map[string]*corev1.ServiceAccount{},
		gateways:      map[string]*gatewayv1.Gateway{},
		waypoints:     newWaypoints(nil, nil, cfg.WithDefaults().DomainSuffix),
		wpStatus:      map[string]BindingStatus{},
		dirtyNSs:      set{},
		dirtyAccounts: set{},
		podsByNS:      map[string]set{},
		podsByNode:    map[string]set{},
		svcsByNS:      map[string]set{},
		slicesBySvc:   map[string]set{},
		slicesByPod:   map[string]set{},
		addrs:         map[string]*workload.Address{},
		auths:         map[string]*security.Authorization{},
		status:        map[string]string{},
		sliceUIDs:     map[string][]string{},
		dirtyPods:     set{},
		dirtySvcs:     set{},
		dirtySlices:   set{},
	}
}

func key(namespace, name string) string { return namespace + "/" + name }

// SetNamespace records a new or changed namespace.
func (b *Builder) SetNamespace(ns *corev1.Namespace) {
	old := b.namespaces[ns.Name]
	b.namespaces[ns.Name] = ns
	if old == nil || !maps.Equal(old.Labels, ns.Labels) {
		b.namespaceChanged(ns.Name)
	}
}

// DeleteNamespace records a namespace's deletion.
func (b *Builder) DeleteNamespace(name string) {
	if _, ok := b.namespaces[name]; !ok {
		return
	}
	delete(b.namespaces, name)
	b.namespaceChanged(name)
}

// namespaceChanged marks what a namespace's labels decide: its pods'
// capture and waypoint, its Services' waypoint and the binding status
// of it and its service accounts.
func (b *Builder) namespaceChanged(name string) {
	b.markPods(b.podsByNS[name])
	for pk := range b.podsByNS[name] {
		b.markPodServices(b.pods[pk]) // Services in other namespaces naming them
	}
	for sk := range b.svcsByNS[name] {
		b.dirtySvcs.add(sk)
	}
	b.dirtyNSs.add(name)
	for k, sa := range b.accounts {
		if sa.Namespace == name {
			b.dirtyAccounts.add(k)
		}
	}
}

// SetServiceAccount records a new or changed ServiceAccount; only its
// waypoint binding matters.
func (b *Builder) SetServiceAccount(sa *corev1.ServiceAccount) {
	k := key(sa.Namespace, sa.Name)
	old := b.accounts[k]
	b.accounts[k] = sa
	b.dirtyAccounts.add(k)
	// An account without the labels binds as much as none at all.
	var oldLabels map[string]string
	if old != nil {
		oldLabels = old.Labels
	}
	if oldLabels[LabelUseWaypoint] != sa.Labels[LabelUseWaypoint] || oldLabels[LabelUseWaypointNamespace] != sa.Labels[LabelUseWaypointNamespace] {
		b.accountChanged(sa.Namespace, sa.Name)
	}
}

// DeleteServiceAccount records a ServiceAccount's deletion.
func (b *Builder) DeleteServiceAccount(namespace, name string) {
	k := key(namespace, name)
	old, ok := b.accounts[k]
	if !ok {
		return
	}
	delete(b.accounts, k)
	b.dirtyAccounts.add(k)
	if old.Labels[LabelUseWaypoint] != "" || old.Labels[LabelUseWaypointNamespace] != "" {
		b.accountChanged(namespace, name)
	}
}

// accountChanged marks the pods running as a service account and the
// Services they back.
func (b *Builder) accountChanged(namespace, name string) {
	b.dirtyAccounts.add(key(namespace, name))
	for pk := range b.podsByNS[namespace] {
		if p := b.pods[pk]; podServiceAccount(p) == name {
			b.dirtyPods.add(pk)
			b.markPodServices(p)
		}
	}
}

// SetGateway records a new or changed Gateway.
func (b *Builder) SetGateway(gw *gatewayv1.Gateway) {
	b.gateways[key(gw.Namespace, gw.Name)] = gw
	b.waypointsDirty = true
}

// DeleteGateway records a Gateway's deletion.
func (b *Builder) DeleteGateway(namespace, name string) {
	if _, ok := b.gateways[key(namespace, name)]; !ok {
		return
	}
	delete(b.gateways, key(namespace, name))
	b.waypointsDirty = true
}

// markPodServices marks the Services a pod backs, through their
// selector or their EndpointSlices: whether it has a waypoint binding of
// its own decides whether they take their namespace's.
func (b *Builder) markPodServices(p *corev1.Pod) {
	if p == nil {
		return
	}
	for sk := range b.svcsByNS[p.Namespace] {
		if svc := b.services[sk]; len(svc.Spec.Selector) > 0 && selects(svc.Spec.Selector, p.Labels) {
			b.dirtySvcs.add(sk)
		}
	}
	for esk := range b.slicesByPod[key(p.Namespace, p.Name)] {
		es := b.slices[esk]
		b.dirtySvcs.add(key(es.Namespace, es.Labels[discoveryv1.LabelServiceName]))
	}
}

// SetNode records a new or changed node; only its locality matters.
func (b *Builder) SetNode(n *corev1.Node) {
	old := b.nodes[n.Name]
	b.nodes[n.Name] = n
	if old == nil || old.Labels[labelRegion] != n.Labels[labelRegion] || old.Labels[labelZone] != n.Labels[labelZone] {
		b.markPods(b.podsByNode[n.Name])
	}
}

// DeleteNode records a node's deletion.
func (b *Builder) DeleteNode(name string) {
	if _, ok := b.nodes[name]; !ok {
		return
	}
	delete(b.nodes, name)
	b.markPods(b.podsByNode[name])
}

func (b *Builder) markPods(keys set) {
	for k := range keys {
		b.dirtyPods.add(k)
	}
}

// SetPod records a new or changed pod.
func (b *Builder) SetPod(p *corev1.Pod) {
	k := key(p.Namespace, p.Name)
	old := b.pods[k]
	if old != nil && old.Spec.NodeName != p.Spec.NodeName {
		removeFrom(b.podsByNode, old.Spec.NodeName, k)
	}
	// The Services a pod backs depend on its labels (their selectors, its
	// binding) and service account only, not on its status.
	if old == nil || !maps.Equal(old.Labels, p.Labels) || podServiceAccount(old) != podServiceAccount(p) {
		b.markPodServices(old)
		b.markPodServices(p)
	}
	b.pods[k] = p
	addTo(b.podsByNS, p.Namespace, k)
	addTo(b.podsByNode, p.Spec.NodeName, k)
	b.dirtyPods.add(k)
}

// DeletePod records a pod's deletion.
func (b *Builder) DeletePod(namespace, name string) {
	k := key(namespace, name)
	old := b.pods[k]
	if old == nil {
		return
	}
	b.markPodServices(old)
	delete(b.pods, k)
	removeFrom(b.podsByNS, namespace, k)
	removeFrom(b.podsByNode, old.Spec.NodeName, k)
	b.dirtyPods.add(k)
}

// SetService records a new or changed Service.
func (b *Builder) SetService(svc *corev1.Service) {
	k := key(svc.Namespace, svc.Name)
	old := b.services[k]
	b.services[k] = svc
	addTo(b.svcsByNS, svc.Namespace, k)
	b.dirtySvcs.add(k)
	if _, ok := b.gateways[k]; ok {
		b.waypointsDirty = true // the waypoint's address
	}
	if old != nil && old.Spec.Type == svc.Spec.Type && maps.Equal(old.Spec.Selector, svc.Spec.Selector) && reflect.DeepEqual(old.Spec.Ports, svc.Spec.Ports) {
		return // what the workloads carry of it is unchanged
	}
	b.serviceBackendsChanged(old)
	b.serviceBackendsChanged(svc)
}

// DeleteService records a Service's deletion.
func (b *Builder) DeleteService(namespace, name string) {
	k := key(namespace, name)
	old := b.services[k]
	if old == nil {
		return
	}
	delete(b.services, k)
	removeFrom(b.svcsByNS, namespace, k)
	b.dirtySvcs.add(k)
	if _, ok := b.gateways[k]; ok {
		b.waypointsDirty = true
	}
	b.serviceBackendsChanged(old)
}

// serviceBackendsChanged marks what carries a Service's ports: the pods
// its selector picks, or its EndpointSlices and the pods they name.
func (b *Builder) serviceBackendsChanged(svc *corev1.Service) {
	if svc == nil {
		return
	}
	if len(svc.Spec.Selector) > 0 {
		for pk := range b.podsByNS[svc.Namespace] {
			if selects(svc.Spec.Selector, b.pods[pk].Labels) {
				b.dirtyPods.add(pk)
			}
		}
	}
	for sk := range b.slicesBySvc[key(svc.Namespace, svc.Name)] {
		b.markSlice(b.slices[sk])
	}
}

// markSlice marks an EndpointSlice and the pods it names.
func (b *Builder) markSlice(es *discoveryv1.EndpointSlice) {
	b.dirtySlices.add(key(es.Namespace, es.Name))
	for _, pk := range slicePods(es) {
		b.dirtyPods.add(pk)
	}
}

// slicePods are the keys of the pods an EndpointSlice names.
func slicePods(es *discoveryv1.EndpointSlice) []string {
	var out []string
	for _, ep := range es.Endpoints {
		if ref := ep.TargetRef; ref != nil && ref.Kind == "Pod" {
			ns := ref.Namespace
			if ns == "" {
				ns = es.Namespace
			}
			out = append(out, key(ns, ref.Name))
		}
	}
	return out
}

// SetEndpointSlice records a new or changed EndpointSlice.
func (b *Builder) SetEndpointSlice(es *discoveryv1.EndpointSlice) {
	k := key(es.Namespace, es.Name)
	if old := b.slices[k]; old != nil {
		b.forgetSlice(old)
	}
	b.slices[k] = es
	b.dirtySvcs.add(key(es.Namespace, es.Labels[discoveryv1.LabelServiceName]))
	addTo(b.slicesBySvc, key(es.Namespace, es.Labels[discoveryv1.LabelServiceName]), k)
	for _, pk := range slicePods(es) {
		addTo(b.slicesByPod, pk, k)
	}
	b.markSlice(es)
}

// DeleteEndpointSlice records an EndpointSlice's deletion.
func (b *Builder) DeleteEndpointSlice(namespace, name string) {
	k := key(namespace, name)
	old := b.slices[k]
	if old == nil {
		return
	}
	b.forgetSlice(old)
	delete(b.slices, k)
	b.dirtySlices.add(k)
}

// forgetSlice drops a slice's index entries and marks what it named.
func (b *Builder) forgetSlice(es *discoveryv1.EndpointSlice) {
	k := key(es.Namespace, es.Name)
	b.dirtySvcs.add(key(es.Namespace, es.Labels[discoveryv1.LabelServiceName]))
	removeFrom(b.slicesBySvc, key(es.Namespace, es.Labels[discoveryv1.LabelServiceName]), k)
	for _, pk := range slicePods(es) {
		removeFrom(b.slicesByPod, pk, k)
		b.dirtyPods.add(pk)
	}
}

// SetPolicies records a new translation of the security policies; nil
// means none.
func (b *Builder) SetPolicies(t *authz.Translation) {
	b.policies = t
	b.policiesDirty = true
}

// Flush recomputes what the recorded changes affect and returns what
// changed in the model.
func (b *Builder) Flush() Delta {
	d := Delta{Addresses: map[string]*workload.Address{}, Authorizations: map[string]*security.Authorization{}}
	if b.policiesDirty {
		b.policiesDirty = false
		b.flushPolicies(&d)
	}
	setAddr := func(name string, a *workload.Address) {
		if old := b.addrs[name]; old != nil && proto.Equal(old, a) {
			return
		}
		b.addrs[name] = a
		d.Addresses[name] = a
	}
	removeAddr := func(name string) {
		if _, ok := b.addrs[name]; ok {
			delete(b.addrs, name)
			d.RemovedAddresses = append(d.RemovedAddresses, name)
		}
	}
	if b.waypointsDirty {
		b.waypointsDirty = false
		b.flushWaypoints()
	}
	setStatus := func(k string, st BindingStatus, ok bool) {
		if ok {
			b.wpStatus[k] = st
		} else {
			delete(b.wpStatus, k)
		}
	}
	for k := range b.dirtySvcs {
		svc := b.services[k]
		ns, name := splitKey(k)
		if svc == nil || svc.Spec.Type == corev1.ServiceTypeExternalName {
			removeAddr(ServiceName(ns, name+"."+ns+".svc."+b.cfg.DomainSuffix))
			delete(b.wpStatus, StatusKey("Service", ns, name))
			continue
		}
		nsObj := b.namespaces[ns]
		ws := translateService(svc, b.cfg)
		ws.Waypoint = b.waypoints.serviceWaypoint(svc, nsObj, b.backendsBound(svc))
		setAddr(ServiceName(ws.Namespace, ws.Hostname), &workload.Address{Type: &workload.Address_Service{Service: ws}})
		st, ok := b.waypoints.serviceStatus(svc, nsObj)
		setStatus(StatusKey("Service", ns, name), st, ok)
	}
	for n := range b.dirtyNSs {
		var st BindingStatus
		ok := false
		if nsObj := b.namespaces[n]; nsObj != nil {
			st, ok = b.waypoints.namespaceStatus(nsObj)
		}
		setStatus(StatusKey("Namespace", "", n), st, ok)
	}
	for k := range b.dirtyAccounts {
		var st BindingStatus
		ok := false
		ns, name := splitKey(k)
		if sa := b.accounts[k]; sa != nil {
			st, ok = b.waypoints.serviceAccountStatus(sa, b.namespaces[ns])
		}
		setStatus(StatusKey("ServiceAccount", ns, name), st, ok)
	}
	for k := range b.dirtySlices {
		next := b.sliceWorkloads(b.slices[k])
		for _, uid := range b.sliceUIDs[k] {
			if _, ok := next[uid]; !ok {
				removeAddr(uid)
			}
		}
		uids := make([]string, 0, len(next))
		for uid, w := range next {
			uids = append(uids, uid)
			setAddr(uid, &workload.Address{Type: &workload.Address_Workload{Workload: w}})
		}
		if len(uids) == 0 {
			delete(b.sliceUIDs, k)
		} else {
			b.sliceUIDs[k] = uids
		}
	}
	for k := range b.dirtyPods {
		ns, name := splitKey(k)
		uid := PodUID(b.cfg.ClusterID, ns, name)
		if w := b.podWorkload(k); w != nil {
			setAddr(uid, &workload.Address{Type: &workload.Address_Workload{Workload: w}})
		} else {
			removeAddr(uid)
		}
	}
	clear(b.dirtyPods)
	clear(b.dirtySvcs)
	clear(b.dirtySlices)
	clear(b.dirtyNSs)
	clear(b.dirtyAccounts)
	slices.Sort(d.RemovedAddresses)
	return d
}

// flushPolicies diffs the Authorizations and marks the pods whose policy
// list changed.
func (b *Builder) flushPolicies(d *Delta) {
	var next map[string]*security.Authorization
	status := map[string]string{}
	if b.policies != nil {
		next = b.policies.Authorizations
		maps.Copy(status, b.policies.Status)
	}
	for name, a := range next {
		if old := b.auths[name]; old == nil || !proto.Equal(old, a) {
			d.Authorizations[name] = a
		}
	}
	for name := range b.auths {
		if _, ok := next[name]; !ok {
			d.RemovedAuthorizations = append(d.RemovedAuthorizations, name)
		}
	}
	slices.Sort(d.RemovedAuthorizations)
	b.auths = maps.Clone(next)
	if b.auths == nil {
		b.auths = map[string]*security.Authorization{}
	}
	b.status = status
	d.PolicyStatus = maps.Clone(status)
	for k, p := range b.pods {
		if _, dirty := b.dirtyPods[k]; dirty {
			continue
		}
		w := b.addrs[PodUID(b.cfg.ClusterID, p.Namespace, p.Name)].GetWorkload()
		if w == nil {
			continue
		}
		var want []string
		if b.policies != nil {
			want = b.policies.ForWorkload(p.Namespace, p.Labels)
		}
		if !slices.Equal(want, w.GetAuthorizationPolicies()) {
			b.dirtyPods.add(k)
		}
	}
}

// podWorkload is a pod's Workload, nil when the pod has none; the same as
// Build makes.
func (b *Builder) podWorkload(k string) *workload.Workload {
	pod := b.pods[k]
	if pod == nil {
		return nil
	}
	w := translatePod(pod, b.namespaces[pod.Namespace], b.nodes[pod.Spec.NodeName], b.cfg)
	if w == nil {
		return nil
	}
	b.waypoints.applyTo(w, pod, b.namespaces[pod.Namespace], b.accounts[key(pod.Namespace, podServiceAccount(pod))])
	for sk := range b.svcsByNS[pod.Namespace] {
		svc := b.services[sk]
		if svc.Spec.Type == corev1.ServiceTypeExternalName || len(svc.Spec.Selector) == 0 || !selects(svc.Spec.Selector, pod.Labels) {
			continue
		}
		addServicePorts(w, svc, b.cfg, func(p corev1.ServicePort) uint32 { return podTargetPort(pod, p) })
	}
	// Slices in key order, so that two slices of one Service naming the
	// pod resolve the same way every time.
	for _, sk := range slices.Sorted(maps.Keys(b.slicesByPod[k])) {
		es := b.slices[sk]
		svc := b.sliceService(es)
		if svc == nil {
			continue
		}
		for _, pk := range slicePods(es) {
			if pk == k {
				addServicePorts(w, svc, b.cfg, sliceTargetPort(es))
				break
			}
		}
	}
	if b.policies != nil {
		w.AuthorizationPolicies = b.policies.ForWorkload(pod.Namespace, pod.Labels)
	}
	return w
}

// sliceService is the selector-less Service an EndpointSlice gives
// backends to, nil if none.
func (b *Builder) sliceService(es *discoveryv1.EndpointSlice) *corev1.Service {
	svc := b.services[key(es.Namespace, es.Labels[discoveryv1.LabelServiceName])]
	if svc == nil || svc.Spec.Type == corev1.ServiceTypeExternalName || len(svc.Spec.Selector) > 0 {
		return nil
	}
	return svc
}

// sliceWorkloads are the Workloads of an EndpointSlice's addresses that
// are no pod, by uid.
func (b *Builder) sliceWorkloads(es *discoveryv1.EndpointSlice) map[string]*workload.Workload {
	out := map[string]*workload.Workload{}
	if es == nil {
		return out
	}
	svc := b.sliceService(es)
	if svc == nil {
		return out
	}
	for _, ep := range es.Endpoints {
		if ref := ep.TargetRef; ref != nil && ref.Kind == "Pod" {
			continue
		}
		for _, a := range ep.Addresses {
			ip, err := netip.ParseAddr(a)
			if err != nil {
				continue
			}
			w := endpointWorkload(es, ep, ip, svc, b.cfg)
			out[w.Uid] = w
		}
	}
	return out
}

func splitKey(k string) (namespace, name string) {
	namespace, name, _ = strings.Cut(k, "/")
	return namespace, name
}

// Model returns a copy of the current model.
func (b *Builder) Model() Model {
	return Model{Addresses: maps.Clone(b.addrs), Authorizations: maps.Clone(b.auths), PolicyStatus: maps.Clone(b.status),
		WaypointStatus: maps.Clone(b.wpStatus)}
}

// flushWaypoints resolves the waypoints again; when any changed (they
// change rarely: a Gateway's spec, labels or annotations, or its
// Service's address), every binding is evaluated again.
func (b *Builder) flushWaypoints() {
	gws := make([]*gatewayv1.Gateway, 0, len(b.gateways))
	for _, k := range slices.Sorted(maps.Keys(b.gateways)) {
		gws = append(gws, b.gateways[k])
	}
	next := newWaypoints(gws, func(ns, name string) *corev1.Service {
		if svc := b.services[key(ns, name)]; svc != nil && svc.Spec.Type != corev1.ServiceTypeExternalName {
			return svc
		}
		return nil
	}, b.cfg.DomainSuffix)
	for k := range b.wpStatus {
		if strings.HasPrefix(k, "Gateway/") {
			delete(b.wpStatus, k)
		}
	}
	next.gatewayStatuses(b.wpStatus)
	if next.equal(b.waypoints) {
		return
	}
	b.waypoints = next
	for k := range b.pods {
		b.dirtyPods.add(k)
	}
	for k := range b.services {
		b.dirtySvcs.add(k)
	}
	for k := range b.namespaces {
		b.dirtyNSs.add(k)
	}
	for k := range b.accounts {
		b.dirtyAccounts.add(k)
	}
}

// backendsBound reports whether a pod backing svc has a Workload.waypoint
// from a binding of its own (pod or service account).
func (b *Builder) backendsBound(svc *corev1.Service) bool {
	bound := func(pk string) bool {
		pod := b.pods[pk]
		if pod == nil || b.waypoints.isWaypointPod(pod) {
			return false
		}
		a, _ := b.waypoints.ownBinding(pod, b.namespaces[pod.Namespace], b.accounts[key(pod.Namespace, podServiceAccount(pod))], workloadTraffic)
		return a != nil
	}
	if len(svc.Spec.Selector) > 0 {
		for pk := range b.podsByNS[svc.Namespace] {
			if selects(svc.Spec.Selector, b.pods[pk].Labels) && bound(pk) {
				return true
			}
		}
		return false
	}
	for sk := range b.slicesBySvc[key(svc.Namespace, svc.Name)] {
		for _, pk := range slicePods(b.slices[sk]) {
			if bound(pk) {
				return true
			}
		}
	}
	return false
}
