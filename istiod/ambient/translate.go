package ambient

import (
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambitmesh/ambit/api/security"
	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/internal/enrolment"
	"github.com/ambitmesh/ambit/istiod/authz"
)

// State is the cluster state the model is built from.
type State struct {
	Namespaces     []*corev1.Namespace
	Pods           []*corev1.Pod
	Services       []*corev1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
	Nodes          []*corev1.Node
	// ServiceAccounts and Gateways carry waypoint bindings.
	ServiceAccounts []*corev1.ServiceAccount
	Gateways        []*gatewayv1.Gateway
	// Policies are the translated security policies; nil means none.
	Policies *authz.Translation
}

// Standard labels for telemetry names and locality.
const (
	labelCanonicalName     = "service.istio.io/canonical-name"
	labelCanonicalRevision = "service.istio.io/canonical-revision"
	labelAppName           = "app.kubernetes.io/name"
	labelAppVersion        = "app.kubernetes.io/version"
	labelRegion            = "topology.kubernetes.io/region"
	labelZone              = "topology.kubernetes.io/zone"
	labelPodTemplateHash   = "pod-template-hash"
)

// Captured reports whether ambient captures a pod: its namespace or the
// pod itself is labelled istio.io/dataplane-mode=ambient, the pod is not
// labelled istio.io/dataplane-mode=none, and it does not use the host
// network (its traffic cannot be told apart from the node's).
func Captured(ns *corev1.Namespace, pod *corev1.Pod) bool {
	var nsLabels map[string]string
	if ns != nil {
		nsLabels = ns.Labels
	}
	return enrolment.Captured(pod.Labels, nsLabels, pod.Spec.HostNetwork)
}

// Redirected reports whether the node agent has confirmed that the pod's
// traffic is redirected (ambient.istio.io/redirection: enabled). As in
// Istio, a captured pod is advertised as HBONE only then: before it, a
// peer's HBONE to the pod's address would find no redirection in place.
func Redirected(pod *corev1.Pod) bool {
	return pod.Annotations[enrolment.AnnotationRedirection] == enrolment.AnnotationEnabled
}

// Build translates a cluster state into a model. It is a pure function of
// its input. istiod keeps its model up to date with a Builder instead;
// Build is the reference the Builder is tested against.
func Build(s State, cfg Config) Model {
	cfg = cfg.WithDefaults()
	m := Model{
		Addresses:      map[string]*workload.Address{},
		Authorizations: map[string]*security.Authorization{},
		PolicyStatus:   map[string]string{},
		WaypointStatus: map[string]BindingStatus{},
	}
	if s.Policies != nil {
		for k, v := range s.Policies.Authorizations {
			m.Authorizations[k] = v
		}
		for k, v := range s.Policies.Status {
			m.PolicyStatus[k] = v
		}
	}
	namespaces := map[string]*corev1.Namespace{}
	for _, ns := range s.Namespaces {
		namespaces[ns.Name] = ns
	}
	nodes := map[string]*corev1.Node{}
	for _, n := range s.Nodes {
		nodes[n.Name] = n
	}
	svcsByNS := map[string][]*corev1.Service{}
	services := map[string]*corev1.Service{} // namespace/name
	for _, svc := range s.Services {
		if svc.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		services[svc.Namespace+"/"+svc.Name] = svc
		svcsByNS[svc.Namespace] = append(svcsByNS[svc.Namespace], svc)
	}
	accounts := map[string]*corev1.ServiceAccount{}
	for _, sa := range s.ServiceAccounts {
		accounts[key(sa.Namespace, sa.Name)] = sa
	}
	wps := newWaypoints(s.Gateways, func(ns, name string) *corev1.Service { return services[key(ns, name)] }, cfg.DomainSuffix)
	wps.gatewayStatuses(m.WaypointStatus)
	for _, n := range s.Namespaces {
		if st, ok := wps.namespaceStatus(n); ok {
			m.WaypointStatus[StatusKey("Namespace", "", n.Name)] = st
		}
	}
	for _, sa := range s.ServiceAccounts {
		if st, ok := wps.serviceAccountStatus(sa, namespaces[sa.Namespace]); ok {
			m.WaypointStatus[StatusKey("ServiceAccount", sa.Namespace, sa.Name)] = st
		}
	}
	// Pods whose Workload.waypoint comes from a binding of their own (pod
	// or service account): a Service backed by one leaves the namespace's
	// waypoint to ztunnel's choice per endpoint.
	podsByKey := map[string]*corev1.Pod{}
	for _, pod := range s.Pods {
		podsByKey[key(pod.Namespace, pod.Name)] = pod
	}
	ownBound := func(pk string) bool {
		pod := podsByKey[pk]
		if pod == nil || wps.isWaypointPod(pod) {
			return false
		}
		a, _ := wps.ownBinding(pod, namespaces[pod.Namespace], accounts[key(pod.Namespace, podServiceAccount(pod))], workloadTraffic)
		return a != nil
	}
	svcBackendsBound := map[string]bool{}
	for _, pod := range s.Pods {
		if !ownBound(key(pod.Namespace, pod.Name)) {
			continue
		}
		for _, svc := range svcsByNS[pod.Namespace] {
			if len(svc.Spec.Selector) > 0 && selects(svc.Spec.Selector, pod.Labels) {
				svcBackendsBound[key(svc.Namespace, svc.Name)] = true
			}
		}
	}
	for _, es := range s.EndpointSlices {
		sk := key(es.Namespace, es.Labels[discoveryv1.LabelServiceName])
		if svc := services[sk]; svc == nil || len(svc.Spec.Selector) > 0 {
			continue
		}
		for _, pk := range slicePods(es) {
			if ownBound(pk) {
				svcBackendsBound[sk] = true
			}
		}
	}
	for _, svc := range s.Services {
		if svc.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		nsObj := namespaces[svc.Namespace]
		sv := translateService(svc, cfg)
		sv.Waypoint = wps.serviceWaypoint(svc, nsObj, svcBackendsBound[key(svc.Namespace, svc.Name)])
		m.Addresses[ServiceName(sv.Namespace, sv.Hostname)] = &workload.Address{Type: &workload.Address_Service{Service: sv}}
		if st, ok := wps.serviceStatus(svc, nsObj); ok {
			m.WaypointStatus[StatusKey("Service", svc.Namespace, svc.Name)] = st
		}
	}

	pods := map[string]*workload.Workload{} // namespace/name
	for _, pod := range s.Pods {
		w := translatePod(pod, namespaces[pod.Namespace], nodes[pod.Spec.NodeName], cfg)
		if w == nil {
			continue
		}
		wps.applyTo(w, pod, namespaces[pod.Namespace], accounts[key(pod.Namespace, podServiceAccount(pod))])
		for _, svc := range svcsByNS[pod.Namespace] {
			if len(svc.Spec.Selector) == 0 || !selects(svc.Spec.Selector, pod.Labels) {
				continue
			}
			addServicePorts(w, svc, cfg, func(p corev1.ServicePort) uint32 { return podTargetPort(pod, p) })
		}
		if s.Policies != nil {
			w.AuthorizationPolicies = s.Policies.ForWorkload(pod.Namespace, pod.Labels)
		}
		pods[pod.Namespace+"/"+pod.Name] = w
		m.Addresses[w.Uid] = &workload.Address{Type: &workload.Address_Workload{Workload: w}}
	}

	// Services without a selector get their backends from EndpointSlices
	// someone else maintains: a pod they name gets the service, an
	// address that is no pod becomes a workload of its own.
	for _, es := range s.EndpointSlices {
		svcName := es.Labels[discoveryv1.LabelServiceName]
		svc := services[es.Namespace+"/"+svcName]
		if svc == nil || len(svc.Spec.Selector) > 0 {
			continue
		}
		target := sliceTargetPort(es)
		for _, ep := range es.Endpoints {
			if ref := ep.TargetRef; ref != nil && ref.Kind == "Pod" {
				ns := ref.Namespace
				if ns == "" {
					ns = es.Namespace
				}
				if w := pods[ns+"/"+ref.Name]; w != nil {
					addServicePorts(w, svc, cfg, target)
				}
				continue
			}
			for _, a := range ep.Addresses {
				ip, err := netip.ParseAddr(a)
				if err != nil {
					continue
				}
				w := endpointWorkload(es, ep, ip, svc, cfg)
				m.Addresses[w.Uid] = &workload.Address{Type: &workload.Address_Workload{Workload: w}}
			}
		}
	}
	return m
}

// sliceTargetPort resolves a service port's target port through an
// EndpointSlice's ports, by port name.
func sliceTargetPort(es *discoveryv1.EndpointSlice) func(corev1.ServicePort) uint32 {
	return func(p corev1.ServicePort) uint32 {
		for _, ep := range es.Ports {
			if ep.Port != nil && ptrString(ep.Name) == p.Name {
				return uint32(*ep.Port)
			}
		}
		return 0
	}
}

// endpointWorkload is the Workload of an EndpointSlice address that is no
// pod, backing the selector-less svc.
func endpointWorkload(es *discoveryv1.EndpointSlice, ep discoveryv1.Endpoint, ip netip.Addr, svc *corev1.Service, cfg Config) *workload.Workload {
	w := &workload.Workload{
		Uid:            cfg.ClusterID + "/discovery.k8s.io/EndpointSlice/" + es.Namespace + "/" + es.Name + "/" + ip.String(),
		Name:           es.Name,
		Namespace:      es.Namespace,
		Addresses:      [][]byte{ip.AsSlice()},
		Network:        cfg.Network,
		TrustDomain:    cfg.TrustDomain,
		ServiceAccount: "default",
		ClusterId:      cfg.ClusterID,
		CanonicalName:  svc.Name,
		WorkloadName:   svc.Name,
		Node:           ptrString(ep.NodeName),
		Status:         workload.WorkloadStatus_HEALTHY,
	}
	if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
		w.Status = workload.WorkloadStatus_UNHEALTHY
	}
	addServicePorts(w, svc, cfg, sliceTargetPort(es))
	return w
}

func translateService(svc *corev1.Service, cfg Config) *workload.Service {
	ws := &workload.Service{
		Name:      svc.Name,
		Namespace: svc.Namespace,
		Hostname:  svc.Name + "." + svc.Namespace + ".svc." + cfg.DomainSuffix,
	}
	vips := append([]string{}, svc.Spec.ClusterIPs...)
	if len(vips) == 0 && svc.Spec.ClusterIP != "" {
		vips = append(vips, svc.Spec.ClusterIP)
	}
	vips = append(vips, svc.Spec.ExternalIPs...)
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		vips = append(vips, ing.IP)
	}
	seen := map[netip.Addr]bool{}
	for _, v := range vips {
		ip, err := netip.ParseAddr(v) // "None" of headless services fails here
		if err != nil || seen[ip] {
			continue
		}
		seen[ip] = true
		ws.Addresses = append(ws.Addresses, &workload.NetworkAddress{Network: cfg.Network, Address: ip.AsSlice()})
	}
	for _, p := range svc.Spec.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue
		}
		// A named target port is resolved per workload.
		ws.Ports = append(ws.Ports, &workload.Port{ServicePort: uint32(p.Port), TargetPort: uint32(p.TargetPort.IntValue())})
	}
	return ws
}

// addServicePorts records that w backs svc, mapping each TCP service port
// to the workload's target port; ports the workload cannot resolve are
// left out.
func addServicePorts(w *workload.Workload, svc *corev1.Service, cfg Config, target func(corev1.ServicePort) uint32) {
	key := ServiceName(svc.Namespace, svc.Name+"."+svc.Namespace+".svc."+cfg.DomainSuffix)
	if w.Services == nil {
		w.Services = map[string]*workload.PortList{}
	}
	pl := &workload.PortList{}
	for _, p := range svc.Spec.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue
		}
		tp := target(p)
		if tp == 0 {
			continue
		}
		pl.Ports = append(pl.Ports, &workload.Port{ServicePort: uint32(p.Port), TargetPort: tp})
	}
	w.Services[key] = pl
}

// podTargetPort resolves a service port's target port against a pod: a
// number as it is (the service port when unset), a name through the pod's
// container ports.
func podTargetPort(pod *corev1.Pod, p corev1.ServicePort) uint32 {
	if p.TargetPort.StrVal == "" {
		if v := p.TargetPort.IntValue(); v > 0 {
			return uint32(v)
		}
		return uint32(p.Port)
	}
	for _, c := range pod.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == p.TargetPort.StrVal && (cp.Protocol == "" || cp.Protocol == corev1.ProtocolTCP) {
				return uint32(cp.ContainerPort)
			}
		}
	}
	return 0
}

func translatePod(pod *corev1.Pod, ns *corev1.Namespace, node *corev1.Node, cfg Config) *workload.Workload {
	if pod.Status.PodIP == "" || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed || pod.DeletionTimestamp != nil && !podReady(pod) {
		return nil
	}
	w := &workload.Workload{
		Uid:            PodUID(cfg.ClusterID, pod.Namespace, pod.Name),
		Name:           pod.Name,
		Namespace:      pod.Namespace,
		Network:        cfg.Network,
		TrustDomain:    cfg.TrustDomain,
		ServiceAccount: pod.Spec.ServiceAccountName,
		Node:           pod.Spec.NodeName,
		ClusterId:      cfg.ClusterID,
		Status:         workload.WorkloadStatus_UNHEALTHY,
	}
	if w.ServiceAccount == "" {
		w.ServiceAccount = "default"
	}
	ips := pod.Status.PodIPs
	if len(ips) == 0 {
		ips = []corev1.PodIP{{IP: pod.Status.PodIP}}
	}
	for _, p := range ips {
		if ip, err := netip.ParseAddr(p.IP); err == nil {
			w.Addresses = append(w.Addresses, ip.AsSlice())
		}
	}
	if podReady(pod) {
		w.Status = workload.WorkloadStatus_HEALTHY
	}
	if Captured(ns, pod) && Redirected(pod) {
		w.TunnelProtocol = workload.TunnelProtocol_HBONE
	}
	if pod.Spec.HostNetwork {
		w.NetworkMode = workload.NetworkMode_HOST_NETWORK
	}
	w.WorkloadType, w.WorkloadName = workloadOwner(pod)
	w.CanonicalName = firstLabel(pod.Labels, labelCanonicalName, labelAppName, "app")
	if w.CanonicalName == "" {
		w.CanonicalName = w.WorkloadName
	}
	w.CanonicalRevision = firstLabel(pod.Labels, labelCanonicalRevision, labelAppVersion, "version")
	if w.CanonicalRevision == "" {
		w.CanonicalRevision = "latest"
	}
	if node != nil && (node.Labels[labelRegion] != "" || node.Labels[labelZone] != "") {
		w.Locality = &workload.Locality{Region: node.Labels[labelRegion], Zone: node.Labels[labelZone]}
	}
	return w
}

// workloadOwner names the controller of a pod, as Istio's telemetry does:
// the Deployment behind a ReplicaSet, the CronJob behind a Job.
func workloadOwner(pod *corev1.Pod) (workload.WorkloadType, string) {
	for _, ref := range pod.OwnerReferences {
		if ref.Controller == nil || !*ref.Controller {
			continue
		}
		switch ref.Kind {
		case "ReplicaSet":
			if h := pod.Labels[labelPodTemplateHash]; h != "" && strings.HasSuffix(ref.Name, "-"+h) {
				return workload.WorkloadType_DEPLOYMENT, strings.TrimSuffix(ref.Name, "-"+h)
			}
			return workload.WorkloadType_DEPLOYMENT, ref.Name
		case "Job":
			// CronJob jobs are named <cronjob>-<scheduled time>.
			if i := strings.LastIndexByte(ref.Name, '-'); i > 0 && isDigits(ref.Name[i+1:]) {
				return workload.WorkloadType_CRONJOB, ref.Name[:i]
			}
			return workload.WorkloadType_JOB, ref.Name
		default:
			return workload.WorkloadType_DEPLOYMENT, ref.Name
		}
	}
	return workload.WorkloadType_POD, pod.Name
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func firstLabel(l map[string]string, keys ...string) string {
	for _, k := range keys {
		if v := l[k]; v != "" {
			return v
		}
	}
	return ""
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

func ptrString(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// selects reports whether a Service selector (equality on every key)
// matches a pod's labels; it is labels.SelectorFromSet(sel).Matches
// without the allocations, on the hot path of every build.
func selects(sel, lbls map[string]string) bool {
	for k, v := range sel {
		if got, ok := lbls[k]; !ok || got != v {
			return false
		}
	}
	return true
}
