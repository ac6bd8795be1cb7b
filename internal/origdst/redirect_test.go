package origdst

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"testing"

	"github.com/ambitmesh/ambit/internal/netns"
	"github.com/ambitmesh/ambit/internal/testutil"
)

// TestRedirected sends connections through an iptables REDIRECT in a
// namespace of the test's own, and checks Get returns where each was
// going, for IPv4 and IPv6.
func TestRedirected(t *testing.T) {
	testutil.RequireRoot(t)
	// Not "ambit-": a lab starting in another test binary deletes every
	// "ambit-<id>-" namespace whose lab is not live (lab.CleanStale).
	ns, err := netns.Create(fmt.Sprintf("ambitzt-origdst-%d", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Delete() })
	ctx := context.Background()
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := ns.Command(ctx, name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	run("ip", "link", "set", "lo", "up")
	run("ip", "addr", "add", "192.0.2.10/32", "dev", "lo")
	run("ip", "addr", "add", "2001:db8::10/128", "dev", "lo", "nodad")

	tests := []struct {
		name, listen, iptables, orig string
	}{
		{"ipv4", "127.0.0.1:15001", "iptables", "192.0.2.10:8080"},
		{"ipv6", "[::1]:15001", "ip6tables", "[2001:db8::10]:8080"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := netip.MustParseAddrPort(tt.orig)
			run(tt.iptables, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", orig.Addr().String(),
				"--dport", fmt.Sprint(orig.Port()), "-j", "REDIRECT", "--to-ports", "15001")
			ln, err := ns.Listen(ctx, "tcp", tt.listen)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			got, err := Get(accepted(t, ln, ns.DialContext, tt.orig))
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			if got != orig {
				t.Errorf("original destination: got %s, want %s", got, orig)
			}
			// A connection made straight to the listener, where NAT is
			// in use, reports the listener itself: why the outbound
			// refuses a destination equal to its own address.
			self, err := Get(accepted(t, ln, ns.DialContext, ln.Addr().String()))
			if err == nil && self != netip.MustParseAddrPort(ln.Addr().String()) {
				t.Errorf("direct connection: got %s, want the listener %s or ErrNotRedirected", self, ln.Addr())
			}
		})
	}
}
