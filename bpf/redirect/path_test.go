package redirect

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/ambitmesh/ambit/internal/netns"
	"github.com/ambitmesh/ambit/internal/testutil"
)

// TestPathDevice: the pod path device is made (twice, as a restarted
// agent does) with ARP off and its reverse-path filter off, set through
// netlink even where new interfaces get a strict one by default.
func TestPathDevice(t *testing.T) {
	testutil.RequireRoot(t)
	ns, err := netns.Create(fmt.Sprintf("ambitzt-path-%d", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Delete() })
	err = ns.Do(func() error {
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/default/rp_filter", []byte("1"), 0o644); err != nil {
			return err
		}
		for range 2 {
			if _, err := ensurePathDevice(); err != nil {
				return err
			}
		}
		dev, err := netlink.LinkByName(PathDevice)
		if err != nil {
			return err
		}
		if dev.Attrs().RawFlags&uint32(net.FlagUp) == 0 {
			t.Errorf("%s: not up", PathDevice)
		}
		if dev.Attrs().RawFlags&0x80 == 0 { // IFF_NOARP
			t.Errorf("%s: ARP on, want off", PathDevice)
		}
		b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + PathDevice + "/rp_filter")
		if err != nil {
			return err
		}
		if got := strings.TrimSpace(string(b)); got != "0" {
			t.Errorf("%s rp_filter: got %s, want 0", PathDevice, got)
		}
		return removePodPath()
	})
	if err != nil {
		t.Fatal(err)
	}
}
