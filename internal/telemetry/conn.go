package telemetry

import (
	"log/slog"
	"net/netip"
	"time"

	"github.com/ambitmesh/ambit/internal/identity"
)

// The connection record: what a proxy knows about one connection, built
// once, from which both the access-log line and the metric labels are
// derived (as Istio's ztunnel does with its connection result), so that
// the two never disagree and no proxy assembles either by hand.

// Workload is what telemetry says about the workload at one end.
type Workload struct {
	// Name and Namespace are the pod's (the access log's src.workload,
	// dst.workload and src.namespace).
	Name, Namespace string
	// MetricName is the workload label: the owning workload's name (a
	// Deployment's) if known, else the pod's.
	MetricName                          string
	CanonicalService, CanonicalRevision string
}

// Endpoint is one end of a connection.
type Endpoint struct {
	Addr netip.AddrPort
	// Identity is the end's proven or configured identity; zero when
	// unknown (a plaintext source, a destination outside the mesh).
	Identity identity.Identity
	// Workload is nil when the end is not a known workload.
	Workload *Workload
}

// Service is the service a connection was addressed to.
type Service struct {
	Hostname, Name, Namespace string
}

// Conn describes one connection a proxy handles. Fill in what is known
// as it becomes known; a connection refused halfway is logged with what
// was known by then.
type Conn struct {
	// Direction is Inbound, InboundPlaintext or Outbound; it decides the
	// reporter (source for outbound, destination otherwise).
	Direction           string
	Source, Destination Endpoint
	// Service is set when the connection was addressed to one.
	Service *Service
	// Tunnel is the peer's HBONE address an outbound connection goes
	// through; unset for one sent as it is.
	Tunnel netip.AddrPort
	// Waypoint names the waypoint an outbound connection was sent
	// through (or bound to, when refused); Destination is then the
	// waypoint's workload.
	Waypoint string
	// Start is when the connection arrived; Open sets it if unset.
	Start time.Time
}

// Recorder writes connections' telemetry: the access log and the
// metrics.
type Recorder struct {
	Metrics   *Metrics
	AccessLog *slog.Logger
}

// Open counts c as opened. The caller must Close it.
func (r *Recorder) Open(c *Conn) {
	if c.Start.IsZero() {
		c.Start = time.Now()
	}
	r.Metrics.Opened(c.Labels())
}

// Close ends a connection Open counted: it counts it as closed with the
// bytes received from the client and sent to it, and writes its access
// line, with err when it did not end in order.
func (r *Recorder) Close(c *Conn, received, sent int64, err error) {
	r.Metrics.Closed(c.Labels(), received, sent)
	e := c.Entry()
	e.Received, e.Sent, e.Err = received, sent, err
	e.Log(r.AccessLog)
}

// Refuse writes the access line of a connection that was refused or
// failed before it was established (never opened, so not counted).
func (r *Recorder) Refuse(c *Conn, err error) {
	e := c.Entry()
	e.Err = err
	e.Log(r.AccessLog)
}

// Entry is c's access-log line, bytes and error aside.
func (c *Conn) Entry() Entry {
	e := Entry{
		Direction:           c.Direction,
		SourceAddr:          c.Source.Addr,
		SourceIdentity:      principal(c.Source.Identity),
		DestinationAddr:     c.Destination.Addr,
		DestinationHBONE:    c.Tunnel,
		Waypoint:            c.Waypoint,
		DestinationIdentity: principal(c.Destination.Identity),
	}
	if !c.Start.IsZero() {
		e.Duration = time.Since(c.Start)
	}
	if w := c.Source.Workload; w != nil {
		e.SourceWorkload, e.SourceNamespace = w.Name, w.Namespace
	}
	if w := c.Destination.Workload; w != nil {
		e.DestinationWorkload = w.Name
	}
	if c.Service != nil {
		e.DestinationService = c.Service.Hostname
	}
	return e
}

// Labels are c's metric labels.
func (c *Conn) Labels() Labels {
	l := Labels{
		Reporter:                     ReporterDestination,
		SourcePrincipal:              principal(c.Source.Identity),
		SourceWorkloadNamespace:      c.Source.Identity.Namespace,
		DestinationPrincipal:         principal(c.Destination.Identity),
		DestinationWorkloadNamespace: c.Destination.Identity.Namespace,
		RequestProtocol:              "tcp",
		ConnectionSecurityPolicy:     None,
	}
	if c.Direction == Outbound {
		l.Reporter = ReporterSource
	}
	if c.Direction == Inbound || c.Tunnel.IsValid() {
		l.ConnectionSecurityPolicy = MutualTLS
	}
	if w := c.Source.Workload; w != nil {
		l.SourceWorkload, l.SourceWorkloadNamespace = w.MetricName, w.Namespace
		l.SourceCanonicalService, l.SourceCanonicalRevision = w.CanonicalService, w.CanonicalRevision
	}
	if w := c.Destination.Workload; w != nil {
		l.DestinationWorkload, l.DestinationWorkloadNamespace = w.MetricName, w.Namespace
		l.DestinationCanonicalService, l.DestinationCanonicalRevision = w.CanonicalService, w.CanonicalRevision
	}
	if s := c.Service; s != nil {
		l.DestinationService, l.DestinationServiceName, l.DestinationServiceNamespace = s.Hostname, s.Name, s.Namespace
	}
	return l
}

// principal is an identity's SPIFFE ID, empty for none.
func principal(id identity.Identity) string {
	if id.IsZero() {
		return ""
	}
	return id.String()
}
