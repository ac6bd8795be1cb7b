package inbound

import (
	"net/http"
	"net/netip"
	"testing"

	"github.com/ambitmesh/ambit/internal/hbone"
	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

// TestClientAddr checks whose address a connection to a workload comes
// from: the one the source tunnel names only when it belongs to a
// workload with the identity the peer proved.
func TestClientAddr(t *testing.T) {
	store := config.NewStore()
	wl := func(name, sa, addr string) *config.Workload {
		return &config.Workload{UID: name, Name: name, Namespace: "shop", ServiceAccount: sa, TrustDomain: identity.DefaultTrustDomain,
			Addresses: []netip.Addr{netip.MustParseAddr(addr)}, Node: "node-a", TunnelProtocol: config.TunnelHBONE}
	}
	if err := store.Replace(config.State{Workloads: []*config.Workload{
		wl("client", "client", "10.1.0.1"),
		wl("other", "other", "10.1.0.2"),
	}}); err != nil {
		t.Fatal(err)
	}
	snap := store.Snapshot()
	clientID := identity.Identity{TrustDomain: identity.DefaultTrustDomain, Namespace: "shop", ServiceAccount: "client"}
	node := netip.MustParseAddrPort("172.30.0.3:40000") // the source tunnel's node address
	tests := []struct {
		name      string
		peer      netip.AddrPort
		forwarded string
		want      netip.AddrPort
		workload  string
	}{
		{"forwarded by the node's tunnel", node, "for=10.1.0.1", netip.MustParseAddrPort("10.1.0.1:0"), "client"},
		{"forwarded address of another identity", node, "for=10.1.0.2", node, ""},
		{"forwarded address of no workload", node, "for=10.9.9.9", node, ""},
		{"no Forwarded", node, "", node, ""},
		{"from the workload's own address", netip.MustParseAddrPort("10.1.0.1:5000"), "for=10.1.0.1", netip.MustParseAddrPort("10.1.0.1:5000"), "client"},
		{"own address, another workload's in Forwarded", netip.MustParseAddrPort("10.1.0.1:5000"), "for=10.1.0.2", netip.MustParseAddrPort("10.1.0.1:5000"), "client"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.forwarded != "" {
				h.Set(hbone.HeaderForwarded, tt.forwarded)
			}
			got, w := clientAddr(snap, &hbone.Request{Peer: clientID, PeerAddr: tt.peer, Header: h})
			name := ""
			if w != nil {
				name = w.Name
			}
			if got != tt.want || name != tt.workload {
				t.Errorf("got %v (workload %q), want %v (workload %q)", got, name, tt.want, tt.workload)
			}
		})
	}
}
