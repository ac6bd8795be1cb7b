package config

// The istio.stats filter's config (istio.io/api envoy/extensions/stats
// PluginConfig, as Istio's stats filter reads it): per metric, drop it,
// remove tags, or set a tag's value from a CEL expression. The waypoint
// evaluates the expressions Telemetry users write most (request and
// response attributes, literals) and only for Istio's standard labels;
// anything else is a warning and that override is not applied.

import (
	"fmt"
	"sort"
	"strings"
	"time"

	udpatype "github.com/cncf/xds/go/udpa/type/v1"
	xdstype "github.com/cncf/xds/go/xds/type/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"istio.io/api/envoy/extensions/stats"
)

// Stats is the istio.stats filter's config.
type Stats struct {
	// Drop are the metrics not reported (Istio's names without the
	// istio_ prefix: requests_total, request_duration_milliseconds...).
	Drop map[string]bool
	// Remove are the tags removed per metric.
	Remove map[string][]string
	// Values are tags set per metric: tag -> expression.
	Values map[string]map[string]*StatExpr
	// Overrides: any of Drop, Remove, Values is set.
	Overrides bool
	// TCPReportingDuration is how often open TCP connections report (0:
	// Istio's default).
	TCPReportingDuration time.Duration
}

// StatExpr is a supported CEL value expression.
type StatExpr struct {
	// Source is the expression as written.
	Source string
	// Literal (Kind "literal"), or an attribute: "request.host",
	// "request.method", "request.path", "request.url_path",
	// "request.scheme", "request.protocol", "request.header" (Header),
	// "response.code", "response.grpc_status".
	Kind, Literal, Header string
}

// standardTags are the labels of Istio's metrics a tag override may set.
var standardTags = map[string]bool{
	"reporter": true, "source_workload": true, "source_workload_namespace": true, "source_principal": true,
	"source_app": true, "source_version": true, "source_canonical_service": true, "source_canonical_revision": true,
	"source_cluster": true, "destination_workload": true, "destination_workload_namespace": true,
	"destination_principal": true, "destination_app": true, "destination_version": true, "destination_service": true,
	"destination_service_name": true, "destination_service_namespace": true, "destination_canonical_service": true,
	"destination_canonical_revision": true, "destination_cluster": true, "request_protocol": true,
	"response_flags": true, "connection_security_policy": true, "response_code": true, "grpc_response_status": true,
}

// statsMetrics are the metric names the config may name.
var statsMetrics = map[string]bool{
	"requests_total": true, "request_duration_milliseconds": true, "request_bytes": true, "response_bytes": true,
	"tcp_connections_opened_total": true, "tcp_connections_closed_total": true, "tcp_sent_bytes_total": true,
	"tcp_received_bytes_total": true, "request_messages_total": true, "response_messages_total": true,
}

// ParseStatExpr reads a CEL value expression the waypoint supports.
func ParseStatExpr(s string) (*StatExpr, error) {
	e := strings.TrimSpace(s)
	out := &StatExpr{Source: s}
	switch {
	case len(e) >= 2 && (e[0] == '\'' && e[len(e)-1] == '\'' || e[0] == '"' && e[len(e)-1] == '"'):
		out.Kind, out.Literal = "literal", e[1:len(e)-1]
	case e == "request.host", e == "request.method", e == "request.path", e == "request.url_path",
		e == "request.scheme", e == "request.protocol", e == "response.code", e == "response.grpc_status":
		out.Kind = e
	case strings.HasPrefix(e, "request.headers[") && strings.HasSuffix(e, "]"):
		h := strings.TrimSuffix(strings.TrimPrefix(e, "request.headers["), "]")
		if len(h) < 2 || !(h[0] == '\'' && h[len(h)-1] == '\'' || h[0] == '"' && h[len(h)-1] == '"') {
			return nil, fmt.Errorf("expression %q: want request.headers['name']", s)
		}
		out.Kind, out.Header = "request.header", strings.ToLower(h[1:len(h)-1])
	default:
		return nil, fmt.Errorf("expression %q not supported (literals, request.host, request.method, request.path, "+
			"request.url_path, request.scheme, request.protocol, request.headers['name'], response.code, response.grpc_status are)", s)
	}
	return out, nil
}

// buildStats reads the istio.stats filter's config (a stats.PluginConfig
// Any, or a TypedStruct of one).
func buildStats(a *anypb.Any) (*Stats, []string, error) {
	pc := &stats.PluginConfig{}
	var value *structpb.Struct
	switch {
	case strings.HasSuffix(a.GetTypeUrl(), "/xds.type.v3.TypedStruct"):
		var ts xdstype.TypedStruct
		if err := a.UnmarshalTo(&ts); err != nil {
			return nil, nil, fmt.Errorf("stats config: %w", err)
		}
		value = ts.GetValue()
	case strings.HasSuffix(a.GetTypeUrl(), "/udpa.type.v1.TypedStruct"):
		var ts udpatype.TypedStruct
		if err := a.UnmarshalTo(&ts); err != nil {
			return nil, nil, fmt.Errorf("stats config: %w", err)
		}
		value = ts.GetValue()
	}
	if value != nil {
		js, err := protojson.Marshal(value)
		if err != nil {
			return nil, nil, fmt.Errorf("stats config: %w", err)
		}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(js, pc); err != nil {
			return nil, nil, fmt.Errorf("stats config: %w", err)
		}
	} else if err := a.UnmarshalTo(pc); err != nil {
		return nil, nil, fmt.Errorf("stats config: %w", err)
	}
	out := &Stats{Drop: map[string]bool{}, Remove: map[string][]string{}, Values: map[string]map[string]*StatExpr{}}
	if d := pc.GetTcpReportingDuration(); d != nil {
		out.TCPReportingDuration = d.AsDuration()
	}
	var warns []string
	for _, m := range pc.GetMetrics() {
		names := []string{m.GetName()}
		if m.GetName() == "" {
			names = names[:0]
			for n := range statsMetrics {
				names = append(names, n)
			}
			sort.Strings(names)
		}
		for _, name := range names {
			name = strings.TrimPrefix(name, "istio_")
			if !statsMetrics[name] {
				warns = append(warns, fmt.Sprintf("stats metric %s: custom metrics are not supported; ignored", name))
				continue
			}
			if m.GetDrop() {
				out.Drop[name] = true
			}
			if len(m.GetTagsToRemove()) > 0 {
				out.Remove[name] = append(out.Remove[name], m.GetTagsToRemove()...)
			}
			tags := make([]string, 0, len(m.GetDimensions()))
			for t := range m.GetDimensions() {
				tags = append(tags, t)
			}
			sort.Strings(tags)
			for _, tag := range tags {
				if !standardTags[tag] {
					warns = append(warns, fmt.Sprintf("stats metric %s: tag %s: only Istio's standard labels can be set, new labels are not supported; ignored", name, tag))
					continue
				}
				e, err := ParseStatExpr(m.GetDimensions()[tag])
				if err != nil {
					warns = append(warns, fmt.Sprintf("stats metric %s: tag %s: %v; ignored", name, tag, err))
					continue
				}
				if out.Values[name] == nil {
					out.Values[name] = map[string]*StatExpr{}
				}
				out.Values[name][tag] = e
			}
		}
	}
	out.Overrides = len(out.Drop) > 0 || len(out.Remove) > 0 || len(out.Values) > 0
	if len(pc.GetDefinitions()) > 0 {
		warns = append(warns, "stats definitions (custom metrics) are not supported; ignored")
	}
	return out, warns, nil
}
