// Package testutil holds the helpers every Ambit test suite shares.
package testutil

import (
	"net"
	"net/netip"
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

// ServeTCP listens on addr ("127.0.0.1:0" for any free port) until the
// test ends and calls handle for each connection in its own goroutine,
// closing the connection when handle returns. It returns the address
// listened on.
func ServeTCP(tb testing.TB, addr string, handle func(net.Conn)) netip.AddrPort {
	tb.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}
