package origdst

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/ambitmesh/ambit/internal/testutil"
)

// accepted dials addr with dial and returns the connection ln accepted
// for it; both ends close when the test ends.
func accepted(t *testing.T, ln net.Listener, dial testutil.Dial, addr string) net.Conn {
	t.Helper()
	c, err := dial(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestNotRedirected checks that a plain loopback connection, which no
// NAT rule touched, reports ErrNotRedirected rather than a bogus address.
// The redirected case is covered by the lab tests, which need root.
func TestNotRedirected(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var d net.Dialer
	ap, err := Get(accepted(t, ln, d.DialContext, ln.Addr().String()))
	if !errors.Is(err, ErrNotRedirected) {
		t.Errorf("Get(loopback conn): got %v, %v; want ErrNotRedirected", ap, err)
	}
	if _, err := Get(pipeConn{}); err == nil {
		t.Error("Get(non-socket): got nil error, want one")
	}
}

type pipeConn struct{ net.Conn }
