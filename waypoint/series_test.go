package waypoint

import (
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// TestRequestSeriesCache: requests finished concurrently, over more label
// sets than the series cache holds, are each counted once in the series
// of their labels, and the cache stays within its bound.
func TestRequestSeriesCache(t *testing.T) {
	tel := newTelemetry()
	ci := &connInfo{remote: netip.MustParseAddrPort("10.0.0.1:40000"), fs: map[string]string{}}
	req := &http.Request{Method: "GET", RequestURI: "/", Proto: "HTTP/1.1", Header: http.Header{}}
	const sets, rounds = maxSeries + 100, 2
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range sets * rounds {
				if i%4 != w {
					continue
				}
				svc := &ServiceInfo{Hostname: "svc-" + strconv.Itoa(i%sets) + ".shop.svc.cluster.local", Name: "svc", Namespace: "shop"}
				r := &requestRecord{t: tel, start: time.Now(), ci: ci, req: req, Protocol: "http", Status: http.StatusOK, Flags: "-", service: svc}
				r.finish()
			}
		}()
	}
	wg.Wait()
	if got := testutil.CollectAndCount(tel.requests); got != sets {
		t.Errorf("istio_requests_total series: got %d, want %d", got, sets)
	}
	for _, i := range []int{0, sets / 2, sets - 1} {
		vals := tel.values(&peerValues{service: &ServiceInfo{Hostname: "svc-" + strconv.Itoa(i) + ".shop.svc.cluster.local", Name: "svc", Namespace: "shop"},
			protocol: "http", flags: "-"})
		vals = append(vals, "200", "")
		if got := testutil.ToFloat64(tel.requests.WithLabelValues(vals...)); got != rounds {
			t.Errorf("requests of svc-%d: got %v, want %d", i, got, rounds)
		}
	}
	tel.series.mu.RLock()
	n := len(tel.series.m)
	tel.series.mu.RUnlock()
	if n > maxSeries {
		t.Errorf("cached series: got %d, want at most %d", n, maxSeries)
	}
}

// BenchmarkTelemetryFinish: the metrics of one finished request (the
// four request metrics of a label set seen before, no access log; grpc:
// and its message counts, attached when the response's head arrived):
// the per-request telemetry cost on the waypoint's hot path.
func BenchmarkTelemetryFinish(b *testing.B) {
	t := newTelemetry()
	src := netip.MustParseAddr("10.0.0.1")
	dst := netip.MustParseAddr("10.0.0.2")
	srcID, dstID := "spiffe://cluster.local/ns/shop/sa/client", "spiffe://cluster.local/ns/shop/sa/reviews"
	t.workloads.Store(&Workloads{
		byAddr: map[netip.Addr]*Peer{
			src: {Name: "client-1", Namespace: "shop", WorkloadName: "client", CanonicalName: "client", CanonicalRevision: "v1", ClusterID: "Kubernetes", Identity: srcID},
			dst: {Name: "reviews-1", Namespace: "shop", WorkloadName: "reviews-v1", CanonicalName: "reviews", CanonicalRevision: "v1", ClusterID: "Kubernetes", Identity: dstID},
		},
		byIdentity: map[string]*Peer{},
	})
	t.node.Store(&NodeInfo{Namespace: "shop", ClusterID: "Kubernetes"})
	ci := &connInfo{remote: netip.AddrPortFrom(src, 40000), local: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.3"), 15008),
		fs: map[string]string{"io.istio.peer_principal": srcID, "io.istio.local_principal": "spiffe://cluster.local/ns/shop/sa/waypoint"}}
	ep := &config.Endpoint{Address: netip.AddrPortFrom(dst, 8080)}
	svc := &ServiceInfo{Hostname: "reviews.shop.svc.cluster.local", Name: "reviews", Namespace: "shop"}
	req := &http.Request{Method: "GET", RequestURI: "/", Proto: "HTTP/1.1", Header: http.Header{}}
	for _, grpc := range []bool{false, true} {
		name := "http"
		if grpc {
			name = "grpc"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					r := &requestRecord{t: t, start: time.Now(), ci: ci, req: req, head: 100, Protocol: "http", Status: http.StatusOK, Flags: "-",
						service: svc, Cluster: "outbound|8080||reviews.shop.svc.cluster.local", ep: ep, grpc: grpc}
					if grpc {
						r.reqMsgs, r.respMsgs = &grpcFrames{}, &grpcFrames{}
						r.reqMsgs.n.Store(1)
						r.respMsgs.n.Store(1)
						t.attachMessages(r, nil) // as the response's head arrives
					}
					r.finish()
				}
			})
		})
	}
}

func TestStatusCode(t *testing.T) {
	for _, code := range []int{0, 99, 100, 200, 404, 503, 599, 600, 1000} {
		if got, want := statusCode(code), strconv.Itoa(code); got != want {
			t.Errorf("statusCode(%d): got %q, want %q", code, got, want)
		}
	}
}

// TestSeriesKeys: the cache keys hold as many values as the metrics
// have labels.
func TestSeriesKeys(t *testing.T) {
	if got, want := len(requestLabels{}), len(httpLabels); got != want {
		t.Errorf("request series key: got %d values, want %d", got, want)
	}
	if got, want := len(messageValues{}), len(messageLabels); got != want {
		t.Errorf("message series key: got %d values, want %d", got, want)
	}
}
