package waypoint_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/waypoint"
)

// TestRunStatic: the command's development mode, a static config file
// (istiod's golden service waypoint) and a file-based test CA: ready,
// serving the config dump and (admin only) pprof, ended by
// /quitquitquit.
func TestRunStatic(t *testing.T) {
	ca, err := identity.NewCA(identity.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := ca.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	ip := addrs()(50)
	at := func(port uint16) string { return netip.AddrPortFrom(ip, port).String() }
	listening := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- waypoint.Run(context.Background(), waypoint.Options{
			StaticConfig: "testdata/istiod/service.json", FakeCADir: dir, TrustDomain: identity.DefaultTrustDomain,
			Node:  waypoint.Node{PodName: "reviews-waypoint-1", PodNamespace: "shop", ServiceAccount: "reviews-waypoint"},
			HBONE: at(15008), Admin: at(15000), Metrics: at(15020), Readiness: at(15021), Drain: time.Second,
			Log: slog.New(slog.DiscardHandler), OnListening: func() { close(listening) },
		})
	}()
	select {
	case <-listening:
	case err := <-done:
		t.Fatalf("run: %v", err)
	}
	get := func(url string) int {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get("http://" + at(15021) + "/healthz/ready"); code != 200 {
		t.Errorf("readiness: got %d, want 200", code)
	}
	if code := get("http://" + at(15000) + "/config_dump"); code != 200 {
		t.Errorf("config_dump: got %d, want 200", code)
	}
	if code := get("http://" + at(15000) + "/debug/pprof/heap"); code != 200 {
		t.Errorf("admin /debug/pprof/heap: got %d, want 200", code)
	}
	if code := get("http://" + at(15020) + "/debug/pprof/heap"); code != 404 {
		t.Errorf("metrics port /debug/pprof/heap: got %d, want 404 (profiles on the loopback admin only)", code)
	}
	// The metrics port serves the process's own metrics beside Istio's,
	// as ztunnel's does: the GC target is the process's (the command
	// sets 50 unless GOGC says otherwise; this test's is Go's).
	mresp, err := http.Get("http://" + at(15020) + "/stats/prometheus")
	if err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(mresp.Body)
	mresp.Body.Close()
	if err != nil {
		t.Fatalf("parse metrics: %v", err)
	}
	gogc := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(gogc)
	for name, want := range map[string]float64{"go_gc_gogc_percent": float64(gogc[0].Value.Uint64()), "process_resident_memory_bytes": -1, "go_memstats_heap_inuse_bytes": -1} {
		mf := mfs[name]
		if mf == nil || len(mf.GetMetric()) != 1 {
			t.Errorf("metric %s: got %v, want one gauge", name, mf)
			continue
		}
		got := mf.GetMetric()[0].GetGauge().GetValue()
		if (want >= 0 && got != want) || (want < 0 && got <= 0) {
			t.Errorf("metric %s: got %v, want %v (-1: above zero)", name, got, want)
		}
	}
	resp, err := http.Post("http://"+at(15000)+"/quitquitquit", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run after quitquitquit: got %v, want nil", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not end after /quitquitquit")
	}
}
