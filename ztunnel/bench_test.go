package ztunnel_test

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"
)

// sink counts what each connection sends and, at EOF, answers the count.
func sink(tb testing.TB, addr netip.AddrPort) {
	tb.Helper()
	serveTCP(tb, addr, func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		binary.Write(c, binary.BigEndian, n)
	})
}

// transfer sends size bytes over c, half-closes, and waits for the sink's
// count, so the time covers delivery and not just buffering.
func transfer(tb testing.TB, c net.Conn, buf []byte, size int64) time.Duration {
	tb.Helper()
	start := time.Now()
	for sent := int64(0); sent < size; sent += int64(len(buf)) {
		if _, err := c.Write(buf); err != nil {
			tb.Fatalf("write: %v", err)
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		tb.Fatal(err)
	}
	var got int64
	if err := binary.Read(c, binary.BigEndian, &got); err != nil {
		tb.Fatalf("read count: %v", err)
	}
	d := time.Since(start)
	if got != size {
		tb.Fatalf("sink received %d bytes, want %d", got, size)
	}
	c.Close()
	return d
}

// cpuTime is the CPU time this process has used, all threads, user and
// system.
func cpuTime(tb testing.TB) time.Duration {
	tb.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkThroughput moves one TCP stream's bytes app → ztunnel → HBONE
// → ztunnel → app and, in the same run, app → app directly and (when
// stunnel is installed) through a pair of stunnel processes doing the same
// mutual TLS 1.3 in C, and reports each rate and the ratios. It also
// reports the CPU time the two tunnels add per byte (this process's CPU
// time through the tunnel minus directly: sender and receiver are the
// same), which moves less than the rates on a machine shared with other
// work.
func BenchmarkThroughput(b *testing.B) {
	m := newMesh(b, meshOptions{})
	target := netip.AddrPortFrom(m.ip(11), 9000)
	sink(b, target)
	stunnel, haveStunnel := stunnelPair(b, m.ca, m.ip(1), target)
	const size = 256 << 20
	buf := make([]byte, 256<<10)
	var direct, tunnel, c2, directCPU, tunnelCPU time.Duration
	dial := func(to netip.AddrPort) net.Conn {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(m.ip(1), 0))}
		c, err := d.Dial("tcp", to.String())
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	// One small transfer each way first, so that every path starts from
	// its steady state: the tunnel's pooled HBONE connection open, with
	// the peer's HTTP/2 settings (frame size, windows) known.
	transfer(b, dial(target), buf, int64(len(buf)))
	transfer(b, m.outbound(b, m.ip(1), target), buf, int64(len(buf)))
	if haveStunnel {
		transfer(b, dial(stunnel), buf, int64(len(buf)))
	}
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		cpu := cpuTime(b)
		direct += transfer(b, dial(target), buf, size)
		directCPU += cpuTime(b) - cpu
		cpu = cpuTime(b)
		tunnel += transfer(b, m.outbound(b, m.ip(1), target), buf, size)
		tunnelCPU += cpuTime(b) - cpu
		if haveStunnel {
			c2 += transfer(b, dial(stunnel), buf, size)
		}
	}
	mbps := func(d time.Duration) float64 { return float64(size) * float64(b.N) / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(direct), "direct-MB/s")
	b.ReportMetric(mbps(tunnel), "ztunnel-MB/s")
	b.ReportMetric(mbps(tunnel)/mbps(direct), "ztunnel/direct")
	b.ReportMetric(float64(tunnelCPU-directCPU)/float64(size)/float64(b.N), "ztunnel-added-cpu-ns/B")
	if haveStunnel {
		b.ReportMetric(mbps(c2), "stunnel-MB/s")
		b.ReportMetric(mbps(tunnel)/mbps(c2), "ztunnel/stunnel")
	}
}

// pingPong sends n small messages one at a time over c to an echo server
// and returns each round trip's time.
func pingPong(tb testing.TB, c net.Conn, n int) []time.Duration {
	tb.Helper()
	msg := make([]byte, 64)
	buf := make([]byte, 64)
	out := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			tb.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			tb.Fatal(err)
		}
		out = append(out, time.Since(start))
	}
	c.Close()
	return out
}

// percentile returns the p-th percentile (0-100) of ds, sorted in place.
func percentile(ds []time.Duration, p float64) time.Duration {
	slices.Sort(ds)
	i := int(float64(len(ds)-1) * p / 100)
	return ds[i]
}

// BenchmarkLatency measures the round trip of a 64-byte message on an open
// connection, directly and through the ztunnel pair (and stunnel, when
// installed), and reports the p50, p90 and p99 each tunnel pair adds to
// the direct round trip.
func BenchmarkLatency(b *testing.B) {
	m := newMesh(b, meshOptions{})
	target := netip.AddrPortFrom(m.ip(11), 9001)
	rawEcho(b, target)
	stunnel, haveStunnel := stunnelPair(b, m.ca, m.ip(1), target)
	dial := func(to netip.AddrPort) net.Conn {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(m.ip(1), 0))}
		c, err := d.Dial("tcp", to.String())
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	const n = 2000
	var direct, tunnel, c2 []time.Duration
	b.ResetTimer()
	for b.Loop() {
		direct = append(direct, pingPong(b, dial(target), n)...)
		tunnel = append(tunnel, pingPong(b, m.outbound(b, m.ip(1), target), n)...)
		if haveStunnel {
			c2 = append(c2, pingPong(b, dial(stunnel), n)...)
		}
	}
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	for _, p := range []float64{50, 90, 99} {
		base := percentile(direct, p)
		b.ReportMetric(us(base), fmt.Sprintf("direct-p%.0f-µs", p))
		b.ReportMetric(us(percentile(tunnel, p)-base), fmt.Sprintf("ztunnel-added-p%.0f-µs", p))
		if haveStunnel {
			b.ReportMetric(us(percentile(c2, p)-base), fmt.Sprintf("stunnel-added-p%.0f-µs", p))
		}
	}
}

// rawEcho echoes bytes back as they arrive.
func rawEcho(tb testing.TB, addr netip.AddrPort) {
	tb.Helper()
	// Not io.Copy(c, c): TCP to TCP splices through pipes that Go keeps
	// in a pool, which TestMain would count as leaked descriptors.
	serveTCP(tb, addr, func(c net.Conn) { io.Copy(struct{ io.Writer }{c}, c) })
}

// BenchmarkMemoryPerConnection opens 1,000 tunnelled connections and
// reports the Go heap they hold across both tunnels (in this process;
// the tunnels' RSS is measured with the binaries, not here), beside the
// heap of 1,000 direct connections.
func BenchmarkMemoryPerConnection(b *testing.B) {
	m := newMesh(b, meshOptions{})
	target := netip.AddrPortFrom(m.ip(11), 9002)
	rawEcho(b, target)
	const n = 1000
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse
	}
	open := func(dial func() net.Conn) uint64 {
		before := heap()
		conns := make([]net.Conn, 0, n)
		for range n {
			c := dial()
			// One round trip, so the tunnel is fully set up.
			if _, err := c.Write([]byte{1}); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				b.Fatal(err)
			}
			conns = append(conns, c)
		}
		after := heap()
		for _, c := range conns {
			c.Close()
		}
		if after < before {
			return 0
		}
		return after - before
	}
	var direct, tunnel uint64
	b.ResetTimer()
	for b.Loop() {
		direct += open(func() net.Conn {
			d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(m.ip(1), 0))}
			c, err := d.Dial("tcp", target.String())
			if err != nil {
				b.Fatal(err)
			}
			return c
		})
		tunnel += open(func() net.Conn { return m.outbound(b, m.ip(1), target) })
	}
	kb := func(v uint64) float64 { return float64(v) / float64(b.N) / n / 1024 }
	b.ReportMetric(kb(direct), "direct-KiB/conn")
	b.ReportMetric(kb(tunnel), "ztunnel-pair-KiB/conn")
}
