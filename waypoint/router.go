package waypoint

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"time"

	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/waypoint/config"
)

// forward is the router: it sends the request to the route's cluster
// (circuit breakers, load balancing, retries, outlier detection, the
// route and stream idle timeouts) and the response back. It reports
// whether the connection may carry another request.
func (p *Proxy) forward(ctx context.Context, snap *config.Snapshot, hcm *config.HCM, rt *config.Route, rw responder, ci *connInfo, req *http.Request, v *view) bool {
	a := rt.Action
	rec := v.rec
	local := func(code int, body, flag string) bool {
		rec.local(code, flag)
		if rw.local(req, code, body, nil) != nil {
			return false
		}
		return rw.done(req)
	}
	name, hostRewrite := a.Cluster, a.HostRewrite
	var wc *config.WeightedCluster
	if len(a.Weighted) > 0 {
		if wc = pickWeighted(a.Weighted); wc == nil {
			return local(http.StatusServiceUnavailable, "no healthy upstream", "UH")
		}
		name = wc.Name
		if wc.HostRewrite != "" && hostRewrite == "" {
			hostRewrite = wc.HostRewrite
		}
	}
	cl := snap.Clusters[name]
	if cl == nil {
		return local(a.ClusterNotFoundCode, "", "NC")
	}
	rec.Cluster = cl.Name
	upgrade := ""
	// An upgrade: HTTP/1.1's, or an HTTP/2 extended CONNECT made into
	// one (HTTP/2 requests cannot carry Upgrade otherwise).
	if isUpgrade(req) {
		t := strings.ToLower(req.Header.Get("Upgrade"))
		on, set := a.Upgrades[t]
		if !set {
			on = hcm.Upgrades[t]
		}
		if rw.conn() == nil && !hcm.AllowConnect {
			on = false
		}
		if !on {
			return local(http.StatusForbidden, "", "-") // Envoy refuses an upgrade it is not configured for
		}
		upgrade = req.Header.Get("Upgrade")
	}
	if !hcm.Proxy100Continue && strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
		// Envoy's default: answer it here, so the client sends its body.
		req.Header.Del("Expect")
		if rw.continue100() != nil {
			return false
		}
	}
	share := upstreamShare(ci, v)
	path, query, hasQuery := strings.Cut(req.RequestURI, "?")
	switch {
	case a.RegexRewrite != nil:
		path = a.RegexRewrite.Pattern.ReplaceAllString(path, a.RegexRewrite.Substitution)
	case a.PrefixRewrite != "":
		path = rewritePrefix(rt.Match, path, a.PrefixRewrite)
	}
	uri := path
	if hasQuery {
		uri += "?" + query
	}
	// The route timeout covers every try and the whole response; for an
	// upgrade only the wait for the upstream's answer (Envoy disables it
	// once the upgrade is done).
	var upgradeTimer *time.Timer
	timeout := a.Timeout
	if a.MaxGRPCTimeout != nil && isGRPC(req) {
		if d, ok := grpcTimeout(req.Header.Get("Grpc-Timeout")); ok {
			timeout = d
			if m := *a.MaxGRPCTimeout; m > 0 && d > m {
				timeout = m
			}
		}
	}
	// An upgrade's route timeout covers only the wait for the
	// upstream's answer; it has no stream idle timeout.
	if timeout > 0 && upgrade != "" {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		upgradeTimer = time.AfterFunc(timeout, cancel)
		defer cancel()
		timeout = 0
	}
	// The stream idle timeout: the route's idle_timeout, else the
	// connection manager's stream_idle_timeout; each byte of request or
	// response body is activity. One timer runs both timeouts.
	var st *streamTimer
	idle := cmpOr(a.IdleTimeout, hcm.StreamIdleTimeout)
	if upgrade != "" {
		idle = 0
	}
	if timeout > 0 || idle > 0 {
		ctx, st = newStreamTimer(ctx, &rec.x.timer, timeout, idle)
		defer st.stop()
	}
	cs := p.clusterState(cl.Name)
	tr := p.transportFor(cl, req, upgrade)
	// Trailers pass where both ends' codecs have them: HTTP/2 always,
	// HTTP/1.1 with enable_trailers (the connection manager's towards
	// the client, the cluster's towards the endpoint), as Envoy's
	// HTTP/1 codec drops them otherwise.
	trailers := upgrade == "" && (req.ProtoMajor == 2 || hcm.EnableTrailers) && (tr != p.transport || cl.EnableTrailers)
	if trailers && req.Trailer == nil && req.ContentLength < 0 && req.ProtoMajor == 1 {
		// A chunked body's trailers land in this map when it ends,
		// announced or not; the upstream request shares it.
		req.Trailer = http.Header{}
	}
	release, started, err := cs.admit(ctx, cl, tr == p.transport)
	if err != nil {
		if errors.Is(err, errOverflow) {
			return local(http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: overflow", "UO")
		}
		switch why := st.fired(); {
		case why == errStreamIdle:
			return local(http.StatusRequestTimeout, "stream timeout", "SI")
		case why == errRouteTimeout || errors.Is(err, context.DeadlineExceeded):
			return local(http.StatusGatewayTimeout, "upstream request timeout", "UT")
		}
		rec.Flags = "DC"
		return false
	}
	defer release()
	if started != nil {
		defer started() // (a request that never reached a try)
	}
	// The body is read once and kept for retries up to the buffer limit;
	// mirrors get it once it is whole.
	retry, mirrors := a.Retry, a.Mirrors
	if upgrade != "" {
		retry = nil
	}
	var body *replayBody
	if req.ContentLength != 0 && req.Body != nil && req.Body != http.NoBody {
		body = newReplayBody(&rec.x.replay, req.Body, cmpOr(a.BufferLimit, 1<<20), st)
		req.Body = body // what no try reads is drained from here
		// The kept bytes' buffer goes back to its pool when the request
		// is done, where each try wrote its body within its round trip
		// (HTTP/2's transport may still be writing one after).
		h1 := tr == p.transport && upgrade == ""
		defer func() {
			body.closeReaders()
			if h1 {
				body.release()
			}
		}()
	}
	for _, m := range mirrors {
		if !rollPercent(m.Fraction) {
			continue
		}
		// (copies: what a closure that outlives the request captures
		// moves to the heap, and these are read on every request)
		m, wc, uri, hostRewrite := m, wc, uri, hostRewrite
		mirror := func(b []byte) { p.mirror(snap, m, req, share, rt, wc, uri, hostRewrite, b, a.Timeout) }
		if body == nil {
			mirror(nil)
		} else {
			body.whenComplete(mirror)
		}
	}
	tries := 1
	if retry != nil {
		tries += retry.NumRetries
	}
	// An HTTP/1.1 try's head is written within the try: its header map
	// is the client connection's, reused.
	var hs *headerScratch
	if cc, ok := ctx.Value(connCtxKey{}).(*connCtx); ok && rw.conn() != nil && tr == p.transport && upgrade == "" {
		hs = &cc.outHeader
	}
	tried := map[*config.Endpoint]bool{}
	var resp *http.Response
	var ep *config.Endpoint
	holdsRetry, exhausted := false, false
	// active is the endpoint whose response is being passed on: active
	// until it is through. (One defer outside the loop: a defer in a
	// loop is allocated, and makes every defer of the function slower.)
	var active *hostState
	defer func() {
		if active != nil {
			active.active.Add(-1)
		}
		if holdsRetry {
			cs.retries.Add(-1)
		}
	}()
	for try := 0; ; try++ {
		ep = p.pick(cl, cs, tried, retry != nil && retry.OtherHosts)
		if ep == nil {
			return local(http.StatusServiceUnavailable, "no healthy upstream", "UH")
		}
		tried[ep] = true
		rec.upstream(cl, ep)
		var bodyR io.ReadCloser
		if body != nil {
			bodyR = body.reader()
		}
		tctx := ctx
		if started != nil && try == 0 {
			// An HTTP/2 request is pending until its stream's
			// headers are written.
			tctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{WroteHeaders: started})
		}
		var direct *streamTimer // (the try's context is st's)
		if retry == nil || retry.PerTryTimeout <= 0 {
			direct = st
		}
		out := p.upstreamRequest(tctx, req, snap, cl, ep, share, rt, wc, uri, hostRewrite, upgrade, bodyR, direct, hs)
		if !trailers || tr == p.transport && out.ContentLength >= 0 {
			out.Trailer = nil // (HTTP/1.1 sends trailers only after a chunked body)
		}
		var tryCancel context.CancelFunc
		if retry != nil && retry.PerTryTimeout > 0 {
			var tctx context.Context
			tctx, tryCancel = context.WithTimeout(out.Context(), retry.PerTryTimeout)
			out = out.WithContext(tctx)
		}
		hs := cs.host(ep)
		hs.active.Add(1)
		resp, err = p.roundTrip(cs, cl, tr, out)
		if tryCancel != nil && err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			cs.st.rqPerTryTimeout.Add(1)
		}
		if started != nil {
			started() // (the first try ended without a stream, or has one)
		}
		if tryCancel != nil {
			// (no upgrade here: an upgrade is never retried)
			if resp != nil {
				resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: tryCancel}
			} else {
				tryCancel()
			}
		}
		o := outcome{local: err != nil && !errors.Is(err, errOverflow)}
		if resp != nil {
			o.status = resp.StatusCode
		}
		p.report(cl, cs, ep, o)
		again := try+1 < tries && ctx.Err() == nil && shouldRetry(retry, resp, err) && (body == nil || body.replayable())
		if again && !holdsRetry {
			if holdsRetry = cs.retry(cl); !holdsRetry {
				again = false
				rec.Flags = "UO" // Envoy's retry overflow: the answer goes back as it is
			}
		}
		if !again {
			exhausted = try+1 >= tries && try > 0 && shouldRetry(retry, resp, err)
			active = hs
			break
		}
		hs.active.Add(-1)
		p.stats.retries.Add(1)
		cs.st.rqRetry.Add(1)
		rec.Retries++
		if resp != nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
		}
		if body != nil {
			body.closeReaders()
		}
		if !backoff(ctx, retry, try) {
			break
		}
	}
	if upgradeTimer != nil && !upgradeTimer.Stop() {
		// The upgrade's answer came too late (or never).
		if resp != nil {
			resp.Body.Close()
		}
		cs.st.rqTimeout.Add(1)
		return local(http.StatusGatewayTimeout, "upstream request timeout", "UT")
	}
	if err != nil {
		why := st.fired()
		switch {
		case why == errStreamIdle:
			return local(http.StatusRequestTimeout, "stream timeout", "SI")
		case why == errRouteTimeout || errors.Is(err, context.DeadlineExceeded):
			cs.st.rqTimeout.Add(1)
			return local(http.StatusGatewayTimeout, "upstream request timeout", withURX("UT", exhausted))
		case errors.Is(ctx.Err(), context.Canceled):
			rec.Flags = "DC" // the client went away
			return false
		case errors.Is(err, errOverflow):
			return local(http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: overflow", "UO")
		}
		p.stats.upstreamFail.Add(1)
		p.log.Info("upstream request failed", logkey.Cluster, cl.Name, logkey.Endpoint, ep.String(), logkey.Error, err.Error())
		return local(http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: connection failure", withURX(flagFor(err), exhausted))
	}
	defer resp.Body.Close()
	if exhausted && rec.Flags == "-" {
		rec.Flags = "URX"
	}
	for _, h := range hopHeaders {
		if resp.StatusCode == http.StatusSwitchingProtocols && (h == "Upgrade") {
			continue
		}
		resp.Header.Del(h)
	}
	applyResponseMutation(resp.Header, rt.Headers)
	if wc != nil {
		applyResponseMutation(resp.Header, wc.Headers)
	}
	if o := req.Header.Get("X-Ambit-Cors-Origin"); o != "" {
		resp.Header.Set("Access-Control-Allow-Origin", o)
		if rt.CORS != nil && rt.CORS.ExposeHeaders != "" {
			resp.Header.Set("Access-Control-Expose-Headers", rt.CORS.ExposeHeaders)
		}
	}
	rec.Status = resp.StatusCode
	if resp.StatusCode == http.StatusSwitchingProtocols {
		if c := rw.conn(); c != nil {
			return p.switchProtocols(c, resp)
		}
		if h2r, ok := rw.(*h2Responder); ok && h2r.down != nil {
			return h2r.tunnel(resp)
		}
		return false
	}
	if idle > 0 {
		rec.x.touch = touchBody{ReadCloser: resp.Body, st: st}
		resp.Body = &rec.x.touch
	}
	// The response's trailers: the transport fills resp.Trailer when the
	// body ends. An HTTP/1.1 client gets them after a chunked body (the
	// map must exist when the head is written); where they do not pass,
	// the writer sees none while telemetry still reads them.
	wr := resp
	if h2r, ok := rw.(*h2Responder); ok {
		h2r.dropTrailers = !trailers
	} else if trailers && resp.ContentLength < 0 {
		if resp.Trailer == nil {
			resp.Trailer = http.Header{}
		}
	} else if resp.Trailer != nil {
		c := *resp
		c.Trailer = nil
		wr = &c
	}
	rec.watch(resp)
	wr.Body = resp.Body
	keep, failed := rw.proxied(req, wr)
	rec.GRPCStatus = grpcStatusOf(resp)
	if failed {
		// Envoy's flag for a response that broke off: UC when the
		// upstream failed, DC when the client did.
		rec.Flags = addFlag(rec.Flags, rec.copyFailed())
	}
	if st.fired() == errStreamIdle {
		rec.Flags = "SI"
		return false
	}
	return keep
}

func cmpOr[T comparable](a, b T) T {
	var zero T
	if a != zero {
		return a
	}
	return b
}

// withURX adds Envoy's URX flag (retries exhausted) to a flag.
func withURX(flag string, exhausted bool) string {
	if exhausted {
		return flag + ",URX"
	}
	return flag
}

// transportFor is the upstream transport of a request to cl: HTTP/2 for
// a cluster configured so (or following an HTTP/2 client), HTTP/1.1
// otherwise and for upgrades.
func (p *Proxy) transportFor(cl *config.Cluster, req *http.Request, upgrade string) *http.Transport {
	if upgrade != "" {
		return p.transport
	}
	switch cl.Protocol {
	case config.UpstreamHTTP2:
		return p.h2transport
	case config.UpstreamDownstream:
		if req.ProtoMajor == 2 {
			return p.h2transport
		}
	}
	return p.transport
}

// upstreamRequest is the request sent to endpoint ep of cluster cl: hop
// headers dropped, the route's and weighted cluster's mutations, the
// rewritten path and host, body the try's body.
func (p *Proxy) upstreamRequest(ctx context.Context, req *http.Request, snap *config.Snapshot, cl *config.Cluster, ep *config.Endpoint,
	share *connInfo, rt *config.Route, wc *config.WeightedCluster, uri, hostRewrite, upgrade string, body io.ReadCloser, st *streamTimer, hs *headerScratch) *http.Request {
	// A shallow copy with its own header map: everything else the try
	// changes it replaces (URL, Host, Body, Trailer). Request.Clone also
	// deep-copied the URL, the trailer map and the forms (it was 5 % of
	// a CPU profile at 1,000 req/s).
	t := &tryCtx{Context: ctx, di: dialInfo{snap: snap, cluster: cl, ep: ep, ci: share, st: st}}
	out := req.WithContext(t)
	if hs != nil {
		out.Header = hs.clone(req.Header)
	} else {
		out.Header = req.Header.Clone()
	}
	// A downstream "Connection: close" ends the downstream connection
	// only: the upstream connection stays in the pool (as Envoy's), or
	// every such request would cost a new tunnel to the endpoint.
	out.Close = false
	te := req.Header.Get("Te")
	for _, h := range hopHeaders {
		out.Header.Del(h)
	}
	for rest := req.Header.Get("Connection"); rest != ""; {
		var h string
		h, rest, _ = strings.Cut(rest, ",")
		if h = strings.TrimSpace(h); h != "" && !strings.EqualFold(h, "upgrade") {
			out.Header.Del(h)
		}
	}
	if strings.EqualFold(strings.TrimSpace(te), "trailers") {
		out.Header.Set("Te", "trailers") // gRPC needs it; the one TE value HTTP/2 allows
	}
	if upgrade != "" {
		out.Header.Set("Connection", "Upgrade")
		out.Header.Set("Upgrade", upgrade)
	}
	out.Header.Del("X-Ambit-Cors-Origin")
	if out.Header.Get("X-Forwarded-Proto") == "" {
		out.Header.Set("X-Forwarded-Proto", "http")
	}
	applyRequestMutation(out.Header, rt.Headers)
	if wc != nil {
		applyRequestMutation(out.Header, wc.Headers)
	}
	t.url = url.URL{Scheme: "http", Host: endpointHost(cl, ep, share), Opaque: uri}
	out.URL = &t.url
	out.RequestURI = ""
	out.Proto, out.ProtoMajor, out.ProtoMinor = "HTTP/1.1", 1, 1
	if hostRewrite != "" {
		out.Host = hostRewrite
	}
	// Request trailers arrive with the end of the body: the same map.
	out.Trailer = req.Trailer
	out.GetBody = nil
	if req.ContentLength == 0 || body == nil {
		out.Body, out.ContentLength = nil, 0
	} else {
		out.Body = body
	}
	return out
}

// mirror sends a copy of the request to the mirror's cluster, its host
// suffixed "-shadow", and discards the answer; it never delays or
// changes the request itself.
func (p *Proxy) mirror(snap *config.Snapshot, m config.Mirror, req *http.Request, share *connInfo, rt *config.Route,
	wc *config.WeightedCluster, uri, hostRewrite string, body []byte, timeout time.Duration) {
	cl := snap.Clusters[m.Cluster]
	if cl == nil {
		return
	}
	ep := p.pick(cl, p.clusterState(cl.Name), nil, false)
	if ep == nil {
		return
	}
	if timeout <= 0 || timeout > maxMirrorTime {
		timeout = maxMirrorTime
	}
	ctx, cancel := context.WithTimeout(p.ctx, timeout)
	var b io.ReadCloser
	if body != nil {
		b = io.NopCloser(bytes.NewReader(body))
	}
	out := p.upstreamRequest(ctx, req, snap, cl, ep, share, rt, wc, uri, hostRewrite, "", b, nil, nil)
	out.Trailer = nil
	if body != nil {
		out.ContentLength = int64(len(body))
	}
	if m.HostSuffix {
		out.Host = shadowHost(out.Host)
	}
	tr := p.transportFor(cl, req, "")
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer cancel()
		resp, err := tr.RoundTrip(out)
		if err != nil {
			p.log.Debug("mirror failed", logkey.Cluster, cl.Name, logkey.Error, err.Error())
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}()
}

// maxMirrorTime bounds a mirrored request whose route has no timeout.
const maxMirrorTime = 30 * time.Second

// shadowHost is Envoy's shadow host: "-shadow" after the host name,
// before any port.
func shadowHost(h string) string {
	if host, port, err := net.SplitHostPort(h); err == nil {
		return net.JoinHostPort(host+"-shadow", port)
	}
	return h + "-shadow"
}
