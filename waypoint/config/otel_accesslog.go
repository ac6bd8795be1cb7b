//lint:file-ignore SA1019 Istio writes common_config (deprecated in Envoy, still honoured)
package config

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	otelalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/open_telemetry/v3"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
)

// OTelAccessLog is envoy.access_loggers.open_telemetry (what istiod
// configures for MeshConfig's envoyOtelAls providers): one OTLP
// LogRecord per request, body and attributes from Envoy format
// strings, sent in batches to a collector over gRPC or HTTP.
type OTelAccessLog struct {
	// Name is the log_name (a built-in resource label).
	Name string
	// BuiltinLabels: the resource carries log_name, zone_name,
	// cluster_name and node_name before Resource (disable_builtin_labels
	// unset).
	BuiltinLabels bool
	Resource      []Attribute
	// Body is nil when the config sets none.
	Body       *LogValue
	Attributes []LogKeyValue
	Exporter   OTLPExporter
	// FlushInterval is buffer_flush_interval: how long a record waits
	// for its batch (0: the waypoint's default, Envoy's 1 s).
	FlushInterval time.Duration
}

// LogValue is an OTLP AnyValue whose strings are format strings: one of
// Format, KV, Array, or Const (a non-string value sent as it is).
type LogValue struct {
	Format *LogFormat
	KV     []LogKeyValue
	Array  []*LogValue
	Const  *commonpb.AnyValue
}

// LogKeyValue is a key and a formatted value.
type LogKeyValue struct {
	Key   string
	Value *LogValue
}

// buildAccessLogs reads an HTTP connection manager's access_log: the
// OpenTelemetry loggers. Other loggers are left to the waypoint's own
// JSON access log (Run's AccessLog), not read here; a logger
// with a filter the waypoint cannot evaluate logs nothing, with a
// warning; a malformed OpenTelemetry logger refuses the listener.
func buildAccessLogs(logs []*accesslogv3.AccessLog) ([]*OTelAccessLog, []string, error) {
	var out []*OTelAccessLog
	var warns []string
	for _, l := range logs {
		t := innerType(l.GetTypedConfig())
		if t != "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig" {
			continue
		}
		if l.GetFilter() != nil {
			warns = append(warns, fmt.Sprintf("access log %s: filters not supported; it logs nothing", l.GetName()))
			continue
		}
		var c otelalsv3.OpenTelemetryAccessLogConfig
		if err := anyTo(l.GetTypedConfig(), &c); err != nil {
			return nil, nil, fmt.Errorf("access log %s: %w", l.GetName(), err)
		}
		a, w, err := buildOTelAccessLog(&c)
		if err != nil {
			return nil, nil, fmt.Errorf("access log %s: %w", l.GetName(), err)
		}
		warns = append(warns, w...)
		if a != nil {
			out = append(out, a)
		}
	}
	return out, warns, nil
}

func buildOTelAccessLog(c *otelalsv3.OpenTelemetryAccessLogConfig) (*OTelAccessLog, []string, error) {
	if err := c.Validate(); err != nil {
		return nil, nil, err
	}
	cc := c.GetCommonConfig()
	n := 0
	for _, set := range []bool{cc.GetGrpcService() != nil, c.GetGrpcService() != nil, c.GetHttpService() != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, nil, fmt.Errorf("want exactly one of common_config.grpc_service, grpc_service and http_service, got %d", n)
	}
	out := &OTelAccessLog{Name: cmpOr(c.GetLogName(), cc.GetLogName()), BuiltinLabels: !c.GetDisableBuiltinLabels(),
		FlushInterval: dur(firstSet(c.GetBufferFlushInterval(), cc.GetBufferFlushInterval()))}
	var warns []string
	switch g := firstSet(c.GetGrpcService(), cc.GetGrpcService()); {
	case g != nil:
		e, err := grpcExporter(g)
		if err != nil {
			return nil, nil, err
		}
		if e == nil {
			return nil, []string{fmt.Sprintf("access log %s: grpc_service without envoy_grpc (google_grpc) not supported; nothing is sent", out.Name)}, nil
		}
		out.Exporter = *e
	default:
		e, err := httpExporter(c.GetHttpService())
		if err != nil {
			return nil, nil, err
		}
		out.Exporter = *e
	}
	if len(c.GetResourceDetectors()) > 0 {
		warns = append(warns, fmt.Sprintf("access log %s: resource_detectors not supported; skipped", out.Name))
	}
	// formatters name the extensions (req_without_query, metadata, CEL)
	// whose operators the formats use: the operators are read below.
	for _, kv := range c.GetResourceAttributes().GetValues() {
		out.Resource = append(out.Resource, Attribute{Key: kv.GetKey(), Value: kv.GetValue().GetStringValue()})
	}
	if c.GetBody() != nil {
		v, err := logValue(c.GetBody())
		if err != nil {
			return nil, nil, fmt.Errorf("body: %w", err)
		}
		out.Body = v
	}
	kvs, err := logKeyValues(c.GetAttributes().GetValues())
	if err != nil {
		return nil, nil, fmt.Errorf("attributes: %w", err)
	}
	out.Attributes = kvs
	var unrecorded []string
	walkFormats(&LogValue{KV: append([]LogKeyValue{{Value: out.Body}}, kvs...)}, func(f *LogFormat) {
		for _, op := range f.Unrecorded() {
			if !slices.Contains(unrecorded, op) {
				unrecorded = append(unrecorded, op)
			}
		}
	})
	if len(unrecorded) > 0 {
		warns = append(warns, fmt.Sprintf("access log %s: %s not recorded by the waypoint; logged as -", out.Name, strings.Join(unrecorded, ", ")))
	}
	return out, warns, nil
}

// walkFormats calls fn on each format string in v.
func walkFormats(v *LogValue, fn func(*LogFormat)) {
	if v == nil {
		return
	}
	if v.Format != nil {
		fn(v.Format)
	}
	for _, kv := range v.KV {
		walkFormats(kv.Value, fn)
	}
	for _, e := range v.Array {
		walkFormats(e, fn)
	}
}

func logKeyValues(kvs []*commonpb.KeyValue) ([]LogKeyValue, error) {
	var out []LogKeyValue
	for _, kv := range kvs {
		v, err := logValue(kv.GetValue())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", kv.GetKey(), err)
		}
		out = append(out, LogKeyValue{Key: kv.GetKey(), Value: v})
	}
	return out, nil
}

func logValue(v *commonpb.AnyValue) (*LogValue, error) {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		f, err := ParseLogFormat(x.StringValue)
		if err != nil {
			return nil, err
		}
		return &LogValue{Format: f}, nil
	case *commonpb.AnyValue_KvlistValue:
		kvs, err := logKeyValues(x.KvlistValue.GetValues())
		if err != nil {
			return nil, err
		}
		return &LogValue{KV: kvs}, nil
	case *commonpb.AnyValue_ArrayValue:
		out := &LogValue{Array: []*LogValue{}}
		for _, e := range x.ArrayValue.GetValues() {
			lv, err := logValue(e)
			if err != nil {
				return nil, err
			}
			out.Array = append(out.Array, lv)
		}
		return out, nil
	}
	return &LogValue{Const: v}, nil
}

// firstSet is a unless it is nil, else b.
func firstSet[T any](a, b *T) *T {
	if a != nil {
		return a
	}
	return b
}

// LogFormat is a compiled Envoy access-log format string (the
// substitution formatter's command operators the waypoint records,
// listed in logOperators); other operators are refused, as Envoy
// refuses them.
type LogFormat struct {
	Parts []LogPart
	src   string
}

func (f *LogFormat) String() string { return f.src }

// LogPart is a literal or a command operator: %Op(Arg?Alt):Max%.
type LogPart struct {
	Literal string
	Op      string
	// Arg is the operator's argument (a header, a filter state key, an
	// environment variable, START_TIME's strftime format); Alt
	// REQ's and RESP's alternative header.
	Arg, Alt string
	// Max truncates the value (0: no limit).
	Max int
}

// logOperators are the command operators the waypoint evaluates, and
// whether each takes an argument.
var logOperators = map[string]bool{
	"REQ": true, "RESP": true, "TRAILER": true, "REQ_WITHOUT_QUERY": true, "ENVIRONMENT": true, "FILTER_STATE": true, "START_TIME": true,
	"PROTOCOL": false, "RESPONSE_CODE": false, "RESPONSE_FLAGS": false, "RESPONSE_CODE_DETAILS": false,
	"CONNECTION_TERMINATION_DETAILS": false, "UPSTREAM_TRANSPORT_FAILURE_REASON": false,
	"BYTES_RECEIVED": false, "BYTES_SENT": false, "DURATION": false,
	"UPSTREAM_HOST": false, "UPSTREAM_REMOTE_ADDRESS": false, "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": false,
	"UPSTREAM_CLUSTER": false, "UPSTREAM_CLUSTER_RAW": false, "UPSTREAM_LOCAL_ADDRESS": false,
	"DOWNSTREAM_LOCAL_ADDRESS": false, "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": false, "DOWNSTREAM_LOCAL_PORT": false,
	"DOWNSTREAM_REMOTE_ADDRESS": false, "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": false, "DOWNSTREAM_REMOTE_PORT": false,
	"DOWNSTREAM_DIRECT_REMOTE_ADDRESS": false, "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": false,
	"DOWNSTREAM_PEER_URI_SAN": false, "REQUESTED_SERVER_NAME": false, "ROUTE_NAME": false,
	"GRPC_STATUS": false, "GRPC_STATUS_NUMBER": false, "TRACE_ID": false, "HOSTNAME": false,
	"UPSTREAM_REQUEST_ATTEMPT_COUNT": false,
}

// envoyOnlyOperators are operators Envoy knows (with the formatter
// extensions istiod configures: metadata, CEL) that the waypoint does
// not record: accepted, with a warning, and rendered "-".
var envoyOnlyOperators = map[string]bool{
	"METADATA": true, "DYNAMIC_METADATA": true, "CLUSTER_METADATA": true, "UPSTREAM_METADATA": true, "CEL": true,
	"UPSTREAM_FILTER_STATE": true, "RESPONSE_FLAGS_LONG": true, "REQUEST_DURATION": true, "REQUEST_TX_DURATION": true,
	"RESPONSE_DURATION": true, "RESPONSE_TX_DURATION": true, "DOWNSTREAM_HANDSHAKE_DURATION": true, "ROUNDTRIP_DURATION": true,
	"UPSTREAM_WIRE_BYTES_SENT": true, "UPSTREAM_WIRE_BYTES_RECEIVED": true, "DOWNSTREAM_WIRE_BYTES_SENT": true,
	"DOWNSTREAM_WIRE_BYTES_RECEIVED": true, "UPSTREAM_HEADER_BYTES_SENT": true, "UPSTREAM_HEADER_BYTES_RECEIVED": true,
	"DOWNSTREAM_HEADER_BYTES_SENT": true, "DOWNSTREAM_HEADER_BYTES_RECEIVED": true, "UPSTREAM_REMOTE_PORT": true,
	"UPSTREAM_LOCAL_PORT": true, "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": true, "UPSTREAM_HOST_NAME": true,
	"UPSTREAM_HOST_NAME_WITHOUT_PORT": true, "DOWNSTREAM_DIRECT_REMOTE_PORT": true, "CONNECTION_ID": true,
	"UPSTREAM_CONNECTION_ID": true, "STREAM_ID": true, "UNIQUE_ID": true, "DOWNSTREAM_LOCAL_URI_SAN": true,
	"DOWNSTREAM_PEER_DNS_SAN": true, "DOWNSTREAM_LOCAL_DNS_SAN": true, "DOWNSTREAM_PEER_SUBJECT": true,
	"DOWNSTREAM_LOCAL_SUBJECT": true, "DOWNSTREAM_PEER_ISSUER": true, "DOWNSTREAM_TLS_SESSION_ID": true,
	"DOWNSTREAM_TLS_CIPHER": true, "DOWNSTREAM_TLS_VERSION": true, "DOWNSTREAM_PEER_FINGERPRINT_256": true,
	"DOWNSTREAM_PEER_FINGERPRINT_1": true, "DOWNSTREAM_PEER_SERIAL": true, "DOWNSTREAM_PEER_CERT": true,
	"DOWNSTREAM_PEER_CERT_V_START": true, "DOWNSTREAM_PEER_CERT_V_END": true, "UPSTREAM_PEER_URI_SAN": true,
	"UPSTREAM_PEER_DNS_SAN": true, "UPSTREAM_PEER_SUBJECT": true, "UPSTREAM_PEER_ISSUER": true,
	"UPSTREAM_TLS_SESSION_ID": true, "UPSTREAM_TLS_CIPHER": true, "UPSTREAM_TLS_VERSION": true,
	"VIRTUAL_CLUSTER_NAME": true, "REQUEST_HEADERS_BYTES": true, "RESPONSE_HEADERS_BYTES": true,
	"RESPONSE_TRAILERS_BYTES": true, "LOCAL_REPLY_BODY": true, "ACCESS_LOG_TYPE": true, "EMIT_TIME": true,
	"DOWNSTREAM_TRANSPORT_FAILURE_REASON": true, "CUSTOM_FLAGS": true, "QUERY_PARAM": true, "PATH": true,
	"COMMON_DURATION": true, "UPSTREAM_DETECTED_HOST_HEALTH": true, "SPAN_ID": true,
}

// Unrecorded lists the operators of f that Envoy knows and the waypoint
// renders "-".
func (f *LogFormat) Unrecorded() []string {
	var out []string
	for _, p := range f.Parts {
		if envoyOnlyOperators[p.Op] && !slices.Contains(out, p.Op) {
			out = append(out, p.Op)
		}
	}
	return out
}

// ParseLogFormat compiles an access-log format string.
func ParseLogFormat(s string) (*LogFormat, error) {
	f := &LogFormat{src: s}
	err := scanFormat(s, func(lit string) { f.Parts = append(f.Parts, LogPart{Literal: lit}) }, func(op string) error {
		p, err := logOperator(op)
		f.Parts = append(f.Parts, p)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("format %q: %w", s, err)
	}
	return f, nil
}

// scanFormat splits an Envoy format string into literals and command
// operators (the text between two %, "%%" a literal %). An operator's
// argument may hold a % (START_TIME's strftime format): the operator
// then ends at the first % after its closing parenthesis.
func scanFormat(s string, literal func(string), operator func(string) error) error {
	rest := s
	for rest != "" {
		i := strings.IndexByte(rest, '%')
		if i < 0 {
			literal(rest)
			break
		}
		if i > 0 {
			literal(rest[:i])
		}
		rest = rest[i+1:]
		end := strings.IndexByte(rest, '%')
		if open := strings.IndexByte(rest, '('); open >= 0 && (end < 0 || open < end) {
			if cl := strings.IndexByte(rest[open:], ')'); cl >= 0 {
				if e := strings.IndexByte(rest[open+cl:], '%'); e >= 0 {
					end = open + cl + e
				}
			}
		}
		if end < 0 {
			return errors.New("unterminated operator")
		}
		op := rest[:end]
		rest = rest[end+1:]
		if op == "" {
			literal("%")
			continue
		}
		if err := operator(op); err != nil {
			return err
		}
	}
	return nil
}

func logOperator(op string) (LogPart, error) {
	p := LogPart{}
	body := op
	if i := strings.LastIndexByte(op, ')'); i >= 0 && i < len(op)-1 {
		if op[i+1] != ':' {
			return p, fmt.Errorf("operator %s: unexpected %q after the parenthesis", op, op[i+1:])
		}
		n, err := strconv.Atoi(op[i+2:])
		if err != nil || n <= 0 {
			return p, fmt.Errorf("operator %s: length %q is not a positive number", op, op[i+2:])
		}
		body, p.Max = op[:i+1], n
	}
	name, arg, hasArg := strings.Cut(body, "(")
	if hasArg {
		if !strings.HasSuffix(arg, ")") {
			return p, fmt.Errorf("operator %s: unbalanced parenthesis", op)
		}
		arg = strings.TrimSuffix(arg, ")")
	}
	takesArg, ok := logOperators[name]
	if !ok {
		if envoyOnlyOperators[name] {
			p.Op, p.Arg = name, arg
			return p, nil
		}
		return p, fmt.Errorf("operator %s: not a known command operator", name)
	}
	if takesArg && arg == "" && name != "START_TIME" {
		return p, fmt.Errorf("operator %s: wants an argument", name)
	}
	if !takesArg && hasArg {
		return p, fmt.Errorf("operator %s: takes no argument", name)
	}
	p.Op = name
	switch name {
	case "REQ", "RESP", "TRAILER", "REQ_WITHOUT_QUERY":
		h, alt, _ := strings.Cut(arg, "?")
		p.Arg, p.Alt = strings.ToLower(h), strings.ToLower(alt)
	case "FILTER_STATE":
		key, kind, _ := strings.Cut(arg, ":")
		if kind != "" && kind != "PLAIN" {
			return p, fmt.Errorf("operator %s: only PLAIN values are supported", op)
		}
		p.Arg = key
	case "START_TIME":
		if err := checkStrftime(arg); err != nil {
			return p, fmt.Errorf("operator %s: %w", op, err)
		}
		p.Arg = arg
	default:
		p.Arg = arg
	}
	return p, nil
}

// strftime conversions START_TIME supports.
const strftimeSpecs = "YmdHMSsfzZjyaAbBpeIT%"

func checkStrftime(f string) error {
	for i := 0; i < len(f); i++ {
		if f[i] != '%' {
			continue
		}
		i++
		if i < len(f) && f[i] == 'E' && i+2 < len(f) && f[i+2] == 'S' && strings.IndexByte("369", f[i+1]) >= 0 {
			i += 2
			continue
		}
		if i >= len(f) || strings.IndexByte(strftimeSpecs, f[i]) < 0 {
			return fmt.Errorf("strftime conversion %q not supported", f[i-1:min(i+1, len(f))])
		}
	}
	return nil
}

// Strftime formats t as Envoy's START_TIME(format) does, for the
// conversions checkStrftime accepts; an empty format is Envoy's default
// (%Y-%m-%dT%H:%M:%E3SZ, UTC).
func Strftime(t time.Time, f string) string {
	t = t.UTC()
	if f == "" {
		return t.Format("2006-01-02T15:04:05.000Z")
	}
	var b strings.Builder
	for i := 0; i < len(f); i++ {
		if f[i] != '%' || i+1 >= len(f) {
			b.WriteByte(f[i])
			continue
		}
		i++
		switch f[i] {
		case 'E':
			digits := int(f[i+1] - '0')
			i += 2
			fmt.Fprintf(&b, "%02d.%0*d", t.Second(), digits, t.Nanosecond()/pow10(9-digits))
		case 'Y':
			fmt.Fprintf(&b, "%04d", t.Year())
		case 'y':
			fmt.Fprintf(&b, "%02d", t.Year()%100)
		case 'm':
			fmt.Fprintf(&b, "%02d", int(t.Month()))
		case 'd':
			fmt.Fprintf(&b, "%02d", t.Day())
		case 'e':
			fmt.Fprintf(&b, "%2d", t.Day())
		case 'j':
			fmt.Fprintf(&b, "%03d", t.YearDay())
		case 'H':
			fmt.Fprintf(&b, "%02d", t.Hour())
		case 'I':
			fmt.Fprintf(&b, "%02d", (t.Hour()+11)%12+1)
		case 'M':
			fmt.Fprintf(&b, "%02d", t.Minute())
		case 'S':
			fmt.Fprintf(&b, "%02d", t.Second())
		case 'T':
			b.WriteString(t.Format("15:04:05"))
		case 'p':
			b.WriteString(t.Format("PM"))
		case 's':
			b.WriteString(strconv.FormatInt(t.Unix(), 10))
		case 'f':
			fmt.Fprintf(&b, "%09d", t.Nanosecond())
		case 'z':
			b.WriteString("+0000")
		case 'Z':
			b.WriteString("UTC")
		case 'a':
			b.WriteString(t.Format("Mon"))
		case 'A':
			b.WriteString(t.Format("Monday"))
		case 'b':
			b.WriteString(t.Format("Jan"))
		case 'B':
			b.WriteString(t.Format("January"))
		case '%':
			b.WriteByte('%')
		}
	}
	return b.String()
}

func pow10(n int) int {
	p := 1
	for range n {
		p *= 10
	}
	return p
}
