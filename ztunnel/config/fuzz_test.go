package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// FuzzParseState feeds arbitrary documents to the static config parser,
// which stands where xDS → state translation will. It must never panic;
// whatever it accepts must validate and index into a snapshot whose
// lookups find every workload by each of its addresses.
func FuzzParseState(f *testing.F) {
	seed, err := os.ReadFile(filepath.Join("testdata", "two-nodes.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add([]byte(`{"workloads":[{"uid":"a","name":"a","namespace":"ns","addresses":["10.0.0.1","fd00::1"]}]}`))
	f.Add([]byte(`policies: [{name: p, namespace: ns, scope: GLOBAL, action: DENY, rules: [{clauses: [{matches: [{notPrincipals: [{presence: true}]}]}]}]}]`))
	f.Add([]byte(`services: [{name: s, namespace: ns, hostname: s.ns, addresses: [{address: 10.1.0.1}], ports: [{servicePort: 80, targetPort: 8080}]}]`))
	f.Add([]byte(`workloads: [{uid: a, name: a, namespace: ns, addresses: ["::ffff:10.0.0.1"]}, {uid: b, name: b, namespace: ns, addresses: [10.0.0.1]}]`))
	f.Add([]byte(`services: [{name: s, namespace: ns, hostname: s.ns, visibility: NAMESPACE, addresses: [{address: 10.1.0.0, length: 16}], ports: []}]`))
	f.Add([]byte(`workloads: [{uid: a, name: a, namespace: ns, addresses: [10.0.0.1], tunnelProtocol: LEGACY_ISTIO_MTLS}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := ParseState(data)
		if err != nil {
			return
		}
		if err := st.Validate(); err != nil {
			t.Fatalf("ParseState accepted a state that does not validate: %v", err)
		}
		snap := newSnapshot(st, 1)
		for _, w := range st.Workloads {
			for _, a := range w.Addresses {
				// Workloads may share an address; one of them owns it.
				if got := snap.WorkloadByAddr(a); got == nil || !slices.ContainsFunc(got.Addresses, func(b netip.Addr) bool { return b.Unmap() == a.Unmap() }) {
					t.Fatalf("WorkloadByAddr(%s): got %v, want a workload with that address", a, got)
				}
			}
			snap.PoliciesFor(w)
		}
		for _, s := range st.Services {
			snap.Endpoints(s)
		}
	})
}
