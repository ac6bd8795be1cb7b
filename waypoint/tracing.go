package waypoint

// Tracing as Envoy's HTTP connection manager does it with the Zipkin
// tracer (envoy.tracers.zipkin), which is what istiod configures for
// MeshConfig's zipkin extension providers: each request's trace context
// is read from W3C traceparent or B3 headers, the sampling decision is
// the incoming one when it says (traceparent's sampled flag,
// x-b3-sampled, x-b3-flags debug), else random_sampling and
// overall_sampling; the request goes on with the waypoint's own span id
// in traceparent and the x-b3 headers; a sampled request's server span,
// with Envoy's tags and the HCM's custom tags, is queued when the
// request ends and sent in batches (Zipkin API v2 JSON, POSTed to the
// collector cluster) by one goroutine, never on the request path. The
// queue is bounded: a span that does not fit is dropped and counted.

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/waypoint/config"
)

// Span export limits: queued spans, spans per report, and how long a
// span waits for its batch to fill (Envoy flushes every 5 s or at
// min_flush_spans 5; one second keeps traces timely at little cost).
const (
	spanQueue     = 4096
	spanBatch     = 100
	spanFlush     = time.Second
	reportTimeout = 5 * time.Second
)

// spanContext is a request's place in its trace.
type spanContext struct {
	tracing *config.Tracing
	// traceID is 32 hex digits (16 for a 64-bit B3 trace); parentID the
	// caller's span ("" for a root span); spanID the waypoint's.
	traceID, parentID, spanID string
	sampled                   bool
}

// startSpan reads a request's trace context, decides sampling and sets
// the headers the request goes on with.
func startSpan(tr *config.Tracing, h http.Header) *spanContext {
	s := &spanContext{tracing: tr, spanID: newID(8)}
	decided := false
	if tp := h.Values("Traceparent"); len(tp) == 1 && validTraceparent(tp[0]) {
		s.traceID, s.parentID = tp[0][3:35], tp[0][36:52]
		flags, _ := strconv.ParseUint(tp[0][53:], 16, 8)
		s.sampled, decided = flags&1 == 1, true
	} else {
		h.Del("Tracestate") // belongs to a trace we do not continue
		if t, sp := h.Get("X-B3-Traceid"), h.Get("X-B3-Spanid"); validHexID(t, 16, 32) && validHexID(sp, 16) {
			s.traceID, s.parentID = strings.ToLower(t), strings.ToLower(sp)
		}
		switch strings.ToLower(h.Get("X-B3-Sampled")) {
		case "1", "true":
			s.sampled, decided = true, true
		case "0", "false":
			decided = true
		}
		if h.Get("X-B3-Flags") == "1" {
			s.sampled, decided = true, true
		}
	}
	if s.traceID == "" {
		if tr.Zipkin != nil && !tr.Zipkin.TraceID128 {
			s.traceID = newID(8)
		} else {
			s.traceID = newID(16)
		}
	}
	if !decided {
		s.sampled = rollPercent(tr.RandomSampling/100) && rollPercent(tr.OverallSampling/100)
	}
	flag, b3 := "00", "0"
	if s.sampled {
		flag, b3 = "01", "1"
	}
	h.Set("Traceparent", "00-"+strings.Repeat("0", 32-len(s.traceID))+s.traceID+"-"+s.spanID+"-"+flag)
	h.Set("X-B3-Traceid", s.traceID)
	h.Set("X-B3-Spanid", s.spanID)
	if s.parentID != "" {
		h.Set("X-B3-Parentspanid", s.parentID)
	} else {
		h.Del("X-B3-Parentspanid")
	}
	h.Set("X-B3-Sampled", b3)
	h.Del("X-B3-Flags")
	h.Del("B3")
	return s
}

// validHexID: s is lower- or upper-case hex of one of the lengths, not
// all zeros.
func validHexID(s string, lengths ...int) bool {
	ok := false
	for _, n := range lengths {
		ok = ok || len(s) == n
	}
	if !ok || strings.Trim(s, "0") == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// zipkinSpan is a span in Zipkin's API v2 JSON.
type zipkinSpan struct {
	TraceID       string            `json:"traceId"`
	ParentID      string            `json:"parentId,omitempty"`
	ID            string            `json:"id"`
	Kind          string            `json:"kind"`
	Name          string            `json:"name"`
	Timestamp     int64             `json:"timestamp"`
	Duration      int64             `json:"duration"`
	LocalEndpoint *zipkinEndpoint   `json:"localEndpoint,omitempty"`
	Tags          map[string]string `json:"tags,omitempty"`
	// to is where the span goes.
	to *config.Zipkin
}

type zipkinEndpoint struct {
	ServiceName string `json:"serviceName,omitempty"`
}

// span is the finished request's server span, with Envoy's tags (its
// HTTP connection manager's and router's, as the Zipkin tracer reports
// them) and the HCM's custom tags.
func (r *requestRecord) span(status int, flags string, received, sent int64, dur time.Duration) *zipkinSpan {
	s, node := r.trace, r.t.node.Load()
	path, _, _ := strings.Cut(r.path, "?")
	url := "http://" + r.req.Host + r.path
	if max := s.tracing.MaxPathTagLength; len(url) > max {
		url = url[:max]
	}
	name := r.operation
	if name == "" {
		name = r.req.Host + path
	}
	tags := map[string]string{
		"component":          "proxy",
		"node_id":            node.ID,
		"guid:x-request-id":  r.req.Header.Get("X-Request-Id"),
		"http.url":           url,
		"http.method":        r.method,
		"http.protocol":      envoyProtocol(r.req),
		"downstream_cluster": cmpOr(r.req.Header.Get("X-Envoy-Downstream-Service-Cluster"), "-"),
		"user_agent":         cmpOr(r.req.Header.Get("User-Agent"), "-"),
		"request_size":       strconv.FormatInt(r.bodyReceived(received), 10),
		"response_size":      strconv.FormatInt(sent, 10),
		"http.status_code":   strconv.Itoa(status),
		"response_flags":     flags,
	}
	if r.ci.remote.IsValid() {
		tags["peer.address"] = r.ci.remote.Addr().String()
	}
	if r.ep != nil {
		tags["upstream_cluster"], tags["upstream_cluster.name"] = r.Cluster, r.Cluster
		tags["upstream_address"] = r.ep.String()
	}
	if r.grpc {
		if g := r.grpcResponseStatus(); g != "" {
			tags["grpc.status_code"] = g
		}
	}
	if status >= 500 || status == 0 {
		tags["error"] = "true"
	}
	for _, ct := range s.tracing.CustomTags {
		v := ct.Literal
		switch {
		case ct.Header != "":
			v = r.req.Header.Get(ct.Header)
		case ct.Env != "":
			v = os.Getenv(ct.Env)
		}
		if v == "" {
			v = ct.Default
		}
		if v != "" || ct.Header == "" && ct.Env == "" {
			tags[ct.Tag] = v
		}
	}
	return &zipkinSpan{TraceID: s.traceID, ParentID: s.parentID, ID: s.spanID, Kind: "SERVER", Name: name,
		Timestamp: r.start.UnixMicro(), Duration: max(dur.Microseconds(), 1),
		LocalEndpoint: &zipkinEndpoint{ServiceName: node.ServiceCluster}, Tags: tags, to: s.tracing.Zipkin}
}

// envoyProtocol is a request's protocol as Envoy names it.
func envoyProtocol(req *http.Request) string {
	if req.ProtoMajor == 2 {
		return "HTTP/2"
	}
	return req.Proto
}

// bodyReceived is the request body's size (Envoy's request_size tag).
func (r *requestRecord) bodyReceived(received int64) int64 {
	return max(received-r.head, 0)
}

// tracer sends spans to their collectors.
type tracer struct {
	p     *Proxy
	queue chan *zipkinSpan

	spansSent, spansDropped                      prometheus.Counter
	reportsSent, reportsFailed, reportsNoCluster prometheus.Counter
}

func newTracer(p *Proxy) *tracer {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "envoy_tracing_zipkin_" + name, Help: help})
	}
	return &tracer{p: p, queue: make(chan *zipkinSpan, spanQueue),
		spansSent:        c("spans_sent", "Spans sent to Zipkin collectors."),
		spansDropped:     c("spans_dropped", "Spans dropped because the export queue was full (Ambit's own)."),
		reportsSent:      c("reports_sent", "Reports (batches of spans) the collector accepted."),
		reportsFailed:    c("reports_failed", "Reports that could not be sent or were refused."),
		reportsNoCluster: c("reports_skipped_no_cluster", "Reports skipped because the collector cluster does not exist."),
	}
}

func (tr *tracer) collectors() []prometheus.Collector {
	return []prometheus.Collector{tr.spansSent, tr.spansDropped, tr.reportsSent, tr.reportsFailed, tr.reportsNoCluster}
}

// enqueue queues a span, or drops it when the queue is full.
func (tr *tracer) enqueue(s *zipkinSpan) {
	select {
	case tr.queue <- s:
	default:
		tr.spansDropped.Inc()
	}
}

// run sends queued spans in batches until ctx ends.
func (tr *tracer) run(ctx context.Context) {
	var batch []*zipkinSpan
	flush := time.NewTimer(spanFlush)
	flush.Stop()
	defer flush.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-tr.queue:
			if len(batch) == 0 {
				flush.Reset(spanFlush)
			}
			batch = append(batch, s)
			if len(batch) >= spanBatch {
				flush.Stop()
				tr.send(ctx, batch)
				batch = nil
			}
		case <-flush.C:
			tr.send(ctx, batch)
			batch = nil
		}
	}
}

// send posts a batch, one report per collector.
func (tr *tracer) send(ctx context.Context, batch []*zipkinSpan) {
	byDest := map[config.Zipkin][]*zipkinSpan{}
	for _, s := range batch {
		byDest[*s.to] = append(byDest[*s.to], s)
	}
	for dest, spans := range byDest {
		tr.report(ctx, dest, spans)
	}
}

func (tr *tracer) report(ctx context.Context, dest config.Zipkin, spans []*zipkinSpan) {
	p := tr.p
	snap := p.snap.Load()
	var cl *config.Cluster
	if snap != nil {
		cl = snap.Clusters[dest.Cluster]
	}
	if cl == nil {
		tr.reportsNoCluster.Inc()
		return
	}
	ep := p.pick(cl, p.clusterState(cl.Name), nil, false)
	if ep == nil {
		tr.reportsFailed.Inc()
		return
	}
	body, err := json.Marshal(spans)
	if err != nil {
		tr.reportsFailed.Inc()
		return
	}
	tr.spansSent.Add(float64(len(spans)))
	ci := &connInfo{fs: map[string]string{}}
	ctx, cancel := context.WithTimeout(ctx, reportTimeout)
	defer cancel()
	ctx = context.WithValue(ctx, dialKey{}, &dialInfo{snap: snap, cluster: cl, ep: ep, ci: ci})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+endpointHost(cl, ep, ci)+dest.Endpoint, bytes.NewReader(body))
	if err != nil {
		tr.reportsFailed.Inc()
		return
	}
	req.Host = dest.Hostname
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.transport.RoundTrip(req)
	if err != nil {
		tr.reportsFailed.Inc()
		p.log.Debug("send spans", logkey.Cluster, cl.Name, logkey.Error, err.Error())
		return
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		tr.reportsFailed.Inc()
		p.log.Debug("send spans", logkey.Cluster, cl.Name, logkey.Status, resp.StatusCode)
		return
	}
	tr.reportsSent.Inc()
}
