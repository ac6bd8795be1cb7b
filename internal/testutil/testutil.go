// Package testutil holds the helpers every Ambit test suite shares.
package testutil

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
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

// Dial is how a test's client connects: net.Dialer's DialContext, or a
// network namespace's.
type Dial func(ctx context.Context, network, addr string) (net.Conn, error)

// Greeting dials addr and returns the connection and the name the
// server greeted it with (a Greet handler's).
func Greeting(ctx context.Context, dial Dial, addr string) (net.Conn, string, error) {
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, "", err
	}
	name, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		c.Close()
		return nil, "", fmt.Errorf("read greeting from %s: %w", addr, err)
	}
	return c, strings.TrimSuffix(name, "\n"), nil
}

// Handover checks a listener handover on addr as a tunnel's upgrade
// makes it. old is the listener that serves first (Handover serves it as
// Greet("old")); a connection is held on it; join starts the listener
// beside it and returns it (Handover serves it as Greet("new")); every
// new connection must go to the new one; then old closes while four
// clients keep connecting, and none of their connections may be lost;
// last, the held connection must still reach the old server.
func Handover(t *testing.T, ctx context.Context, dial Dial, addr string, old net.Listener, join func() net.Listener) {
	t.Helper()
	expect := func(when, want string) {
		t.Helper()
		c, got, err := Greeting(ctx, dial, addr)
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		c.Close()
		if got != want {
			t.Fatalf("%s: accepted by %q, want %q", when, got, want)
		}
	}
	oldDone := ServeListener(old, Greet("old"))
	held, name, err := Greeting(ctx, dial, addr)
	if err != nil {
		t.Fatalf("first connection: %v", err)
	}
	defer held.Close()
	if name != "old" {
		t.Fatalf("first connection accepted by %q, want old", name)
	}

	ServeListener(join(), Greet("new"))
	for i := range 50 {
		expect(fmt.Sprintf("connection %d after the new listener joined", i), "new")
	}

	stop := make(chan struct{})
	var dialers sync.WaitGroup
	var mu sync.Mutex
	var lost []error
	for range 4 {
		dialers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, _, err := Greeting(ctx, dial, addr)
				if err != nil {
					mu.Lock()
					lost = append(lost, err)
					mu.Unlock()
					continue
				}
				c.Close()
			}
		})
	}
	old.Close()
	oldDone.Wait()
	for i := range 20 {
		expect(fmt.Sprintf("connection %d after the old listener closed", i), "new")
	}
	close(stop)
	dialers.Wait()
	if len(lost) > 0 {
		t.Errorf("connections lost while the old listener closed: got %d (first: %v), want none", len(lost), lost[0])
	}

	if _, err := held.Write([]byte("ping")); err != nil {
		t.Fatalf("write on the held connection: %v", err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(held, buf); err != nil || string(buf) != "ping" {
		t.Errorf("held connection after the handover: got %q, %v; want ping echoed", buf, err)
	}
}
