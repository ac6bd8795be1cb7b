// Package testutil holds the helpers every Ambit test suite shares.
package testutil

import (
	"net"
	"net/netip"
	"os"
	"sync"
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
	ServeListener(ln, handle)
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// ServeListener calls handle for each connection ln accepts, in its own
// goroutine, closing the connection when handle returns. The group ends
// when ln is closed (not waiting for the connections).
func ServeListener(ln net.Listener, handle func(net.Conn)) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Go(func() {
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
	})
	return &wg
}

// Greet is a connection handler that writes name and a newline, then
// echoes what it reads until the connection ends: a server that says
// which of several listeners took the connection.
func Greet(name string) func(net.Conn) {
	return func(c net.Conn) {
		if _, err := c.Write([]byte(name + "\n")); err != nil {
			return
		}
		buf := make([]byte, 512)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
	}
}
