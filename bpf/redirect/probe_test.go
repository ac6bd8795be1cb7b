package redirect

import (
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ambitmesh/ambit/internal/testutil"
)

// TestProbeTCX: the probe says TCX exactly on kernels from 6.6 on.
func TestProbeTCX(t *testing.T) {
	testutil.RequireRoot(t)
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	release := unix.ByteSliceToString(u.Release[:])
	fields := strings.FieldsFunc(release, func(r rune) bool { return r < '0' || r > '9' })
	major, _ := strconv.Atoi(fields[0])
	minor, _ := strconv.Atoi(fields[1])
	want := major > 6 || major == 6 && minor >= 6
	got, err := ProbeTCX()
	if err != nil {
		t.Fatalf("ProbeTCX on %s: %v", release, err)
	}
	if got != want {
		t.Errorf("ProbeTCX on %s: got %v, want %v", release, got, want)
	}
}
