package waypoints

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http/httptrace"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	istioclient "istio.io/client-go/pkg/clientset/versioned"

	"github.com/ambitmesh/ambit/e2e/internal/labmesh"
	"github.com/ambitmesh/ambit/internal/echo"
	"github.com/ambitmesh/ambit/internal/enrolment"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/istiod/gateway"
)

const labelUseWaypoint = "istio.io/use-waypoint"

// suite is what the subtests of TestWaypoints share.
type suite struct {
	l     *lab.Lab
	mesh  *labmesh.Mesh
	gw    gatewayclient.Interface
	istio istioclient.Interface
	pods  map[string]*corev1.Pod // by namespace/name
	// wp is the waypoint (in the namespace of the policy or route)
	// whose config policy and route wait on.
	wp   string
	svcs map[string]*corev1.Service
}

func (s *suite) ip(ns, name string) string { return s.pods[ns+"/"+name].Status.PodIP }

// url is http://<cluster IP of Service ns/name>:80<path>.
func (s *suite) url(ns, name, path string) string {
	return "http://" + net.JoinHostPort(s.svcs[ns+"/"+name].Spec.ClusterIP, "80") + path
}

// waypoint creates a waypoint Gateway (listener mesh on 15008, HBONE)
// with the istio.io/waypoint-for label (none when empty) and annotations,
// and waits until its pods run with a configuration.
func (s *suite) waypoint(t *testing.T, ctx context.Context, ns, name, waypointFor string, annotations map[string]string) {
	t.Helper()
	gw := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: annotations, Labels: map[string]string{}},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: gateway.WaypointClass,
			Listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: gateway.ListenerProtocolHBONE}}},
	}
	if waypointFor != "" {
		gw.Labels[gateway.LabelWaypointFor] = waypointFor
	}
	if _, err := s.gw.GatewayV1().Gateways(ns).Create(ctx, gw, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.mesh.WaitWaypoint(ctx, ns, name, 1, "a configuration", func(dump string) bool {
		return strings.Contains(dump, "connect_terminate")
	}); err != nil {
		t.Fatal(err)
	}
}

// newSuite starts the mesh (istiod with the waypoint controller) in l,
// with clients of the Gateway API and Istio's APIs, for waypoint
// "waypoint".
func newSuite(t *testing.T, ctx context.Context, l *lab.Lab) *suite {
	t.Helper()
	m := labmesh.StartMesh(t, ctx, l, labmesh.IstiodOptions{})
	s := &suite{l: l, mesh: m, wp: "waypoint", pods: map[string]*corev1.Pod{}, svcs: map[string]*corev1.Service{}}
	var err error
	if s.gw, err = gatewayclient.NewForConfig(l.RESTConfig); err != nil {
		t.Fatal(err)
	}
	if s.istio, err = istioclient.NewForConfig(l.RESTConfig); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestWaypoints(t *testing.T) {
	l := startLab(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	s := newSuite(t, ctx, l)
	m := s.mesh

	// Namespace shop, in the mesh: a client on node1, echo v1 on node2
	// and v2 on node1 behind Service echo.
	const ns = "shop"
	if err := l.CreateNamespace(ctx, ns, map[string]string{enrolment.LabelDataplaneMode: enrolment.ModeAmbient}); err != nil {
		t.Fatal(err)
	}
	for _, sa := range []string{"client", "echo"} {
		createSA(t, ctx, l, ns, sa, nil)
	}
	run := func(ns, name, node, sa string, labels map[string]string) {
		s.pods[ns+"/"+name] = echoPod(t, ctx, l, ns, name, node, sa, labels)
	}
	run(ns, "client", "node1", "client", map[string]string{"app": "client"})
	run(ns, "v1", "node2", "echo", map[string]string{"app": "echo", "version": "v1"})
	run(ns, "v2", "node1", "echo", map[string]string{"app": "echo", "version": "v2"})
	s.svcs[ns+"/echo"] = echoService(t, ctx, l, ns, "echo", map[string]string{"app": "echo"}, nil)
	for _, p := range []string{"client", "v1", "v2"} {
		if err := m.WaitWorkload(ctx, s.ip(ns, p), true); err != nil {
			t.Fatal(err)
		}
	}

	s.svcs[ns+"/echo-v1"] = echoService(t, ctx, l, ns, "echo-v1", map[string]string{"app": "echo", "version": "v1"}, nil)
	s.svcs[ns+"/echo-v2"] = echoService(t, ctx, l, ns, "echo-v2", map[string]string{"app": "echo", "version": "v2"}, nil)
	clientID := "spiffe://cluster.local/ns/shop/sa/client"
	c := client(t, ctx, l, ns, "client", false)
	// peerOf is the address the echo saw its client at.
	peerOf := func(t *testing.T, r result) string {
		t.Helper()
		host, _, _ := net.SplitHostPort(r.report.Peer)
		return host
	}

	t.Run("namespace waypoint", func(t *testing.T) {
		s.waypoint(t, ctx, ns, "waypoint", "", nil)
		label(t, ctx, l, "namespaces", "", ns, labelUseWaypoint, ptr("waypoint"))
		s.waitBound(t, ctx, ns, "echo", "waypoint")
		wps := s.waypointPods(t, ctx, ns, "waypoint", 1)
		r := get(t, ctx, c, s.url(ns, "echo", "/hello"), nil)
		if r.code != 200 || peerOf(t, r) != wps[0].Status.PodIP {
			t.Errorf("client to Service echo: got %d from %s, want 200 through the waypoint %s", r.code, r.report.Peer, wps[0].Status.PodIP)
		}
		// A service waypoint (waypoint-for service, the default) does not
		// take traffic addressed to a pod: that goes direct, at L4.
		before := s.waypointRequests(t, ctx, wps[0])
		r = get(t, ctx, c, "http://"+net.JoinHostPort(s.ip(ns, "v1"), "8080")+"/direct", nil)
		if got := s.waypointRequests(t, ctx, wps[0]); got != before {
			t.Errorf("waypoint requests around one to a pod: got %d then %d, want no change", before, got)
		}
		if r.code != 200 || peerOf(t, r) != s.ip(ns, "client") {
			t.Errorf("client to pod v1: got %d from %s, want 200 from the client's own address %s (no waypoint)", r.code, r.report.Peer, s.ip(ns, "client"))
		}
	})

	t.Run("L7 authorization at the waypoint", func(t *testing.T) {
		// DENY a path and a method: 403 from the waypoint, while the
		// same client's other requests pass (L4 allows them all).
		s.policy(t, ctx, ns, "deny-admin", "echo", "DENY", `{"to":[{"operation":{"paths":["/admin*"]}}]}`)
		s.policy(t, ctx, ns, "deny-delete", "echo", "DENY", `{"to":[{"operation":{"methods":["DELETE"]}}]}`)
		for _, tc := range []struct {
			method, path string
			want         int
		}{{"GET", "/admin/users", 403}, {"DELETE", "/items/1", 403}, {"GET", "/items/1", 200}, {"POST", "/items", 200}} {
			r, err := do(ctx, c, tc.method, s.url(ns, "echo", tc.path), nil)
			if err != nil || r.code != tc.want {
				t.Errorf("%s %s: got %d %q (%v), want %d", tc.method, tc.path, r.code, r.body, err, tc.want)
			}
			if tc.want == 403 && !strings.Contains(r.body, "RBAC: access denied") {
				t.Errorf("%s %s: body %q, want Envoy's \"RBAC: access denied\"", tc.method, tc.path, r.body)
			}
		}
		s.deletePolicy(t, ctx, ns, "deny-admin")
		s.deletePolicy(t, ctx, ns, "deny-delete")
	})

	t.Run("ALLOW by principal sees the client through the waypoint", func(t *testing.T) {
		s.pods[ns+"/other"] = echoPod(t, ctx, l, ns, "other", "node2", "default", map[string]string{"app": "other"})
		if err := m.WaitWorkload(ctx, s.ip(ns, "other"), true); err != nil {
			t.Fatal(err)
		}
		s.policy(t, ctx, ns, "allow-client", "echo", "ALLOW", `{"from":[{"source":{"principals":["cluster.local/ns/shop/sa/client"]}}]}`)
		if r := get(t, ctx, c, s.url(ns, "echo", "/allowed"), nil); r.code != 200 {
			t.Errorf("client (%s): got %d %q, want 200", clientID, r.code, r.body)
		}
		other := client(t, ctx, l, ns, "other", false)
		if r := get(t, ctx, other, s.url(ns, "echo", "/allowed"), nil); r.code != 403 {
			t.Errorf("other (default account): got %d %q, want 403", r.code, r.body)
		}
		s.deletePolicy(t, ctx, ns, "allow-client")
	})

	t.Run("the destination's ztunnel sees the waypoint's identity", func(t *testing.T) {
		// An L4 policy on the echo pods that admits only the waypoint's
		// identity: through the waypoint passes, the client addressing a
		// pod directly (its own identity) is refused by v1's ztunnel.
		s.policySelector(t, ctx, ns, "only-waypoint", map[string]string{"app": "echo"}, "ALLOW",
			`{"from":[{"source":{"principals":["cluster.local/ns/shop/sa/waypoint"]}}]}`, s.ip(ns, "v1"))
		if r := get(t, ctx, c, s.url(ns, "echo", "/via-waypoint"), nil); r.code != 200 {
			t.Errorf("through the waypoint: got %d %q, want 200", r.code, r.body)
		}
		if r, err := do(ctx, c, "GET", "http://"+net.JoinHostPort(s.ip(ns, "v1"), "8080")+"/direct", nil); err == nil {
			t.Errorf("client direct to v1 under a policy admitting only the waypoint: got %d, want the connection refused", r.code)
		}
		if err := s.istio.SecurityV1().AuthorizationPolicies(ns).Delete(ctx, "only-waypoint", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := m.WaitPolicy(ctx, ns, "only-waypoint", s.ip(ns, "v1"), false); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("HTTPRoute splits 90/10", func(t *testing.T) {
		s.route(t, ctx, ns, "echo-split", "echo", `[{"backendRefs":[{"name":"echo-v1","port":80,"weight":90},{"name":"echo-v2","port":80,"weight":10}]}]`)
		kc := client(t, ctx, l, ns, "client", true)
		const n = 1000
		count := map[string]int{}
		for range n {
			r := get(t, ctx, kc, s.url(ns, "echo", "/split"), nil)
			if r.code != 200 {
				t.Fatalf("split request: got %d %q", r.code, r.body)
			}
			count[r.report.Hostname]++
		}
		// 99.9% two-sided bounds of a binomial(1000, 0.1): 100 ± 3.29 sd.
		sd := math.Sqrt(n * 0.1 * 0.9)
		lo, hi := int(math.Floor(100-3.29*sd)), int(math.Ceil(100+3.29*sd))
		if count["v1"]+count["v2"] != n || count["v2"] < lo || count["v2"] > hi {
			t.Errorf("1000 requests split 90/10: got %v, want v2 in [%d, %d] and nothing else", count, lo, hi)
		}
		s.deleteRoute(t, ctx, ns, "echo-split")
	})

	t.Run("HTTPRoute header match", func(t *testing.T) {
		s.route(t, ctx, ns, "echo-jason", "echo", `[{"matches":[{"headers":[{"name":"end-user","value":"jason"}]}],"backendRefs":[{"name":"echo-v2","port":80}]},{"backendRefs":[{"name":"echo-v1","port":80}]}]`)
		for range 10 {
			if r := get(t, ctx, c, s.url(ns, "echo", "/jason"), map[string]string{"end-user": "jason"}); r.report.Hostname != "v2" {
				t.Errorf("end-user: jason: got %d from %q, want v2", r.code, r.report.Hostname)
			}
			if r := get(t, ctx, c, s.url(ns, "echo", "/jason"), map[string]string{"end-user": "ann"}); r.report.Hostname != "v1" {
				t.Errorf("end-user: ann: got %d from %q, want v1", r.code, r.report.Hostname)
			}
		}
		s.deleteRoute(t, ctx, ns, "echo-jason")
	})

	t.Run("HTTPRoute retries and timeout", func(t *testing.T) {
		s.route(t, ctx, ns, "echo-retry", "echo", `[
			{"matches":[{"path":{"type":"PathPrefix","value":"/slow"}}],"timeouts":{"request":"500ms"},"backendRefs":[{"name":"echo-v1","port":80}]},
			{"retry":{"attempts":4,"codes":[500],"backoff":"10ms"},"backendRefs":[{"name":"echo-v1","port":80}]}]`)
		before := requestCounts(t, ctx, l, ns, "v1")
		if r := get(t, ctx, c, s.url(ns, "echo", "/fail500?status=500"), nil); r.code != 500 {
			t.Errorf("always 500: got %d, want 500 after the retries", r.code)
		}
		if r := get(t, ctx, c, s.url(ns, "echo", "/fail404?status=404"), nil); r.code != 404 {
			t.Errorf("404: got %d, want 404", r.code)
		}
		after := requestCounts(t, ctx, l, ns, "v1")
		if got := after["/fail500"] - before["/fail500"]; got != 5 {
			t.Errorf("an always-500 backend with retry attempts 4 on 500: got %d tries, want 5", got)
		}
		if got := after["/fail404"] - before["/fail404"]; got != 1 {
			t.Errorf("a 404 with retries on 500 only: got %d tries, want 1", got)
		}
		if r := get(t, ctx, c, s.url(ns, "echo", "/slow?delay=5s"), nil); r.code != 504 {
			t.Errorf("a 5s answer under a 500ms timeout: got %d %q, want 504", r.code, r.body)
		}
		s.deleteRoute(t, ctx, ns, "echo-retry")
	})

	t.Run("DENY applied on an open keep-alive connection", func(t *testing.T) {
		kc := client(t, ctx, l, ns, "client", true)
		var conns []string
		trace := func(ctx context.Context) context.Context {
			return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
				conns = append(conns, i.Conn.LocalAddr().String())
			}})
		}
		if r := get(t, trace(ctx), kc, s.url(ns, "echo", "/kept"), nil); r.code != 200 {
			t.Fatalf("before the policy: got %d, want 200", r.code)
		}
		s.policy(t, ctx, ns, "deny-kept", "echo", "DENY", `{"to":[{"operation":{"paths":["/kept"]}}]}`)
		if r := get(t, trace(ctx), kc, s.url(ns, "echo", "/kept"), nil); r.code != 403 {
			t.Errorf("after the policy, same connection: got %d, want 403", r.code)
		}
		if len(conns) != 2 || conns[0] != conns[1] {
			t.Errorf("connections used: got %v, want one, twice", conns)
		}
		s.deletePolicy(t, ctx, ns, "deny-kept")
	})

	t.Run("plain TCP through the waypoint", func(t *testing.T) {
		wps := s.waypointPods(t, ctx, ns, "waypoint", 1)
		dial := podDialer(t, ctx, l, ns, "client")
		conn, err := dial(ctx, "tcp", net.JoinHostPort(s.svcs[ns+"/echo"].Spec.ClusterIP, "9000"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		rep, err := roundTrip(conn, "tcp-through")
		if err != nil {
			t.Fatal(err)
		}
		if host, _, _ := net.SplitHostPort(rep.Peer); rep.Message != "tcp-through" || host != wps[0].Status.PodIP {
			t.Errorf("TCP to Service echo:9000: got %+v, want the message back through the waypoint %s", rep, wps[0].Status.PodIP)
		}
	})

	t.Run("gRPC unary and streaming through the waypoint", func(t *testing.T) {
		// Service echo's port 7070 has appProtocol grpc: the waypoint
		// serves it as HTTP/2 and counts its calls as gRPC.
		wp := s.waypointPods(t, ctx, ns, "waypoint", 1)[0]
		grpcOK := map[string]string{"request_protocol": "grpc", "grpc_response_status": "0"}
		before := s.waypointCounter(t, ctx, wp, "istio_requests_total", grpcOK)
		dial := podDialer(t, ctx, l, ns, "client")
		cc, err := grpc.NewClient("passthrough:///"+net.JoinHostPort(s.svcs[ns+"/echo"].Spec.ClusterIP, "7070"),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return dial(ctx, "tcp", addr) }))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		gc := testgrpc.NewTestServiceClient(cc)
		// viaWaypoint checks an answer's metadata: from an echo pod
		// (hostname in the header and the trailer), whose client was the
		// waypoint.
		viaWaypoint := func(t *testing.T, what string, hdr, trl metadata.MD) string {
			t.Helper()
			host, trlHost := first(hdr, echo.GRPCHostname), first(trl, echo.GRPCHostname)
			if (host != "v1" && host != "v2") || trlHost != host {
				t.Errorf("%s: got hostname %q in the header and %q in the trailer, want v1 or v2 in both", what, host, trlHost)
			}
			if peer, _, _ := net.SplitHostPort(first(hdr, echo.GRPCPeer)); peer != wp.Status.PodIP {
				t.Errorf("%s: echo's client was %q, want the waypoint %s", what, first(hdr, echo.GRPCPeer), wp.Status.PodIP)
			}
			return host
		}
		unary := func(t *testing.T) string {
			t.Helper()
			var hdr, trl metadata.MD
			resp, err := gc.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte("grpc-unary")}}, grpc.Header(&hdr), grpc.Trailer(&trl))
			if err != nil {
				t.Fatalf("UnaryCall: %v", err)
			}
			host := viaWaypoint(t, "UnaryCall", hdr, trl)
			if resp.GetHostname() != host || string(resp.GetPayload().GetBody()) != "grpc-unary" {
				t.Errorf("UnaryCall: got hostname %q, payload %q; want %q (as the header), grpc-unary", resp.GetHostname(), resp.GetPayload().GetBody(), host)
			}
			return host
		}
		stream := func(t *testing.T) string {
			t.Helper()
			st, err := gc.FullDuplexCall(ctx)
			if err != nil {
				t.Fatalf("FullDuplexCall: %v", err)
			}
			// One message at a time, each answered before the next: the
			// waypoint forwards the stream as it flows.
			for _, msg := range []string{"one", "two", "three"} {
				if err := st.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: []byte(msg)}}); err != nil {
					t.Fatalf("FullDuplexCall send %q: %v", msg, err)
				}
				resp, err := st.Recv()
				if err != nil {
					t.Fatalf("FullDuplexCall receive after %q: %v", msg, err)
				}
				if got := string(resp.GetPayload().GetBody()); got != msg {
					t.Errorf("FullDuplexCall: got %q back, want %q", got, msg)
				}
			}
			if err := st.CloseSend(); err != nil {
				t.Fatal(err)
			}
			if _, err := st.Recv(); !errors.Is(err, io.EOF) {
				t.Fatalf("FullDuplexCall end: got %v, want io.EOF (status OK)", err)
			}
			hdr, err := st.Header()
			if err != nil {
				t.Fatal(err)
			}
			return viaWaypoint(t, "FullDuplexCall", hdr, st.Trailer())
		}
		unary(t)
		stream(t)
		// The waypoint counts a call when it has forwarded its trailers,
		// which can be just after the client has them: read until the
		// count moves, then check it moved by the two calls exactly.
		var got int
		if err := lab.PollUntil(ctx, 10*time.Second, func() bool {
			got = s.waypointCounter(t, ctx, wp, "istio_requests_total", grpcOK) - before
			return got >= 2
		}); err != nil || got != 2 {
			t.Errorf("waypoint istio_requests_total{request_protocol=\"grpc\",grpc_response_status=\"0\"}: moved by %d, want 2 (the unary call and the stream)", got)
		}

		// A GRPCRoute sends UnaryCall to v2 and every other method to v1.
		s.grpcRoute(t, ctx, ns, "echo-grpc", "echo", 7070, `[
			{"matches":[{"method":{"service":"grpc.testing.TestService","method":"UnaryCall"}}],"backendRefs":[{"name":"echo-v2","port":7070}]},
			{"backendRefs":[{"name":"echo-v1","port":7070}]}]`)
		for range 5 {
			if host := unary(t); host != "v2" {
				t.Errorf("UnaryCall under the GRPCRoute: answered by %q, want v2", host)
			}
			if host := stream(t); host != "v1" {
				t.Errorf("FullDuplexCall under the GRPCRoute: answered by %q, want v1", host)
			}
		}
		s.deleteGRPCRoute(t, ctx, ns, "echo-grpc")
	})

	// Namespace accts, in the mesh, with no namespace waypoint: pods of
	// service accounts reviews and ratings, and two more workloads.
	const accts = "accts"
	if err := l.CreateNamespace(ctx, accts, map[string]string{enrolment.LabelDataplaneMode: enrolment.ModeAmbient}); err != nil {
		t.Fatal(err)
	}
	for _, sa := range []string{"reviews", "ratings"} {
		createSA(t, ctx, l, accts, sa, nil)
	}
	run(accts, "r1", "node2", "reviews", map[string]string{"app": "reviews"})
	run(accts, "ra1", "node1", "ratings", map[string]string{"app": "ratings"})
	run(accts, "w1", "node2", "default", map[string]string{"app": "w"})
	run(accts, "x1", "node1", "default", map[string]string{"app": "x"})
	for _, app := range []string{"reviews", "ratings", "w", "x"} {
		s.svcs[accts+"/"+app] = echoService(t, ctx, l, accts, app, map[string]string{"app": app}, nil)
	}
	for _, p := range []string{"r1", "ra1", "w1", "x1"} {
		if err := m.WaitWorkload(ctx, s.ip(accts, p), true); err != nil {
			t.Fatal(err)
		}
	}
	// viaWaypoint checks that a request to url answers 200 through a
	// pod of waypoint ns/wp.
	viaWaypoint := func(t *testing.T, url, wns, wp string) {
		t.Helper()
		wps := s.waypointPods(t, ctx, wns, wp, 1)
		r := get(t, ctx, c, url, nil)
		if r.code != 200 || peerOf(t, r) != wps[0].Status.PodIP {
			t.Errorf("%s: got %d from %s, want 200 through waypoint %s/%s at %s", url, r.code, r.report.Peer, wns, wp, wps[0].Status.PodIP)
		}
	}
	direct := func(t *testing.T, url string) {
		t.Helper()
		r := get(t, ctx, c, url, nil)
		if r.code != 200 || peerOf(t, r) != s.ip(ns, "client") {
			t.Errorf("%s: got %d from %s, want 200 from the client's own address (no waypoint)", url, r.code, r.report.Peer)
		}
	}
	podURL := func(ns, pod, path string) string { return "http://" + net.JoinHostPort(s.ip(ns, pod), "8080") + path }

	t.Run("per-service waypoint", func(t *testing.T) {
		s.waypoint(t, ctx, ns, "echo-v2-wp", "", nil)
		label(t, ctx, l, "services", ns, "echo-v2", labelUseWaypoint, ptr("echo-v2-wp"))
		s.waitBound(t, ctx, ns, "echo-v2", "echo-v2-wp")
		viaWaypoint(t, s.url(ns, "echo-v2", "/svc"), ns, "echo-v2-wp")
		// The namespace's other services keep the namespace waypoint.
		viaWaypoint(t, s.url(ns, "echo-v1", "/svc"), ns, "waypoint")
	})

	t.Run("per-service-account waypoint by label", func(t *testing.T) {
		s.waypoint(t, ctx, accts, "reviews-wp", "", nil)
		label(t, ctx, l, "serviceaccounts", accts, "reviews", labelUseWaypoint, ptr("reviews-wp"))
		s.waitWorkloadBound(t, ctx, s.ip(accts, "r1"), true)
		// Bound through its account, the waypoint takes both the
		// service's traffic and the pod's.
		viaWaypoint(t, s.url(accts, "reviews", "/sa"), accts, "reviews-wp")
		viaWaypoint(t, podURL(accts, "r1", "/sa"), accts, "reviews-wp")
		// The account's waypoint is not the other account's.
		direct(t, s.url(accts, "ratings", "/sa"))
	})

	t.Run("per-service-account waypoint by istio.io/for-service-account", func(t *testing.T) {
		s.waypoint(t, ctx, accts, "ratings-wp", "", map[string]string{"istio.io/for-service-account": "ratings"})
		s.waitWorkloadBound(t, ctx, s.ip(accts, "ra1"), true)
		viaWaypoint(t, s.url(accts, "ratings", "/sa"), accts, "ratings-wp")
		viaWaypoint(t, podURL(accts, "ra1", "/sa"), accts, "ratings-wp")
	})

	t.Run("waypoint for workloads", func(t *testing.T) {
		s.waypoint(t, ctx, accts, "w-wp", "workload", nil)
		label(t, ctx, l, "pods", accts, "w1", labelUseWaypoint, ptr("w-wp"))
		s.waitWorkloadBound(t, ctx, s.ip(accts, "w1"), true)
		viaWaypoint(t, podURL(accts, "w1", "/wl"), accts, "w-wp")
	})

	t.Run("deleting the Gateway returns to L4", func(t *testing.T) {
		if err := s.gw.GatewayV1().Gateways(accts).Delete(ctx, "ratings-wp", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		s.waitWorkloadBound(t, ctx, s.ip(accts, "ra1"), false)
		direct(t, s.url(accts, "ratings", "/l4"))
		direct(t, podURL(accts, "ra1", "/l4"))
		// Nothing stale: the garbage collector removes what the
		// controller made for it.
		if _, err := s.mesh.WaypointPods(ctx, accts, "ratings-wp", 0); err != nil {
			t.Error(err)
		}
		if err := lab.PollUntil(ctx, time.Minute, func() bool {
			_, err := l.Client.AppsV1().Deployments(accts).Get(ctx, "ratings-wp", metav1.GetOptions{})
			_, serr := l.Client.CoreV1().Services(accts).Get(ctx, "ratings-wp", metav1.GetOptions{})
			return apierrors.IsNotFound(err) && apierrors.IsNotFound(serr)
		}); err != nil {
			t.Errorf("ratings-wp's Deployment and Service: still there after the Gateway's deletion: %v", err)
		}
	})

	t.Run("a binding to a missing waypoint fails closed", func(t *testing.T) {
		label(t, ctx, l, "services", accts, "x", labelUseWaypoint, ptr("nosuch"))
		s.waitBound(t, ctx, accts, "x", "nosuch")
		if r, err := do(ctx, c, "GET", s.url(accts, "x", "/missing"), nil); err == nil {
			t.Errorf("to Service x bound to a missing waypoint: got %d from %s, want the connection refused", r.code, r.report.Peer)
		}
		s.waitCondition(t, ctx, accts, "x", "False", "nosuch")
		label(t, ctx, l, "services", accts, "x", labelUseWaypoint, nil)
		s.waitBound(t, ctx, accts, "x", "")
		direct(t, s.url(accts, "x", "/back"))
	})

	t.Run("cross-namespace waypoint and allowedRoutes", func(t *testing.T) {
		const infra = "infra"
		if err := l.CreateNamespace(ctx, infra, nil); err != nil {
			t.Fatal(err)
		}
		s.waypoint(t, ctx, infra, "shared", "", nil)
		label(t, ctx, l, "services", accts, "x", "istio.io/use-waypoint-namespace", ptr(infra))
		label(t, ctx, l, "services", accts, "x", labelUseWaypoint, ptr("shared"))
		// The listener admits routes from its own namespace only (the
		// default): the binding is refused with a condition that says
		// why, and fails closed (istiod/ambient; Istio lets the Service
		// go direct at L4, skipping the policy the label asked for). The
		// waypoint never sees its traffic.
		s.waitCondition(t, ctx, accts, "x", "False", "allowedRoutes")
		s.waitRefused(t, ctx, accts, "x", "shared", infra)
		shared := s.waypointPods(t, ctx, infra, "shared", 1)[0]
		before := s.waypointRequests(t, ctx, shared)
		if r, err := do(ctx, c, "GET", s.url(accts, "x", "/refused"), nil); err == nil {
			t.Errorf("to Service x bound to waypoint infra/shared, which refuses namespace accts: got %d from %s, want the connection refused", r.code, r.report.Peer)
		}
		if got := s.waypointRequests(t, ctx, shared); got != before {
			t.Errorf("waypoint infra/shared, which refuses namespace accts: served %d requests of it, want none", got-before)
		}
		// Admit every namespace (istiod writes the Gateway's status
		// meanwhile: a conflict is tried again).
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			gw, err := s.gw.GatewayV1().Gateways(infra).Get(ctx, "shared", metav1.GetOptions{})
			if err != nil {
				return err
			}
			all := gatewayv1.NamespacesFromAll
			gw.Spec.Listeners[0].AllowedRoutes = &gatewayv1.AllowedRoutes{Namespaces: &gatewayv1.RouteNamespaces{From: &all}}
			_, err = s.gw.GatewayV1().Gateways(infra).Update(ctx, gw, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		s.waitBound(t, ctx, accts, "x", "shared", infra)
		s.waitCondition(t, ctx, accts, "x", "True", "")
		viaWaypoint(t, s.url(accts, "x", "/admitted"), infra, "shared")
	})

	t.Run("istiod away: the waypoint keeps its last config", func(t *testing.T) {
		s.route(t, ctx, ns, "echo-away", "echo", `[{"matches":[{"headers":[{"name":"end-user","value":"jason"}]}],"backendRefs":[{"name":"echo-v2","port":80}]},{"backendRefs":[{"name":"echo-v1","port":80}]}]`)
		m.StopIstiod()
		for range 5 {
			if r := get(t, ctx, c, s.url(ns, "echo", "/away"), map[string]string{"end-user": "jason"}); r.report.Hostname != "v2" {
				t.Errorf("istiod away, end-user: jason: got %d from %q, want v2", r.code, r.report.Hostname)
			}
			if r := get(t, ctx, c, s.url(ns, "echo", "/away"), nil); r.report.Hostname != "v1" {
				t.Errorf("istiod away, no end-user: got %d from %q, want v1", r.code, r.report.Hostname)
			}
		}
		if err := m.StartIstiod(ctx, labmesh.IstiodOptions{}); err != nil {
			t.Fatal(err)
		}
		s.deleteRoute(t, ctx, ns, "echo-away")
	})

	t.Run("waypoint restarted under traffic fails closed", func(t *testing.T) {
		wp := s.waypointPods(t, ctx, ns, "waypoint", 1)[0]
		type outcome struct {
			peer string
			err  error
		}
		var (
			mu       sync.Mutex
			outcomes []outcome
		)
		stop := make(chan struct{})
		done := make(chan struct{})
		lc := client(t, ctx, l, ns, "client", false)
		lc.Timeout = 3 * time.Second
		go func() {
			defer close(done)
			// A request every 10ms at most: steady traffic, not a flood.
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				r, err := do(ctx, lc, "GET", s.url(ns, "echo-v1", "/restart"), nil)
				if err == nil && r.code != 200 {
					err = fmt.Errorf("status %d", r.code)
				}
				mu.Lock()
				outcomes = append(outcomes, outcome{peer: peerOf(t, r), err: err})
				mu.Unlock()
			}
		}()
		if err := l.Node(wp.Spec.NodeName).Kubelet.KillContainer(ns, wp.Name, "istio-proxy"); err != nil {
			t.Fatal(err)
		}
		if _, err := l.WaitPod(ctx, ns, wp.Name, func(p *corev1.Pod) bool {
			return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount >= 1 && lab.PodReady(p)
		}); err != nil {
			t.Fatal(err)
		}
		// Back: the next requests pass the restarted waypoint.
		mu.Lock()
		mark := len(outcomes)
		mu.Unlock()
		if err := lab.PollUntil(ctx, time.Minute, func() bool {
			mu.Lock()
			defer mu.Unlock()
			ok := 0
			for _, o := range outcomes[mark:] {
				if o.err == nil {
					ok++
				}
			}
			return ok >= 5
		}); err != nil {
			t.Errorf("after the restart: no 5 successful requests: %v", err)
		}
		close(stop)
		<-done
		failed := 0
		for _, o := range outcomes {
			switch {
			case o.err != nil:
				failed++
			case o.peer != wp.Status.PodIP:
				t.Errorf("a request while the waypoint restarted reached echo from %s, want only through the waypoint %s (never direct)", o.peer, wp.Status.PodIP)
			}
		}
		t.Logf("%d requests while the waypoint restarted: %d failed closed, the rest through the waypoint", len(outcomes), failed)
	})

	t.Run("two waypoint replicas share the load", func(t *testing.T) {
		if _, err := l.Client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "duo-params"},
			Data:       map[string]string{gateway.KeyDeployment: "spec:\n  replicas: 2\n"},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		gw := &gatewayv1.Gateway{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "duo"},
			Spec: gatewayv1.GatewaySpec{GatewayClassName: gateway.WaypointClass,
				Infrastructure: &gatewayv1.GatewayInfrastructure{ParametersRef: &gatewayv1.LocalParametersReference{Group: "", Kind: "ConfigMap", Name: "duo-params"}},
				Listeners:      []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: gateway.ListenerProtocolHBONE}}},
		}
		if _, err := s.gw.GatewayV1().Gateways(ns).Create(ctx, gw, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		label(t, ctx, l, "services", ns, "echo-v1", labelUseWaypoint, ptr("duo"))
		wps, err := m.WaitWaypoint(ctx, ns, "duo", 2, "the echo-v1 service", func(d string) bool {
			return strings.Contains(d, "inbound-vip|80|http|echo-v1.shop.svc.cluster.local")
		})
		if err != nil {
			t.Fatal(err)
		}
		s.waitBound(t, ctx, ns, "echo-v1", "duo")
		count := map[string]int{}
		for range 60 {
			r := get(t, ctx, c, s.url(ns, "echo-v1", "/duo"), nil)
			count[peerOf(t, r)]++
		}
		if count[wps[0].Status.PodIP] == 0 || count[wps[1].Status.PodIP] == 0 || count[wps[0].Status.PodIP]+count[wps[1].Status.PodIP] != 60 {
			t.Errorf("60 connections to echo-v1 through waypoint duo: got clients %v, want both replicas %s and %s and nothing else", count, wps[0].Status.PodIP, wps[1].Status.PodIP)
		}
		label(t, ctx, l, "services", ns, "echo-v1", labelUseWaypoint, nil)
	})

	// Last: it changes the mesh-wide MeshConfig, which no subtest
	// above expects.
	t.Run("Telemetry sets the waypoint's tracing and access logs", func(t *testing.T) {
		s.telemetry(t, ctx, ns, c)
	})
}
