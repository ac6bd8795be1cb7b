package origdst

import (
	"context"
	"net"
	"testing"

	"github.com/ambitmesh/ambit/internal/testutil"
)

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
	addr := old.Addr().String()
	var d net.Dialer
	testutil.Handover(t, ctx, d.DialContext, addr, old, func() net.Listener {
		// Not shared: the port is taken.
		if ln, err := Listen(ctx, addr, ListenOptions{}); err == nil {
			ln.Close()
			t.Fatalf("listen on %s without SO_REUSEPORT: got no error, want address in use", addr)
		}
		next, err := Listen(ctx, addr, shared)
		if err != nil {
			t.Fatalf("listen beside the old listener: %v", err)
		}
		t.Cleanup(func() { next.Close() })
		return next
	})
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
