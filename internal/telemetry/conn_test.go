package telemetry

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/ambitmesh/ambit/internal/identity"
)

// TestConnRecord checks the access-log line and the metric labels one
// record gives for the three kinds of connection a node tunnel reports.
func TestConnRecord(t *testing.T) {
	client := identity.Identity{TrustDomain: identity.DefaultTrustDomain, Namespace: "shop", ServiceAccount: "client"}
	server := identity.Identity{TrustDomain: identity.DefaultTrustDomain, Namespace: "shop", ServiceAccount: "server"}
	cw := &Workload{Name: "client-1", Namespace: "shop", MetricName: "client", CanonicalService: "client", CanonicalRevision: "v1"}
	sw := &Workload{Name: "server-1", Namespace: "shop", MetricName: "server", CanonicalService: "server", CanonicalRevision: "v2"}
	srcAddr, dstAddr := netip.MustParseAddrPort("10.0.0.1:40000"), netip.MustParseAddrPort("10.0.0.2:8080")
	tunnel := netip.MustParseAddrPort("10.0.0.2:15008")
	tests := []struct {
		name       string
		conn       Conn
		wantEntry  Entry
		wantLabels Labels
	}{
		{
			name: "outbound through a tunnel to a service",
			conn: Conn{Direction: Outbound, Source: Endpoint{Addr: srcAddr, Identity: client, Workload: cw},
				Destination: Endpoint{Addr: dstAddr, Identity: server, Workload: sw},
				Service:     &Service{Hostname: "server.shop.svc.cluster.local", Name: "server", Namespace: "shop"}, Tunnel: tunnel},
			wantEntry: Entry{Direction: Outbound, SourceAddr: srcAddr, SourceWorkload: "client-1", SourceNamespace: "shop", SourceIdentity: client.String(),
				DestinationAddr: dstAddr, DestinationHBONE: tunnel, DestinationWorkload: "server-1", DestinationService: "server.shop.svc.cluster.local", DestinationIdentity: server.String()},
			wantLabels: Labels{Reporter: ReporterSource, SourceWorkload: "client", SourceWorkloadNamespace: "shop", SourcePrincipal: client.String(),
				SourceCanonicalService: "client", SourceCanonicalRevision: "v1", DestinationWorkload: "server", DestinationWorkloadNamespace: "shop",
				DestinationPrincipal: server.String(), DestinationCanonicalService: "server", DestinationCanonicalRevision: "v2",
				DestinationService: "server.shop.svc.cluster.local", DestinationServiceName: "server", DestinationServiceNamespace: "shop",
				RequestProtocol: "tcp", ConnectionSecurityPolicy: MutualTLS},
		},
		{
			name: "outbound passthrough",
			conn: Conn{Direction: Outbound, Source: Endpoint{Addr: srcAddr, Identity: client, Workload: cw}, Destination: Endpoint{Addr: dstAddr}},
			wantEntry: Entry{Direction: Outbound, SourceAddr: srcAddr, SourceWorkload: "client-1", SourceNamespace: "shop", SourceIdentity: client.String(),
				DestinationAddr: dstAddr},
			wantLabels: Labels{Reporter: ReporterSource, SourceWorkload: "client", SourceWorkloadNamespace: "shop", SourcePrincipal: client.String(),
				SourceCanonicalService: "client", SourceCanonicalRevision: "v1", RequestProtocol: "tcp", ConnectionSecurityPolicy: None},
		},
		{
			name: "inbound HBONE from a peer that is no known workload",
			conn: Conn{Direction: Inbound, Source: Endpoint{Addr: srcAddr, Identity: client}, Destination: Endpoint{Addr: dstAddr, Identity: server, Workload: sw}},
			wantEntry: Entry{Direction: Inbound, SourceAddr: srcAddr, SourceIdentity: client.String(),
				DestinationAddr: dstAddr, DestinationWorkload: "server-1", DestinationIdentity: server.String()},
			wantLabels: Labels{Reporter: ReporterDestination, SourceWorkloadNamespace: "shop", SourcePrincipal: client.String(),
				DestinationWorkload: "server", DestinationWorkloadNamespace: "shop", DestinationPrincipal: server.String(),
				DestinationCanonicalService: "server", DestinationCanonicalRevision: "v2", RequestProtocol: "tcp", ConnectionSecurityPolicy: MutualTLS},
		},
		{
			name: "inbound plaintext",
			conn: Conn{Direction: InboundPlaintext, Source: Endpoint{Addr: srcAddr}, Destination: Endpoint{Addr: dstAddr, Identity: server, Workload: sw}},
			wantEntry: Entry{Direction: InboundPlaintext, SourceAddr: srcAddr,
				DestinationAddr: dstAddr, DestinationWorkload: "server-1", DestinationIdentity: server.String()},
			wantLabels: Labels{Reporter: ReporterDestination, DestinationWorkload: "server", DestinationWorkloadNamespace: "shop", DestinationPrincipal: server.String(),
				DestinationCanonicalService: "server", DestinationCanonicalRevision: "v2", RequestProtocol: "tcp", ConnectionSecurityPolicy: None},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.wantEntry, tt.conn.Entry(), cmpopts.EquateComparable(netip.AddrPort{})); diff != "" {
				t.Errorf("Entry (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantLabels, tt.conn.Labels()); diff != "" {
				t.Errorf("Labels (-want +got):\n%s", diff)
			}
		})
	}
}
