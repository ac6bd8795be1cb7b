//lint:file-ignore SA1019 Envoy still honours its deprecated access-log fields, and a control plane may send them

package config

// Access logs as Istio configures them on HTTP connection managers and
// tcp_proxy (envoy.access_loggers.file with a text or JSON
// substitution format; envoy.access_loggers.open_telemetry for
// MeshConfig's envoyOtelAls), compiled into parts the waypoint renders
// per request (logformat.go). What the waypoint cannot do (a filter, an
// operator Envoy does not know) is a warning and that log is off, never
// a refused config: logging must not stop traffic.

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
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
	// Text is a text format (nil for JSON).
	Text *LogFormat
	// JSON are a JSON format's fields, in key order (nil for text).
	JSON []FileLogField
	// OmitEmpty: omit_empty_values (an empty operator renders "" rather
	// than "-", and a JSON field without a value is left out).
	OmitEmpty bool
}

// FileLogField is one key of a JSON format and its value's format (a
// value that is exactly one operator keeps the operator's type: numbers
// for codes, bytes and durations).
type FileLogField struct {
	Key string
	// QuotedKey is Key as a JSON string.
	QuotedKey string
	Format    *LogFormat
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
	f, err := ParseLogFormat(text)
	if err != nil {
		return nil, nil, err
	}
	out.Text = f
	return out, unrecordedWarning(f.Unrecorded()), nil
}

func jsonLog(out *AccessLog, js *structpb.Struct, omit bool) (*AccessLog, []string, error) {
	out.OmitEmpty = omit
	keys := make([]string, 0, len(js.GetFields()))
	for k := range js.GetFields() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var unrecorded []string
	for _, k := range keys {
		v := js.GetFields()[k]
		s, ok := v.GetKind().(*structpb.Value_StringValue)
		if !ok {
			return nil, nil, fmt.Errorf("json_format %s: only string values (nested and typed values are not supported)", k)
		}
		f, err := ParseLogFormat(s.StringValue)
		if err != nil {
			return nil, nil, fmt.Errorf("json_format %s: %w", k, err)
		}
		unrecorded = append(unrecorded, f.Unrecorded()...)
		q, _ := json.Marshal(k)
		out.JSON = append(out.JSON, FileLogField{Key: k, QuotedKey: string(q), Format: f})
	}
	return out, unrecordedWarning(unrecorded), nil
}

// unrecordedWarning names the operators Envoy knows that the waypoint
// does not record.
func unrecordedWarning(ops []string) []string {
	if len(ops) == 0 {
		return nil
	}
	sort.Strings(ops)
	return []string{"operators " + strings.Join(slices.Compact(ops), ", ") + " not recorded by the waypoint; logged as -"}
}
