package waypoint

import (
	"sort"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tls "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	netapi "istio.io/api/networking/v1alpha3"

	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/internal/mesh"
)

func (b *builder) clusters() []*cluster.Cluster {
	out := []*cluster.Cluster{
		internalCluster(MainInternal, MainInternal),
		internalCluster(Encap, ConnectOriginate),
		b.connectOriginateCluster(),
	}
	for _, sv := range append(append([]*served(nil), b.sc.services...), b.sc.backends...) {
		for _, p := range sv.ports {
			for _, k := range clusterKinds(p) {
				c := vipCluster(clusterName(k, p.port, sv.hostname), sv, p)
				if sv.dr != nil {
					applyTrafficPolicy(c, sv.dr.Spec.GetTrafficPolicy())
					addClusterMetadata(c, sv.dr, "")
				}
				out = append(out, c)
				if sv.dr == nil {
					continue
				}
				// Istio's subset clusters, <kind>/<subset>: the subset's
				// endpoints, its policy over the rule's.
				for _, ss := range sv.dr.Spec.GetSubsets() {
					sub := k + "/" + ss.GetName()
					c := vipCluster(clusterName(sub, p.port, sv.hostname), sv, p)
					applyTrafficPolicy(c, mergeTrafficPolicy(sv.dr.Spec.GetTrafficPolicy(), ss.GetTrafficPolicy()))
					addClusterMetadata(c, sv.dr, sub)
					out = append(out, c)
				}
			}
		}
	}
	return out
}

// clusterKinds are the chains (and clusters) of a service port: http,
// tcp, or both when the protocol is sniffed.
func clusterKinds(p servedPort) []string {
	switch p.proto {
	case protoHTTP, protoHTTP2:
		return []string{"http"}
	case protoTCP:
		return []string{"tcp"}
	}
	return []string{"http", "tcp"}
}

// setCommonHTTPOptions sets the common HTTP options of a cluster's
// upstream protocol options, keeping the protocol they choose (HTTP/1.1
// when none did).
func setCommonHTTPOptions(c *cluster.Cluster, opts *core.HttpProtocolOptions) {
	hpo := &upstreamhttp.HttpProtocolOptions{}
	if a := c.TypedExtensionProtocolOptions[httpProtocolOptionsType]; a != nil {
		if err := a.UnmarshalTo(hpo); err != nil {
			panic(err) // our own message: a program error
		}
	}
	hpo.CommonHttpProtocolOptions = opts
	if hpo.UpstreamProtocolOptions == nil {
		hpo.UpstreamProtocolOptions = &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &core.Http1ProtocolOptions{}},
		}}
	}
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptionsType: mustAny(hpo)}
}

// internalCluster is a single-endpoint cluster to an internal listener.
func internalCluster(name, to string) *cluster.Cluster {
	return &cluster.Cluster{
		Name:                          name,
		ClusterDiscoveryType:          &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		CircuitBreakers:               defaultCircuitBreakers(),
		LoadAssignment:                &endpoint.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{internalEndpoint(to, "", nil)}}}},
		TransportSocket:               internalUpstream(),
		TypedExtensionProtocolOptions: passthroughHTTP(),
	}
}

func internalEndpoint(listenerName, id string, md *core.Metadata) *endpoint.LbEndpoint {
	return &endpoint.LbEndpoint{
		HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: &core.Address{
			Address: &core.Address_EnvoyInternalAddress{EnvoyInternalAddress: &core.EnvoyInternalAddress{
				AddressNameSpecifier: &core.EnvoyInternalAddress_ServerListenerName{ServerListenerName: listenerName},
				EndpointId:           id,
			}}}}},
		Metadata: md,
	}
}

// connectOriginateCluster opens HBONE to the address the connection was
// meant for, at port 15008, checking the peer is of the trust domain.
func (b *builder) connectOriginateCluster() *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 ConnectOriginate,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST},
		LbPolicy:             cluster.Cluster_CLUSTER_PROVIDED,
		LbConfig: &cluster.Cluster_OriginalDstLbConfig_{OriginalDstLbConfig: &cluster.Cluster_OriginalDstLbConfig{
			UpstreamPortOverride: wrapperspb.UInt32(mesh.HBONEPort)}},
		ConnectTimeout:                durationpb.New(connectTimeout),
		CleanupInterval:               durationpb.New(60e9),
		CircuitBreakers:               defaultCircuitBreakers(),
		TypedExtensionProtocolOptions: explicitHTTP2(true),
		TransportSocket: &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{
			TypedConfig: mustAny(&tls.UpstreamTlsContext{CommonTlsContext: b.hboneTLS()})}},
	}
}

// vipCluster is the EDS cluster of one service port: its endpoints are
// connect_originate with the backend's address in their metadata.
func vipCluster(name string, sv *served, p servedPort) *cluster.Cluster {
	c := &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: adsConfig(), ServiceName: name},
		ConnectTimeout:       durationpb.New(connectTimeout),
		LbPolicy:             cluster.Cluster_ROUND_ROBIN,
		CircuitBreakers:      defaultCircuitBreakers(),
		TransportSocket:      internalUpstream(hostMetadata(MetadataOriginalDst), clusterMetadata("istio")),
		Metadata: &core.Metadata{FilterMetadata: map[string]*structpb.Struct{"istio": {Fields: map[string]*structpb.Value{
			"services": structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
				"host":      structpb.NewStringValue(sv.hostname),
				"name":      structpb.NewStringValue(sv.name),
				"namespace": structpb.NewStringValue(sv.namespace),
			}})}}),
		}}}},
	}
	if p.proto == protoHTTP2 {
		c.TypedExtensionProtocolOptions = explicitHTTP2(false)
	}
	return c
}

func (b *builder) endpoints() []*endpoint.ClusterLoadAssignment {
	var out []*endpoint.ClusterLoadAssignment
	for _, sv := range append(append([]*served(nil), b.sc.services...), b.sc.backends...) {
		for _, p := range sv.ports {
			for _, k := range clusterKinds(p) {
				out = append(out, loadAssignment(clusterName(k, p.port, sv.hostname), sv, p.port, nil))
				if sv.dr == nil {
					continue
				}
				for _, ss := range sv.dr.Spec.GetSubsets() {
					out = append(out, loadAssignment(clusterName(k+"/"+ss.GetName(), p.port, sv.hostname), sv, p.port, ss))
				}
			}
		}
	}
	return out
}

// loadAssignment lists a service port's backends (of a subset: those its
// labels select), grouped by locality.
func loadAssignment(name string, sv *served, port uint32, subset *netapi.Subset) *endpoint.ClusterLoadAssignment {
	type loc struct{ region, zone, subzone string }
	groups := map[loc][]*endpoint.LbEndpoint{}
	for _, be := range sv.endpoints {
		tp, ok := be.targets[port]
		if !ok {
			continue
		}
		if subset != nil && !subsetSelects(subset, be.labels) {
			continue
		}
		ip, ok := workloadIP(be.w)
		if !ok {
			continue
		}
		addr := hostPort(ip, tp)
		md := &core.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataOriginalDst: {Fields: map[string]*structpb.Value{
			"local": structpb.NewStringValue(addr)}}}}
		ep := internalEndpoint(ConnectOriginate, addr, md)
		ep.HealthStatus = core.HealthStatus_HEALTHY
		ep.LoadBalancingWeight = wrapperspb.UInt32(1)
		l := locality(be.w)
		k := loc{l.GetRegion(), l.GetZone(), l.GetSubzone()}
		groups[k] = append(groups[k], ep)
	}
	keys := make([]loc, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.region != b.region {
			return a.region < b.region
		}
		if a.zone != b.zone {
			return a.zone < b.zone
		}
		return a.subzone < b.subzone
	})
	cla := &endpoint.ClusterLoadAssignment{ClusterName: name}
	for _, k := range keys {
		eps := groups[k]
		lle := &endpoint.LocalityLbEndpoints{LbEndpoints: eps, LoadBalancingWeight: wrapperspb.UInt32(uint32(len(eps)))}
		if k != (loc{}) {
			lle.Locality = &core.Locality{Region: k.region, Zone: k.zone, SubZone: k.subzone}
		}
		cla.Endpoints = append(cla.Endpoints, lle)
	}
	return cla
}

func locality(w *workload.Workload) *workload.Locality { return w.GetLocality() }
