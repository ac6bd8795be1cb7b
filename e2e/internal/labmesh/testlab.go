package labmesh

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"testing"

	"github.com/ambitmesh/ambit/internal/kubelog"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/internal/testutil"
)

// routeKlog routes klog (global) once per test binary.
var routeKlog sync.Once

// StartRootLab is how an end-to-end suite starts its lab: it needs root
// (testutil.RequireRoot), logs at level to stderr, with client-go's logs
// (the lab's own watches) routed there at slog levels without the errors
// of watches cancelled when a wait ends, builds or finds the lab's
// binaries (kube-router too with cfg.NetworkPolicy), and starts the lab
// with cfg and them (StartLab).
func StartRootLab(t testing.TB, cfg lab.Config, level slog.Level) *lab.Lab {
	t.Helper()
	testutil.RequireRoot(t)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	routeKlog.Do(func() { kubelog.Route(log.Handler()) })
	bins, err := lab.EnsureBinaries(t.Context(), lab.BuildOptions{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NetworkPolicy {
		if bins.KubeRouter, err = lab.EnsureKubeRouter(t.Context(), lab.BuildOptions{Log: log}); err != nil {
			t.Fatal(err)
		}
	}
	cfg.Binaries, cfg.Log = bins, log
	return StartLab(t, cfg)
}

// StartLab starts a lab with cfg (its Binaries set) for the test t and
// closes it when the test ends: after a failure it logs the lab's last
// lines, and it fails the test if Close leaves anything behind.
func StartLab(t testing.TB, cfg lab.Config) *lab.Lab {
	t.Helper()
	l, err := lab.Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("lab logs:\n%s", l.Logs(60))
		}
		if err := l.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
		left, err := lab.Leftovers(l.ID)
		if err != nil {
			t.Errorf("check lab leftovers: %v", err)
		}
		if len(left) > 0 {
			t.Errorf("after Close: got leftovers %v, want none", left)
		}
	})
	return l
}

// StartMesh runs Ambit on l for the test t: istiod with opts, then the
// node agents and ztunnels on every node. After a failure it logs the
// last lines of istiod and of each ztunnel.
func StartMesh(t testing.TB, ctx context.Context, l *lab.Lab, opts IstiodOptions) *Mesh {
	t.Helper()
	m, err := New(l)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		if p := m.Istiod(); p != nil {
			t.Logf("istiod:\n%s", p.Logs(60))
		}
		for _, n := range l.Nodes {
			if p := m.Ztunnel(n); p != nil {
				t.Logf("ztunnel on %s:\n%s", n.Name, p.Logs(60))
			}
		}
	})
	if err := m.StartIstiod(ctx, opts); err != nil {
		t.Fatal(err)
	}
	if err := m.StartAgents(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.StartZtunnels(ctx); err != nil {
		t.Fatal(err)
	}
	return m
}
