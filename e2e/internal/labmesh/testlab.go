package labmesh

import (
	"context"
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
