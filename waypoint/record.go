package waypoint

import (
	"encoding/binary"
	"io"
	"maps"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// requestRecord is one request as the connection manager sees it, filled
// along its path (arrival, filters, router, response) and read once when
// it ends, by the metrics, the access log and the debug log alike.
type requestRecord struct {
	// x is what else the request allocates, in one object with the
	// record: they live as long as the record (about six allocations
	// per request fewer). Each is used once per request.
	x struct {
		body    countingBody
		view    view
		buf     bufferedBody
		watched watchedBody
		touch   touchBody
		replay  replayBody
		timer   streamTimer
	}
	t     *telemetry
	start time.Time
	ci    *connInfo
	req   *http.Request
	// method and path are the request's as it arrived.
	method, path string
	grpc         bool
	// head is the request head's size; body counts the request body read.
	head int64
	body *countingBody
	// meter counts an HTTP/1 connection's bytes (written0: what it had
	// written when the request arrived); stream is the HTTP/2 stream's
	// responder, which counts its own.
	meter    *meteredConn
	written0 int64
	stream   *h2Responder

	// Protocol is "http" (HTTP/1) or "http/2", downstream.
	Protocol string
	Status   int
	// Flags are Envoy's response flags, "-" for none.
	Flags string
	// GRPCStatus is the gRPC status code the client got ("" when the
	// response is not gRPC or said none): the upstream's grpc-status, or
	// the one a local reply to a gRPC request carries.
	GRPCStatus string
	// Details are Envoy's response_code_details, when more precise than
	// the flags say.
	Details string
	route   string
	service *ServiceInfo
	// Cluster is the route's cluster; ep is the endpoint of the last try
	// (nil when none was tried).
	Cluster string
	ep      *config.Endpoint
	// Retries counts the tries after the first.
	Retries int
	// upstreamErr: reading the upstream's body failed (UC, else a failed
	// copy is DC).
	upstreamErr atomic.Bool
	// trace is the request's span when its HCM traces (nil otherwise);
	// operation the route's decorator operation, the span's name.
	trace     *spanContext
	operation string
	// otelLogs are the HCM's OpenTelemetry access loggers.
	otelLogs []*config.OTelAccessLog
	// reqMsgs and respMsgs count a gRPC request's messages each way (nil
	// when the request is not gRPC).
	reqMsgs, respMsgs *grpcFrames
	// resp is the upstream's response (its headers and trailers for
	// %RESP% and %TRAILER%), nil for a local reply.
	resp *http.Response
	// hcm is the connection manager's config: its access logs and
	// istio.stats overrides (telemetry_config.go).
	hcm *config.HCM
	// meta is the request's dynamic metadata: nil while it is the
	// connection's (ci.meta), a copy once a filter sets a value.
	meta map[string]map[string]string
	// principal, src and dst are the downstream's principal and the two
	// peers, as finish found them (for value tags and FILTER_STATE's
	// peer objects).
	principal string
	src, dst  *Peer
}

// metadata is the request's dynamic metadata.
func (r *requestRecord) metadata() map[string]map[string]string {
	if r.meta != nil {
		return r.meta
	}
	return r.ci.meta
}

// setMeta records an RBAC shadow result in the request's dynamic
// metadata (namespace ns; keys after prefix).
func (r *requestRecord) setMeta(ns, prefix, result, policy string) {
	if r.meta == nil {
		r.meta = make(map[string]map[string]string, len(r.ci.meta)+1)
		maps.Copy(r.meta, r.ci.meta)
	}
	r.meta[ns] = withShadow(r.meta[ns], prefix, result, policy)
}

// beginRequest starts a request's record as the request arrives (its
// head and path as sent): ids given, body counted. c is the HTTP/1
// connection (nil on HTTP/2).
func (p *Proxy) beginRequest(c net.Conn, rw responder, ci *connInfo, req *http.Request, snap *config.Snapshot, hcm *config.HCM) *requestRecord {
	t := p.stats.tel
	r := &requestRecord{t: t, start: time.Now(), ci: ci, req: req, method: req.Method, path: req.RequestURI,
		grpc: isGRPCHeader(req.Header), head: headSize(req), meter: meterOf(c), Protocol: rw.protocol(), Flags: "-", hcm: hcm}
	if hcm.Tracing != nil {
		r.trace = startSpan(hcm.Tracing, req.Header)
	}
	r.otelLogs = hcm.OTelLogs
	ensureRequestIDs(req.Header)
	if r.meter != nil {
		r.written0 = r.meter.written.Load()
	}
	if h2, ok := rw.(*h2Responder); ok {
		r.stream = h2
	}
	if r.grpc {
		r.reqMsgs, r.respMsgs = &grpcFrames{}, &grpcFrames{}
	}
	if req.Body != nil && req.Body != http.NoBody {
		r.x.body = countingBody{ReadCloser: req.Body, frames: r.reqMsgs}
		r.body = &r.x.body
		req.Body = r.body
	}
	r.service = t.servicesOf(snap).hcms[hcm]
	return r
}

// local records a local reply.
func (r *requestRecord) local(status int, flag string) {
	r.Status, r.Flags = status, flag
	if r.grpc {
		r.GRPCStatus = strconv.Itoa(grpcStatusFor(status))
	}
}

// refused records a request the connection manager refused before its
// filters ran, with Envoy's details, and ends it.
func (r *requestRecord) refused(status int, details string) {
	r.Status, r.Details = status, details
	r.finish()
}

// malformedRequest answers a request that could not be parsed with
// status, closing the connection, and records it: Envoy's downstream
// protocol error (DPE), its head unknown.
func (p *Proxy) malformedRequest(c net.Conn, ci *connInfo, snap *config.Snapshot, hcm *config.HCM, status int) {
	req := &http.Request{Proto: "HTTP/1.1", Header: http.Header{}, Body: http.NoBody}
	r := &requestRecord{t: p.stats.tel, start: time.Now(), ci: ci, req: req, meter: meterOf(c), Protocol: "http",
		Status: status, Flags: "DPE", Details: "http1.codec_error", service: p.stats.tel.servicesOf(snap).hcms[hcm], hcm: hcm}
	if r.meter != nil {
		r.written0 = r.meter.written.Load()
	}
	switch status {
	case http.StatusRequestHeaderFieldsTooLarge:
		r.Details = "http1.headers_too_large"
	case http.StatusNotImplemented:
		r.Details = "http1.invalid_transfer_encoding"
	}
	writeLocal(c, nil, status, http.StatusText(status), nil, true)
	r.finish()
}

// upstream notes the cluster and endpoint of a try: the destination
// service becomes the cluster's.
func (r *requestRecord) upstream(c *config.Cluster, ep *config.Endpoint) {
	r.Cluster, r.ep = c.Name, ep
	if si := r.t.services.Load(); si != nil && si.clusters[c.Name] != nil {
		r.service = si.clusters[c.Name]
	} else if s := serviceFromName(c.Name); s != nil {
		r.service = s
	}
}

// watch wraps the upstream's response body to tell an upstream failure
// from a downstream one and to count a gRPC response's messages. The
// response's head fixes the labels of a gRPC stream's message counters:
// from here on they count live, as Envoy reports a long stream's
// messages while it runs.
func (r *requestRecord) watch(resp *http.Response) {
	r.resp = resp
	if r.x.watched.r == nil {
		r.x.watched = watchedBody{ReadCloser: resp.Body, r: r}
		resp.Body = &r.x.watched
	} else {
		resp.Body = &watchedBody{ReadCloser: resp.Body, r: r}
	}
	if r.grpc {
		r.t.attachMessages(r, nil)
	}
}

type watchedBody struct {
	io.ReadCloser
	r *requestRecord
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 && b.r.respMsgs != nil {
		b.r.respMsgs.scan(p[:n])
	}
	if err != nil && err != io.EOF {
		b.r.upstreamErr.Store(true)
	}
	return n, err
}

// copyFailed is the flag of a response that broke off while being
// relayed: UC when the upstream failed, DC when the downstream did.
func (r *requestRecord) copyFailed() string {
	if r.upstreamErr.Load() {
		return "UC"
	}
	return "DC"
}

// received is the request's size: its head and the body read.
func (r *requestRecord) received() int64 {
	n := r.head
	if r.body != nil {
		n += r.body.n.Load()
	}
	return n
}

// sent is the response's size: what the HTTP/1 connection wrote since
// the request arrived, or the HTTP/2 stream's body.
func (r *requestRecord) sent() int64 {
	switch {
	case r.stream != nil:
		return r.stream.bytesWritten()
	case r.meter != nil:
		return r.meter.written.Load() - r.written0
	}
	return 0
}

// grpcResponseStatus is grpc_response_status: what the client got, else
// Envoy's mapping of the HTTP status ("" for a request that is not
// gRPC).
func (r *requestRecord) grpcResponseStatus() string {
	if !r.grpc {
		return ""
	}
	return cmpOr(r.GRPCStatus, grpcStatusFromHeaders(r.Status, nil, nil))
}

// grpcFrames counts the gRPC messages in one direction of a stream: each
// is a 5-byte prefix (a compressed flag and a big-endian length) and that
// many bytes, read here as they pass, never held. One reader scans;
// the count is read from anywhere.
type grpcFrames struct {
	// skip is what is left of the current message; prefix holds the
	// part of a prefix seen so far (havePrefix bytes).
	skip       uint32
	prefix     [5]byte
	havePrefix int
	n          atomic.Int64
	// live, once set, gets the count as it grows (reported: what it has
	// got).
	live     atomic.Pointer[liveCounter]
	reported atomic.Int64
}

type liveCounter struct{ c prometheus.Counter }

// scan reads p, the next bytes of the stream.
func (f *grpcFrames) scan(p []byte) {
	counted := false
	for len(p) > 0 {
		if f.skip > 0 {
			k := uint32(len(p))
			if k > f.skip {
				k = f.skip
			}
			f.skip -= k
			p = p[k:]
			continue
		}
		k := copy(f.prefix[f.havePrefix:], p)
		f.havePrefix += k
		p = p[k:]
		if f.havePrefix == len(f.prefix) {
			f.havePrefix = 0
			f.skip = binary.BigEndian.Uint32(f.prefix[1:])
			f.n.Add(1)
			counted = true
		}
	}
	if counted {
		if l := f.live.Load(); l != nil {
			report(&f.n, &f.reported, l.c)
		}
	}
}

// attach starts counting into c, what was counted already included.
func (f *grpcFrames) attach(c prometheus.Counter) {
	if f.live.CompareAndSwap(nil, &liveCounter{c: c}) {
		report(&f.n, &f.reported, c)
	}
}

// flush reports what the live counter has not got yet.
func (f *grpcFrames) flush() {
	if l := f.live.Load(); l != nil {
		report(&f.n, &f.reported, l.c)
	}
}
