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
// drops and counts. The format strings render as the file access logs'
// do (logformat.go).

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	collectorlogs "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"

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
// (e its access-log entry) and queues them.
func (tr *tracer) logRequest(r *requestRecord, e *accessEntry) {
	for _, l := range r.otelLogs {
		if len(tr.logs) == cap(tr.logs) {
			tr.als.dropped.Inc()
			continue
		}
		rec := &logspb.LogRecord{TimeUnixNano: uint64(r.start.UnixNano()), Attributes: e.keyValues(l.Attributes)}
		if l.Body != nil {
			rec.Body = e.anyValue(l.Body)
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

// keyValues are an OpenTelemetry log's attributes for e: their format
// strings rendered as the file logs' text (logformat.go).
func (e *accessEntry) keyValues(kvs []config.LogKeyValue) []*commonpb.KeyValue {
	if len(kvs) == 0 {
		return nil
	}
	out := make([]*commonpb.KeyValue, len(kvs))
	for i, kv := range kvs {
		out[i] = &commonpb.KeyValue{Key: kv.Key, Value: e.anyValue(kv.Value)}
	}
	return out
}

func (e *accessEntry) anyValue(lv *config.LogValue) *commonpb.AnyValue {
	switch {
	case lv.Format != nil:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: e.formatString(lv.Format)}}
	case lv.KV != nil:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_KvlistValue{KvlistValue: &commonpb.KeyValueList{Values: e.keyValues(lv.KV)}}}
	case lv.Array != nil:
		arr := &commonpb.ArrayValue{Values: make([]*commonpb.AnyValue, len(lv.Array))}
		for i, v := range lv.Array {
			arr.Values[i] = e.anyValue(v)
		}
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: arr}}
	}
	return lv.Const
}
