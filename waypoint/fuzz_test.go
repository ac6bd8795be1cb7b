package waypoint

// Fuzz targets of the waypoint's inbound path and route matching, on
// istiod's golden config (testdata/istiod). Seeds in testdata/fuzz run
// as ordinary tests; `go test -fuzz FuzzInboundHTTP ./waypoint` (and
// FuzzRouteMatch) explores further.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/waypoint/config"
)

// The golden configs' service VIP and HTTP port.
var goldenVIP = netip.MustParseAddrPort("10.96.0.30:9080")

// refuseDialer fails every dial at once: fuzzed requests that reach the
// router get Envoy's 503 UF, and no traffic leaves the process.
type refuseDialer struct{}

func (refuseDialer) DialContext(context.Context, string, string) (net.Conn, error) {
	return nil, errors.New("no upstream in a fuzz test")
}

// fuzzProxy is a waypoint running a golden config.
func fuzzProxy(tb testing.TB, file string) (*Proxy, *config.Snapshot) {
	tb.Helper()
	ca, err := identity.NewCA(identity.DefaultTrustDomain)
	if err != nil {
		tb.Fatal(err)
	}
	id := identity.Identity{TrustDomain: identity.DefaultTrustDomain, Namespace: "shop", ServiceAccount: "waypoint"}
	p, err := New(Config{Identity: id, Certificates: ca, Roots: ca.Roots(), Dialer: refuseDialer{}})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	r, err := config.LoadFile(file)
	if err != nil {
		tb.Fatal(err)
	}
	snap, err := r.Build()
	if err != nil {
		tb.Fatal(err)
	}
	p.Update(snap)
	return p, snap
}

// bytesConn is a downstream connection that delivers in and then EOF,
// and keeps what is written to it. It is safe for concurrent use: the
// HTTP/2 server writes frames from goroutines of its own, which can
// still be writing when serveInternal has returned; once closed, reads
// and writes fail as on a closed socket.
type bytesConn struct {
	mu     sync.Mutex
	r      *bytes.Reader
	out    bytes.Buffer
	closed bool
}

func (c *bytesConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.r.Read(p)
}

func (c *bytesConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.out.Write(p)
}

func (c *bytesConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

// answer closes the connection, as the client does when the server is
// done with it, and returns all that was written to it before.
func (c *bytesConn) answer() []byte {
	c.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.out.Bytes())
}

func (c *bytesConn) LocalAddr() net.Addr { return net.TCPAddrFromAddrPort(goldenVIP) }
func (c *bytesConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(10, 244, 0, 9), Port: 40000}
}
func (c *bytesConn) SetDeadline(time.Time) error      { return nil }
func (c *bytesConn) SetReadDeadline(time.Time) error  { return nil }
func (c *bytesConn) SetWriteDeadline(time.Time) error { return nil }

// inboundInfo is what a connection from a mesh client carries into
// main_internal (connect_terminate's filter state).
func inboundInfo() *connInfo {
	return &connInfo{local: goldenVIP, remote: netip.MustParseAddrPort("10.244.0.9:40000"), fs: map[string]string{
		keyOriginalDstLocal:        goldenVIP.String(),
		"io.istio.peer_principal":  "spiffe://cluster.local/ns/shop/sa/client",
		"io.istio.local_principal": "spiffe://cluster.local/ns/shop/sa/waypoint",
	}}
}

// FuzzInboundHTTP feeds bytes to main_internal as a client's connection
// to the service: the http_inspector, the chain matcher, the HTTP
// connection manager's checks and parsing, the filters and the router
// (whose upstream dials fail), or the tcp_proxy. Whatever the input, the
// waypoint must not panic or hang, and what it answers is HTTP/1.1.
func FuzzInboundHTTP(f *testing.F) {
	for _, s := range []string{
		"GET /reviews/1 HTTP/1.1\r\nHost: reviews.shop.svc.cluster.local:9080\r\n\r\n",
		"POST /r HTTP/1.1\r\nHost: reviews\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
		"GET /a/../b//c%2F HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"\x16\x03\x01\x00\x05hello",
		"GET http://other:9080/abs?q=1 HTTP/1.0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	p, snap := fuzzProxy(f, "testdata/istiod/service.json")
	l := snap.Listeners["main_internal"]
	if l == nil {
		f.Fatal("golden config without main_internal")
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var log bytes.Buffer
		p.Stats().SetAccessLog(&log)
		defer p.Stats().SetAccessLog(nil)
		c := &bytesConn{r: bytes.NewReader(in)}
		p.serveInternal(context.Background(), snap, l, c, inboundInfo())
		out := c.answer()
		var codes []int
		for _, line := range bytes.Split(bytes.TrimSpace(log.Bytes()), []byte("\n")) {
			if len(line) == 0 {
				continue
			}
			var entry struct {
				ResponseCode int `json:"response_code"`
			}
			if err := json.Unmarshal(line, &entry); err != nil {
				t.Fatalf("access log line of %q: %q: %v", in, line, err)
			}
			codes = append(codes, entry.ResponseCode)
		}
		if len(out) == 0 {
			return
		}
		if bytes.HasPrefix(in, []byte(http2Preface)) {
			// Served as HTTP/2 (codec AUTO): the answer opens with the
			// server's SETTINGS frame (type 4 on stream 0).
			if len(out) < 9 || out[3] != 0x4 || !bytes.Equal(out[5:9], []byte{0, 0, 0, 0}) {
				t.Fatalf("answer to %q: got %q, want HTTP/2 frames opening with SETTINGS", in, out)
			}
			return
		}
		if !bytes.HasPrefix(out, []byte("HTTP/1.1 ")) {
			t.Fatalf("answer to %q: got %q, want an HTTP/1.1 response", in, out)
		}
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(out)), nil)
		if err != nil {
			t.Fatalf("answer to %q: %q does not parse: %v", in, out, err)
		}
		// Every answer is logged with its code.
		if len(codes) == 0 || codes[0] != resp.StatusCode {
			t.Fatalf("answer to %q: status %d, access log codes %v, want the first logged with it", in, resp.StatusCode, codes)
		}
	})
}

// FuzzRouteMatch matches fuzzed requests against the golden HTTPRoute
// matches (paths exact, prefix and regex, headers, query parameters,
// methods): no panic, the same answer twice, and path normalization is
// idempotent (a normalized path normalizes to itself).
func FuzzRouteMatch(f *testing.F) {
	f.Add("GET", "/reviews/1?x=1", "reviews.shop.svc.cluster.local:9080", "x-version", "v2")
	f.Add("POST", "/ratings//a/./b/../c", "reviews", "cookie", "user=jason")
	f.Add("DELETE", "/v1%2F..%2fadmin?q=%zz", "*", ":method", "PUT")
	f.Add("GET", "", "", "", "")
	_, snap := fuzzProxy(f, "testdata/istiod/httproute-matches.json")
	var hcm *config.HCM
	for _, l := range snap.Listeners {
		for _, ch := range l.Chains {
			if ch.HCM != nil && strings.HasPrefix(ch.Name, "inbound-vip|9080|http") {
				hcm = ch.HCM
			}
		}
	}
	if hcm == nil {
		f.Fatal("golden config without the 9080 HTTP chain")
	}
	f.Fuzz(func(t *testing.T, method, uri, host, name, value string) {
		if n, err := normalizePath(hcm, uri); err == nil {
			if again, err := normalizePath(hcm, n); err != nil || again != n {
				t.Fatalf("normalize %q: got %q, then %q (%v), want it stable", uri, n, again, err)
			}
			uri = n
		}
		req := &http.Request{Method: method, RequestURI: uri, Host: host, Header: http.Header{}}
		if name != "" {
			req.Header[http.CanonicalHeaderKey(name)] = []string{value}
		}
		ci := inboundInfo()
		first := selectRoute(hcm, &view{req: req, ci: ci, fs: ci.fs}, req)
		if again := selectRoute(hcm, &view{req: req, ci: ci, fs: ci.fs}, req); again != first {
			t.Fatalf("route for %s %s: %v, then %v", method, uri, first, again)
		}
	})
}
