package api

// IstioVersion is the Istio release whose wire format Ambit matches: the
// CA API and the CRDs come from istio.io/api at this version (go.mod), and
// the workload and authorization protos here have every field of Istio's
// of that release (ztunnel/interop checks them against the istio.io/istio
// it requires). ztunnel sends it to istiod as ISTIO_VERSION in its node
// metadata, where Istio's ztunnel sends its own version.
const IstioVersion = "1.31.4"

// DefaultClusterID is Istio's cluster id when none is configured: the
// cluster of a single-cluster mesh. ztunnel sends it to istiod (CLUSTER_ID
// node metadata, the clusterid header of xDS and CA calls), and istiod
// names its own cluster with it.
const DefaultClusterID = "Kubernetes"

// ClusterIDMetadata is the gRPC metadata key (a header) with which a
// caller of istiod, ztunnel's xDS and CA calls, names its cluster, so that
// a multi-cluster istiod reviews its token with that cluster's apiserver
// (and, for a node agent, that cluster's pods). Istio's ztunnel sends it
// on every call.
const ClusterIDMetadata = "clusterid"
