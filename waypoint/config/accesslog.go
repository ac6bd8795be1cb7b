//lint:file-ignore SA1019 Envoy still honours its deprecated access-log fields, and a control plane may send them

package config

// Access logs as Istio configures them on HTTP connection managers and
// tcp_proxy (envoy.access_loggers.file with a text or JSON
// substitution format; envoy.access_loggers.open_telemetry for
// MeshConfig's envoyOtelAls), compiled into parts the waypoint renders
// per request. What the waypoint cannot do is a warning and that log is
// off, never a refused config: logging must not stop traffic.

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/filters/cel/v3" // Istio's filter type, read as the Any's type URL
	"google.golang.org/protobuf/types/known/structpb"
)

// Access logger names (Envoy's).
const (
	AccessLoggerFile = "envoy.access_loggers.file"
	AccessLoggerOTel = "envoy.access_loggers.open_telemetry"
)

// AccessLog is one access log of a chain.
type AccessLog struct {
	// Path of a file log; "/dev/stdout" and "/dev/stderr" are the
	// process's.
	Path string
	// Text is a text format's parts (nil for JSON).
	Text []FileLogPart
	// JSON are a JSON format's fields, in key order (nil for text).
	JSON []FileLogField
	// OmitEmpty: omit_empty_values (an empty operator renders "" rather
	// than "-", and a JSON field without a value is left out).
	OmitEmpty bool
}

// FileLogPart is a literal or a command operator (%OP(Arg):MaxLen%).
type FileLogPart struct {
	Literal string
	Op, Arg string
	// Alt is REQ(a?b)'s and RESP(a?b)'s second header.
	Alt    string
	MaxLen int
}

// FileLogField is one key of a JSON format: its value's parts (a value that
// is exactly one operator keeps the operator's type: numbers for codes,
// bytes and durations).
type FileLogField struct {
	Key   string
	Parts []FileLogPart
}

// fileLogOperators are the command operators the waypoint renders; others
// render "-" (and the config warns).
var fileLogOperators = map[string]bool{
	"START_TIME": true, "REQ": true, "RESP": true, "TRAILER": true, "PROTOCOL": true, "RESPONSE_CODE": true,
	"RESPONSE_FLAGS": true, "RESPONSE_FLAGS_LONG": true, "RESPONSE_CODE_DETAILS": true, "CONNECTION_TERMINATION_DETAILS": true,
	"UPSTREAM_TRANSPORT_FAILURE_REASON": true, "BYTES_RECEIVED": true, "BYTES_SENT": true, "DURATION": true,
	"UPSTREAM_HOST": true, "UPSTREAM_CLUSTER": true, "UPSTREAM_CLUSTER_RAW": true, "UPSTREAM_LOCAL_ADDRESS": true,
	"DOWNSTREAM_LOCAL_ADDRESS": true, "DOWNSTREAM_REMOTE_ADDRESS": true, "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": true,
	"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": true, "DOWNSTREAM_PEER_URI_SAN": true, "DOWNSTREAM_LOCAL_URI_SAN": true,
	"REQUESTED_SERVER_NAME": true, "ROUTE_NAME": true, "METHOD": true, "PATH": true, "REQ_WITHOUT_QUERY": true,
	"UPSTREAM_SERVICE_TIME": true, "GRPC_STATUS": true, "HOSTNAME": true,
}

// ParseFileLogFormat compiles an access-log format string; unknown
// operators are returned to warn about.
func ParseFileLogFormat(s string) ([]FileLogPart, []string, error) {
	var parts []FileLogPart
	var unknown []string
	rest := s
	for rest != "" {
		i := strings.IndexByte(rest, '%')
		if i < 0 {
			parts = append(parts, FileLogPart{Literal: rest})
			break
		}
		if i > 0 {
			parts = append(parts, FileLogPart{Literal: rest[:i]})
		}
		rest = rest[i+1:]
		// An operator's argument may hold '%'-free text with ':' and '?'.
		j := strings.IndexByte(rest, '%')
		if j < 0 {
			return nil, nil, fmt.Errorf("format %q: unterminated operator", s)
		}
		op := rest[:j]
		rest = rest[j+1:]
		if op == "" {
			parts = append(parts, FileLogPart{Literal: "%"})
			continue
		}
		p := FileLogPart{}
		name, arg, hasArg := strings.Cut(op, "(")
		if hasArg {
			k := strings.LastIndexByte(arg, ')')
			if k < 0 {
				return nil, nil, fmt.Errorf("format %q: operator %s: unbalanced parenthesis", s, op)
			}
			if tail := arg[k+1:]; tail != "" {
				n, err := strconv.Atoi(strings.TrimPrefix(tail, ":"))
				if err != nil || !strings.HasPrefix(tail, ":") {
					return nil, nil, fmt.Errorf("format %q: operator %s: bad length %q", s, op, tail)
				}
				p.MaxLen = n
			}
			arg = arg[:k]
		}
		p.Op = name
		if name == "REQ" || name == "RESP" || name == "TRAILER" {
			p.Arg, p.Alt, _ = strings.Cut(arg, "?")
		} else {
			p.Arg = arg
		}
		if !fileLogOperators[name] {
			unknown = append(unknown, "%"+op+"%")
		}
		parts = append(parts, p)
	}
	return parts, unknown, nil
}

// buildFileAccessLogs compiles a chain's file access logs; OpenTelemetry
// loggers are otel_accesslog.go's.
func buildFileAccessLogs(als []*accesslogv3.AccessLog) ([]*AccessLog, []string) {
	var out []*AccessLog
	var warns []string
	for _, al := range als {
		t := innerType(al.GetTypedConfig())
		if t == "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig" {
			continue // otel_accesslog.go's
		}
		if f := al.GetFilter(); f != nil {
			warns = append(warns, fmt.Sprintf("access log %s: filters (%s) are not evaluated by this waypoint; this log is off",
				al.GetName(), filterName(f)))
			continue
		}
		switch t {
		case "envoy.extensions.access_loggers.file.v3.FileAccessLog":
			var fl filev3.FileAccessLog
			if err := anyTo(al.GetTypedConfig(), &fl); err != nil {
				warns = append(warns, fmt.Sprintf("access log %s: %v; this log is off", al.GetName(), err))
				continue
			}
			l, w, err := buildFileAccessLog(&fl)
			if err != nil {
				warns = append(warns, fmt.Sprintf("access log %s: %v; this log is off", al.GetName(), err))
				continue
			}
			for _, u := range w {
				warns = append(warns, fmt.Sprintf("access log %s: %s", al.GetName(), u))
			}
			out = append(out, l)
		default:
			warns = append(warns, fmt.Sprintf("access log %s (%s) not supported (file and open_telemetry are); this log is off", al.GetName(), t))
		}
	}
	return out, warns
}

func filterName(f *accesslogv3.AccessLogFilter) string {
	if e := f.GetExtensionFilter(); e != nil {
		return e.GetName()
	}
	return fmt.Sprintf("%T", f.GetFilterSpecifier())
}

// DefaultLogFormat is Envoy's default text access-log format, used when
// a file log names none.
const DefaultLogFormat = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" " +
	"%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% " +
	"%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" " +
	"\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n"

func buildFileAccessLog(fl *filev3.FileAccessLog) (*AccessLog, []string, error) {
	out := &AccessLog{Path: fl.GetPath()}
	if out.Path == "" {
		return nil, nil, fmt.Errorf("no path")
	}
	var unknown []string
	lf := fl.GetLogFormat()
	var text string
	switch {
	case lf == nil:
		text = DefaultLogFormat
		if fl.GetFormat() != "" {
			text = fl.GetFormat()
		}
		if js := fl.GetJsonFormat(); js != nil {
			return jsonLog(out, js, false)
		}
	case lf.GetJsonFormat() != nil:
		return jsonLog(out, lf.GetJsonFormat(), lf.GetOmitEmptyValues())
	case lf.GetTextFormatSource() != nil:
		text = lf.GetTextFormatSource().GetInlineString()
		if text == "" {
			return nil, nil, fmt.Errorf("text_format_source other than inline_string")
		}
	case lf.GetTextFormat() != "":
		text = lf.GetTextFormat()
	default:
		return nil, nil, fmt.Errorf("log_format other than text or JSON")
	}
	out.OmitEmpty = lf.GetOmitEmptyValues()
	parts, unk, err := ParseFileLogFormat(text)
	if err != nil {
		return nil, nil, err
	}
	unknown = append(unknown, unk...)
	out.Text = parts
	return out, unknownWarning(unknown), nil
}

func jsonLog(out *AccessLog, js *structpb.Struct, omit bool) (*AccessLog, []string, error) {
	out.OmitEmpty = omit
	keys := make([]string, 0, len(js.GetFields()))
	for k := range js.GetFields() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var unknown []string
	for _, k := range keys {
		v := js.GetFields()[k]
		s, ok := v.GetKind().(*structpb.Value_StringValue)
		if !ok {
			return nil, nil, fmt.Errorf("json_format %s: only string values (nested and typed values are not supported)", k)
		}
		parts, unk, err := ParseFileLogFormat(s.StringValue)
		if err != nil {
			return nil, nil, fmt.Errorf("json_format %s: %w", k, err)
		}
		unknown = append(unknown, unk...)
		out.JSON = append(out.JSON, FileLogField{Key: k, Parts: parts})
	}
	return out, unknownWarning(unknown), nil
}

func unknownWarning(unknown []string) []string {
	if len(unknown) == 0 {
		return nil
	}
	sort.Strings(unknown)
	return []string{"operators " + strings.Join(slices.Compact(unknown), ", ") + " not supported; they render \"-\""}
}
