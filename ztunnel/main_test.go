package ztunnel_test

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestMain fails the run if goroutines of ours or file descriptors
// outlive the tests: every tunnel the tests start must shut down
// completely.
func TestMain(m *testing.M) {
	before := openFDs()
	code := m.Run()
	if code == 0 {
		if leaked := leakedGoroutines(5 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines left after the tests: got\n%s\nwant none\n", leaked)
			code = 1
		}
		if extra := newFDs(before, 5*time.Second); len(extra) > 0 {
			fmt.Fprintf(os.Stderr, "file descriptors left after the tests: got %v, want none\n", extra)
			code = 1
		}
	}
	os.Exit(code)
}

// openFDs maps each open descriptor of the process to what it refers to.
func openFDs() map[string]string {
	out := map[string]string{}
	entries, _ := os.ReadDir("/proc/self/fd")
	for _, e := range entries {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err == nil {
			out[e.Name()] = target
		}
	}
	return out
}

// newFDs waits up to limit for descriptors opened since before to close,
// and lists those that do not.
func newFDs(before map[string]string, limit time.Duration) []string {
	deadline := time.Now().Add(limit)
	for {
		var extra []string
		for fd, target := range openFDs() {
			if before[fd] != target && !strings.HasPrefix(target, "anon_inode:") {
				extra = append(extra, fd+" -> "+target)
			}
		}
		if len(extra) == 0 || time.Now().After(deadline) {
			return extra
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// leakedGoroutines waits up to limit for goroutines running Ambit code to
// end, and returns the stacks of those that do not.
func leakedGoroutines(limit time.Duration) string {
	deadline := time.Now().Add(limit)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaked []string
		for g := range strings.SplitSeq(string(buf), "\n\n") {
			if strings.Contains(g, "github.com/ambitmesh/ambit") && !strings.Contains(g, "leakedGoroutines") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
