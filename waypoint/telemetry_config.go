package waypoint

// What the xDS says of a chain's telemetry, applied: the istio.stats
// filter's overrides (config.Stats: metrics dropped, tags removed, tags
// set from a supported CEL expression) and the chain's configured access
// logs (accesslog.go). A removed tag keeps its label with an empty
// value, which Prometheus treats as absent.

import (
	"strings"
	"time"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// labelIndex is each label's position in httpLabels (peerLabels are its
// prefix).
var labelIndex = func() map[string]int {
	m := make(map[string]int, len(httpLabels))
	for i, l := range httpLabels {
		m[l] = i
	}
	return m
}()

// Istio's metric names as the stats config names them.
const (
	metricRequests  = "requests_total"
	metricDuration  = "request_duration_milliseconds"
	metricReqBytes  = "request_bytes"
	metricRespBytes = "response_bytes"
	metricOpened    = "tcp_connections_opened_total"
	metricClosed    = "tcp_connections_closed_total"
	metricSent      = "tcp_sent_bytes_total"
	metricReceived  = "tcp_received_bytes_total"
	metricReqMsgs   = "request_messages_total"
	metricRespMsgs  = "response_messages_total"
)

// statsOf is a connection manager's stats config (nil: none, Istio's
// defaults).
func statsOf(h *config.HCM) *config.Stats {
	if h == nil {
		return nil
	}
	return h.Stats
}

// evalStat is a tag override's value for request r (nil for a TCP
// connection: request attributes are unknown).
func evalStat(e *config.StatExpr, r *requestRecord) string {
	if e.Kind == "literal" {
		return e.Literal
	}
	if r == nil {
		return unknown
	}
	switch e.Kind {
	case "request.host":
		return r.req.Host
	case "request.method":
		return r.method
	case "request.path":
		return r.path
	case "request.url_path":
		p, _, _ := strings.Cut(r.path, "?")
		return p
	case "request.scheme":
		return "http"
	case "request.protocol":
		return r.req.Proto
	case "request.header":
		return r.req.Header.Get(e.Header)
	case "response.code":
		return statusCode(r.Status)
	case "response.grpc_status":
		return r.grpcResponseStatus()
	}
	return unknown
}

// overridden is vals with metric's overrides applied (a copy).
func overridden(st *config.Stats, metric string, vals []string, r *requestRecord) []string {
	lv := append([]string(nil), vals...)
	for _, tag := range st.Remove[metric] {
		if i, ok := labelIndex[tag]; ok && i < len(lv) {
			lv[i] = ""
		}
	}
	for tag, e := range st.Values[metric] {
		if i, ok := labelIndex[tag]; ok && i < len(lv) {
			lv[i] = evalStat(e, r)
		}
	}
	return lv
}

// observeRequest records a request's four metrics under st's overrides.
func (t *telemetry) observeRequest(st *config.Stats, r *requestRecord, vals *requestLabels, dur time.Duration, received, sent int64) {
	if !st.Drop[metricRequests] {
		t.requests.WithLabelValues(overridden(st, metricRequests, vals[:], r)...).Inc()
	}
	if !st.Drop[metricDuration] {
		t.duration.WithLabelValues(overridden(st, metricDuration, vals[:], r)...).Observe(float64(dur.Milliseconds()))
	}
	if !st.Drop[metricReqBytes] {
		t.reqBytes.WithLabelValues(overridden(st, metricReqBytes, vals[:], r)...).Observe(float64(received))
	}
	if !st.Drop[metricRespBytes] {
		t.respBytes.WithLabelValues(overridden(st, metricRespBytes, vals[:], r)...).Observe(float64(sent))
	}
}
