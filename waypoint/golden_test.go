package waypoint_test

import (
	"bufio"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"

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
