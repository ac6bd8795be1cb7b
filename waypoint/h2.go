package waypoint

import (
	"bytes"
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// HTTP/2 through the waypoint. The HBONE stream into an HTTP chain
// carries whatever the client speaks; with codec_type AUTO (istiod's)
// the connection manager serves HTTP/2 to a client that opens with the
// HTTP/2 connection preface (h2c with prior knowledge, what gRPC clients
// send) and HTTP/1 otherwise, as Envoy's. An HTTP/2 connection runs
// x/net's server: each stream is one request through the same filters
// and router as an HTTP/1 request, its body streamed both ways, its
// trailers passed on. Upstream, a cluster whose HttpProtocolOptions say
// HTTP/2 (istiod's for grpc and http2 ports), or use_downstream_protocol
// with an HTTP/2 client, is reached over cleartext HTTP/2 with prior
// knowledge: a connection per endpoint multiplexing its requests, and
// another when the server's stream limit is reached.

// responder answers one request downstream.
type responder interface {
	// local writes a response the waypoint makes itself.
	local(req *http.Request, status int, body string, h http.Header) error
	// proxied writes an upstream's response, body and trailers; keep is
	// false when the connection can carry no more requests, failed when
	// the response broke off.
	proxied(req *http.Request, resp *http.Response) (keep, failed bool)
	// continue100 tells the client to send its body.
	continue100() error
	// done ends the request: false when the connection can carry no
	// more.
	done(req *http.Request) bool
	// conn is the HTTP/1 connection (upgrades), nil on HTTP/2.
	conn() *sniffConn
	// protocol is the downstream request's, as Istio's request_protocol.
	protocol() string
}

// h1Responder writes HTTP/1.1 on the connection.
type h1Responder struct{ c *sniffConn }

func (r h1Responder) local(req *http.Request, status int, body string, h http.Header) error {
	if isGRPC(req) {
		status, body, h = grpcLocal(status, body, h)
	}
	return writeLocal(r.c, req, status, body, h, false)
}

func (r h1Responder) continue100() error {
	_, err := io.WriteString(r.c, "HTTP/1.1 100 Continue\r\n\r\n")
	return err
}

func (r h1Responder) done(req *http.Request) bool { return drainBody(req) }
func (r h1Responder) conn() *sniffConn            { return r.c }
func (r h1Responder) protocol() string            { return "http" }

func (r h1Responder) proxied(req *http.Request, resp *http.Response) (keep, failed bool) {
	resp.Close = resp.Close || req.Close
	// TransferEncoding from the upstream is the upstream hop's framing;
	// the writer frames the body for this hop: chunked when its length
	// is unknown, except to an HTTP/1.0 client, which reads it to the
	// close (as net/http's server answers one; the writer then closes).
	if resp.ContentLength < 0 && req.ProtoAtLeast(1, 1) {
		resp.TransferEncoding = []string{"chunked"}
	} else {
		resp.TransferEncoding = nil
	}
	resp.ProtoMajor, resp.ProtoMinor = 1, 1
	// The head and the body go out through one buffer (net/http writes
	// each header line on its own, which on a tunnel would be a frame
	// and a TLS record each); it is flushed before each wait for more of
	// the upstream's body, so a streamed response is not held back
	// (flushingBody: a small body of known length goes with its head).
	bw := getWriter(r.c)
	fb := newFlushingBody(resp, bw)
	defer putWriter(bw, fb)
	closeConn, err := writeResponseTo(bw, resp, req)
	if err != nil {
		return false, true
	}
	if err := bw.Flush(); err != nil {
		return false, true
	}
	if closeConn {
		r.c.answered = true
		return false, false
	}
	return drainBody(req), false
}

// keepAlive10: req is HTTP/1.0 and asks to keep its connection
// (writeResponseTo).
func keepAlive10(req *http.Request) bool {
	return is10(req) && !req.Close
}

// is10: req is HTTP/1.0.
func is10(req *http.Request) bool {
	return req != nil && req.ProtoMajor == 1 && req.ProtoMinor == 0
}

// h2Responder answers one HTTP/2 stream.
type h2Responder struct {
	w http.ResponseWriter
	// aborted: the response could not be completed; the stream is reset.
	aborted bool
	// written counts the body bytes written (telemetry's response bytes).
	written int64
	// dropTrailers: the upstream's trailers do not pass (an HTTP/1.1
	// endpoint of a cluster without enable_trailers).
	dropTrailers bool
	// down is the stream of an extended CONNECT (WebSocket over
	// HTTP/2), the tunnel's downstream side; nil otherwise.
	down io.ReadCloser
}

func (r *h2Responder) bytesWritten() int64 { return r.written }

func (r *h2Responder) local(req *http.Request, status int, body string, h http.Header) error {
	if isGRPC(req) {
		status, body, h = grpcLocal(status, body, h)
	}
	for k, vs := range h {
		r.w.Header()[k] = vs
	}
	if body != "" && r.w.Header().Get("Content-Type") == "" {
		r.w.Header().Set("Content-Type", "text/plain")
	}
	r.w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	r.w.WriteHeader(status)
	n, err := io.WriteString(r.w, body)
	r.written += int64(n)
	return err
}

// continue100: x/net's server sends 100 Continue on the first read of
// the body.
func (r *h2Responder) continue100() error      { return nil }
func (r *h2Responder) done(*http.Request) bool { return true }
func (r *h2Responder) conn() *sniffConn        { return nil }
func (r *h2Responder) protocol() string        { return "http/2" }
func (r *h2Responder) abort()                  { r.aborted = true }

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (r *h2Responder) proxied(req *http.Request, resp *http.Response) (keep, failed bool) {
	h := r.w.Header()
	for k, vs := range resp.Header {
		h[k] = vs
	}
	if resp.ContentLength >= 0 && h.Get("Content-Length") == "" {
		h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	r.w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(r.w)
	if resp.ContentLength != 0 {
		// The head goes now (a stream's client may wait for it); a
		// known-empty answer (gRPC's trailers-only) goes whole, its
		// headers ending the stream.
		rc.Flush()
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			w, werr := r.w.Write(buf[:n])
			r.written += int64(w)
			if werr != nil {
				r.abort()
				return false, true
			}
			rc.Flush()
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			r.abort()
			return false, true
		}
	}
	if !r.dropTrailers {
		for k, vs := range resp.Trailer {
			h[http.TrailerPrefix+k] = vs
		}
	}
	return true, false
}

var (
	_ responder = h1Responder{}
	_ responder = (*h2Responder)(nil)
)

// http2Preface is the client's connection preface.
const http2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// isH2 tells whether the connection manager serves c as HTTP/2: always
// with codec HTTP2, never with HTTP1, and with AUTO when the client
// opens with the preface (the http_inspector's "h2c" if it looked
// already, else the first bytes read up to the first that differs).
func isH2(hcm *config.HCM, c *sniffConn) bool {
	switch hcm.Codec {
	case config.CodecHTTP2:
		return true
	case config.CodecHTTP1:
		return false
	}
	if c.sniffed && c.proto != "" {
		return c.proto == "h2c"
	}
	c.wait()
	for n := 1; n <= len(http2Preface); n++ {
		b, _ := c.br.Peek(n)
		if len(b) < n || !bytes.HasPrefix([]byte(http2Preface), b) {
			return false
		}
	}
	return true
}

// serveH2 is the connection manager on an HTTP/2 connection: each
// stream a request against the snapshot current when it arrives. It is
// net/http's server (cleartext HTTP/2 only) on a listener of this one
// connection.
func (p *Proxy) serveH2(ctx context.Context, hcm *config.HCM, listenerName, chainName string, c *sniffConn, ci *connInfo) {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	ln := &connListener{c: c, done: make(chan struct{})}
	srv := &http.Server{
		Protocols:      &protos,
		IdleTimeout:    hcm.IdleTimeout,
		MaxHeaderBytes: hcm.MaxRequestHeadersKB << 10,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams:          1000,
			MaxReadFrameSize:              1 << 20,
			MaxReceiveBufferPerConnection: 16 << 20,
			MaxReceiveBufferPerStream:     4 << 20,
		},
		BaseContext: func(net.Listener) context.Context { return ctx },
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				ln.Close()
			}
		},
		ErrorLog: log.New(io.Discard, "", 0),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			snap := p.snap.Load()
			hcm := lookupHCM(snap, listenerName, chainName)
			rw := &h2Responder{w: w}
			if hcm == nil {
				rw.local(req, http.StatusServiceUnavailable, "", nil)
				return
			}
			if req.Method == http.MethodConnect && req.Header.Get(":protocol") != "" {
				rw.extendedConnect(req)
			}
			p.serveRequest(req.Context(), snap, hcm, rw, ci, req)
			if rw.aborted {
				panic(http.ErrAbortHandler) // resets the stream
			}
		}),
	}
	srv.Serve(ln)
}

// connListener is a listener that accepts one connection, then waits
// until closed.
type connListener struct {
	c      net.Conn
	once   sync.Once
	closed sync.Once
	done   chan struct{}
}

func (l *connListener) Accept() (net.Conn, error) {
	var c net.Conn
	l.once.Do(func() { c = l.c })
	if c != nil {
		return c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *connListener) Close() error {
	l.closed.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return l.c.LocalAddr() }

// isGRPC: the request is gRPC (its content type).
func isGRPC(req *http.Request) bool {
	return req != nil && strings.HasPrefix(req.Header.Get("Content-Type"), "application/grpc")
}

// grpcLocal turns a local reply to a gRPC request into gRPC's form, as
// Envoy's local replies do: HTTP 200 with grpc-status (mapped from the
// HTTP status as gRPC's spec maps them) and grpc-message, no body.
func grpcLocal(status int, body string, h http.Header) (int, string, http.Header) {
	out := http.Header{}
	for k, vs := range h {
		out[k] = vs
	}
	out.Set("Content-Type", "application/grpc")
	out.Set("Grpc-Status", strconv.Itoa(grpcStatusFor(status)))
	if body == "" {
		body = http.StatusText(status)
	}
	out.Set("Grpc-Message", body)
	return http.StatusOK, "", out
}

// grpcStatusFor is gRPC's HTTP-to-gRPC status mapping
// (doc/http-grpc-status-mapping.md in grpc/grpc).
func grpcStatusFor(status int) int {
	switch status {
	case http.StatusOK:
		return 0 // OK
	case http.StatusBadRequest:
		return 13 // INTERNAL
	case http.StatusUnauthorized:
		return 16 // UNAUTHENTICATED
	case http.StatusForbidden:
		return 7 // PERMISSION_DENIED
	case http.StatusNotFound:
		return 12 // UNIMPLEMENTED
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return 14 // UNAVAILABLE
	case http.StatusRequestTimeout:
		return 4 // DEADLINE_EXCEEDED
	default:
		return 2 // UNKNOWN
	}
}

// grpcTimeout parses a grpc-timeout header: up to eight digits and a
// unit (H, M, S, m, u, n), as gRPC's HTTP/2 protocol defines it.
func grpcTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	unit := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}[v[len(v)-1]]
	if unit == 0 {
		return 0, false
	}
	return time.Duration(n) * unit, true
}

// grpcStatusOf is a gRPC response's grpc-status: from the trailers, or
// the headers of a trailers-only response; "" when it has none.
func grpcStatusOf(resp *http.Response) string {
	if resp == nil {
		return ""
	}
	if s := resp.Trailer.Get("Grpc-Status"); s != "" {
		return s
	}
	return resp.Header.Get("Grpc-Status")
}

// newH2Transport is the upstream transport of HTTP/2 clusters: cleartext
// HTTP/2 with prior knowledge over the same dial as HTTP/1, one
// connection per endpoint key multiplexing its requests.
func (p *Proxy) newH2Transport() *http.Transport {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	return &http.Transport{
		DialContext: p.dialHTTP,
		Protocols:   &protos,
		// One dial at a time per endpoint key, so requests that start
		// together share its streams (without it each dials one); for
		// HTTP/2 it bounds only dials in progress: a connection whose
		// streams are all in use gets a sibling.
		MaxConnsPerHost:    1,
		IdleConnTimeout:    time.Hour,
		DisableCompression: true,
		HTTP2: &http.HTTP2Config{
			MaxReadFrameSize:              1 << 20,
			MaxReceiveBufferPerConnection: 16 << 20,
			MaxReceiveBufferPerStream:     4 << 20,
		},
	}
}
