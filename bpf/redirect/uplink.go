package redirect

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// ErrNoUplink is returned when no interface can be taken for the node's
// uplink.
var ErrNoUplink = errors.New("no uplink found")

// FindUplink returns the interface of this network namespace that
// carries traffic from other nodes: the one holding hostIP, the node's
// address (Kubernetes' status.hostIP), when it is valid; otherwise the
// interface of the IPv4 default route with the lowest metric.
func FindUplink(hostIP netip.Addr) (string, error) {
	if hostIP.IsValid() {
		links, err := netlink.LinkList()
		if err != nil {
			return "", fmt.Errorf("find uplink: list interfaces: %w", err)
		}
		for _, l := range links {
			addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
			if err != nil {
				return "", fmt.Errorf("find uplink: addresses of %s: %w", l.Attrs().Name, err)
			}
			for _, a := range addrs {
				if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == hostIP.Unmap() {
					return l.Attrs().Name, nil
				}
			}
		}
		return "", fmt.Errorf("find uplink: %w: no interface holds the node's address %s", ErrNoUplink, hostIP)
	}
	// The main table only: Ambit's own policy-routing table holds a
	// default route too, to the loopback interface.
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return "", fmt.Errorf("find uplink: list routes: %w", err)
	}
	best := -1
	var index int
	for _, r := range routes {
		if r.Dst != nil && !isDefault(r) || r.LinkIndex == 0 {
			continue
		}
		if best < 0 || r.Priority < best {
			best, index = r.Priority, r.LinkIndex
		}
	}
	if best < 0 {
		return "", fmt.Errorf("find uplink: %w: no node address given and no IPv4 default route", ErrNoUplink)
	}
	l, err := netlink.LinkByIndex(index)
	if err != nil {
		return "", fmt.Errorf("find uplink: interface %d of the default route: %w", index, err)
	}
	return l.Attrs().Name, nil
}

func isDefault(r netlink.Route) bool {
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}
