package waypoint_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/internal/hbone"
	"github.com/ambitmesh/ambit/internal/identity"
)

// BenchmarkHTTP: keep-alive GETs through the waypoint (HBONE in, HTTP
// connection manager, HBONE out to the pod's ztunnel), side by side with
// the same GETs sent straight to the pod's ztunnel over HBONE; it
// reports the waypoint's time per request as a ratio of the direct one
// (x-direct).
func BenchmarkHTTP(b *testing.B) {
	e := newEnv(b, basicConfig)
	via := e.client(b, clientID)
	dc, err := e.direct(b).Connect(context.Background(), e.pod(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer dc.Close()
	direct := &client{c: dc, br: bufio.NewReader(dc)}
	req := get(b, "/bench")
	compareDirect(b, func(c *client) {
		if resp := c.do(b, req); resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}, via, direct)
}

// BenchmarkHTTP2: sequential h2c requests (prior knowledge) on one
// HTTP/2 connection through the waypoint to an HTTP/2 cluster (streams
// multiplexed on one upstream connection), side by side with h2c sent
// straight to the pod over HBONE; x-direct as in BenchmarkHTTP.
func BenchmarkHTTP2(b *testing.B) {
	e := newEnv(b, func(ip func(byte) netip.Addr) *waypointConfig {
		w := basicConfig(ip)
		w.ports[0].upstream = "h2"
		return w
	})
	via := e.h2cClient(80)
	defer via.CloseIdleConnections()
	cc := e.direct(b)
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	direct := &http.Client{Transport: &http.Transport{Protocols: &protos, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return cc.Connect(ctx, e.pod(), nil)
	}}}
	defer direct.CloseIdleConnections()
	compareDirect(b, func(c *http.Client) {
		resp, err := c.Get("http://" + host + "/bench")
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
			b.Fatalf("answer %s %d", resp.Proto, resp.StatusCode)
		}
	}, via, direct)
}

// pod is the address of the pod behind the waypoint's HTTP port.
func (e *env) pod() netip.AddrPort { return netip.AddrPortFrom(e.ip(11), 8080) }

// direct dials the pod's ztunnel over HBONE as the client, bypassing the
// waypoint: the baseline of the waypoint benchmarks.
func (e *env) direct(tb testing.TB) *hbone.ClientConn {
	tb.Helper()
	cert, err := e.ca.Issue(clientID, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	cc, err := hbone.Dial(context.Background(), netip.AddrPortFrom(e.ip(11), 15008), hbone.ClientConfig{
		Certificate: cert, Verifier: &identity.Verifier{Roots: e.ca.Roots()},
		Expected: identity.Identity{TrustDomain: identity.DefaultTrustDomain, Namespace: "shop", ServiceAccount: "server"},
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cc.Close() })
	return cc
}

// compareDirect times one request (do) through the waypoint (via) and
// one straight to the pod (direct), alternately, b.N times, and reports
// the waypoint's time over the direct one as x-direct.
func compareDirect[C any](b *testing.B, do func(C), via, direct C) {
	b.Helper()
	timed := func(c C, n int) time.Duration {
		start := time.Now()
		for range n {
			do(c)
		}
		return time.Since(start)
	}
	timed(via, 10)
	timed(direct, 10)
	b.ResetTimer()
	var dWay, dDirect time.Duration
	for b.Loop() {
		dWay += timed(via, 1)
		dDirect += timed(direct, 1)
	}
	b.StopTimer()
	if dDirect > 0 {
		b.ReportMetric(float64(dWay)/float64(dDirect), "x-direct")
	}
}
