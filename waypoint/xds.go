package waypoint

import (
	"fmt"
	"strings"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambitmesh/ambit/internal/mesh"
	"github.com/ambitmesh/ambit/internal/xdsclient"
	"github.com/ambitmesh/ambit/waypoint/config"
)

// Envoy's type URLs, subscribed in the order Envoy asks for them
// (clusters before their endpoints, listeners last).
const (
	TypeCluster  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	TypeEndpoint = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	TypeListener = "type.googleapis.com/envoy.config.listener.v3.Listener"
)

// Types are the types a waypoint subscribes to.
var Types = []string{TypeCluster, TypeEndpoint, TypeListener}

// IstioVersion is the version the waypoint reports to istiod: new enough
// (1.29.2 and later) that istiod sends the current filter variants.
const IstioVersion = "1.30.0"

// Node describes the waypoint to istiod as Istio's waypoint proxies do:
// id "waypoint~<ip>~<pod>.<ns>~<ns>.svc.<domain>", metadata with the
// pod's name, namespace, IPs, service account, cluster and Istio version.
type Node struct {
	PodName, PodNamespace, IP, ServiceAccount, ClusterID, Domain string
}

// Proto is the node sent to istiod.
func (n Node) Proto() *core.Node {
	domain := n.Domain
	if domain == "" {
		domain = mesh.DefaultDomainSuffix
	}
	ip := n.IP
	if ip == "" {
		ip = "0.0.0.0"
	}
	cluster := n.ClusterID
	if cluster == "" {
		cluster = "Kubernetes"
	}
	fields := map[string]*structpb.Value{}
	for k, v := range map[string]string{
		"NAME": n.PodName, "NAMESPACE": n.PodNamespace, "INSTANCE_IPS": n.IP, "SERVICE_ACCOUNT": n.ServiceAccount,
		"CLUSTER_ID": cluster, "ISTIO_VERSION": IstioVersion, "WORKLOAD_NAME": strings.TrimSuffix(n.PodName, "-"),
	} {
		fields[k] = structpb.NewStringValue(v)
	}
	return &core.Node{
		Id:       "waypoint~" + ip + "~" + n.PodName + "." + n.PodNamespace + "~" + n.PodNamespace + ".svc." + domain,
		Cluster:  n.PodName + "." + n.PodNamespace,
		Metadata: &structpb.Struct{Fields: fields},
	}
}

// Handler applies delta xDS responses to a proxy: each resource is
// decoded alone; the held set is built and validated whole (config.Build),
// and a set that fails is NACKed naming the resource, the last good
// snapshot staying in force.
type Handler struct {
	Proxy *Proxy
	// OnUpdate, if set, runs after a snapshot is installed.
	OnUpdate func(*config.Snapshot)
}

var _ xdsclient.Handler = (*Handler)(nil)

// Decode unmarshals one resource.
func (h *Handler) Decode(typ string, r *discovery.Resource) (any, error) {
	var err error
	switch typ {
	case TypeListener:
		var l listener.Listener
		err = r.GetResource().UnmarshalTo(&l)
		return &l, wrapDecode(typ, r, err)
	case TypeCluster:
		var c cluster.Cluster
		err = r.GetResource().UnmarshalTo(&c)
		return &c, wrapDecode(typ, r, err)
	case TypeEndpoint:
		var e endpoint.ClusterLoadAssignment
		err = r.GetResource().UnmarshalTo(&e)
		return &e, wrapDecode(typ, r, err)
	}
	return nil, fmt.Errorf("decode %s: type not subscribed", typ)
}

func wrapDecode(typ string, r *discovery.Resource, err error) error {
	if err != nil {
		return fmt.Errorf("decode %s %s: %w", typ, r.GetName(), err)
	}
	return nil
}

// Update builds the held set; with complete, it installs it.
func (h *Handler) Update(held xdsclient.Held, complete bool) error {
	var r config.Resources
	for _, v := range held.Values(TypeListener) {
		r.Listeners = append(r.Listeners, v.(*listener.Listener))
	}
	for _, v := range held.Values(TypeCluster) {
		r.Clusters = append(r.Clusters, v.(*cluster.Cluster))
	}
	for _, v := range held.Values(TypeEndpoint) {
		r.Endpoints = append(r.Endpoints, v.(*endpoint.ClusterLoadAssignment))
	}
	snap, err := r.Build()
	if err != nil {
		return err
	}
	if complete {
		h.Proxy.Update(snap)
		if h.OnUpdate != nil {
			h.OnUpdate(snap)
		}
	}
	return nil
}
