package realnode

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/ambitmesh/ambit/internal/lab"
)

// bpfAttachment is an eBPF program attached to an interface of a node:
// TCX (ingress, egress) or a clsact filter.
type bpfAttachment struct {
	Iface, Hook string
	Prog        ebpf.ProgramID
}

func (a bpfAttachment) String() string { return fmt.Sprintf("%s %s prog %d", a.Iface, a.Hook, a.Prog) }

// nodeBPF lists the eBPF programs attached to the interfaces of the node's
// network namespace (the node's own links and its pods' host-side veths).
func nodeBPF(n *lab.Node) ([]bpfAttachment, error) {
	var out []bpfAttachment
	err := n.NS.Do(func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return fmt.Errorf("list links: %w", err)
		}
		for _, l := range links {
			name, idx := l.Attrs().Name, l.Attrs().Index
			for hook, at := range map[string]ebpf.AttachType{"tcx ingress": ebpf.AttachTCXIngress, "tcx egress": ebpf.AttachTCXEgress} {
				res, err := link.QueryPrograms(link.QueryOptions{Target: idx, Attach: at})
				if err != nil {
					return fmt.Errorf("query %s programs of %s: %w", hook, name, err)
				}
				for _, p := range res.Programs {
					out = append(out, bpfAttachment{name, hook, p.ID})
				}
			}
			for hook, parent := range map[string]uint32{"clsact ingress": netlink.HANDLE_MIN_INGRESS, "clsact egress": netlink.HANDLE_MIN_EGRESS} {
				filters, err := netlink.FilterList(l, parent)
				if err != nil {
					continue // no clsact qdisc
				}
				for _, f := range filters {
					if bf, ok := f.(*netlink.BpfFilter); ok {
						out = append(out, bpfAttachment{name, hook, ebpf.ProgramID(bf.Id)})
					}
				}
			}
		}
		return nil
	})
	slices.SortFunc(out, func(a, b bpfAttachment) int {
		return cmp.Or(cmp.Compare(a.Iface, b.Iface), cmp.Compare(a.Hook, b.Hook), cmp.Compare(a.Prog, b.Prog))
	})
	return out, err
}

// loadedPrograms returns which of ids are still loaded in the kernel.
func loadedPrograms(ids []ebpf.ProgramID) []ebpf.ProgramID {
	var loaded []ebpf.ProgramID
	for _, id := range ids {
		p, err := ebpf.NewProgramFromID(id)
		if err == nil {
			p.Close()
			loaded = append(loaded, id)
		} else if !errors.Is(err, os.ErrNotExist) {
			loaded = append(loaded, id) // cannot tell: count it
		}
	}
	return loaded
}
