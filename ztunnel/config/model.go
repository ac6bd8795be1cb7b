// Package config is the node tunnel's model of the mesh: workloads,
// services and authorization policies, shaped like Istio's
// istio.workload.Workload, istio.workload.Service and
// istio.security.Authorization so that a workload-discovery (xDS) source
// maps onto it field for field. It also holds the store that serves
// consistent snapshots of that model to the data plane, and the static
// file source used for development and tests.
package config

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/internal/telemetry"
)

// TunnelProtocol is how traffic reaches a workload (istio.workload.TunnelProtocol).
type TunnelProtocol string

// Tunnel protocols. Only NONE is plain text, and only HBONE is what a
// node tunnel originates: a workload with any other protocol expects
// mutual TLS of a kind ztunnel does not speak, and connections to it fail
// rather than leave in plain text.
const (
	TunnelNone  TunnelProtocol = "NONE"
	TunnelHBONE TunnelProtocol = "HBONE"
	// TunnelLegacyIstioMTLS: a workload with an Istio sidecar, which
	// takes Istio's mutual TLS without HBONE.
	TunnelLegacyIstioMTLS TunnelProtocol = "LEGACY_ISTIO_MTLS"
	// TunnelUnknown: a protocol this ztunnel does not know, sent by a
	// newer control plane.
	TunnelUnknown TunnelProtocol = "UNKNOWN"
)

// WorkloadStatus is a workload's health (istio.workload.WorkloadStatus).
type WorkloadStatus string

// Workload statuses.
const (
	Healthy   WorkloadStatus = "HEALTHY"
	Unhealthy WorkloadStatus = "UNHEALTHY"
)

// NetworkMode says whether a workload's address is its own
// (istio.workload.NetworkMode).
type NetworkMode string

// Network modes; empty is STANDARD.
const (
	NetworkStandard NetworkMode = "STANDARD"
	// NetworkHost: the workload shares its node's network namespace and
	// address (a Kubernetes hostNetwork pod).
	NetworkHost NetworkMode = "HOST_NETWORK"
)

// Workload is one addressable workload, usually a pod
// (istio.workload.Workload).
type Workload struct {
	UID            string         `json:"uid"`
	Name           string         `json:"name"`
	Namespace      string         `json:"namespace"`
	Addresses      []netip.Addr   `json:"addresses"`
	Network        string         `json:"network,omitempty"`
	TunnelProtocol TunnelProtocol `json:"tunnelProtocol,omitempty"`
	TrustDomain    string         `json:"trustDomain,omitempty"`
	ServiceAccount string         `json:"serviceAccount,omitempty"`
	// Node is the Kubernetes node the workload runs on.
	Node string `json:"node,omitempty"`
	// WorkloadName is the owning workload (e.g. the Deployment).
	WorkloadName      string `json:"workloadName,omitempty"`
	CanonicalName     string `json:"canonicalName,omitempty"`
	CanonicalRevision string `json:"canonicalRevision,omitempty"`
	// Services maps "<namespace>/<hostname>" of each service selecting
	// this workload to its port mapping.
	Services map[string]PortList `json:"services,omitempty"`
	// AuthorizationPolicies names ("<namespace>/<name>") the
	// WORKLOAD_SELECTOR policies that select this workload.
	AuthorizationPolicies []string       `json:"authorizationPolicies,omitempty"`
	Status                WorkloadStatus `json:"status,omitempty"`
	NetworkMode           NetworkMode    `json:"networkMode,omitempty"`
	// NativeTunnel: the workload terminates HBONE itself (a waypoint's
	// pod), so no node tunnel serves it; connections to it are HBONE to
	// its own address.
	NativeTunnel bool `json:"nativeTunnel,omitempty"`
	// Waypoint, when set, is the waypoint that traffic addressed to this
	// workload goes through: istiod sets it for a waypoint bound with
	// istio.io/waypoint-for workload or all. Connections to the
	// workload's address go to the waypoint, and the workload's tunnel
	// accepts HBONE only from the waypoint.
	Waypoint *GatewayAddress `json:"waypoint,omitempty"`
}

// Identity is the workload's SPIFFE identity.
func (w *Workload) Identity() identity.Identity {
	td := w.TrustDomain
	if td == "" {
		td = identity.DefaultTrustDomain
	}
	sa := w.ServiceAccount
	if sa == "" {
		sa = "default"
	}
	return identity.Identity{TrustDomain: td, Namespace: w.Namespace, ServiceAccount: sa}
}

// MetricName is the workload's name for telemetry: the owning workload
// (a Deployment's name) if known, else the pod's.
func (w *Workload) MetricName() string {
	if w.WorkloadName != "" {
		return w.WorkloadName
	}
	return w.Name
}

// Telemetry is what telemetry says about the workload.
func (w *Workload) Telemetry() *telemetry.Workload {
	return &telemetry.Workload{Name: w.Name, Namespace: w.Namespace, MetricName: w.MetricName(),
		CanonicalService: w.CanonicalName, CanonicalRevision: w.CanonicalRevision}
}

// Endpoint is the workload at addr, for telemetry.
func (w *Workload) Endpoint(addr netip.AddrPort) telemetry.Endpoint {
	return telemetry.Endpoint{Addr: addr, Identity: w.Identity(), Workload: w.Telemetry()}
}

// Key is "<namespace>/<name>".
func (w *Workload) Key() string { return w.Namespace + "/" + w.Name }

// HBONE reports whether the workload receives traffic over HBONE.
func (w *Workload) HBONE() bool { return w.TunnelProtocol == TunnelHBONE }

// HostNetwork reports whether the workload's address is its node's.
func (w *Workload) HostNetwork() bool { return w.NetworkMode == NetworkHost }

// ServedOn reports whether the tunnel on node carries the workload's
// traffic: it runs there, it is in the mesh (HBONE), its address is its
// own, and it does not terminate HBONE itself (a waypoint). Only for such workloads does a tunnel listen, hold a
// certificate, or let a CONNECT through. A host-network workload is
// never served, as in Istio: its address is the node's, and serving it
// would put every port of the node (the kubelet's, the tunnel's own)
// behind the tunnel. Nor is a workload that terminates HBONE itself
// (NativeTunnel: a waypoint's pod), which is not captured.
func (w *Workload) ServedOn(node string) bool {
	return w.Node == node && w.HBONE() && !w.HostNetwork() && !w.NativeTunnel
}

// Plaintext reports whether the workload receives plain traffic (tunnel
// protocol NONE), that is, is outside the mesh.
func (w *Workload) Plaintext() bool { return w.TunnelProtocol == "" || w.TunnelProtocol == TunnelNone }

// Reachable reports whether ztunnel can send to the workload the way it
// expects: over HBONE, or in plain text to a workload outside the mesh.
func (w *Workload) Reachable() bool { return w.HBONE() || w.Plaintext() }

// Healthy reports whether the workload can receive traffic.
func (w *Workload) Healthy() bool { return w.Status == "" || w.Status == Healthy }

// PortList is a service's port mapping for one workload.
type PortList struct {
	Ports []Port `json:"ports"`
}

// Port maps a service port to the workload's target port.
type Port struct {
	ServicePort uint32 `json:"servicePort"`
	TargetPort  uint32 `json:"targetPort"`
}

// NetworkAddress is an address on a network (istio.workload.NetworkAddress).
type NetworkAddress struct {
	Network string     `json:"network,omitempty"`
	Address netip.Addr `json:"address"`
	// Length, when set, makes the address a CIDR range of that prefix
	// length (a ServiceEntry's "10.1.0.0/16"); unset is one address.
	Length *uint32 `json:"length,omitempty"`
}

// IsRange reports whether the address is a CIDR range wider than one
// address.
func (a NetworkAddress) IsRange() bool {
	return a.Length != nil && int64(*a.Length) < int64(a.Address.BitLen())
}

// Visibility says which clients a service is for
// (istio.workload.Service.Visibility).
type Visibility string

// Service visibilities.
const (
	// VisibilityPublic: every client. Empty means the same.
	VisibilityPublic Visibility = "PUBLIC"
	// VisibilityNamespace: clients in the service's namespace only.
	VisibilityNamespace Visibility = "NAMESPACE"
)

// Service is a Kubernetes Service or ServiceEntry (istio.workload.Service).
type Service struct {
	Name      string           `json:"name"`
	Namespace string           `json:"namespace"`
	Hostname  string           `json:"hostname"`
	Addresses []NetworkAddress `json:"addresses"`
	Ports     []Port           `json:"ports"`
	// Visibility limits which clients reach the service through its
	// addresses; to other clients they are not the service's.
	Visibility Visibility `json:"visibility,omitempty"`
	// Waypoint, when set, is the waypoint that connections to the
	// service's addresses go through.
	Waypoint *GatewayAddress `json:"waypoint,omitempty"`
}

// DefaultWaypointPort is the waypoint's HBONE port when a GatewayAddress
// names none.
const DefaultWaypointPort = 15008

// GatewayAddress locates a waypoint (istio.workload.GatewayAddress): by
// the hostname of its Service, or by an address, which is a Service's
// virtual address or a workload's. Exactly one of Hostname and Address is
// set. The waypoint's identity is that of the workload picked to carry
// the connection.
type GatewayAddress struct {
	// Hostname and Namespace name the waypoint's Service.
	Hostname  string `json:"hostname,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	// Address is a Service's virtual address or a workload's address.
	Address *NetworkAddress `json:"address,omitempty"`
	// HBONEPort is the port the waypoint takes HBONE on; 0 means 15008.
	HBONEPort uint32 `json:"hbonePort,omitempty"`
}

// String names the waypoint for logs: "namespace/hostname" or the
// address.
func (g *GatewayAddress) String() string {
	if g.Address != nil {
		return g.Address.Address.String()
	}
	return g.Namespace + "/" + g.Hostname
}

// Port is the waypoint's HBONE port.
func (g *GatewayAddress) Port() uint16 {
	if g.HBONEPort == 0 {
		return DefaultWaypointPort
	}
	return uint16(g.HBONEPort)
}

// validate checks g, the waypoint of what name names.
func (g *GatewayAddress) validate(name string) error {
	switch {
	case (g.Hostname != "") == (g.Address != nil):
		return fmt.Errorf("%s: waypoint: want exactly one of hostname and address", name)
	case g.Hostname != "" && g.Namespace == "":
		return fmt.Errorf("%s: waypoint %s: want the namespace of its hostname", name, g.Hostname)
	case g.Address != nil && (!g.Address.Address.IsValid() || g.Address.IsRange()):
		return fmt.Errorf("%s: waypoint: address %v, want one IP address", name, g.Address.Address)
	case g.HBONEPort > 65535:
		return fmt.Errorf("%s: waypoint %s: hbonePort %d, want 1 to 65535", name, g, g.HBONEPort)
	}
	return nil
}

// Telemetry is what telemetry says about the service.
func (s *Service) Telemetry() *telemetry.Service {
	return &telemetry.Service{Hostname: s.Hostname, Name: s.Name, Namespace: s.Namespace}
}

// Key is "<namespace>/<hostname>", the key workloads use in Services.
func (s *Service) Key() string { return s.Namespace + "/" + s.Hostname }

// VisibleTo reports whether a client in namespace may reach the service.
func (s *Service) VisibleTo(namespace string) bool {
	return s.Visibility != VisibilityNamespace || namespace == s.Namespace
}

// Scope is which workloads a policy applies to (istio.security.Scope).
type Scope string

// Policy scopes.
const (
	ScopeGlobal           Scope = "GLOBAL"
	ScopeNamespace        Scope = "NAMESPACE"
	ScopeWorkloadSelector Scope = "WORKLOAD_SELECTOR"
)

// Action is what a matching policy does (istio.security.Action).
type Action string

// Policy actions.
const (
	Allow Action = "ALLOW"
	Deny  Action = "DENY"
)

// Authorization is one L4 authorization policy
// (istio.security.Authorization). A policy matches a connection when any
// of its rules matches; a rule matches when all its clauses do; a clause
// matches when any of its matches does.
//
// What a source sent that the model cannot express is never dropped
// silently: it is recorded in Unknown (here, or in a Match), and
// evaluation then fails closed: an ALLOW allows less, a DENY denies more.
type Authorization struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Scope     Scope  `json:"scope"`
	Action    Action `json:"action"`
	Rules     []Rule `json:"rules,omitempty"`
	// DryRun policies are evaluated for the log only, never enforced.
	DryRun bool `json:"dryRun,omitempty"`
	// Unknown, when set, says what of the policy as a whole could not be
	// understood (an extension, a field this model lacks). An ALLOW policy
	// with it matches nothing, a DENY policy matches every connection.
	Unknown string `json:"unknown,omitempty"`
}

// Key is "<namespace>/<name>", the name workloads use in
// AuthorizationPolicies.
func (a *Authorization) Key() string { return a.Namespace + "/" + a.Name }

// NotUnderstood lists what of the policy was not understood (its own
// Unknown and its matches'), for logs; empty when nothing was.
func (a *Authorization) NotUnderstood() []string {
	var out []string
	if a.Unknown != "" {
		out = append(out, a.Unknown)
	}
	for _, r := range a.Rules {
		for _, c := range r.Clauses {
			for _, m := range c.Matches {
				if m.Unknown != "" {
					out = append(out, m.Unknown)
				}
			}
		}
	}
	return out
}

// Rule is a conjunction of clauses.
type Rule struct {
	Clauses []Clause `json:"clauses,omitempty"`
}

// Clause is a disjunction of matches.
type Clause struct {
	Matches []Match `json:"matches,omitempty"`
}

// Match is a set of conditions that must all hold; each list holds when
// any of its entries does, each Not list when none does. Empty lists are
// no condition.
type Match struct {
	Namespaces    []StringMatch `json:"namespaces,omitempty"`
	NotNamespaces []StringMatch `json:"notNamespaces,omitempty"`
	// ServiceAccounts match the namespace and service account of the
	// peer's identity, in any trust domain.
	ServiceAccounts     []ServiceAccountMatch `json:"serviceAccounts,omitempty"`
	NotServiceAccounts  []ServiceAccountMatch `json:"notServiceAccounts,omitempty"`
	Principals          []StringMatch         `json:"principals,omitempty"`
	NotPrincipals       []StringMatch         `json:"notPrincipals,omitempty"`
	SourceIPs           []netip.Prefix        `json:"sourceIps,omitempty"`
	NotSourceIPs        []netip.Prefix        `json:"notSourceIps,omitempty"`
	DestinationIPs      []netip.Prefix        `json:"destinationIps,omitempty"`
	NotDestinationIPs   []netip.Prefix        `json:"notDestinationIps,omitempty"`
	DestinationPorts    []uint32              `json:"destinationPorts,omitempty"`
	NotDestinationPorts []uint32              `json:"notDestinationPorts,omitempty"`
	// Unknown, when set, says which condition of this match could not be
	// understood. In an ALLOW policy the match then holds for nothing; in
	// a DENY policy the condition is taken to hold, so that the match
	// covers at least what was meant.
	Unknown string `json:"unknown,omitempty"`
}

// ServiceAccountMatch is one Kubernetes service account.
type ServiceAccountMatch struct {
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"serviceAccount"`
}

// Matches reports whether id is this service account's identity.
func (m ServiceAccountMatch) Matches(id identity.Identity) bool {
	return id.Namespace == m.Namespace && id.ServiceAccount == m.ServiceAccount
}

// StringMatch matches a string exactly, by prefix, by suffix, or by its
// presence (any non-empty value). Exactly one field is set.
type StringMatch struct {
	Exact    string `json:"exact,omitempty"`
	Prefix   string `json:"prefix,omitempty"`
	Suffix   string `json:"suffix,omitempty"`
	Presence bool   `json:"presence,omitempty"`
}

// Matches reports whether s matches.
func (m StringMatch) Matches(s string) bool {
	switch {
	case m.Presence:
		return s != ""
	case m.Exact != "":
		return s == m.Exact
	case m.Prefix != "":
		return strings.HasPrefix(s, m.Prefix)
	case m.Suffix != "":
		return strings.HasSuffix(s, m.Suffix)
	}
	return false
}

// StrictPolicyName is the name Istio gives the policy a STRICT
// PeerAuthentication becomes.
const StrictPolicyName = "istio_converted_static_strict"

// StrictPolicy is what istiod sends for a STRICT PeerAuthentication: a
// DENY policy matching every connection without a peer identity (plain
// text). scope and namespace say where the PeerAuthentication applies.
func StrictPolicy(namespace string, scope Scope) *Authorization {
	return &Authorization{
		Name:      StrictPolicyName,
		Namespace: namespace,
		Scope:     scope,
		Action:    Deny,
		Rules: []Rule{{Clauses: []Clause{{Matches: []Match{{
			NotPrincipals: []StringMatch{{Presence: true}},
		}}}}}},
	}
}
