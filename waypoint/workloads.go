package waypoint

// Istio's workload discovery in the waypoint: the same delta ADS stream
// that brings the Envoy config also subscribes to
// type.googleapis.com/istio.workload.Address, as Istio's Envoy waypoint
// does through its workload_discovery bootstrap extension
// (istio/proxy source/extensions/common/workload_discovery). The index
// it keeps gives the peer metadata of telemetry: who the source of a
// request is (by the downstream address, checked against the peer's
// certificate, else by that SPIFFE identity) and who its destination is
// (by the endpoint's pod address).

import (
	"fmt"
	"net/netip"
	"strings"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/internal/mesh"
)

// TypeAddress is the workload discovery API's type.
const TypeAddress = "type.googleapis.com/istio.workload.Address"

// Peer is what telemetry knows of one workload: Istio's workload
// metadata object.
type Peer struct {
	// Name is the pod's; WorkloadName its owner's (a Deployment's).
	Name, Namespace, WorkloadName    string
	CanonicalName, CanonicalRevision string
	ClusterID                        string
	// Identity is the workload's SPIFFE identity.
	Identity string
	// Type is the workload's kind in lower case (deployment, cronjob,
	// pod, job), as Istio's peer metadata names it.
	Type string
}

// ServiceInfo is a service the workload API names.
type ServiceInfo struct {
	Hostname, Name, Namespace string
}

// Workloads is an immutable index of the workload API's addresses.
type Workloads struct {
	byAddr     map[netip.Addr]*Peer
	byIdentity map[string]*Peer
	services   map[string]*ServiceInfo
}

// Len is the number of workload addresses indexed.
func (w *Workloads) Len() int {
	if w == nil {
		return 0
	}
	return len(w.byAddr)
}

// ByAddr is the workload that has address a, nil if none.
func (w *Workloads) ByAddr(a netip.Addr) *Peer {
	if w == nil {
		return nil
	}
	return w.byAddr[a.Unmap()]
}

// ByIdentity is the workload with SPIFFE identity id: nil if none, and
// nil if workloads of the identity differ in what telemetry shows (two
// Deployments sharing a service account).
func (w *Workloads) ByIdentity(id string) *Peer {
	if w == nil {
		return nil
	}
	return w.byIdentity[id]
}

// Service is the service of hostname host, nil if unknown.
func (w *Workloads) Service(host string) *ServiceInfo {
	if w == nil {
		return nil
	}
	return w.services[host]
}

// source is the peer a connection comes from: the workload at its
// remote address if that workload has the identity the peer proved,
// else the workload of that identity.
func (w *Workloads) source(remote netip.Addr, principal string) *Peer {
	if p := w.ByAddr(remote); p != nil && (principal == "" || p.Identity == principal) {
		return p
	}
	if principal == "" {
		return nil
	}
	return w.ByIdentity(principal)
}

// decodeAddress decodes and checks one Address resource.
func decodeAddress(r *discovery.Resource) (*workload.Address, error) {
	var a workload.Address
	if err := r.GetResource().UnmarshalTo(&a); err != nil {
		return nil, fmt.Errorf("decode address %s: %w", r.GetName(), err)
	}
	switch {
	case a.GetWorkload() != nil:
		for _, b := range a.GetWorkload().GetAddresses() {
			if _, ok := netip.AddrFromSlice(b); !ok {
				return nil, fmt.Errorf("address %s: workload address of %d bytes, want 4 or 16", r.GetName(), len(b))
			}
		}
	case a.GetService() != nil:
		if a.GetService().GetHostname() == "" {
			return nil, fmt.Errorf("address %s: service without a hostname", r.GetName())
		}
	default:
		return nil, fmt.Errorf("address %s: neither a workload nor a service", r.GetName())
	}
	return &a, nil
}

// NewWorkloads indexes addresses (in name order, so that the same set
// always gives the same index).
func NewWorkloads(addrs []*workload.Address) *Workloads {
	w := &Workloads{byAddr: map[netip.Addr]*Peer{}, byIdentity: map[string]*Peer{}, services: map[string]*ServiceInfo{}}
	ambiguous := map[string]bool{}
	for _, a := range addrs {
		if s := a.GetService(); s != nil {
			w.services[s.GetHostname()] = &ServiceInfo{Hostname: s.GetHostname(), Name: s.GetName(), Namespace: s.GetNamespace()}
			continue
		}
		wl := a.GetWorkload()
		if wl == nil {
			continue
		}
		p := peerOf(wl)
		for _, b := range wl.GetAddresses() {
			if ip, ok := netip.AddrFromSlice(b); ok {
				w.byAddr[ip.Unmap()] = p
			}
		}
		if p.Identity == "" || ambiguous[p.Identity] {
			continue
		}
		if old, ok := w.byIdentity[p.Identity]; ok && !sameWorkload(old, p) {
			delete(w.byIdentity, p.Identity)
			ambiguous[p.Identity] = true
			continue
		}
		if _, ok := w.byIdentity[p.Identity]; !ok {
			w.byIdentity[p.Identity] = p
		}
	}
	return w
}

// sameWorkload: two pods telemetry cannot tell apart.
func sameWorkload(a, b *Peer) bool {
	return a.Namespace == b.Namespace && a.WorkloadName == b.WorkloadName && a.CanonicalName == b.CanonicalName &&
		a.CanonicalRevision == b.CanonicalRevision && a.ClusterID == b.ClusterID
}

func peerOf(wl *workload.Workload) *Peer {
	p := &Peer{
		Name: wl.GetName(), Namespace: wl.GetNamespace(), WorkloadName: wl.GetWorkloadName(),
		CanonicalName: wl.GetCanonicalName(), CanonicalRevision: wl.GetCanonicalRevision(), ClusterID: wl.GetClusterId(),
		Type: strings.ToLower(wl.GetWorkloadType().String()),
	}
	if wl.GetServiceAccount() != "" && wl.GetNamespace() != "" {
		td := wl.GetTrustDomain()
		if td == "" {
			td = mesh.DefaultTrustDomain
		}
		p.Identity = identity.Identity{TrustDomain: td, Namespace: wl.GetNamespace(), ServiceAccount: wl.GetServiceAccount()}.String()
	}
	return p
}

// heldAddresses are the held values (in name order), typed.
func heldAddresses(vs []any) []*workload.Address {
	out := make([]*workload.Address, 0, len(vs))
	for _, v := range vs {
		if a, ok := v.(*workload.Address); ok {
			out = append(out, a)
		}
	}
	return out
}
