package waypoint

// Istio's standard metrics as Istio's Envoy waypoint reports them (its
// istio.stats filter with reporter SERVER_GATEWAY, istio/proxy
// source/extensions/filters/http/istio_stats): names, labels, the values
// used when something is unknown ("unknown"; "latest" for the source's
// canonical revision), and Envoy's default histogram buckets, so that
// Kiali's and Grafana's queries over reporter="waypoint" read them.
//
// One record per request (requestRecord, filled along the request's
// path) and per TCP connection (tcpRecord) feeds both the metrics and
// the access-log line, so they never disagree.

import (
	"crypto/rand"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// Label values Istio uses.
const (
	reporterWaypoint = "waypoint"
	unknown          = "unknown"
	mutualTLS        = "mutual_tls"
	securityNone     = "none"
)

// envoyBuckets are Envoy's default histogram buckets (Istio sets no
// others by default), used for durations in milliseconds and for sizes
// in bytes alike.
var envoyBuckets = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}

// peerLabels are the labels of both ends, in Istio's order.
var peerLabels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
	"source_canonical_service", "source_canonical_revision", "source_cluster",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"destination_canonical_service", "destination_canonical_revision", "destination_cluster",
	"request_protocol", "response_flags", "connection_security_policy",
}

// messageLabels are the labels of gRPC message counts: only the peers'
// (Istio's stats filter counts a stream's messages before it knows the
// protocol, flags and security labels it adds for the request metrics).
var messageLabels = peerLabels[:len(peerLabels)-3]

// httpLabels add the response's code and gRPC status.
var httpLabels = append(append([]string(nil), peerLabels...), "response_code", "grpc_response_status")

// requestLabels are the values of httpLabels: one series of the request
// metrics.
type requestLabels [25]string

// maxSeries bounds each series cache: past it the cache starts over (a
// busy waypoint's label sets are few: peers, services, codes and flags;
// more than this many is the exception).
const maxSeries = 4096

// requestSeries are the children of the four request metrics of one
// label set.
type requestSeries struct {
	requests                      prometheus.Counter
	duration, reqBytes, respBytes prometheus.Observer
}

// messageValues are the values of messageLabels.
type messageValues [20]string

// messageSeries are the children of the two gRPC message counts of one
// label set.
type messageSeries struct{ req, resp prometheus.Counter }

// seriesCache holds metric children by their label values, so that a
// request's metrics cost one map lookup rather than label hashings and
// checks in the metric vectors. It only caches what the vectors return:
// nothing deletes their series.
type seriesCache[K comparable, V any] struct {
	mu sync.RWMutex
	m  map[K]*V
}

// get is the children labelled k, made by build the first time.
func (c *seriesCache[K, V]) get(k *K, build func() *V) *V {
	c.mu.RLock()
	v := c.m[*k]
	c.mu.RUnlock()
	if v != nil {
		return v
	}
	v = build()
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxSeries {
		c.m = map[K]*V{}
	}
	c.m[*k] = v
	c.mu.Unlock()
	return v
}

// telemetry holds Istio's metrics and the access log.
type telemetry struct {
	workloads atomic.Pointer[Workloads]
	node      atomic.Pointer[NodeInfo]
	accessLog atomic.Pointer[accessLog]
	// sinks are where the xDS's access logs write.
	sinks    *logSinks
	services atomic.Pointer[serviceIndex]

	requests                      *prometheus.CounterVec
	reqMessages, respMessages     *prometheus.CounterVec
	duration, reqBytes, respBytes *prometheus.HistogramVec
	tcpOpened, tcpClosed          *prometheus.CounterVec
	tcpSent, tcpReceived          *prometheus.CounterVec
	build                         *prometheus.GaugeVec
	series                        seriesCache[requestLabels, requestSeries]
	messages                      seriesCache[messageValues, messageSeries]
	// tracer sends sampled requests' spans (nil: none are sent).
	tracer *tracer
}

// NodeInfo is what the waypoint reports of itself: its namespace and
// cluster (destination_service_namespace's fallback and
// destination_cluster, as Istio's waypoint).
type NodeInfo struct {
	Namespace, ClusterID string
	// ID is the xDS node id (spans' node_id tag); ServiceCluster the
	// node's cluster, the spans' local service name.
	ID, ServiceCluster string
}

func newTelemetry() *telemetry {
	t := &telemetry{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_requests_total",
			Help: "The total number of requests"}, httpLabels),
		reqMessages: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_request_messages_total",
			Help: "The total number of gRPC messages sent from the client"}, messageLabels),
		respMessages: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_response_messages_total",
			Help: "The total number of gRPC messages sent from the server"}, messageLabels),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_request_duration_milliseconds",
			Help: "The duration of requests in milliseconds", Buckets: envoyBuckets}, httpLabels),
		reqBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_request_bytes",
			Help: "The size of requests in bytes", Buckets: envoyBuckets}, httpLabels),
		respBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_response_bytes",
			Help: "The size of responses in bytes", Buckets: envoyBuckets}, httpLabels),
		tcpOpened: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_opened_total",
			Help: "The total number of TCP connections opened"}, peerLabels),
		tcpClosed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_closed_total",
			Help: "The total number of TCP connections closed"}, peerLabels),
		tcpSent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_sent_bytes_total",
			Help: "The size of total bytes sent during response in case of a TCP connection"}, peerLabels),
		tcpReceived: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_received_bytes_total",
			Help: "The size of total bytes received during request in case of a TCP connection"}, peerLabels),
		build: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "istio_build",
			Help: "Istio component build info"}, []string{"component", "tag"}),
	}
	t.sinks = newLogSinks()
	t.build.WithLabelValues("proxy", IstioVersion).Set(1)
	t.node.Store(&NodeInfo{})
	return t
}

// requestSeries are the request metrics' children labelled vals.
func (t *telemetry) requestSeries(vals *requestLabels) *requestSeries {
	return t.series.get(vals, func() *requestSeries {
		lv := make([]string, len(vals))
		copy(lv, vals[:])
		return &requestSeries{requests: t.requests.WithLabelValues(lv...), duration: t.duration.WithLabelValues(lv...),
			reqBytes: t.reqBytes.WithLabelValues(lv...), respBytes: t.respBytes.WithLabelValues(lv...)}
	})
}

// messageSeries are the gRPC message counts' children labelled vals.
func (t *telemetry) messageSeries(vals *messageValues) *messageSeries {
	return t.messages.get(vals, func() *messageSeries {
		lv := make([]string, len(vals))
		copy(lv, vals[:])
		return &messageSeries{req: t.reqMessages.WithLabelValues(lv...), resp: t.respMessages.WithLabelValues(lv...)}
	})
}

// statusCodes are the HTTP status codes 100 to 599 as strings.
var statusCodes = func() (s [500]string) {
	for i := range s {
		s[i] = strconv.Itoa(100 + i)
	}
	return s
}()

// statusCode is code as a string (response_code), without allocating
// for a valid status.
func statusCode(code int) string {
	if code >= 100 && code < 600 {
		return statusCodes[code-100]
	}
	return strconv.Itoa(code)
}

func (t *telemetry) collectors() []prometheus.Collector {
	cs := []prometheus.Collector{t.requests, t.reqMessages, t.respMessages, t.duration, t.reqBytes, t.respBytes, t.tcpOpened, t.tcpClosed, t.tcpSent, t.tcpReceived, t.build}
	if t.tracer != nil {
		cs = append(cs, t.tracer.collectors()...)
	}
	return cs
}

// SetWorkloads installs the workload index peer metadata comes from.
func (s *Stats) SetWorkloads(w *Workloads) { s.tel.workloads.Store(w) }

// Workloads is the installed workload index (nil before the first).
func (s *Stats) Workloads() *Workloads { return s.tel.workloads.Load() }

// SetNode sets what the waypoint reports of itself.
func (s *Stats) SetNode(n NodeInfo) { s.tel.node.Store(&n) }

// SetAccessLog makes the waypoint write one JSON line per request and
// per TCP connection to w (Istio's default JSON access-log fields); nil
// turns it off.
func (s *Stats) SetAccessLog(w io.Writer) {
	if w == nil {
		s.tel.accessLog.Store(nil)
		return
	}
	s.tel.accessLog.Store(&accessLog{w: w})
}

// SetAccessLogStdout makes the access logs the xDS configures with path
// /dev/stdout write to w (os.Stdout by default).
func (s *Stats) SetAccessLogStdout(w io.Writer) {
	s.tel.sinks.mu.Lock()
	s.tel.sinks.stdout = w
	s.tel.sinks.mu.Unlock()
}

// serviceIndex is what telemetry reads of one snapshot: the service of
// each cluster (its istio filter metadata, as Istio's stats filter reads
// it) and of each HTTP connection manager's chain (inbound-vip chains
// name it), for requests that never reach a cluster.
type serviceIndex struct {
	snap     *config.Snapshot
	clusters map[string]*ServiceInfo
	hcms     map[*config.HCM]*ServiceInfo
}

func (t *telemetry) servicesOf(snap *config.Snapshot) *serviceIndex {
	if si := t.services.Load(); si != nil && si.snap == snap {
		return si
	}
	si := &serviceIndex{snap: snap, clusters: map[string]*ServiceInfo{}, hcms: map[*config.HCM]*ServiceInfo{}}
	if snap != nil {
		for _, c := range snap.RawClusters {
			if s := clusterService(c.GetMetadata().GetFilterMetadata()["istio"].GetFields()["services"].GetListValue().GetValues()); s != nil {
				si.clusters[c.GetName()] = s
			} else if s := serviceFromName(c.GetName()); s != nil {
				si.clusters[c.GetName()] = s
			}
		}
		for _, l := range snap.Listeners {
			for _, ch := range l.Chains {
				if ch.HCM != nil {
					if s := serviceFromName(ch.Name); s != nil {
						si.hcms[ch.HCM] = s
					}
				}
			}
		}
	}
	t.services.Store(si)
	return si
}

// clusterService reads istio.services[0] {host, name, namespace}.
func clusterService(vs []*structpb.Value) *ServiceInfo {
	if len(vs) == 0 {
		return nil
	}
	f := vs[0].GetStructValue().GetFields()
	s := &ServiceInfo{Hostname: f["host"].GetStringValue(), Name: f["name"].GetStringValue(), Namespace: f["namespace"].GetStringValue()}
	if s.Hostname == "" {
		return nil
	}
	if s.Name == "" {
		s.Name, _, _ = strings.Cut(s.Hostname, ".")
	}
	return s
}

// serviceFromName reads Istio's cluster and chain names
// "inbound-vip|<port>|<proto>|<host>" (and "outbound|<port>|<subset>|<host>").
func serviceFromName(name string) *ServiceInfo {
	parts := strings.Split(name, "|")
	if len(parts) != 4 || parts[3] == "" {
		return nil
	}
	host := parts[3]
	s := &ServiceInfo{Hostname: host}
	labels := strings.Split(host, ".")
	s.Name = labels[0]
	if len(labels) >= 3 && labels[2] == "svc" {
		s.Namespace = labels[1]
	}
	return s
}

func orUnknown(s string) string {
	if s == "" {
		return unknown
	}
	return s
}

// peerValues are the values of peerLabels.
type peerValues struct {
	src, dst        *Peer
	srcPrincipal    string
	srcNamespace    string
	service         *ServiceInfo
	hostFallback    string
	protocol, flags string
	mtls            bool
}

func (t *telemetry) values(pv *peerValues) []string {
	return t.appendValues(make([]string, 0, len(httpLabels)), pv)
}

// appendValues appends the values of peerLabels to v.
func (t *telemetry) appendValues(v []string, pv *peerValues) []string {
	node := t.node.Load()
	v = append(v, reporterWaypoint)
	src, dst := pv.src, pv.dst
	if src == nil {
		src = &Peer{}
	}
	ns := pv.srcNamespace
	if ns == "" {
		ns = src.Namespace
	}
	rev := src.CanonicalRevision
	if rev == "" {
		rev = "latest"
	}
	v = append(v, orUnknown(src.WorkloadName), orUnknown(ns), orUnknown(pv.srcPrincipal), unknown, unknown,
		orUnknown(src.CanonicalName), rev, orUnknown(src.ClusterID))
	dw, dns, dp, dcs, dcr := unknown, unknown, unknown, unknown, unknown
	if dst != nil {
		dw, dns, dp, dcs, dcr = orUnknown(dst.WorkloadName), orUnknown(dst.Namespace), orUnknown(dst.Identity), orUnknown(dst.CanonicalName), orUnknown(dst.CanonicalRevision)
	}
	svc, svcName, svcNS := dcs, dcs, node.Namespace
	if pv.service != nil {
		svc, svcName = pv.service.Hostname, pv.service.Name
		if pv.service.Namespace != "" {
			svcNS = pv.service.Namespace
		}
	} else if pv.hostFallback != "" {
		svc, svcName = pv.hostFallback, pv.hostFallback
	}
	sec := securityNone
	if pv.mtls {
		sec = mutualTLS
	}
	v = append(v, dw, dns, dp, unknown, unknown, svc, svcName, orUnknown(svcNS), dcs, dcr, orUnknown(node.ClusterID),
		pv.protocol, pv.flags, sec)
	return v
}

// principalNamespace is the namespace of a SPIFFE ID ("/ns/<ns>/").
func principalNamespace(p string) string {
	_, rest, ok := strings.Cut(p, "/ns/")
	if !ok {
		return ""
	}
	ns, _, _ := strings.Cut(rest, "/")
	return ns
}

// downstreamPeer is the source of a connection: its proven principal
// (filter state io.istio.peer_principal, else the TLS peer) and the
// workload behind it.
func (t *telemetry) downstreamPeer(ci *connInfo, fs map[string]string) (principal string, p *Peer, mtls bool) {
	principal = fs["io.istio.peer_principal"]
	local := fs["io.istio.local_principal"]
	if principal == "" && local == "" {
		principal, local = ci.peer, ci.localSAN
	}
	return principal, t.workloads.Load().source(ci.remote.Addr(), principal), principal != "" && local != ""
}

// upstreamPeer is the workload of an endpoint: the pod behind an
// internal connect_originate endpoint (its original destination) or at
// the endpoint's address.
func (t *telemetry) upstreamPeer(ep *config.Endpoint) *Peer {
	if ep == nil {
		return nil
	}
	a := ep.Address
	if ep.Listener != "" {
		a, _ = netip.ParseAddrPort(ep.Metadata[metaOriginalDst]["local"])
	}
	if !a.IsValid() {
		return nil
	}
	return t.workloads.Load().ByAddr(a.Addr())
}

// newID is a random hex string of n bytes.
func newID(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// putUUID writes a random (version 4) UUID, as Envoy's request ids,
// into its 36 bytes.
func putUUID(s []byte) {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:36], b[10:])
}

// putTraceparent writes the W3C traceparent of a new trace, not
// sampled, into its 55 bytes: "00-<16 random bytes>-<8 random bytes>-00".
func putTraceparent(s []byte) {
	var b [24]byte
	rand.Read(b[:])
	copy(s, "00-")
	hex.Encode(s[3:35], b[:16])
	s[35] = '-'
	hex.Encode(s[36:52], b[16:])
	copy(s[52:55], "-00")
}

// validTraceparent checks a W3C traceparent of version 00
// ("00-<32 hex>-<16 hex>-<2 hex>", ids not all zero).
func validTraceparent(s string) bool {
	if len(s) != 55 || s[:3] != "00-" || s[35] != '-' || s[52] != '-' {
		return false
	}
	trace, parent, flags := s[3:35], s[36:52], s[53:]
	for _, part := range []string{trace, parent, flags} {
		for i := 0; i < len(part); i++ {
			c := part[i]
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return false
			}
		}
	}
	return strings.Trim(trace, "0") != "" && strings.Trim(parent, "0") != ""
}

// ensureRequestIDs gives a request the ids a waypoint propagates: an
// x-request-id (a UUID, as Envoy generates) and a W3C traceparent (a new
// trace when absent or malformed; passed on unchanged otherwise, as the
// waypoint records no span of its own, so its sampled flag is 0).
func ensureRequestIDs(h http.Header) {
	id := h.Get("X-Request-Id") == ""
	tp := h.Values("Traceparent")
	trace := len(tp) != 1 || !validTraceparent(tp[0])
	if !id && !trace {
		return
	}
	// Both made for most requests: one string and one slice for the two
	// (four allocations were 1 in 10 of the waypoint's per request).
	var buf [36 + 55]byte
	n := 0
	if id {
		putUUID(buf[:36])
		n = 36
	}
	if trace {
		putTraceparent(buf[n : n+55])
		n += 55
	}
	str := string(buf[:n])
	vals := make([]string, 0, 2)
	if id {
		vals = append(vals, str[:36])
		h["X-Request-Id"] = vals[0:1:1]
		str = str[36:]
	}
	if trace {
		h.Del("Tracestate") // belongs to the trace being replaced
		vals = append(vals, str)
		h["Traceparent"] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
}

// meteredConn counts the bytes read from and written to a downstream
// connection: Envoy's downstream wire bytes.
type meteredConn struct {
	net.Conn
	read, written atomic.Int64
	// live, once set, also gets the counts (a TCP connection's byte
	// counters, live while it is open); reportedRead and reportedWritten
	// are what it has got, so that each byte is added once.
	live                          atomic.Pointer[liveCounters]
	reportedRead, reportedWritten atomic.Int64
}

type liveCounters struct{ received, sent prometheus.Counter }

func (m *meteredConn) Read(p []byte) (int, error) {
	n, err := m.Conn.Read(p)
	if n > 0 {
		m.read.Add(int64(n))
		if l := m.live.Load(); l != nil {
			report(&m.read, &m.reportedRead, l.received)
		}
	}
	return n, err
}

func (m *meteredConn) Write(p []byte) (int, error) {
	n, err := m.Conn.Write(p)
	if n > 0 {
		m.written.Add(int64(n))
		if l := m.live.Load(); l != nil {
			report(&m.written, &m.reportedWritten, l.sent)
		}
	}
	return n, err
}

// report adds to c what total has that reported has not.
func report(total, reported *atomic.Int64, c prometheus.Counter) {
	for {
		prev, cur := reported.Load(), total.Load()
		if cur <= prev {
			return
		}
		if reported.CompareAndSwap(prev, cur) {
			c.Add(float64(cur - prev))
			return
		}
	}
}

// attach starts counting into received and sent, what was already moved
// included.
func (m *meteredConn) attach(received, sent prometheus.Counter) {
	m.live.Store(&liveCounters{received: received, sent: sent})
	report(&m.read, &m.reportedRead, received)
	report(&m.written, &m.reportedWritten, sent)
}

// CloseWrite half-closes the connection when it can.
func (m *meteredConn) CloseWrite() error {
	if cw, ok := m.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return m.Conn.Close()
}

// metered wraps a downstream connection to count its bytes.
func metered(c net.Conn) net.Conn { return &meteredConn{Conn: c} }

// meterOf finds the meter under a downstream connection.
func meterOf(c net.Conn) *meteredConn {
	for c != nil {
		switch x := c.(type) {
		case *meteredConn:
			return x
		case *sniffConn:
			c = x.Conn
		case *idleConn:
			c = x.Conn
		default:
			return nil
		}
	}
	return nil
}

// countingBody counts the bytes of a request body read.
type countingBody struct {
	io.ReadCloser
	n atomic.Int64
	// frames counts a gRPC request's messages (nil if not gRPC).
	frames *grpcFrames
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	if n > 0 && b.frames != nil {
		b.frames.scan(p[:n])
	}
	return n, err
}

// headSize is the size of a request head on the wire, as read back from
// the parsed request (HTTP/1.1: request line, Host, the headers).
func headSize(req *http.Request) int64 {
	n := len(req.Method) + 1 + len(req.RequestURI) + 1 + len(req.Proto) + 2
	if req.Host != "" {
		n += len("Host: ") + len(req.Host) + 2
	}
	for k, vs := range req.Header {
		for _, v := range vs {
			n += len(k) + 2 + len(v) + 2
		}
	}
	return int64(n + 2)
}

// isGRPC: the request is gRPC (Istio's request_protocol "grpc").
func isGRPCHeader(h http.Header) bool {
	ct := h.Get("Content-Type")
	return strings.HasPrefix(ct, "application/grpc")
}

// grpcStatusOf is a gRPC response's status: grpc-status of its trailers
// or headers, else Envoy's mapping of the HTTP status (none for 200).
func grpcStatusFromHeaders(status int, h, trailer http.Header) string {
	if s := trailer.Get("Grpc-Status"); s != "" {
		return s
	}
	if s := h.Get("Grpc-Status"); s != "" {
		return s
	}
	switch status {
	case 0, http.StatusOK:
		return ""
	case http.StatusBadRequest:
		return "13"
	case http.StatusUnauthorized:
		return "16"
	case http.StatusForbidden:
		return "7"
	case http.StatusNotFound:
		return "12"
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return "14"
	default:
		return "2"
	}
}

// addFlag adds a response flag to a flag list ("-" for none).
func addFlag(flags, f string) string {
	if flags == "" || flags == "-" {
		return f
	}
	return flags + "," + f
}

// rbacDetails is Envoy's response_code_details of an RBAC denial.
func rbacDetails(policy string) string {
	if policy == "" {
		policy = "none"
	}
	return "rbac_access_denied_matched_policy[" + strings.Join(strings.Fields(policy), "_") + "]"
}

// detailsFor are Envoy's response_code_details for a flag, when nothing
// more precise was noted.
func detailsFor(flags string, upstream bool) string {
	switch {
	case strings.Contains(flags, "NR"):
		return "route_not_found"
	case strings.Contains(flags, "UH"):
		return "no_healthy_upstream"
	case strings.Contains(flags, "UF"):
		return "upstream_reset_before_response_started{connection_failure}"
	case strings.Contains(flags, "UT"):
		return "response_timeout"
	case strings.Contains(flags, "FI"):
		return "fault_filter_abort"
	case strings.Contains(flags, "NC"):
		return "cluster_not_found"
	case strings.Contains(flags, "UO"):
		return "upstream_reset_before_response_started{overflow}"
	case strings.Contains(flags, "DC"):
		return "downstream_remote_disconnect"
	case strings.Contains(flags, "UC"):
		return "upstream_reset_after_response_started{connection_termination}"
	case upstream:
		return "via_upstream"
	}
	return ""
}

// finish ends a request: its metrics and access-log line, from the
// record as the request's path left it.
func (r *requestRecord) finish() {
	t := r.t
	flags := cmpOr(r.Flags, "-")
	principal, src, mtls := t.downstreamPeer(r.ci, r.ci.fs)
	r.principal, r.src, r.dst = principal, src, t.upstreamPeer(r.ep)
	pv := &peerValues{src: src, dst: r.dst, srcPrincipal: principal, srcNamespace: principalNamespace(principal),
		service: r.service, protocol: "http", flags: flags, mtls: mtls}
	if r.grpc {
		pv.protocol = "grpc"
	}
	var vals requestLabels
	if n := len(append(t.appendValues(vals[:0], pv), statusCode(r.Status), r.grpcResponseStatus())); n != len(vals) {
		panic("request labels: " + strconv.Itoa(n) + " values") // httpLabels and requestLabels disagree
	}
	if r.grpc {
		t.attachMessages(r, &vals)
		r.reqMsgs.flush()
		r.respMsgs.flush()
	}
	received, sent := r.received(), r.sent()
	dur := time.Since(r.start)
	if st := statsOf(r.hcm); st != nil && st.Overrides {
		t.observeRequest(st, r, &vals, dur, received, sent)
	} else {
		s := t.requestSeries(&vals)
		s.requests.Inc()
		s.duration.Observe(float64(dur.Milliseconds()))
		s.reqBytes.Observe(float64(received))
		s.respBytes.Observe(float64(sent))
	}
	if s := r.trace; s != nil && s.sampled && t.tracer != nil {
		t.tracer.record(r, flags, received, sent, dur)
	}
	var logs []*config.AccessLog
	if r.hcm != nil {
		logs = r.hcm.AccessLogs
	}
	al := t.accessLog.Load()
	otel := t.tracer != nil && len(r.otelLogs) > 0
	if al == nil && len(logs) == 0 && !otel {
		return
	}
	e := r.accessEntry(flags, principal, received, sent, dur)
	if otel {
		t.tracer.logRequest(r, e)
	}
	if al != nil {
		al.write(e)
	}
	t.sinks.writeConfigured(logs, e)
}

// attachMessages gives a gRPC request's message counts their counters,
// labelled with the peers as they are now (vals, when computed already).
func (t *telemetry) attachMessages(r *requestRecord, vals *requestLabels) {
	if r.reqMsgs.live.Load() != nil {
		return
	}
	var peers requestLabels
	if vals == nil {
		principal, src, mtls := t.downstreamPeer(r.ci, r.ci.fs)
		t.appendValues(peers[:0], &peerValues{src: src, dst: t.upstreamPeer(r.ep), srcPrincipal: principal, srcNamespace: principalNamespace(principal),
			service: r.service, mtls: mtls})
		vals = &peers
	}
	var key messageValues
	copy(key[:], vals[:])
	s := t.messageSeries(&key)
	r.reqMsgs.attach(s.req)
	r.respMsgs.attach(s.resp)
}

// tcpRecord is one TCP connection's telemetry (a tcp_proxy chain).
type tcpRecord struct {
	t        *telemetry
	start    time.Time
	ci       *connInfo
	meter    *meteredConn
	cluster  string
	labels   []string
	opened   bool
	details  string
	services *serviceIndex
	// tp is the tcp_proxy's config: its access logs.
	tp *config.TCPProxy
	// src and dst are the peers, once open found them.
	src, dst *Peer
}

// beginTCP starts a TCP connection's record.
func (p *Proxy) beginTCP(c net.Conn, ci *connInfo, snap *config.Snapshot, tp *config.TCPProxy) *tcpRecord {
	return &tcpRecord{t: p.stats.tel, start: time.Now(), ci: ci, meter: meterOf(c), services: p.stats.tel.servicesOf(snap), cluster: tcpCluster(tp), tp: tp}
}

// open counts the connection opened once its upstream is up (or failed,
// with flags), its labels fixed from then on, as Envoy's are once
// reported; up is the upstream connection (its remote address the pod).
func (r *tcpRecord) open(up net.Conn, flags string) {
	if r == nil || r.opened {
		return
	}
	r.opened = true
	cluster := r.cluster
	t := r.t
	principal, src, mtls := t.downstreamPeer(r.ci, r.ci.fs)
	var dst *Peer
	if up != nil {
		if a, ok := up.RemoteAddr().(*net.TCPAddr); ok {
			dst = t.workloads.Load().ByAddr(a.AddrPort().Addr())
		}
	}
	svc := r.services.clusters[cluster]
	if svc == nil {
		svc = serviceFromName(cluster)
	}
	if flags == "" {
		flags = "-"
	}
	r.src, r.dst = src, dst
	r.labels = t.values(&peerValues{src: src, dst: dst, srcPrincipal: principal, srcNamespace: principalNamespace(principal),
		service: svc, protocol: "tcp", flags: flags, mtls: mtls})
	t.tcpOpened.WithLabelValues(r.labels...).Inc()
	if r.meter != nil {
		r.meter.attach(t.tcpReceived.WithLabelValues(r.labels...), t.tcpSent.WithLabelValues(r.labels...))
	}
}

// close counts the connection closed and writes its access-log line.
func (r *tcpRecord) close(flags string) {
	if r == nil {
		return
	}
	if !r.opened {
		r.open(nil, flags)
	}
	t := r.t
	t.tcpClosed.WithLabelValues(r.labels...).Inc()
	var logs []*config.AccessLog
	if r.tp != nil {
		logs = r.tp.AccessLogs
	}
	al := t.accessLog.Load()
	if al == nil && len(logs) == 0 {
		return
	}
	if flags == "" {
		flags = "-"
	}
	principal, _, _ := t.downstreamPeer(r.ci, r.ci.fs)
	e := &accessEntry{start: r.start, flags: flags, details: r.details, duration: time.Since(r.start), cluster: r.cluster,
		local: r.ci.local, remote: r.ci.remote, tcp: true, peer: principal, localSAN: r.ci.localSAN, fs: r.ci.fs, meta: r.ci.meta,
		src: r.src, dst: r.dst}
	if l := r.ci.fs["io.istio.local_principal"]; l != "" {
		e.localSAN = l
	}
	if r.meter != nil {
		e.received, e.sent = r.meter.read.Load(), r.meter.written.Load()
	}
	if al != nil {
		al.write(e)
	}
	t.sinks.writeConfigured(logs, e)
}

// tcpCluster is the cluster a tcp_proxy connection went to, as far as
// telemetry can tell: the one cluster, or the only weighted one (with
// several, the pick is not reported back; destination_service then
// falls back to the destination's canonical service).
func tcpCluster(tp *config.TCPProxy) string {
	switch {
	case tp.Cluster != "":
		return tp.Cluster
	case len(tp.Weighted) == 1:
		return tp.Weighted[0].Name
	}
	return ""
}
