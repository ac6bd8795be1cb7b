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

// clsactPriority is the tc filter priority of Ambit's programs under
// clsact: 1, the first that can be asked for, so that no filter of a
// lower number runs before them. Filters of the same priority run newest
// first; Ambit's are found by their name (clsactName) and carry one of
// two handles, so that a copy can be added in front of a newer one before
// the old is deleted (re-anchoring, as under TCX).
const (
	clsactPriority = 1
	clsactHandle   = 0xa3b
	clsactHandle2  = 0xa3c
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

// attachClsactDir attaches prog as Ambit's filter of one direction
// (parent netlink.HANDLE_MIN_INGRESS or HANDLE_MIN_EGRESS): in place of
// Ambit's filter there, if it has one and nothing runs before it;
// otherwise in front of everything, and then the old one goes.
func attachClsactDir(ifindex int, prog *ebpf.Program, parent uint32) error {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc to ifindex %d: %w", ifindex, err)
	}
	ours, ahead, err := clsactFilters(ifindex, parent)
	if err != nil {
		return err
	}
	filter := func(handle uint32) *netlink.BpfFilter {
		return &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{
				LinkIndex: ifindex, Parent: parent, Handle: handle,
				Protocol: unix.ETH_P_ALL, Priority: clsactPriority,
			},
			Fd: prog.FD(), Name: clsactName, DirectAction: true,
		}
	}
	if len(ours) > 0 && len(ahead) == 0 {
		// Replacing keeps the filter's place and one per interface
		// across agent restarts.
		if err := netlink.FilterReplace(filter(ours[0].Handle)); err != nil {
			return fmt.Errorf("replace tc filter on ifindex %d: %w", ifindex, err)
		}
		for _, f := range ours[1:] {
			if err := netlink.FilterDel(f); err != nil {
				return fmt.Errorf("delete extra tc filter on ifindex %d: %w", ifindex, err)
			}
		}
		return nil
	}
	handle := uint32(clsactHandle)
	if len(ours) > 0 && ours[0].Handle == clsactHandle {
		handle = clsactHandle2
	}
	if err := netlink.FilterAdd(filter(handle)); err != nil {
		return fmt.Errorf("add tc filter to ifindex %d (priority %d): %w", ifindex, clsactPriority, err)
	}
	for _, f := range ours {
		if err := netlink.FilterDel(f); err != nil {
			return fmt.Errorf("delete old tc filter on ifindex %d: %w", ifindex, err)
		}
	}
	if _, ahead, err := clsactFilters(ifindex, parent); err != nil {
		return err
	} else if len(ahead) > 0 {
		return fmt.Errorf("tc filter on ifindex %d: %d filter(s) still run before Ambit's at priority %d", ifindex, len(ahead), clsactPriority)
	}
	return nil
}

// clsactFilters lists Ambit's filters on one direction of an interface
// and the filters that run before the first of them, in the order the
// kernel runs them.
func clsactFilters(ifindex int, parent uint32) (ours []*netlink.BpfFilter, ahead []netlink.Filter, err error) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return nil, nil, fmt.Errorf("find ifindex %d: %w", ifindex, err)
	}
	filters, err := netlink.FilterList(l, parent)
	if err != nil {
		return nil, nil, fmt.Errorf("list tc filters of %s: %w", l.Attrs().Name, err)
	}
	for _, f := range filters {
		if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, clsactName) {
			ours = append(ours, bf)
			continue
		}
		if len(ours) == 0 {
			ahead = append(ahead, f)
		}
	}
	if len(ours) == 0 {
		ahead = nil
	}
	return ours, ahead, nil
}

// clsactAhead lists the programs of the filters that run before Ambit's
// on the ingress of ifindex (a filter that is not a bpf program counts as
// program 0).
func clsactAhead(ifindex int) ([]ebpf.ProgramID, error) {
	ours, ahead, err := clsactFilters(ifindex, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		return nil, err
	}
	if len(ours) == 0 {
		return nil, fmt.Errorf("ambit's tc filter is not on ifindex %d", ifindex)
	}
	var ids []ebpf.ProgramID
	for _, f := range ahead {
		var id ebpf.ProgramID
		if bf, ok := f.(*netlink.BpfFilter); ok {
			id = ebpf.ProgramID(bf.Id)
		}
		ids = append(ids, id)
	}
	return ids, nil
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
