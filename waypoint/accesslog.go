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
	"net/netip"
	"os"
	"sync"

	"github.com/ambitmesh/ambit/waypoint/config"
)

type accessLog struct {
	mu sync.Mutex
	w  io.Writer
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
		UpstreamCluster:        nullable(e.cluster),
		DownstreamLocalAddress: addrOrNil(e.local), DownstreamRemoteAddress: addrOrNil(e.remote),
	}
	if e.ep != nil {
		line.UpstreamHost = nullable(e.ep.String())
	}
	if e.tcp {
		line.ConnectionTerminationDetails = nullable(e.details)
		line.ResponseCodeDetails = nil
	} else if e.req != nil {
		h := e.req.Header
		line.Method, line.Path, line.Protocol = nullable(e.method), nullable(e.path), nullable(e.protocol)
		line.XForwardedFor, line.UserAgent, line.RequestID = nullable(h.Get("X-Forwarded-For")), nullable(h.Get("User-Agent")), nullable(h.Get("X-Request-Id"))
		line.Authority, line.Traceparent = nullable(e.req.Host), nullable(h.Get("Traceparent"))
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
// stderr, or are appended to a file opened on first use; what they say
// is logformat.go's, as for the OTel access logger (otlp_accesslog.go).

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

// writeConfigured writes e to each configured file access log.
func (s *logSinks) writeConfigured(als []*config.AccessLog, e *accessEntry) {
	for _, al := range als {
		if al.Path == "" {
			continue
		}
		s.write(al.Path, e.render(al))
	}
}
