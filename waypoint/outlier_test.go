package waypoint_test

import (
	"bufio"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ambitmesh/ambit/internal/testutil"
)

// Outlier detection beyond Istio's consecutive errors (outlier.go), as
// a stock Envoy config sets it, against real pods on loopback: pod A
// fails, pod B answers.

// noConsecutive turns the consecutive detectors off, so that only the
// interval's judgement ejects.
func noConsecutive(od *cluster.OutlierDetection) *cluster.OutlierDetection {
	od.EnforcingConsecutive_5Xx = wrapperspb.UInt32(0)
	od.EnforcingConsecutiveGatewayFailure = wrapperspb.UInt32(0)
	od.Interval = durationpb.New(50 * time.Millisecond)
	od.BaseEjectionTime = durationpb.New(time.Hour)
	od.MaxEjectionPercent = wrapperspb.UInt32(50)
	return od
}

// untilEjected sends requests until the statistic counts an ejection;
// then every request goes to pod B.
func untilEjected(t *testing.T, e *env, stats func() map[string]uint64, stat string) {
	t.Helper()
	c := e.resClient(t)
	deadline := time.Now().Add(20 * time.Second)
	for stats()[resCluster+stat] == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: no ejection; stats %v", stat, stats())
		}
		for range 10 {
			c.do(t, get(t, "/"))
		}
	}
	for i := range 6 {
		if resp := c.do(t, get(t, "/")); resp.StatusCode != 200 {
			t.Fatalf("request %d after the ejection: got %d, want 200 from B", i, resp.StatusCode)
		}
	}
}

// TestOutlierSuccessRate: success_rate_* ejects the pod whose success
// rate is below the mean by stdev factor standard deviations
// (ejections_enforced_success_rate).
func TestOutlierSuccessRate(t *testing.T) {
	e := newEnv(t, resConfig(func(p *svcPort) {
		p.editCluster = func(c *cluster.Cluster) {
			c.OutlierDetection = noConsecutive(&cluster.OutlierDetection{
				SuccessRateMinimumHosts: wrapperspb.UInt32(2), SuccessRateRequestVolume: wrapperspb.UInt32(5),
				SuccessRateStdevFactor: wrapperspb.UInt32(500),
			})
		}
	}))
	_, stats := e.adminStats(t)
	podHandlers(t, e, statusPod(500), okPod("B"))
	untilEjected(t, e, stats, "outlier_detection.ejections_enforced_success_rate")
	wantStats(t, stats(), map[string]uint64{"outlier_detection.ejections_active": 1, "outlier_detection.ejections_enforced_failure_percentage": 0})
}

// TestOutlierFailurePercentage: failure_percentage_* ejects the pod
// failing at least the threshold's share of its requests
// (ejections_enforced_failure_percentage); Envoy's default enforcing of
// 0 would only count the detection.
func TestOutlierFailurePercentage(t *testing.T) {
	e := newEnv(t, resConfig(func(p *svcPort) {
		p.editCluster = func(c *cluster.Cluster) {
			c.OutlierDetection = noConsecutive(&cluster.OutlierDetection{
				EnforcingSuccessRate:          wrapperspb.UInt32(0),
				FailurePercentageThreshold:    wrapperspb.UInt32(50),
				FailurePercentageMinimumHosts: wrapperspb.UInt32(2), FailurePercentageRequestVolume: wrapperspb.UInt32(5),
				EnforcingFailurePercentage: wrapperspb.UInt32(100),
			})
		}
	}))
	_, stats := e.adminStats(t)
	podHandlers(t, e, statusPod(503), okPod("B"))
	untilEjected(t, e, stats, "outlier_detection.ejections_enforced_failure_percentage")
	wantStats(t, stats(), map[string]uint64{"outlier_detection.ejections_enforced_success_rate": 0})
}

// TestOutlierLocalOrigin: pod A accepts no connection. Without
// split_external_local_origin_errors its connect failures count as 5xx
// (consecutive_5xx ejects it); with the split they count as local-origin
// failures only (consecutive_local_origin_failure ejects it, the 5xx
// detector sees nothing).
func TestOutlierLocalOrigin(t *testing.T) {
	for _, tc := range []struct {
		name      string
		split     bool
		ejected   string
		untouched string
	}{
		{"not split", false, "outlier_detection.ejections_enforced_consecutive_5xx", "outlier_detection.ejections_detected_consecutive_local_origin_failure"},
		{"split", true, "outlier_detection.ejections_enforced_consecutive_local_origin_failure", "outlier_detection.ejections_detected_consecutive_5xx"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, resConfig(func(p *svcPort) {
				p.editCluster = func(c *cluster.Cluster) {
					c.OutlierDetection = &cluster.OutlierDetection{
						Consecutive_5Xx: wrapperspb.UInt32(2), ConsecutiveLocalOriginFailure: wrapperspb.UInt32(2),
						SplitExternalLocalOriginErrors: tc.split,
						BaseEjectionTime:               durationpb.New(time.Hour), MaxEjectionPercent: wrapperspb.UInt32(50),
					}
				}
			}))
			_, stats := e.adminStats(t)
			// Pod B only: nothing listens on pod A's port.
			srv := &http.Server{Handler: okPod("B")}
			ln, err := net.Listen("tcp", netip.AddrPortFrom(e.ip(12), 8181).String())
			if err != nil {
				t.Fatal(err)
			}
			go srv.Serve(ln)
			t.Cleanup(func() { srv.Close() })
			untilEjected(t, e, stats, tc.ejected)
			wantStats(t, stats(), map[string]uint64{tc.untouched: 0})
		})
	}
}

// TestOutlierPanicThreshold: with both pods ejected, Envoy's default
// panic threshold (50%) balances over them anyway, while Istio's 0 (a
// DestinationRule without minHealthPercent) answers 503 no healthy
// upstream.
func TestOutlierPanicThreshold(t *testing.T) {
	for _, tc := range []struct {
		name     string
		panic    *typev3.Percent
		wantBody string
	}{
		{"envoy's default", nil, ""},
		{"istio's 0", &typev3.Percent{}, "no healthy upstream"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, resConfig(func(p *svcPort) {
				p.editCluster = func(c *cluster.Cluster) {
					c.OutlierDetection = &cluster.OutlierDetection{
						Consecutive_5Xx: wrapperspb.UInt32(1), BaseEjectionTime: durationpb.New(time.Hour), MaxEjectionPercent: wrapperspb.UInt32(100),
					}
					if tc.panic != nil {
						c.CommonLbConfig = &cluster.Cluster_CommonLbConfig{HealthyPanicThreshold: tc.panic}
					}
				}
			}))
			_, stats := e.adminStats(t)
			podHandlers(t, e, statusPod(503), statusPod(503))
			c := e.resClient(t)
			c.do(t, get(t, "/"))
			c.do(t, get(t, "/"))
			wantStats(t, stats(), map[string]uint64{"outlier_detection.ejections_active": 2})
			resp := c.do(t, get(t, "/"))
			if got := body(resp); resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(got, tc.wantBody) || (tc.wantBody == "") != (got == "") {
				t.Errorf("with both pods ejected: got %d %q, want 503 %q", resp.StatusCode, got, tc.wantBody)
			}
		})
	}
}

// TestOutlierTCP: tcp_proxy picks through outlier detection and feeds
// it: pod A accepts no connection on the TCP port, its connect failure
// counts as a 5xx (no split) and ejects it; the connections after all
// reach pod B.
func TestOutlierTCP(t *testing.T) {
	e := newEnv(t, func(ip func(byte) netip.Addr) *waypointConfig {
		w := resConfig(nil)(ip)
		w.ports = append(w.ports, svcPort{port: 94, target: 9494, editTCPCluster: func(c *cluster.Cluster) {
			c.OutlierDetection = &cluster.OutlierDetection{
				Consecutive_5Xx: wrapperspb.UInt32(1), BaseEjectionTime: durationpb.New(time.Hour), MaxEjectionPercent: wrapperspb.UInt32(50),
			}
		}})
		return w
	})
	testutil.ServeTCP(t, netip.AddrPortFrom(e.ip(12), 9494).String(), testutil.Greet("B"))
	_, stats := e.adminStats(t)
	tcpCluster := "cluster." + clusterName("tcp", 94, host) + "."
	greeting := func() string {
		c := e.tunnel(t, clientID, e.vip(94))
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		return line
	}
	got := map[string]int{}
	for range 6 {
		got[greeting()]++
	}
	// Round robin: A first (fails, ejected), then B only.
	if got["B\n"] != 5 || got[""] != 1 {
		t.Errorf("greetings: got %v, want B 5 times and one failure", got)
	}
	if n := stats()[tcpCluster+"outlier_detection.ejections_enforced_consecutive_5xx"]; n != 1 {
		t.Errorf("ejections_enforced_consecutive_5xx: got %d, want 1", n)
	}
}
