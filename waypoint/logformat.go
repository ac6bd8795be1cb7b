package waypoint

// What Envoy's command operators render for a finished request or TCP
// connection (config.LogFormat, compiled at config time): the one
// renderer behind the file access logs (text and JSON) and the
// OpenTelemetry access logs' body and attributes, so one format string
// says the same in each. A value is appended straight into the line
// being built: no map look-up, fmt call or regexp per operator, and no
// allocation for most.

import (
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// accessEntry is what a request's or a TCP connection's log lines say.
type accessEntry struct {
	start    time.Time
	tcp      bool
	duration time.Duration
	// req is the request (nil for TCP); method and path are as it
	// arrived; resp the upstream's response, when there was one.
	req          *http.Request
	method, path string
	resp         *http.Response
	protocol     string
	code         int
	flags        string
	details      string
	// received and sent are the downstream's bytes.
	received, sent int64
	route          string
	// cluster is the upstream cluster (for a request, the route's once
	// an endpoint was tried); ep the last endpoint tried.
	cluster       string
	ep            *config.Endpoint
	attempts      int
	local, remote netip.AddrPort
	peer          string
	localSAN      string
	// grpcStatus is the gRPC status number, "" when not gRPC.
	grpcStatus string
	traceID    string
	fs         map[string]string
	meta       map[string]map[string]string
	// src and dst are the peers: FILTER_STATE's downstream_peer_obj and
	// upstream_peer_obj.
	src, dst *Peer
}

// accessEntry is a finished request's entry; principal is the
// downstream's.
func (r *requestRecord) accessEntry(flags, principal string, received, sent int64, dur time.Duration) *accessEntry {
	details := r.Details
	if details == "" {
		details = detailsFor(flags, r.ep != nil)
	}
	e := &accessEntry{start: r.start, duration: dur, req: r.req, method: r.method, path: r.path, resp: r.resp,
		protocol: envoyProtocol(r.req), code: r.Status, flags: flags, details: details, received: received, sent: sent,
		route: r.route, ep: r.ep, local: r.ci.local, remote: r.ci.remote, peer: principal, localSAN: r.ci.localSAN,
		grpcStatus: r.grpcResponseStatus(), fs: r.ci.fs, meta: r.metadata(), src: r.src, dst: r.dst}
	if l := r.ci.fs["io.istio.local_principal"]; l != "" {
		e.localSAN = l
	}
	if r.ep != nil {
		e.cluster, e.attempts = r.Cluster, r.Retries+1
	}
	if r.trace != nil {
		e.traceID = r.trace.traceID
	}
	return e
}

// Istio's peer metadata objects in filter state (its proxy's
// peer_metadata filter): the downstream's and the upstream's workload.
const (
	downstreamPeerObj = "downstream_peer_obj"
	upstreamPeerObj   = "upstream_peer_obj"
)

// peerField is FILTER_STATE(key:FIELD:field): a field of a peer object,
// named as Istio's proxy names them. The workload API carries no app
// labels, so app and version have no value, as in the metrics.
func (e *accessEntry) peerField(key, field string) string {
	var p *Peer
	switch key {
	case downstreamPeerObj:
		p = e.src
	case upstreamPeerObj:
		p = e.dst
	}
	if p == nil {
		return ""
	}
	switch field {
	case "namespace":
		return p.Namespace
	case "cluster":
		return p.ClusterID
	case "service":
		return p.CanonicalName
	case "revision":
		return p.CanonicalRevision
	case "workload":
		return p.WorkloadName
	case "name":
		return p.Name
	case "type":
		return p.Type
	case "identity":
		return p.Identity
	}
	return ""
}

// valueKind is what appendValue found.
type valueKind uint8

const (
	valueNone valueKind = iota // no value: "-" in text, null in JSON
	valueString
	valueNumber // typed as a number in JSON
)

// hostname is the process's host name, read once.
var hostname = sync.OnceValue(func() string {
	h, _ := os.Hostname()
	return h
})

// appendValue appends p's value for e to b (nothing when it has none),
// truncated to p.Max.
func (e *accessEntry) appendValue(b []byte, p *config.LogPart) ([]byte, valueKind) {
	n := len(b)
	b, k := e.appendRaw(b, p)
	if k == valueString && p.Max > 0 && len(b)-n > p.Max {
		b = b[:n+p.Max]
	}
	return b, k
}

func appendStr(b []byte, s string) ([]byte, valueKind) {
	if s == "" {
		return b, valueNone
	}
	return append(b, s...), valueString
}

func appendNum(b []byte, n int64) ([]byte, valueKind) {
	return strconv.AppendInt(b, n, 10), valueNumber
}

func appendAddr(b []byte, a netip.AddrPort, port bool) ([]byte, valueKind) {
	switch {
	case !a.IsValid():
		return b, valueNone
	case port:
		return a.AppendTo(b), valueString
	}
	return a.Addr().AppendTo(b), valueString
}

func appendPort(b []byte, a netip.AddrPort) ([]byte, valueKind) {
	if !a.IsValid() {
		return b, valueNone
	}
	return appendNum(b, int64(a.Port()))
}

// header is a request header as Envoy's %REQ% reads it, pseudo-headers
// included; name is lower case, key its canonical form.
func (e *accessEntry) header(name, key string) (string, bool) {
	r := e.req
	if r == nil {
		return "", false
	}
	if name != "" && name[0] == ':' || name == "host" {
		switch name {
		case ":authority", "host":
			return r.Host, r.Host != ""
		case ":path":
			return e.path, e.path != ""
		case ":method":
			return e.method, e.method != ""
		case ":scheme":
			return "http", true
		case ":protocol":
			return "", false
		}
	}
	return headerValue(r.Header, name, key)
}

// headerValue is h's name (its canonical key given), values joined
// with ",".
func headerValue(h http.Header, name, key string) (string, bool) {
	vs := h[key]
	if vs == nil && key != name {
		vs = h[name] // set by hand under a non-canonical key
	}
	switch len(vs) {
	case 0:
		return "", false
	case 1:
		return vs[0], true
	}
	return strings.Join(vs, ","), true
}

func (e *accessEntry) respHeader(trailer bool, name, key string) (string, bool) {
	if e.resp == nil {
		return "", false
	}
	h := e.resp.Header
	if trailer {
		h = e.resp.Trailer
	}
	return headerValue(h, name, key)
}

func (e *accessEntry) appendRaw(b []byte, p *config.LogPart) ([]byte, valueKind) {
	switch p.Code {
	case config.OpStartTime:
		return config.AppendStrftime(b, e.start, p.Arg), valueString
	case config.OpReq, config.OpReqWithoutQuery:
		v, ok := e.header(p.Arg, p.Key)
		if !ok && p.Alt != "" {
			v, _ = e.header(p.Alt, p.AltKey)
		}
		if p.Code == config.OpReqWithoutQuery {
			v, _, _ = strings.Cut(v, "?")
		}
		return appendStr(b, v)
	case config.OpResp, config.OpTrailer:
		v, ok := e.respHeader(p.Code == config.OpTrailer, p.Arg, p.Key)
		if !ok && p.Alt != "" {
			v, _ = e.respHeader(p.Code == config.OpTrailer, p.Alt, p.AltKey)
		}
		return appendStr(b, v)
	case config.OpMethod:
		return appendStr(b, e.method)
	case config.OpPath:
		v := ""
		if p.Alt != "PATH" {
			v, _ = e.header("x-envoy-original-path", "X-Envoy-Original-Path")
		}
		if v == "" && p.Alt != "ORIG" {
			v = e.path
		}
		if p.Arg == "NQ" {
			v, _, _ = strings.Cut(v, "?")
		}
		return appendStr(b, v)
	case config.OpProtocol:
		return appendStr(b, e.protocol)
	case config.OpResponseCode:
		return appendNum(b, int64(e.code))
	case config.OpResponseFlags:
		return appendStr(b, e.flags)
	case config.OpResponseFlagsLong:
		return appendLongFlags(b, e.flags)
	case config.OpResponseCodeDetails:
		if e.tcp {
			return b, valueNone
		}
		return appendStr(b, e.details)
	case config.OpConnectionTerminationDetails:
		if !e.tcp {
			return b, valueNone
		}
		return appendStr(b, e.details)
	case config.OpBytesReceived:
		return appendNum(b, e.received)
	case config.OpBytesSent:
		return appendNum(b, e.sent)
	case config.OpDuration:
		return appendNum(b, e.duration.Milliseconds())
	case config.OpUpstreamHost:
		if e.ep == nil {
			return b, valueNone
		}
		if e.ep.Listener == "" {
			return appendAddr(b, e.ep.Address, true)
		}
		return appendStr(b, e.ep.String())
	case config.OpUpstreamRemoteAddress:
		if e.ep == nil {
			return b, valueNone
		}
		return appendAddr(b, e.ep.Address, true)
	case config.OpUpstreamRemoteAddressWithoutPort:
		if e.ep == nil {
			return b, valueNone
		}
		return appendAddr(b, e.ep.Address, false)
	case config.OpUpstreamRemotePort:
		if e.ep == nil {
			return b, valueNone
		}
		return appendPort(b, e.ep.Address)
	case config.OpUpstreamCluster, config.OpUpstreamClusterRaw:
		return appendStr(b, e.cluster)
	case config.OpUpstreamRequestAttemptCount:
		return appendNum(b, int64(e.attempts))
	case config.OpDownstreamLocalAddress:
		return appendAddr(b, e.local, true)
	case config.OpDownstreamLocalAddressWithoutPort:
		return appendAddr(b, e.local, false)
	case config.OpDownstreamLocalPort:
		return appendPort(b, e.local)
	case config.OpDownstreamRemoteAddress, config.OpDownstreamDirectRemoteAddress:
		return appendAddr(b, e.remote, true)
	case config.OpDownstreamRemoteAddressWithoutPort, config.OpDownstreamDirectRemoteAddressWithoutPort:
		return appendAddr(b, e.remote, false)
	case config.OpDownstreamRemotePort, config.OpDownstreamDirectRemotePort:
		return appendPort(b, e.remote)
	case config.OpDownstreamPeerURISAN:
		return appendStr(b, e.peer)
	case config.OpDownstreamLocalURISAN:
		return appendStr(b, e.localSAN)
	case config.OpRouteName:
		return appendStr(b, e.route)
	case config.OpGRPCStatus, config.OpGRPCStatusNumber:
		return appendGRPCStatus(b, e.grpcStatus, p)
	case config.OpTraceID:
		return appendStr(b, e.traceID)
	case config.OpHostname:
		return appendStr(b, hostname())
	case config.OpEnvironment:
		return appendStr(b, p.Alt)
	case config.OpFilterState:
		if p.Alt != "" {
			return appendStr(b, e.peerField(p.Arg, p.Alt))
		}
		return appendStr(b, e.fs[p.Arg])
	case config.OpDynamicMetadata:
		return appendStr(b, e.meta[p.Arg][p.Alt])
	}
	// UPSTREAM_LOCAL_ADDRESS, UPSTREAM_TRANSPORT_FAILURE_REASON,
	// REQUESTED_SERVER_NAME and the operators the waypoint does not
	// record (config.OpUnrecorded): no value.
	return b, valueNone
}

// grpcSnake are gRPC's status names in SNAKE_STRING form, by number.
var grpcSnake = [...]string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
	"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

// appendGRPCStatus renders a gRPC status number as GRPC_STATUS(form)
// or GRPC_STATUS_NUMBER does.
func appendGRPCStatus(b []byte, status string, p *config.LogPart) ([]byte, valueKind) {
	if status == "" {
		return b, valueNone
	}
	n, err := strconv.Atoi(status)
	if err != nil || n < 0 {
		return appendStr(b, status)
	}
	switch {
	case p.Code == config.OpGRPCStatusNumber || p.Arg == "NUMBER":
		return appendNum(b, int64(n))
	case p.Arg == "SNAKE_STRING" && n < len(grpcSnake):
		return append(b, grpcSnake[n]...), valueString
	case n < len(grpcSnake):
		return append(b, codes.Code(n).String()...), valueString
	}
	return appendNum(b, int64(n))
}

// longFlags are Envoy's response flags' long names (RESPONSE_FLAGS_LONG).
var longFlags = map[string]string{
	"LH": "FailedLocalHealthCheck", "UH": "NoHealthyUpstream", "UT": "UpstreamRequestTimeout", "LR": "LocalReset",
	"UR": "UpstreamRemoteReset", "UF": "UpstreamConnectionFailure", "UC": "UpstreamConnectionTermination",
	"UO": "UpstreamOverflow", "NR": "NoRouteFound", "DI": "DelayInjected", "FI": "FaultInjected", "RL": "RateLimited",
	"UAEX": "UnauthorizedExternalService", "RLSE": "RateLimitServiceError", "DC": "DownstreamConnectionTermination",
	"URX": "UpstreamRetryLimitExceeded", "SI": "StreamIdleTimeout", "IH": "InvalidEnvoyRequestHeaders",
	"DPE": "DownstreamProtocolError", "UMSDR": "UpstreamMaxStreamDurationReached", "RFCF": "ResponseFromCacheFilter",
	"NFCF": "NoFilterConfigFound", "DT": "DurationTimeout", "UPE": "UpstreamProtocolError", "NC": "NoClusterFound",
	"OM": "OverloadManagerTerminated", "DF": "DnsResolutionFailed", "DO": "DropOverload", "DR": "DownstreamRemoteReset",
	"UDO": "UnconditionalDropOverload",
}

func appendLongFlags(b []byte, flags string) ([]byte, valueKind) {
	if flags == "" || flags == "-" {
		return appendStr(b, flags)
	}
	for i, f := range strings.Split(flags, ",") {
		if i > 0 {
			b = append(b, ',')
		}
		if l, ok := longFlags[f]; ok {
			f = l
		}
		b = append(b, f...)
	}
	return b, valueString
}

// appendText appends f rendered as text: a missing value is empty
// ("-" unless omitEmpty, as Envoy's omit_empty_values).
func (e *accessEntry) appendText(b []byte, f *config.LogFormat, omitEmpty bool) []byte {
	for i := range f.Parts {
		p := &f.Parts[i]
		if p.Op == "" {
			b = append(b, p.Literal...)
			continue
		}
		var k valueKind
		b, k = e.appendValue(b, p)
		if k == valueNone && !omitEmpty {
			b = append(b, '-')
		}
	}
	return b
}

// appendJSON appends al's JSON line: a value that is one operator keeps
// its type (a number, or null when missing; left out with omitEmpty),
// others are strings rendered as text.
func (e *accessEntry) appendJSON(b, scratch []byte, al *config.AccessLog) ([]byte, []byte) {
	b = append(b, '{')
	first := true
	for i := range al.JSON {
		f := &al.JSON[i]
		var k valueKind
		scratch = scratch[:0]
		if p := f.Format.Single(); p != nil {
			scratch, k = e.appendValue(scratch, p)
		} else {
			scratch, k = e.appendText(scratch, f.Format, al.OmitEmpty), valueString
		}
		if k == valueNone && al.OmitEmpty {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(append(b, f.QuotedKey...), ':')
		switch k {
		case valueNone:
			b = append(b, "null"...)
		case valueNumber:
			b = append(b, scratch...)
		default:
			b = appendJSONString(b, scratch)
		}
	}
	return append(b, '}', '\n'), scratch
}

// render is e's line in file access log al.
func (e *accessEntry) render(al *config.AccessLog) []byte {
	b := make([]byte, 0, 512)
	if al.JSON == nil {
		if al.Text == nil {
			return b
		}
		return e.appendText(b, al.Text, al.OmitEmpty)
	}
	b, _ = e.appendJSON(b, make([]byte, 0, 128), al)
	return b
}

// formatString is f rendered as an OpenTelemetry log's string value
// ("-" for a missing value, as Envoy's).
func (e *accessEntry) formatString(f *config.LogFormat) string {
	if len(f.Parts) == 1 && f.Parts[0].Op == "" {
		return f.Parts[0].Literal
	}
	var buf [128]byte
	return string(e.appendText(buf[:0], f, false))
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string: quotes, backslashes and
// control characters escaped, invalid UTF-8 replaced (U+FFFD), the rest
// as it is (no HTML escaping, as Envoy's).
func appendJSONString(b, s []byte) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
