package config

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
)

// State is the whole model as a source delivers it.
type State struct {
	Workloads []*Workload      `json:"workloads,omitempty"`
	Services  []*Service       `json:"services,omitempty"`
	Policies  []*Authorization `json:"policies,omitempty"`
}

// Validate checks the state a source delivered; the error names each bad
// entry and what was expected.
func (s *State) Validate() error {
	var errs []error
	uids := map[string]bool{}
	for i, w := range s.Workloads {
		if w == nil {
			errs = append(errs, fmt.Errorf("workload %d: empty entry", i))
			continue
		}
		name := fmt.Sprintf("workload %d (%s)", i, w.UID)
		switch {
		case w.UID == "":
			errs = append(errs, fmt.Errorf("%s: empty uid", name))
		case uids[w.UID]:
			errs = append(errs, fmt.Errorf("%s: duplicate uid", name))
		}
		uids[w.UID] = true
		if w.Namespace == "" || w.Name == "" {
			errs = append(errs, fmt.Errorf("%s: want a name and a namespace", name))
		}
		if len(w.Addresses) == 0 {
			errs = append(errs, fmt.Errorf("%s: no addresses", name))
		}
		for _, a := range w.Addresses {
			if !a.IsValid() {
				errs = append(errs, fmt.Errorf("%s: invalid address", name))
				continue
			}
		}
		switch w.TunnelProtocol {
		case "", TunnelNone, TunnelHBONE, TunnelLegacyIstioMTLS, TunnelUnknown:
		default:
			errs = append(errs, fmt.Errorf("%s: tunnelProtocol %q, want NONE, HBONE, LEGACY_ISTIO_MTLS or UNKNOWN", name, w.TunnelProtocol))
		}
		switch w.NetworkMode {
		case "", NetworkStandard, NetworkHost:
		default:
			errs = append(errs, fmt.Errorf("%s: networkMode %q, want STANDARD or HOST_NETWORK", name, w.NetworkMode))
		}
		switch w.Status {
		case "", Healthy, Unhealthy:
		default:
			errs = append(errs, fmt.Errorf("%s: status %q, want HEALTHY or UNHEALTHY", name, w.Status))
		}
		if err := w.Identity().Validate(); err != nil && w.Namespace != "" {
			errs = append(errs, fmt.Errorf("%s: identity: %w", name, err))
		}
		if w.Waypoint != nil {
			if err := w.Waypoint.validate(name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	vips := map[netip.Addr]string{}
	for i, svc := range s.Services {
		if svc == nil {
			errs = append(errs, fmt.Errorf("service %d: empty entry", i))
			continue
		}
		name := fmt.Sprintf("service %d (%s)", i, svc.Key())
		if svc.Hostname == "" || svc.Namespace == "" {
			errs = append(errs, fmt.Errorf("%s: want a hostname and a namespace", name))
		}
		switch svc.Visibility {
		case "", VisibilityPublic, VisibilityNamespace:
		default:
			errs = append(errs, fmt.Errorf("%s: visibility %q, want PUBLIC or NAMESPACE", name, svc.Visibility))
		}
		if svc.Waypoint != nil {
			if err := svc.Waypoint.validate(name); err != nil {
				errs = append(errs, err)
			}
		}
		for _, a := range svc.Addresses {
			if !a.Address.IsValid() {
				errs = append(errs, fmt.Errorf("%s: invalid address", name))
				continue
			}
			if a.Length != nil && int64(*a.Length) > int64(a.Address.BitLen()) {
				errs = append(errs, fmt.Errorf("%s: address %s: prefix length %d longer than its %d bits", name, a.Address, *a.Length, a.Address.BitLen()))
				continue
			}
			if a.IsRange() {
				// Not a virtual address (see newSnapshot); Istio sends
				// the same range for each host of a ServiceEntry.
				continue
			}
			if other, ok := vips[a.Address.Unmap()]; ok {
				errs = append(errs, fmt.Errorf("%s: address %s already used by service %s", name, a.Address, other))
			}
			vips[a.Address.Unmap()] = svc.Key()
		}
	}
	for i, p := range s.Policies {
		if p == nil {
			errs = append(errs, fmt.Errorf("policy %d: empty entry", i))
			continue
		}
		name := fmt.Sprintf("policy %d (%s)", i, p.Key())
		if p.Name == "" || p.Namespace == "" {
			errs = append(errs, fmt.Errorf("%s: want a name and a namespace", name))
		}
		switch p.Scope {
		case ScopeGlobal, ScopeNamespace, ScopeWorkloadSelector:
		default:
			errs = append(errs, fmt.Errorf("%s: scope %q, want GLOBAL, NAMESPACE or WORKLOAD_SELECTOR", name, p.Scope))
		}
		switch p.Action {
		case Allow, Deny:
		default:
			errs = append(errs, fmt.Errorf("%s: action %q, want ALLOW or DENY", name, p.Action))
		}
		for _, r := range p.Rules {
			for _, c := range r.Clauses {
				for _, m := range c.Matches {
					for _, sm := range slices.Concat(m.Namespaces, m.NotNamespaces, m.Principals, m.NotPrincipals) {
						if n := countSet(sm); n != 1 {
							errs = append(errs, fmt.Errorf("%s: string match %+v sets %d of exact, prefix, suffix, presence; want 1", name, sm, n))
						}
					}
				}
			}
		}
	}
	return errors.Join(errs...)
}

func countSet(m StringMatch) int {
	n := 0
	for _, set := range []bool{m.Exact != "", m.Prefix != "", m.Suffix != "", m.Presence} {
		if set {
			n++
		}
	}
	return n
}

// Snapshot is an immutable, indexed view of one State.
type Snapshot struct {
	State
	// Version counts the states the store has held.
	Version   uint64
	byAddr    map[netip.Addr]*Workload
	byUID     map[string]*Workload
	byVIP     map[netip.Addr]*Service
	byKey     map[string]*Service
	endpoints map[string][]*Workload // service key -> workloads
	policies  map[string]*Authorization
}

// addressOwner reports whether w rather than cur should own an address
// both have. Addresses are not unique: istiod sends a workload per
// endpoint of a selector-less Service, and two such Services may list the
// same host address (in the lab, the apiserver's and CoreDNS's on the
// control-plane node), as may a pod and a ServiceEntry. The choice is
// deterministic: a workload in the mesh (HBONE) first, then one that
// expects another mutual TLS, then a healthy one, then the smaller uid;
// a pod never loses its address to an endpoint entry that would turn its
// traffic into plain passthrough. A host-network workload comes last:
// the address is its node's, shared with every other host-network pod
// there.
func addressOwner(w, cur *Workload) bool {
	if w.HostNetwork() != cur.HostNetwork() {
		return !w.HostNetwork()
	}
	if w.HBONE() != cur.HBONE() {
		return w.HBONE()
	}
	if w.Plaintext() != cur.Plaintext() {
		return !w.Plaintext()
	}
	if w.Healthy() != cur.Healthy() {
		return w.Healthy()
	}
	return w.UID < cur.UID
}

func newSnapshot(s State, version uint64) *Snapshot {
	snap := &Snapshot{
		State:     s,
		Version:   version,
		byAddr:    map[netip.Addr]*Workload{},
		byUID:     map[string]*Workload{},
		byVIP:     map[netip.Addr]*Service{},
		byKey:     map[string]*Service{},
		endpoints: map[string][]*Workload{},
		policies:  map[string]*Authorization{},
	}
	for _, w := range s.Workloads {
		snap.byUID[w.UID] = w
		for _, a := range w.Addresses {
			if cur := snap.byAddr[a.Unmap()]; cur == nil || addressOwner(w, cur) {
				snap.byAddr[a.Unmap()] = w
			}
		}
		for key := range w.Services {
			snap.endpoints[key] = append(snap.endpoints[key], w)
		}
	}
	// A CIDR range is not indexed: neither a destination inside it nor
	// the range's first address is taken for the service, so connections
	// there go to the original destination (or to the workload with that
	// address). Istio sends ranges for ServiceEntries with resolution NONE,
	// whose traffic goes to the original destination anyway, and STATIC,
	// whose endpoints ztunnel does not pick for a range yet.
	for _, svc := range s.Services {
		snap.byKey[svc.Key()] = svc
		for _, a := range svc.Addresses {
			if !a.IsRange() {
				snap.byVIP[a.Address.Unmap()] = svc
			}
		}
	}
	for _, p := range s.Policies {
		snap.policies[p.Key()] = p
	}
	return snap
}

// WorkloadByAddr is the workload with address a, or nil.
func (s *Snapshot) WorkloadByAddr(a netip.Addr) *Workload { return s.byAddr[a.Unmap()] }

// WorkloadByUID is the workload with the uid, or nil.
func (s *Snapshot) WorkloadByUID(uid string) *Workload { return s.byUID[uid] }

// ServiceByAddr is the service with virtual address a, or nil.
func (s *Snapshot) ServiceByAddr(a netip.Addr) *Service { return s.byVIP[a.Unmap()] }

// ServiceByKey is the service "<namespace>/<hostname>", or nil.
func (s *Snapshot) ServiceByKey(key string) *Service { return s.byKey[key] }

// Errors a waypoint binding resolves to; traffic bound to such a waypoint
// is refused, never sent around it.
var (
	ErrWaypointMissing    = errors.New("waypoint not in the config")
	ErrWaypointNoEndpoint = errors.New("waypoint has no healthy endpoint")
)

// WaypointMembers are the workloads that make up waypoint g, whatever
// their health: the endpoints of the Service it names (by hostname or
// virtual address), or the workload at its address. None when g names
// nothing in the config.
func (s *Snapshot) WaypointMembers(g *GatewayAddress) []*Workload {
	var svc *Service
	switch {
	case g.Address != nil:
		svc = s.ServiceByAddr(g.Address.Address)
		if svc == nil {
			if w := s.WorkloadByAddr(g.Address.Address); w != nil {
				return []*Workload{w}
			}
			return nil
		}
	default:
		svc = s.byKey[g.Namespace+"/"+g.Hostname]
	}
	if svc == nil {
		return nil
	}
	return s.Endpoints(svc)
}

// Waypoint is the workloads that can carry a connection to waypoint g
// now: its healthy members. Their tunnel protocol does not matter: a
// waypoint takes HBONE itself, on g's port, whatever istiod says of its
// pods (which ztunnel does not capture). The error
// (ErrWaypointMissing, ErrWaypointNoEndpoint) names the waypoint.
func (s *Snapshot) Waypoint(g *GatewayAddress) ([]*Workload, error) {
	members := s.WaypointMembers(g)
	if len(members) == 0 {
		found := false
		if g.Address != nil {
			found = s.ServiceByAddr(g.Address.Address) != nil
		} else {
			found = s.byKey[g.Namespace+"/"+g.Hostname] != nil
		}
		if !found {
			return nil, fmt.Errorf("waypoint %s: %w", g, ErrWaypointMissing)
		}
	}
	var out []*Workload
	for _, w := range members {
		if w.Healthy() && len(w.Addresses) > 0 {
			out = append(out, w)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("waypoint %s: %w", g, ErrWaypointNoEndpoint)
	}
	return out, nil
}

// IsWaypointMember reports whether w is one of the workloads of
// waypoint g: its own connections are not sent back to it.
func (s *Snapshot) IsWaypointMember(g *GatewayAddress, w *Workload) bool {
	return slices.Contains(s.WaypointMembers(g), w)
}

// Endpoints are the workloads selected by svc.
func (s *Snapshot) Endpoints(svc *Service) []*Workload { return s.endpoints[svc.Key()] }

// PoliciesFor are the policies that apply to w: global ones, those of its
// namespace, and those selecting it by name.
func (s *Snapshot) PoliciesFor(w *Workload) []*Authorization {
	var out []*Authorization
	for _, p := range s.Policies {
		switch p.Scope {
		case ScopeGlobal:
			out = append(out, p)
		case ScopeNamespace:
			if p.Namespace == w.Namespace {
				out = append(out, p)
			}
		}
	}
	for _, key := range w.AuthorizationPolicies {
		if p, ok := s.policies[key]; ok && p.Scope == ScopeWorkloadSelector {
			out = append(out, p)
		}
	}
	return out
}

// LocalWorkloads are the workloads the tunnel on node serves
// (Workload.ServedOn): on node, in the mesh, not host-network.
func (s *Snapshot) LocalWorkloads(node string) []*Workload {
	var out []*Workload
	for _, w := range s.Workloads {
		if w.ServedOn(node) {
			out = append(out, w)
		}
	}
	return out
}

// Store holds the current snapshot and tells subscribers about new ones.
// A source (the static file, later xDS) replaces its state; readers take
// snapshots and never see a half-applied update.
type Store struct {
	mu      sync.Mutex
	cur     *Snapshot
	loaded  bool
	subs    map[int]func(*Snapshot)
	nextSub int
}

// NewStore returns a store holding an empty state that has not been
// loaded yet.
func NewStore() *Store {
	return &Store{cur: newSnapshot(State{}, 0), subs: map[int]func(*Snapshot){}}
}

// Snapshot is the current state.
func (s *Store) Snapshot() *Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// Loaded reports whether a source has delivered a state yet.
func (s *Store) Loaded() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loaded
}

// Replace validates st and makes it the current state; an invalid state
// is refused and the last good one kept. Subscribers run, in order, before
// Replace returns.
func (s *Store) Replace(st State) error {
	if err := st.Validate(); err != nil {
		return fmt.Errorf("apply config: %w", err)
	}
	s.mu.Lock()
	snap := newSnapshot(st, s.cur.Version+1)
	s.cur = snap
	s.loaded = true
	subs := make([]func(*Snapshot), 0, len(s.subs))
	keys := make([]int, 0, len(s.subs))
	for k := range s.subs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		subs = append(subs, s.subs[k])
	}
	s.mu.Unlock()
	for _, f := range subs {
		f(snap)
	}
	return nil
}

// Subscribe runs f with every new snapshot until the returned function is
// called.
func (s *Store) Subscribe(f func(*Snapshot)) (cancel func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := s.nextSub
	s.nextSub++
	s.subs[id] = f
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.subs, id)
	}
}
