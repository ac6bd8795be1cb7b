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
	// A live lab whose directory is elsewhere (its process had another
	// TMPDIR) is known by its registry entry; a dead owner's entry goes.
	const elsewhere = "e15e00"
	if err := register(elsewhere, os.Getpid()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(filepath.Join(registryDir, elsewhere)) })
	if _, err := netns.Create(NamePrefix + elsewhere + "-node1"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Delete(NamePrefix + elsewhere + "-node1") })
	deadEntry := filepath.Join(registryDir, "deadbe")
	if err := os.WriteFile(deadEntry, []byte(strconv.Itoa(dead.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(deadEntry) })
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
	if _, err := netns.Open(NamePrefix + elsewhere + "-node1"); err != nil {
		t.Errorf("live lab %s registered with its directory elsewhere: namespace removed (%v), want left alone", elsewhere, err)
	}
	if _, err := os.Stat(deadEntry); err == nil {
		t.Errorf("registry entry %s of a dead owner: still there", deadEntry)
	}
	for _, l := range labs {
		_, err := netns.Open(NamePrefix + l.id + "-node1")
		if gone := err != nil; gone != l.stale {
			t.Errorf("lab %s (owner %d): namespace gone = %v, want %v", l.id, l.owner, gone, l.stale)
		}
	}
}
