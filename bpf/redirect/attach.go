package redirect

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// clsactPriority is the tc filter priority of Ambit's program under clsact,
// and clsactName its name, by which Ambit finds its own filters.
const (
	clsactPriority = 0xa3b
	clsactHandle   = 0xa3b
	clsactName     = "ambit_redirect"
)

// haveTCX tells TCX support apart by attaching to an interface index that
// cannot exist: a kernel with TCX says ENODEV, an older one does not know
// the attach type.
func haveTCX(prog *ebpf.Program) bool {
	l, err := link.AttachTCX(link.TCXOptions{Interface: 0x7ffffff0, Program: prog, Attach: ebpf.AttachTCXIngress})
	if err == nil {
		l.Close()
		return true
	}
	return !errors.Is(err, ebpf.ErrNotSupported)
}

func attachClsact(ifindex int, prog *ebpf.Program) error {
	return attachClsactDir(ifindex, prog, netlink.HANDLE_MIN_INGRESS)
}

// attachClsactDir attaches prog as Ambit's filter of one direction:
// parent is netlink.HANDLE_MIN_INGRESS or HANDLE_MIN_EGRESS.
func attachClsactDir(ifindex int, prog *ebpf.Program, parent uint32) error {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc to ifindex %d: %w", ifindex, err)
	}
	filter := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex, Parent: parent, Handle: clsactHandle,
			Protocol: unix.ETH_P_ALL, Priority: clsactPriority,
		},
		Fd: prog.FD(), Name: clsactName, DirectAction: true,
	}
	// Replace keeps one filter per interface across agent restarts.
	if err := netlink.FilterReplace(filter); err != nil {
		return fmt.Errorf("add tc filter to ifindex %d: %w", ifindex, err)
	}
	return nil
}

func detachClsact(ifindex int) error {
	link, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return nil // gone with its filters
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		filters, err := netlink.FilterList(link, parent)
		if err != nil {
			return fmt.Errorf("list tc filters of %s: %w", link.Attrs().Name, err)
		}
		for _, f := range filters {
			if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, clsactName) {
				if err := netlink.FilterDel(f); err != nil {
					return fmt.Errorf("delete tc filter of %s: %w", link.Attrs().Name, err)
				}
			}
		}
	}
	return nil
}

// clsactAttached lists interfaces with Ambit's tc filter.
func clsactAttached() ([]string, error) {
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var names []string
	for _, iface := range ifaces {
		l, err := netlink.LinkByIndex(iface.Index)
		if err != nil {
			continue
		}
		filters, err := netlink.FilterList(l, netlink.HANDLE_MIN_INGRESS)
		if err != nil {
			continue
		}
		for _, f := range filters {
			if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, clsactName) {
				names = append(names, iface.Name)
				break
			}
		}
	}
	return names, nil
}
