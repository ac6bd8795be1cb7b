// Package mesh is the one place for the defaults Ambit's components share
// with each other and with Istio: the trust domain, the cluster's DNS
// domain, and the well-known ports. Every other definition refers to
// these (identity.DefaultTrustDomain, hbone.Port, ztunnel's ports, the
// flags' defaults). The packet marks stay with the redirection (bpf/,
// cni/).
package mesh

// DefaultTrustDomain is the SPIFFE trust domain of mesh identities when
// none is configured, as Istio's.
const DefaultTrustDomain = "cluster.local"

// DefaultDomainSuffix is the cluster's DNS domain when none is
// configured.
const DefaultDomainSuffix = "cluster.local"

// Ports, as Istio's.
const (
	// HBONEPort is the tunnel port of every mesh workload.
	HBONEPort = 15008
	// OutboundPort is the node tunnel's capture of what pods send.
	OutboundPort = 15001
	// InboundPlaintextPort takes what sources outside the mesh send to
	// a workload.
	InboundPlaintextPort = 15006
	// AdminPort serves the config dump, pprof and logging, on loopback.
	AdminPort = 15000
	// MetricsPort serves Prometheus metrics.
	MetricsPort = 15020
	// ReadinessPort serves /healthz/ready.
	ReadinessPort = 15021
	// LivenessPort serves /healthz/live.
	LivenessPort = 15022
	// DNSPort is the node tunnel's DNS proxy.
	DNSPort = 15053
)

// Packet marks of the node's eBPF redirection (bpf/redirect; redirect.c
// keeps the same values as #defines, and a test there checks that they
// agree). ztunnel sets the socket marks; the node agent routes by them.
const (
	// CaptureMark is on packets steered to ztunnel, and on ztunnel's own
	// HBONE to its node's workloads: delivered locally, not NAT'd.
	CaptureMark = 0x400
	// PodPathMark is ztunnel's socket mark on connections it makes on a
	// pod's behalf: routed back through the pod's own veth.
	PodPathMark = 0x800
	// ReplyMark is on replies to those connections: delivered locally.
	ReplyMark = 0x200
	// ReenterMark is on a pod-path packet between the path device and
	// the pod's veth.
	ReenterMark = 0x1000
)
