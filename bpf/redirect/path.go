package redirect

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
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
// lets one through (the kernel's own IPv6 neighbour discovery there is
// dropped too); its reverse-path filter is off, because replies re-enter
// through its ingress from sources routed elsewhere.
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
	if err := setRPFilterOff(dev.Attrs().Index); err != nil {
		return nil, fmt.Errorf("turn off rp_filter on pod path device %s: %w", PathDevice, err)
	}
	return dev, nil
}

const pathPeer = PathDevice + "p"

// ipv4DevconfRPFilter is IPV4_DEVCONF_RP_FILTER (linux/ip.h).
const ipv4DevconfRPFilter = 8

// setRPFilterOff sets net.ipv4.conf.<dev>.rp_filter to 0 through netlink
// (IFLA_AF_SPEC, AF_INET, IFLA_INET_CONF), not /proc/sys, which a
// container runtime mounts read-only for a container that is not
// privileged, as the agent's is not.
func setRPFilterOff(ifindex int) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(ifindex)
	req.AddData(msg)
	spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	conf := spec.AddRtAttr(unix.AF_INET, nil).AddRtAttr(unix.IFLA_INET_CONF, nil)
	conf.AddRtAttr(ipv4DevconfRPFilter, nl.Uint32Attr(0))
	req.AddData(spec)
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return err
	}
	return nil
}

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
