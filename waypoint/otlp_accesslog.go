package waypoint

// OpenTelemetry access logs as Envoy's envoy.access_loggers.open_telemetry
// writes them, which istiod configures for MeshConfig's envoyOtelAls
// providers: when an HTTP request ends, each of its connection
// manager's OpenTelemetry loggers makes one LogRecord (time the
// request's start, body and attributes the logger's format strings
// evaluated against the request, trace and span id the request's span
// when it has one) and queues it; the tracer's goroutine sends them in
// batches as an ExportLogsServiceRequest (one ResourceLogs per logger:
// the built-in labels log_name, zone_name, cluster_name and node_name
// unless disabled, then resource_attributes) to the logger's collector,
// over OTLP/gRPC or OTLP/HTTP as the tracer sends spans. A full queue
// drops and counts. Request-side operators and what the request record
// holds are evaluated; response headers and trailers (%RESP%,
// %TRAILER%) are not recorded and render "-".

import (
	"context"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	collectorlogs "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/grpc/codes"

	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/internal/version"
	"github.com/ambitmesh/ambit/waypoint/config"
)

// Log export limits: queued records, records per export, and how long a
// record waits for its batch (Envoy's buffer_flush_interval default).
const (
	logQueue = 4096
	logBatch = 100
	logFlush = time.Second
)

// otelLogRecord is a record for a logger.
type otelLogRecord struct {
	to  *config.OTelAccessLog
	rec *logspb.LogRecord
}

// alsStats are Envoy's access_logs.open_telemetry_access_log counters,
// plus the waypoint's own for failed exports.
type alsStats struct {
	written, dropped                  prometheus.Counter
	reportsOK, reportsFail, noCluster prometheus.Counter
}

func newALSStats(c func(prefix, name, help string) prometheus.Counter) alsStats {
	const a = "envoy_access_logs_open_telemetry_access_log_"
	return alsStats{
		written:     c(a, "logs_written", "Log records handed to OpenTelemetry exporters."),
		dropped:     c(a, "logs_dropped", "Log records dropped because the export queue was full."),
		reportsOK:   c(a, "reports_success", "Log exports the collector accepted (Ambit's own)."),
		reportsFail: c(a, "reports_failed", "Log exports that failed or were refused (Ambit's own)."),
		noCluster:   c(a, "reports_skipped_no_cluster", "Log exports skipped because the collector cluster does not exist (Ambit's own)."),
	}
}

func (s *alsStats) collectors() []prometheus.Collector {
	return []prometheus.Collector{s.written, s.dropped, s.reportsOK, s.reportsFail, s.noCluster}
}

// logRequest makes the request's records for its OpenTelemetry loggers
// and queues them.
func (tr *tracer) logRequest(r *requestRecord, flags string, received, sent int64, dur time.Duration) {
	if len(r.otelLogs) == 0 {
		return
	}
	details := r.Details
	if details == "" {
		details = detailsFor(flags, r.ep != nil)
	}
	v := &logView{r: r, flags: flags, details: details, received: received, sent: sent, dur: dur}
	for _, l := range r.otelLogs {
		if len(tr.logs) == cap(tr.logs) {
			tr.als.dropped.Inc()
			continue
		}
		rec := &logspb.LogRecord{TimeUnixNano: uint64(r.start.UnixNano()), Attributes: v.keyValues(l.Attributes)}
		if l.Body != nil {
			rec.Body = v.value(l.Body)
		}
		if s := r.trace; s != nil {
			rec.TraceId, rec.SpanId = hexBytes(s.traceID, 16), hexBytes(s.spanID, 8)
		}
		select {
		case tr.logs <- &otelLogRecord{to: l, rec: rec}:
		default:
			tr.als.dropped.Inc()
		}
	}
}

// sendLogs sends a batch, one export per logger.
func (tr *tracer) sendLogs(ctx context.Context, batch []*otelLogRecord) {
	tr.pruneGRPC()
	by := map[*config.OTelAccessLog][]*logspb.LogRecord{}
	var order []*config.OTelAccessLog
	for _, l := range batch {
		if by[l.to] == nil {
			order = append(order, l.to)
		}
		by[l.to] = append(by[l.to], l.rec)
	}
	for _, l := range order {
		tr.exportLogs(ctx, l, by[l])
	}
}

func (tr *tracer) exportLogs(ctx context.Context, l *config.OTelAccessLog, recs []*logspb.LogRecord) {
	st := &tr.als
	e := &l.Exporter
	if !tr.hasCluster(e.Cluster) {
		st.noCluster.Inc()
		return
	}
	var res []*commonpb.KeyValue
	if l.BuiltinLabels {
		node := tr.p.stats.tel.node.Load()
		var id, cluster string
		if node != nil {
			id, cluster = node.ID, node.ServiceCluster
		}
		res = attributes([]config.Attribute{{Key: "log_name", Value: l.Name}, {Key: "zone_name", Value: ""},
			{Key: "cluster_name", Value: cluster}, {Key: "node_name", Value: id}})
	}
	res = append(res, attributes(l.Resource)...)
	req := &collectorlogs.ExportLogsServiceRequest{ResourceLogs: []*logspb.ResourceLogs{{
		Resource:  &resourcepb.Resource{Attributes: res},
		ScopeLogs: []*logspb.ScopeLogs{{Scope: &commonpb.InstrumentationScope{Name: config.SDKName, Version: version.Get().Version}, LogRecords: recs}},
	}}}
	st.written.Add(float64(len(recs)))
	var err error
	if e.GRPC {
		err = tr.invoke(ctx, e, "/opentelemetry.proto.collector.logs.v1.LogsService/Export", req, &collectorlogs.ExportLogsServiceResponse{})
	} else {
		err = tr.postProto(ctx, e, req)
	}
	if err != nil {
		st.reportsFail.Inc()
		tr.p.log.Debug("export access logs", logkey.Cluster, e.Cluster, logkey.Error, err.Error())
		return
	}
	st.reportsOK.Inc()
}

// logView is what a finished request's format strings read.
type logView struct {
	r                *requestRecord
	flags, details   string
	received, sent   int64
	dur              time.Duration
	hostname         string
	hostnameResolved bool
}

func (v *logView) keyValues(kvs []config.LogKeyValue) []*commonpb.KeyValue {
	if len(kvs) == 0 {
		return nil
	}
	out := make([]*commonpb.KeyValue, len(kvs))
	for i, kv := range kvs {
		out[i] = &commonpb.KeyValue{Key: kv.Key, Value: v.value(kv.Value)}
	}
	return out
}

func (v *logView) value(lv *config.LogValue) *commonpb.AnyValue {
	switch {
	case lv.Format != nil:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v.format(lv.Format)}}
	case lv.KV != nil:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_KvlistValue{KvlistValue: &commonpb.KeyValueList{Values: v.keyValues(lv.KV)}}}
	case lv.Array != nil:
		arr := &commonpb.ArrayValue{Values: make([]*commonpb.AnyValue, len(lv.Array))}
		for i, e := range lv.Array {
			arr.Values[i] = v.value(e)
		}
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: arr}}
	}
	return lv.Const
}

// format renders a format string; an operator without a value is "-",
// as Envoy's.
func (v *logView) format(f *config.LogFormat) string {
	if len(f.Parts) == 1 && f.Parts[0].Op == "" {
		return f.Parts[0].Literal
	}
	b := make([]byte, 0, 64)
	for i := range f.Parts {
		p := &f.Parts[i]
		if p.Op == "" {
			b = append(b, p.Literal...)
			continue
		}
		s, ok := v.operator(p)
		if !ok || s == "" {
			s = "-"
		}
		if p.Max > 0 && len(s) > p.Max {
			s = s[:p.Max]
		}
		b = append(b, s...)
	}
	return string(b)
}

func addrValue(a netip.AddrPort, port bool) (string, bool) {
	if !a.IsValid() {
		return "", false
	}
	if port {
		return a.String(), true
	}
	return a.Addr().String(), true
}

// operator is one command operator's value.
func (v *logView) operator(p *config.LogPart) (string, bool) {
	r := v.r
	switch p.Op {
	case "REQ":
		if s, ok := v.header(p.Arg); ok {
			return s, true
		}
		if p.Alt != "" {
			return v.header(p.Alt)
		}
		return "", false
	case "REQ_WITHOUT_QUERY":
		s, ok := v.header(p.Arg)
		if !ok && p.Alt != "" {
			s, ok = v.header(p.Alt)
		}
		s, _, _ = strings.Cut(s, "?")
		return s, ok
	case "START_TIME":
		return config.Strftime(r.start, p.Arg), true
	case "PROTOCOL":
		return envoyProtocol(r.req), true
	case "RESPONSE_CODE":
		return strconv.Itoa(r.Status), true
	case "RESPONSE_FLAGS":
		return v.flags, true
	case "RESPONSE_CODE_DETAILS":
		return v.details, v.details != ""
	case "BYTES_RECEIVED":
		return strconv.FormatInt(v.received, 10), true
	case "BYTES_SENT":
		return strconv.FormatInt(v.sent, 10), true
	case "DURATION":
		return strconv.FormatInt(v.dur.Milliseconds(), 10), true
	case "UPSTREAM_HOST", "UPSTREAM_REMOTE_ADDRESS":
		if r.ep == nil {
			return "", false
		}
		return r.ep.String(), true
	case "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT":
		if r.ep == nil {
			return "", false
		}
		return r.ep.Address.Addr().String(), r.ep.Address.IsValid()
	case "UPSTREAM_CLUSTER", "UPSTREAM_CLUSTER_RAW":
		return r.Cluster, r.ep != nil && r.Cluster != ""
	case "DOWNSTREAM_LOCAL_ADDRESS":
		return addrValue(r.ci.local, true)
	case "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":
		return addrValue(r.ci.local, false)
	case "DOWNSTREAM_LOCAL_PORT":
		return strconv.Itoa(int(r.ci.local.Port())), r.ci.local.IsValid()
	case "DOWNSTREAM_REMOTE_PORT":
		return strconv.Itoa(int(r.ci.remote.Port())), r.ci.remote.IsValid()
	case "DOWNSTREAM_REMOTE_ADDRESS", "DOWNSTREAM_DIRECT_REMOTE_ADDRESS":
		return addrValue(r.ci.remote, true)
	case "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT":
		return addrValue(r.ci.remote, false)
	case "DOWNSTREAM_PEER_URI_SAN":
		principal, _, _ := r.t.downstreamPeer(r.ci, r.ci.fs)
		return principal, principal != ""
	case "ROUTE_NAME":
		return r.route, r.route != ""
	case "GRPC_STATUS", "GRPC_STATUS_NUMBER":
		g := r.grpcResponseStatus()
		if !r.grpc || g == "" {
			return "", false
		}
		if p.Op == "GRPC_STATUS" {
			if n, err := strconv.Atoi(g); err == nil {
				return codes.Code(n).String(), true
			}
		}
		return g, true
	case "TRACE_ID":
		if r.trace == nil {
			return "", false
		}
		return r.trace.traceID, true
	case "HOSTNAME":
		if !v.hostnameResolved {
			v.hostname, _ = os.Hostname()
			v.hostnameResolved = true
		}
		return v.hostname, v.hostname != ""
	case "ENVIRONMENT":
		return os.LookupEnv(p.Arg)
	case "FILTER_STATE":
		s, ok := r.ci.fs[p.Arg]
		return s, ok
	case "UPSTREAM_REQUEST_ATTEMPT_COUNT":
		if r.ep == nil {
			return "0", true
		}
		return strconv.Itoa(r.Retries + 1), true
	}
	// RESP, TRAILER, CONNECTION_TERMINATION_DETAILS,
	// UPSTREAM_TRANSPORT_FAILURE_REASON, UPSTREAM_LOCAL_ADDRESS,
	// REQUESTED_SERVER_NAME and Envoy's operators the waypoint does not
	// record (config.LogFormat.Unrecorded): no value.
	return "", false
}

// header is a request header as Envoy's %REQ% reads it, pseudo-headers
// included.
func (v *logView) header(name string) (string, bool) {
	r := v.r
	switch name {
	case ":authority", "host":
		return r.req.Host, r.req.Host != ""
	case ":path":
		return r.path, r.path != ""
	case ":method":
		return r.method, r.method != ""
	case ":scheme":
		return "http", true
	}
	vs := r.req.Header.Values(name)
	if len(vs) == 0 {
		return "", false
	}
	return strings.Join(vs, ","), true
}
