package authz

import (
	"sort"

	"google.golang.org/protobuf/types/known/emptypb"
	secapi "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/ambitmesh/ambit/api/security"
)

// StrictPolicyName is the Authorization, in the root namespace, that
// enforces mutual TLS on workloads whose namespace or mesh default is
// STRICT and that no workload PeerAuthentication selects.
const StrictPolicyName = "istio_converted_static_strict"

// peerIndex answers which converted PeerAuthentication applies to a
// workload. The effective mode is, as in Istio, the workload's own
// PeerAuthentication (oldest wins), else its namespace's, else the mesh's
// (root namespace), else PERMISSIVE; UNSET inherits. DISABLE allows
// plaintext like PERMISSIVE: a ztunnel always accepts HBONE.
type peerIndex struct {
	rootNamespace string
	strictName    string // "" when no namespace or mesh default is STRICT
	meshStrict    bool
	nsStrict      map[string]bool // namespace -> STRICT, absent: inherit
	workload      map[string][]peerSelector
}

type peerSelector struct {
	selector labels.Selector
	name     string // Authorization name, "" when it allows plaintext everywhere
}

func (p peerIndex) forWorkload(namespace string, set labels.Set) string {
	for _, w := range p.workload[namespace] {
		if w.selector.Matches(set) {
			return w.name
		}
	}
	if p.namespaceStrict(namespace) {
		return p.strictName
	}
	return ""
}

func (p peerIndex) namespaceStrict(namespace string) bool {
	if s, ok := p.nsStrict[namespace]; ok {
		return s
	}
	return p.meshStrict
}

// modeStrict resolves a mode against its parent: nil means inherit.
func modeStrict(m *secapi.PeerAuthentication_MutualTLS) (strict, set bool) {
	switch m.GetMode() {
	case secapi.PeerAuthentication_MutualTLS_STRICT:
		return true, true
	case secapi.PeerAuthentication_MutualTLS_PERMISSIVE, secapi.PeerAuthentication_MutualTLS_DISABLE:
		return false, true
	}
	return false, false
}

func (t *Translation) translatePeerAuthentications(pas []*securityv1.PeerAuthentication, cfg Config) {
	p := peerIndex{rootNamespace: cfg.RootNamespace, nsStrict: map[string]bool{}, workload: map[string][]peerSelector{}}
	sorted := append([]*securityv1.PeerAuthentication(nil), pas...)
	sort.SliceStable(sorted, func(i, j int) bool {
		a, b := sorted[i], sorted[j]
		if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
			return a.CreationTimestamp.Before(&b.CreationTimestamp)
		}
		return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
	})
	// Mesh and namespace defaults first: workload policies resolve
	// against them.
	seenNS := map[string]bool{}
	for _, pa := range sorted {
		if len(pa.Spec.GetSelector().GetMatchLabels()) > 0 {
			continue
		}
		key := StatusKey(KindPeerAuthentication, pa.Namespace, pa.Name)
		if len(pa.Spec.GetPortLevelMtls()) > 0 {
			t.Status[key] = "portLevelMtls ignored: it needs a selector"
		}
		if seenNS[pa.Namespace] {
			t.Status[key] = "ignored: an older PeerAuthentication without selector exists in this namespace"
			continue
		}
		seenNS[pa.Namespace] = true
		strict, set := modeStrict(pa.Spec.GetMtls())
		if !set {
			continue
		}
		if pa.Namespace == cfg.RootNamespace {
			p.meshStrict = strict
		} else {
			p.nsStrict[pa.Namespace] = strict
		}
	}
	if p.meshStrict || anyTrue(p.nsStrict) {
		p.strictName = cfg.RootNamespace + "/" + StrictPolicyName
		t.Authorizations[p.strictName] = strictPolicy(cfg.RootNamespace, StrictPolicyName, nil, nil)
	}
	for _, pa := range sorted {
		if len(pa.Spec.GetSelector().GetMatchLabels()) == 0 {
			continue
		}
		strict, set := modeStrict(pa.Spec.GetMtls())
		if !set {
			strict = p.namespaceStrict(pa.Namespace)
		}
		var except []uint32 // ports whose mode differs from strict
		ports := make([]uint32, 0, len(pa.Spec.GetPortLevelMtls()))
		for port := range pa.Spec.GetPortLevelMtls() {
			ports = append(ports, port)
		}
		sort.Slice(ports, func(i, j int) bool { return ports[i] < ports[j] })
		for _, port := range ports {
			ps, pset := modeStrict(pa.Spec.GetPortLevelMtls()[port])
			if pset && ps != strict {
				except = append(except, port)
			}
		}
		sel := peerSelector{selector: labels.SelectorFromSet(pa.Spec.GetSelector().GetMatchLabels())}
		if strict || len(except) > 0 {
			name := "converted_peer_authentication_" + pa.Name
			sel.name = pa.Namespace + "/" + name
			if strict {
				t.Authorizations[sel.name] = strictPolicy(pa.Namespace, name, nil, except)
			} else {
				t.Authorizations[sel.name] = strictPolicy(pa.Namespace, name, except, nil)
			}
		}
		p.workload[pa.Namespace] = append(p.workload[pa.Namespace], sel)
	}
	t.peer = p
}

// strictPolicy denies connections without a peer identity (plaintext),
// on the given ports only, or on all ports but the given ones.
func strictPolicy(namespace, name string, onlyPorts, exceptPorts []uint32) *security.Authorization {
	m := &security.Match{
		NotPrincipals:       []*security.StringMatch{{MatchType: &security.StringMatch_Presence{Presence: emptyValue()}}},
		DestinationPorts:    onlyPorts,
		NotDestinationPorts: exceptPorts,
	}
	return &security.Authorization{
		Name:      name,
		Namespace: namespace,
		Scope:     security.Scope_WORKLOAD_SELECTOR,
		Action:    security.Action_DENY,
		Rules:     []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{m}}}}},
	}
}

func emptyValue() *emptypb.Empty { return &emptypb.Empty{} }

func anyTrue(m map[string]bool) bool {
	for _, v := range m {
		if v {
			return true
		}
	}
	return false
}
