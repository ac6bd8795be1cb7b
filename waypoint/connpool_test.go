package waypoint_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"golang.org/x/net/websocket"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ambitmesh/ambit/internal/testutil"
)

// The tests of the upstream connection pool (connpool.go): Envoy's
// circuit breakers and connection options on HTTP/1.1 and HTTP/2
// clusters, against real pods on loopback that speak both.

// podConns serves handlers on the pods' port 8181 over HTTP/1.1 and
// h2c; conns reports the distinct upstream connections each pod saw.
func podConns(t testing.TB, e *env, hs ...http.Handler) (conns func(pod int) int) {
	t.Helper()
	var mu sync.Mutex
	seen := map[int]map[string]bool{}
	for i, h := range hs {
		var protos http.Protocols
		protos.SetHTTP1(true)
		protos.SetUnencryptedHTTP2(true)
		srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			if seen[i] == nil {
				seen[i] = map[string]bool{}
			}
			seen[i][r.RemoteAddr] = true
			mu.Unlock()
			h.ServeHTTP(w, r)
		})}
		ln, err := net.Listen("tcp", netip.AddrPortFrom(e.ip(byte(11+i)), 8181).String())
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	return func(pod int) int {
		mu.Lock()
		defer mu.Unlock()
		return len(seen[pod])
	}
}

// editProtocolOptions changes the cluster's HttpProtocolOptions (the
// test istiod's, or new ones).
func editProtocolOptions(t testing.TB, c *cluster.Cluster, edit func(po *upstreamhttp.HttpProtocolOptions)) {
	po := &upstreamhttp.HttpProtocolOptions{}
	key := "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	if a := c.TypedExtensionProtocolOptions[key]; a != nil {
		if err := a.UnmarshalTo(po); err != nil {
			t.Fatal(err)
		}
	}
	if po.UpstreamProtocolOptions == nil {
		po.UpstreamProtocolOptions = &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &core.Http1ProtocolOptions{}}}}
	}
	edit(po)
	a, err := anypb.New(po)
	if err != nil {
		t.Fatal(err)
	}
	if c.TypedExtensionProtocolOptions == nil {
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{}
	}
	c.TypedExtensionProtocolOptions[key] = a
}

// awaitStat waits for a cluster statistic to reach want (a timer's
// effect: an idle or duration timeout), failing after a generous bound.
func awaitStat(t testing.TB, stats func() map[string]uint64, name string, want uint64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := stats()[resCluster+name]
		if got >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: got %d, want %d", name, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// awaitStatEq waits for a cluster statistic to settle at want.
func awaitStatEq(t testing.TB, stats func() map[string]uint64, name string, want uint64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := stats()[resCluster+name]
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: got %d, want %d", name, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestHTTP2MaxConnections: on an HTTP/2 cluster, max_connections counts
// connections, and a connection carries at most max_concurrent_streams
// requests: with both 1 (and max_pending_requests 1), while each pod's
// one connection carries a held request, a third request waits for a
// stream and a fourth overflows (503, UO; upstream_cx_overflow). Before,
// HTTP/2 requests multiplexed past max_connections unchecked.
func TestHTTP2MaxConnections(t *testing.T) {
	e := newEnv(t, resConfig(func(p *svcPort) {
		p.upstream = "h2"
		p.editCluster = func(c *cluster.Cluster) {
			c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
				MaxConnections: wrapperspb.UInt32(1), MaxPendingRequests: wrapperspb.UInt32(1),
			}}}
			editProtocolOptions(t, c, func(po *upstreamhttp.HttpProtocolOptions) {
				po.GetExplicitHttpConfig().GetHttp2ProtocolOptions().MaxConcurrentStreams = wrapperspb.UInt32(1)
			})
		}
	}))
	_, stats := e.adminStats(t)
	arrived, release := make(chan string, 4), make(chan struct{})
	protos := make(chan string, 4)
	hold := func(name string) http.Handler {
		hp := &holdPod{name, arrived, release}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			protos <- r.Proto
			hp.ServeHTTP(w, r)
		})
	}
	conns := podConns(t, e, hold("A"), hold("B"))
	var held []*client
	for range 2 {
		c := e.resClient(t)
		get(t, "/hold").Write(c.c)
		<-arrived
		held = append(held, c)
	}
	results := make(chan int, 2)
	for range 2 {
		c := e.resClient(t)
		go func() {
			get(t, "/hold").Write(c.c)
			resp, err := http.ReadResponse(c.br, nil)
			if err != nil {
				results <- -1
				return
			}
			io.Copy(io.Discard, resp.Body)
			results <- resp.StatusCode
		}()
	}
	if got := <-results; got != 503 {
		t.Fatalf("overflow: got %d, want 503", got)
	}
	wantStats(t, stats(), map[string]uint64{
		"upstream_rq_pending_overflow": 1, "upstream_cx_overflow": 2, "upstream_cx_total": 2, "upstream_cx_active": 2,
		"upstream_rq_pending_active": 1, "circuit_breakers.default.cx_open": 1,
	})
	close(release)
	for i, c := range held {
		if resp, err := http.ReadResponse(c.br, nil); err != nil || resp.StatusCode != 200 {
			t.Fatalf("held request %d: %v", i, err)
		}
	}
	if got := <-results; got != 200 {
		t.Errorf("waiting request: got %d, want 200", got)
	}
	for range 3 {
		if p := <-protos; p != "HTTP/2.0" {
			t.Errorf("pod got %s, want HTTP/2.0", p)
		}
	}
	// The waiting request took the stream that freed: no third
	// connection.
	if got := conns(0) + conns(1); got != 2 {
		t.Errorf("upstream connections: got %d, want 2", got)
	}
}

// TestMaxRequestsPerConnection: with max_requests_per_connection 2
// (Istio's maxRequestsPerConnection), six requests round robin over two
// pods take four connections on either HTTP version; the two that
// reached the limit closed (upstream_cx_max_requests).
func TestMaxRequestsPerConnection(t *testing.T) {
	for _, proto := range []string{"", "h2"} {
		t.Run("upstream "+cmpOr(proto, "h1"), func(t *testing.T) {
			e := newEnv(t, resConfig(func(p *svcPort) {
				p.upstream = proto
				p.editCluster = func(c *cluster.Cluster) {
					editProtocolOptions(t, c, func(po *upstreamhttp.HttpProtocolOptions) {
						po.CommonHttpProtocolOptions = &core.HttpProtocolOptions{MaxRequestsPerConnection: wrapperspb.UInt32(2)}
					})
				}
			}))
			_, stats := e.adminStats(t)
			conns := podConns(t, e, okPod("A"), okPod("B"))
			c := e.resClient(t)
			for i := range 6 {
				if resp := c.do(t, get(t, "/")); resp.StatusCode != 200 {
					t.Fatalf("request %d: got %d, want 200", i, resp.StatusCode)
				}
			}
			if a, b := conns(0), conns(1); a != 2 || b != 2 {
				t.Errorf("connections per pod: got %d and %d, want 2 and 2", a, b)
			}
			wantStats(t, stats(), map[string]uint64{"upstream_cx_total": 4, "upstream_cx_max_requests": 2, "upstream_cx_active": 2})
		})
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// TestUpstreamIdleTimeout: a connection without requests for the
// cluster's idle_timeout (Istio's http.idleTimeout) is closed
// (upstream_cx_idle_timeout); the next request opens another.
func TestUpstreamIdleTimeout(t *testing.T) {
	for _, proto := range []string{"", "h2"} {
		t.Run("upstream "+cmpOr(proto, "h1"), func(t *testing.T) {
			e := newEnv(t, resConfig(func(p *svcPort) {
				p.upstream = proto
				p.editCluster = func(c *cluster.Cluster) {
					editProtocolOptions(t, c, func(po *upstreamhttp.HttpProtocolOptions) {
						po.CommonHttpProtocolOptions = &core.HttpProtocolOptions{IdleTimeout: durationpb.New(100 * time.Millisecond)}
					})
				}
			}))
			_, stats := e.adminStats(t)
			conns := podConns(t, e, okPod("A"), okPod("B"))
			c := e.resClient(t)
			c.do(t, get(t, "/"))
			awaitStat(t, stats, "upstream_cx_idle_timeout", 1)
			wantStats(t, stats(), map[string]uint64{"upstream_cx_active": 0})
			c.do(t, get(t, "/")) // pod B
			c.do(t, get(t, "/")) // pod A again: a new connection
			if got := conns(0); got != 2 {
				t.Errorf("pod A's connections: got %d, want 2", got)
			}
		})
	}
}

// TestMaxConnectionDuration: a connection reaching
// max_connection_duration (Istio's tcp.maxConnectionDuration) takes no
// new request but finishes the one it carries, then closes.
func TestMaxConnectionDuration(t *testing.T) {
	for _, proto := range []string{"", "h2"} {
		t.Run("upstream "+cmpOr(proto, "h1"), func(t *testing.T) {
			e := newEnv(t, resConfig(func(p *svcPort) {
				p.upstream = proto
				p.editCluster = func(c *cluster.Cluster) {
					editProtocolOptions(t, c, func(po *upstreamhttp.HttpProtocolOptions) {
						po.CommonHttpProtocolOptions = &core.HttpProtocolOptions{MaxConnectionDuration: durationpb.New(200 * time.Millisecond)}
					})
				}
			}))
			_, stats := e.adminStats(t)
			arrived, release := make(chan string, 4), make(chan struct{})
			hp := &holdPod{"A", arrived, release}
			conns := podConns(t, e, hp, hp)
			first := e.resClient(t)
			get(t, "/hold").Write(first.c)
			<-arrived
			awaitStat(t, stats, "upstream_cx_max_duration_reached", 1)
			wantStats(t, stats(), map[string]uint64{"upstream_cx_active": 1}) // draining, still open
			c := e.resClient(t)
			c.do(t, get(t, "/")) // pod B
			c.do(t, get(t, "/")) // pod A: not on the draining connection
			close(release)
			resp, err := http.ReadResponse(first.br, nil)
			if err != nil || resp.StatusCode != 200 || body(resp) != "A" {
				t.Fatalf("held request: %v %v, want 200 from A", resp, err)
			}
			if got := conns(0); got != 2 {
				t.Errorf("pod A's connections: got %d, want 2", got)
			}
		})
	}
}

// TestTCPMaxConnections: a tcp_proxy connection holds one of its
// cluster's max_connections while open (Istio's tcp.maxConnections on a
// TCP port); with max_pending_requests 0 the next one overflows: closed
// at once (flag UO, upstream_cx_overflow); once the first closes,
// another gets through.
func TestTCPMaxConnections(t *testing.T) {
	e := newEnv(t, func(ip func(byte) netip.Addr) *waypointConfig {
		w := basicConfig(ip)
		w.ports = append(w.ports, svcPort{port: 93, target: 9090, editTCPCluster: func(c *cluster.Cluster) {
			c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
				MaxConnections: wrapperspb.UInt32(1), MaxPendingRequests: wrapperspb.UInt32(0),
			}}}
		}})
		return w
	})
	_, stats := e.adminStats(t)
	tcpCluster := "cluster." + clusterName("tcp", 93, host) + "."
	stat := func(name string) uint64 { return stats()[tcpCluster+name] }
	echo := func(c net.Conn) (string, error) {
		fmt.Fprintf(c, "hello\n")
		return bufio.NewReader(c).ReadString('\n')
	}
	first := e.tunnel(t, clientID, e.vip(93))
	if _, err := echo(first); err != nil {
		t.Fatalf("first connection: %v", err)
	}
	second := e.tunnel(t, clientID, e.vip(93))
	if line, err := echo(second); err == nil {
		t.Fatalf("second connection: echoed %q, want it closed (overflow)", line)
	}
	if got := stat("upstream_cx_overflow"); got != 1 {
		t.Errorf("upstream_cx_overflow: got %d, want 1", got)
	}
	if got := stat("upstream_cx_active"); got != 1 {
		t.Errorf("upstream_cx_active: got %d, want 1", got)
	}
	first.Close()
	deadline := time.Now().Add(20 * time.Second)
	for stat("upstream_cx_active") != 0 {
		if time.Now().After(deadline) {
			t.Fatal("first connection's slot not released")
		}
		time.Sleep(5 * time.Millisecond)
	}
	third := e.tunnel(t, clientID, e.vip(93))
	if _, err := echo(third); err != nil {
		t.Fatalf("third connection: %v", err)
	}
}

// TestWebSocketMaxConnections: an upgraded connection is one of the
// cluster's max_connections while open. With 1 (and no pending
// requests), WebSockets to pod A and pod B are open (an endpoint
// without a connection gets one), and a third handshake, to pod A,
// overflows with 503.
func TestWebSocketMaxConnections(t *testing.T) {
	e := newEnv(t, resConfig(func(p *svcPort) {
		p.editCluster = func(c *cluster.Cluster) {
			c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
				MaxConnections: wrapperspb.UInt32(1), MaxPendingRequests: wrapperspb.UInt32(0),
			}}}
		}
	}))
	wsEchoPods(t, e)
	_, stats := e.adminStats(t)
	cfg, err := websocket.NewConfig("ws://"+host+"/ws", "http://"+host)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		ws, err := websocket.NewClient(cfg, e.tunnel(t, clientID, e.vip(resPort)))
		if err != nil {
			t.Fatalf("websocket %d: %v", i, err)
		}
		defer ws.Close()
	}
	_, err = websocket.NewClient(cfg, e.tunnel(t, clientID, e.vip(resPort)))
	if !errors.Is(err, websocket.ErrBadStatus) {
		t.Fatalf("third websocket: got %v, want a refused handshake", err)
	}
	wantStats(t, stats(), map[string]uint64{"upstream_rq_pending_overflow": 1, "upstream_cx_active": 2})
}

// TestIdleConnectionMakesRoom: with max_connections 2, an idle
// connection to pod A does not hold back a second request to pod B
// while B's connection is busy: it is closed to make room, and the
// request gets a second connection to B at once instead of waiting.
func TestIdleConnectionMakesRoom(t *testing.T) {
	e := newEnv(t, resConfig(func(p *svcPort) {
		p.editCluster = func(c *cluster.Cluster) {
			c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
				MaxConnections: wrapperspb.UInt32(2),
			}}}
		}
	}))
	_, stats := e.adminStats(t)
	arrived, release := make(chan string, 4), make(chan struct{})
	defer close(release)
	podHandlers(t, e, (&holdPod{"A", arrived, release}).ServeHTTP, (&holdPod{"B", arrived, release}).ServeHTTP)
	c := e.resClient(t)
	if got := body(c.do(t, get(t, "/"))); got != "A" { // A's connection, now idle
		t.Fatalf("first request: got %q, want A", got)
	}
	held := e.resClient(t)
	get(t, "/hold").Write(held.c) // pod B's connection, held
	<-arrived
	if got := body(c.do(t, get(t, "/"))); got != "A" { // (round robin: A)
		t.Fatalf("third request: got %q, want A", got)
	}
	held2 := e.resClient(t)
	get(t, "/hold").Write(held2.c) // to B, busy: A's idle connection is closed for a second one
	select {
	case got := <-arrived:
		if got != "B" {
			t.Fatalf("fourth request reached %s, want B", got)
		}
	case <-time.After(30 * time.Second): // turns a hang into a failure
		t.Fatal("fourth request waits: the idle connection did not make room")
	}
	wantStats(t, stats(), map[string]uint64{"upstream_cx_total": 3, "upstream_rq_pending_active": 0})
}

// TestUpstreamClosesKeptAlive: pods that answer one request per
// connection and then close it without saying so (as a server with a
// short keep-alive timeout does). A GET sent on such a connection
// before the close was seen goes once more on a new one; a connection
// closed while idle leaves the pool (the idle watcher sees the close)
// before a POST, which is not sent twice, would go on it.
func TestUpstreamClosesKeptAlive(t *testing.T) {
	e := newEnv(t, resConfig(nil))
	_, stats := e.adminStats(t)
	for _, h := range []byte{11, 12} {
		ln, err := net.Listen("tcp", netip.AddrPortFrom(e.ip(h), 8181).String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		testutil.ServeListener(ln, func(c net.Conn) {
			req, err := http.ReadRequest(bufio.NewReader(c))
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		})
	}
	c := e.resClient(t)
	for range 6 {
		expectStatus(t, c.do(t, get(t, "/")), http.StatusOK)
	}
	for range 4 {
		awaitStatEq(t, stats, "upstream_cx_active", 0)
		req, err := http.NewRequest(http.MethodPost, "http://"+host+"/", strings.NewReader("body"))
		if err != nil {
			t.Fatal(err)
		}
		expectStatus(t, c.do(t, req), http.StatusOK)
	}
}
