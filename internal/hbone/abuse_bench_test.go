package hbone

import (
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// BenchmarkRapidReset measures what a rapid-reset client (CVE-2023-44487)
// costs the server: each iteration is one connection that opens and
// resets streams as fast as it can until the server ends it with GOAWAY
// ENHANCE_YOUR_CALM. It reports the streams a connection got and the
// CPU time of the whole process (client, TLS, server) per connection and
// per reset stream; before the connection was cut off, one connection
// got 3.7 million streams in 10 s for 6.5 s of CPU.
func BenchmarkRapidReset(b *testing.B) {
	f := newFixture(b, nil)
	denied := netip.MustParseAddrPort("127.0.0.2:80")
	var streams int
	start := cpuTime(b)
	for b.Loop() {
		p := f.newPeer(b, f.addr)
		for i := 0; ; i++ {
			id := uint32(2*i + 1)
			fields := p.block(":method", "CONNECT", ":authority", denied.String())
			if p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: fields, EndHeaders: true}) != nil ||
				p.fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
				break
			}
			streams++
			if i > 1_000_000 {
				b.Fatal("the server never ended the connection")
			}
		}
		p.tc.Close()
	}
	cpu := cpuTime(b) - start
	b.ReportMetric(float64(streams)/float64(b.N), "streams/conn")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/conn")
	if streams > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(streams), "cpu-ns/stream")
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
