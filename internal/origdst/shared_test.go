package origdst

import (
	"bufio"
	"context"
	"net"
	"sync"
	"testing"

	"github.com/ambitmesh/ambit/internal/testutil"
)

// greeting dials addr and returns the connection and the name of the
// server that accepted it.
func greeting(t *testing.T, addr string) (net.Conn, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	name, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		c.Close()
		t.Fatalf("read greeting from %s: %v", addr, err)
	}
	return c, name[:len(name)-1]
}

// TestSharedHandover is an upgrade on one address: an old listener
// serves, a new one listens beside it and takes every new connection,
// the old one closes while connections keep coming, and none is lost;
// the connection held on the old one keeps working throughout.
func TestSharedHandover(t *testing.T) {
	ctx := context.Background()
	shared := ListenOptions{Shared: true}
	old, err := Listen(ctx, "127.0.0.1:0", shared)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	oldDone := testutil.ServeListener(old, testutil.Greet("old"))
	addr := old.Addr().String()

	held, name := greeting(t, addr)
	defer held.Close()
	if name != "old" {
		t.Fatalf("first connection accepted by %q, want old", name)
	}

	// Not shared: the port is taken.
	if ln, err := Listen(ctx, addr, ListenOptions{}); err == nil {
		ln.Close()
		t.Fatalf("listen on %s without SO_REUSEPORT: got no error, want address in use", addr)
	}

	next, err := Listen(ctx, addr, shared)
	if err != nil {
		t.Fatalf("listen beside the old listener: %v", err)
	}
	defer next.Close()
	testutil.ServeListener(next, testutil.Greet("new"))
	for i := range 50 {
		c, name := greeting(t, addr)
		c.Close()
		if name != "new" {
			t.Fatalf("connection %d after the new listener joined: accepted by %q, want new", i, name)
		}
	}

	// The old one closes its listener while clients keep connecting.
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
				c, err := net.Dial("tcp", addr)
				if err == nil {
					_, err = bufio.NewReader(c).ReadString('\n')
					c.Close()
				}
				if err != nil {
					mu.Lock()
					lost = append(lost, err)
					mu.Unlock()
				}
			}
		})
	}
	old.Close()
	oldDone.Wait()
	for range 20 {
		c, name := greeting(t, addr)
		c.Close()
		if name != "new" {
			t.Fatalf("after the old listener closed: accepted by %q, want new", name)
		}
	}
	close(stop)
	dialers.Wait()
	if len(lost) > 0 {
		t.Errorf("connections lost while the old listener closed: got %d (first: %v), want none", len(lost), lost[0])
	}

	// The held connection still reaches the old server.
	if _, err := held.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := held.Read(buf); err != nil || string(buf) != "ping" {
		t.Errorf("held connection after the handover: got %q, %v; want ping echoed", buf, err)
	}
}

func TestKernelAtLeast(t *testing.T) {
	tests := []struct {
		release string
		want    bool
	}{
		{"6.18.0-1-amd64", true},
		{"6.5.0", true},
		{"6.4.16-foo", false},
		{"5.15.0-91-generic", false},
		{"7.0", true},
		{"6.10-rc1", true},
		{"6", false},
		{"x.y", false},
	}
	for _, tt := range tests {
		if got := kernelAtLeast(tt.release, 6, 5); got != tt.want {
			t.Errorf("kernelAtLeast(%q, 6, 5) = %t, want %t", tt.release, got, tt.want)
		}
	}
}
