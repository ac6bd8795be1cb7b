package hbone

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// rawPair is a loopback TCP connection, one end through direct.
func rawPair(t *testing.T) (net.Conn, *net.TCPConn) {
	t.Helper()
	a, b := tcpPair(t)
	rc := direct(a)
	if _, ok := rc.(*rawConn); !ok {
		t.Fatalf("direct(%T) = %T, want *rawConn", a, rc)
	}
	return rc, b.(*net.TCPConn)
}

func TestRawConnReadWrite(t *testing.T) {
	c, peer := rawPair(t)
	// More than the socket buffers hold, so that writes meet EAGAIN and
	// wait for the reader.
	want := bytes.Repeat([]byte("0123456789abcdef"), 1<<18)
	werr := make(chan error, 1)
	go func() {
		n, err := c.Write(want)
		if err == nil && n != len(want) {
			err = errors.New("short write")
		}
		werr <- err
	}()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(peer, got); err != nil {
		t.Fatalf("peer read: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("peer read other bytes than were written")
	}

	if _, err := peer.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("read: %q, %v; want pong", buf[:n], err)
	}
	if n, err := c.Read(nil); n != 0 || err != nil {
		t.Errorf("read of nothing: %d, %v; want 0, nil", n, err)
	}
	peer.CloseWrite()
	if n, err := c.Read(buf); n != 0 || err != io.EOF {
		t.Errorf("read after the peer's FIN: %d, %v; want 0, EOF", n, err)
	}
}

func TestRawConnDeadline(t *testing.T) {
	c, _ := rawPair(t)
	if err := c.SetReadDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past its deadline: %v; want a timeout", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" || oe.Addr == nil {
		t.Errorf("read past its deadline: %#v; want a net.OpError of op read naming the peer", err)
	}
	// A blocked read is released by a deadline set while it waits.
	c.SetReadDeadline(time.Time{})
	rerr := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		rerr <- err
	}()
	c.SetReadDeadline(time.Now())
	if err := <-rerr; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("blocked read: %v; want the deadline's error", err)
	}
}

func TestRawConnPeerReset(t *testing.T) {
	c, peer := rawPair(t)
	// Closed with a zero linger, the peer answers with a reset.
	peer.SetLinger(0)
	peer.Close()
	_, err := c.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read from a reset peer: %v; want ECONNRESET", err)
	}
	_, err = c.Write(make([]byte, 1024))
	if !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("write to a reset peer: %v; want EPIPE or ECONNRESET", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "write" {
		t.Errorf("write to a reset peer: %#v; want a net.OpError of op write", err)
	}
}

func TestDirectOtherConns(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := direct(a); got != a {
		t.Errorf("direct(pipe) = %T, want the pipe itself", got)
	}
}
