package telemetry

import (
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestIstioNamesAndLabels(t *testing.T) {
	m := New()
	l := Labels{
		Reporter:                     ReporterDestination,
		SourceWorkload:               "client",
		SourceWorkloadNamespace:      "shop",
		SourcePrincipal:              "spiffe://cluster.local/ns/shop/sa/client",
		DestinationWorkload:          "server",
		DestinationWorkloadNamespace: "shop",
		DestinationPrincipal:         "spiffe://cluster.local/ns/shop/sa/server",
		RequestProtocol:              "tcp",
		ConnectionSecurityPolicy:     MutualTLS,
	}
	m.Opened(l)
	m.Closed(l, 100, 2000)
	series := `reporter="destination",request_protocol="tcp",response_flags="unknown",source_app="unknown",source_canonical_revision="unknown",source_canonical_service="unknown",source_principal="spiffe://cluster.local/ns/shop/sa/client",source_workload="client",source_workload_namespace="shop"`
	labels := `connection_security_policy="mutual_tls",destination_app="unknown",destination_canonical_revision="unknown",destination_canonical_service="unknown",destination_principal="spiffe://cluster.local/ns/shop/sa/server",destination_service="unknown",destination_service_name="unknown",destination_service_namespace="unknown",destination_workload="server",destination_workload_namespace="shop",` + series
	want := ""
	for _, mt := range []struct {
		name, help string
		v          int
	}{
		{"istio_tcp_connections_closed_total", "The total number of TCP connections closed", 1},
		{"istio_tcp_connections_opened_total", "The total number of TCP connections opened", 1},
		{"istio_tcp_received_bytes_total", "The size of total bytes received during request in case of a TCP connection", 100},
		{"istio_tcp_sent_bytes_total", "The size of total bytes sent during response in case of a TCP connection", 2000},
	} {
		want += "# HELP " + mt.name + " " + mt.help + "\n# TYPE " + mt.name + " counter\n" +
			mt.name + "{" + labels + "} " + strconv.Itoa(mt.v) + "\n"
	}
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want),
		"istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
		"istio_tcp_received_bytes_total", "istio_tcp_sent_bytes_total"); err != nil {
		t.Error(err)
	}
}
