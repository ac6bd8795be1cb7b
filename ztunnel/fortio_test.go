package ztunnel_test

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"fortio.org/fortio/fhttp"
	"fortio.org/log"

	"github.com/ambitmesh/ambit/internal/loadgen"
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

// fortioLoad runs fortio's HTTP load against url for d, with every
// connection made by dial, and returns the request durations and this
// process's CPU time meanwhile.
func fortioLoad(tb testing.TB, name, url string, d time.Duration, dial func(ctx context.Context) (net.Conn, error)) ([]time.Duration, time.Duration) {
	tb.Helper()
	cpu0 := cpuTime(tb)
	res, err := loadgen.Run(loadgen.Options{URL: url, QPS: fortioQPS, Connections: fortioConnections, Duration: d, Dial: dial})
	if err != nil {
		tb.Fatalf("via %s: %v", name, err)
	}
	times := res.Times
	if want := int(d.Seconds() * fortioQPS * 0.9); len(times) < want {
		slices.Sort(times)
		tb.Fatalf("fortio %s via %s: got %d requests, want at least %d at %d qps (slowest %v)", url, name, len(times), want, fortioQPS, times[len(times)-5:])
	}
	return times, cpuTime(tb) - cpu0
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
