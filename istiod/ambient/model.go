// Package ambient translates cluster state (Namespaces, Pods, Services,
// EndpointSlices, Nodes and the Istio security policies) into the ambient
// model: the istio.workload.Address and istio.security.Authorization
// resources that ztunnels consume. It watches the cluster with client-go
// shared informers, keeps the model up to date incrementally (Builder)
// and hands what changed to a consumer; it does not serve anything itself
// (see istiod/xds).
package ambient

import (
	"github.com/ambitmesh/ambit/api"
	"github.com/ambitmesh/ambit/api/security"
	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/internal/enrolment"
	"github.com/ambitmesh/ambit/internal/mesh"
)

// Labels and values of the ambient surface, the same as Istio's.
const (
	// DataplaneModeLabel enrols a namespace or a pod.
	DataplaneModeLabel = enrolment.LabelDataplaneMode
	// DataplaneModeAmbient on a namespace or a pod enrols it.
	DataplaneModeAmbient = enrolment.ModeAmbient
	// DataplaneModeNone on a pod opts it out even in an enrolled namespace.
	DataplaneModeNone = enrolment.ModeNone
)

// Config holds the mesh-wide settings the translation needs.
type Config struct {
	// ClusterID is the first part of every workload uid;
	// api.DefaultClusterID when empty, as in Istio.
	ClusterID string
	// TrustDomain of the mesh identities; "cluster.local" when empty.
	TrustDomain string
	// DomainSuffix is the cluster DNS domain; "cluster.local" when empty.
	DomainSuffix string
	// Network of every address; empty is the default network.
	Network string
	// RootNamespace holds mesh-wide policies; "istio-system" when empty.
	RootNamespace string
}

// WithDefaults fills what c leaves empty with Istio's defaults.
func (c Config) WithDefaults() Config {
	if c.ClusterID == "" {
		c.ClusterID = api.DefaultClusterID
	}
	if c.TrustDomain == "" {
		c.TrustDomain = mesh.DefaultTrustDomain
	}
	if c.DomainSuffix == "" {
		c.DomainSuffix = mesh.DefaultDomainSuffix
	}
	if c.RootNamespace == "" {
		c.RootNamespace = "istio-system"
	}
	return c
}

// Model is one complete state of the ambient resources, keyed by xDS
// resource name: a workload's uid, a service's "namespace/hostname", a
// policy's "namespace/name".
type Model struct {
	Addresses      map[string]*workload.Address
	Authorizations map[string]*security.Authorization
	// PolicyStatus says, per policy "namespace/name", why a policy was
	// rejected or changed (for example turned into a deny); absent when it
	// was translated as written.
	PolicyStatus map[string]string
	// WaypointStatus says, per object (StatusKey), whether its waypoint
	// binding took: Services, Namespaces and ServiceAccounts that carry
	// istio.io/use-waypoint, and waypoint Gateways that are invalid or
	// claim a service account another one claims.
	WaypointStatus map[string]BindingStatus
}

// ServiceName is the xDS resource name of a service.
func ServiceName(namespace, hostname string) string { return namespace + "/" + hostname }

// PodUID is the workload uid of a pod.
func PodUID(cluster, namespace, name string) string {
	return cluster + "//Pod/" + namespace + "/" + name
}
