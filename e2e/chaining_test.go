package e2e

import (
	"context"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/ambitmesh/ambit/bpf/redirect"
	"github.com/ambitmesh/ambit/internal/lab"
)

// TC verdicts of the stand-in programs (linux/pkt_cls.h, and TCX's
// enum tcx_action_base: TCX_NEXT -1, TCX_PASS 0, TCX_DROP 2).
const (
	actNext = -1
	actOK   = 0
	actShot = 2
)

// primary stands in for a primary CNI's program on a pod's host veth: it
// counts the packets it sees and returns a fixed verdict.
type primary struct {
	prog    *ebpf.Program
	counter *ebpf.Map
}

func newPrimary(t *testing.T, verdict int32) *primary {
	t.Helper()
	return newPrimaryTo(t, verdict, netip.Addr{})
}

// newPrimaryTo is a stand-in that counts only the IPv4 packets to dst (all
// packets when dst is the zero address).
func newPrimaryTo(t *testing.T, verdict int32, dst netip.Addr) *primary {
	t.Helper()
	return newStandin(t, dst, "out", asm.Instructions{
		asm.Mov.Imm(asm.R0, verdict).WithSymbol("out"),
		asm.Return(),
	})
}

// newRedirecting is a stand-in that counts the IPv4 packets to dst and
// sends them to ifindex as a primary CNI's fast paths do, returning
// TC_ACT_REDIRECT: into the namespace of the veth's peer
// (bpf_redirect_peer, Cilium's path between pods of a node) or, with
// neigh, out of ifindex to the next hop (bpf_redirect_neigh, its path to
// other nodes). Other packets (ARP) go on (TCX_NEXT).
func newRedirecting(t *testing.T, dst netip.Addr, ifindex int, neigh bool) *primary {
	t.Helper()
	call := asm.Instructions{
		asm.Mov.Imm(asm.R1, int32(ifindex)),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRedirectPeer.Call(),
		asm.Return(),
	}
	if neigh {
		call = asm.Instructions{
			asm.Mov.Imm(asm.R1, int32(ifindex)),
			asm.Mov.Imm(asm.R2, 0),
			asm.Mov.Imm(asm.R3, 0),
			asm.Mov.Imm(asm.R4, 0),
			asm.FnRedirectNeigh.Call(),
			asm.Return(),
		}
	}
	return newStandin(t, dst, "next", append(call,
		asm.Mov.Imm(asm.R0, actNext).WithSymbol("next"),
		asm.Return(),
	))
}

// newStandin counts the packets (IPv4 to dst only, when dst is valid; the
// others jump to the label miss) and ends with end.
func newStandin(t *testing.T, dst netip.Addr, miss string, end asm.Instructions) *primary {
	t.Helper()
	var filter asm.Instructions
	if dst.IsValid() {
		// Legacy packet loads (BPF_ABS) need the context in R6 and give
		// the value in host order.
		b := dst.As4()
		want := int32(uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]))
		filter = asm.Instructions{
			asm.Mov.Reg(asm.R6, asm.R1),
			asm.LoadAbs(12, asm.Half),
			asm.JNE.Imm(asm.R0, 0x0800, miss),
			asm.LoadAbs(30, asm.Word),
			asm.JNE.Imm(asm.R0, want, miss),
		}
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.SchedCLS,
		License: "Dual BSD/GPL",
		Instructions: append(append(filter,
			asm.Mov.Imm(asm.R1, 0),
			asm.StoreMem(asm.RFP, -4, asm.R1, asm.Word),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, miss),
			asm.Mov.Imm(asm.R1, 1),
			asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		), end...),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	return &primary{prog: prog, counter: m}
}

func (p *primary) seen(t *testing.T) uint64 {
	t.Helper()
	var n uint64
	if err := p.counter.Lookup(uint32(0), &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// attachTCX attaches the stand-in to the ingress of veth on node n, at
// the head or the tail of the chain, until the test ends.
func (p *primary) attachTCX(t *testing.T, n *lab.Node, veth string, anchor link.Anchor) {
	t.Helper()
	var l link.Link
	err := n.NS.Do(func() error {
		iface, err := net.InterfaceByName(veth)
		if err != nil {
			return err
		}
		l, err = link.AttachTCX(link.TCXOptions{Interface: iface.Index, Program: p.prog, Attach: ebpf.AttachTCXIngress, Anchor: anchor})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
}

// standinHandle numbers the stand-ins' tc filters, which may share a
// priority on one interface.
var standinHandle atomic.Uint32

// attachClsact adds the stand-in as a tc filter at priority prio on the
// ingress of veth on node n, until the test ends.
func (p *primary) attachClsact(t *testing.T, n *lab.Node, veth string, prio uint16) {
	t.Helper()
	var f *netlink.BpfFilter
	err := n.NS.Do(func() error {
		iface, err := net.InterfaceByName(veth)
		if err != nil {
			return err
		}
		f = &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: iface.Index, Parent: netlink.HANDLE_MIN_INGRESS, Handle: standinHandle.Add(1), Protocol: unix.ETH_P_ALL, Priority: prio},
			Fd:          p.prog.FD(), Name: "standin_primary", DirectAction: true,
		}
		return netlink.FilterAdd(f)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.NS.Do(func() error { return netlink.FilterDel(f) }) })
}

// TestRedirectChaining: Ambit's programs chain with a primary CNI's on the
// same hook, with the kernel's TCX and clsact semantics. What Ambit does
// not take reaches the programs after it (a primary CNI keeps seeing, and
// dropping, its pods' traffic); what it takes no program after it can
// send elsewhere; and a program put before it (a primary that re-attached)
// is found, and Ambit's goes back to the head when the agent attaches
// again, so an enrolled pod's connection is never passed on in plain text.
func TestRedirectChaining(t *testing.T) {
	l := startLab(t, lab.Config{Nodes: 2})
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	const ns = "chaining"
	if err := l.CreateNamespace(ctx, ns, nil); err != nil {
		t.Fatal(err)
	}
	// a is enrolled, c is not, both on node1; d (node2) is the destination,
	// and b (node2) an enrolled one behind node2's uplink.
	pods := map[string]*corev1.Pod{}
	for name, node := range map[string]string{"a": "node1", "c": "node1", "d": "node2", "b": "node2"} {
		p, err := l.RunPod(ctx, lab.EchoPod(ns, name, node, map[string]string{"app": name}))
		if err != nil {
			t.Fatal(err)
		}
		pods[name] = p
	}
	ip := func(name string) string { return pods[name].Status.PodIP }
	node1, node2 := l.Node("node1"), l.Node("node2")
	startFakeZtunnel(t, node1)
	startFakeZtunnel(t, node2)
	veth := func(name string) string {
		t.Helper()
		var v string
		if err := node1.NS.Do(func() (err error) {
			v, err = redirect.HostInterface(netip.MustParseAddr(ip(name)))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return v
	}
	toD := net.JoinHostPort(ip("d"), "9000")
	wantCaptured := func(t *testing.T, what string) {
		t.Helper()
		rep, err := podTCP(ctx, l, ns, "a", toD)
		if err != nil || rep.Hostname != "ztunnel-node1-15001" {
			t.Errorf("%s: a to d: got %+v, %v; want ztunnel's outbound (ztunnel-node1-15001), never d in plain text", what, rep, err)
		}
	}

	for _, mode := range []redirect.Mode{redirect.ModeTCX, redirect.ModeClsact} {
		t.Run(string(mode), func(t *testing.T) {
			var r *redirect.Redirector
			if err := node1.NS.Do(func() (err error) {
				if r, err = redirect.OpenMode(l.BPFPinDir(node1), mode); err != nil {
					return err
				}
				for _, name := range []string{"a", "c"} {
					if err := r.AttachPod(veth(name)); err != nil {
						return err
					}
				}
				return r.Enroll(netip.MustParseAddr(ip("a")))
			}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := node1.NS.Do(r.Remove); err != nil {
					t.Errorf("remove redirect: %v", err)
				}
			})

			// A primary's programs after Ambit's: one that passes on c's
			// veth, one that drops on a's.
			after := newPrimary(t, actOK)
			dropper := newPrimary(t, actShot)
			if mode == redirect.ModeTCX {
				after.attachTCX(t, node1, veth("c"), link.Tail())
				dropper.attachTCX(t, node1, veth("a"), link.Tail())
			} else {
				after.attachClsact(t, node1, veth("c"), 0xb00)
				dropper.attachClsact(t, node1, veth("a"), 0xb00)
			}
			rep, err := podTCP(ctx, l, ns, "c", toD)
			if err != nil || rep.Hostname != "d" {
				t.Errorf("c (not enrolled) to d: got %+v, %v; want d", rep, err)
			}
			if n := after.seen(t); n == 0 {
				t.Errorf("primary program after Ambit's on c's veth: saw %d packets of c's traffic, want them all (Ambit must return NEXT for what it does not take)", n)
			}
			wantCaptured(t, "a primary that drops, after Ambit's")
			if n := dropper.seen(t); n != 0 {
				t.Errorf("primary program after Ambit's on a's veth: saw %d packets of a's captured connection, want none (Ambit ends the chain for what it takes)", n)
			}

			// A primary's fast paths after Ambit's (TC_ACT_REDIRECT): on a's
			// veth, one that sends a's packets for c straight into c's
			// namespace; on c's, one that sends c's packets for d straight
			// out of the uplink. a's connection never reaches the first;
			// c's reaches the second.
			var cIndex, uplink int
			if err := node1.NS.Do(func() error {
				ci, err := net.InterfaceByName(veth("c"))
				if err != nil {
					return err
				}
				u, err := net.InterfaceByName("eth0")
				if err != nil {
					return err
				}
				cIndex, uplink = ci.Index, u.Index
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			toPeer := newRedirecting(t, netip.MustParseAddr(ip("c")), cIndex, false)
			toWire := newRedirecting(t, netip.MustParseAddr(ip("d")), uplink, true)
			if mode == redirect.ModeTCX {
				toPeer.attachTCX(t, node1, veth("a"), link.Head())
				toWire.attachTCX(t, node1, veth("c"), link.Head())
				// The agent's next attach puts Ambit's first again.
				if err := node1.NS.Do(func() error {
					if err := r.AttachPod(veth("a")); err != nil {
						return err
					}
					return r.AttachPod(veth("c"))
				}); err != nil {
					t.Fatal(err)
				}
			} else {
				toPeer.attachClsact(t, node1, veth("a"), 0xa00)
				toWire.attachClsact(t, node1, veth("c"), 0xa00)
			}
			if rep, err := podTCP(ctx, l, ns, "a", net.JoinHostPort(ip("c"), "9000")); err != nil || rep.Hostname != "ztunnel-node1-15001" {
				t.Errorf("a to c with a primary redirecting to c's namespace after Ambit's: got %+v, %v; want ztunnel's outbound, never c in plain text", rep, err)
			}
			if n := toPeer.seen(t); n != 0 {
				t.Errorf("redirecting primary after Ambit's on a's veth: saw %d packets of a's captured connection, want none", n)
			}
			// (Whether d answers is the stand-in's business: its packets skip
			// node1's conntrack, which then takes d's answer for INVALID.)
			wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
			podTCP(wctx, l, ns, "c", toD)
			wcancel()
			if toWire.seen(t) == 0 {
				t.Error("redirecting primary after Ambit's on c's veth: saw none of c's traffic to d, want all of it")
			}

			// The primary's drops still drop what Ambit does not take.
			cDropper := newPrimary(t, actShot)
			if mode == redirect.ModeTCX {
				cDropper.attachTCX(t, node1, veth("c"), link.Head())
				// Head again: Ambit's goes back before it.
				if err := node1.NS.Do(func() error { return r.AttachPod(veth("c")) }); err != nil {
					t.Fatal(err)
				}
			} else {
				cDropper.attachClsact(t, node1, veth("c"), 0xa00)
			}
			dctx, dcancel := context.WithTimeout(ctx, 3*time.Second)
			rep, err = podTCP(dctx, l, ns, "c", toD)
			dcancel()
			if err == nil {
				t.Errorf("c to d with the primary dropping: got an answer from %s, want the connection dropped", rep.Hostname)
			}
			if cDropper.seen(t) == 0 {
				t.Error("dropping primary on c's veth: saw no packets")
			}

			// Node2's uplink: the wire program returns NEXT for what is not
			// for an enrolled pod there, and ends the chain for what it
			// captures.
			var r2 *redirect.Redirector
			if err := node2.NS.Do(func() (err error) {
				if r2, err = redirect.OpenMode(l.BPFPinDir(node2), mode); err != nil {
					return err
				}
				if err := r2.AttachUplink("eth0"); err != nil {
					return err
				}
				return r2.Enroll(netip.MustParseAddr(ip("b")))
			}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := node2.NS.Do(r2.Remove); err != nil {
					t.Errorf("remove redirect on node2: %v", err)
				}
			})
			// Two primary programs after Ambit's, the first counting what
			// goes to d and passing it on, the second what goes to b.
			wire := newPrimaryTo(t, actNext, netip.MustParseAddr(ip("d")))
			wireB := newPrimaryTo(t, actOK, netip.MustParseAddr(ip("b")))
			if mode == redirect.ModeTCX {
				wire.attachTCX(t, node2, "eth0", link.Tail())
				wireB.attachTCX(t, node2, "eth0", link.Tail())
			} else {
				wire.attachClsact(t, node2, "eth0", 0xb00)
				wireB.attachClsact(t, node2, "eth0", 0xb01)
			}
			// From node1 itself (c's own traffic is dropped by now).
			if rep, err := nsTCP(ctx, node1.NS, toD); err != nil || rep.Hostname != "d" {
				t.Errorf("node1 to d through node2's uplink: got %+v, %v; want d", rep, err)
			}
			if wire.seen(t) == 0 {
				t.Error("primary program after Ambit's on node2's uplink: saw none of node1's traffic to d, want all of it")
			}
			if rep, err := nsTCP(ctx, node1.NS, net.JoinHostPort(ip("b"), "9000")); err != nil || rep.Hostname != "ztunnel-node2-15006" {
				t.Errorf("node1 to b (enrolled, node2): got %+v, %v; want node2's ztunnel (inbound plaintext)", rep, err)
			}
			if n := wireB.seen(t); n != 0 {
				t.Errorf("primary program after Ambit's on node2's uplink: saw %d packets of node1's connection to enrolled b, want none", n)
			}

			// A primary that (re-)attaches before Ambit's and passes
			// everything would send a's connection on in plain text: the
			// agent's guard finds it and puts Ambit's first again. Under
			// clsact it takes Ambit's priority, 1, where the newest filter
			// runs first.
			before := newPrimary(t, actOK)
			if mode == redirect.ModeTCX {
				before.attachTCX(t, node1, veth("a"), link.Head())
			} else {
				before.attachClsact(t, node1, veth("a"), 1)
			}
			var ahead []ebpf.ProgramID
			if err := node1.NS.Do(func() (err error) { ahead, err = r.Ahead(veth("a")); return err }); err != nil {
				t.Fatal(err)
			}
			if len(ahead) != 1 {
				t.Errorf("programs ahead of Ambit's on a's veth: got %v, want the stand-in's", ahead)
			}
			var fixed []string
			if err := node1.NS.Do(func() (err error) { fixed, err = r.Guard(); return err }); err != nil {
				t.Fatal(err)
			}
			if len(fixed) != 1 || fixed[0] != veth("a") {
				t.Errorf("interfaces the agent's guard fixed: got %v, want [%s]", fixed, veth("a"))
			}
			if err := node1.NS.Do(func() (err error) { ahead, err = r.Ahead(veth("a")); return err }); err != nil || len(ahead) != 0 {
				t.Errorf("programs ahead of Ambit's after the guard: got %v, %v; want none", ahead, err)
			}
			wantCaptured(t, "a primary that passes everything, attached before Ambit's")
			want := map[redirect.Mode]int{redirect.ModeTCX: 4, redirect.ModeClsact: 1}[mode]
			if n := attachments(t, node1, ip("a"), mode); n != want {
				t.Errorf("programs on a's veth: got %d, want %d (Ambit's once, and under TCX the three stand-ins)", n, want)
			}

			// The primary re-attaches at the head while the agent is down;
			// the restarted agent's first attach puts Ambit's first again.
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			// This one redirects a's packets for d out of the uplink.
			again := newRedirecting(t, netip.MustParseAddr(ip("d")), uplink, true)
			if mode == redirect.ModeTCX {
				again.attachTCX(t, node1, veth("a"), link.Head())
			} else {
				again.attachClsact(t, node1, veth("a"), 1)
			}
			if err := node1.NS.Do(func() (err error) {
				if r, err = redirect.OpenMode(l.BPFPinDir(node1), mode); err != nil {
					return err
				}
				return r.AttachPod(veth("a"))
			}); err != nil {
				t.Fatal(err)
			}
			if err := node1.NS.Do(func() (err error) { ahead, err = r.Ahead(veth("a")); return err }); err != nil || len(ahead) != 0 {
				t.Errorf("programs ahead of Ambit's after an agent restart: got %v, %v; want none", ahead, err)
			}
			wantCaptured(t, "a primary that re-attached before Ambit's while the agent was down")
			if n := again.seen(t); n != 0 {
				t.Errorf("redirecting primary put before Ambit's while the agent was down: saw %d packets of a's connection after the restart, want none", n)
			}
			want = map[redirect.Mode]int{redirect.ModeTCX: 5, redirect.ModeClsact: 1}[mode]
			if n := attachments(t, node1, ip("a"), mode); n != want {
				t.Errorf("programs on a's veth: got %d, want %d (Ambit's once, and under TCX the four stand-ins)", n, want)
			}
		})
	}
}
