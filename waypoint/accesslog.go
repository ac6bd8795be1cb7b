package waypoint

// The access log: one JSON line per request and per TCP connection, with
// the fields of Istio's default JSON access-log format
// (EnvoyJSONLogFormatIstio in istio/istio pilot/pkg/model/telemetry_logging.go),
// typed as Envoy's JSON formatter types them (numbers for codes, bytes
// and durations; null for what is unknown), plus the traceparent the
// request went on with.

import (
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ambitmesh/ambit/waypoint/config"
)

type accessLog struct {
	mu sync.Mutex
	w  io.Writer
}

// accessEntry is what one line says.
type accessEntry struct {
	start                     time.Time
	route, method, path       string
	protocol                  string
	code                      int
	flags, details            string
	received, sent            int64
	duration                  time.Duration
	xff, userAgent, requestID string
	authority                 string
	upstreamHost              string
	upstreamCluster           string
	local, remote             netip.AddrPort
	traceparent               string
	tcp                       bool
	// For configured formats: the request's and response's headers, the
	// gRPC status and the downstream's principal.
	reqHeader, respHeader http.Header
	grpcStatus, peer      string
}

// accessLine is Istio's default JSON access-log format.
type accessLine struct {
	StartTime                      string  `json:"start_time"`
	RouteName                      *string `json:"route_name"`
	Method                         *string `json:"method"`
	Path                           *string `json:"path"`
	Protocol                       *string `json:"protocol"`
	ResponseCode                   int     `json:"response_code"`
	ResponseFlags                  string  `json:"response_flags"`
	ResponseCodeDetails            *string `json:"response_code_details"`
	ConnectionTerminationDetails   *string `json:"connection_termination_details"`
	UpstreamTransportFailureReason *string `json:"upstream_transport_failure_reason"`
	BytesReceived                  int64   `json:"bytes_received"`
	BytesSent                      int64   `json:"bytes_sent"`
	Duration                       int64   `json:"duration"`
	UpstreamServiceTime            *string `json:"upstream_service_time"`
	XForwardedFor                  *string `json:"x_forwarded_for"`
	UserAgent                      *string `json:"user_agent"`
	RequestID                      *string `json:"request_id"`
	Authority                      *string `json:"authority"`
	UpstreamHost                   *string `json:"upstream_host"`
	UpstreamCluster                *string `json:"upstream_cluster"`
	UpstreamLocalAddress           *string `json:"upstream_local_address"`
	DownstreamLocalAddress         *string `json:"downstream_local_address"`
	DownstreamRemoteAddress        *string `json:"downstream_remote_address"`
	RequestedServerName            *string `json:"requested_server_name"`
	Traceparent                    *string `json:"traceparent,omitempty"`
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func addrOrNil(a netip.AddrPort) *string {
	if !a.IsValid() {
		return nil
	}
	return nullable(a.String())
}

func (l *accessLog) write(e *accessEntry) {
	line := accessLine{
		StartTime:    e.start.UTC().Format("2006-01-02T15:04:05.000Z"),
		RouteName:    nullable(e.route),
		ResponseCode: e.code, ResponseFlags: e.flags, ResponseCodeDetails: nullable(e.details),
		BytesReceived: e.received, BytesSent: e.sent, Duration: e.duration.Milliseconds(),
		UpstreamHost: nullable(e.upstreamHost), UpstreamCluster: nullable(e.upstreamCluster),
		DownstreamLocalAddress: addrOrNil(e.local), DownstreamRemoteAddress: addrOrNil(e.remote),
	}
	if e.tcp {
		line.ConnectionTerminationDetails = nullable(e.details)
		line.ResponseCodeDetails = nil
	} else {
		line.Method, line.Path, line.Protocol = nullable(e.method), nullable(e.path), nullable(e.protocol)
		line.XForwardedFor, line.UserAgent, line.RequestID = nullable(e.xff), nullable(e.userAgent), nullable(e.requestID)
		line.Authority, line.Traceparent = nullable(e.authority), nullable(e.traceparent)
	}
	b, err := json.Marshal(&line)
	if err != nil {
		return
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	l.w.Write(b)
}

// Access logs configured by the xDS (config.AccessLog, on HTTP
// connection managers and tcp_proxy): Envoy's file access logger with a
// text or JSON substitution format. Lines go to the process's stdout or
// stderr, or are appended to a file opened on first use. The OTel access
// logger is the OTLP exporter's (otel_accesslog.go), not this.

// logSinks are where configured access logs write.
type logSinks struct {
	mu     sync.Mutex
	stdout io.Writer
	files  map[string]io.Writer
}

func newLogSinks() *logSinks {
	return &logSinks{stdout: os.Stdout, files: map[string]io.Writer{}}
}

// write appends one line to path; a file that cannot be opened drops
// the line (logging never fails a request).
func (s *logSinks) write(path string, line []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var w io.Writer
	switch path {
	case "/dev/stdout":
		w = s.stdout
	case "/dev/stderr":
		w = os.Stderr
	default:
		w = s.files[path]
		if w == nil {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
			if err != nil {
				return
			}
			s.files[path], w = f, f
		}
	}
	w.Write(line)
}

// logValue is one operator's value: a string, or a number where Envoy's
// JSON formatter types it; ok false when there is none ("-").
type logValue struct {
	s   string
	n   int64
	num bool
	ok  bool
}

func str(s string) logValue { return logValue{s: s, ok: s != ""} }

func num(n int64) logValue { return logValue{n: n, num: true, ok: true} }

func (v logValue) text() string {
	if v.num {
		return strconv.FormatInt(v.n, 10)
	}
	return v.s
}

// operator is part p's value for entry e.
func (e *accessEntry) operator(p *config.FileLogPart) logValue {
	hdr := func(h http.Header) logValue {
		if h == nil {
			return logValue{}
		}
		get := func(name string) (string, bool) {
			switch strings.ToLower(name) {
			case ":method":
				return e.method, e.method != ""
			case ":path":
				return e.path, e.path != ""
			case ":authority", "host":
				return e.authority, e.authority != ""
			case ":scheme":
				return "http", true
			}
			v := h.Values(name)
			return strings.Join(v, ","), len(v) > 0
		}
		if v, ok := get(p.Arg); ok {
			return str(v)
		}
		if p.Alt != "" {
			if v, ok := get(p.Alt); ok {
				return str(v)
			}
		}
		return logValue{}
	}
	addr := func(a netip.AddrPort, port bool) logValue {
		if !a.IsValid() {
			return logValue{}
		}
		if port {
			return str(a.String())
		}
		return str(a.Addr().String())
	}
	switch p.Op {
	case "START_TIME":
		return str(e.start.UTC().Format("2006-01-02T15:04:05.000Z"))
	case "REQ":
		if e.tcp {
			return logValue{}
		}
		return hdr(e.reqHeader)
	case "RESP":
		return hdr(e.respHeader)
	case "METHOD":
		return str(e.method)
	case "PATH":
		return str(e.path)
	case "REQ_WITHOUT_QUERY":
		v := hdr(e.reqHeader)
		if i := strings.IndexByte(v.s, '?'); i >= 0 {
			v.s = v.s[:i]
		}
		return v
	case "PROTOCOL":
		return str(e.protocol)
	case "RESPONSE_CODE":
		return num(int64(e.code))
	case "GRPC_STATUS":
		return str(e.grpcStatus)
	case "RESPONSE_FLAGS", "RESPONSE_FLAGS_LONG":
		return str(e.flags)
	case "RESPONSE_CODE_DETAILS":
		if e.tcp {
			return logValue{}
		}
		return str(e.details)
	case "CONNECTION_TERMINATION_DETAILS":
		if !e.tcp {
			return logValue{}
		}
		return str(e.details)
	case "BYTES_RECEIVED":
		return num(e.received)
	case "BYTES_SENT":
		return num(e.sent)
	case "DURATION":
		return num(e.duration.Milliseconds())
	case "UPSTREAM_HOST":
		return str(e.upstreamHost)
	case "UPSTREAM_CLUSTER", "UPSTREAM_CLUSTER_RAW":
		return str(e.upstreamCluster)
	case "DOWNSTREAM_LOCAL_ADDRESS":
		return addr(e.local, true)
	case "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":
		return addr(e.local, false)
	case "DOWNSTREAM_REMOTE_ADDRESS":
		return addr(e.remote, true)
	case "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT":
		return addr(e.remote, false)
	case "DOWNSTREAM_PEER_URI_SAN":
		return str(e.peer)
	case "ROUTE_NAME":
		return str(e.route)
	case "HOSTNAME":
		h, _ := os.Hostname()
		return str(h)
	}
	// UPSTREAM_LOCAL_ADDRESS, UPSTREAM_TRANSPORT_FAILURE_REASON,
	// REQUESTED_SERVER_NAME, UPSTREAM_SERVICE_TIME and unknown
	// operators: none here.
	return logValue{}
}

// truncate applies an operator's :N length.
func truncate(v logValue, n int) logValue {
	if n > 0 && !v.num && len(v.s) > n {
		v.s = v.s[:n]
	}
	return v
}

// render is the line of access log al for e.
func (e *accessEntry) render(al *config.AccessLog) []byte {
	empty := "-"
	if al.OmitEmpty {
		empty = ""
	}
	renderParts := func(b []byte, parts []config.FileLogPart) []byte {
		for i := range parts {
			p := &parts[i]
			if p.Op == "" {
				b = append(b, p.Literal...)
				continue
			}
			v := truncate(e.operator(p), p.MaxLen)
			if !v.ok {
				b = append(b, empty...)
				continue
			}
			b = append(b, v.text()...)
		}
		return b
	}
	if al.JSON == nil {
		return renderParts(nil, al.Text)
	}
	b := []byte{'{'}
	first := true
	for _, f := range al.JSON {
		var val []byte
		if len(f.Parts) == 1 && f.Parts[0].Op != "" {
			v := truncate(e.operator(&f.Parts[0]), f.Parts[0].MaxLen)
			switch {
			case !v.ok && al.OmitEmpty:
				continue
			case !v.ok:
				val = []byte("null")
			case v.num:
				val = strconv.AppendInt(nil, v.n, 10)
			default:
				val, _ = json.Marshal(v.s)
			}
		} else {
			val, _ = json.Marshal(string(renderParts(nil, f.Parts)))
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		k, _ := json.Marshal(f.Key)
		b = append(append(append(b, k...), ':'), val...)
	}
	return append(b, '}', '\n')
}

// writeConfigured writes e to each configured file access log.
func (s *logSinks) writeConfigured(als []*config.AccessLog, e *accessEntry) {
	for _, al := range als {
		if al.Path == "" {
			continue
		}
		s.write(al.Path, e.render(al))
	}
}
