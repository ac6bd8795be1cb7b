package redirect

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/ambitmesh/ambit/internal/netns"
	"github.com/ambitmesh/ambit/internal/testutil"
)

// TestFindUplink builds a namespace with two veth interfaces, the node's
// address on one and the default route on the other, and checks which
// one is found with and without the node's address.
func TestFindUplink(t *testing.T) {
	testutil.RequireRoot(t)
	ns, err := netns.Create(fmt.Sprintf("ambitzt-uplink-%d", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Delete() })
	err = ns.Do(func() error {
		for name, cidr := range map[string]string{"node0": "192.0.2.10/24", "wan0": "198.51.100.10/24"} {
			l := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
			if err := netlink.LinkAdd(l); err != nil {
				return err
			}
			a, err := netlink.ParseAddr(cidr)
			if err != nil {
				return err
			}
			if err := netlink.AddrAdd(l, a); err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		if _, err := FindUplink(netip.Addr{}); !errors.Is(err, ErrNoUplink) {
			return fmt.Errorf("no node address, no default route: got %v, want ErrNoUplink", err)
		}
		wan, err := netlink.LinkByName("wan0")
		if err != nil {
			return err
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: wan.Attrs().Index, Gw: net.ParseIP("198.51.100.1")}); err != nil {
			return err
		}
		for _, tt := range []struct {
			hostIP netip.Addr
			want   string
		}{
			{netip.MustParseAddr("192.0.2.10"), "node0"},
			{netip.Addr{}, "wan0"},
		} {
			got, err := FindUplink(tt.hostIP)
			if err != nil || got != tt.want {
				return fmt.Errorf("FindUplink(%v): got %q, %v; want %q", tt.hostIP, got, err, tt.want)
			}
		}
		if _, err := FindUplink(netip.MustParseAddr("203.0.113.7")); !errors.Is(err, ErrNoUplink) {
			return fmt.Errorf("an address no interface holds: got %v, want ErrNoUplink", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
