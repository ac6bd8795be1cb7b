// Package memlimit sets the Go runtime's soft memory limit from the
// container's memory limit (cgroup v2 memory.max, or v1
// memory.limit_in_bytes), so that the garbage collector works harder
// before the kernel's OOM killer does. An explicit GOMEMLIMIT wins.
package memlimit

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// Files where the container's limit is found, cgroup v2 first.
var Files = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// ErrNoLimit is returned when the process runs without a memory limit.
var ErrNoLimit = errors.New("no memory limit")

// Read returns the first limit found in files, in bytes.
func Read(files []string) (int64, error) {
	for _, f := range files {
		data, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("read memory limit: %w", err)
		}
		v := strings.TrimSpace(string(data))
		if v == "max" {
			return 0, ErrNoLimit
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("read memory limit %s: %q is not a number of bytes", f, v)
		}
		// cgroup v1 reports "no limit" as a huge page-aligned number.
		if n <= 0 || n >= 1<<62 {
			return 0, ErrNoLimit
		}
		return n, nil
	}
	return 0, ErrNoLimit
}

// Set sets the soft limit to ratio of the container's limit, unless
// GOMEMLIMIT is set, and returns the limit it set (0 when it set none).
func Set(ratio float64) (int64, error) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return 0, nil
	}
	n, err := Read(Files)
	if err != nil {
		return 0, err
	}
	limit := int64(float64(n) * ratio)
	debug.SetMemoryLimit(limit)
	return limit, nil
}
