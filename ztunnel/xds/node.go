package xds

import (
	"net/netip"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambitmesh/ambit/api"
	"github.com/ambitmesh/ambit/internal/mesh"
)

// Node describes this ztunnel to istiod. The fields come from the
// DaemonSet's downward-API environment, as Istio's ztunnel reads them:
// NODE_NAME, POD_NAME, POD_NAMESPACE, INSTANCE_IP, CLUSTER_ID.
type Node struct {
	// NodeName is the Kubernetes node this ztunnel serves.
	NodeName string
	// PodName and PodNamespace are the ztunnel pod's own.
	PodName, PodNamespace string
	// IPs are the pod's addresses; the first goes into the node id.
	IPs []netip.Addr
	// ClusterID names the cluster for multi-cluster istiod
	// (api.DefaultClusterID when empty).
	ClusterID string
	// Domain is the cluster's DNS domain ("cluster.local" when empty).
	Domain string
	// Metadata is added to the node metadata as string values (Istio's
	// ISTIO_META_* variables); the fields above take precedence.
	Metadata map[string]string
}

// Node metadata keys, as Istio's ztunnel sends them.
const (
	metaName        = "NAME"
	metaNamespace   = "NAMESPACE"
	metaInstanceIPs = "INSTANCE_IPS"
	metaNodeName    = "NODE_NAME"
	metaClusterID   = "CLUSTER_ID"
	metaVersion     = "ISTIO_VERSION"
)

// cluster is ClusterID, or Istio's default.
func (n Node) cluster() string {
	if n.ClusterID == "" {
		return api.DefaultClusterID
	}
	return n.ClusterID
}

// proto is the node sent with the first request of each type.
//
// The id follows the "type~ip~pod.namespace~namespace.svc.domain" shape
// that istiod parses for every proxy (sidecars send "sidecar~..."); Istio's
// ztunnel sends "ztunnel~<INSTANCE_IP>~<POD_NAME>.<POD_NAMESPACE>~
// <POD_NAMESPACE>.svc.cluster.local" and istiod refuses ids whose ip part
// is not an address, so without a known IP we send 0.0.0.0 (Istio's
// ztunnel sends the placeholder 1.1.1.1; an unspecified address says
// "unknown" without naming someone else's host). The domain is the
// configured one where Istio's ztunnel hard-codes cluster.local.
//
// The metadata carries what Istio's ztunnel sends (NAME, NAMESPACE,
// INSTANCE_IPS, NODE_NAME, ISTIO_VERSION) plus CLUSTER_ID, which upstream
// istiod reads from the metadata to pick the cluster a proxy belongs to
// (Istio's ztunnel gets it there through ISTIO_META_CLUSTER_ID).
// ISTIO_VERSION is api.IstioVersion, the Istio release whose wire format
// Ambit matches, where Istio's ztunnel sends its own version; without it
// istiod warns at every connection and takes the proxy for the newest
// version.
func (n Node) proto() *core.Node {
	ip := "0.0.0.0"
	if len(n.IPs) > 0 && n.IPs[0].IsValid() {
		ip = n.IPs[0].String()
	}
	domain := n.Domain
	if domain == "" {
		domain = mesh.DefaultDomainSuffix
	}
	ips := make([]string, 0, len(n.IPs))
	for _, a := range n.IPs {
		if a.IsValid() {
			ips = append(ips, a.String())
		}
	}
	fields := map[string]*structpb.Value{}
	for k, v := range n.Metadata {
		fields[k] = structpb.NewStringValue(v)
	}
	for k, v := range map[string]string{
		metaName:        n.PodName,
		metaNamespace:   n.PodNamespace,
		metaInstanceIPs: strings.Join(ips, ","),
		metaNodeName:    n.NodeName,
		metaClusterID:   n.cluster(),
		metaVersion:     api.IstioVersion,
	} {
		fields[k] = structpb.NewStringValue(v)
	}
	return &core.Node{
		Id:       "ztunnel~" + ip + "~" + n.PodName + "." + n.PodNamespace + "~" + n.PodNamespace + ".svc." + domain,
		Metadata: &structpb.Struct{Fields: fields},
	}
}
