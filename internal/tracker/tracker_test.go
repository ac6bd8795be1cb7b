package tracker

import (
	"context"
	"errors"
	"testing"
)

// TestShutdownDrains: Shutdown asks each open item to stop, returns nil
// once they have all been removed, and refuses items added after it
// began.
func TestShutdownDrains(t *testing.T) {
	var tr Tracker[int]
	for i := range 3 {
		if !tr.Add(i) {
			t.Fatalf("Add(%d) before shutdown: got false, want true", i)
		}
	}
	stopped := map[int]bool{}
	err := tr.Shutdown(context.Background(), func(x int) {
		stopped[x] = true
		tr.Remove(x) // an item that ends when asked
	}, func(x int) { t.Errorf("kill(%d): got a call, want none (all ended in time)", x) })
	if err != nil {
		t.Errorf("Shutdown: got %v, want nil", err)
	}
	if len(stopped) != 3 {
		t.Errorf("items asked to stop: got %v, want 0, 1 and 2", stopped)
	}
	if tr.Add(9) {
		t.Error("Add after Shutdown: got true, want false")
	}
	if got := tr.Len(); got != 0 {
		t.Errorf("Len after Shutdown: got %d, want 0", got)
	}
}

// TestShutdownDeadline: items still open when ctx ends are killed, and
// Shutdown returns ctx's error once they are gone.
func TestShutdownDeadline(t *testing.T) {
	var tr Tracker[string]
	tr.Add("slow")
	tr.Add("stuck")
	ctx, cancel := context.WithCancel(context.Background())
	var killed []string
	err := tr.Shutdown(ctx, func(string) { cancel() }, func(x string) {
		killed = append(killed, x)
		tr.Remove(x)
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown: got %v, want context.Canceled", err)
	}
	if len(killed) != 2 {
		t.Errorf("killed: got %v, want both items", killed)
	}
}

// TestStop: Stop returns the open items and refuses new ones.
func TestStop(t *testing.T) {
	var tr Tracker[int]
	tr.Add(1)
	if got := tr.Stop(); len(got) != 1 || got[0] != 1 {
		t.Errorf("Stop: got %v, want [1]", got)
	}
	if tr.Add(2) {
		t.Error("Add after Stop: got true, want false")
	}
	tr.Remove(1)
	if err := tr.Shutdown(context.Background(), nil, nil); err != nil {
		t.Errorf("Shutdown with nothing open: got %v, want nil", err)
	}
}
