package waypoint_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ambitmesh/ambit/internal/hbone"
	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/waypoint/config"
)

// dialTunnel is tunnel for use off the test goroutine: an HBONE CONNECT
// to target through the waypoint, as a source ztunnel opens it.
func (e *env) dialTunnel(ctx context.Context, id identity.Identity, target netip.AddrPort) (net.Conn, error) {
	cert, err := e.ca.Issue(id, time.Hour)
	if err != nil {
		return nil, err
	}
	cc, err := hbone.Dial(ctx, netip.AddrPortFrom(e.ip(50), 15008), hbone.ClientConfig{
		Certificate: cert, Verifier: &identity.Verifier{Roots: e.ca.Roots()}, Expected: waypointID,
	})
	if err != nil {
		return nil, err
	}
	c, err := cc.Connect(ctx, target, http.Header{hbone.HeaderForwarded: {hbone.Forwarded(e.ip(1))}})
	if err != nil {
		cc.Close()
		return nil, err
	}
	return &closeBoth{Conn: c, cc: cc}, nil
}

type closeBoth struct {
	net.Conn
	cc *hbone.ClientConn
}

func (c *closeBoth) Close() error {
	err := c.Conn.Close()
	c.cc.Close()
	return err
}

// grpcServer is the pods' gRPC service: UnaryCall echoes the payload
// with the pod's address in a header and a trailer (an "fail:<code>"
// payload fails with that code while fails > 0); FullDuplexCall echoes
// each message as it comes. conns counts the TCP connections it
// accepted; hold, when set, makes UnaryCall wait for it.
type grpcServer struct {
	testgrpc.UnimplementedTestServiceServer
	addr  string
	conns atomic.Int64
	calls atomic.Int64
	fails atomic.Int64
	hold  chan struct{}
	seen  chan struct{}
}

func (s *grpcServer) UnaryCall(ctx context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	s.calls.Add(1)
	if s.seen != nil {
		s.seen <- struct{}{}
	}
	if s.hold != nil {
		select {
		case <-s.hold:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	body := string(req.GetPayload().GetBody())
	var code codes.Code
	if _, err := fmt.Sscanf(body, "fail:%d", &code); err == nil && s.fails.Add(-1) >= 0 {
		return nil, status.Error(code, "failing as asked")
	}
	grpc.SetHeader(ctx, metadata.Pairs("x-pod", s.addr))
	grpc.SetTrailer(ctx, metadata.Pairs("x-pod-trailer", s.addr))
	return &testgrpc.SimpleResponse{Payload: &testgrpc.Payload{Body: []byte(s.addr + " " + body)}}, nil
}

func (s *grpcServer) FullDuplexCall(stream testgrpc.TestService_FullDuplexCallServer) error {
	for {
		in, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			stream.SetTrailer(metadata.Pairs("x-end", "done"))
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: &testgrpc.Payload{Body: append([]byte("echo "), in.GetPayload().GetBody()...)}}); err != nil {
			return err
		}
	}
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func startGRPC(t testing.TB, addr netip.AddrPort, s *grpcServer) {
	t.Helper()
	s.addr = addr.String()
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, s)
	go srv.Serve(countingListener{Listener: ln, n: &s.conns})
	t.Cleanup(srv.Stop)
}

// grpcClient is a gRPC client whose connections are HBONE tunnels to
// the service VIP through the waypoint.
func (e *env) grpcClient(t testing.TB, port uint16) testgrpc.TestServiceClient {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+host+fmt.Sprintf(":%d", port),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return e.dialTunnel(ctx, clientID, e.vip(port))
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testgrpc.NewTestServiceClient(cc)
}

// grpcConfig adds port 7070 for gRPC, its HTTP cluster HTTP/2 as istiod
// makes it for appProtocol grpc, the pods' service on 7070.
func grpcConfig(edit func(p *svcPort)) func(ip func(byte) netip.Addr) *waypointConfig {
	return func(ip func(byte) netip.Addr) *waypointConfig {
		w := basicConfig(ip)
		p := svcPort{port: 7070, http: true, target: 7070, upstream: "h2"}
		if edit != nil {
			edit(&p)
		}
		w.ports = append(w.ports, p)
		return w
	}
}

// recorder keeps the waypoint's request log records.
type recorder struct {
	mu      sync.Mutex
	records []map[string]string
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	if rec.Message != "request" {
		return nil
	}
	m := map[string]string{}
	rec.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	r.mu.Lock()
	r.records = append(r.records, m)
	r.mu.Unlock()
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

func (r *recorder) last() map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.records) == 0 {
		return nil
	}
	return r.records[len(r.records)-1]
}

// TestGRPC: gRPC through the waypoint on its real path (HBONE in, h2c
// inside the tunnel, HTTP/2 to the pod through connect_originate):
// unary calls with headers and trailers, bidirectional streaming with
// each message answered before the next is sent, and a gRPC error
// status passed on and recorded.
func TestGRPC(t *testing.T) {
	rec := &recorder{}
	var gs [2]*grpcServer
	e := newEnvWith(t, host, [2]uint16{80, 90}, [2]uint16{8080, 9090}, func(e *env) {
		e.cfg = grpcConfig(nil)(e.ip)
		e.cfg.backends = append(e.cfg.backends, netip.AddrPortFrom(e.ip(12), 8080))
		e.log = slog.New(rec)
		for i, h := range []byte{11, 12} {
			gs[i] = &grpcServer{}
			startGRPC(t, netip.AddrPortFrom(e.ip(h), 7070), gs[i])
		}
	})
	client := e.grpcClient(t, 7070)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var hdr, trl metadata.MD
	resp, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte("hello")}}, grpc.Header(&hdr), grpc.Trailer(&trl))
	if err != nil {
		t.Fatalf("unary call: %v", err)
	}
	pod := strings.Fields(string(resp.GetPayload().GetBody()))[0]
	if got := string(resp.GetPayload().GetBody()); got != pod+" hello" {
		t.Errorf("unary answer: got %q, want %q", got, pod+" hello")
	}
	if got := hdr.Get("x-pod"); len(got) != 1 || got[0] != pod {
		t.Errorf("response header x-pod: got %v, want [%s]", got, pod)
	}
	if got := trl.Get("x-pod-trailer"); len(got) != 1 || got[0] != pod {
		t.Errorf("response trailer x-pod-trailer: got %v, want [%s]", got, pod)
	}
	if got := rec.last(); got["grpc_status"] != "0" || got["status"] != "200" {
		t.Errorf("request record: got grpc_status %q status %q, want 0 and 200", got["grpc_status"], got["status"])
	}

	stream, err := client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatalf("full duplex call: %v", err)
	}
	for i := range 5 {
		msg := fmt.Sprintf("message %d", i)
		if err := stream.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: []byte(msg)}}); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		// The answer comes while the request stream is still open.
		out, err := stream.Recv()
		if err != nil {
			t.Fatalf("receive %d: %v", i, err)
		}
		if got, want := string(out.GetPayload().GetBody()), "echo "+msg; got != want {
			t.Errorf("stream answer %d: got %q, want %q", i, got, want)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("end of stream: got %v, want EOF", err)
	}
	if got := stream.Trailer().Get("x-end"); len(got) != 1 || got[0] != "done" {
		t.Errorf("stream trailer: got %v, want [done]", got)
	}

	gs[0].fails.Store(1)
	gs[1].fails.Store(1)
	_, err = client.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte(fmt.Sprintf("fail:%d", codes.NotFound))}})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("failing call: got %v, want NotFound", err)
	}
	if got := rec.last(); got["grpc_status"] != "5" || got["status"] != "200" {
		t.Errorf("request record of the failing call: got grpc_status %q status %q, want 5 and 200", got["grpc_status"], got["status"])
	}

	// Istio's metrics count the HTTP/2 calls as gRPC, by gRPC status,
	// with the response bytes of the stream (not of the connection).
	mfs := scrape(t, e.wp)
	ok := find(t, mfs, "istio_requests_total", map[string]string{"request_protocol": "grpc", "grpc_response_status": "0", "response_code": "200"})
	if got := ok.GetCounter().GetValue(); got != 2 {
		t.Errorf("istio_requests_total of grpc status 0: got %v, want 2 (the unary call and the stream)", got)
	}
	notFound := find(t, mfs, "istio_requests_total", map[string]string{"request_protocol": "grpc", "grpc_response_status": "5"})
	if got := notFound.GetCounter().GetValue(); got != 1 {
		t.Errorf("istio_requests_total of grpc status 5: got %v, want 1", got)
	}
	sent := find(t, mfs, "istio_response_bytes", map[string]string{"request_protocol": "grpc", "grpc_response_status": "0"}).GetHistogram()
	if sent.GetSampleCount() != 2 || sent.GetSampleSum() <= 0 {
		t.Errorf("istio_response_bytes of grpc status 0: got %d samples summing to %v, want 2 with bytes", sent.GetSampleCount(), sent.GetSampleSum())
	}
}

// TestGRPCMultiplexed: concurrent calls to an HTTP/2 cluster share one
// upstream connection (streams multiplexed), where HTTP/1.1 would open
// one per request in flight.
func TestGRPCMultiplexed(t *testing.T) {
	const n = 16
	gsrv := &grpcServer{hold: make(chan struct{}), seen: make(chan struct{}, n)}
	e := newEnvWith(t, host, [2]uint16{80, 90}, [2]uint16{8080, 9090}, func(e *env) {
		e.cfg = grpcConfig(nil)(e.ip)
		startGRPC(t, netip.AddrPortFrom(e.ip(11), 7070), gsrv)
	})
	client := e.grpcClient(t, 7070)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte(fmt.Sprint(i))}})
			errs <- err
		}()
	}
	for range n {
		select {
		case <-gsrv.seen: // all n in flight at once
		case <-ctx.Done():
			t.Fatal("calls did not all arrive")
		}
	}
	close(gsrv.hold)
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("call: %v", err)
		}
	}
	if got := gsrv.conns.Load(); got != 1 {
		t.Errorf("upstream connections for %d concurrent calls: got %d, want 1", n, got)
	}
}

// h2cClient speaks cleartext HTTP/2 with prior knowledge through a
// tunnel to port.
func (e *env) h2cClient(port uint16) *http.Client {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{
		Protocols: &protos,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return e.dialTunnel(ctx, clientID, e.vip(port))
		},
	}}
}

// TestH2COnSniffedPort: a port without a declared protocol (istiod's
// sniffing chains) takes an h2c client to the HTTP chain: the route
// applies, the answer comes back over HTTP/2; the cluster without
// protocol options speaks HTTP/1.1 upstream, one with
// use_downstream_protocol HTTP/2.
func TestH2COnSniffedPort(t *testing.T) {
	for _, tc := range []struct {
		upstream, wantProto string
	}{{"", "HTTP/1.1"}, {"downstream", "HTTP/2.0"}} {
		t.Run("upstream="+tc.upstream, func(t *testing.T) {
			e := newEnv(t, func(ip func(byte) netip.Addr) *waypointConfig {
				w := basicConfig(ip)
				w.ports[0].http, w.ports[0].sniff, w.ports[0].upstream = false, true, tc.upstream
				return w
			})
			hc := e.h2cClient(80)
			defer hc.CloseIdleConnections()
			for i := range 3 {
				req, _ := http.NewRequest(http.MethodPost, "http://"+host+"/h2?i="+fmt.Sprint(i), strings.NewReader("payload"))
				resp, err := hc.Do(req)
				if err != nil {
					t.Fatalf("h2c request: %v", err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
					t.Fatalf("answer: got %s %d, want HTTP/2 200", resp.Proto, resp.StatusCode)
				}
				if want := fmt.Sprintf("POST %s /h2?i=%d payload", host, i); !strings.HasSuffix(string(b), want) {
					t.Errorf("body: got %q, want suffix %q", b, want)
				}
				if got := resp.Header.Get("X-Proto"); got != tc.wantProto {
					t.Errorf("upstream protocol: got %s, want %s", got, tc.wantProto)
				}
				// The waypoint's router (not the TCP chain) forwarded it.
				if got := resp.Header.Get("X-Got-X-Forwarded-Proto"); got != "http" {
					t.Errorf("x-forwarded-proto at the pod: got %q, want the router's http", got)
				}
			}
		})
	}
}

// TestGRPCLocalReply: a local reply to a gRPC request (here no healthy
// upstream) is gRPC's: status UNAVAILABLE, as Envoy maps a 503.
func TestGRPCLocalReply(t *testing.T) {
	e := newEnv(t, grpcConfig(nil)) // nothing serves 7070
	client := e.grpcClient(t, 7070)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("call to a dead service: got %v, want Unavailable", err)
	}
}

// TestGoldenGRPCRoute runs istiod's golden GRPCRoute waypoint
// (testdata/istiod/grpcroute.json: Service shop/catalog on 7070 with
// appProtocol grpc, its clusters HTTP/2; a route by method and header to
// catalog-v2, a regex method route, an 80/20 split), addresses moved to
// loopback: gRPC calls reach the pods the routes name.
func TestGoldenGRPCRoute(t *testing.T) {
	const svc = "catalog.shop.svc.cluster.local"
	raw, err := os.ReadFile("testdata/istiod/grpcroute.json")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvWith(t, svc, [2]uint16{7070, 9090}, [2]uint16{7071, 9090}, func(e *env) {
		moved := strings.NewReplacer(`"10.96.0.50"`, `"`+e.ip(20).String()+`"`, "10.244.1.20:", e.ip(11).String()+":", "10.244.2.21:", e.ip(12).String()+":").Replace(string(raw))
		e.res = func() *config.Resources {
			r, err := config.ParseStatic([]byte(moved))
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
		for _, h := range []byte{11, 12} {
			addr := netip.AddrPortFrom(e.ip(h), 7070)
			ln, err := net.Listen("tcp", addr.String())
			if err != nil {
				t.Fatal(err)
			}
			// Any method: the pod's address and the method it got.
			srv := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
				var in testgrpc.SimpleRequest
				if err := stream.RecvMsg(&in); err != nil {
					return err
				}
				m, _ := grpc.MethodFromServerStream(stream)
				return stream.SendMsg(&testgrpc.SimpleResponse{Payload: &testgrpc.Payload{Body: []byte(addr.String() + " " + m)}})
			}))
			go srv.Serve(ln)
			t.Cleanup(srv.Stop)
		}
	})
	cc, err := grpc.NewClient("passthrough:///"+svc+":7070",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return e.dialTunnel(ctx, clientID, e.vip(7070))
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v2 := netip.AddrPortFrom(e.ip(12), 7070).String()
	call := func(method string, md ...string) string {
		t.Helper()
		var out testgrpc.SimpleResponse
		if err := cc.Invoke(metadata.AppendToOutgoingContext(ctx, md...), method, &testgrpc.SimpleRequest{}, &out); err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		return string(out.GetPayload().GetBody())
	}
	if got, want := call("/shop.Catalog/Get", "x-canary", "true"), v2+" /shop.Catalog/Get"; got != want {
		t.Errorf("canary Get: got %q, want %q", got, want)
	}
	if got, want := call("/shop.Catalog/ListItems"), v2+" /shop.Catalog/ListItems"; got != want {
		t.Errorf("List by regex: got %q, want %q", got, want)
	}
	if got := call("/shop.Catalog/Get"); !strings.HasSuffix(got, " /shop.Catalog/Get") {
		t.Errorf("split Get: got %q, want a catalog pod", got)
	}
}

// TestGRPCRBAC: an AuthorizationPolicy DENY on one gRPC method applies to
// HTTP/2 streams as to HTTP/1.1 requests; the denied call gets gRPC's
// PERMISSION_DENIED (Envoy's 403 local reply in gRPC form), the other
// method on the same connection goes through.
func TestGRPCRBAC(t *testing.T) {
	e := newEnvWith(t, host, [2]uint16{80, 90}, [2]uint16{8080, 9090}, func(e *env) {
		e.cfg = grpcConfig(func(p *svcPort) {
			deny := &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &pathMatcher{Rule: &pathMatcherPath{Path: exact("/grpc.testing.TestService/UnaryCall")}}}}
			p.httpFilters = []*hcmFilter{rbacFilter("rbac-deny", rbacv3.RBAC_DENY, map[string]*rbacv3.Policy{"ns[shop]-policy[deny-unary]-rule[0]": {
				Permissions: []*rbacv3.Permission{deny}, Principals: []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Any{Any: true}}}}})}
		})(e.ip)
		startGRPC(t, netip.AddrPortFrom(e.ip(11), 7070), &grpcServer{})
	})
	client := e.grpcClient(t, 7070)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("denied method: got %v, want PermissionDenied", err)
	}
	stream, err := client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	if out, err := stream.Recv(); err != nil || string(out.GetPayload().GetBody()) != "echo x" {
		t.Fatalf("allowed method: got %v, %v", out, err)
	}
	stream.CloseSend()
}

// TestGRPCTimeoutHeader: with max_grpc_timeout set (istiod sets it on
// waypoint routes), a call's grpc-timeout is its route timeout, capped
// by max_grpc_timeout: a call that the pod holds past the cap is ended
// by the waypoint (504 as gRPC: UNAVAILABLE "upstream request
// timeout") long before the client's own deadline.
func TestGRPCTimeoutHeader(t *testing.T) {
	gsrv := &grpcServer{hold: make(chan struct{})}
	defer close(gsrv.hold)
	e := newEnvWith(t, host, [2]uint16{80, 90}, [2]uint16{8080, 9090}, func(e *env) {
		e.cfg = grpcConfig(func(p *svcPort) {
			r := prefixRoute("/", clusterName("http", 7070, host))
			//lint:ignore SA1019 istiod sets it on waypoint routes, Envoy honours it
			r.GetRoute().MaxGrpcTimeout = durationpb.New(200 * time.Millisecond)
			p.routes = []*route.Route{r}
		})(e.ip)
		startGRPC(t, netip.AddrPortFrom(e.ip(11), 7070), gsrv)
	})
	client := e.grpcClient(t, 7070)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{})
	if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != "upstream request timeout" {
		t.Fatalf("held call: got %v, want UNAVAILABLE upstream request timeout from the waypoint", err)
	}
}
