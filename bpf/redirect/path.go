package redirect

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The pod path (docs/architecture.md, "What ztunnel sends for a pod stays
// the pod's"): ztunnel's connections for a pod of this node carry
// PathMark; a rule routes them to the dummy device PathDevice, where
// ambit_pod_path re-enters each packet at the host end of the pod's veth.
// From there the node forwards it as the pod's own: the primary CNI's
// programs, FORWARD, NAT and NetworkPolicy apply. Replies come back to
// ztunnel's socket marked ReplyMark by the ingress programs, or, when NAT
// hid them from those, through ambit_to_pod on the pod's veth egress and
// the path device's ingress.

// setupPodPath creates the path device and its routing, attaches the
// re-entry program to its egress and tells the programs where it is.
func (r *Redirector) setupPodPath() error {
	dev, err := ensurePathDevice()
	if err != nil {
		return err
	}
	pl, err := podLink(dev)
	if err != nil {
		return fmt.Errorf("pod path device: %w", err)
	}
	if err := r.objs.AmbitPathDev.Update(uint32(0), pl, 0); err != nil {
		return fmt.Errorf("record pod path device: %w", err)
	}
	_, all, _ := net.ParseCIDR("0.0.0.0/0")
	route := &netlink.Route{LinkIndex: dev.Attrs().Index, Dst: all, Table: PathTable, Scope: netlink.SCOPE_LINK}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("add pod path route table %d: %w", PathTable, err)
	}
	if err := ensureRule(PathMark, PathTable, pathRulePriority); err != nil {
		return err
	}
	if err := ensureRule(ReplyMark, RouteTable, replyRulePriority); err != nil {
		return err
	}
	// ztunnel's packets are tracked once, where they re-enter as the
	// pod's, not also as the node's own on the way out.
	if err := ensureNotrack("OUTPUT", PathMark); err != nil {
		return err
	}
	return r.attachEgress(PathDevice, r.objs.AmbitPodPath)
}

// ensurePathDevice creates the path device if it is missing and brings it
// up: one end of a veth pair whose other end (PathDevice+"p") only keeps
// it up (a dummy interface would do, but not every kernel has them).
// Packets the stack hands it reach only its egress program, which never
// lets one through; its reverse-path filter is off, because replies
// re-enter through its ingress from sources routed elsewhere.
func ensurePathDevice() (netlink.Link, error) {
	dev, err := netlink.LinkByName(PathDevice)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return nil, fmt.Errorf("find pod path device %s: %w", PathDevice, err)
		}
		pair := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: PathDevice}, PeerName: pathPeer}
		if err := netlink.LinkAdd(pair); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("add pod path device %s: %w", PathDevice, err)
		}
		if dev, err = netlink.LinkByName(PathDevice); err != nil {
			return nil, fmt.Errorf("find pod path device %s: %w", PathDevice, err)
		}
	}
	peer, err := netlink.LinkByName(pathPeer)
	if err != nil {
		return nil, fmt.Errorf("find pod path device's peer %s: %w", pathPeer, err)
	}
	// No ARP: the stack must not ask for neighbours there (the egress
	// program would drop the request, and the packets would wait for an
	// answer forever); ambit_pod_path sets each packet's destination.
	if err := netlink.LinkSetARPOff(dev); err != nil {
		return nil, fmt.Errorf("turn off arp on pod path device %s: %w", PathDevice, err)
	}
	for _, l := range []netlink.Link{peer, dev} {
		if err := netlink.LinkSetUp(l); err != nil {
			return nil, fmt.Errorf("bring up pod path device %s: %w", l.Attrs().Name, err)
		}
	}
	p := filepath.Join("/proc/sys/net/ipv4/conf", PathDevice, "rp_filter")
	if err := os.WriteFile(p, []byte("0"), 0o644); err != nil {
		return nil, fmt.Errorf("set %s: %w", p, err)
	}
	// No IPv6 there either (the pod path is IPv4 so far): the kernel's
	// own neighbour discovery would only be dropped and counted.
	for _, name := range []string{PathDevice, pathPeer} {
		p := filepath.Join("/proc/sys/net/ipv6/conf", name, "disable_ipv6")
		if err := os.WriteFile(p, []byte("1"), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("set %s: %w", p, err)
		}
	}
	return dev, nil
}

const pathPeer = PathDevice + "p"

func ensureRule(mark uint32, table, priority int) error {
	rules, err := netlink.RuleList(netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list ip rules: %w", err)
	}
	if slices.ContainsFunc(rules, func(r netlink.Rule) bool { return r.Table == table && r.Mark == mark }) {
		return nil
	}
	rule := netlink.NewRule()
	rule.Mark = mark
	rule.Mask = ptr(mark)
	rule.Table = table
	rule.Priority = priority
	if err := netlink.RuleAdd(rule); err != nil {
		return fmt.Errorf("add ip rule fwmark %#x lookup %d: %w", mark, table, err)
	}
	return nil
}

func notrackArgs(op, chain string, mark uint32) []string {
	return []string{"-t", "raw", op, chain, "-m", "mark", "--mark", fmt.Sprintf("%#x/%#x", mark, mark), "-j", "NOTRACK", "-m", "comment", "--comment", "ambit redirect"}
}

func ensureNotrack(chain string, mark uint32) error {
	if exec.Command("iptables", notrackArgs("-C", chain, mark)...).Run() == nil {
		return nil
	}
	if out, err := exec.Command("iptables", notrackArgs("-I", chain, mark)...).CombinedOutput(); err != nil {
		return fmt.Errorf("add notrack rule: %w: %s", err, out)
	}
	return nil
}

// removePodPath undoes setupPodPath (the device's links are detached by
// the caller).
func removePodPath() error {
	var errs []error
	rules, err := netlink.RuleList(netlink.FAMILY_V4)
	errs = append(errs, err)
	for _, r := range rules {
		if (r.Table == PathTable && r.Mark == PathMark) || (r.Table == RouteTable && r.Mark == ReplyMark) {
			errs = append(errs, netlink.RuleDel(&r))
		}
	}
	for exec.Command("iptables", notrackArgs("-D", "OUTPUT", PathMark)...).Run() == nil {
	}
	if dev, err := netlink.LinkByName(PathDevice); err == nil {
		if err := netlink.LinkDel(dev); err != nil {
			errs = append(errs, fmt.Errorf("delete pod path device: %w", err))
		}
	}
	return errors.Join(errs...)
}
