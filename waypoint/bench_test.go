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
	cert, err := e.ca.Issue(clientID, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	pod := netip.AddrPortFrom(e.ip(11), 8080)
	cc, err := hbone.Dial(context.Background(), netip.AddrPortFrom(e.ip(11), 15008), hbone.ClientConfig{
		Certificate: cert, Verifier: &identity.Verifier{Roots: e.ca.Roots()},
		Expected: identity.Identity{TrustDomain: identity.DefaultTrustDomain, Namespace: "shop", ServiceAccount: "server"},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	dc, err := cc.Connect(context.Background(), pod, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer dc.Close()
	direct := &client{c: dc, br: bufio.NewReader(dc)}
	req := get(b, "/bench")
	run := func(c *client, n int) time.Duration {
		start := time.Now()
		for range n {
			resp := c.do(b, req)
			if resp.StatusCode != http.StatusOK {
				b.Fatalf("status %d", resp.StatusCode)
			}
		}
		return time.Since(start)
	}
	run(via, 10)
	run(direct, 10)
	b.ResetTimer()
	var dWay, dDirect time.Duration
	for b.Loop() {
		dWay += run(via, 1)
		dDirect += run(direct, 1)
	}
	b.StopTimer()
	if dDirect > 0 {
		b.ReportMetric(float64(dWay)/float64(dDirect), "x-direct")
	}
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
	cert, err := e.ca.Issue(clientID, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	pod := netip.AddrPortFrom(e.ip(11), 8080)
	cc, err := hbone.Dial(context.Background(), netip.AddrPortFrom(e.ip(11), 15008), hbone.ClientConfig{
		Certificate: cert, Verifier: &identity.Verifier{Roots: e.ca.Roots()},
		Expected: identity.Identity{TrustDomain: identity.DefaultTrustDomain, Namespace: "shop", ServiceAccount: "server"},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	direct := &http.Client{Transport: &http.Transport{Protocols: &protos, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return cc.Connect(ctx, pod, nil)
	}}}
	defer direct.CloseIdleConnections()
	run := func(c *http.Client, n int) time.Duration {
		start := time.Now()
		for range n {
			resp, err := c.Get("http://" + host + "/bench")
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
				b.Fatalf("answer %s %d", resp.Proto, resp.StatusCode)
			}
		}
		return time.Since(start)
	}
	run(via, 10)
	run(direct, 10)
	b.ResetTimer()
	var dWay, dDirect time.Duration
	for b.Loop() {
		dWay += run(via, 1)
		dDirect += run(direct, 1)
	}
	b.StopTimer()
	if dDirect > 0 {
		b.ReportMetric(float64(dWay)/float64(dDirect), "x-direct")
	}
}
