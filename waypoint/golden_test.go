package waypoint_test

import (
	"bufio"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/waypoint/config"
)

// TestGoldenService runs istiod's golden xDS for a service waypoint
// (waypoint/testdata/istiod/service.json, Service shop/reviews with an
// HTTP port 9080 and a TCP port 9090, pods 10.244.1.5 and 10.244.2.6),
// its addresses moved to the test's loopback ones: HTTP and TCP through
// the waypoint to the pods' ztunnel.
func TestGoldenService(t *testing.T) {
	const svc = "reviews.shop.svc.cluster.local"
	raw, err := os.ReadFile("testdata/istiod/service.json")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvWith(t, svc, [2]uint16{9080, 9090}, [2]uint16{9080, 9090}, func(e *env) {
		moved := strings.NewReplacer(`"10.96.0.30"`, `"`+e.ip(20).String()+`"`, "10.244.1.5:", e.ip(11).String()+":", "10.244.2.6:", e.ip(12).String()+":").Replace(string(raw))
		e.res = func() *config.Resources {
			r, err := config.ParseStatic([]byte(moved))
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
	})
	c := e.tunnel(t, clientID, e.vip(9080))
	br := bufio.NewReader(c)
	seen := map[string]bool{}
	for i := range 4 {
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://%s:9080/reviews/%d", svc, i), nil)
		cl := &client{c: c, br: br}
		resp := cl.do(t, req)
		expectStatus(t, resp, http.StatusOK)
		addr, _, _ := strings.Cut(body(resp), " ")
		seen[addr] = true
	}
	// Round robin over both pods.
	for _, h := range []byte{11, 12} {
		if a := netip.AddrPortFrom(e.ip(h), 9080).String(); !seen[a] {
			t.Errorf("pods answering: got %v, want %s among them", seen, a)
		}
	}
	tc := e.tunnel(t, clientID, e.vip(9090))
	fmt.Fprintf(tc, "tcp\n")
	line, err := bufio.NewReader(tc).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(line, ":9090: tcp\n") {
		t.Errorf("tcp echo: got %q, want a pod's 9090 answering", line)
	}
}

// TestGoldenNamespaceSniffing runs istiod's golden namespace-waypoint
// xDS: Service ratings' port 9080 has no declared protocol, so the
// waypoint sniffs it (http_inspector, application-protocol matcher):
// HTTP goes through the HTTP chain, anything else through the TCP chain
// to the same pod.
func TestGoldenNamespaceSniffing(t *testing.T) {
	const svc = "ratings.shop.svc.cluster.local"
	raw, err := os.ReadFile("testdata/istiod/namespace.json")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvWith(t, svc, [2]uint16{9080, 9081}, [2]uint16{9080, 9081}, func(e *env) {
		moved := strings.NewReplacer(`"10.96.0.31"`, `"`+e.ip(20).String()+`"`, `"10.96.0.30"`, `"`+e.ip(21).String()+`"`,
			"10.244.1.7:", e.ip(11).String()+":", "10.244.1.5:", e.ip(13).String()+":", "10.244.2.6:", e.ip(14).String()+":").Replace(string(raw))
		e.res = func() *config.Resources {
			r, err := config.ParseStatic([]byte(moved))
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
	})
	// HTTP: the waypoint's HTTP chain answers with the app's response.
	cl := &client{c: e.tunnel(t, clientID, e.vip(9080))}
	cl.br = bufio.NewReader(cl.c)
	req, _ := http.NewRequest(http.MethodGet, "http://"+svc+":9080/ratings/1", nil)
	resp := cl.do(t, req)
	expectStatus(t, resp, http.StatusOK)
	if got, want := body(resp), netip.AddrPortFrom(e.ip(11), 9080).String()+" GET "+svc+":9080 /ratings/1 "; got != want {
		t.Errorf("http: got %q, want %q", got, want)
	}
	// h2c (a gRPC client's prior knowledge): the inspector's 'h2c' takes
	// it to the HTTP chain too, served HTTP/2; the cluster without
	// protocol options speaks HTTP/1.1 to the pod.
	hc := e.h2cClient(9080)
	defer hc.CloseIdleConnections()
	h2resp, err := hc.Get("http://" + svc + ":9080/ratings/2")
	if err != nil {
		t.Fatalf("h2c: %v", err)
	}
	h2resp.Body.Close()
	if h2resp.ProtoMajor != 2 || h2resp.StatusCode != 200 || h2resp.Header.Get("X-Proto") != "HTTP/1.1" || h2resp.Header.Get("X-Got-X-Forwarded-Proto") != "http" {
		t.Errorf("h2c: got %s %d, upstream %q, x-forwarded-proto %q; want HTTP/2 200 through the router, HTTP/1.1 upstream",
			h2resp.Proto, h2resp.StatusCode, h2resp.Header.Get("X-Proto"), h2resp.Header.Get("X-Got-X-Forwarded-Proto"))
	}
	// Not HTTP: the TCP chain carries the bytes to the pod untouched, so
	// the app itself (not the waypoint) answers them.
	c := e.tunnel(t, clientID, e.vip(9080))
	fmt.Fprintf(c, "\x16\x03\x01 not http\r\n\r\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(line, "HTTP/1.1 400") {
		t.Fatalf("tcp: got %q, want the app's own 400", line)
	}
	if got := e.wp.Stats().BadRequests(); got != 0 {
		t.Errorf("waypoint's malformed-request count: got %d, want 0 (the TCP chain took the bytes)", got)
	}
}

// TestGoldenServiceAccount runs istiod's golden service-account
// waypoint: service-addressed HTTP, and pod-addressed HTTP and TCP
// through the direct-http and direct-tcp chains and the encap cluster,
// whose one endpoint (connect_originate) reaches each pod by the
// original destination carried in filter state.
func TestGoldenServiceAccount(t *testing.T) {
	const svc = "reviews.shop.svc.cluster.local"
	raw, err := os.ReadFile("testdata/istiod/serviceaccount.json")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvWith(t, svc, [2]uint16{9080, 9081}, [2]uint16{9080, 9081}, func(e *env) {
		moved := strings.NewReplacer(`"10.96.0.30"`, `"`+e.ip(20).String()+`"`, `"10.96.0.40"`, `"`+e.ip(21).String()+`"`,
			"10.244.1.5", e.ip(11).String(), "10.244.2.6", e.ip(12).String()).Replace(string(raw))
		e.res = func() *config.Resources {
			r, err := config.ParseStatic([]byte(moved))
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
	})
	for _, target := range []netip.AddrPort{e.vip(9080), netip.AddrPortFrom(e.ip(11), 9080), netip.AddrPortFrom(e.ip(12), 9080)} {
		cl := &client{c: e.tunnel(t, clientID, target)}
		cl.br = bufio.NewReader(cl.c)
		for range 2 { // the second request reuses the upstream connection
			req, _ := http.NewRequest(http.MethodGet, "http://"+target.String()+"/x", nil)
			resp := cl.do(t, req)
			expectStatus(t, resp, http.StatusOK)
			addr, _, _ := strings.Cut(body(resp), " ")
			if target != e.vip(9080) && addr != target.String() {
				t.Errorf("pod-addressed %s: answered by %s", target, addr)
			}
		}
	}
	c := e.tunnel(t, clientID, netip.AddrPortFrom(e.ip(12), 9081))
	fmt.Fprintf(c, "\x00raw\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.AddrPortFrom(e.ip(12), 9081).String() + ": \x00raw\n"; line != want {
		t.Errorf("direct-tcp: got %q, want %q", line, want)
	}
}

// TestGoldenAuthz runs istiod's golden authz case: AuthorizationPolicies
// on Service reviews (ALLOW by principal, method, path, notPaths and a
// header condition; AUDIT; a dry-run one) and on the waypoint (DENY
// /debug*), as istiod translated them into HTTP RBAC filters.
func TestGoldenAuthz(t *testing.T) {
	const svc = "reviews.shop.svc.cluster.local"
	raw, err := os.ReadFile("testdata/istiod/authz.json")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvWith(t, svc, [2]uint16{9080, 9090}, [2]uint16{9080, 9090}, func(e *env) {
		moved := strings.NewReplacer(`"10.96.0.30"`, `"`+e.ip(20).String()+`"`, "10.244.1.5:", e.ip(11).String()+":", "10.244.2.6:", e.ip(12).String()+":").Replace(string(raw))
		e.res = func() *config.Resources {
			r, err := config.ParseStatic([]byte(moved))
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
	})
	productpage := identity.Identity{TrustDomain: identity.DefaultTrustDomain, Namespace: "shop", ServiceAccount: "productpage"}
	other := identity.Identity{TrustDomain: identity.DefaultTrustDomain, Namespace: "shop", ServiceAccount: "other"}
	for _, tc := range []struct {
		name   string
		id     identity.Identity
		method string
		path   string
		tenant string
		want   int
	}{
		{"allowed", productpage, "GET", "/reviews/1", "acme", 200},
		{"HEAD allowed", productpage, "HEAD", "/health", "globex", 200},
		{"no tenant header", productpage, "GET", "/reviews/1", "", 403},
		{"other tenant", productpage, "GET", "/reviews/1", "initech", 403},
		{"notPaths", productpage, "GET", "/reviews/admin/x", "acme", 403},
		{"method not allowed", productpage, "POST", "/reviews/1", "acme", 403},
		{"path not allowed", productpage, "GET", "/other", "acme", 403},
		{"denied on the waypoint", productpage, "GET", "/debug/x", "acme", 403},
		{"other principal", other, "GET", "/reviews/1", "acme", 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := &client{c: e.tunnel(t, tc.id, e.vip(9080))}
			cl.br = bufio.NewReader(cl.c)
			req, _ := http.NewRequest(tc.method, "http://"+svc+":9080"+tc.path, nil)
			if tc.tenant != "" {
				req.Header.Set("x-tenant", tc.tenant)
			}
			resp := cl.do(t, req)
			if resp.StatusCode != tc.want {
				t.Errorf("%s %s as %s: got %d, want %d", tc.method, tc.path, tc.id, resp.StatusCode, tc.want)
			}
		})
	}
}

// TestGoldenRouteMatches runs istiod's golden httproute-matches case:
// HTTPRoute matches (path prefix, exact and regex, headers exact and
// regex, query parameter, method) choosing between reviews-v1 (.11) and
// reviews-v2 (.12).
func TestGoldenRouteMatches(t *testing.T) {
	const svc = "reviews.shop.svc.cluster.local"
	raw, err := os.ReadFile("testdata/istiod/httproute-matches.json")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvWith(t, svc, [2]uint16{9080, 9090}, [2]uint16{9080, 9090}, func(e *env) {
		moved := strings.NewReplacer(`"10.96.0.30"`, `"`+e.ip(20).String()+`"`, "10.244.1.5:", e.ip(11).String()+":", "10.244.2.6:", e.ip(12).String()+":").Replace(string(raw))
		e.res = func() *config.Resources {
			r, err := config.ParseStatic([]byte(moved))
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
	})
	v1, v2 := netip.AddrPortFrom(e.ip(11), 9080).String(), netip.AddrPortFrom(e.ip(12), 9080).String()
	cl := &client{c: e.tunnel(t, clientID, e.vip(9080))}
	cl.br = bufio.NewReader(cl.c)
	for _, tc := range []struct {
		name, method, path string
		headers            []string
		want               string
	}{
		{"canary by headers, query and method", "GET", "/api/v2/x?debug=1", []string{"x-canary", "true", "x-user", "alice"}, v2},
		{"exact path", "GET", "/health", nil, v1},
		{"regex path", "GET", "/reviews/42", nil, v1},
	} {
		req, _ := http.NewRequest(tc.method, "http://"+svc+":9080"+tc.path, nil)
		for i := 0; i+1 < len(tc.headers); i += 2 {
			req.Header.Set(tc.headers[i], tc.headers[i+1])
		}
		resp := cl.do(t, req)
		expectStatus(t, resp, 200)
		if addr, _, _ := strings.Cut(body(resp), " "); addr != tc.want {
			t.Errorf("%s: answered by %s, want %s", tc.name, addr, tc.want)
		}
	}
}
