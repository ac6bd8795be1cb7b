package waypoint

import (
	"bufio"
	"encoding/binary"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// TestServicesOfGolden: the service of a cluster comes from its istio
// filter metadata as istiod writes it (services[0] host, name,
// namespace), and a chain's from its inbound-vip name.
func TestServicesOfGolden(t *testing.T) {
	p, snap := fuzzProxy(t, "testdata/istiod/service.json")
	si := p.stats.tel.servicesOf(snap)
	want := &ServiceInfo{Hostname: "reviews.shop.svc.cluster.local", Name: "reviews", Namespace: "shop"}
	if diff := cmp.Diff(want, si.clusters["inbound-vip|9080|http|reviews.shop.svc.cluster.local"]); diff != "" {
		t.Errorf("cluster service (-want +got):\n%s", diff)
	}
	found := false
	for _, s := range si.hcms {
		found = found || cmp.Equal(want, s)
	}
	if !found {
		t.Errorf("chain services: got %v, want reviews's HTTP chain", si.hcms)
	}
	if p.stats.tel.servicesOf(snap) != si {
		t.Error("services of the same snapshot computed again")
	}
}

func TestTraceparent(t *testing.T) {
	for _, tt := range []struct {
		in   string
		keep bool
	}{
		{"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", true},
		{"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", true},
		{"00-00000000000000000000000000000000-b7ad6b7169203331-01", false}, // zero trace id
		{"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", false}, // zero parent id
		{"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", false}, // upper case
		{"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", false}, // unknown version, other length rules
		{"garbage", false},
		{"", false},
	} {
		h := http.Header{}
		if tt.in != "" {
			h.Set("Traceparent", tt.in)
			h.Set("Tracestate", "vendor=1")
		}
		ensureRequestIDs(h)
		got := h.Get("Traceparent")
		if tt.keep != (got == tt.in) {
			t.Errorf("traceparent %q: got %q, want it kept: %v", tt.in, got, tt.keep)
		}
		if !validTraceparent(got) || !strings.HasSuffix(got, "-01") && !strings.HasSuffix(got, "-00") {
			t.Errorf("traceparent after %q: got %q, want a valid one", tt.in, got)
		}
		if !tt.keep && h.Get("Tracestate") != "" {
			t.Errorf("tracestate with a new trace after %q: got %q, want none", tt.in, h.Get("Tracestate"))
		}
		if len(h.Get("X-Request-Id")) != 36 {
			t.Errorf("x-request-id: got %q, want a UUID", h.Get("X-Request-Id"))
		}
	}
}

// TestHeadSize: the head size read back from a parsed request is the
// size on the wire.
func TestHeadSize(t *testing.T) {
	for _, raw := range []string{
		"GET /a?b=c HTTP/1.1\r\nHost: reviews:9080\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nX-A: 1\r\nX-A: 2\r\n\r\n",
	} {
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if err != nil {
			t.Fatal(err)
		}
		if got := headSize(req); got != int64(len(raw)) {
			t.Errorf("head size of %q: got %d, want %d", raw, got, len(raw))
		}
	}
}

func TestGRPCStatus(t *testing.T) {
	for _, tt := range []struct {
		status          int
		header, trailer http.Header
		want            string
	}{
		{200, http.Header{}, http.Header{"Grpc-Status": {"5"}}, "5"},
		{200, http.Header{"Grpc-Status": {"0"}}, http.Header{}, "0"},
		{200, http.Header{}, http.Header{}, ""},
		{503, nil, nil, "14"},
		{403, nil, nil, "7"},
		{500, nil, nil, "2"},
	} {
		if got := grpcStatusFromHeaders(tt.status, tt.header, tt.trailer); got != tt.want {
			t.Errorf("grpc status of %d %v %v: got %q, want %q", tt.status, tt.header, tt.trailer, got, tt.want)
		}
	}
}

// TestGRPCFrames: messages are counted however the stream is cut into
// reads, prefixes split included, and an empty message counts.
func TestGRPCFrames(t *testing.T) {
	msg := func(n int) []byte {
		b := make([]byte, 5+n)
		binary.BigEndian.PutUint32(b[1:], uint32(n))
		return b
	}
	var stream []byte
	for _, n := range []int{0, 1, 3, 70000, 0, 12} {
		stream = append(stream, msg(n)...)
	}
	for _, size := range []int{1, 2, 4, 5, 6, 7, 1000, len(stream)} {
		f := &grpcFrames{}
		for b := stream; len(b) > 0; {
			k := min(size, len(b))
			f.scan(b[:k])
			b = b[k:]
		}
		if got := f.n.Load(); got != 6 {
			t.Errorf("reads of %d bytes: got %d messages, want 6", size, got)
		}
	}
	// A message's prefix counts it, before its payload is through.
	f := &grpcFrames{}
	f.scan(msg(100)[:5])
	if got := f.n.Load(); got != 1 {
		t.Errorf("after a prefix: got %d messages, want 1", got)
	}
}

// TestStartSpan: the trace context a request goes on with.
func TestStartSpan(t *testing.T) {
	tr := &config.Tracing{RandomSampling: 100, OverallSampling: 100, Zipkin: &config.Zipkin{TraceID128: true}}
	for _, tc := range []struct {
		name        string
		in          http.Header
		sampling    float64
		wantTrace   string
		wantParent  string
		wantSampled bool
	}{
		{name: "new trace", in: http.Header{}, sampling: 100, wantSampled: true},
		{name: "new trace unsampled", in: http.Header{}, sampling: 0},
		{name: "traceparent sampled wins over 0%", in: http.Header{"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}},
			sampling: 0, wantTrace: "4bf92f3577b34da6a3ce929d0e0e4736", wantParent: "00f067aa0ba902b7", wantSampled: true},
		{name: "traceparent unsampled wins over 100%", in: http.Header{"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"}},
			sampling: 100, wantTrace: "4bf92f3577b34da6a3ce929d0e0e4736", wantParent: "00f067aa0ba902b7"},
		{name: "b3 64-bit, debug", in: http.Header{"X-B3-Traceid": {"48485A3953BB6124"}, "X-B3-Spanid": {"a2fb4a1d1a96d312"}, "X-B3-Flags": {"1"}},
			sampling: 0, wantTrace: "48485a3953bb6124", wantParent: "a2fb4a1d1a96d312", wantSampled: true},
		{name: "malformed b3 ignored", in: http.Header{"X-B3-Traceid": {"xyz"}, "X-B3-Spanid": {"a2fb4a1d1a96d312"}}, sampling: 100, wantSampled: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := *tr
			c.RandomSampling = tc.sampling
			s := startSpan(&c, tc.in)
			if tc.wantTrace != "" && s.traceID != tc.wantTrace || tc.wantTrace == "" && len(s.traceID) != 32 {
				t.Errorf("trace: got %q, want %q (32 hex digits when new)", s.traceID, tc.wantTrace)
			}
			if s.parentID != tc.wantParent || s.sampled != tc.wantSampled {
				t.Errorf("parent, sampled: got %q %v, want %q %v", s.parentID, s.sampled, tc.wantParent, tc.wantSampled)
			}
			tp := tc.in.Get("Traceparent")
			if !validTraceparent(tp) || tp[36:52] != s.spanID || !strings.HasSuffix(tp, map[bool]string{true: "-01", false: "-00"}[tc.wantSampled]) {
				t.Errorf("traceparent out: got %q, want span %s, sampled %v", tp, s.spanID, tc.wantSampled)
			}
			if !strings.HasSuffix(tp[3:35], s.traceID) {
				t.Errorf("traceparent out: got trace %s, want %s (zero-padded)", tp[3:35], s.traceID)
			}
		})
	}
}

func TestNewIDs(t *testing.T) {
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := map[string]bool{}
	for range 100 {
		var ub [36]byte
		var tb [55]byte
		putUUID(ub[:])
		putTraceparent(tb[:])
		u, tp := string(ub[:]), string(tb[:])
		if !uuid.MatchString(u) {
			t.Errorf("putUUID: %q, not a version 4 UUID", u)
		}
		if !validTraceparent(tp) || !strings.HasSuffix(tp, "-00") {
			t.Errorf("putTraceparent: %q, not a valid unsampled traceparent", tp)
		}
		if seen[u] || seen[tp] {
			t.Fatalf("repeated id %q or %q", u, tp)
		}
		seen[u], seen[tp] = true, true
	}
}

// TestNetworkShadowGolden: the network RBAC filter istiod writes for a
// tcp chain with a dry-run ALLOW policy lets every connection through, and records
// the shadow result as Envoy's network RBAC filter does: in the
// connection's dynamic metadata (envoy.filters.network.rbac, keys after
// istio_dry_run_allow_) and in the dry-run counters.
func TestNetworkShadowGolden(t *testing.T) {
	p, snap := fuzzProxy(t, "testdata/istiod/authz.json")
	// The filter alone: the chain's others hold HTTP rules a connection
	// cannot match, which deny all (fail closed).
	var chain *config.Chain
	for _, l := range snap.Listeners {
		for _, c := range l.Chains {
			for _, rb := range c.RBAC {
				if rb.Shadow != nil {
					chain = &config.Chain{RBAC: []*config.RBAC{rb}}
				}
			}
		}
	}
	if chain == nil {
		t.Fatal("authz.json: no chain with a network RBAC shadow policy")
	}
	const ns, prefix = config.RBACMetadataNetwork, "istio_dry_run_allow_"
	for _, tc := range []struct {
		principal, result, policy string
	}{
		{"spiffe://cluster.local/ns/shop/sa/productpage", "allowed", "ns[shop]-policy[try-stricter]-rule[0]"},
		{"spiffe://cluster.local/ns/shop/sa/reviews", "denied", ""},
	} {
		ci := &connInfo{local: netip.MustParseAddrPort("10.0.0.20:9090"), remote: netip.MustParseAddrPort("10.0.0.5:40000"),
			fs: map[string]string{"io.istio.peer_principal": tc.principal}}
		if !p.networkFilters(chain, ci) {
			t.Errorf("%s: connection denied, want it through (the shadow policy is a dry run)", tc.principal)
		}
		md := ci.meta[ns]
		if got := md[prefix+"shadow_engine_result"]; got != tc.result {
			t.Errorf("%s: %s shadow_engine_result: got %q, want %q", tc.principal, ns, got, tc.result)
		}
		if got, ok := md[prefix+"shadow_effective_policy_id"]; got != tc.policy || ok != (tc.policy != "") {
			t.Errorf("%s: %s shadow_effective_policy_id: got %q (set %v), want %q", tc.principal, ns, got, ok, tc.policy)
		}
	}
	for i, want := range []uint64{1, 1} {
		if got := p.stats.shadow[0][i].Load(); got != want {
			t.Errorf("dry-run ALLOW counter %s: got %d, want %d", shadowResults[i], got, want)
		}
	}
}

// TestEnsureRequestIDs: an x-request-id and a valid traceparent the
// client sent are kept, the missing ones made; the values made share
// one slice, and adding to one header leaves the other alone.
func TestEnsureRequestIDs(t *testing.T) {
	const tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	for _, tc := range []struct {
		name     string
		in       http.Header
		keepID   bool
		keepTrce bool
	}{
		{"none", http.Header{}, false, false},
		{"id sent", http.Header{"X-Request-Id": {"mine"}}, true, false},
		{"trace sent", http.Header{"Traceparent": {tp}}, false, true},
		{"both sent", http.Header{"X-Request-Id": {"mine"}, "Traceparent": {tp}}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.in
			ensureRequestIDs(h)
			id, trace := h.Get("X-Request-Id"), h.Get("Traceparent")
			if got := id == "mine"; got != tc.keepID || len(id) != 36 && !tc.keepID {
				t.Errorf("x-request-id: got %q, want kept: %v", id, tc.keepID)
			}
			if got := trace == tp; got != tc.keepTrce || !validTraceparent(trace) {
				t.Errorf("traceparent: got %q, want kept: %v", trace, tc.keepTrce)
			}
			h.Add("X-Request-Id", "added")
			h.Add("Traceparent", "added")
			if h.Get("X-Request-Id") != id || h.Get("Traceparent") != trace || len(h["X-Request-Id"]) != 2 || len(h["Traceparent"]) != 2 {
				t.Errorf("after adding a value to each: got %q and %q, want %q and %q first", h["X-Request-Id"], h["Traceparent"], id, trace)
			}
		})
	}
}
