package waypoint_test

import (
	"bufio"
	"context"
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
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	previoushosts "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The pods' port 8181 behind service port 81 runs handlers the test
// chooses per pod: pod A is .11, pod B .12.
const resPort = 81

func resConfig(edit func(p *svcPort)) func(ip func(byte) netip.Addr) *waypointConfig {
	return func(ip func(byte) netip.Addr) *waypointConfig {
		w := basicConfig(ip)
		w.backends = []netip.AddrPort{netip.AddrPortFrom(ip(11), 8080), netip.AddrPortFrom(ip(12), 8080)}
		p := svcPort{port: resPort, http: true, target: 8181}
		if edit != nil {
			edit(&p)
		}
		w.ports = append(w.ports, p)
		return w
	}
}

// podHandlers serves a and b on the two pods' port 8181.
func podHandlers(t testing.TB, e *env, a, b http.HandlerFunc) {
	t.Helper()
	for i, h := range []http.HandlerFunc{a, b} {
		srv := &http.Server{Handler: h}
		ln, err := net.Listen("tcp", netip.AddrPortFrom(e.ip(byte(11+i)), 8181).String())
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
}

func okPod(name string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %d", name, len(b))
	}
}

func statusPod(code int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(code)
	}
}

// resetPod closes the connection without an answer.
func resetPod(w http.ResponseWriter, r *http.Request) {
	c, _, err := http.NewResponseController(w).Hijack()
	if err == nil {
		c.Close()
	}
}

func (e *env) resClient(t testing.TB) *client {
	c := e.tunnel(t, clientID, e.vip(resPort))
	return &client{c: c, br: bufio.NewReader(c)}
}

func resRoute(edit func(r *route.Route)) []*route.Route {
	r := prefixRoute("/", clusterName("http", resPort, host))
	if edit != nil {
		edit(r)
	}
	return []*route.Route{r}
}

func previousHosts() []*route.RetryPolicy_RetryHostPredicate {
	return []*route.RetryPolicy_RetryHostPredicate{{Name: "envoy.retry_host_predicates.previous_hosts",
		ConfigType: &route.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: mustAny(&previoushosts.PreviousHostsPredicate{})}}}
}

// TestRetryOn: each retry_on condition retries what it names (to the
// other pod, previous_hosts) and not what it does not; pod A fails, pod
// B answers, and round robin sends one of each pair of requests to A
// first.
func TestRetryOn(t *testing.T) {
	for _, tc := range []struct {
		name    string
		retryOn string
		codes   []uint32
		a       http.HandlerFunc
		// want is the status of the request that went to A first.
		want int
	}{
		{"5xx retries 500", "5xx", nil, statusPod(500), 200},
		{"5xx retries a reset", "5xx", nil, resetPod, 200},
		{"gateway-error retries 502", "gateway-error", nil, statusPod(502), 200},
		{"gateway-error leaves 500", "gateway-error", nil, statusPod(500), 500},
		{"reset retries a reset", "reset", nil, resetPod, 200},
		{"reset leaves 503", "reset", nil, statusPod(503), 503},
		{"connect-failure leaves a reset", "connect-failure", nil, resetPod, 503},
		{"retriable-status-codes retries 418", "retriable-status-codes", []uint32{418}, statusPod(418), 200},
		{"retriable-status-codes leaves 503", "retriable-status-codes", []uint32{418}, statusPod(503), 503},
		{"retriable-4xx retries 409", "retriable-4xx", nil, statusPod(409), 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, resConfig(func(p *svcPort) {
				p.routes = resRoute(func(r *route.Route) {
					r.GetRoute().RetryPolicy = &route.RetryPolicy{RetryOn: tc.retryOn, NumRetries: wrapU32(1),
						RetriableStatusCodes: tc.codes, RetryHostPredicate: previousHosts()}
				})
			}))
			podHandlers(t, e, tc.a, okPod("B"))
			got := map[int]int{}
			for range 2 {
				resp := e.resClient(t).do(t, get(t, "/"))
				got[resp.StatusCode]++
			}
			want := map[int]int{200: 1}
			want[tc.want]++
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("statuses of two requests: got %v, want %v", got, want)
			}
		})
	}
}

// TestRetryLargeBody: a body larger than 64 KiB is kept for a retry up
// to the route's buffer limit (pod A reads it whole, then fails; the
// retry sends it whole to B); past the limit it is streamed and the
// failure goes back unretried, as Envoy does.
func TestRetryLargeBody(t *testing.T) {
	const size = 300 << 10
	for _, tc := range []struct {
		limit uint32
		want  map[int]int
	}{{0, map[int]int{200: 2}}, {64 << 10, map[int]int{200: 1, 503: 1}}} {
		t.Run(fmt.Sprintf("limit=%d", tc.limit), func(t *testing.T) {
			e := newEnv(t, resConfig(func(p *svcPort) {
				p.routes = resRoute(func(r *route.Route) {
					r.GetRoute().RetryPolicy = &route.RetryPolicy{RetryOn: "retriable-status-codes", RetriableStatusCodes: []uint32{503},
						NumRetries: wrapU32(2), RetryHostPredicate: previousHosts()}
					if tc.limit > 0 {
						r.RequestBodyBufferLimit = wrapperspb.UInt64(uint64(tc.limit))
					}
				})
			}))
			podHandlers(t, e, statusPod(503), okPod("B"))
			got := map[int]int{}
			c := e.resClient(t)
			for _, chunked := range []bool{false, true} {
				var payload io.Reader = strings.NewReader(strings.Repeat("x", size))
				if chunked {
					payload = io.MultiReader(payload) // no length: chunked
				}
				req, _ := http.NewRequest(http.MethodPost, "http://"+host+"/big", payload)
				resp := c.do(t, req)
				got[resp.StatusCode]++
				if b := body(resp); resp.StatusCode == 200 && b != fmt.Sprintf("B %d", size) {
					t.Errorf("answer: got %q, want B and the whole body", b)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("statuses: got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestPerTryTimeout: a try that gets no answer within per_try_timeout
// is retried on the other pod.
func TestPerTryTimeout(t *testing.T) {
	e := newEnv(t, resConfig(func(p *svcPort) {
		p.routes = resRoute(func(r *route.Route) {
			r.GetRoute().RetryPolicy = &route.RetryPolicy{RetryOn: "5xx", NumRetries: wrapU32(1),
				PerTryTimeout: durationpb.New(time.Second), RetryHostPredicate: previousHosts()}
		})
	}))
	hang := func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }
	podHandlers(t, e, hang, okPod("B"))
	for range 2 {
		resp := e.resClient(t).do(t, get(t, "/"))
		expectStatus(t, resp, 200)
		if got := body(resp); got != "B 0" {
			t.Errorf("answer: got %q, want B's", got)
		}
	}
}

// TestGRPCRetryUnavailable: Istio's default retry policy
// (connect-failure,refused-stream,unavailable,cancelled,
// retriable-status-codes) retries a gRPC call answered UNAVAILABLE.
func TestGRPCRetryUnavailable(t *testing.T) {
	var gs [2]*grpcServer
	e := newEnvWith(t, host, [2]uint16{80, 90}, [2]uint16{8080, 9090}, func(e *env) {
		e.cfg = grpcConfig(func(p *svcPort) {
			r := prefixRoute("/", clusterName("http", 7070, host))
			r.GetRoute().RetryPolicy = &route.RetryPolicy{
				RetryOn:              "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
				NumRetries:           wrapU32(2),
				RetriableStatusCodes: []uint32{503},
				RetryHostPredicate:   previousHosts(),
			}
			p.routes = []*route.Route{r}
		})(e.ip)
		e.cfg.backends = append(e.cfg.backends, netip.AddrPortFrom(e.ip(12), 8080))
		for i, h := range []byte{11, 12} {
			gs[i] = &grpcServer{}
			startGRPC(t, netip.AddrPortFrom(e.ip(h), 7070), gs[i])
		}
	})
	gs[0].fails.Store(1)
	client := e.grpcClient(t, 7070)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range 2 {
		_, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte(fmt.Sprintf("fail:%d", codes.Unavailable))}})
		if err != nil {
			t.Fatalf("call: got %v, want it retried past UNAVAILABLE", err)
		}
	}
	if got := gs[0].calls.Load() + gs[1].calls.Load(); got != 3 {
		t.Errorf("calls at the pods: got %d, want 3 (one retried)", got)
	}
}

// holdPod answers /hold only once released (signalling its arrival on
// arrived), anything else at once with its name.
type holdPod struct {
	name    string
	arrived chan string
	release chan struct{}
}

func (h *holdPod) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/hold" {
		h.arrived <- h.name
		select {
		case <-h.release:
		case <-r.Context().Done():
			return
		}
	}
	fmt.Fprint(w, h.name)
}

// TestLeastRequest: with LEAST_REQUEST, while one pod holds a request
// the others go to the idle pod (round robin would alternate).
func TestLeastRequest(t *testing.T) {
	e := newEnv(t, resConfig(func(p *svcPort) {
		p.editCluster = func(c *cluster.Cluster) {
			c.LbPolicy = cluster.Cluster_LEAST_REQUEST
			// Many choices: two pods are never drawn alike by chance.
			c.LbConfig = &cluster.Cluster_LeastRequestLbConfig_{LeastRequestLbConfig: &cluster.Cluster_LeastRequestLbConfig{ChoiceCount: wrapperspb.UInt32(40)}}
		}
	}))
	arrived, release := make(chan string, 2), make(chan struct{})
	podHandlers(t, e, (&holdPod{"A", arrived, release}).ServeHTTP, (&holdPod{"B", arrived, release}).ServeHTTP)
	held := e.resClient(t)
	get(t, "/hold").Write(held.c)
	busy := <-arrived
	c := e.resClient(t)
	for range 6 {
		resp := c.do(t, get(t, "/"))
		if got := body(resp); got == busy {
			t.Fatalf("request went to %s, which holds one; want the idle pod", got)
		}
	}
	close(release)
	if resp, err := http.ReadResponse(held.br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("held request: %v", err)
	}
}

// TestOutlierDetection: a pod answering 503 is ejected after
// consecutive_5xx failures; the requests after go to the healthy pod.
func TestOutlierDetection(t *testing.T) {
	e := newEnv(t, resConfig(func(p *svcPort) {
		p.editCluster = func(c *cluster.Cluster) {
			c.OutlierDetection = &cluster.OutlierDetection{
				Consecutive_5Xx:    wrapperspb.UInt32(2),
				Interval:           durationpb.New(time.Second),
				BaseEjectionTime:   durationpb.New(time.Minute),
				MaxEjectionPercent: wrapperspb.UInt32(50),
			}
		}
	}))
	podHandlers(t, e, statusPod(503), okPod("B"))
	c := e.resClient(t)
	got := map[int]int{}
	for range 10 {
		got[c.do(t, get(t, "/")).StatusCode]++
	}
	// Round robin alternates until A's second 503 ejects it.
	if want := map[int]int{200: 8, 503: 2}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("statuses: got %v, want %v", got, want)
	}
}

// TestCircuitBreaker: with max_connections 1 and max_pending_requests 1
// (a DestinationRule's connectionPool), while pod A's connection carries
// a request and pod B's another (an endpoint without any connection
// gets one past the limit, as Envoy's pool does), a third request waits
// for a connection and a fourth overflows: 503 at once, flag UO; the
// others are answered.
func TestCircuitBreaker(t *testing.T) {
	e := newEnv(t, resConfig(func(p *svcPort) {
		p.editCluster = func(c *cluster.Cluster) {
			c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
				MaxConnections: wrapperspb.UInt32(1), MaxPendingRequests: wrapperspb.UInt32(1),
			}}}
		}
	}))
	arrived, release := make(chan string, 4), make(chan struct{})
	podHandlers(t, e, (&holdPod{"A", arrived, release}).ServeHTTP, (&holdPod{"B", arrived, release}).ServeHTTP)
	var held []*client
	for range 2 {
		c := e.resClient(t)
		get(t, "/hold").Write(c.c)
		<-arrived
		held = append(held, c)
	}
	// Two more: one waits for a connection, the other overflows.
	type result struct {
		status int
		body   string
	}
	results := make(chan result, 2)
	var wg sync.WaitGroup
	for range 2 {
		c := e.resClient(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			get(t, "/hold").Write(c.c)
			resp, err := http.ReadResponse(c.br, nil)
			if err != nil {
				results <- result{status: -1, body: err.Error()}
				return
			}
			b, _ := io.ReadAll(resp.Body)
			results <- result{resp.StatusCode, string(b)}
		}()
	}
	over := <-results // the overflow is answered at once
	if over.status != 503 || !strings.Contains(over.body, "overflow") {
		t.Fatalf("overflowing request: got %d %q, want 503 overflow", over.status, over.body)
	}
	close(release)
	for i, c := range held {
		if resp, err := http.ReadResponse(c.br, nil); err != nil || resp.StatusCode != 200 {
			t.Fatalf("held request %d: %v", i, err)
		}
	}
	wg.Wait()
	if r := <-results; r.status != 200 {
		t.Errorf("waiting request: got %d %q, want 200", r.status, r.body)
	}
}

// TestStreamIdleTimeout: a request whose stream moves nothing for the
// stream idle timeout (the connection manager's, or the route's
// idle_timeout) is answered 408.
func TestStreamIdleTimeout(t *testing.T) {
	for _, onRoute := range []bool{false, true} {
		t.Run(fmt.Sprintf("route=%v", onRoute), func(t *testing.T) {
			e := newEnv(t, resConfig(func(p *svcPort) {
				if onRoute {
					p.routes = resRoute(func(r *route.Route) { r.GetRoute().IdleTimeout = durationpb.New(200 * time.Millisecond) })
				} else {
					p.editHCM = func(h *hcmv3.HttpConnectionManager) { h.StreamIdleTimeout = durationpb.New(200 * time.Millisecond) }
				}
			}))
			arrived, release := make(chan string, 4), make(chan struct{})
			defer close(release)
			podHandlers(t, e, (&holdPod{"A", arrived, release}).ServeHTTP, (&holdPod{"B", arrived, release}).ServeHTTP)
			resp := e.resClient(t).do(t, get(t, "/hold"))
			expectStatus(t, resp, http.StatusRequestTimeout)
			if got := body(resp); got != "stream timeout" {
				t.Errorf("body: got %q, want stream timeout", got)
			}
		})
	}
}

// TestClientGoneEndsUpstream: a client that goes away while its
// request waits for the answer ends the request's upstream exchange (the
// pod sees its connection close), with and without a route timeout
// (the stream idle timeout's default is always there); the next client
// is served as before.
func TestClientGoneEndsUpstream(t *testing.T) {
	for _, routeTimeout := range []bool{false, true} {
		t.Run(fmt.Sprintf("route timeout=%v", routeTimeout), func(t *testing.T) {
			e := newEnv(t, resConfig(func(p *svcPort) {
				if routeTimeout {
					p.routes = resRoute(func(r *route.Route) { r.GetRoute().Timeout = durationpb.New(time.Hour) })
				}
			}))
			arrived, gone := make(chan struct{}, 2), make(chan struct{}, 2)
			hold := func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/hold" {
					arrived <- struct{}{}
					<-r.Context().Done() // the upstream connection ended
					gone <- struct{}{}
					return
				}
				fmt.Fprint(w, "ok")
			}
			podHandlers(t, e, hold, hold)
			c := e.resClient(t)
			if err := get(t, "/hold").Write(c.c); err != nil {
				t.Fatal(err)
			}
			<-arrived
			c.c.Close()
			select {
			case <-gone:
			case <-time.After(10 * time.Second):
				t.Fatal("the pod's request still open 10 s after its client went away")
			}
			expectStatus(t, e.resClient(t).do(t, get(t, "/next")), http.StatusOK)
		})
	}
}

// TestMirrorLargeBody: a body past 64 KiB (within the buffer limit) is
// mirrored whole.
func TestMirrorLargeBody(t *testing.T) {
	const mirrorCluster = "inbound-vip|80|http|mirror.shop.svc.cluster.local"
	const size = 200 << 10
	e := newEnv(t, func(ip func(byte) netip.Addr) *waypointConfig {
		w := basicConfig(ip)
		w.extraClusters = map[string][]netip.AddrPort{mirrorCluster: {netip.AddrPortFrom(ip(12), 8181)}}
		r := prefixRoute("/", clusterName("http", 80, host))
		r.GetRoute().RequestMirrorPolicies = []*route.RouteAction_RequestMirrorPolicy{{Cluster: mirrorCluster}}
		w.ports[0].routes = []*route.Route{r}
		return w
	})
	seen := make(chan int, 4)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		seen <- len(b)
	})}
	ln, err := net.Listen("tcp", netip.AddrPortFrom(e.ip(12), 8181).String())
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	c := e.client(t, clientID)
	req, _ := http.NewRequest(http.MethodPost, "http://"+host+"/m", io.MultiReader(strings.NewReader(strings.Repeat("y", size))))
	resp := c.do(t, req)
	expectStatus(t, resp, 200)
	select {
	case got := <-seen:
		if got != size {
			t.Errorf("mirrored body: got %d bytes, want %d", got, size)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no mirrored request")
	}
}
