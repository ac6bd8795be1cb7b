// Package e2e holds Ambit's end-to-end suites. They run in the lab
// (internal/lab): a real kube-apiserver, real CNI plugins, network
// namespaces for nodes and pods. They need root.
package e2e

import (
	"log/slog"
	"testing"

	"github.com/ambitmesh/ambit/e2e/internal/labmesh"
	"github.com/ambitmesh/ambit/internal/lab"
)

// startLab starts a lab for the test and tears it down after, checking
// that nothing is left behind. On failure it prints the lab's logs.
func startLab(t testing.TB, cfg lab.Config) *lab.Lab {
	t.Helper()
	return labmesh.StartRootLab(t, cfg, slog.LevelInfo)
}
