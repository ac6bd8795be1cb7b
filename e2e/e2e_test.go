// Package e2e holds Ambit's end-to-end suites. They run in the lab
// (internal/lab): a real kube-apiserver, real CNI plugins, network
// namespaces for nodes and pods. They need root.
package e2e

import (
	"log/slog"
	"os"
	"sync"
	"testing"

	"github.com/ambitmesh/ambit/e2e/internal/labmesh"
	"github.com/ambitmesh/ambit/internal/kubelog"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/internal/testutil"
)

// routeKlog routes klog once per test binary (klog is global).
var routeKlog sync.Once

// startLab starts a lab for the test and tears it down after, checking
// that nothing is left behind. On failure it prints the lab's logs.
func startLab(t testing.TB, cfg lab.Config) *lab.Lab {
	t.Helper()
	testutil.RequireRoot(t)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	// The lab's own watches (pods, service accounts) log through
	// client-go: into the test's output at slog levels, without the errors
	// of watches cancelled when a wait ends.
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
	cfg.Binaries = bins
	cfg.Log = log
	l := labmesh.StartLab(t, cfg)
	return l
}
