package waypoint

import (
	"slices"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// TestEjectionTime: the n-th ejection in a row lasts base_ejection_time
// times n, at most max_ejection_time.
func TestEjectionTime(t *testing.T) {
	od := &config.OutlierDetection{BaseEjectionTime: 10 * time.Second, MaxEjectionTime: 25 * time.Second}
	for n, want := range map[int]time.Duration{1: 10 * time.Second, 2: 20 * time.Second, 3: 25 * time.Second, 1 << 40: 25 * time.Second} {
		if got := ejectionTime(od, n); got != want {
			t.Errorf("ejection %d: got %v, want %v", n, got, want)
		}
	}
}

// TestEjectionMultiplier: an endpoint ejected again soon after its
// ejection ends is out longer; one that stayed in service for intervals
// since has its count lowered by one per interval.
func TestEjectionMultiplier(t *testing.T) {
	ep := &config.Endpoint{Listener: "l", ID: "a"}
	cl := &config.Cluster{Endpoints: []*config.Endpoint{ep, {Listener: "l", ID: "b"}}, Outlier: &config.OutlierDetection{
		Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionTime: time.Hour, MaxEjectionPercent: 50}}
	cs := &clusterState{hosts: map[string]*hostState{}}
	h := cs.host(ep)
	now := time.Now()
	var got []time.Duration
	for _, gap := range []time.Duration{0, 0, 0, 25 * time.Second} {
		// gap: time in service since the last ejection ended.
		if !h.ejectedUntil.IsZero() {
			now = h.ejectedUntil.Add(gap)
		}
		if !cs.eject(cl, h, kind5xx, now) {
			t.Fatal("eject refused")
		}
		got = append(got, h.ejectedUntil.Sub(now))
	}
	want := []time.Duration{30 * time.Second, 60 * time.Second, 90 * time.Second, 60 * time.Second}
	if !slices.Equal(got, want) {
		t.Errorf("ejection times: got %v, want %v", got, want)
	}
	// max_ejection_percent 50 of two: the other endpoint stays.
	if cs.eject(cl, cs.host(cl.Endpoints[1]), kind5xx, now) {
		t.Error("second ejection of two endpoints at 50%: allowed, want refused")
	}
	if got := cs.st.ejOverflow.Load(); got != 1 {
		t.Errorf("ejections_overflow: got %d, want 1", got)
	}
}

// TestSuccessRateOutliers: Envoy's success-rate rule over one interval.
func TestSuccessRateOutliers(t *testing.T) {
	od := &config.OutlierDetection{SuccessRateMinimumHosts: 3, SuccessRateRequestVolume: 10, SuccessRateStdevFactor: 1000}
	w := func(total, fail int) window { return window{extTotal: total, extFail: fail} }
	ext := func(w window) (int, int) { return w.extTotal, w.extFail }
	for _, tc := range []struct {
		name string
		wins []window
		want []int
	}{
		{"one low", []window{w(100, 0), w(100, 0), w(100, 0), w(100, 60)}, []int{3}},
		{"all alike", []window{w(100, 10), w(100, 10), w(100, 10)}, nil},
		{"too few with volume", []window{w(100, 0), w(100, 0), w(9, 9)}, nil},
	} {
		if got := successRateOutliers(od, tc.wins, ext); !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestPickPriority: the balancer sends to the highest priority (Istio's
// locality failover puts other localities at lower ones) while it has
// an endpoint not ejected, then to the next.
func TestPickPriority(t *testing.T) {
	a := &config.Endpoint{Listener: "l", ID: "a"}
	b := &config.Endpoint{Listener: "l", ID: "b", Priority: 1}
	c := &config.Endpoint{Listener: "l", ID: "c", Priority: 1}
	cl := &config.Cluster{Endpoints: []*config.Endpoint{a, b, c}, Prioritized: true, Outlier: &config.OutlierDetection{
		Interval: 10 * time.Second, BaseEjectionTime: time.Minute, MaxEjectionTime: time.Hour, MaxEjectionPercent: 100}}
	cs := &clusterState{hosts: map[string]*hostState{}}
	p := &Proxy{}
	for range 4 {
		if got := p.pick(cl, cs, nil, false); got != a {
			t.Fatalf("pick with priority 0 healthy: got %s, want a", got.ID)
		}
	}
	if !cs.eject(cl, cs.host(a), kind5xx, time.Now()) {
		t.Fatal("eject a refused")
	}
	seen := map[string]bool{}
	for range 4 {
		seen[p.pick(cl, cs, nil, false).ID] = true
	}
	if len(seen) != 2 || !seen["b"] || !seen["c"] {
		t.Errorf("picks with priority 0 ejected: got %v, want b and c", seen)
	}
}
