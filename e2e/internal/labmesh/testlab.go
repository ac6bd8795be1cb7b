package labmesh

import (
	"testing"

	"github.com/ambitmesh/ambit/internal/lab"
)

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
