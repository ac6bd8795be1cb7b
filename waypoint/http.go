package waypoint

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/waypoint/config"
)

// view is one request (or connection) as matchers and format strings
// read it.
type view struct {
	req *http.Request
	ci  *connInfo
	fs  map[string]string
	// fsShared: fs is the connection's, read-only here; the first value
	// a filter sets copies it.
	fsShared bool
	query    url.Values
	// rec is what the filters and the router record of the request (nil
	// on a connection).
	rec *requestRecord
}

var _ config.Request = (*view)(nil)
var _ config.FormatContext = (*view)(nil)

func (v *view) Header(name string) (string, bool) {
	if v.req == nil {
		return "", false
	}
	switch name {
	case ":method":
		return v.req.Method, true
	case ":authority", "host":
		return v.req.Host, v.req.Host != ""
	case ":path":
		return v.req.RequestURI, true
	case ":scheme":
		return "http", true
	}
	vs := v.req.Header.Values(name)
	if len(vs) == 0 {
		return "", false
	}
	return strings.Join(vs, ","), true
}

func (v *view) Path() string {
	if v.req == nil {
		return ""
	}
	return v.req.RequestURI
}

func (v *view) Query() map[string][]string {
	if v.query == nil && v.req != nil {
		_, q, _ := strings.Cut(v.req.RequestURI, "?")
		v.query, _ = url.ParseQuery(q)
	}
	return v.query
}

func (v *view) Destination() netip.AddrPort { return v.ci.local }
func (v *view) Source() netip.AddrPort      { return v.ci.remote }

func (v *view) FilterState(key string) (string, bool) {
	s, ok := v.fs[key]
	return s, ok
}

func (v *view) DynamicMetadata(namespace, key string) (string, bool) {
	meta := v.ci.meta
	if v.rec != nil && v.rec.meta != nil {
		meta = v.rec.meta
	}
	s, ok := meta[namespace][key]
	return s, ok
}

func (v *view) PeerPrincipal() (string, bool)  { return v.ci.peer, v.ci.peer != "" }
func (v *view) LocalPrincipal() (string, bool) { return v.ci.localSAN, v.ci.localSAN != "" }

// setFilterState runs set_filter_state values; a read-only key already
// set is kept.
func (v *view) setFilterState(vals []*config.FilterStateValue) {
	for _, fv := range vals {
		s, ok := fv.Value.Eval(v)
		if !ok && fv.SkipIfEmpty || s == "" && fv.SkipIfEmpty {
			continue
		}
		if _, set := v.fs[fv.Key]; set && fv.ReadOnly {
			continue
		}
		if v.fsShared || v.fs == nil {
			own := make(map[string]string, len(v.fs)+len(vals))
			maps.Copy(own, v.fs)
			v.fs, v.fsShared = own, false
		}
		v.fs[fv.Key] = s
	}
}

// selectRoute picks the virtual host by :authority (Envoy's order:
// exact, suffix wildcard, prefix wildcard, "*") and its first matching
// route.
func selectRoute(h *config.HCM, v *view, req *http.Request) *config.Route {
	vh := selectVirtualHost(h.VirtualHosts, req.Host)
	if vh == nil {
		return nil
	}
	for _, r := range vh.Routes {
		if r.Match.Matches(v, req.Method) {
			return r
		}
	}
	return nil
}

// hostWithoutPort is host's host where it is "host:port" or
// "[ipv6]:port", as net.SplitHostPort would split it, else host itself
// (SplitHostPort made an error, an allocation, for every request whose
// authority had no port).
func hostWithoutPort(host string) string {
	i := strings.LastIndexByte(host, ':')
	if i < 0 {
		return host
	}
	h := host[:i]
	if strings.ContainsAny(host[i+1:], "[]") {
		return host
	}
	if strings.HasPrefix(h, "[") {
		if !strings.HasSuffix(h, "]") || strings.ContainsAny(h[1:len(h)-1], "[]") {
			return host
		}
		return h[1 : len(h)-1]
	}
	if strings.ContainsAny(h, ":[]") {
		return host // an IPv6 address without brackets, or a stray bracket
	}
	return h
}

func selectVirtualHost(vhs []*config.VirtualHost, host string) *config.VirtualHost {
	host = strings.ToLower(host)
	hostNoPort := hostWithoutPort(host)
	var best *config.VirtualHost
	bestRank, bestLen := 0, -1
	for _, vh := range vhs {
		for _, d := range vh.Domains {
			d = strings.ToLower(d)
			rank, l := 0, len(d)
			switch {
			case d == host || d == hostNoPort:
				rank = 4
			case strings.HasPrefix(d, "*") && d != "*" && (strings.HasSuffix(host, d[1:]) || strings.HasSuffix(hostNoPort, d[1:])):
				rank = 3
			case strings.HasSuffix(d, "*") && d != "*" && strings.HasPrefix(host, d[:len(d)-1]):
				rank = 2
			case d == "*":
				rank = 1
			}
			if rank > bestRank || rank == bestRank && rank > 0 && l > bestLen {
				best, bestRank, bestLen = vh, rank, l
			}
		}
	}
	return best
}

// hopHeaders are removed before forwarding (RFC 9110 section 7.6.1).
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// errHead is a request head the waypoint refuses for its size or its
// framing (readRequest), with the status it answers.
type errHead struct {
	status int
	msg    string
}

func (e *errHead) Error() string { return e.msg }

// serveHTTP is an HTTP connection manager on one connection: HTTP/1.1
// requests one after the other (keep-alive), each against the snapshot
// current when it arrives.
func (p *Proxy) serveHTTP(ctx context.Context, listenerName, chainName string, c *sniffConn, ci *connInfo) {
	if hcm := lookupHCM(p.snap.Load(), listenerName, chainName); hcm != nil {
		// The first bytes decide the codec; the header-read and idle
		// timeouts bound the wait for them.
		wait := hcm.IdleTimeout
		if hcm.RequestHeadersTimeout > 0 && (wait == 0 || hcm.RequestHeadersTimeout < wait) {
			wait = hcm.RequestHeadersTimeout
		}
		var timer *time.Timer
		if wait > 0 {
			timer = time.AfterFunc(wait, func() { c.Close() })
		}
		h2 := isH2(hcm, c)
		if timer != nil && !timer.Stop() {
			return
		}
		if h2 {
			p.serveH2(ctx, hcm, listenerName, chainName, c, ci)
			return
		}
	}
	rw := h1Responder{c}
	// Requests are cancelled with the connection through cc: one
	// registration with the stream's context for all of them.
	cc := newConnCtx(ctx)
	defer cc.close()
	// reuse is the connection's request, reused by each next one: the
	// loop reads a request only once the one before is done, and nothing
	// keeps a request after (telemetry records it as it ends; a mirror
	// makes a request of its own).
	var reuse *h1Request
	// Header-read and idle timeouts: the stream has no deadlines, so a
	// timer closes it; one timer for the connection, re-armed for each
	// request (a new one per request was two allocations and a closure).
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		snap := p.snap.Load()
		hcm := lookupHCM(snap, listenerName, chainName)
		if hcm == nil {
			return // the chain is gone: the connection drains with it
		}
		wait := hcm.IdleTimeout
		if hcm.RequestHeadersTimeout > 0 && (wait == 0 || hcm.RequestHeadersTimeout < wait) {
			wait = hcm.RequestHeadersTimeout
		}
		if wait > 0 {
			if timer == nil {
				timer = time.AfterFunc(wait, func() { c.Close() })
			} else {
				timer.Reset(wait)
			}
		}
		if reuse == nil {
			reuse = new(h1Request)
		}
		req, err := readRequest(c, hcm.MaxRequestHeadersKB<<10, hcm.MaxHeadersCount, reuse)
		if wait > 0 && !timer.Stop() {
			return
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
				return
			}
			status := http.StatusBadRequest
			var eh *errHead
			if errors.As(err, &eh) {
				status = eh.status
			}
			p.stats.badRequests.Add(1)
			p.log.Debug("malformed request", logkey.Error, err.Error())
			p.malformedRequest(c, ci, snap, hcm, status) // answers it
			return
		}
		// The request runs against the snapshot current now that it has
		// arrived, not the one current when the connection went idle.
		snap = p.snap.Load()
		if hcm = lookupHCM(snap, listenerName, chainName); hcm == nil {
			writeLocal(c, req, http.StatusServiceUnavailable, "", nil, true)
			return
		}
		body := req.Body
		keep := p.serveRequest(cc, snap, hcm, rw, ci, req)
		if !keep || req.Close {
			if keep {
				c.answered = true // in full; the client asked to close
			}
			return
		}
		if !bodyDone(body) {
			// Never read a request from the middle of a body: whatever
			// kept the connection, its body was not read to the end.
			return
		}
	}
}

func lookupHCM(snap *config.Snapshot, listener, chain string) *config.HCM {
	if snap == nil {
		return nil
	}
	l := snap.Listeners[listener]
	if l == nil {
		return nil
	}
	ch := l.Chain(chain)
	if ch == nil {
		return nil
	}
	return ch.HCM
}

// writeLocal writes a response the waypoint makes itself, as net/http's
// Response.Write would write it (a text/plain body of known length),
// without building a Response and a header map for it; a status without
// a body gets no framing and no body (respwrite.go says why).
func writeLocal(w io.Writer, req *http.Request, status int, body string, h http.Header, closeConn bool) error {
	method := ""
	if req != nil {
		method = req.Method
	}
	bw := getWriter(w)
	defer releaseWriter(bw)
	if is10(req) {
		writeStatusLine(bw, 1, 0, status, "") // as writeResponseTo
	} else {
		writeStatusLine(bw, 1, 1, status, "")
	}
	// Response.Write's order: the length before the other fields for a
	// body, or for an empty one answering POST, PUT or PATCH; after them
	// for another empty one.
	framed := statusHasBody(status) || method == http.MethodHead
	first := framed && (body != "" || method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch)
	switch conn := firstValue(h, "Connection"); {
	case closeConn && !listHasToken(conn, "close"):
		bw.WriteString("Connection: close\r\n")
	case !closeConn && keepAlive10(req) && (first || statusHasBody(status)) && !listHasToken(conn, "keep-alive"):
		// (As writeResponseTo: the length keeps the connection.)
		bw.WriteString("Connection: keep-alive\r\n")
	}
	if first {
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(len(body)), 10))
		bw.WriteString("\r\n")
	}
	ctype := ""
	if body != "" {
		ctype = "text/plain"
	}
	writeHeaderLines(bw, h, true, ctype)
	if !first && statusHasBody(status) {
		bw.WriteString("Content-Length: 0\r\n")
	}
	bw.WriteString("\r\n")
	if method != http.MethodHead && statusHasBody(status) {
		bw.WriteString(body)
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if closeConn {
		if c, ok := w.(*sniffConn); ok {
			c.answered = true
		}
	}
	return nil
}

// halfClose ends the sending side of a downstream connection whose last
// response went out whole (an HTTP "Connection: close"): an HBONE stream
// ends with END_STREAM, and the close that follows with RST_STREAM
// NO_ERROR rather than CANCEL (RFC 9113 section 8.1), so that the
// client's ztunnel sees an orderly end; TCP sends its FIN before the
// close, as net/http's server does.
func halfClose(c *sniffConn) {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// writerOnly hides everything of a writer but Write.
type writerOnly struct{ io.Writer }

// flushingBody flushes w before each read of the body it wraps, unless
// it holds: a body whose length is known and at most holdMax goes out
// with its head in one write, as Envoy's codec sends a head and body
// that arrived together (on a tunnel each write is a frame and a TLS
// record; measured in docs/performance.md, "waypoint against C
// proxies").
type flushingBody struct {
	io.ReadCloser
	// w is nil once the response is written (its buffer is pooled).
	w    *bufio.Writer
	hold bool
}

// holdMax is the largest body that waits for its head: well inside the
// response buffer (respBufSize), so head and body flush once.
const holdMax = 16 << 10

// respBufSize is the buffer a proxied HTTP/1 response goes through.
const respBufSize = 32 << 10

// newFlushingBody wraps resp's body so that bw is flushed before each
// read of it, and sets it as resp's body.
func newFlushingBody(resp *http.Response, bw *bufio.Writer) *flushingBody {
	fb := &flushingBody{ReadCloser: resp.Body, w: bw, hold: resp.ContentLength >= 0 && resp.ContentLength <= holdMax}
	resp.Body = fb
	return fb
}

func (b *flushingBody) Read(p []byte) (int, error) {
	if b.w != nil && !b.hold && b.w.Buffered() > 0 {
		if err := b.w.Flush(); err != nil {
			return 0, err
		}
	}
	return b.ReadCloser.Read(p)
}

// respWriters pools the response buffers: at a few thousand requests a
// second, a fresh 32 KiB buffer per response was most of the waypoint's
// garbage.
var respWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, respBufSize) }}

func getWriter(w io.Writer) *bufio.Writer {
	bw := respWriters.Get().(*bufio.Writer)
	bw.Reset(w)
	return bw
}

// putWriter returns bw to the pool once fb, the body that flushes it, is
// done with it.
func putWriter(bw *bufio.Writer, fb *flushingBody) {
	fb.w = nil
	bw.Reset(nil)
	respWriters.Put(bw)
}

// serveRequest runs the HTTP filters and the router for one request; it
// reports whether the connection may carry another.
func (p *Proxy) serveRequest(ctx context.Context, snap *config.Snapshot, hcm *config.HCM, rw responder, ci *connInfo, req *http.Request) bool {
	start := time.Now()
	defer req.Body.Close()
	c := rw.conn()
	var dc net.Conn // the HTTP/1 connection, metered; nil on HTTP/2
	if c != nil {
		dc = c
	}
	rec := p.beginRequest(dc, rw, ci, req, snap, hcm)
	switch {
	case req.ProtoMajor == 1 && req.ProtoMinor == 0 && !hcm.AcceptHTTP10:
		// In HTTP/1.1, as Envoy refuses it: only accept_http_10 answers
		// an HTTP/1.0 client in its own version.
		writeLocal(c, nil, http.StatusUpgradeRequired, "", nil, true)
		rec.refused(http.StatusUpgradeRequired, "low_version")
		return false
	case req.ProtoAtLeast(1, 1) && req.Host == "":
		p.stats.badRequests.Add(1)
		if c == nil {
			rw.local(req, http.StatusBadRequest, "Bad Request", nil)
		} else {
			writeLocal(c, req, http.StatusBadRequest, "Bad Request", nil, true)
		}
		rec.refused(http.StatusBadRequest, "missing_host_header")
		return false
	}
	// An absolute-form target becomes origin-form, its host the
	// authority, as Envoy reads it.
	if !strings.HasPrefix(req.RequestURI, "/") && req.URL.Host != "" {
		req.Host = req.URL.Host
		req.RequestURI = req.URL.RequestURI()
	}
	uri, err := normalizePath(hcm, req.RequestURI)
	if err != nil {
		p.stats.badRequests.Add(1)
		if c == nil {
			rw.local(req, http.StatusBadRequest, "Bad Request", nil)
		} else {
			writeLocal(c, req, http.StatusBadRequest, "Bad Request", nil, true)
		}
		rec.refused(http.StatusBadRequest, "path_normalization_failed")
		return false
	}
	req.RequestURI = uri
	if c != nil && req.ContentLength > 0 && req.ContentLength <= holdMax && int64(c.br.Buffered()) >= req.ContentLength {
		// A small body that came with its head: the router forwards it
		// from memory (bufferedBody), with the head in one write.
		rec.x.buf = bufferedBody{ReadCloser: req.Body, n: req.ContentLength}
		req.Body = &rec.x.buf
	}
	// The request's filter state starts as the connection's, copied only
	// if a filter sets a value (most requests set none).
	rec.x.view = view{req: req, ci: ci, fs: ci.fs, fsShared: true, rec: rec}
	v := &rec.x.view
	rt := selectRoute(hcm, v, req)
	if rt != nil {
		rec.route, rec.operation = rt.Name, rt.Operation
	}
	defer func() {
		rec.finish()
		p.stats.request(rec.Status)
		if !p.log.Enabled(ctx, slog.LevelDebug) {
			return // (its arguments cost allocations on every request)
		}
		p.log.Debug("request", logkey.Method, req.Method, logkey.Authority, req.Host, logkey.Path, req.RequestURI, logkey.Status, rec.Status,
			logkey.ResponseFlags, rec.Flags, logkey.Duration, time.Since(start).String(), logkey.Peer, v.fs["io.istio.peer_principal"],
			logkey.GRPCStatus, rec.GRPCStatus)
	}()
	local := func(code int, body string, flag string, h http.Header) bool {
		rec.local(code, flag)
		if err := rw.local(req, code, body, h); err != nil {
			return false
		}
		return rw.done(req)
	}
	for _, f := range hcm.Filters {
		if rt != nil && rt.DisabledFilters[f.Name] {
			continue
		}
		switch f.Kind {
		case config.FilterSetFilterState:
			v.setFilterState(f.SetFilterState)
		case config.FilterRBAC:
			if res, pol, ok := f.RBAC.ShadowResult(v); ok {
				p.shadowResult(ctx, f.RBAC, res, pol)
				rec.setMeta(config.RBACMetadataHTTP, f.RBAC.ShadowPrefix, res, pol)
			}
			if ok, pol := f.RBAC.Rules.Allowed(v); !ok {
				p.stats.rbacDenied.Add(1)
				p.log.Info("request denied by RBAC", logkey.Policy, pol, logkey.Method, req.Method, logkey.Path, req.RequestURI, logkey.Peer, v.fs["io.istio.peer_principal"])
				rec.Details = rbacDetails(pol)
				return local(http.StatusForbidden, "RBAC: access denied", "-", nil)
			}
		case config.FilterFault:
			ft := f.Fault
			if rt != nil && rt.Fault != nil {
				ft = rt.Fault
			}
			if code, flag, ok := p.fault(ctx, ft, v, req); ok {
				if code == 0 {
					continue
				}
				return local(code, "fault filter abort", flag, nil)
			} else if flag == "DI" {
				rec.Flags = "DI"
			} else if ctx.Err() != nil {
				return false
			}
		case config.FilterCORS:
			if rt != nil && rt.CORS != nil {
				if done, keep := p.cors(rt.CORS, rw, req, rec); done {
					return keep
				}
			}
		case config.FilterRouter:
			if rt == nil {
				return local(http.StatusNotFound, "", "NR", nil)
			}
			switch {
			case rt.Direct != nil:
				h := http.Header{}
				applyResponseMutation(h, rt.Headers)
				return local(rt.Direct.Status, rt.Direct.Body, "-", h)
			case rt.Redirect != nil:
				code := rt.Redirect.Code
				if code == 0 {
					code = http.StatusMovedPermanently
				}
				h := http.Header{"Location": {redirectLocation(rt, req)}}
				return local(code, "", "-", h)
			default:
				return p.forward(ctx, snap, hcm, rt, rw, ci, req, v)
			}
		}
	}
	return false
}

// drainBody reads what is left of a request body so that the next
// request can be read; a large remainder closes the connection instead.
func drainBody(req *http.Request) bool {
	if b, ok := req.Body.(*replayBody); ok {
		if err := b.ended(); err != nil {
			return err == io.EOF // (read whole by the tries: the usual case)
		}
	}
	n, err := io.CopyN(io.Discard, req.Body, 256<<10)
	return err == io.EOF || err == nil && n == 0
}

// fault applies a fault filter: a delay (reported as flag DI, then the
// request goes on), or an abort status (flag FI). ok is false when the
// request ended during a delay.
func (p *Proxy) fault(ctx context.Context, f *config.Fault, v *view, req *http.Request) (code int, flag string, ok bool) {
	for _, h := range f.Headers {
		if !h(v) {
			return 0, "", true
		}
	}
	if f.Delay > 0 && rollPercent(f.DelayPercent) {
		t := time.NewTimer(f.Delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return 0, "", false
		}
		flag = "DI"
	}
	status := f.AbortStatus
	if f.AbortHeader {
		status, _ = strconv.Atoi(req.Header.Get("x-envoy-fault-abort-request"))
	}
	if status >= 200 && status < 600 && rollPercent(f.AbortPercent) {
		return status, "FI", true
	}
	return 0, flag, true
}

// cors answers a preflight request, or marks the response of an allowed
// origin.
func (p *Proxy) cors(cp *config.CORS, rw responder, req *http.Request, rec *requestRecord) (done, keep bool) {
	origin := req.Header.Get("Origin")
	if origin == "" {
		return false, false
	}
	allowed := false
	for _, m := range cp.AllowOrigins {
		if m(origin) {
			allowed = true
		}
	}
	if !allowed {
		return false, false
	}
	req.Header.Set("X-Ambit-Cors-Origin", origin) // marks the response below
	if req.Method != http.MethodOptions || req.Header.Get("Access-Control-Request-Method") == "" {
		return false, false
	}
	h := http.Header{"Access-Control-Allow-Origin": {origin}}
	if cp.AllowMethods != "" {
		h.Set("Access-Control-Allow-Methods", cp.AllowMethods)
	}
	if cp.AllowHeaders != "" {
		h.Set("Access-Control-Allow-Headers", cp.AllowHeaders)
	}
	if cp.MaxAge != "" {
		h.Set("Access-Control-Max-Age", cp.MaxAge)
	}
	if cp.AllowCredentials {
		h.Set("Access-Control-Allow-Credentials", "true")
	}
	rec.Status = http.StatusOK
	if rw.local(req, http.StatusOK, "", h) != nil {
		return true, false
	}
	return true, rw.done(req)
}

func redirectLocation(rt *config.Route, req *http.Request) string {
	r := rt.Redirect
	scheme := "http"
	if r.Scheme != "" {
		scheme = r.Scheme
	}
	host := req.Host
	if r.Host != "" {
		host = r.Host
	}
	if r.Port != 0 {
		h := host
		if hh, _, err := net.SplitHostPort(host); err == nil {
			h = hh
		}
		host = net.JoinHostPort(h, strconv.Itoa(int(r.Port)))
	} else if r.Host != "" || r.Scheme != "" {
		// A new host or scheme drops the request's port unless it is
		// set (Envoy keeps it only when neither changed).
		if hh, _, err := net.SplitHostPort(host); err == nil && r.Host == "" {
			host = hh
		}
	}
	path, query, hasQuery := strings.Cut(req.RequestURI, "?")
	switch {
	case r.Path != "":
		path = r.Path
		if strings.Contains(r.Path, "?") {
			hasQuery = false
		}
	case r.RegexRewrite != nil:
		path = r.RegexRewrite.Pattern.ReplaceAllString(path, r.RegexRewrite.Substitution)
	case r.PrefixRewrite != "":
		path = rewritePrefix(rt.Match, path, r.PrefixRewrite)
	}
	loc := scheme + "://" + host + path
	if hasQuery && !r.StripQuery {
		loc += "?" + query
	}
	return loc
}

func rewritePrefix(m *config.RouteMatch, path, to string) string {
	prefix := m.Prefix()
	if prefix == "" || !strings.HasPrefix(path, prefix) {
		return path
	}
	return to + path[len(prefix):]
}

func applyRequestMutation(h http.Header, m config.HeaderMutation) {
	for _, n := range m.RequestRemove {
		h.Del(n)
	}
	for _, hv := range m.RequestAdd {
		applyHeader(h, hv)
	}
}

func applyResponseMutation(h http.Header, m config.HeaderMutation) {
	for _, n := range m.ResponseRemove {
		h.Del(n)
	}
	for _, hv := range m.ResponseAdd {
		applyHeader(h, hv)
	}
}

func applyHeader(h http.Header, hv config.HeaderValue) {
	switch {
	case hv.AddIfAbsent:
		if h.Get(hv.Name) == "" {
			h.Set(hv.Name, hv.Value)
		}
	case hv.Append:
		h.Add(hv.Name, hv.Value)
	default:
		h.Set(hv.Name, hv.Value)
	}
}

// upstreamShare is the downstream connection info with the request's
// filter state, as shared with the upstream connection. The request's
// filter state (the connection's and what its filters set) is complete
// once the router runs, and from then on only read: shared, not copied.
func upstreamShare(ci *connInfo, v *view) *connInfo {
	if v.fsShared {
		return ci // no filter set a value: the connection's as it is
	}
	out := *ci
	out.fs = v.fs
	return &out
}

func isUpgrade(req *http.Request) bool {
	if req.Header.Get("Upgrade") == "" {
		return false
	}
	for _, t := range strings.Split(req.Header.Get("Connection"), ",") {
		if strings.EqualFold(strings.TrimSpace(t), "upgrade") {
			return true
		}
	}
	return false
}

// switchProtocols relays a 101 answer, then the two byte streams (a
// WebSocket) until either side ends. The connection carries no more
// requests.
func (p *Proxy) switchProtocols(c *sniffConn, resp *http.Response) bool {
	up, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		return false
	}
	bw := getWriter(c)
	bw.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	writeHeaderLines(bw, resp.Header, false, "")
	bw.WriteString("Connection: Upgrade\r\n\r\n")
	err := bw.Flush()
	releaseWriter(bw)
	if err != nil {
		return false
	}
	done := make(chan struct{})
	go func() {
		io.Copy(up, c)
		up.Close()
		close(done)
	}()
	io.Copy(c, up)
	c.Close()
	<-done
	return false
}
