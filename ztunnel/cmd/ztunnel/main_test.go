package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/internal/netns"
	"github.com/ambitmesh/ambit/internal/testutil"
)

const twoNodes = `
workloads:
  - {uid: shop/client, name: client, namespace: shop, serviceAccount: client, addresses: [127.0.10.1], node: node-a, tunnelProtocol: HBONE}
  - uid: shop/server
    name: server
    namespace: shop
    serviceAccount: server
    addresses: [127.0.20.1]
    node: node-b
    tunnelProtocol: HBONE
    services: {shop/server.shop.svc.cluster.local: {ports: [{servicePort: 80, targetPort: 8080}]}}
services:
  - {name: server, namespace: shop, hostname: server.shop.svc.cluster.local, addresses: [{address: 127.0.30.1}], ports: [{servicePort: 80, targetPort: 8080}]}
`

// pairs numbers the pairs of one test process, for their namespaces.
var pairs atomic.Uint32

// pair is two ztunnel processes in a network namespace of the test's own,
// with the client workload's traffic (127.0.10.1) captured by an iptables
// REDIRECT to node A's outbound port, as the node's redirection will do,
// and an echo server as the server workload (127.0.20.1:8080).
type pair struct {
	ns   *netns.NS
	pids map[string]int
}

func startPair(tb testing.TB) *pair {
	tb.Helper()
	testutil.RequireRoot(tb)
	dir := tb.TempDir()
	bin := filepath.Join(dir, "ztunnel")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		tb.Fatalf("build: %v\n%s", err, out)
	}
	ca, err := identity.NewCA(identity.DefaultTrustDomain)
	if err != nil {
		tb.Fatal(err)
	}
	if err := ca.WriteFiles(filepath.Join(dir, "ca")); err != nil {
		tb.Fatal(err)
	}
	cfg := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(cfg, []byte(twoNodes), 0o644); err != nil {
		tb.Fatal(err)
	}
	// Not "ambit-": a lab starting in another test binary deletes every
	// "ambit-<id>-" namespace whose lab is not live (lab.CleanStale).
	ns, err := netns.Create(fmt.Sprintf("ambitzt-bin-%d-%d", os.Getpid(), pairs.Add(1)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ns.Delete() })
	ctx := context.Background()
	run := func(name string, args ...string) {
		tb.Helper()
		if out, err := ns.Command(ctx, name, args...).CombinedOutput(); err != nil {
			tb.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	run("ip", "link", "set", "lo", "up")
	for _, dst := range []string{"127.0.20.1", "127.0.30.1"} {
		run("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-s", "127.0.10.1", "-d", dst, "-j", "REDIRECT", "--to-ports", "15001")
	}
	p := &pair{ns: ns, pids: map[string]int{}}
	start := func(node string, base int) {
		args := []string{"--redirect", "nat", "--node", node, "--local-config", cfg, "--fake-ca-dir", filepath.Join(dir, "ca"),
			"--outbound", fmt.Sprintf("127.0.0.1:%d", base+1), "--admin", fmt.Sprintf("127.0.0.1:%d", base),
			"--metrics", fmt.Sprintf("127.0.0.1:%d", base+20), "--readiness", fmt.Sprintf("127.0.0.1:%d", base+21), "--liveness", fmt.Sprintf("127.0.0.1:%d", base+22),
			"--log-level", "warn"}
		// ip netns exec execs the binary: the process is ztunnel itself.
		cmd := ns.Command(ctx, bin, args...)
		stderr, err := cmd.StderrPipe()
		if err != nil {
			tb.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			tb.Fatal(err)
		}
		p.pids[node] = cmd.Process.Pid
		var b strings.Builder
		done := make(chan struct{})
		tb.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
			<-done
			if tb.Failed() {
				tb.Logf("%s log:\n%s", node, b.String())
			}
		})
		sc := bufio.NewScanner(stderr)
		for sc.Scan() { // the warning comes once the listeners are bound
			b.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "development mode") {
				break
			}
		}
		go func() {
			defer close(done)
			for sc.Scan() {
				b.WriteString(sc.Text() + "\n")
			}
		}()
	}
	start("node-a", 15000)
	start("node-b", 16000)

	startEcho(tb, ns, "127.0.20.1:8080")
	return p
}

// echoAddrEnv, when set, makes the test binary an echo server on that
// address instead of running tests (see TestMain).
const echoAddrEnv = "AMBIT_TEST_ECHO_ADDR"

// TestMain lets the test binary serve as the server workload in a process
// of its own, so that the sockets of many open connections are not
// counted against this process's descriptor limit twice.
func TestMain(m *testing.M) {
	if addr := os.Getenv(echoAddrEnv); addr != "" {
		if err := serveEcho(addr); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// serveEcho echoes every connection on addr, saying on stdout when it
// listens, until stdin closes.
func serveEcho(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen echo %s: %w", addr, err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// A plain buffer: io.Copy would splice through a pipe pair
			// held for every open connection, three descriptors each.
			go func() {
				io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 16<<10))
				c.Close()
			}()
		}
	}()
	fmt.Println("listening")
	io.Copy(io.Discard, os.Stdin)
	return ln.Close()
}

// startEcho runs the test binary as an echo server on addr in ns.
func startEcho(tb testing.TB, ns *netns.NS, addr string) {
	tb.Helper()
	cmd := ns.Command(context.Background(), os.Args[0])
	cmd.Env = append(os.Environ(), echoAddrEnv+"="+addr)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { stdin.Close(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "listening\n" {
		tb.Fatalf("echo server on %s: got %q, %v; want it listening", addr, line, err)
	}
}

// dial connects as the client workload; the namespace's REDIRECT sends
// it to node A's outbound port.
func (p *pair) dial(tb testing.TB, dst string) net.Conn {
	tb.Helper()
	var c net.Conn
	err := p.ns.Do(func() error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.10.1")}, Timeout: 10 * time.Second}
		var err error
		c, err = d.Dial("tcp", dst)
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// TestBinaryRedirected sends traffic through the process pair: the
// outbound finds the original destination with SO_ORIGINAL_DST and the
// connection crosses HBONE to node B, for a workload and a Service
// address.
func TestBinaryRedirected(t *testing.T) {
	p := startPair(t)
	for _, dst := range []string{"127.0.20.1:8080", "127.0.30.1:80"} {
		c := p.dial(t, dst)
		msg := "through the tunnel to " + dst
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(got) != msg {
			t.Errorf("echo via %s: got %q, %v; want %q", dst, got, err, msg)
		}
	}
}

// rssKiB reads a process's resident set size.
func rssKiB(tb testing.TB, pid int) int {
	tb.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kib int
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kib)
			return kib
		}
	}
	tb.Fatalf("no VmRSS for pid %d", pid)
	return 0
}

// open dials n connections as the client workload and makes one round
// trip on each, so that every tunnel is fully set up.
func (p *pair) open(tb testing.TB, n int) []net.Conn {
	tb.Helper()
	conns := make([]net.Conn, 0, n)
	for range n {
		c := p.dial(tb, "127.0.20.1:8080")
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "x"); err != nil {
			tb.Fatalf("connection %d: %v", len(conns), err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			tb.Fatalf("connection %d: %v", len(conns), err)
		}
		c.SetDeadline(time.Time{})
		conns = append(conns, c)
	}
	return conns
}

// openBulk dials n connections as the client workload and moves size
// bytes each way on each (sent, echoed back), leaving them open and idle.
func (p *pair) openBulk(tb testing.TB, n, size int) []net.Conn {
	tb.Helper()
	msg := make([]byte, size)
	back := make([]byte, size)
	conns := make([]net.Conn, 0, n)
	for range n {
		c := p.dial(tb, "127.0.20.1:8080")
		c.SetDeadline(time.Now().Add(30 * time.Second))
		sent := make(chan error, 1)
		go func() { _, err := c.Write(msg); sent <- err }()
		if _, err := io.ReadFull(c, back); err != nil {
			tb.Fatalf("connection %d: %v", len(conns), err)
		}
		if err := <-sent; err != nil {
			tb.Fatalf("connection %d: %v", len(conns), err)
		}
		c.SetDeadline(time.Time{})
		conns = append(conns, c)
	}
	return conns
}

// rssOf reads the RSS of both ztunnels of p.
func (p *pair) rss(tb testing.TB) map[string]int {
	tb.Helper()
	out := map[string]int{}
	for n, pid := range p.pids {
		out[n] = rssKiB(tb, pid)
	}
	return out
}

// BenchmarkRSS reports the resident memory of each ztunnel process, in
// two pairs of processes. In the first: just started, idle after one
// connection (certificates issued, one pooled HBONE connection), and with
// 1,000 and 10,000 open tunnelled connections that made one round trip;
// and what each 1,000 connections add. In the second: with 1,000 open
// connections that each moved 256 KiB both ways and are now idle, the
// state a node is in after bursts of traffic.
func BenchmarkRSS(b *testing.B) {
	nodes := []string{"node-a", "node-b"}
	mib := func(kib int) float64 { return float64(kib) / 1024 }
	var tab strings.Builder
	b.Run("idle", func(b *testing.B) {
		p := startPair(b)
		started := p.rss(b)
		for _, c := range p.open(b, 1) {
			c.Close()
		}
		idle := p.rss(b)
		var at1k, at10k map[string]int
		for b.Loop() {
			conns := p.open(b, 1000)
			at1k = p.rss(b)
			conns = append(conns, p.open(b, 9000)...)
			at10k = p.rss(b)
			for _, c := range conns {
				c.Close()
			}
		}
		b.StopTimer()
		fmt.Fprintf(&tab, "%-8s %10s %10s %12s %13s %16s %17s\n", "", "started", "idle", "1k conns", "10k conns", "per 1k (at 1k)", "per 1k (at 10k)")
		for i, n := range nodes {
			side := []string{"source", "dest"}[i]
			fmt.Fprintf(&tab, "%-8s %7.1f MiB %6.1f MiB %8.1f MiB %9.1f MiB %12.1f MiB %13.1f MiB\n", side,
				mib(started[n]), mib(idle[n]), mib(at1k[n]), mib(at10k[n]), mib(at1k[n]-idle[n]), mib(at10k[n]-idle[n])/10)
			b.ReportMetric(mib(idle[n]), "idle-"+side+"-MiB")
			b.ReportMetric(mib(at10k[n]-idle[n])/10, side+"-MiB/1k-conns")
		}
		b.Log("\n" + tab.String())
		tab.Reset()
	})
	b.Run("after-256KiB", func(b *testing.B) {
		p := startPair(b)
		for _, c := range p.open(b, 1) {
			c.Close()
		}
		idle := p.rss(b)
		var at1k map[string]int
		for b.Loop() {
			conns := p.openBulk(b, 1000, 256<<10)
			at1k = p.rss(b)
			for _, c := range conns {
				c.Close()
			}
		}
		b.StopTimer()
		fmt.Fprintf(&tab, "1k open connections, idle after moving 256 KiB each way:\n")
		for i, n := range nodes {
			side := []string{"source", "dest"}[i]
			fmt.Fprintf(&tab, "%-8s %6.1f MiB idle, %8.1f MiB with them: %+.1f MiB per 1k\n", side, mib(idle[n]), mib(at1k[n]), mib(at1k[n]-idle[n]))
			b.ReportMetric(mib(at1k[n]-idle[n]), side+"-MiB/1k-after-bulk")
		}
		b.Log("\n" + tab.String())
		tab.Reset()
	})
}

// cpuTicks reads a process's user and system CPU time, in clock ticks
// (USER_HZ, 100 per second on Linux).
func cpuTicks(tb testing.TB, pid int) int64 {
	tb.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	// Fields after the command name, which is in parentheses and may
	// hold spaces: state is field 3, utime 14, stime 15.
	rest := string(data[strings.LastIndexByte(string(data), ')')+2:])
	f := strings.Fields(rest)
	var utime, stime int64
	fmt.Sscan(f[11], &utime)
	fmt.Sscan(f[12], &stime)
	return utime + stime
}

// cpu reads the CPU time of both ztunnels of p.
func (p *pair) cpu(tb testing.TB) map[string]time.Duration {
	tb.Helper()
	out := map[string]time.Duration{}
	for n, pid := range p.pids {
		out[n] = time.Duration(cpuTicks(tb, pid)) * (time.Second / 100)
	}
	return out
}

// BenchmarkCPU reports the CPU each ztunnel process spends per 1,000
// requests per second: 16 connections through the pair, each making
// small round trips (64 bytes each way) at an even pace, 1,000 a second
// in all, for cpuDuration; minus what the processes spend idle over the
// same time. Istio quotes its Rust ztunnel at about 0.06 vCPU per 1,000
// requests per second.
func BenchmarkCPU(b *testing.B) {
	const (
		conns       = 16
		rate        = 1000 // round trips per second, all connections
		cpuDuration = 10 * time.Second
	)
	nodes := []string{"node-a", "node-b"}
	p := startPair(b)
	cs := p.open(b, conns)
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	delta := func(before, after map[string]time.Duration) map[string]time.Duration {
		out := map[string]time.Duration{}
		for n := range after {
			out[n] = after[n] - before[n]
		}
		return out
	}
	c0 := p.cpu(b)
	time.Sleep(cpuDuration) // the idle baseline: nothing to wait for
	idle := delta(c0, p.cpu(b))
	var loaded map[string]time.Duration
	var done atomic.Int64
	for b.Loop() {
		c1 := p.cpu(b)
		ctx, cancel := context.WithTimeout(context.Background(), cpuDuration)
		errs := make(chan error, conns)
		for i, c := range cs {
			go func() {
				msg, back := make([]byte, 64), make([]byte, 64)
				period := time.Duration(conns) * time.Second / rate
				// Stagger the connections evenly over one period.
				t := time.NewTimer(time.Duration(i) * period / conns)
				defer t.Stop()
				for {
					select {
					case <-ctx.Done():
						errs <- nil
						return
					case <-t.C:
					}
					t.Reset(period)
					c.SetDeadline(time.Now().Add(5 * time.Second))
					if _, err := c.Write(msg); err != nil {
						errs <- err
						return
					}
					if _, err := io.ReadFull(c, back); err != nil {
						errs <- err
						return
					}
					done.Add(1)
				}
			}()
		}
		for range cs {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
		cancel()
		loaded = delta(c1, p.cpu(b))
	}
	b.StopTimer()
	perSecond := float64(done.Load()) / (float64(b.N) * cpuDuration.Seconds())
	var tab strings.Builder
	fmt.Fprintf(&tab, "%.0f round trips/s over %d connections for %v:\n", perSecond, conns, cpuDuration)
	for i, n := range nodes {
		side := []string{"source", "dest"}[i]
		vcpu := (loaded[n] - idle[n]).Seconds() / cpuDuration.Seconds() / (perSecond / 1000)
		fmt.Fprintf(&tab, "%-8s %.3f vCPU per 1k req/s (idle %.3f vCPU)\n", side, vcpu, idle[n].Seconds()/cpuDuration.Seconds())
		b.ReportMetric(vcpu, side+"-vCPU-per-1k-rps")
	}
	b.Log("\n" + tab.String())
}

// TestBinaryHandshakeFlood is the attack that once made a node's tunnel
// unreachable: under a 1,024-descriptor limit, 1,100 TCP connections to
// the HBONE port that never start TLS took every descriptor, and
// readiness, admin and HBONE itself stopped answering for the 10 s of the
// handshake timeout. With the handshake bounds the flood is shed as it
// arrives: readiness, liveness and admin answer, tunnels work, and the
// descriptors come back once the flood ends.
func TestBinaryHandshakeFlood(t *testing.T) {
	p := startPair(t)
	pid := p.pids["node-b"]
	limit := unix.Rlimit{Cur: 1024, Max: 1024}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &limit, nil); err != nil {
		t.Fatal(err)
	}
	fds := func() int {
		entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			t.Fatal(err)
		}
		return len(entries)
	}
	before := fds()
	var flood []net.Conn
	t.Cleanup(func() {
		for _, c := range flood {
			c.Close()
		}
	})
	err := p.ns.Do(func() error {
		for i := range 1100 {
			// From 20 addresses, so that the bound in all is reached, not
			// only the one per source.
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 50, byte(1+i%20))}, Timeout: 10 * time.Second}
			c, err := d.Dial("tcp", "127.0.20.1:15008")
			if err != nil {
				return fmt.Errorf("flood connection %d: %w", i, err)
			}
			flood = append(flood, c)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	hc := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: p.ns.DialContext}}
	get := func(url string) error {
		resp, err := hc.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	for _, url := range []string{"http://127.0.0.1:16021/healthz/ready", "http://127.0.0.1:16022/healthz/live", "http://127.0.0.1:16000/config_dump"} {
		if err := get(url); err != nil {
			t.Errorf("GET %s during the flood: %v", url, err)
		}
	}
	c := p.dial(t, "127.0.20.1:8080")
	io.WriteString(c, "during the flood")
	c.(*net.TCPConn).CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != "during the flood" {
		t.Errorf("tunnel during the flood: got %q, %v", got, err)
	}
	c.Close()
	if n := fds(); n > 1024-64 {
		t.Errorf("node B's descriptors during the flood: got %d, want well under its limit of 1024", n)
	}
	for _, c := range flood {
		c.Close()
	}
	flood = nil
	// The pooled tunnel from node A stays; allow for it.
	for deadline := time.Now().Add(15 * time.Second); fds() > before+4; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("node B's descriptors after the flood: got %d, want about %d as before", fds(), before)
		}
	}
}
