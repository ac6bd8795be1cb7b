package waypoint_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"fortio.org/fortio/fhttp"
	"fortio.org/log"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/ambitmesh/ambit/internal/hbone"
	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/internal/loadgen"
	"github.com/ambitmesh/ambit/internal/version"
	"github.com/ambitmesh/ambit/waypoint/config"
)

var (
	proxiesDuration = flag.Duration("proxies.duration", 6*time.Second,
		"BenchmarkProxies: how long fortio loads each path at each fixed rate and at saturation")
	proxiesRounds = flag.Int("proxies.rounds", 3,
		"BenchmarkProxies: rounds over the paths at each fixed rate (the latencies are medians over rounds)")
	proxiesOnly = flag.String("proxies.only", "",
		"BenchmarkProxies: a regular expression of the proxies to run (waypoint, haproxy, nginx, reverseproxy); empty for all")
	proxiesProfile = flag.String("proxies.cpuprofile", "",
		"BenchmarkProxies: write a CPU profile of the waypoint process at saturation (its admin's /debug/pprof/profile) to this file, and its heap at the end to the file .heap")
	proxiesEnv = flag.String("proxies.env", "",
		"BenchmarkProxies: environment variables added to the waypoint's, space-separated (GOGC=200 GOMAXPROCS=2)")
	proxiesProfileRate = flag.Float64("proxies.profilerate", -1,
		"BenchmarkProxies: the rate of the run -proxies.cpuprofile profiles (requests/s, one of the fixed rates; -1: saturation); the last run at that rate wins")
)

// The workload of BenchmarkProxies (issue 17): HTTP/1.1 POSTs of 1 KiB
// that the backend echoes (1 KiB bodies both ways), keep-alive, over 16
// connections, at fixed rates and at saturation (fortio's -qps 0).
const (
	proxiesConnections = 16
	proxiesBody        = 1024
	// The proxy under test runs on proxyCPU; fortio, the HBONE client,
	// the pod's ztunnel and the backends on loadCPU.
	proxyCPU, loadCPU = "0", "1"
	// userHZ is the unit of /proc/<pid>/stat's utime and stime: USER_HZ,
	// 100 on every Linux ABI Go runs on.
	userHZ = 100
)

var proxiesRates = []float64{1000, 5000}

// BenchmarkProxies measures the waypoint as a process of its own, pinned
// to one core, on its real path (an HBONE client, the waypoint, the
// pod's ztunnel and the pod), against the same path without it; and
// HAProxy, nginx and Go's httputil.ReverseProxy (internal/benchproxy)
// pinned the same way as one HTTP hop between a TLS client and a TLS
// backend (mutual TLS 1.3 on both sides, as the waypoint's HBONE is).
// It prints one table: the latency the waypoint adds at 1,000 requests/s,
// every proxy's vCPU per 1,000 requests/s at the fixed rates (from its
// /proc/<pid>/stat) and RSS, its requests/s per core at saturation, the
// ratios against the waypoint, and the issue's aims, met or not.
// make bench-waypoint runs it; docs/performance.md says how to read it.
// Proxies that are not installed are left out, with a note.
func BenchmarkProxies(b *testing.B) {
	log.SetLogLevelQuiet(log.Error)
	if runtime.NumCPU() < 2 {
		b.Skip("needs two CPUs: the proxy on one, the load on the other")
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		b.Skip("needs taskset (util-linux) to pin the proxy and the load")
	}
	bins := benchBinaries(b)
	dir := b.TempDir()
	e := newEnvWith(b, host, [2]uint16{80, 90}, [2]uint16{8080, 9090}, func(e *env) {
		e.cfg, e.app, e.external = basicConfig(e.ip), http.HandlerFunc(fhttp.EchoHandler), true
	})
	only, err := regexp.Compile(*proxiesOnly)
	if err != nil {
		b.Fatalf("-proxies.only: %v", err)
	}
	pinLoad(b)
	paths := []*benchPath{e.directPath(b), e.waypointPath(b, filepath.Join(bins, "waypoint"), dir)}
	paths = append(paths, tlsHops(b, e, bins, dir, only)...)

	d, rounds := *proxiesDuration, *proxiesRounds
	fixed := map[string]map[float64][]*loadResult{}
	for _, p := range paths {
		fixed[p.name] = map[float64][]*loadResult{}
	}
	b.ResetTimer()
	for b.Loop() {
		for _, rate := range proxiesRates {
			for range rounds {
				for _, p := range paths {
					fixed[p.name][rate] = append(fixed[p.name][rate], p.load(b, rate, d))
				}
			}
		}
	}
	saturated := map[string]*loadResult{}
	for _, p := range paths {
		if p.pid != 0 {
			saturated[p.name] = p.load(b, -1, d)
		}
	}
	b.StopTimer()
	for _, p := range paths {
		if p.pid != 0 {
			p.peakRSS = procStatusKiB(b, p.pid, "VmHWM")
		}
		if p.profile != "" && *proxiesProfile != "" {
			// The heap as the runs left it, beside the CPU profile.
			if err := fetchProfile(strings.TrimSuffix(p.profile, "profile")+"heap", 0, *proxiesProfile+".heap"); err != nil {
				b.Errorf("heap profile %s: %v", p.name, err)
			}
		}
	}
	// On stdout rather than in b.Log, which go test cuts to a few lines
	// for benchmarks.
	fmt.Print("\n" + proxiesTable(b, paths, fixed, saturated, d, rounds) + "\n")
}

// benchPath is one way to the echo backend, loaded by fortio.
type benchPath struct {
	name string
	// pid is the proxy's process (0: no proxy, the direct path).
	pid int
	// url is what fortio asks for: an address, never a name (fortio
	// would look it up in DNS); host, if set, its Host header.
	url, host string
	dial      func(ctx context.Context) (net.Conn, error)
	tls       *tls.Config
	peakRSS   int
	// profile is the proxy's pprof CPU profile URL, if it has one.
	profile string
}

// loadResult is one fortio run on a path.
type loadResult struct {
	times []time.Duration
	qps   float64
	// cpu is the proxy's CPU time during the run; rss its VmRSS (KiB)
	// at the end.
	cpu time.Duration
	rss int
	// allocs and allocBytes are what the waypoint's heap allocated
	// during the run (the Go runtime's Mallocs and TotalAlloc); 0
	// elsewhere.
	allocs, allocBytes uint64
}

func (p *benchPath) load(b *testing.B, qps float64, d time.Duration) *loadResult {
	b.Helper()
	o := loadgen.Options{URL: p.url, Host: p.host, QPS: qps, Connections: proxiesConnections, Duration: d,
		Payload: make([]byte, proxiesBody), Dial: p.dial, TLS: p.tls,
		// Generous: on a loaded machine the first handshakes through a
		// proxy (fortio's warm-up) can take seconds; a slow request is
		// measured, not failed.
		Timeout: 30 * time.Second}
	var cpu0 time.Duration
	var m0 memCounts
	if p.profile != "" {
		m0 = fetchMemCounts(b, p.profile) // (before the CPU is read: it costs the waypoint some)
	}
	if p.pid != 0 {
		cpu0 = procCPU(b, p.pid)
	}
	profiled := make(chan error, 1)
	if qps == *proxiesProfileRate && p.profile != "" && *proxiesProfile != "" {
		go func() { profiled <- fetchProfile(p.profile, max(time.Second, d-time.Second), *proxiesProfile) }()
	} else {
		profiled <- nil
	}
	res, err := loadgen.Run(o)
	if perr := <-profiled; perr != nil {
		b.Errorf("profile %s: %v", p.name, perr)
	}
	if err != nil {
		b.Fatalf("via %s: %v", p.name, err)
	}
	r := &loadResult{times: res.Times, qps: res.QPS}
	if p.pid != 0 {
		r.cpu = procCPU(b, p.pid) - cpu0
		r.rss = procStatusKiB(b, p.pid, "VmRSS")
	}
	if p.profile != "" {
		m := fetchMemCounts(b, p.profile)
		r.allocs, r.allocBytes = m.mallocs-m0.mallocs, m.totalAlloc-m0.totalAlloc
	}
	if res.Sockets > proxiesConnections {
		// A reconnect costs the proxy a handshake: said, not fatal.
		b.Logf("fortio %s via %s at %v req/s: %d connections, not %d kept alive", p.url, p.name, qps, res.Sockets, proxiesConnections)
	}
	return r
}

// memCounts are a Go process's cumulative heap allocations.
type memCounts struct{ mallocs, totalAlloc uint64 }

// fetchMemCounts reads them from the runtime.MemStats that a pprof
// allocs profile in text ends with; profile is the process's
// /debug/pprof/profile URL.
func fetchMemCounts(tb testing.TB, profile string) memCounts {
	tb.Helper()
	url := strings.TrimSuffix(profile, "profile") + "allocs?debug=1"
	resp, err := http.Get(url)
	if err != nil {
		tb.Fatalf("memory statistics: %v", err)
	}
	defer resp.Body.Close()
	var m memCounts
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " = ")
		if !ok {
			continue
		}
		n, _ := strconv.ParseUint(v, 10, 64)
		switch k {
		case "# Mallocs":
			m.mallocs = n
		case "# TotalAlloc":
			m.totalAlloc = n
		}
	}
	if err := sc.Err(); err != nil || m.mallocs == 0 {
		tb.Fatalf("memory statistics from %s: none read (%v)", url, err)
	}
	return m
}

// fetchProfile writes a profile from url (a CPU profile of d, if d > 0)
// to path.
func fetchProfile(url string, d time.Duration, path string) error {
	if d > 0 {
		url = fmt.Sprintf("%s?seconds=%d", url, int(d.Seconds()))
	}
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("get %s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// directPath is the waypoint's path without the waypoint: HBONE from the
// client straight to the pod's ztunnel, on one shared HBONE connection
// as a source ztunnel's pool would have it.
func (e *env) directPath(b *testing.B) *benchPath {
	cc := e.direct(b)
	return &benchPath{name: "direct HBONE", url: "http://" + e.vip(80).String() + "/echo", host: host,
		dial: func(ctx context.Context) (net.Conn, error) { return cc.Connect(ctx, e.pod(), nil) }}
}

// waypointPath starts the waypoint binary on proxyCPU with the test's
// config as a static file and the test CA as its fake CA, and returns
// the path through it: HBONE to the waypoint for the service's VIP (one
// shared connection), the waypoint's HBONE to the pod's ztunnel.
func (e *env) waypointPath(b *testing.B, bin, dir string) *benchPath {
	b.Helper()
	caDir := filepath.Join(dir, "ca")
	if err := e.ca.WriteFiles(caDir); err != nil {
		b.Fatal(err)
	}
	cfg := filepath.Join(dir, "waypoint.json")
	writeStaticConfig(b, cfg, e.cfg.resources())
	ip := e.ip(50)
	at := func(port uint16) string { return netip.AddrPortFrom(ip, port).String() }
	cmd := pinnedCommand(b, dir, "waypoint", bin, "--static-config", cfg, "--fake-ca-dir", caDir,
		"--hbone", at(15008), "--admin", at(15000), "--metrics", at(15020), "--readiness", at(15021),
		"--access-log", "", "--pod-labels", filepath.Join(dir, "no-labels"), "--drain-timeout", "1s")
	if *proxiesProfile != "" {
		cmd.Args = append(cmd.Args, "--heap-profiling") // for the heap profile beside the CPU profile
	}
	cmd.Env = append(os.Environ(), "POD_NAME=waypoint-0", "POD_NAMESPACE="+waypointID.Namespace,
		"SERVICE_ACCOUNT="+waypointID.ServiceAccount, "INSTANCE_IP="+ip.String())
	cmd.Env = append(cmd.Env, strings.Fields(*proxiesEnv)...)
	pid := startProxy(b, cmd, dir, "waypoint", func() error {
		resp, err := http.Get("http://" + at(15021) + "/healthz/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readiness: %s", resp.Status)
		}
		return nil
	})
	cert, err := e.ca.Issue(clientID, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	cc, err := hbone.Dial(context.Background(), netip.AddrPortFrom(ip, 15008), hbone.ClientConfig{
		Certificate: cert, Verifier: &identity.Verifier{Roots: e.ca.Roots()}, Expected: waypointID,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cc.Close() })
	hdr := http.Header{hbone.HeaderForwarded: {hbone.Forwarded(e.ip(1))}}
	return &benchPath{name: "waypoint", pid: pid, url: "http://" + e.vip(80).String() + "/echo", host: host,
		dial:    func(ctx context.Context) (net.Conn, error) { return cc.Connect(ctx, e.vip(80), hdr) },
		profile: "http://" + at(15000) + "/debug/pprof/profile"}
}

// writeStaticConfig writes r as the waypoint's static config file (the
// resource-set form config.LoadFile reads).
func writeStaticConfig(tb testing.TB, path string, r *config.Resources) {
	tb.Helper()
	var out struct {
		Listeners []json.RawMessage `json:"listeners"`
		Clusters  []json.RawMessage `json:"clusters"`
		Endpoints []json.RawMessage `json:"endpoints"`
	}
	add := func(to *[]json.RawMessage, m proto.Message) {
		data, err := protojson.Marshal(m)
		if err != nil {
			tb.Fatalf("marshal static config: %v", err)
		}
		*to = append(*to, data)
	}
	for _, l := range r.Listeners {
		add(&out.Listeners, l)
	}
	for _, c := range r.Clusters {
		add(&out.Clusters, c)
	}
	for _, ep := range r.Endpoints {
		add(&out.Endpoints, ep)
	}
	data, err := json.Marshal(out)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		tb.Fatal(err)
	}
}

// tlsHops starts the echo backend with TLS and, in front of it, each
// proxy of the comparison that is installed: HAProxy, nginx and
// benchproxy (httputil.ReverseProxy), each pinned to proxyCPU.
func tlsHops(b *testing.B, e *env, bins, dir string, only *regexp.Regexp) []*benchPath {
	b.Helper()
	backend := netip.AddrPortFrom(e.ip(70), 8443)
	listen := map[string]netip.AddrPort{
		"haproxy": netip.AddrPortFrom(e.ip(61), 8443), "nginx": netip.AddrPortFrom(e.ip(62), 8443),
		"reverseproxy": netip.AddrPortFrom(e.ip(63), 8443),
	}
	pki := newBenchPKI(b, dir, []netip.Addr{backend.Addr(), listen["haproxy"].Addr(), listen["nginx"].Addr(), listen["reverseproxy"].Addr()})
	serveTLSBackend(b, backend, pki)
	var paths []*benchPath
	for _, name := range []string{"haproxy", "nginx", "reverseproxy"} {
		if !only.MatchString(name) {
			continue
		}
		at := listen[name]
		var cmd *exec.Cmd
		switch name {
		case "haproxy":
			bin, err := exec.LookPath("haproxy")
			if err != nil {
				b.Logf("haproxy is not installed (make bench-waypoint installs it): left out")
				continue
			}
			cfg := filepath.Join(dir, "haproxy.cfg")
			writeFile(b, cfg, haproxyConfig(pki, at, backend))
			cmd = pinnedCommand(b, dir, name, bin, "-db", "-f", cfg)
		case "nginx":
			bin, err := exec.LookPath("nginx")
			if err != nil {
				b.Logf("nginx is not installed (make bench-waypoint installs it): left out")
				continue
			}
			prefix := filepath.Join(dir, "nginx")
			if err := os.MkdirAll(prefix, 0o755); err != nil {
				b.Fatal(err)
			}
			cfg := filepath.Join(prefix, "nginx.conf")
			writeFile(b, cfg, nginxConfig(pki, prefix, at, backend))
			cmd = pinnedCommand(b, dir, name, bin, "-p", prefix, "-c", cfg, "-e", "stderr")
		case "reverseproxy":
			cmd = pinnedCommand(b, dir, name, filepath.Join(bins, "benchproxy"), "--listen", at.String(),
				"--backend", backend.String(), "--cert", pki.certFile, "--key", pki.keyFile, "--ca", pki.caFile)
		}
		pid := startProxy(b, cmd, dir, name, func() error {
			c, err := net.DialTimeout("tcp", at.String(), time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		paths = append(paths, &benchPath{name: name, pid: pid, url: "https://" + at.String() + "/echo", tls: pki.client})
	}
	return paths
}

func haproxyConfig(pki *benchPKI, listen, backend netip.AddrPort) string {
	// One thread, no logs, keep-alive on both sides; mutual TLS 1.3 in
	// and out.
	return fmt.Sprintf(`global
	nbthread 1
	maxconn 4096
defaults
	mode http
	option http-keep-alive
	http-reuse always
	timeout connect 5s
	timeout client 60s
	timeout server 60s
frontend hop
	bind %s ssl crt %s ca-file %s verify required alpn http/1.1 ssl-min-ver TLSv1.3
	default_backend echo
backend echo
	server echo %s ssl crt %s ca-file %s verify required ssl-min-ver TLSv1.3
`, listen, pki.bundleFile, pki.caFile, backend, pki.bundleFile, pki.caFile)
}

func nginxConfig(pki *benchPKI, prefix string, listen, backend netip.AddrPort) string {
	// One process (no master), no access log, keep-alive on both sides
	// (without nginx's default of 1,000 requests per connection); mutual
	// TLS 1.3 in and out.
	return fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	upstream echo {
		server %[3]s;
		keepalive 64;
		keepalive_requests 100000000;
	}
	server {
		listen %[2]s ssl;
		ssl_protocols TLSv1.3;
		ssl_certificate %[4]s;
		ssl_certificate_key %[5]s;
		ssl_client_certificate %[6]s;
		ssl_verify_client on;
		keepalive_requests 100000000;
		location / {
			proxy_pass https://echo;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_ssl_protocols TLSv1.3;
			proxy_ssl_certificate %[4]s;
			proxy_ssl_certificate_key %[5]s;
			proxy_ssl_trusted_certificate %[6]s;
			proxy_ssl_verify on;
			proxy_ssl_name localhost;
			proxy_ssl_session_reuse on;
		}
	}
}
`, prefix, listen, backend, pki.certFile, pki.keyFile, pki.caFile)
}

// serveTLSBackend serves fortio's echo handler with mutual TLS 1.3 and
// HTTP/1.1 on addr.
func serveTLSBackend(b *testing.B, addr netip.AddrPort, pki *benchPKI) {
	b.Helper()
	var h1 http.Protocols
	h1.SetHTTP1(true)
	srv := &http.Server{Handler: http.HandlerFunc(fhttp.EchoHandler), Protocols: &h1, TLSConfig: pki.server}
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		b.Fatal(err)
	}
	go srv.ServeTLS(ln, "", "")
	b.Cleanup(func() { srv.Close() })
}

// benchPKI is the TLS hops' CA and one certificate (for localhost and
// the hops' addresses) that every client, proxy and backend presents.
type benchPKI struct {
	caFile, certFile, keyFile, bundleFile string
	client, server                        *tls.Config
}

func newBenchPKI(tb testing.TB, dir string, ips []netip.Addr) *benchPKI {
	tb.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			tb.Fatal(err)
		}
		return k
	}
	now := time.Now()
	caKey, leafKey := key(), key()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		tb.Fatal(err)
	}
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	for _, ip := range ips {
		leafTmpl.IPAddresses = append(leafTmpl.IPAddresses, ip.AsSlice())
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(leafKey)
	if err != nil {
		tb.Fatal(err)
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	p := &benchPKI{caFile: filepath.Join(dir, "ca.pem"), certFile: filepath.Join(dir, "cert.pem"),
		keyFile: filepath.Join(dir, "key.pem"), bundleFile: filepath.Join(dir, "bundle.pem")}
	writeFile(tb, p.caFile, string(caPEM))
	writeFile(tb, p.certFile, string(certPEM))
	writeFile(tb, p.keyFile, string(keyPEM))
	writeFile(tb, p.bundleFile, string(certPEM)+string(keyPEM))
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		tb.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	p.client = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots, ServerName: "localhost",
		NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS13}
	p.server = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: roots, ClientAuth: tls.RequireAndVerifyClientCert,
		MinVersion: tls.VersionTLS13}
	return p
}

func writeFile(tb testing.TB, path, content string) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		tb.Fatal(err)
	}
}

// benchBinaries returns the directory of the waypoint and benchproxy
// binaries: $AMBIT_BENCH_BIN (make bench-waypoint builds them there), or
// built now.
func benchBinaries(b *testing.B) string {
	b.Helper()
	if d := os.Getenv("AMBIT_BENCH_BIN"); d != "" {
		return d
	}
	d := b.TempDir()
	// As the image ships it (deploy/images), as make bench-waypoint does.
	cmd := exec.Command("go", "build", "-tags", version.BuildTags, "-trimpath", "-ldflags", "-s -w", "-o", d+"/", "./cmd/waypoint", "../internal/benchproxy")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("go build the waypoint and benchproxy: %v\n%s", err, out)
	}
	return d
}

// pinLoad pins this process (fortio, the HBONE client, the ztunnel, the
// backends) to loadCPU, every thread of it, until the benchmark ends.
func pinLoad(b *testing.B) {
	b.Helper()
	pid := strconv.Itoa(os.Getpid())
	out, err := exec.Command("taskset", "-p", pid).Output()
	if err != nil {
		b.Fatalf("taskset -p %s: %v", pid, err)
	}
	f := strings.Fields(string(out))
	mask := f[len(f)-1]
	if out, err := exec.Command("taskset", "-a", "-p", "-c", loadCPU, pid).CombinedOutput(); err != nil {
		b.Fatalf("pin the load to CPU %s: %v\n%s", loadCPU, err, out)
	}
	b.Cleanup(func() { exec.Command("taskset", "-a", "-p", mask, pid).Run() })
}

// pinnedCommand is name's command line run on proxyCPU, its output
// going to dir/name.log.
func pinnedCommand(b *testing.B, dir, name, bin string, args ...string) *exec.Cmd {
	b.Helper()
	cmd := exec.Command("taskset", append([]string{"-c", proxyCPU, bin}, args...)...)
	f, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	cmd.Stdout, cmd.Stderr = f, f
	return cmd
}

// startProxy starts cmd (taskset executes the proxy in its own
// process, so cmd's pid is the proxy's), waits until ready says so and
// stops it when the benchmark ends.
func startProxy(b *testing.B, cmd *exec.Cmd, dir, name string, ready func() error) int {
	b.Helper()
	if err := cmd.Start(); err != nil {
		b.Fatalf("start %s: %v", name, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	b.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := ready()
		if err == nil {
			return cmd.Process.Pid
		}
		select {
		case werr := <-exited:
			exited <- werr
			out, _ := os.ReadFile(filepath.Join(dir, name+".log"))
			b.Fatalf("%s exited before it was ready: %v\n%s", name, werr, out)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s not ready after 30s: %v", name, err)
		}
	}
}

// procCPU is pid's CPU time (user and system) from /proc/<pid>/stat.
func procCPU(tb testing.TB, pid int) time.Duration {
	tb.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatalf("read cpu time: %v", err)
	}
	// The fields after the command name, which is in parentheses and may
	// hold spaces: state is field 3, utime 14, stime 15.
	i := strings.LastIndexByte(string(data), ')')
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		tb.Fatalf("read cpu time: /proc/%d/stat has %d fields after the name, want at least 13", pid, len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			tb.Fatalf("read cpu time: /proc/%d/stat: %v", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ
}

// procStatusKiB is a kB field of /proc/<pid>/status (VmRSS, VmHWM).
func procStatusKiB(tb testing.TB, pid int, field string) int {
	tb.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatalf("read %s: %v", field, err)
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				tb.Fatalf("read %s: %q: %v", field, line, err)
			}
			return n
		}
	}
	tb.Fatalf("read %s: not in /proc/%d/status", field, pid)
	return 0
}

func percentileOf(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p/100))]
}

func medianOf[T int | float64 | time.Duration](vs []T) T {
	s := slices.Clone(vs)
	slices.Sort(s)
	return s[len(s)/2]
}

// vcpuPer1k is a run's CPU seconds per second per 1,000 requests/s.
func vcpuPer1k(r *loadResult, d time.Duration) float64 {
	return r.cpu.Seconds() / d.Seconds() / (r.qps / 1000)
}

// proxiesTable renders BenchmarkProxies' results, and reports its main
// figures as benchmark metrics.
func proxiesTable(b *testing.B, paths []*benchPath, fixed map[string]map[float64][]*loadResult, saturated map[string]*loadResult, d time.Duration, rounds int) string {
	var t strings.Builder
	loadavg, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintf(&t, "fortio: HTTP/1.1 POST of %d B echoed, keep-alive, %d connections; proxy on CPU %s, load and backends on CPU %s\n",
		proxiesBody, proxiesConnections, proxyCPU, loadCPU)
	fmt.Fprintf(&t, "%d rounds of %v per path at each fixed rate (medians over rounds), %v at saturation; /proc/loadavg at the end: %s\n",
		rounds, d, d, strings.TrimSpace(string(loadavg)))
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	pcts := []float64{50, 90, 99}
	direct := fixed[paths[0].name][1000]
	fmt.Fprintf(&t, "\nlatency at 1,000 req/s     %9s %9s %9s\n", "p50", "p90", "p99")
	added := map[float64]time.Duration{}
	for _, p := range paths {
		fmt.Fprintf(&t, "%-26s", p.name)
		for _, q := range pcts {
			var v []time.Duration
			for _, r := range fixed[p.name][1000] {
				v = append(v, percentileOf(r.times, q))
			}
			fmt.Fprintf(&t, " %7.0fµs", us(medianOf(v)))
		}
		fmt.Fprintln(&t)
		if p.name != "waypoint" {
			continue
		}
		fmt.Fprintf(&t, "%-26s", "  waypoint adds")
		for _, q := range pcts {
			var v []time.Duration
			for i, r := range fixed[p.name][1000] {
				v = append(v, percentileOf(r.times, q)-percentileOf(direct[i].times, q))
			}
			added[q] = medianOf(v)
			fmt.Fprintf(&t, " %+7.0fµs", us(added[q]))
			b.ReportMetric(us(added[q]), fmt.Sprintf("waypoint-added-p%.0f-µs", q))
		}
		fmt.Fprintln(&t)
	}
	fmt.Fprintf(&t, "\n%-14s %9s %9s %9s %9s %9s %9s %10s %9s %9s %9s %9s\n", "proxy", "vCPU/1k", "req/s", "vCPU/1k", "RSS MiB", "RSS MiB",
		"peak RSS", "max req/s", "proxy", "req/s", "x-wp", "x-wp")
	fmt.Fprintf(&t, "%-14s %9s %9s %9s %9s %9s %9s %10s %9s %9s %9s %9s\n", "", "@1k", "@5k", "@5k", "@1k", "@5k", "MiB", "", "CPU", "per core",
		"req/s/core", "vCPU@1k")
	type row struct{ vcpu1k, vcpu5k, rpsCore float64 }
	rows := map[string]row{}
	for _, p := range paths[1:] {
		var r row
		var rss [2][]int
		var v5k, v1k, q5k []float64
		for _, res := range fixed[p.name][1000] {
			v1k = append(v1k, vcpuPer1k(res, d))
			rss[0] = append(rss[0], res.rss)
		}
		for _, res := range fixed[p.name][5000] {
			v5k = append(v5k, vcpuPer1k(res, d))
			q5k = append(q5k, res.qps)
			rss[1] = append(rss[1], res.rss)
		}
		r.vcpu1k, r.vcpu5k = medianOf(v1k), medianOf(v5k)
		sat := saturated[p.name]
		cpuShare := sat.cpu.Seconds() / d.Seconds()
		r.rpsCore = sat.qps / cpuShare
		rows[p.name] = r
		wp := rows["waypoint"]
		fmt.Fprintf(&t, "%-14s %9.3f %9.0f %9.3f %9.1f %9.1f %9.1f %10.0f %8.0f%% %9.0f %9.2f %9.2f\n", p.name, r.vcpu1k, medianOf(q5k), r.vcpu5k,
			float64(medianOf(rss[0]))/1024, float64(medianOf(rss[1]))/1024, float64(p.peakRSS)/1024, sat.qps, 100*cpuShare,
			r.rpsCore, r.rpsCore/wp.rpsCore, r.vcpu1k/wp.vcpu1k)
		name := strings.ReplaceAll(p.name, " ", "-")
		b.ReportMetric(r.vcpu1k, name+"-vCPU-per-1k-rps")
		b.ReportMetric(r.rpsCore, name+"-rps-per-core")
	}
	fmt.Fprintf(&t, "(vCPU/1k: the proxy's CPU seconds per second per 1,000 req/s achieved (req/s @5k: what the 5k runs achieved);\n req/s per core: max req/s over the\n"+
		" proxy's CPU share at saturation; x-wp: that proxy's figure over the waypoint's. A CPU share well under 100%%\n"+
		" means the load side, not the proxy, was the limit.)\n")
	// Each round's figure at 1,000 req/s, for the spread the medians
	// hide: on a shared machine one round can cost a third more than the
	// next.
	fmt.Fprintf(&t, "vCPU/1k @1k by round:")
	for _, p := range paths[1:] {
		fmt.Fprintf(&t, " %s", p.name)
		for _, res := range fixed[p.name][1000] {
			fmt.Fprintf(&t, " %.3f", vcpuPer1k(res, d))
		}
		fmt.Fprintf(&t, ";")
	}
	fmt.Fprintf(&t, "\n")
	wp := rows["waypoint"]
	var wpRSS []int
	for _, res := range fixed["waypoint"][1000] {
		wpRSS = append(wpRSS, res.rss)
	}
	met := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	for _, rate := range proxiesRates {
		var n, bytes []float64
		for _, res := range fixed["waypoint"][rate] {
			reqs := res.qps * d.Seconds()
			n, bytes = append(n, float64(res.allocs)/reqs), append(bytes, float64(res.allocBytes)/reqs)
		}
		if len(n) > 0 {
			fmt.Fprintf(&t, "waypoint heap allocation per request at %.0f req/s: %.0f B in %.1f allocations (medians over rounds; the Go runtime's count)\n",
				rate, medianOf(bytes), medianOf(n))
			if rate == 1000 {
				b.ReportMetric(medianOf(bytes), "waypoint-B-per-req")
				b.ReportMetric(medianOf(n), "waypoint-allocs-per-req")
			}
		}
	}
	fmt.Fprintf(&t, "\naims (issue 17)\n")
	fmt.Fprintf(&t, "  waypoint vCPU per 1k req/s at 1k <= 0.10: %.3f, %s\n", wp.vcpu1k, met(wp.vcpu1k <= 0.10))
	rss := float64(medianOf(wpRSS)) / 1024
	fmt.Fprintf(&t, "  waypoint RSS at 1k req/s <= 30 MiB: %.1f MiB, %s\n", rss, met(rss <= 30))
	fmt.Fprintf(&t, "  added p50 < 250µs: %.0fµs, %s; added p99 < 1ms: %.0fµs, %s\n", us(added[50]), met(added[50] < 250*time.Microsecond),
		us(added[99]), met(added[99] < time.Millisecond))
	if rp, ok := rows["reverseproxy"]; ok {
		fmt.Fprintf(&t, "  clearly ahead of httputil.ReverseProxy (>= 1.2x req/s per core and <= 1/1.2 its vCPU at 1k): %.2fx, %.2fx, %s\n",
			wp.rpsCore/rp.rpsCore, rp.vcpu1k/wp.vcpu1k, met(wp.rpsCore >= 1.2*rp.rpsCore && rp.vcpu1k >= 1.2*wp.vcpu1k))
	}
	if hp, ok := rows["haproxy"]; ok {
		fmt.Fprintf(&t, "  stretch, req/s per core at HAProxy's: %.2fx HAProxy's, %s\n", wp.rpsCore/hp.rpsCore, met(wp.rpsCore >= hp.rpsCore))
	}
	return t.String()
}
