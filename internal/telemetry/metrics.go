// Package telemetry is the data plane's per-connection telemetry: one
// JSON access-log line per proxied connection, and Prometheus metrics
// with Istio's names and labels (istio_tcp_connections_opened_total and
// its siblings) so that existing dashboards and Kiali read them
// unchanged.
package telemetry

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Reporter values.
const (
	ReporterSource      = "source"
	ReporterDestination = "destination"
)

// Connection security policies.
const (
	MutualTLS = "mutual_tls"
	None      = "none"
)

// Labels are Istio's standard TCP metric labels.
type Labels struct {
	Reporter                     string
	SourceWorkload               string
	SourceWorkloadNamespace      string
	SourcePrincipal              string
	SourceApp                    string
	SourceCanonicalService       string
	SourceCanonicalRevision      string
	DestinationWorkload          string
	DestinationWorkloadNamespace string
	DestinationPrincipal         string
	DestinationApp               string
	DestinationCanonicalService  string
	DestinationCanonicalRevision string
	DestinationService           string
	DestinationServiceName       string
	DestinationServiceNamespace  string
	RequestProtocol              string
	ResponseFlags                string
	ConnectionSecurityPolicy     string
}

var labelNames = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal", "source_app",
	"source_canonical_service", "source_canonical_revision",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
	"destination_canonical_service", "destination_canonical_revision",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"request_protocol", "response_flags", "connection_security_policy",
}

func (l Labels) values() []string {
	v := []string{
		l.Reporter,
		l.SourceWorkload, l.SourceWorkloadNamespace, l.SourcePrincipal, l.SourceApp,
		l.SourceCanonicalService, l.SourceCanonicalRevision,
		l.DestinationWorkload, l.DestinationWorkloadNamespace, l.DestinationPrincipal, l.DestinationApp,
		l.DestinationCanonicalService, l.DestinationCanonicalRevision,
		l.DestinationService, l.DestinationServiceName, l.DestinationServiceNamespace,
		l.RequestProtocol, l.ResponseFlags, l.ConnectionSecurityPolicy,
	}
	for i, s := range v {
		if s == "" {
			v[i] = "unknown"
		}
	}
	return v
}

// Metrics holds one tunnel's collectors in its own registry, so that
// several tunnels in one process (tests) do not mix their figures.
type Metrics struct {
	Registry *prometheus.Registry
	opened   *prometheus.CounterVec
	closed   *prometheus.CounterVec
	sent     *prometheus.CounterVec
	received *prometheus.CounterVec
}

// New creates the collectors and a registry holding them and the Go
// runtime and process collectors.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		opened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_connections_opened_total",
			Help: "The total number of TCP connections opened",
		}, labelNames),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_connections_closed_total",
			Help: "The total number of TCP connections closed",
		}, labelNames),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_sent_bytes_total",
			Help: "The size of total bytes sent during response in case of a TCP connection",
		}, labelNames),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_received_bytes_total",
			Help: "The size of total bytes received during request in case of a TCP connection",
		}, labelNames),
	}
	m.Registry.MustRegister(m.opened, m.closed, m.sent, m.received,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Opened counts a connection that was established.
func (m *Metrics) Opened(l Labels) { m.opened.WithLabelValues(l.values()...).Inc() }

// Closed counts a connection that ended, with the bytes received from the
// client (request direction) and sent to it (response direction).
func (m *Metrics) Closed(l Labels, received, sent int64) {
	v := l.values()
	m.closed.WithLabelValues(v...).Inc()
	m.received.WithLabelValues(v...).Add(float64(received))
	m.sent.WithLabelValues(v...).Add(float64(sent))
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}
