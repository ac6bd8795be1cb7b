package lab

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/ambitmesh/ambit/internal/netns"
	"github.com/ambitmesh/ambit/internal/testutil"
)

// TestCleanStale: a lab whose owner process is gone is removed; a lab
// whose owner lives is left alone.
func TestCleanStale(t *testing.T) {
	testutil.RequireRoot(t)
	// A process that has exited: its pid is free (or reused, unlikely
	// within the test).
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	labs := []struct {
		id    string
		owner int
		stale bool
	}{
		{"deadbe", dead.Process.Pid, true},
		{"a11ve0", os.Getpid(), false},
	}
	for _, l := range labs {
		dir, err := os.MkdirTemp("", "ambit-lab-"+l.id+"-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(l.owner)), 0o644); err != nil {
			t.Fatal(err)
		}
		name := NamePrefix + l.id + "-node1"
		if _, err := netns.Create(name); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { netns.Delete(name) })
	}
	// Another test's namespace with the prefix but no lab id is not a lab.
	other := NamePrefix + "othertest-" + strconv.Itoa(os.Getpid())
	if _, err := netns.Create(other); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Delete(other) })
	if err := CleanStale(); err != nil {
		t.Fatal(err)
	}
	if _, err := netns.Open(other); err != nil {
		t.Errorf("namespace %s of another test: got removed (%v), want left alone", other, err)
	}
	for _, l := range labs {
		_, err := netns.Open(NamePrefix + l.id + "-node1")
		if gone := err != nil; gone != l.stale {
			t.Errorf("lab %s (owner %d): namespace gone = %v, want %v", l.id, l.owner, gone, l.stale)
		}
	}
}
