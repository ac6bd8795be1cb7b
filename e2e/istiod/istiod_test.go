// Package istiod runs istiod's server (istiod/server) in the lab
// (internal/lab), in process, against a real kube-apiserver with pods
// made by the kubelet stand-in: workload discovery as a delta xDS client
// sees it, and the CA's authorization of ztunnels and workloads. They
// need root.
package istiod

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/e2e/internal/labmesh"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/istiod/server"
)

// startLab starts a lab of the test's own (no test sees another's
// objects), creates the namespaces in it, and returns it with a context
// that ends after timeout or when the test ends.
func startLab(t *testing.T, timeout time.Duration, namespaces ...string) (*lab.Lab, context.Context) {
	t.Helper()
	l := labmesh.StartRootLab(t, lab.Config{Nodes: 2}, slog.LevelWarn)
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	t.Cleanup(cancel)
	for _, ns := range namespaces {
		if err := l.CreateNamespace(ctx, ns, nil); err != nil {
			t.Fatal(err)
		}
	}
	return l, ctx
}

// warnLog is the log of what these tests run in process (istiod's
// server, the MeshConfig watcher): warnings and errors, on stderr.
func warnLog() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// runServer runs s until the test ends, then stops it and checks that
// it stopped cleanly.
func runServer(t *testing.T, ctx context.Context, s *server.Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("istiod run: %v", err)
		}
	})
}
