package hbone

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BenchmarkRoundTrips: 16 tunnels on one HBONE connection each send
// 1 KiB and read its echo (through the server and a TCP echo), all at
// once, as a waypoint's or ztunnel's pooled connection carries many
// small requests: ns/op is per round trip of one tunnel. It shows what
// write combining saves (frames of several streams in one TLS record and
// system call); compare builds side by side in one run.
func BenchmarkRoundTrips(b *testing.B) {
	f := newFixture(b, nil)
	cc, err := Dial(context.Background(), f.addr, ClientConfig{
		Certificate: f.issue(b, f.ca, clientID, time.Hour),
		Verifier:    f.verifier, Expected: serverID,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cc.Close() })
	const tunnels, size = 16, 1024
	conns := make([]net.Conn, tunnels)
	for i := range conns {
		if conns[i], err = cc.Connect(context.Background(), f.allowed, nil); err != nil {
			b.Fatal(err)
		}
		defer conns[i].Close()
	}
	msg := bytes.Repeat([]byte("x"), size)
	b.SetBytes(2 * size)
	w0, cpu0 := syscallsAndCPU(b)
	b.ResetTimer()
	var wg sync.WaitGroup
	per := b.N/tunnels + 1
	for _, c := range conns {
		wg.Go(func() {
			buf := make([]byte, size)
			for range per {
				if _, err := c.Write(msg); err != nil {
					b.Error(err)
					return
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	w1, cpu1 := syscallsAndCPU(b)
	// This process is both ends (client, server, echo): its write system
	// calls and CPU time per round trip.
	b.ReportMetric(float64(w1-w0)/float64(per*tunnels), "writes/op")
	b.ReportMetric(float64(cpu1-cpu0)/float64(per*tunnels), "cpu-ns/op")
}

// syscallsAndCPU is this process's count of write system calls
// (/proc/self/io syscw) and its CPU time in nanoseconds.
func syscallsAndCPU(b *testing.B) (writes, cpu int64) {
	b.Helper()
	io, err := os.ReadFile("/proc/self/io")
	if err != nil {
		b.Skipf("no /proc/self/io: %v", err)
	}
	for _, line := range strings.Split(string(io), "\n") {
		if v, ok := strings.CutPrefix(line, "syscw: "); ok {
			writes, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return writes, ru.Utime.Nano() + ru.Stime.Nano()
}
