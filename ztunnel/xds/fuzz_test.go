package xds

import (
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambitmesh/ambit/api/security"
	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

// FuzzTranslate feeds arbitrary bytes to the client as the body of one
// istio.workload.Address (policy false) or istio.security.Authorization
// (policy true). Translation must never panic; whatever it accepts must
// validate as a state on its own, and the client, given it and an empty
// response of the other type, must ACK and load a store holding it.
func FuzzTranslate(f *testing.F) {
	auths, addrs := model()
	for _, m := range auths {
		seed(f, true, m)
	}
	for _, m := range addrs {
		seed(f, false, m)
	}
	seed(f, false, wlAddress(&workload.Workload{Uid: "u", Name: "n", Namespace: "ns", Addresses: [][]byte{ip("fd00::1"), {1, 2, 3, 4, 5}}}))
	seed(f, true, &security.Authorization{Name: "p", Namespace: "ns", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY,
		Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{{
			NotSourceIps: []*security.Address{cidr("10.0.0.0", 8), cidr("fd00::", 129)}, DestinationPorts: []uint32{80, 0},
			NotPrincipals: []*security.StringMatch{{}},
		}}}}}}})
	withUnknown := &security.Match{ServiceAccounts: []*security.ServiceAccountMatch{{Namespace: "ns", ServiceAccount: "sa"}, {}},
		NotServiceAccounts: []*security.ServiceAccountMatch{{Namespace: "ns", ServiceAccount: "b"}}, Extensions: []*workload.Extension{{Name: "x"}}}
	withUnknown.ProtoReflect().SetUnknown([]byte{0xa0, 0x06, 0x01}) // field 100, varint 1
	seed(f, true, &security.Authorization{Name: "q", Namespace: "ns", Action: 7, DryRun: true,
		Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{withUnknown}}}}}})
	f.Fuzz(func(t *testing.T, policy bool, data []byte) {
		typ, other := AddressType, AuthorizationType
		if policy {
			typ, other = AuthorizationType, AddressType
		}
		r := &discovery.Resource{Name: "r", Version: "1", Resource: &anypb.Any{TypeUrl: typ, Value: data}}
		it, err := translate(typ, r)
		if err != nil {
			if it != nil {
				t.Fatalf("translate: got %+v and error %v, want no item with an error", it, err)
			}
			return
		}
		var st config.State
		it.addTo(&st)
		if err := st.Validate(); err != nil {
			t.Fatalf("translate accepted a resource that does not validate: %v", err)
		}

		c, store := newTestClient(t)
		resp := &discovery.DeltaDiscoveryResponse{TypeUrl: typ, Nonce: "1", Resources: []*discovery.Resource{r}}
		if req := c.handle(resp); req.GetErrorDetail() != nil {
			t.Fatalf("client NACKed a resource translate accepts: %s", req.GetErrorDetail().GetMessage())
		}
		if req := c.handle(&discovery.DeltaDiscoveryResponse{TypeUrl: other, Nonce: "2"}); req.GetErrorDetail() != nil {
			t.Fatalf("client NACKed an empty response: %s", req.GetErrorDetail().GetMessage())
		}
		snap := store.Snapshot()
		if !store.Loaded() || len(snap.Workloads)+len(snap.Services)+len(snap.Policies) != 1 {
			t.Fatalf("store: got loaded %v with %d workloads, %d services, %d policies; want loaded with the one resource",
				store.Loaded(), len(snap.Workloads), len(snap.Services), len(snap.Policies))
		}
		for _, w := range snap.Workloads {
			for _, a := range w.Addresses {
				if snap.WorkloadByAddr(a) != w {
					t.Fatalf("WorkloadByAddr(%s): got %v, want %s", a, snap.WorkloadByAddr(a), w.UID)
				}
			}
			snap.PoliciesFor(w)
		}
	})
}

func seed(f *testing.F, policy bool, m proto.Message) {
	b, err := proto.Marshal(m)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(policy, b)
}
