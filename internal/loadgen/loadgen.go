// Package loadgen is the benchmarks' HTTP load: fortio's runner at a
// fixed rate (or at saturation) over a fixed set of keep-alive
// connections, each made by the caller's dialer (an HBONE tunnel, a
// TLS or plain TCP connection), recording every request's duration as
// fortio timed it (fortio's own histogram has buckets too coarse for
// loopback microseconds). Only benchmarks import it.
package loadgen

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"fortio.org/fortio/fhttp"
	"fortio.org/fortio/periodic"
)

// Options is one run of the load.
type Options struct {
	// URL is what fortio asks for: an address, never a name (fortio
	// would look it up in DNS); Host, if set, its Host header.
	URL, Host string
	// QPS is the rate over all connections (fortio's -qps: 0 or less,
	// as fast as the path answers); Connections the keep-alive
	// connections, one per fortio thread.
	QPS         float64
	Connections int
	Duration    time.Duration
	// Payload, if set, makes each request a POST of it.
	Payload []byte
	// Dial makes each connection (nil: fortio's own); TLS, if set, is the
	// client's TLS configuration.
	Dial func(ctx context.Context) (net.Conn, error)
	TLS  *tls.Config
	// Timeout bounds a request (0: fortio's default).
	Timeout time.Duration
}

// Result is what a run measured.
type Result struct {
	// Times are the durations of the successful requests.
	Times []time.Duration
	// QPS is the rate fortio achieved; Sockets the connections it made.
	QPS     float64
	Sockets int64
}

// Run runs the load. Every request must succeed with 200: a failure or
// another status is an error, since a benchmark of failures measures
// nothing.
func Run(o Options) (*Result, error) {
	times := &requestTimes{}
	ro := &fhttp.HTTPRunnerOptions{}
	ro.QPS = o.QPS
	ro.NumThreads = o.Connections
	ro.Duration = o.Duration
	ro.Uniform = true // stagger the connections' requests evenly
	ro.Out = io.Discard
	ro.AccessLogger = times
	ro.URL = o.URL
	ro.Payload = o.Payload
	if o.Timeout > 0 {
		ro.HTTPReqTimeOut = o.Timeout
	}
	if o.Host != "" {
		if err := ro.AddAndValidateExtraHeader("Host: " + o.Host); err != nil {
			return nil, err
		}
	}
	// fortio's standard client, so that its transport can take our dialer
	// or TLS config; one client, hence one keep-alive connection, per
	// thread.
	ro.DisableFastClient = true
	ro.Transport = func(base http.RoundTripper) http.RoundTripper {
		tr := base.(*http.Transport)
		if o.Dial != nil {
			tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) { return o.Dial(ctx) }
		}
		if o.TLS != nil {
			tr.TLSClientConfig = o.TLS.Clone()
		}
		return tr
	}
	res, err := fhttp.RunHTTPTest(ro)
	if err != nil {
		return nil, fmt.Errorf("fortio %s: %w", o.URL, err)
	}
	if times.failed > 0 || res.RetCodes[http.StatusOK] != int64(len(times.ok)) || len(times.ok) == 0 {
		return nil, fmt.Errorf("fortio %s: got %d failed requests and status codes %v, want every request 200", o.URL, times.failed, res.RetCodes)
	}
	return &Result{Times: times.ok, QPS: res.ActualQPS, Sockets: res.SocketCount}, nil
}

// requestTimes is fortio's access logger: it records each request's
// duration and counts failures.
type requestTimes struct {
	mu     sync.Mutex
	ok     []time.Duration
	failed int
}

func (r *requestTimes) Start(ctx context.Context, _ periodic.ThreadID, _ int64, _ time.Time) context.Context {
	return ctx
}

func (r *requestTimes) Report(_ context.Context, _ periodic.ThreadID, _ int64, _ time.Time, latency float64, ok bool, _ string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !ok {
		r.failed++
		return
	}
	r.ok = append(r.ok, time.Duration(latency*float64(time.Second)))
}

func (r *requestTimes) Info() string { return "in-memory request times" }
