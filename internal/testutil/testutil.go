// Package testutil holds the helpers every Ambit test suite shares.
package testutil

import (
	"os"
	"testing"
)

// InCI reports whether the tests run in continuous integration, where
// nothing may be skipped for lack of privilege.
func InCI() bool { return os.Getenv("CI") != "" }

// RequireRoot marks a test that needs root (network namespaces, eBPF,
// iptables). Without root it skips with the reason locally and fails in CI,
// where a skipped privileged test would make a green run meaningless.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if InCI() {
		t.Fatal("this test needs root and CI runs as root: got euid", os.Geteuid(), "want 0")
	}
	t.Skip("needs root (network namespaces); run with sudo")
}
