package waypoint_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// gatedDialer holds dials to one address until opened, telling each
// one's arrival; other addresses (HBONE) are dialled at once.
type gatedDialer struct {
	addr    string
	arrived chan struct{}
	open    chan struct{}
}

func (d *gatedDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if addr == d.addr {
		d.arrived <- struct{}{}
		select {
		case <-d.open:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, addr)
}

// TestCircuitBreakerPendingHTTP2: on an HTTP/2 cluster with
// max_pending_requests 1, a request waiting for the connection to be
// established is pending; a second one overflows at once with 503 UO
// (without the limit it would wait for the same connection). The first
// is answered once the connection is up.
func TestCircuitBreakerPendingHTTP2(t *testing.T) {
	var pod netip.AddrPort
	dialer := &gatedDialer{arrived: make(chan struct{}, 2), open: make(chan struct{})}
	e := newEnvWith(t, host, [2]uint16{80, 90}, [2]uint16{8080, 9090}, func(e *env) {
		pod = netip.AddrPortFrom(e.ip(11), 8181)
		dialer.addr = pod.String()
		e.dialer = dialer
		e.cfg = resConfig(func(p *svcPort) {
			p.upstream = "h2"
			p.editCluster = func(c *cluster.Cluster) {
				c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
					MaxPendingRequests: wrapperspb.UInt32(1),
				}}}
				// The pod's socket itself (a STATIC endpoint), so that
				// the test holds the connection's establishment.
				c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_STATIC}
				c.EdsClusterConfig, c.TransportSocket = nil, nil
				c.LoadAssignment = &endpoint.ClusterLoadAssignment{ClusterName: c.Name, Endpoints: []*endpoint.LocalityLbEndpoints{{
					LbEndpoints: []*endpoint.LbEndpoint{{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
						Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
							Address: pod.Addr().String(), PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(pod.Port())}}}}}}}},
				}}}
			}
		})(e.ip)
	})
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: okPod("A")}
	ln, err := net.Listen("tcp", pod.String())
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	first := e.resClient(t)
	get(t, "/").Write(first.c)
	<-dialer.arrived // the first request waits for its connection
	second := e.resClient(t)
	done := make(chan *http.Response, 1)
	go func() {
		get(t, "/").Write(second.c)
		resp, err := http.ReadResponse(second.br, nil)
		if err != nil {
			done <- &http.Response{StatusCode: -1, Status: err.Error(), Body: http.NoBody}
			return
		}
		done <- resp
	}()
	var over *http.Response
	select {
	case over = <-done:
	case <-time.After(30 * time.Second): // turns a hang into a failure
		close(dialer.open)
		t.Fatal("second request not refused: it waits for the connection too")
	}
	b, _ := io.ReadAll(over.Body)
	if over.StatusCode != 503 || !strings.Contains(string(b), "overflow") {
		t.Fatalf("second request: got %d %q, want 503 overflow", over.StatusCode, b)
	}
	close(dialer.open)
	resp, err := http.ReadResponse(first.br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("first request: %v %v", resp, err)
	}
}
