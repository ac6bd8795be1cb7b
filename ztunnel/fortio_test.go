package ztunnel_test

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"fortio.org/fortio/fhttp"
	"fortio.org/fortio/periodic"
	"fortio.org/log"
)

var fortioDuration = flag.Duration("fortio.duration", 15*time.Second,
	"BenchmarkFortioLatency: how long fortio loads each path, split into rounds")

// Fortio load of BenchmarkFortioLatency, as Istio's latency benchmarks run
// it: a fixed rate of small requests over a fixed set of connections.
const (
	fortioQPS         = 1000
	fortioConnections = 16
	fortioRounds      = 3
)

// requestTimes records the duration of each request as fortio timed it
// (fortio's own histogram has buckets too coarse for loopback
// microseconds), and counts failures.
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

// fortioLoad runs fortio's HTTP load against url for d, with every
// connection made by dial, and returns the request durations.
func fortioLoad(tb testing.TB, name, url string, d time.Duration, dial func(ctx context.Context) (net.Conn, error)) ([]time.Duration, time.Duration) {
	tb.Helper()
	cpu0 := cpuTime(tb)
	times := &requestTimes{}
	o := &fhttp.HTTPRunnerOptions{}
	o.QPS = fortioQPS
	o.NumThreads = fortioConnections
	o.Duration = d
	o.Uniform = true // stagger the connections' requests evenly
	o.Out = io.Discard
	o.AccessLogger = times
	o.URL = url
	// fortio's standard client, so that its transport can take our dialer;
	// one client, hence one keep-alive connection, per thread.
	o.DisableFastClient = true
	o.Transport = func(base http.RoundTripper) http.RoundTripper {
		tr := base.(*http.Transport)
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) }
		return tr
	}
	res, err := fhttp.RunHTTPTest(o)
	if err != nil {
		tb.Fatalf("fortio %s via %s: %v", url, name, err)
	}
	if times.failed > 0 || res.RetCodes[http.StatusOK] != int64(len(times.ok)) {
		tb.Fatalf("fortio %s via %s: got %d failed requests and status codes %v, want every request 200", url, name, times.failed, res.RetCodes)
	}
	if want := int(d.Seconds() * fortioQPS * 0.9); len(times.ok) < want {
		slices.Sort(times.ok)
		tb.Fatalf("fortio %s via %s: got %d requests, want at least %d at %d qps (slowest %v)", url, name, len(times.ok), want, fortioQPS, times.ok[len(times.ok)-5:])
	}
	return times.ok, cpuTime(tb) - cpu0
}

// BenchmarkFortioLatency loads an HTTP server with fortio at 1,000
// requests per second over 16 keep-alive connections, directly, through
// the ztunnel pair, and through the stunnel pair (when installed), in
// rounds that alternate the paths so they see the same machine load. It
// prints the direct p50/p90/p99 and what each tunnel pair adds at each
// percentile: the median over rounds of (tunnel percentile - direct
// percentile of the same round).
func BenchmarkFortioLatency(b *testing.B) {
	log.SetLogLevelQuiet(log.Error)
	m := newMesh(b, meshOptions{})
	target := netip.AddrPortFrom(m.ip(11), 9003)
	srv := &http.Server{Handler: http.HandlerFunc(fhttp.EchoHandler), ReadHeaderTimeout: 10 * time.Second}
	ln, err := net.Listen("tcp", target.String())
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	stunnel, haveStunnel := stunnelPair(b, m.ca, m.ip(1), target)
	dialFrom := func(to netip.AddrPort) func(ctx context.Context) (net.Conn, error) {
		return func(ctx context.Context) (net.Conn, error) {
			d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(m.ip(1), 0))}
			return d.DialContext(ctx, "tcp", to.String())
		}
	}
	type path struct {
		name string
		dial func(ctx context.Context) (net.Conn, error)
	}
	paths := []path{
		{"direct", dialFrom(target)},
		{"ztunnel", func(ctx context.Context) (net.Conn, error) {
			return m.redirected(ctx, m.ip(1), m.a.z.OutboundAddr(), target)
		}},
	}
	if haveStunnel {
		paths = append(paths, path{"stunnel", dialFrom(stunnel)})
	}
	url := fmt.Sprintf("http://%s/echo", target)
	percentiles := []float64{50, 90, 99}
	// added[path][percentile] holds one value per round.
	added := map[string][][]time.Duration{}
	// addedCPU[path] holds, per round, the CPU time this process spent
	// on the path beyond the direct one (the tunnels' share: fortio and
	// the echo server do the same work on every path).
	addedCPU := map[string][]time.Duration{}
	var direct [][]time.Duration
	round := *fortioDuration / fortioRounds
	b.ResetTimer()
	for b.Loop() {
		for range fortioRounds {
			var base []time.Duration
			var baseCPU time.Duration
			for _, p := range paths {
				ds, cpu := fortioLoad(b, p.name, url, round, p.dial)
				var at []time.Duration
				for _, q := range percentiles {
					at = append(at, percentile(ds, q))
				}
				if p.name == "direct" {
					base, baseCPU = at, cpu
					direct = append(direct, at)
					continue
				}
				addedCPU[p.name] = append(addedCPU[p.name], cpu-baseCPU)
				row := make([]time.Duration, len(at))
				for i := range at {
					row[i] = at[i] - base[i]
				}
				added[p.name] = append(added[p.name], row)
			}
		}
	}
	b.StopTimer()
	median := func(rows [][]time.Duration, i int) time.Duration {
		var col []time.Duration
		for _, r := range rows {
			col = append(col, r[i])
		}
		slices.Sort(col)
		return col[len(col)/2]
	}
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	var tab strings.Builder
	fmt.Fprintf(&tab, "fortio %d qps, %d connections, %d rounds of %v per path; median over rounds\n",
		fortioQPS, fortioConnections, len(direct), round)
	fmt.Fprintf(&tab, "%-20s %10s %10s %10s\n", "", "p50", "p90", "p99")
	fmt.Fprintf(&tab, "%-20s", "direct")
	for i, q := range percentiles {
		v := median(direct, i)
		fmt.Fprintf(&tab, " %8.0fµs", us(v))
		b.ReportMetric(us(v), fmt.Sprintf("direct-p%.0f-µs", q))
	}
	for _, p := range paths[1:] {
		fmt.Fprintf(&tab, "\n%-20s", p.name+" adds")
		for i, q := range percentiles {
			v := median(added[p.name], i)
			fmt.Fprintf(&tab, " %+8.0fµs", us(v))
			b.ReportMetric(us(v), fmt.Sprintf("%s-added-p%.0f-µs", p.name, q))
		}
		if p.name != "ztunnel" {
			continue // stunnel runs in processes of its own
		}
		// vCPU per 1,000 requests per second the two tunnels add: CPU
		// seconds per second of load, scaled from fortioQPS.
		cpus := slices.Clone(addedCPU[p.name])
		slices.Sort(cpus)
		vcpu := cpus[len(cpus)/2].Seconds() / round.Seconds() / (fortioQPS / 1000.0)
		fmt.Fprintf(&tab, "   %.3f vCPU per 1k req/s", vcpu)
		b.ReportMetric(vcpu, p.name+"-added-vCPU-per-1k-rps")
	}
	b.Log("\n" + tab.String())
}
