package config

// Envoy's substitution format strings (the access-log "command
// operators"): one parser and one compiled form for every log the
// waypoint writes from them: file logs in text and JSON
// (json_format / log_format), and the body and attributes of
// OpenTelemetry access logs. What each operator renders is the
// waypoint's (waypoint/logformat.go); what it means is Envoy's
// (https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage).
//
// A format is parsed once, when its config arrives; rendering a request
// walks the parts and switches on each part's LogOp, with no map look-up,
// regexp or fmt call per request.

import (
	"errors"
	"fmt"
	"net/textproto"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// LogOp identifies a command operator.
type LogOp uint8

// The command operators the waypoint renders. OpUnrecorded is one Envoy
// knows and the waypoint does not record: it renders as a missing value.
const (
	OpLiteral LogOp = iota
	OpUnrecorded
	OpStartTime
	OpReq
	OpResp
	OpTrailer
	OpReqWithoutQuery
	OpMethod
	OpPath
	OpProtocol
	OpResponseCode
	OpResponseFlags
	OpResponseFlagsLong
	OpResponseCodeDetails
	OpConnectionTerminationDetails
	OpUpstreamTransportFailureReason
	OpBytesReceived
	OpBytesSent
	OpDuration
	OpUpstreamHost
	OpUpstreamRemoteAddress
	OpUpstreamRemoteAddressWithoutPort
	OpUpstreamRemotePort
	OpUpstreamCluster
	OpUpstreamClusterRaw
	OpUpstreamLocalAddress
	OpUpstreamRequestAttemptCount
	OpDownstreamLocalAddress
	OpDownstreamLocalAddressWithoutPort
	OpDownstreamLocalPort
	OpDownstreamRemoteAddress
	OpDownstreamRemoteAddressWithoutPort
	OpDownstreamRemotePort
	OpDownstreamDirectRemoteAddress
	OpDownstreamDirectRemoteAddressWithoutPort
	OpDownstreamDirectRemotePort
	OpDownstreamPeerURISAN
	OpDownstreamLocalURISAN
	OpRequestedServerName
	OpRouteName
	OpGRPCStatus
	OpGRPCStatusNumber
	OpTraceID
	OpHostname
	OpEnvironment
	OpFilterState
	OpDynamicMetadata
)

// argument rules of an operator.
const (
	argNone     = iota // takes none
	argRequired        // wants one
	argOptional        // may have one
)

type opSpec struct {
	op  LogOp
	arg int
}

// logOperators are the operators the waypoint renders, by name.
var logOperators = map[string]opSpec{
	"START_TIME":                             {OpStartTime, argOptional},
	"REQ":                                    {OpReq, argRequired},
	"RESP":                                   {OpResp, argRequired},
	"TRAILER":                                {OpTrailer, argRequired},
	"REQ_WITHOUT_QUERY":                      {OpReqWithoutQuery, argRequired},
	"METHOD":                                 {OpMethod, argNone},
	"PATH":                                   {OpPath, argOptional},
	"PROTOCOL":                               {OpProtocol, argNone},
	"RESPONSE_CODE":                          {OpResponseCode, argNone},
	"RESPONSE_FLAGS":                         {OpResponseFlags, argNone},
	"RESPONSE_FLAGS_LONG":                    {OpResponseFlagsLong, argNone},
	"RESPONSE_CODE_DETAILS":                  {OpResponseCodeDetails, argNone},
	"CONNECTION_TERMINATION_DETAILS":         {OpConnectionTerminationDetails, argNone},
	"UPSTREAM_TRANSPORT_FAILURE_REASON":      {OpUpstreamTransportFailureReason, argNone},
	"BYTES_RECEIVED":                         {OpBytesReceived, argNone},
	"BYTES_SENT":                             {OpBytesSent, argNone},
	"DURATION":                               {OpDuration, argNone},
	"UPSTREAM_HOST":                          {OpUpstreamHost, argNone},
	"UPSTREAM_REMOTE_ADDRESS":                {OpUpstreamRemoteAddress, argNone},
	"UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT":   {OpUpstreamRemoteAddressWithoutPort, argNone},
	"UPSTREAM_REMOTE_PORT":                   {OpUpstreamRemotePort, argNone},
	"UPSTREAM_CLUSTER":                       {OpUpstreamCluster, argNone},
	"UPSTREAM_CLUSTER_RAW":                   {OpUpstreamClusterRaw, argNone},
	"UPSTREAM_LOCAL_ADDRESS":                 {OpUpstreamLocalAddress, argNone},
	"UPSTREAM_REQUEST_ATTEMPT_COUNT":         {OpUpstreamRequestAttemptCount, argNone},
	"DOWNSTREAM_LOCAL_ADDRESS":               {OpDownstreamLocalAddress, argNone},
	"DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":  {OpDownstreamLocalAddressWithoutPort, argNone},
	"DOWNSTREAM_LOCAL_PORT":                  {OpDownstreamLocalPort, argNone},
	"DOWNSTREAM_REMOTE_ADDRESS":              {OpDownstreamRemoteAddress, argNone},
	"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": {OpDownstreamRemoteAddressWithoutPort, argNone},
	"DOWNSTREAM_REMOTE_PORT":                 {OpDownstreamRemotePort, argNone},
	"DOWNSTREAM_DIRECT_REMOTE_ADDRESS":       {OpDownstreamDirectRemoteAddress, argNone},
	"DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": {OpDownstreamDirectRemoteAddressWithoutPort, argNone},
	"DOWNSTREAM_DIRECT_REMOTE_PORT":                 {OpDownstreamDirectRemotePort, argNone},
	"DOWNSTREAM_PEER_URI_SAN":                       {OpDownstreamPeerURISAN, argNone},
	"DOWNSTREAM_LOCAL_URI_SAN":                      {OpDownstreamLocalURISAN, argNone},
	"REQUESTED_SERVER_NAME":                         {OpRequestedServerName, argNone},
	"ROUTE_NAME":                                    {OpRouteName, argNone},
	"GRPC_STATUS":                                   {OpGRPCStatus, argOptional},
	"GRPC_STATUS_NUMBER":                            {OpGRPCStatusNumber, argNone},
	"TRACE_ID":                                      {OpTraceID, argNone},
	"HOSTNAME":                                      {OpHostname, argNone},
	"ENVIRONMENT":                                   {OpEnvironment, argRequired},
	"FILTER_STATE":                                  {OpFilterState, argRequired},
	"DYNAMIC_METADATA":                              {OpDynamicMetadata, argRequired},
}

// LogOperatorNames lists the operators the waypoint renders, sorted
// (docs/telemetry.md lists the same).
func LogOperatorNames() []string {
	out := make([]string, 0, len(logOperators))
	for n := range logOperators {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// envoyOnlyOperators are operators Envoy knows (with the formatter
// extensions istiod configures: metadata, CEL) that the waypoint does
// not record: accepted, with a warning, and rendered as missing.
var envoyOnlyOperators = map[string]bool{
	"METADATA": true, "CLUSTER_METADATA": true, "UPSTREAM_METADATA": true, "CEL": true,
	"UPSTREAM_FILTER_STATE": true, "REQUEST_DURATION": true, "REQUEST_TX_DURATION": true,
	"RESPONSE_DURATION": true, "RESPONSE_TX_DURATION": true, "DOWNSTREAM_HANDSHAKE_DURATION": true, "ROUNDTRIP_DURATION": true,
	"UPSTREAM_WIRE_BYTES_SENT": true, "UPSTREAM_WIRE_BYTES_RECEIVED": true, "DOWNSTREAM_WIRE_BYTES_SENT": true,
	"DOWNSTREAM_WIRE_BYTES_RECEIVED": true, "UPSTREAM_HEADER_BYTES_SENT": true, "UPSTREAM_HEADER_BYTES_RECEIVED": true,
	"DOWNSTREAM_HEADER_BYTES_SENT": true, "DOWNSTREAM_HEADER_BYTES_RECEIVED": true,
	"UPSTREAM_LOCAL_PORT": true, "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": true, "UPSTREAM_HOST_NAME": true,
	"UPSTREAM_HOST_NAME_WITHOUT_PORT": true, "CONNECTION_ID": true,
	"UPSTREAM_CONNECTION_ID": true, "STREAM_ID": true, "UNIQUE_ID": true,
	"DOWNSTREAM_PEER_DNS_SAN": true, "DOWNSTREAM_LOCAL_DNS_SAN": true, "DOWNSTREAM_PEER_SUBJECT": true,
	"DOWNSTREAM_LOCAL_SUBJECT": true, "DOWNSTREAM_PEER_ISSUER": true, "DOWNSTREAM_TLS_SESSION_ID": true,
	"DOWNSTREAM_TLS_CIPHER": true, "DOWNSTREAM_TLS_VERSION": true, "DOWNSTREAM_PEER_FINGERPRINT_256": true,
	"DOWNSTREAM_PEER_FINGERPRINT_1": true, "DOWNSTREAM_PEER_SERIAL": true, "DOWNSTREAM_PEER_CERT": true,
	"DOWNSTREAM_PEER_CERT_V_START": true, "DOWNSTREAM_PEER_CERT_V_END": true, "UPSTREAM_PEER_URI_SAN": true,
	"UPSTREAM_PEER_DNS_SAN": true, "UPSTREAM_PEER_SUBJECT": true, "UPSTREAM_PEER_ISSUER": true,
	"UPSTREAM_TLS_SESSION_ID": true, "UPSTREAM_TLS_CIPHER": true, "UPSTREAM_TLS_VERSION": true,
	"VIRTUAL_CLUSTER_NAME": true, "REQUEST_HEADERS_BYTES": true, "RESPONSE_HEADERS_BYTES": true,
	"RESPONSE_TRAILERS_BYTES": true, "LOCAL_REPLY_BODY": true, "ACCESS_LOG_TYPE": true, "EMIT_TIME": true,
	"DOWNSTREAM_TRANSPORT_FAILURE_REASON": true, "CUSTOM_FLAGS": true, "QUERY_PARAM": true,
	"COMMON_DURATION": true, "UPSTREAM_DETECTED_HOST_HEALTH": true, "SPAN_ID": true,
}

// LogFormat is a compiled Envoy format string.
type LogFormat struct {
	Parts []LogPart
	src   string
}

func (f *LogFormat) String() string { return f.src }

// LogPart is a literal (Op "") or a command operator:
// %Op(Arg?Alt):Max%.
type LogPart struct {
	Literal string
	// Op is the operator's name; Code what the waypoint renders for it.
	Op   string
	Code LogOp
	// Arg is the operator's argument: a header (lower case), a filter
	// state key (Alt its FIELD's name), an environment variable, START_TIME's strftime format,
	// GRPC_STATUS's and PATH's options, DYNAMIC_METADATA's namespace;
	// Alt is REQ's, RESP's and TRAILER's alternative header (the a?b
	// form), DYNAMIC_METADATA's key, PATH's source, ENVIRONMENT's value.
	Arg, Alt string
	// Key and AltKey are Arg and Alt as Go's http.Header keys them.
	Key, AltKey string
	// Max truncates a string value to Max bytes (0: no limit).
	Max int
}

// Unrecorded lists the operators of f that Envoy knows and the waypoint
// renders as missing.
func (f *LogFormat) Unrecorded() []string {
	var out []string
	for _, p := range f.Parts {
		if p.Code == OpUnrecorded && !slices.Contains(out, p.Op) {
			out = append(out, p.Op)
		}
	}
	return out
}

// Single is the one operator f is, or nil when f is anything else (a
// JSON value that is one operator keeps the operator's type).
func (f *LogFormat) Single() *LogPart {
	if len(f.Parts) == 1 && f.Parts[0].Op != "" {
		return &f.Parts[0]
	}
	return nil
}

// ParseLogFormat compiles an Envoy format string: literals, "%%" (a
// literal %), and %OPERATOR%, %OPERATOR(arg)% and %OPERATOR(arg):N%. An
// operator Envoy does not know, or one used against its argument rules,
// is an error; one Envoy knows that the waypoint does not record is
// accepted (LogFormat.Unrecorded) and renders as missing.
func ParseLogFormat(s string) (*LogFormat, error) {
	f := &LogFormat{src: s}
	err := scanFormat(s, func(lit string) {
		if n := len(f.Parts); n > 0 && f.Parts[n-1].Op == "" {
			f.Parts[n-1].Literal += lit
			return
		}
		f.Parts = append(f.Parts, LogPart{Literal: lit})
	}, func(op string) error {
		p, err := parseOperator(op)
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
			return errors.New("unterminated operator (a literal % is written %%)")
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

// parseOperator compiles one operator: the text between its two %.
func parseOperator(op string) (LogPart, error) {
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
	} else if name, n, ok := strings.Cut(op, ":"); ok && !strings.Contains(op, "(") {
		// %OPERATOR:N% (no argument).
		v, err := strconv.Atoi(n)
		if err != nil || v <= 0 {
			return p, fmt.Errorf("operator %s: length %q is not a positive number", op, n)
		}
		body, p.Max = name, v
	}
	name, arg, hasArg := strings.Cut(body, "(")
	if hasArg {
		if !strings.HasSuffix(arg, ")") {
			return p, fmt.Errorf("operator %s: unbalanced parenthesis", op)
		}
		arg = strings.TrimSuffix(arg, ")")
	}
	p.Op = name
	spec, ok := logOperators[name]
	if !ok {
		if envoyOnlyOperators[name] {
			p.Code, p.Arg = OpUnrecorded, arg
			return p, nil
		}
		return p, fmt.Errorf("operator %s: not a known command operator", name)
	}
	switch {
	case spec.arg == argRequired && arg == "":
		return p, fmt.Errorf("operator %s: wants an argument", name)
	case spec.arg == argNone && hasArg:
		return p, fmt.Errorf("operator %s: takes no argument", name)
	}
	p.Code = spec.op
	switch spec.op {
	case OpReq, OpResp, OpTrailer, OpReqWithoutQuery:
		h, alt, _ := strings.Cut(arg, "?")
		p.Arg, p.Alt = strings.ToLower(h), strings.ToLower(alt)
		if p.Arg == "" || strings.Contains(p.Alt, "?") {
			return p, fmt.Errorf("operator %s: want a header or header?alternative", op)
		}
		p.Key, p.AltKey = textproto.CanonicalMIMEHeaderKey(p.Arg), textproto.CanonicalMIMEHeaderKey(p.Alt)
	case OpFilterState:
		key, kind, _ := strings.Cut(arg, ":")
		kind, field, isField := strings.Cut(kind, ":")
		switch {
		case key == "" || isField != (kind == "FIELD"):
			return p, fmt.Errorf("operator %s: want FILTER_STATE(key[:PLAIN|:TYPED|:FIELD:name])", op)
		case isField && (field == "" || strings.Contains(field, ":")):
			return p, fmt.Errorf("operator %s: want FILTER_STATE(key:FIELD:name) with one field name", op)
		case !isField && kind != "" && kind != "PLAIN" && kind != "TYPED":
			return p, fmt.Errorf("operator %s: want FILTER_STATE(key[:PLAIN|:TYPED|:FIELD:name]) (the waypoint's filter state holds strings)", op)
		}
		p.Arg, p.Alt = key, field
	case OpDynamicMetadata:
		// namespace:key[:key...]: the waypoint keeps a namespace's
		// string fields flat, a nested one under its dotted path.
		parts := strings.Split(arg, ":")
		if len(parts) < 2 || slices.Contains(parts, "") {
			return p, fmt.Errorf("operator %s: want DYNAMIC_METADATA(namespace:key[:key...])", op)
		}
		p.Arg, p.Alt = parts[0], strings.Join(parts[1:], ".")
	case OpStartTime:
		if err := checkStrftime(arg); err != nil {
			return p, fmt.Errorf("operator %s: %w", op, err)
		}
		p.Arg = arg
	case OpEnvironment:
		// Read once, when the format is compiled, as Envoy does (an
		// unset or empty variable renders as missing).
		p.Arg, p.Alt = arg, os.Getenv(arg)
	case OpGRPCStatus:
		switch arg {
		case "", "CAMEL_STRING", "SNAKE_STRING", "NUMBER":
		default:
			return p, fmt.Errorf("operator %s: want CAMEL_STRING, SNAKE_STRING or NUMBER", op)
		}
		p.Arg = arg
	case OpPath:
		// PATH(WQ|NQ[:ORIG|PATH|ORIG_OR_PATH]): with or without the
		// query; the original path (x-envoy-original-path), the path, or
		// the original else the path (the default).
		q, src, _ := strings.Cut(arg, ":")
		if q != "" && q != "WQ" && q != "NQ" || src != "" && src != "ORIG" && src != "PATH" && src != "ORIG_OR_PATH" {
			return p, fmt.Errorf("operator %s: want PATH(WQ|NQ[:ORIG|PATH|ORIG_OR_PATH])", op)
		}
		p.Arg, p.Alt = q, src
	default:
		p.Arg = arg
	}
	return p, nil
}

// strftime conversions START_TIME supports, after %; %1f..%9f and
// %E3S/%E6S/%E9S besides.
const strftimeSpecs = "YmdHMSsfzZjyaAbBpeIT%"

func checkStrftime(f string) error {
	for i := 0; i < len(f); i++ {
		if f[i] != '%' {
			continue
		}
		i++
		switch {
		case i+2 < len(f) && f[i] == 'E' && f[i+2] == 'S' && f[i+1] >= '1' && f[i+1] <= '9':
			i += 2
			continue
		case i+1 < len(f) && f[i] >= '1' && f[i] <= '9' && f[i+1] == 'f':
			i++
			continue
		}
		if i >= len(f) || strings.IndexByte(strftimeSpecs, f[i]) < 0 {
			return fmt.Errorf("strftime conversion %q not supported", f[i-1:min(i+1, len(f))])
		}
	}
	return nil
}

// Strftime formats t as Envoy's START_TIME(format) does.
func Strftime(t time.Time, f string) string {
	return string(AppendStrftime(nil, t, f))
}

// AppendStrftime appends t formatted as Envoy's START_TIME(format) does,
// in UTC, for the conversions checkStrftime accepts: strftime's, %s
// (seconds since the epoch), %f and %1f..%9f (the fraction of the
// second, 9 digits or as many as asked, truncated) and %E3S..%E9S
// (seconds with that many fractional digits). An empty format is
// Envoy's default, %Y-%m-%dT%H:%M:%E3SZ. Another conversion is copied
// as it is.
func AppendStrftime(b []byte, t time.Time, f string) []byte {
	t = t.UTC()
	if f == "" {
		return t.AppendFormat(b, "2006-01-02T15:04:05.000Z")
	}
	for i := 0; i < len(f); i++ {
		if f[i] != '%' || i+1 >= len(f) {
			b = append(b, f[i])
			continue
		}
		i++
		switch c := f[i]; c {
		case 'E':
			if i+2 >= len(f) || f[i+1] < '1' || f[i+1] > '9' || f[i+2] != 'S' {
				b = append(b, '%', c)
				continue
			}
			b = appendPadded(b, t.Second(), 2)
			b = append(b, '.')
			b = appendFraction(b, t.Nanosecond(), int(f[i+1]-'0'))
			i += 2
		case '1', '2', '3', '4', '5', '6', '7', '8', '9':
			if i+1 < len(f) && f[i+1] == 'f' {
				b = appendFraction(b, t.Nanosecond(), int(c-'0'))
				i++
			}
		case 'f':
			b = appendFraction(b, t.Nanosecond(), 9)
		case 'Y':
			b = appendPadded(b, t.Year(), 4)
		case 'y':
			b = appendPadded(b, t.Year()%100, 2)
		case 'm':
			b = appendPadded(b, int(t.Month()), 2)
		case 'd':
			b = appendPadded(b, t.Day(), 2)
		case 'e':
			if t.Day() < 10 {
				b = append(b, ' ')
			}
			b = strconv.AppendInt(b, int64(t.Day()), 10)
		case 'j':
			b = appendPadded(b, t.YearDay(), 3)
		case 'H':
			b = appendPadded(b, t.Hour(), 2)
		case 'I':
			b = appendPadded(b, (t.Hour()+11)%12+1, 2)
		case 'M':
			b = appendPadded(b, t.Minute(), 2)
		case 'S':
			b = appendPadded(b, t.Second(), 2)
		case 'T':
			b = t.AppendFormat(b, "15:04:05")
		case 'p':
			b = t.AppendFormat(b, "PM")
		case 's':
			b = strconv.AppendInt(b, t.Unix(), 10)
		case 'z':
			b = append(b, "+0000"...)
		case 'Z':
			b = append(b, "UTC"...)
		case 'a':
			b = t.AppendFormat(b, "Mon")
		case 'A':
			b = t.AppendFormat(b, "Monday")
		case 'b':
			b = t.AppendFormat(b, "Jan")
		case 'B':
			b = t.AppendFormat(b, "January")
		case '%':
			b = append(b, '%')
		default:
			b = append(b, '%', c)
		}
	}
	return b
}

// appendPadded appends n (not negative) zero-padded to width digits.
func appendPadded(b []byte, n, width int) []byte {
	var d [20]byte
	i := len(d)
	for n > 0 || width > 0 {
		i--
		d[i] = byte('0' + n%10)
		n /= 10
		width--
	}
	return append(b, d[i:]...)
}

// appendFraction appends the first digits (1..9) of ns's nine.
func appendFraction(b []byte, ns, digits int) []byte {
	var d [9]byte
	for i := 8; i >= 0; i-- {
		d[i] = byte('0' + ns%10)
		ns /= 10
	}
	return append(b, d[:digits]...)
}
