package waypoint

import (
	"cmp"
	"encoding/json"
	"fmt"
	"strconv"
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

// Types are the types a waypoint subscribes to: Envoy's, and Istio's
// workload API for peer metadata (TypeAddress, Optional: the Envoy
// config applies without it, as in Istio's Envoy waypoint).
var Types = []string{TypeCluster, TypeEndpoint, TypeListener, TypeAddress}

// Optional are the types whose first response the config does not wait
// for (xdsclient.Config.Optional).
var Optional = []string{TypeAddress}

// Named are the types subscribed to by name (xdsclient.Config.Named):
// endpoints, by the EDS names of the clusters held, as Envoy subscribes
// to EDS. Istio's istiod sends clusters and listeners to a wildcard but
// endpoints only for the names asked for. Routes are not among them:
// Istio's waypoint routes are inline, and the waypoint refuses RDS.
var Named = map[string]xdsclient.NamesFunc{TypeEndpoint: EndpointNames}

// EndpointNames are the ClusterLoadAssignment names the clusters held
// need: each EDS cluster's eds_cluster_config.service_name, or its name
// when that is empty, as Envoy asks for them.
func EndpointNames(held xdsclient.Held) []string {
	var out []string
	for _, v := range held.Values(TypeCluster) {
		c := v.(*cluster.Cluster)
		if c.GetType() != cluster.Cluster_EDS {
			continue
		}
		out = append(out, cmp.Or(c.GetEdsClusterConfig().GetServiceName(), c.GetName()))
	}
	return out
}

// IstioVersion is the version the waypoint reports to istiod: new enough
// (1.29.2 and later) that istiod sends the current filter variants.
const IstioVersion = "1.30.0"

// Node describes the waypoint to istiod as Istio's waypoint proxies do:
// id "waypoint~<ip>~<pod>.<ns>~<ns>.svc.<domain>", metadata with the
// pod's name, namespace, IPs, service account, cluster, labels (istiod
// finds the waypoint's Gateway by its gateway.networking.k8s.io/gateway-name
// label), owner and Istio version.
type Node struct {
	PodName, PodNamespace, IP, ServiceAccount, ClusterID, Domain string
	// NodeName is the Kubernetes node the pod runs on; TrustDomain the
	// mesh's (sent as MESH_ID, as Istio's waypoint template does).
	NodeName, TrustDomain string
	// Labels are the pod's labels.
	Labels map[string]string
}

// ParseLabels reads pod labels as the downward API writes them to a file
// (Istio's /etc/istio/pod/labels: one key="value" a line, the value
// quoted as Go quotes it) or as JSON (Istio's ISTIO_METAJSON_LABELS).
func ParseLabels(b []byte) (map[string]string, error) {
	out := map[string]string{}
	text := strings.TrimSpace(string(b))
	if strings.HasPrefix(text, "{") {
		if err := json.Unmarshal([]byte(text), &out); err != nil {
			return nil, fmt.Errorf("parse labels json: %w", err)
		}
		return out, nil
	}
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("parse labels line %d %q: want key=\"value\"", i+1, line)
		}
		uv, err := strconv.Unquote(v)
		if err != nil {
			return nil, fmt.Errorf("parse labels line %d %q: %w", i+1, line, err)
		}
		out[k] = uv
	}
	return out, nil
}

// LabelGatewayName is the label naming a waypoint pod's Gateway.
const LabelGatewayName = "gateway.networking.k8s.io/gateway-name"

// WorkloadName is the waypoint's Deployment: its Gateway's name (Istio's
// waypoint Deployment is named after it), else the pod name without its
// ReplicaSet and pod suffixes.
func (n Node) WorkloadName() string {
	if g := n.Labels[LabelGatewayName]; g != "" {
		return g
	}
	parts := strings.Split(n.PodName, "-")
	if len(parts) >= 3 {
		return strings.Join(parts[:len(parts)-2], "-")
	}
	return n.PodName
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
		"CLUSTER_ID": cluster, "ISTIO_VERSION": IstioVersion, "WORKLOAD_NAME": n.WorkloadName(),
		"OWNER":             "kubernetes://apis/apps/v1/namespaces/" + n.PodNamespace + "/deployments/" + n.WorkloadName(),
		"INTERCEPTION_MODE": "REDIRECT", "ENABLE_HBONE": "true", "METADATA_DISCOVERY": "true",
		"NODE_NAME": n.NodeName, "MESH_ID": n.TrustDomain,
	} {
		if v != "" {
			fields[k] = structpb.NewStringValue(v)
		}
	}
	if len(n.Labels) > 0 {
		labels := &structpb.Struct{Fields: map[string]*structpb.Value{}}
		for k, v := range n.Labels {
			labels.Fields[k] = structpb.NewStringValue(v)
		}
		fields["LABELS"] = structpb.NewStructValue(labels)
	}
	return &core.Node{
		Id:       "waypoint~" + ip + "~" + n.PodName + "." + n.PodNamespace + "~" + n.PodNamespace + ".svc." + domain,
		Cluster:  n.ServiceCluster(),
		Metadata: &structpb.Struct{Fields: fields},
	}
}

// ServiceCluster is the node's cluster as Istio's agent names it (its
// default tracing service name, APP_LABEL_AND_NAMESPACE): the app label
// and the namespace, else the workload's name and the namespace. istiod
// sends it back as an OpenTelemetry tracer's service name; spans carry
// it as their local service.
func (n Node) ServiceCluster() string {
	if app := n.Labels["app"]; app != "" {
		return app + "." + n.PodNamespace
	}
	if w := n.WorkloadName(); w != "" {
		return w + "." + n.PodNamespace
	}
	return "istio-proxy." + n.PodNamespace
}

// Handler applies delta xDS responses to a proxy: each resource is
// decoded alone; the held set is built and validated whole (config.Build),
// and a set that fails is NACKed naming the resource, the last good
// snapshot staying in force.
type Handler struct {
	Proxy *Proxy
	// OnUpdate, if set, runs after a snapshot is installed.
	OnUpdate func(*config.Snapshot)

	// last are the Envoy resources the last snapshot was built from, so
	// that a response of workload addresses alone does not rebuild it.
	last struct {
		listeners, clusters, endpoints []any
		snap                           *config.Snapshot
	}
	// lastAddrs are the addresses the installed index was built from.
	lastAddrs []any
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
	case TypeAddress:
		return decodeAddress(r)
	}
	return nil, fmt.Errorf("decode %s: type not subscribed", typ)
}

func wrapDecode(typ string, r *discovery.Resource, err error) error {
	if err != nil {
		return fmt.Errorf("decode %s %s: %w", typ, r.GetName(), err)
	}
	return nil
}

// Update builds the held set; with complete, it installs it. The Envoy
// snapshot is rebuilt only when an Envoy resource changed, the workload
// index only when an address did.
func (h *Handler) Update(held xdsclient.Held, complete bool) error {
	ls, cs, es := held.Values(TypeListener), held.Values(TypeCluster), held.Values(TypeEndpoint)
	snap := h.last.snap
	if snap == nil || !sameValues(ls, h.last.listeners) || !sameValues(cs, h.last.clusters) || !sameValues(es, h.last.endpoints) {
		var r config.Resources
		for _, v := range ls {
			r.Listeners = append(r.Listeners, v.(*listener.Listener))
		}
		for _, v := range cs {
			r.Clusters = append(r.Clusters, v.(*cluster.Cluster))
		}
		for _, v := range es {
			r.Endpoints = append(r.Endpoints, v.(*endpoint.ClusterLoadAssignment))
		}
		var err error
		if snap, err = r.Build(); err != nil {
			return err
		}
	}
	if !complete {
		return nil
	}
	addrs := held.Values(TypeAddress)
	if h.lastAddrs == nil || !sameValues(addrs, h.lastAddrs) {
		h.Proxy.stats.SetWorkloads(NewWorkloads(heldAddresses(addrs)))
		h.lastAddrs = addrs
	}
	if snap != h.last.snap {
		h.last.listeners, h.last.clusters, h.last.endpoints, h.last.snap = ls, cs, es, snap
		h.Proxy.Update(snap)
		if h.OnUpdate != nil {
			h.OnUpdate(snap)
		}
	}
	return nil
}

// sameValues: the same decoded resources (a response replaces the
// values of what it changes, so identity is change).
func sameValues(a, b []any) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
