package origdst

import (
	"errors"
	"net"
	"testing"
)

// TestNotRedirected checks that a plain loopback connection, which no
// NAT rule touched, reports ErrNotRedirected rather than a bogus address.
// The redirected case is covered by the lab tests, which need root.
func TestNotRedirected(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ap, err := Get(s)
	if !errors.Is(err, ErrNotRedirected) {
		t.Errorf("Get(loopback conn): got %v, %v; want ErrNotRedirected", ap, err)
	}
	if _, err := Get(pipeConn{}); err == nil {
		t.Error("Get(non-socket): got nil error, want one")
	}
}

type pipeConn struct{ net.Conn }
