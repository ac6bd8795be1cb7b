package waypoint

import (
	"math"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// Outlier detection as Envoy's (arch_overview/upstream/outlier): each
// try's outcome is fed to its endpoint. Consecutive 5xx, consecutive
// gateway failures (502, 503, 504) and, with
// split_external_local_origin_errors, consecutive local-origin failures
// (the waypoint's own: connect failure, reset, timeout) eject at once;
// without the split a local-origin failure counts as a 503. Success rate
// and failure percentage are judged once per interval over the
// interval's tries (the first try to end after the interval judges it:
// an idle cluster needs no judging). An ejected endpoint is out for
// base_ejection_time times its ejection count (plus up to
// max_ejection_time_jitter), at most max_ejection_time; each interval it
// spends back in service lowers the count by one. At most
// max_ejection_percent of the endpoints are out at once (one always may
// be with always_eject_one_host); pick's panic threshold decides when
// ejected endpoints are used anyway.

// outcome is how one try ended.
type outcome struct {
	status int
	// local: the waypoint's own failure to reach the endpoint
	// (connect failure, reset, timeout).
	local bool
}

// window counts one interval's tries of an endpoint.
type window struct {
	// external: answers (with the split) or all tries (without);
	// local: all tries, failed ones those with a local-origin failure.
	extTotal, extFail, locTotal, locFail int
}

// ejection kinds, in Envoy's stat names.
type ejectKind int

const (
	kind5xx ejectKind = iota
	kindGateway
	kindLocal
	kindSuccessRate
	kindLocalSuccessRate
	kindFailurePercent
	kindLocalFailurePercent
	numKinds
)

var kindNames = [numKinds]string{"consecutive_5xx", "consecutive_gateway_failure", "consecutive_local_origin_failure",
	"success_rate", "local_origin_success_rate", "failure_percentage", "local_origin_failure_percentage"}

// outlierCounters are outlier detection's per-kind counters (the two
// consecutive kinds Istio emits keep their own in clusterCounters) and
// the load balancer's panic and no-healthy counts.
type outlierCounters struct {
	detected, enforced [numKinds]atomic.Uint64
	panic, noHealthy   atomic.Uint64
}

// outlierStats are the statistics of outlierCounters.
func outlierStats() []*clusterStat {
	var st []*clusterStat
	for k := kindLocal; k < numKinds; k++ {
		st = append(st,
			counter("outlier_detection.ejections_enforced_"+kindNames[k], "Enforced "+kindNames[k]+" ejections.",
				func(c *clusterCounters) *atomic.Uint64 { return &c.od.enforced[k] }),
			counter("outlier_detection.ejections_detected_"+kindNames[k], "Detected "+kindNames[k]+" ejections (even if not enforced).",
				func(c *clusterCounters) *atomic.Uint64 { return &c.od.detected[k] }))
	}
	return append(st,
		counter("lb_healthy_panic", "Requests balanced in panic mode (too few healthy endpoints).", func(c *clusterCounters) *atomic.Uint64 { return &c.od.panic }),
		counter("upstream_cx_none_healthy", "Times no endpoint was healthy.", func(c *clusterCounters) *atomic.Uint64 { return &c.od.noHealthy }))
}

// detected and enforced count one ejection of kind k.
func (st *clusterCounters) detected(k ejectKind) {
	switch k {
	case kind5xx:
		st.ejDetected5xx.Add(1)
	case kindGateway:
		st.ejDetectedGw.Add(1)
	default:
		st.od.detected[k].Add(1)
	}
}

func (st *clusterCounters) enforced(k ejectKind) {
	st.ejEnforced.Add(1)
	switch k {
	case kind5xx:
		st.ejEnforced5xx.Add(1)
	case kindGateway:
		st.ejEnforcedGw.Add(1)
	default:
		st.od.enforced[k].Add(1)
	}
}

// enforcing is the percentage of kind k's detections that eject.
func enforcing(od *config.OutlierDetection, k ejectKind) int {
	return [numKinds]int{od.Enforcing5xx, od.EnforcingGatewayFailure, od.EnforcingLocalOriginFailure,
		od.EnforcingSuccessRate, od.EnforcingLocalOriginSuccessRate,
		od.EnforcingFailurePercentage, od.EnforcingFailurePercentageLocalOrigin}[k]
}

// report feeds one try's outcome to outlier detection.
func (p *Proxy) report(cl *config.Cluster, cs *clusterState, ep *config.Endpoint, o outcome) {
	od := cl.Outlier
	if od == nil {
		return
	}
	now := time.Now()
	h := cs.host(ep)
	status := o.status
	if o.local && !od.SplitLocalOrigin {
		status = 503 // (Envoy maps a local-origin failure to a 5xx)
	}
	h.mu.Lock()
	var found []ejectKind
	already := now.Before(h.ejectedUntil)
	bump := func(n *int, failed bool, limit int, k ejectKind) {
		if !failed {
			*n = 0
			return
		}
		*n++
		if limit > 0 && *n == limit && !already {
			found = append(found, k)
		}
	}
	if o.local && od.SplitLocalOrigin {
		bump(&h.consecLocal, true, od.ConsecutiveLocalOriginFailure, kindLocal)
	} else {
		if od.SplitLocalOrigin {
			h.consecLocal = 0 // reached: a local-origin success
		}
		bump(&h.consec5xx, status >= 500, od.Consecutive5xx, kind5xx)
		bump(&h.consecGw, status == 502 || status == 503 || status == 504, od.ConsecutiveGatewayFailure, kindGateway)
	}
	w := &h.win
	if !o.local || !od.SplitLocalOrigin {
		w.extTotal++
		if status >= 500 {
			w.extFail++
		}
	}
	w.locTotal++
	if o.local {
		w.locFail++
	}
	h.mu.Unlock()
	for _, k := range found {
		cs.st.detected(k)
	}
	for _, k := range found {
		if rollPercent(float64(enforcing(od, k)) / 100) {
			if cs.eject(cl, h, k, now) {
				h.mu.Lock()
				h.consec5xx, h.consecGw, h.consecLocal = 0, 0, 0
				h.mu.Unlock()
			}
			break // one ejection per outcome
		}
	}
	cs.judge(cl, now)
}

// eject takes h out of service unless max_ejection_percent of the
// endpoints are out already (ejections_overflow).
func (cs *clusterState) eject(cl *config.Cluster, h *hostState, k ejectKind, now time.Time) bool {
	od := cl.Outlier
	ejected := 0
	for _, e := range cl.Endpoints {
		if eh := cs.host(e); eh != h && eh.ejected(now) {
			ejected++
		}
	}
	n := len(cl.Endpoints)
	allowed := n > 0 && 100*ejected < od.MaxEjectionPercent*n || od.AlwaysEjectOneHost && ejected == 0
	if !allowed {
		cs.st.ejOverflow.Add(1)
		return false
	}
	h.mu.Lock()
	if now.Before(h.ejectedUntil) {
		h.mu.Unlock()
		return false
	}
	// Each interval a host spent back in service since its last
	// ejection takes one off its ejection count.
	if h.ejections > 0 && od.Interval > 0 {
		h.ejections = max(0, h.ejections-int(now.Sub(h.ejectedUntil)/od.Interval))
	}
	h.ejections++
	h.ejectedUntil = now.Add(ejectionTime(od, h.ejections))
	h.mu.Unlock()
	cs.st.enforced(k)
	return true
}

// ejectionTime is how long the n-th ejection in a row lasts.
func ejectionTime(od *config.OutlierDetection, n int) time.Duration {
	d := od.BaseEjectionTime
	if n > 1 {
		d = time.Duration(min(int64(n), math.MaxInt64/int64(max(d, 1)))) * d
	}
	d = min(d, od.MaxEjectionTime)
	if j := od.MaxEjectionTimeJitter; j > 0 {
		d += time.Duration(rand.Int64N(int64(j)))
	}
	return d
}

// judge runs the interval's success-rate and failure-percentage
// detection once the interval is over, and starts the next.
func (cs *clusterState) judge(cl *config.Cluster, now time.Time) {
	od := cl.Outlier
	if !cs.odMu.TryLock() {
		return // another try judges it
	}
	defer cs.odMu.Unlock()
	if cs.odNext.IsZero() {
		cs.odNext = now.Add(od.Interval)
		return
	}
	if now.Before(cs.odNext) {
		return
	}
	cs.odNext = now.Add(od.Interval)
	hosts := make([]*hostState, len(cl.Endpoints))
	wins := make([]window, len(cl.Endpoints))
	for i, ep := range cl.Endpoints {
		h := cs.host(ep)
		h.mu.Lock()
		hosts[i], wins[i] = h, h.win
		h.win = window{}
		h.mu.Unlock()
	}
	ext := func(w window) (int, int) { return w.extTotal, w.extFail }
	loc := func(w window) (int, int) { return w.locTotal, w.locFail }
	var found []struct {
		i int
		k ejectKind
	}
	add := func(is []int, k ejectKind) {
		for _, i := range is {
			found = append(found, struct {
				i int
				k ejectKind
			}{i, k})
		}
	}
	add(successRateOutliers(od, wins, ext), kindSuccessRate)
	add(failurePercentOutliers(od, wins, ext), kindFailurePercent)
	if od.SplitLocalOrigin {
		add(successRateOutliers(od, wins, loc), kindLocalSuccessRate)
		add(failurePercentOutliers(od, wins, loc), kindLocalFailurePercent)
	}
	done := map[int]bool{}
	for _, f := range found {
		cs.st.detected(f.k)
		if done[f.i] || hosts[f.i].ejected(now) || !rollPercent(float64(enforcing(od, f.k))/100) {
			continue
		}
		if cs.eject(cl, hosts[f.i], f.k, now) {
			done[f.i] = true
		}
	}
}

// successRateOutliers are the endpoints whose success rate is below the
// mean less stdev times success_rate_stdev_factor/1000, among those with
// success_rate_request_volume tries, when at least
// success_rate_minimum_hosts have them.
func successRateOutliers(od *config.OutlierDetection, wins []window, count func(window) (int, int)) []int {
	var idx []int
	var rates []float64
	for i, w := range wins {
		total, fail := count(w)
		if total > 0 && total >= od.SuccessRateRequestVolume {
			idx = append(idx, i)
			rates = append(rates, 100*float64(total-fail)/float64(total))
		}
	}
	if len(idx) == 0 || len(idx) < od.SuccessRateMinimumHosts {
		return nil
	}
	var mean, variance float64
	for _, r := range rates {
		mean += r
	}
	mean /= float64(len(rates))
	for _, r := range rates {
		variance += (r - mean) * (r - mean)
	}
	stdev := math.Sqrt(variance / float64(len(rates)))
	threshold := mean - stdev*float64(od.SuccessRateStdevFactor)/1000
	var out []int
	for j, r := range rates {
		if r < threshold {
			out = append(out, idx[j])
		}
	}
	return out
}

// failurePercentOutliers are the endpoints failing at least
// failure_percentage_threshold percent of failure_percentage_request_volume
// tries or more, when at least failure_percentage_minimum_hosts have
// that many.
func failurePercentOutliers(od *config.OutlierDetection, wins []window, count func(window) (int, int)) []int {
	var idx []int
	for i, w := range wins {
		if total, _ := count(w); total > 0 && total >= od.FailurePercentageRequestVolume {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 || len(idx) < od.FailurePercentageMinimumHosts {
		return nil
	}
	var out []int
	for _, i := range idx {
		total, fail := count(wins[i])
		if 100*fail >= od.FailurePercentageThreshold*total {
			out = append(out, i)
		}
	}
	return out
}
