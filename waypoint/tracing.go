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
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

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
	// tracestate is the caller's W3C tracestate (OpenTelemetry only).
	tracestate string
	sampled    bool
}

// startSpan reads a request's trace context, decides sampling and sets
// the headers the request goes on with.
func startSpan(tr *config.Tracing, h http.Header) *spanContext {
	if tr.OTel != nil {
		return startW3CSpan(tr, h)
	}
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

// finishedSpan is a sampled request's server span as the request left
// it, turned into a provider's wire format off the request path.
type finishedSpan struct {
	ctx   *spanContext
	name  string
	start time.Time
	dur   time.Duration
	// service is the node's cluster (Zipkin's local service name).
	service string
	// tags in the order Envoy sets them, each key once.
	tags []config.Attribute
}

// setTag sets a tag, replacing one of the same key (as Envoy's spans).
func (s *finishedSpan) setTag(k, v string) {
	for i := range s.tags {
		if s.tags[i].Key == k {
			s.tags[i].Value = v
			return
		}
	}
	s.tags = append(s.tags, config.Attribute{Key: k, Value: v})
}

// span is the finished request's server span, with Envoy's tags (its
// HTTP connection manager's and router's, as its tracers report them)
// and the HCM's custom tags.
func (r *requestRecord) span(status int, flags string, received, sent int64, dur time.Duration) *finishedSpan {
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
	fs := &finishedSpan{ctx: s, name: name, start: r.start, dur: dur, service: node.ServiceCluster, tags: make([]config.Attribute, 0, 24)}
	fs.tags = append(fs.tags,
		config.Attribute{Key: "component", Value: "proxy"},
		config.Attribute{Key: "node_id", Value: node.ID},
		config.Attribute{Key: "guid:x-request-id", Value: r.req.Header.Get("X-Request-Id")},
		config.Attribute{Key: "http.url", Value: url},
		config.Attribute{Key: "http.method", Value: r.method},
		config.Attribute{Key: "downstream_cluster", Value: cmpOr(r.req.Header.Get("X-Envoy-Downstream-Service-Cluster"), "-")},
		config.Attribute{Key: "user_agent", Value: cmpOr(r.req.Header.Get("User-Agent"), "-")},
		config.Attribute{Key: "http.protocol", Value: envoyProtocol(r.req)},
	)
	if r.ci.remote.IsValid() {
		fs.tags = append(fs.tags, config.Attribute{Key: "peer.address", Value: r.ci.remote.Addr().String()})
	}
	fs.tags = append(fs.tags,
		config.Attribute{Key: "request_size", Value: strconv.FormatInt(r.bodyReceived(received), 10)},
		config.Attribute{Key: "response_size", Value: strconv.FormatInt(sent, 10)},
	)
	if r.ep != nil {
		fs.tags = append(fs.tags,
			config.Attribute{Key: "upstream_cluster", Value: r.Cluster},
			config.Attribute{Key: "upstream_cluster.name", Value: r.Cluster},
			config.Attribute{Key: "upstream_address", Value: r.ep.String()},
		)
	}
	fs.tags = append(fs.tags, config.Attribute{Key: "http.status_code", Value: strconv.Itoa(status)})
	if r.grpc {
		if g := r.grpcResponseStatus(); g != "" {
			fs.tags = append(fs.tags, config.Attribute{Key: "grpc.status_code", Value: g})
		}
	}
	fs.tags = append(fs.tags, config.Attribute{Key: "response_flags", Value: flags})
	if status >= 500 || status == 0 {
		fs.tags = append(fs.tags, config.Attribute{Key: "error", Value: "true"})
	}
	var e *accessEntry
	for i := range s.tracing.CustomTags {
		ct := &s.tracing.CustomTags[i]
		v := ct.Literal
		switch {
		case ct.Header != "":
			v = r.req.Header.Get(ct.Header)
		case ct.Env != "":
			v = os.Getenv(ct.Env)
		case ct.MetaNamespace != "":
			v = r.metadata()[ct.MetaNamespace][ct.MetaKey]
		case ct.Value != nil:
			// As Envoy's value tags: the access log's operators, a
			// missing value empty, and no tag when all is empty.
			if e == nil {
				e = r.accessEntry(flags, r.principal, received, sent, dur)
			}
			var buf [64]byte
			if b := e.appendText(buf[:0], ct.Value, true); len(b) > 0 {
				fs.setTag(ct.Tag, string(b))
			}
			continue
		}
		if v == "" {
			v = ct.Default
		}
		if v != "" || ct.Header == "" && ct.Env == "" && ct.MetaNamespace == "" {
			fs.setTag(ct.Tag, v)
		}
	}
	return fs
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
}

type zipkinEndpoint struct {
	ServiceName string `json:"serviceName,omitempty"`
}

func (s *finishedSpan) zipkin() *zipkinSpan {
	tags := make(map[string]string, len(s.tags))
	for _, t := range s.tags {
		tags[t.Key] = t.Value
	}
	return &zipkinSpan{TraceID: s.ctx.traceID, ParentID: s.ctx.parentID, ID: s.ctx.spanID, Kind: "SERVER", Name: s.name,
		Timestamp: s.start.UnixMicro(), Duration: max(s.dur.Microseconds(), 1),
		LocalEndpoint: &zipkinEndpoint{ServiceName: s.service}, Tags: tags}
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

// tracer sends spans to their collectors (and OpenTelemetry access-log
// records to theirs, otlp.go): requests queue what they recorded, one
// goroutine (run) batches and sends it.
type tracer struct {
	p     *Proxy
	queue chan *finishedSpan
	logs  chan *otelLogRecord
	// grpc are the OTLP/gRPC client connections by cluster and
	// authority, used by run's goroutine only.
	grpc map[otlpTarget]*grpc.ClientConn

	zipkin zipkinStats
	otel   otelStats
	als    alsStats
}

type zipkinStats struct {
	spansSent, spansDropped                      prometheus.Counter
	reportsSent, reportsFailed, reportsNoCluster prometheus.Counter
}

func newTracer(p *Proxy) *tracer {
	c := func(prefix, name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: prefix + name, Help: help})
	}
	const z = "envoy_tracing_zipkin_"
	tr := &tracer{p: p, queue: make(chan *finishedSpan, spanQueue), logs: make(chan *otelLogRecord, logQueue), grpc: map[otlpTarget]*grpc.ClientConn{},
		zipkin: zipkinStats{
			spansSent:        c(z, "spans_sent", "Spans sent to Zipkin collectors."),
			spansDropped:     c(z, "spans_dropped", "Spans dropped because the export queue was full (Ambit's own)."),
			reportsSent:      c(z, "reports_sent", "Reports (batches of spans) the collector accepted."),
			reportsFailed:    c(z, "reports_failed", "Reports that could not be sent or were refused."),
			reportsNoCluster: c(z, "reports_skipped_no_cluster", "Reports skipped because the collector cluster does not exist."),
		},
	}
	tr.otel = newOTelStats(c)
	tr.als = newALSStats(c)
	return tr
}

func (tr *tracer) collectors() []prometheus.Collector {
	z := tr.zipkin
	return append([]prometheus.Collector{z.spansSent, z.spansDropped, z.reportsSent, z.reportsFailed, z.reportsNoCluster},
		append(tr.otel.collectors(), tr.als.collectors()...)...)
}

// record queues a sampled request's span for its provider, or drops it
// when the queue is full.
func (tr *tracer) record(r *requestRecord, flags string, received, sent int64, dur time.Duration) {
	t := r.trace.tracing
	if t.Zipkin == nil && (t.OTel == nil || t.OTel.Exporter.Cluster == "") {
		return
	}
	// A full queue drops the span before it is built.
	if len(tr.queue) < cap(tr.queue) {
		select {
		case tr.queue <- r.span(r.Status, flags, received, sent, dur):
			return
		default:
		}
	}
	if t.OTel != nil {
		tr.otel.spansDropped.Inc()
	} else {
		tr.zipkin.spansDropped.Inc()
	}
}

// run sends queued spans and log records in batches until ctx ends.
func (tr *tracer) run(ctx context.Context) {
	defer func() {
		for _, cc := range tr.grpc {
			cc.Close()
		}
	}()
	spans, logs := newBatch[*finishedSpan](spanBatch), newBatch[*otelLogRecord](logBatch)
	defer spans.timer.Stop()
	defer logs.timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-tr.queue:
			if spans.add(s, spanFlush) {
				tr.send(ctx, spans.take(), false)
			}
		case <-spans.timer.C:
			tr.send(ctx, spans.take(), true)
		case l := <-tr.logs:
			if logs.add(l, cmpOr(l.to.FlushInterval, logFlush)) {
				tr.sendLogs(ctx, logs.take())
			}
		case <-logs.timer.C:
			tr.sendLogs(ctx, logs.take())
		}
	}
}

// batch collects queued items until it holds max or its timer, started
// by the first, fires.
type batch[T any] struct {
	items []T
	max   int
	timer *time.Timer
}

func newBatch[T any](max int) *batch[T] {
	b := &batch[T]{max: max, timer: time.NewTimer(time.Hour)}
	b.timer.Stop()
	return b
}

// add adds v; true when the batch is full (and its timer stopped).
func (b *batch[T]) add(v T, wait time.Duration) bool {
	if len(b.items) == 0 {
		b.timer.Reset(wait)
	}
	b.items = append(b.items, v)
	if len(b.items) < b.max {
		return false
	}
	b.timer.Stop()
	return true
}

func (b *batch[T]) take() []T {
	out := b.items
	b.items = nil
	return out
}

// send sends a batch, one report per collector.
// timer: the flush interval passed (else the batch is full).
func (tr *tracer) send(ctx context.Context, batch []*finishedSpan, timer bool) {
	tr.pruneGRPC()
	zipkin := map[config.Zipkin][]*zipkinSpan{}
	otel := map[*config.OTel][]*finishedSpan{}
	var order []*config.OTel
	for _, s := range batch {
		if o := s.ctx.tracing.OTel; o != nil {
			if otel[o] == nil {
				order = append(order, o)
			}
			otel[o] = append(otel[o], s)
			continue
		}
		z := *s.ctx.tracing.Zipkin
		zipkin[z] = append(zipkin[z], s.zipkin())
	}
	for dest, spans := range zipkin {
		tr.report(ctx, dest, spans)
	}
	if timer && len(order) > 0 {
		tr.otel.timerFlushed.Inc()
	}
	for _, o := range order {
		tr.exportSpans(ctx, o, otel[o])
	}
}

// collector picks an endpoint of a collector's cluster in the current
// snapshot; errNoCluster when the cluster does not exist.
func (tr *tracer) collector(name string) (*upstreamChoice, error) {
	p := tr.p
	snap := p.snap.Load()
	var cl *config.Cluster
	if snap != nil {
		cl = snap.Clusters[name]
	}
	if cl == nil {
		return nil, fmt.Errorf("collector cluster %s: %w", name, errNoCluster)
	}
	ep := p.pick(cl, p.clusterState(cl.Name), nil, false)
	if ep == nil {
		return nil, fmt.Errorf("collector cluster %s: %w", name, ErrNoHealthyUpstream)
	}
	return &upstreamChoice{snap: snap, cluster: cl, ep: ep}, nil
}

// upstreamChoice is a collector's cluster and the endpoint picked.
type upstreamChoice struct {
	snap    *config.Snapshot
	cluster *config.Cluster
	ep      *config.Endpoint
}

// errNoCluster: a collector's cluster is not in the configuration.
var errNoCluster = errors.New("no such cluster")

// post sends one report to an HTTP collector: the waypoint's own
// upstream connection to an endpoint of the cluster.
func (tr *tracer) post(ctx context.Context, c *upstreamChoice, host, path string, timeout time.Duration, header http.Header, body []byte) error {
	snap, cl, ep := c.snap, c.cluster, c.ep
	cluster := cl.Name
	if timeout <= 0 {
		timeout = reportTimeout
	}
	ci := &connInfo{fs: map[string]string{}}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ctx = context.WithValue(ctx, dialKey{}, &dialInfo{snap: snap, cluster: cl, ep: ep, ci: ci})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+endpointHost(cl, ep, ci)+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("post to %s: %w", cluster, err)
	}
	req.Host = host
	req.Header = header
	resp, err := tr.p.transportFor(cl, req, "").RoundTrip(req)
	if err != nil {
		return fmt.Errorf("post to %s: %w", cluster, err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("post to %s: status %d", cluster, resp.StatusCode)
	}
	return nil
}

func (tr *tracer) report(ctx context.Context, dest config.Zipkin, spans []*zipkinSpan) {
	c, err := tr.collector(dest.Cluster)
	if errors.Is(err, errNoCluster) {
		tr.zipkin.reportsNoCluster.Inc()
		return
	}
	var body []byte
	if err == nil {
		body, err = json.Marshal(spans)
	}
	if err == nil {
		tr.zipkin.spansSent.Add(float64(len(spans)))
		h := http.Header{}
		for _, a := range dest.Headers.List() {
			h.Set(a.Key, a.Value)
		}
		h.Set("Content-Type", "application/json")
		err = tr.post(ctx, c, dest.Hostname, dest.Endpoint, dest.Timeout, h, body)
	}
	if err != nil {
		tr.zipkin.reportsFailed.Inc()
		tr.p.log.Debug("send spans", logkey.Cluster, dest.Cluster, logkey.Error, err.Error())
		return
	}
	tr.zipkin.reportsSent.Inc()
}
