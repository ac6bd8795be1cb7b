// Package waypoint builds the Envoy xDS configuration of one waypoint
// proxy (Listener, Cluster and ClusterLoadAssignment, go-control-plane
// types) in Istio's structure and with Istio's names, so that Istio's
// own waypoint proxy, an upstream Envoy (Istio-only HTTP filters are
// marked is_optional) and Ambit's Go waypoint run the same config:
//
//   - connect_terminate (0.0.0.0:15008): mTLS 1.3 with a client
//     certificate of the trust domain, HTTP/2 CONNECT upgraded to the
//     internal listener main_internal; set_filter_state keeps the
//     CONNECT :authority (the original VIP:port or podIP:port), the
//     downstream address and the peer's principal for the inner hop.
//   - main_internal (internal listener): a filter_chain_matcher picks a
//     chain by destination IP (service VIPs: then port; workload IPs:
//     then application protocol) and, for addresses it does not know, by
//     the filter-state authority "host:port". Chains per service port
//     inbound-vip|<port>|http|<host> (HTTP connection manager, routes
//     inline) and inbound-vip|<port>|tcp|<host> (tcp_proxy); direct-http
//     and direct-tcp for traffic addressed to a bound workload.
//   - connect_originate (internal listener): tcp_proxy tunnelling again
//     as HBONE to the chosen endpoint, through the ORIGINAL_DST cluster
//     connect_originate (port 15008, the peer's certificate checked
//     against the trust domain's SPIFFE prefix).
//
// Clusters: main_internal and encap (STATIC, to the internal
// listeners), connect_originate, and per service port the EDS clusters
// inbound-vip|<port>|http|<host> and |tcp| whose endpoints are the
// internal listener connect_originate with the endpoint's podIP:port.
// Certificates come over SDS (default and ROOTCA on cluster sds-grpc),
// as for Istio's proxies.
//
// What a waypoint serves comes from the ambient model (istiod/ambient):
// the Services whose Address names the waypoint, the workloads whose
// Workload.waypoint names it, and, for a waypoint that serves a service
// account's workloads, the Services those workloads back (with only
// those workloads as endpoints, since ztunnel picked one of them). Routes
// come from HTTPRoutes and GRPCRoutes with a Service parent and from
// VirtualServices naming a served host; DestinationRules set clusters'
// policy and define subset clusters (inbound-vip|<port>|http/<subset>|
// <host>) of the backends their labels select. An object with a field
// the waypoint does not apply is refused whole, and its status says so.
// The package reads the model and the cluster's objects and builds; the
// Controller watches them and writes their status; istiod/xds serves.
package waypoint

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	netapi "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/istiod/ambient"
	"github.com/ambitmesh/ambit/istiod/telemetry"
)

// Input is the cluster state a waypoint's config is built from.
type Input struct {
	// Config are the mesh-wide settings (trust domain, DNS domain).
	Config ambient.Config
	// Addresses are the ambient model's (ambient.Model.Addresses): they
	// say what each waypoint serves and which workloads back each
	// Service.
	Addresses map[string]*workload.Address
	// Service looks up a Kubernetes Service, for what the model does not
	// keep: each port's protocol. Nil, or a nil result: every port is
	// sniffed.
	Service func(namespace, name string) *corev1.Service
	// HTTPRoutes are the cluster's HTTPRoutes; those with a Service
	// parentRef (GAMMA) route that Service's HTTP traffic.
	HTTPRoutes []*gatewayv1.HTTPRoute
	// GRPCRoutes likewise, for gRPC (routed as the HTTP/2 it is).
	GRPCRoutes []*gatewayv1.GRPCRoute
	// ReferenceGrants allow routes to use Services of other namespaces.
	ReferenceGrants []*gatewayv1.ReferenceGrant
	// AuthorizationPolicies are the cluster's; those with targetRefs
	// (a waypoint's Gateway, a Service, the istio-waypoint GatewayClass
	// in the root namespace) are enforced on waypoints.
	AuthorizationPolicies []*securityv1.AuthorizationPolicy
	// VirtualServices and DestinationRules are the cluster's; a
	// VirtualService routes a served Service's HTTP traffic when one of
	// its hosts names the Service, and it is in the waypoint's or the
	// Service's namespace; a DestinationRule sets the Service's clusters'
	// policy and defines its subsets.
	VirtualServices  []*networkingv1.VirtualService
	DestinationRules []*networkingv1.DestinationRule
	// WorkloadLabels are a workload's labels (by uid), which
	// DestinationRule subsets select; nil: no labels.
	WorkloadLabels func(uid string) map[string]string
	// Telemetry is the MeshConfig and the Telemetry objects (nil:
	// Istio's default MeshConfig, no Telemetry).
	Telemetry *telemetry.Index
}

// Resources are one waypoint's xDS resources, each list sorted by name.
type Resources struct {
	Listeners []*listener.Listener
	Clusters  []*cluster.Cluster
	Endpoints []*endpoint.ClusterLoadAssignment
	// PolicyNotes say, per policy "AuthorizationPolicy/namespace/name",
	// what of it this waypoint could not enforce as written and how it
	// failed safe; not part of the xDS.
	PolicyNotes map[string][]string
	// TelemetryNotes say what of MeshConfig's and the Telemetry API's
	// telemetry this waypoint could not configure (a provider not
	// supported, a collector not found); not part of the xDS.
	TelemetryNotes []string
}

// Ref names a waypoint: its Gateway's namespace and name.
type Ref struct{ Namespace, Name string }

func (r Ref) String() string { return r.Namespace + "/" + r.Name }

// protocol is what a waypoint does with a service port's traffic.
type protocol int

const (
	protoUnknown protocol = iota // sniffed: both chains
	protoHTTP
	protoHTTP2
	protoTCP
)

// servedPort is one port of a served service.
type servedPort struct {
	port  uint32
	proto protocol
}

// served is one service a waypoint serves.
type served struct {
	namespace, name, hostname string
	vips                      []netip.Addr
	ports                     []servedPort
	// endpoints are the workloads backing it with their target port per
	// service port.
	endpoints []backend
	// rules are the HTTPRoute rules attached, by service port.
	rules map[uint32][]routeRule
	// backendOnly: not served, only a route's backend (HTTP clusters of
	// its ports, no chains).
	backendOnly bool
	// svcPorts are all the Service's ports (ports, of a backend, only
	// those routes use).
	svcPorts []uint32
	// dr is the DestinationRule that applies to it on this waypoint.
	dr *networkingv1.DestinationRule
}

type backend struct {
	w       *workload.Workload
	targets map[uint32]uint32 // service port -> target port
	labels  map[string]string // the workload's, which subsets select
}

// scope is what one waypoint serves.
type scope struct {
	ref       Ref
	services  []*served            // sorted by hostname
	backends  []*served            // route backends not served, sorted by hostname
	workloads []*workload.Workload // bound by address, sorted by uid
	// traffic are the accepted VirtualServices and DestinationRules.
	traffic *istioTraffic
}

// Build builds waypoint ref's resources from in. Every resource passes
// Validate; an error means a resource did not (a program error, reported
// rather than served).
func Build(in *Input, ref Ref) (*Resources, error) {
	cfg := in.Config.WithDefaults()
	scs, _ := scopes(in, cfg, []Ref{ref})
	return buildScope(in, cfg, scs[ref])
}

func buildScope(in *Input, cfg ambient.Config, sc *scope) (*Resources, error) {
	b := &builder{cfg: cfg, sc: sc, in: in, notes: map[string][]string{}}
	// Listeners first: their chains name the collector clusters.
	res := &Resources{PolicyNotes: b.notes}
	res.Listeners = []*listener.Listener{b.connectTerminate(), b.mainInternal(), b.connectOriginateListener()}
	res.Clusters, res.Endpoints = b.clusters(), b.endpoints()
	ccl, ccla := b.collectorClusters()
	res.Clusters, res.Endpoints = append(res.Clusters, ccl...), append(res.Endpoints, ccla...)
	sort.Slice(res.Listeners, func(i, j int) bool { return res.Listeners[i].Name < res.Listeners[j].Name })
	sort.Slice(res.Clusters, func(i, j int) bool { return res.Clusters[i].Name < res.Clusters[j].Name })
	sort.Slice(res.Endpoints, func(i, j int) bool { return res.Endpoints[i].ClusterName < res.Endpoints[j].ClusterName })
	slices.Sort(b.telNotes)
	res.TelemetryNotes = slices.Compact(b.telNotes)
	for k, v := range res.PolicyNotes {
		// Each chain notes the same things: once is enough.
		slices.Sort(v)
		res.PolicyNotes[k] = slices.Compact(v)
	}
	if err := res.Validate(); err != nil {
		return nil, fmt.Errorf("build waypoint %s: %w", sc.ref, err)
	}
	return res, nil
}

type builder struct {
	cfg   ambient.Config
	sc    *scope
	in    *Input
	notes map[string][]string
	// tel is the telemetry index (telemetryIndex); collectors the
	// telemetry collectors' clusters the chains named.
	tel        *telemetry.Index
	collectors map[string]*collectorCluster
	telNotes   []string
}

// waypointIndex resolves a GatewayAddress to the waypoint it names: by
// its Service's hostname, or by one of that Service's addresses.
type waypointIndex struct {
	byHost map[string]Ref // "namespace/hostname"
	byVIP  map[netip.Addr]Ref
}

func newWaypointIndex(in *Input, cfg ambient.Config, refs []Ref) *waypointIndex {
	ix := &waypointIndex{byHost: map[string]Ref{}, byVIP: map[netip.Addr]Ref{}}
	for _, ref := range refs {
		host := ref.Name + "." + ref.Namespace + ".svc." + cfg.DomainSuffix
		ix.byHost[ref.Namespace+"/"+host] = ref
		if a := in.Addresses[ambient.ServiceName(ref.Namespace, host)]; a != nil {
			for _, na := range a.GetService().GetAddresses() {
				if ip, ok := netip.AddrFromSlice(na.GetAddress()); ok {
					ix.byVIP[ip.Unmap()] = ref
				}
			}
		}
	}
	return ix
}

func (ix *waypointIndex) resolve(g *workload.GatewayAddress) (Ref, bool) {
	if g == nil {
		return Ref{}, false
	}
	if h := g.GetHostname(); h != nil {
		r, ok := ix.byHost[h.GetNamespace()+"/"+h.GetHostname()]
		return r, ok
	}
	ip, ok := netip.AddrFromSlice(g.GetAddress().GetAddress())
	if !ok {
		return Ref{}, false
	}
	r, ok := ix.byVIP[ip.Unmap()]
	return r, ok
}

// scopes computes what each of refs serves, in one pass over the model,
// and the status of every route.
func scopes(in *Input, cfg ambient.Config, refs []Ref) (map[Ref]*scope, []RouteStatus) {
	return computeBase(in, cfg, refs).attach(in, cfg)
}

// computeBase is the pass over the model of scopes.
func computeBase(in *Input, cfg ambient.Config, refs []Ref) *baseScopes {
	ix := newWaypointIndex(in, cfg, refs)
	out := make(map[Ref]*scope, len(refs))
	for _, r := range refs {
		out[r] = &scope{ref: r}
	}
	svcs := map[string]*workload.Service{}             // resource name -> service
	own := map[string]Ref{}                            // services bound to a waypoint themselves
	bound := map[Ref]map[string][]*workload.Workload{} // waypoint -> service -> its workloads bound to it
	backing := map[string][]*workload.Workload{}       // service -> healthy workloads backing it
	for k, a := range in.Addresses {
		switch {
		case a.GetService() != nil:
			svcs[k] = a.GetService()
			if r, ok := ix.resolve(a.GetService().GetWaypoint()); ok {
				own[k] = r
			}
		case a.GetWorkload() != nil:
			w := a.GetWorkload()
			if w.GetStatus() != workload.WorkloadStatus_HEALTHY {
				continue
			}
			r, me := ix.resolve(w.GetWaypoint())
			if me {
				out[r].workloads = append(out[r].workloads, w)
			}
			for sk := range w.GetServices() {
				backing[sk] = append(backing[sk], w)
				if me {
					if bound[r] == nil {
						bound[r] = map[string][]*workload.Workload{}
					}
					bound[r][sk] = append(bound[r][sk], w)
				}
			}
		}
	}
	for k, s := range svcs {
		if r, ok := own[k]; ok {
			out[r].services = append(out[r].services, newServed(in, k, s, backing[k]))
			continue
		}
		if s.GetWaypoint() != nil {
			continue
		}
		// Served for its workloads bound to a waypoint (a service
		// account's): ztunnel sends the VIP's traffic there only after
		// picking one of them.
		for r, m := range bound {
			if eps := m[k]; len(eps) > 0 {
				out[r].services = append(out[r].services, newServed(in, k, s, eps))
			}
		}
	}
	for _, sc := range out {
		sort.Slice(sc.services, func(i, j int) bool { return sc.services[i].hostname < sc.services[j].hostname })
		sort.Slice(sc.workloads, func(i, j int) bool { return sc.workloads[i].Uid < sc.workloads[j].Uid })
	}
	byHost := make(map[string]string, len(svcs))
	for k, s := range svcs {
		byHost[s.GetHostname()] = k
	}
	return &baseScopes{scopes: out, svcs: svcs, backing: backing, byHost: byHost, ix: ix}
}

// baseScopes is what every waypoint serves before routes attach: it
// depends on the model, Services and Gateways only, so a change of
// routes, grants or policies reuses it.
type baseScopes struct {
	scopes  map[Ref]*scope
	svcs    map[string]*workload.Service
	backing map[string][]*workload.Workload
	// byHost: resource name of each service by hostname.
	byHost map[string]string
	ix     *waypointIndex
	// istioStatus is the last attach's status of VirtualServices and
	// DestinationRules.
	istioStatus []ObjectStatus
}

// attach attaches the routes of in to the base scopes (replacing what an
// earlier attach did) and returns the scopes and the routes' statuses.
func (bs *baseScopes) attach(in *Input, cfg ambient.Config) (map[Ref]*scope, []RouteStatus) {
	svcExists := func(ns, name string) bool {
		_, ok := bs.svcs[ambient.ServiceName(ns, name+"."+ns+".svc."+cfg.DomainSuffix)]
		return ok
	}
	att, statuses := attachRoutes(in, svcExists)
	traffic, istioStatus := newIstioTraffic(in, cfg.DomainSuffix, cfg.RootNamespace, func(h string) bool {
		_, ok := bs.byHost[h]
		return ok
	})
	bs.istioStatus = istioStatus
	for _, sc := range bs.scopes {
		sc.backends = nil
		sc.traffic = traffic
		for _, sv := range sc.services {
			sv.rules = nil
		}
		sc.attachRules(att, func(ns, name string) (string, *workload.Service) {
			k := ambient.ServiceName(ns, name+"."+ns+".svc."+cfg.DomainSuffix)
			return k, bs.svcs[k]
		}, in, bs.backing)
		sc.attachTraffic(bs, in)
	}
	return bs.scopes, statuses
}

// attachTraffic adds the services the VirtualServices of served services
// route to that the waypoint does not serve, and gives every service its
// DestinationRule.
func (sc *scope) attachTraffic(bs *baseScopes, in *Input) {
	have := map[string]*served{}
	for _, sv := range sc.services {
		have[sv.hostname] = sv
	}
	for _, sv := range sc.backends {
		have[sv.hostname] = sv
	}
	need := func(host string, port uint32) {
		k, ok := bs.byHost[host]
		if !ok {
			return
		}
		sv := have[host]
		if sv == nil {
			sv = newServed(in, k, bs.svcs[k], bs.backing[k])
			sv.backendOnly = true
			sv.ports = nil
			have[host] = sv
			sc.backends = append(sc.backends, sv)
		}
		if !sv.backendOnly {
			return
		}
		for _, p := range sv.ports {
			if p.port == port {
				return
			}
		}
		pr := protoHTTP
		if in.Service != nil && portProtocol(in.Service(sv.namespace, sv.name), port) == protoHTTP2 {
			pr = protoHTTP2
		}
		sv.ports = append(sv.ports, servedPort{port: port, proto: pr})
	}
	for _, sv := range sc.services {
		for _, vs := range sc.traffic.virtualServicesFor(sc.ref.Namespace, sv) {
			for _, p := range sv.ports {
				if p.proto == protoTCP {
					continue
				}
				for _, h := range vs.Spec.GetHttp() {
					dests := make([]*netapi.Destination, 0, len(h.GetRoute())+1)
					for _, d := range h.GetRoute() {
						dests = append(dests, d.GetDestination())
					}
					if h.GetMirror() != nil {
						dests = append(dests, h.GetMirror())
					}
					for _, d := range dests {
						// Istio's port: the destination's, else the
						// Service's only one, else the request's.
						host := resolveHost(d.GetHost(), vs.Namespace, sc.traffic.domain)
						port := d.GetPort().GetNumber()
						if k, ok := bs.byHost[host]; ok && port == 0 && len(bs.svcs[k].GetPorts()) == 1 {
							port = bs.svcs[k].GetPorts()[0].GetServicePort()
						}
						if port == 0 {
							port = p.port
						}
						need(host, port)
					}
				}
			}
		}
	}
	for _, sv := range sc.backends {
		sort.Slice(sv.ports, func(i, j int) bool { return sv.ports[i].port < sv.ports[j].port })
	}
	sort.Slice(sc.backends, func(i, j int) bool { return sc.backends[i].hostname < sc.backends[j].hostname })
	for _, sv := range append(append([]*served(nil), sc.services...), sc.backends...) {
		sv.dr = sc.traffic.destinationRuleFor(sc.ref.Namespace, sv)
	}
}

// attachRules gives each served service port its route rules, and adds
// the rules' backends the waypoint does not serve.
func (sc *scope) attachRules(att map[string]map[uint32]*attachment, lookup func(ns, name string) (string, *workload.Service),
	in *Input, backing map[string][]*workload.Workload) {
	// have: HTTP clusters the served services provide, "host|port".
	have := map[string]bool{}
	for _, sv := range sc.services {
		for _, p := range sv.ports {
			if p.proto == protoTCP {
				continue
			}
			have[sv.hostname+"|"+strconv.FormatUint(uint64(p.port), 10)] = true
			if rules := rulesFor(att, sv.namespace, sv.name, p.port); len(rules) > 0 {
				if sv.rules == nil {
					sv.rules = map[uint32][]routeRule{}
				}
				sv.rules[p.port] = rules
			}
		}
	}
	extra := map[string]*served{}
	need := func(kind, routeNS string, ref gatewayv1.BackendObjectReference) {
		ns := string(ptrOr(ref.Namespace, gatewayv1.Namespace(routeNS)))
		if !in.granted(kind, routeNS, ns, string(ref.Name)) {
			return
		}
		port := uint32(ptrOr(ref.Port, 0))
		k, s := lookup(ns, string(ref.Name))
		if s == nil || port == 0 || have[s.GetHostname()+"|"+strconv.FormatUint(uint64(port), 10)] {
			return
		}
		have[s.GetHostname()+"|"+strconv.FormatUint(uint64(port), 10)] = true
		sv := extra[k]
		if sv == nil {
			sv = newServed(in, k, s, backing[k])
			sv.backendOnly = true
			sv.ports = nil
			extra[k] = sv
		}
		// The upstream speaks HTTP/2 when its port says so, or for gRPC.
		pr := protoHTTP
		if in.Service != nil && portProtocol(in.Service(ns, string(ref.Name)), port) == protoHTTP2 || kind == KindGRPCRoute {
			pr = protoHTTP2
		}
		sv.ports = append(sv.ports, servedPort{port: port, proto: pr})
	}
	for _, sv := range sc.services {
		for _, rules := range sv.rules {
			for _, rr := range rules {
				for _, be := range rr.rule.BackendRefs {
					need(rr.kind, rr.route.Namespace, be.BackendObjectReference)
				}
				for _, f := range rr.rule.Filters {
					if f.RequestMirror != nil {
						need(rr.kind, rr.route.Namespace, f.RequestMirror.BackendRef)
					}
				}
			}
		}
	}
	for _, sv := range extra {
		sort.Slice(sv.ports, func(i, j int) bool { return sv.ports[i].port < sv.ports[j].port })
		sc.backends = append(sc.backends, sv)
	}
	sort.Slice(sc.backends, func(i, j int) bool { return sc.backends[i].hostname < sc.backends[j].hostname })
}

func newServed(in *Input, key string, s *workload.Service, eps []*workload.Workload) *served {
	sv := &served{namespace: s.GetNamespace(), name: s.GetName(), hostname: s.GetHostname()}
	for _, na := range s.GetAddresses() {
		if ip, ok := netip.AddrFromSlice(na.GetAddress()); ok {
			sv.vips = append(sv.vips, ip.Unmap())
		}
	}
	var k8s *corev1.Service
	if in.Service != nil {
		k8s = in.Service(s.GetNamespace(), s.GetName())
	}
	for _, p := range s.GetPorts() {
		sv.ports = append(sv.ports, servedPort{port: p.GetServicePort(), proto: portProtocol(k8s, p.GetServicePort())})
		sv.svcPorts = append(sv.svcPorts, p.GetServicePort())
	}
	sort.Slice(sv.ports, func(i, j int) bool { return sv.ports[i].port < sv.ports[j].port })
	slices.Sort(sv.svcPorts)
	for _, w := range eps {
		b := backend{w: w, targets: map[uint32]uint32{}}
		if in.WorkloadLabels != nil {
			b.labels = in.WorkloadLabels(w.GetUid())
		}
		for _, p := range w.GetServices()[key].GetPorts() {
			b.targets[p.GetServicePort()] = p.GetTargetPort()
		}
		sv.endpoints = append(sv.endpoints, b)
	}
	sort.Slice(sv.endpoints, func(i, j int) bool { return sv.endpoints[i].w.Uid < sv.endpoints[j].w.Uid })
	return sv
}

// fingerprint is everything of a scope the resources are built from:
// equal fingerprints, equal resources. Built with appends, not fmt: it
// is computed for every waypoint on every flush.
func (sc *scope) fingerprint() string {
	b := make([]byte, 0, 1024)
	u := func(v uint64) { b = strconv.AppendUint(b, v, 10); b = append(b, ',') }
	str := func(s string) { b = append(b, s...); b = append(b, '|') }
	for _, sv := range append(append([]*served(nil), sc.services...), sc.backends...) {
		b = append(b, 'S')
		str(sv.namespace)
		str(sv.name)
		str(sv.hostname)
		for _, ip := range sv.vips {
			b = ip.AppendTo(b)
			b = append(b, ',')
		}
		for _, p := range sv.ports {
			u(uint64(p.port))
			u(uint64(p.proto))
		}
		if sv.backendOnly {
			b = append(b, 'B')
		}
		b = append(b, '\n')
		for _, p := range sortedRulePorts(sv.rules) {
			for _, rr := range sv.rules[p] {
				b = append(b, 'R')
				u(uint64(p))
				str(rr.kind)
				str(rr.route.Namespace)
				str(rr.route.Name)
				str(rr.route.ResourceVersion)
				u(uint64(rr.index))
				str(rr.consumer)
			}
		}
		for _, be := range sv.endpoints {
			b = append(b, 'E')
			str(be.w.Uid)
			if ip, ok := workloadIP(be.w); ok {
				b = ip.AppendTo(b)
			}
			l := be.w.GetLocality()
			str(l.GetRegion())
			str(l.GetZone())
			str(l.GetSubzone())
			for _, p := range sortedPorts(be.targets) {
				u(uint64(p))
				u(uint64(be.targets[p]))
			}
			for _, k := range sortedKeys(be.labels) {
				str(k)
				str(be.labels[k])
			}
			b = append(b, '\n')
		}
	}
	for _, w := range sc.workloads {
		b = append(b, 'W')
		str(w.Uid)
		for _, a := range w.GetAddresses() {
			b = append(b, a...)
		}
		b = append(b, '\n')
	}
	return string(b)
}

func sortedRulePorts(m map[uint32][]routeRule) []uint32 {
	out := make([]uint32, 0, len(m))
	for p := range m {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

func sortedPorts(m map[uint32]uint32) []uint32 {
	out := make([]uint32, 0, len(m))
	for p := range m {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// portProtocol is a service port's protocol as Istio reads it: the
// port's appProtocol, else its name ("http", "http-web", "grpc", ...),
// else unknown (sniffed).
func portProtocol(svc *corev1.Service, port uint32) protocol {
	if svc == nil {
		return protoUnknown
	}
	for _, p := range svc.Spec.Ports {
		if uint32(p.Port) != port {
			continue
		}
		if p.AppProtocol != nil {
			if pr, ok := protocolName(*p.AppProtocol); ok {
				return pr
			}
		}
		name := p.Name
		if i := strings.IndexByte(name, '-'); i >= 0 {
			name = name[:i]
		}
		if pr, ok := protocolName(name); ok {
			return pr
		}
		return protoUnknown
	}
	return protoUnknown
}

func protocolName(s string) (protocol, bool) {
	switch strings.ToLower(s) {
	case "http", "http1", "http/1.1":
		return protoHTTP, true
	case "http2", "grpc", "grpc-web", "h2c", "kubernetes.io/h2c":
		return protoHTTP2, true
	case "tcp", "tls", "https", "mongo", "mysql", "redis", "kubernetes.io/ws", "kubernetes.io/wss":
		return protoTCP, true
	}
	return protoUnknown, false
}

// clusterName is Istio's inbound-vip cluster (and chain) name.
func clusterName(kind string, port uint32, host string) string {
	return "inbound-vip|" + strconv.FormatUint(uint64(port), 10) + "|" + kind + "|" + host
}

func hostPort(ip netip.Addr, port uint32) string {
	return netip.AddrPortFrom(ip, uint16(port)).String()
}

func workloadIP(w *workload.Workload) (netip.Addr, bool) {
	for _, b := range w.GetAddresses() {
		if ip, ok := netip.AddrFromSlice(b); ok {
			return ip.Unmap(), true
		}
	}
	return netip.Addr{}, false
}

// ErrInvalid marks a resource that failed validation.
var ErrInvalid = errors.New("invalid resource")

// serviceWaypoint says which waypoint serves Service ns/name ("" when
// none); ok false when there is no such Service.
func (bs *baseScopes) serviceWaypoint(cfg ambient.Config, ns, name string) (string, bool) {
	s, ok := bs.svcs[ambient.ServiceName(ns, name+"."+ns+".svc."+cfg.DomainSuffix)]
	if !ok {
		return "", false
	}
	g := s.GetWaypoint()
	if g == nil {
		return "", true
	}
	if r, ok := bs.ix.resolve(g); ok {
		return r.String(), true
	}
	if h := g.GetHostname(); h != nil {
		return h.GetNamespace() + "/" + h.GetHostname(), true
	}
	if ip, ok := netip.AddrFromSlice(g.GetAddress().GetAddress()); ok {
		return ip.Unmap().String(), true
	}
	return "a waypoint", true
}
