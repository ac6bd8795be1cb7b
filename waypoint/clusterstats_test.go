package waypoint_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	neturl "net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// adminStats serves the waypoint's admin handler; stats reads /stats
// as Envoy's "name: value" lines.
func (e *env) adminStats(t testing.TB) (url string, stats func() map[string]uint64) {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(e.wp.Stats())
	srv := httptest.NewServer(e.wp.AdminHandler(reg, nil))
	t.Cleanup(srv.Close)
	return srv.URL, func() map[string]uint64 {
		resp, err := http.Get(srv.URL + "/stats")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out := map[string]uint64{}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			name, v, ok := strings.Cut(sc.Text(), ": ")
			n, err := strconv.ParseUint(v, 10, 64)
			if !ok || err != nil {
				t.Fatalf("/stats line %q: want name: value", sc.Text())
			}
			out[name] = n
		}
		return out
	}
}

var resCluster = "cluster." + clusterName("http", resPort, host) + "."

func wantStats(t testing.TB, got map[string]uint64, want map[string]uint64) {
	t.Helper()
	for k, v := range want {
		g, ok := got[resCluster+k]
		if !ok || g != v {
			t.Errorf("%s: got %d (present %v), want %d", resCluster+k, g, ok, v)
		}
	}
}

// TestClusterStatsCircuitBreaker: the HTTP/1.1 circuit breakers'
// overflow counters and open gauges under Envoy's names, in /stats and
// /stats/prometheus (cluster_name label, as Istio's tag).
func TestClusterStatsCircuitBreaker(t *testing.T) {
	e := newEnv(t, resConfig(func(p *svcPort) {
		p.editCluster = func(c *cluster.Cluster) {
			c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
				MaxConnections: wrapperspb.UInt32(1), MaxPendingRequests: wrapperspb.UInt32(1),
			}}}
		}
	}))
	url, stats := e.adminStats(t)
	wantStats(t, stats(), map[string]uint64{"upstream_rq_pending_overflow": 0, "circuit_breakers.default.cx_open": 0, "upstream_rq_active": 0})
	arrived, release := make(chan string, 4), make(chan struct{})
	podHandlers(t, e, (&holdPod{"A", arrived, release}).ServeHTTP, (&holdPod{"B", arrived, release}).ServeHTTP)
	// Pod A's connection and pod B's (past the limit: an endpoint
	// without a connection gets one) each carry a held request.
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
	// (The overflowed request ends its share after its answer.)
	awaitStatEq(t, stats, "upstream_rq_active", 3)
	// Two hold a connection each, one waits (the overflow proves it
	// waits), one overflowed; the second connection and the wait each
	// found the breaker open.
	wantStats(t, stats(), map[string]uint64{
		"upstream_rq_pending_overflow": 1, "upstream_cx_overflow": 2, "upstream_rq_active": 3, "upstream_rq_pending_active": 1,
		"upstream_cx_active": 2, "upstream_cx_total": 2,
		"circuit_breakers.default.cx_open": 1, "circuit_breakers.default.rq_pending_open": 1, "circuit_breakers.default.rq_open": 0,
	})
	resp, err := http.Get(url + "/stats/prometheus")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`envoy_cluster_upstream_rq_pending_overflow{cluster_name="` + clusterName("http", resPort, host) + `"} 1`,
		`envoy_cluster_circuit_breakers_default_cx_open{cluster_name="` + clusterName("http", resPort, host) + `"} 1`,
		"# TYPE envoy_cluster_upstream_rq_pending_overflow counter",
		"# TYPE envoy_cluster_outlier_detection_ejections_active gauge",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/stats/prometheus: no %s", want)
		}
	}
	// Envoy's filter and JSON form, as istioctl-style tools ask.
	resp, err = http.Get(url + "/stats?format=json&filter=" + neturl.QueryEscape(`\|81\|http\|.*upstream_rq_pending_overflow$`))
	if err != nil {
		t.Fatal(err)
	}
	var js struct {
		Stats []struct {
			Name  string `json:"name"`
			Value uint64 `json:"value"`
		} `json:"stats"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&js); err != nil {
		t.Fatalf("/stats?format=json: %v", err)
	}
	resp.Body.Close()
	if len(js.Stats) != 1 || js.Stats[0].Name != resCluster+"upstream_rq_pending_overflow" || js.Stats[0].Value != 1 {
		t.Errorf("/stats?format=json&filter=...: got %+v, want only %supstream_rq_pending_overflow 1", js.Stats, resCluster)
	}
	close(release)
	for i, c := range held {
		if resp, err := http.ReadResponse(c.br, nil); err != nil || resp.StatusCode != 200 {
			t.Fatalf("held request %d: %v", i, err)
		}
	}
	if got := <-results; got != 200 {
		t.Errorf("waiting request: got %d, want 200", got)
	}
}

// TestClusterStatsOutlierAndRetry: a pod answering 503 is retried on
// the other (upstream_rq_retry), then ejected (outlier_detection
// counters and the active ejection); max_retries 0 refuses a retry
// (upstream_rq_retry_overflow); a route timeout counts
// upstream_rq_timeout.
func TestClusterStatsOutlierAndRetry(t *testing.T) {
	e := newEnv(t, resConfig(func(p *svcPort) {
		p.routes = resRoute(func(r *route.Route) {
			r.GetRoute().RetryPolicy = &route.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(1)}
		})
		p.editCluster = func(c *cluster.Cluster) {
			c.OutlierDetection = &cluster.OutlierDetection{
				Consecutive_5Xx:    wrapperspb.UInt32(2),
				Interval:           durationpb.New(time.Second),
				BaseEjectionTime:   durationpb.New(time.Minute),
				MaxEjectionPercent: wrapperspb.UInt32(50),
			}
		}
	}))
	_, stats := e.adminStats(t)
	podHandlers(t, e, statusPod(503), okPod("B"))
	c := e.resClient(t)
	for range 6 {
		expectStatus(t, c.do(t, get(t, "/")), 200)
	}
	// Round robin sends the 1st and 3rd requests' first tries to A,
	// each retried on B; A's second 503 ejects it.
	wantStats(t, stats(), map[string]uint64{
		"upstream_rq_retry": 2, "upstream_rq_retry_overflow": 0,
		"outlier_detection.ejections_active": 1, "outlier_detection.ejections_enforced_total": 1,
		"outlier_detection.ejections_enforced_consecutive_5xx": 1, "outlier_detection.ejections_detected_consecutive_5xx": 1,
		"outlier_detection.ejections_enforced_consecutive_gateway_failure": 0,
		"outlier_detection.ejections_detected_consecutive_gateway_failure": 0,
	})
}

// TestClusterStatsRetryOverflowAndTimeout: with max_retries 0 a retry
// is refused (upstream_rq_retry_overflow, the 503 goes back); a request
// past the route timeout counts upstream_rq_timeout.
func TestClusterStatsRetryOverflowAndTimeout(t *testing.T) {
	e := newEnv(t, resConfig(func(p *svcPort) {
		p.routes = resRoute(func(r *route.Route) {
			r.GetRoute().RetryPolicy = &route.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(1)}
			r.GetRoute().Timeout = durationpb.New(time.Second)
		})
		p.editCluster = func(c *cluster.Cluster) {
			c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{MaxRetries: wrapperspb.UInt32(0)}}}
		}
	}))
	_, stats := e.adminStats(t)
	pod := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			<-r.Context().Done()
			return
		}
		w.WriteHeader(503)
	}
	podHandlers(t, e, pod, pod)
	c := e.resClient(t)
	expectStatus(t, c.do(t, get(t, "/")), 503)
	expectStatus(t, c.do(t, get(t, "/hold")), 504)
	wantStats(t, stats(), map[string]uint64{
		"upstream_rq_retry": 0, "upstream_rq_retry_overflow": 1, "upstream_rq_timeout": 1,
		"circuit_breakers.default.rq_retry_open": 1, // max_retries 0: no retry can start
	})
}
