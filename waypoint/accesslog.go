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
	"sync"
	"time"
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
