// Package redirect loads, attaches, pins and updates Ambit's eBPF
// redirection (redirect.c), which steers the TCP connections of enrolled
// pods into ztunnel's listeners in the node's network namespace.
//
// Everything it creates lives under one bpffs directory (PinDir): the maps
// (enrolled pods, counters) and one link per attachment. A restarted agent
// loads the pinned maps and links again, so traffic in flight never
// notices, and attaching an interface that already has Ambit's program
// replaces the program in place instead of adding a second one.
//
// All methods act in the network namespace of the calling thread: call them
// from the node's namespace (the agent runs there, as a host-network pod).
package redirect

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel redirect redirect.c

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ambitmesh/ambit/internal/mesh"
)

// Values shared with redirect.c.
const (
	// Mark is set on packets steered to ztunnel; policy routing delivers
	// marked packets locally.
	Mark = mesh.CaptureMark
	// RouteTable holds the local default route for marked packets.
	RouteTable = 154
	// rulePriority orders the mark rule before the main table.
	rulePriority = 154

	// PathMark is the socket mark ztunnel puts on the connections it
	// makes on behalf of a pod of this node: policy routing sends their
	// packets to the path device (PathDevice, table PathTable), whose
	// program re-enters them at the host end of the pod's veth, so that
	// they take the pod's own path out of the node.
	PathMark = mesh.PodPathMark
	// ReplyMark is set on replies to those connections: delivered
	// locally (table RouteTable) like Mark, but tracked.
	ReplyMark = mesh.ReplyMark
	// PathTable routes PathMark's packets to the path device.
	PathTable = 155
	// PathDevice is the dummy interface of the pod path.
	PathDevice = "ambit0"

	pathRulePriority  = 155
	replyRulePriority = 153

	podCaptured = 1
)

// Mode is how a program is attached.
type Mode string

const (
	ModeTCX    Mode = "tcx"    // kernel 6.6+: links, multi-program, ordered
	ModeClsact Mode = "clsact" // older kernels: a tc filter on clsact
)

// Redirector is the loaded redirection of one node.
type Redirector struct {
	pinDir string
	objs   redirectObjects
	mode   Mode
	// attachMu serialises attaching, which reads and replaces pins.
	attachMu sync.Mutex
}

// Open loads the programs and the maps pinned in pinDir (creating them on
// first use), and sets up the node's policy routing for redirected
// packets. It picks TCX when the kernel has it and clsact otherwise.
func Open(pinDir string) (*Redirector, error) { return OpenMode(pinDir, "") }

// OpenMode is Open with the attach mode forced; "" probes.
func OpenMode(pinDir string, mode Mode) (*Redirector, error) {
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock limit: %w", err)
	}
	if err := ensureBPFFS(pinDir); err != nil {
		return nil, err
	}
	r := &Redirector{pinDir: pinDir, mode: mode}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pinDir}}
	if err := loadRedirectObjects(&r.objs, opts); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load redirect programs: %+v", verr)
		}
		return nil, fmt.Errorf("load redirect programs: %w", err)
	}
	if r.mode == "" {
		r.mode = ModeClsact
		if haveTCX(r.objs.AmbitFromWire) {
			r.mode = ModeTCX
		}
	}
	if err := setupRouting(); err != nil {
		r.objs.Close()
		return nil, err
	}
	if err := r.setupPodPath(); err != nil {
		r.objs.Close()
		return nil, err
	}
	return r, nil
}

// Mode is how this Redirector attaches programs.
func (r *Redirector) Mode() Mode { return r.mode }

// Close releases this process's handles. Pinned maps and attachments stay:
// redirection goes on without the agent.
func (r *Redirector) Close() error { return r.objs.Close() }

// AttachPod attaches the pod program to the ingress of a pod's host-side
// veth, and the reply program to its egress.
func (r *Redirector) AttachPod(ifname string) error {
	if err := r.attach(ifname, r.objs.AmbitFromPod); err != nil {
		return err
	}
	return r.attachEgress(ifname, r.objs.AmbitToPod)
}

// AttachUplink attaches the wire program to the ingress of the node's
// uplink interface.
func (r *Redirector) AttachUplink(ifname string) error {
	return r.attach(ifname, r.objs.AmbitFromWire)
}

func (r *Redirector) linkPin(ifname string) string {
	return filepath.Join(r.pinDir, "links", ifname+ingressSuffix)
}

func (r *Redirector) egressPin(ifname string) string {
	return filepath.Join(r.pinDir, "links", ifname+egressSuffix)
}

const (
	ingressSuffix = "-ingress"
	egressSuffix  = "-egress"
)

// attachEgress attaches prog to the egress of ifname, first in the
// chain, or swaps it into the link already there. What runs there only
// takes packets that belong to ztunnel, so its place guards nothing: it
// is not re-anchored.
func (r *Redirector) attachEgress(ifname string, prog *ebpf.Program) error {
	r.attachMu.Lock()
	defer r.attachMu.Unlock()
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("attach egress program to %s: %w", ifname, err)
	}
	if r.mode == ModeClsact {
		return attachClsactDir(iface.Index, prog, netlink.HANDLE_MIN_EGRESS)
	}
	pin := r.egressPin(ifname)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		defer l.Close()
		info, ierr := l.Info()
		if ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == iface.Index {
			if err := l.Update(prog); err != nil {
				return fmt.Errorf("update egress program on %s: %w", ifname, err)
			}
			return nil
		}
		_ = l.Unpin()
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: iface.Index, Program: prog, Attach: ebpf.AttachTCXEgress, Anchor: link.Head()})
	if err != nil {
		return fmt.Errorf("attach egress program to %s: %w", ifname, err)
	}
	defer l.Close()
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		return fmt.Errorf("pin egress link of %s: %w", ifname, err)
	}
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pin egress link of %s: %w", ifname, err)
	}
	return nil
}

func (r *Redirector) attach(ifname string, prog *ebpf.Program) error {
	// The agent's workers and its guard attach concurrently.
	r.attachMu.Lock()
	defer r.attachMu.Unlock()
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("attach redirect to %s: %w", ifname, err)
	}
	if r.mode == ModeClsact {
		return attachClsact(iface.Index, prog)
	}
	pin := r.linkPin(ifname)
	// Already attached (agent restart): swap the program in place, as
	// long as it still runs first.
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		defer l.Close()
		info, ierr := l.Info()
		if ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == iface.Index {
			ahead, err := aheadOf(iface.Index, info.ID)
			if err != nil {
				return fmt.Errorf("attach redirect to %s: %w", ifname, err)
			}
			if len(ahead) == 0 {
				if err := l.Update(prog); err != nil {
					return fmt.Errorf("update redirect on %s: %w", ifname, err)
				}
				return nil
			}
			// Another program was put before Ambit's (a primary CNI that
			// re-attached): it could pass an enrolled pod's connection on
			// in plain text. Attach at the head again before letting go
			// of the old link, so that the interface is never without
			// Ambit's program; the kernel takes a program once per hook,
			// so the new link gets a copy of it.
			fresh, err := r.loadCopy()
			if err != nil {
				return fmt.Errorf("re-anchor redirect on %s: %w", ifname, err)
			}
			defer fresh.Close()
			if prog == r.objs.AmbitFromPod {
				prog = fresh.AmbitFromPod
			} else {
				prog = fresh.AmbitFromWire
			}
			return r.attachHead(ifname, iface.Index, prog, pin, l)
		}
		// A stale pin from an interface that was deleted and recreated.
		_ = l.Unpin()
	}
	return r.attachHead(ifname, iface.Index, prog, pin, nil)
}

// loadCopy loads the programs again, on the same pinned maps.
func (r *Redirector) loadCopy() (*redirectObjects, error) {
	var objs redirectObjects
	if err := loadRedirectObjects(&objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: r.pinDir}}); err != nil {
		return nil, fmt.Errorf("load redirect programs: %w", err)
	}
	return &objs, nil
}

// attachHead attaches prog first in the TCX ingress chain of the
// interface and pins the link, then detaches old, if any.
func (r *Redirector) attachHead(ifname string, ifindex int, prog *ebpf.Program, pin string, old link.Link) error {
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: ebpf.AttachTCXIngress, Anchor: link.Head()})
	if err != nil {
		return fmt.Errorf("attach redirect to %s: %w", ifname, err)
	}
	defer l.Close()
	if old != nil {
		if err := old.Unpin(); err != nil {
			l.Unpin()
			return fmt.Errorf("re-anchor redirect on %s: %w", ifname, err)
		}
		// The old link goes when its last handle (old, closed by the
		// caller) does.
	}
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		return fmt.Errorf("pin redirect link of %s: %w", ifname, err)
	}
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pin redirect link of %s: %w", ifname, err)
	}
	return nil
}

// aheadOf lists the programs that run before the one of link id in the
// TCX ingress chain of the interface.
func aheadOf(ifindex int, id link.ID) ([]ebpf.ProgramID, error) {
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return nil, fmt.Errorf("query tcx programs of ifindex %d: %w", ifindex, err)
	}
	var ahead []ebpf.ProgramID
	for _, p := range res.Programs {
		if lid, ok := p.LinkID(); ok && lid == id {
			return ahead, nil
		}
		ahead = append(ahead, p.ID)
	}
	return nil, fmt.Errorf("ambit's link %d is not attached to ifindex %d", id, ifindex)
}

// Guard checks every interface Ambit is attached to and puts Ambit's
// program back at the head of the chain where another program has been
// attached before it (TCX only). It returns the interfaces it fixed. The
// agent runs it periodically, so that a primary CNI that re-attaches at
// the head cannot keep Ambit's program from seeing enrolled pods'
// connections for longer than a period.
func (r *Redirector) Guard() (fixed []string, err error) {
	names, err := r.Attached()
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, name := range names {
		ahead, err := r.Ahead(name)
		if err != nil {
			if _, ierr := net.InterfaceByName(name); ierr != nil {
				continue // the interface went with its pod
			}
			errs = append(errs, err)
			continue
		}
		if len(ahead) == 0 {
			continue
		}
		prog, err := r.attachedProgram(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := r.attach(name, prog); err != nil {
			errs = append(errs, err)
			continue
		}
		fixed = append(fixed, name)
	}
	return fixed, errors.Join(errs...)
}

// attachedProgram is this process's copy of the program on ifname's
// link: the wire program or the pod program, told apart by name.
func (r *Redirector) attachedProgram(ifname string) (*ebpf.Program, error) {
	var id ebpf.ProgramID
	if r.mode == ModeClsact {
		iface, err := net.InterfaceByName(ifname)
		if err != nil {
			return nil, fmt.Errorf("program on %s: %w", ifname, err)
		}
		ours, _, err := clsactFilters(iface.Index, netlink.HANDLE_MIN_INGRESS)
		if err != nil {
			return nil, fmt.Errorf("program on %s: %w", ifname, err)
		}
		if len(ours) == 0 {
			return nil, fmt.Errorf("program on %s: ambit's tc filter is gone", ifname)
		}
		id = ebpf.ProgramID(ours[0].Id)
	} else {
		l, err := link.LoadPinnedLink(r.linkPin(ifname), nil)
		if err != nil {
			return nil, fmt.Errorf("program on %s: %w", ifname, err)
		}
		defer l.Close()
		info, err := l.Info()
		if err != nil {
			return nil, fmt.Errorf("program on %s: %w", ifname, err)
		}
		id = info.Program
	}
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return nil, fmt.Errorf("program on %s: %w", ifname, err)
	}
	defer p.Close()
	pi, err := p.Info()
	if err != nil {
		return nil, fmt.Errorf("program on %s: %w", ifname, err)
	}
	if pi.Name == "ambit_from_wire" {
		return r.objs.AmbitFromWire, nil
	}
	return r.objs.AmbitFromPod, nil
}

// Ahead lists the programs that run before Ambit's on the ingress of
// ifname: none, while Ambit's runs first, as it must (under clsact, the
// filters before Ambit's, by priority and, within one, newest first).
func (r *Redirector) Ahead(ifname string) ([]ebpf.ProgramID, error) {
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("programs ahead on %s: %w", ifname, err)
	}
	if r.mode == ModeClsact {
		ids, err := clsactAhead(iface.Index)
		if err != nil {
			return nil, fmt.Errorf("programs ahead on %s: %w", ifname, err)
		}
		return ids, nil
	}
	l, err := link.LoadPinnedLink(r.linkPin(ifname), nil)
	if err != nil {
		return nil, fmt.Errorf("programs ahead on %s: %w", ifname, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return nil, fmt.Errorf("programs ahead on %s: %w", ifname, err)
	}
	return aheadOf(iface.Index, info.ID)
}

// Detach removes the program from ifname. Detaching an interface that has
// none, or that is gone, is not an error.
func (r *Redirector) Detach(ifname string) error {
	if r.mode == ModeClsact {
		if iface, err := net.InterfaceByName(ifname); err == nil {
			return detachClsact(iface.Index)
		}
		return nil
	}
	var errs []error
	for _, pin := range []string{r.linkPin(ifname), r.egressPin(ifname)} {
		l, err := link.LoadPinnedLink(pin, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("detach redirect from %s: %w", ifname, err))
			continue
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("detach redirect from %s: %w", ifname, err))
		}
		l.Close() // closing the last reference detaches
	}
	return errors.Join(errs...)
}

// Attached lists the interfaces that have Ambit's program.
func (r *Redirector) Attached() ([]string, error) {
	if r.mode == ModeClsact {
		return clsactAttached()
	}
	entries, err := os.ReadDir(filepath.Join(r.pinDir, "links"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list redirect links: %w", err)
	}
	var names []string
	for _, e := range entries {
		if name, ok := strings.CutSuffix(e.Name(), ingressSuffix); ok {
			names = append(names, name)
		}
	}
	return names, nil
}

// Enroll captures the traffic of the pod with address ip from the next
// connection on.
func (r *Redirector) Enroll(ip netip.Addr) error {
	key, err := key(ip)
	if err != nil {
		return err
	}
	// The pod's way into the node first: the pod path needs it as soon
	// as ztunnel makes a connection for the pod.
	pl, err := hostLink(ip)
	if err != nil {
		return fmt.Errorf("enroll %s: %w", ip, err)
	}
	if err := r.objs.AmbitPodLinks.Update(key, pl, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("enroll %s: %w", ip, err)
	}
	if err := r.objs.AmbitPods.Update(key, redirectPodInfo{Flags: podCaptured}, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("enroll %s: %w", ip, err)
	}
	return nil
}

// hostLink is the host end of the veth that routes to a pod's address.
func hostLink(ip netip.Addr) (redirectPodLink, error) {
	routes, err := netlink.RouteGet(ip.AsSlice())
	if err != nil || len(routes) == 0 {
		return redirectPodLink{}, fmt.Errorf("find host interface of pod %s: %w", ip, err)
	}
	l, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return redirectPodLink{}, fmt.Errorf("find host interface of pod %s: %w", ip, err)
	}
	return podLink(l)
}

func podLink(l netlink.Link) (redirectPodLink, error) {
	pl := redirectPodLink{Ifindex: uint32(l.Attrs().Index)}
	if len(l.Attrs().HardwareAddr) != len(pl.Mac) {
		return pl, fmt.Errorf("interface %s has no Ethernet address", l.Attrs().Name)
	}
	copy(pl.Mac[:], l.Attrs().HardwareAddr)
	return pl, nil
}

// Unenroll stops capturing the pod's new connections. Removing one that is
// not enrolled is not an error.
func (r *Redirector) Unenroll(ip netip.Addr) error {
	key, err := key(ip)
	if err != nil {
		return err
	}
	if err := r.objs.AmbitPods.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unenroll %s: %w", ip, err)
	}
	if err := r.objs.AmbitPodLinks.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unenroll %s: %w", ip, err)
	}
	return nil
}

// Enrolled lists the enrolled pod addresses.
func (r *Redirector) Enrolled() ([]netip.Addr, error) { return enrolledIn(r.objs.AmbitPods) }

func enrolledIn(m *ebpf.Map) ([]netip.Addr, error) {
	var (
		k   uint32
		v   redirectPodInfo
		out []netip.Addr
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		out = append(out, addrFromKey(k))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list enrolled pods: %w", err)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// Stats are the programs' counters, summed over CPUs.
type Stats struct {
	Outbound, InboundPlain, InboundHBONE, DroppedNoListener uint64
	// PodPath counts packets ztunnel sent for a pod that re-entered
	// through the pod's veth, DroppedNoPodPath those that could not
	// (no enrolled pod has their source address), PodPathReplies the
	// replies to them handed back to ztunnel after NAT was undone.
	PodPath, DroppedNoPodPath, PodPathReplies uint64
}

// Stats reads the counters.
func (r *Redirector) Stats() (Stats, error) { return statsIn(r.objs.AmbitStats) }

// PinnedStats reads the counters pinned in pinDir, without loading the
// programs: for tests and debugging.
func PinnedStats(pinDir string) (Stats, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "ambit_stats"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return Stats{}, fmt.Errorf("load pinned stats: %w", err)
	}
	defer m.Close()
	return statsIn(m)
}

func statsIn(m *ebpf.Map) (Stats, error) {
	var s Stats
	dst := []*uint64{&s.Outbound, &s.InboundPlain, &s.InboundHBONE, &s.DroppedNoListener, &s.PodPath, &s.DroppedNoPodPath, &s.PodPathReplies}
	for i, d := range dst {
		var per []uint64
		if err := m.Lookup(uint32(i), &per); err != nil {
			return s, fmt.Errorf("read redirect stats: %w", err)
		}
		for _, v := range per {
			*d += v
		}
	}
	return s, nil
}

// Remove detaches everything, removes the pins and the policy routing:
// uninstall. Run it in the node's namespace.
func (r *Redirector) Remove() error {
	var errs []error
	names, err := r.Attached()
	errs = append(errs, err)
	for _, n := range append(names, PathDevice) {
		errs = append(errs, r.Detach(n))
	}
	errs = append(errs, r.objs.AmbitPods.Unpin(), r.objs.AmbitStats.Unpin(), r.objs.AmbitPodLinks.Unpin(), r.objs.AmbitPathDev.Unpin())
	errs = append(errs, r.Close(), removeRouting(), removePodPath(), os.RemoveAll(r.pinDir))
	return errors.Join(errs...)
}

// key is the map key of an IPv4 address: its bytes in network order, read
// as the host-order integer the C side compares with.
func key(ip netip.Addr) (uint32, error) {
	ip = ip.Unmap()
	if !ip.Is4() {
		return 0, fmt.Errorf("pod address %s: only IPv4 is redirected so far", ip)
	}
	b := ip.As4()
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24, nil
}

func addrFromKey(k uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(k), byte(k >> 8), byte(k >> 16), byte(k >> 24)})
}

// ensureBPFFS makes sure dir can hold pins: its parent must be on a bpf
// filesystem. Under /sys/fs/bpf one is mounted if none is there (a node's
// first boot); anywhere else a missing bpffs is an error, because pins in
// a private mount would vanish with the agent.
func ensureBPFFS(dir string) error {
	const root = "/sys/fs/bpf"
	parent := filepath.Dir(filepath.Clean(dir))
	if !onBPFFS(parent) {
		if !strings.HasPrefix(parent+"/", root+"/") {
			return fmt.Errorf("pin dir %s: %s is not on a bpf filesystem", dir, parent)
		}
		if err := os.MkdirAll(root, 0o755); err != nil {
			return fmt.Errorf("mount bpffs: %w", err)
		}
		if err := unix.Mount("bpf", root, "bpf", 0, ""); err != nil {
			return fmt.Errorf("mount bpffs at %s: %w", root, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin dir %s: %w", dir, err)
	}
	return nil
}

func onBPFFS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.BPF_FS_MAGIC
}

// setupRouting makes marked packets local (the condition for
// bpf_sk_assign), and keeps kube-proxy from rewriting a Service VIP
// before ztunnel sees it: captured packets skip the nat table's
// PREROUTING (first rule there). They stay tracked: conntrack must see
// both directions of a captured connection, the pod's packets here and
// ztunnel's answers in OUTPUT, or it takes those answers for INVALID
// (the first an unknown SYN-ACK), and NetworkPolicy implementations and
// kube-proxy drop INVALID packets. The same holds for what ztunnel sends
// with the mark (HBONE to its own node), tracked in OUTPUT. Only replies
// the reply program hands back through the path device are not tracked
// (again): conntrack saw them on their way to the pod.
func setupRouting() error {
	_, all, _ := net.ParseCIDR("0.0.0.0/0")
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	route := &netlink.Route{LinkIndex: lo.Attrs().Index, Dst: all, Table: RouteTable, Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("add local route table %d: %w", RouteTable, err)
	}
	rule := markRule()
	rules, err := netlink.RuleList(netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list ip rules: %w", err)
	}
	if !slices.ContainsFunc(rules, isMarkRule) {
		if err := netlink.RuleAdd(rule); err != nil {
			return fmt.Errorf("add ip rule fwmark %#x: %w", Mark, err)
		}
	}
	// An older agent kept captured packets out of conntrack altogether.
	for _, chain := range []string{"PREROUTING", "OUTPUT"} {
		for exec.Command("iptables", notrackArgs("-D", chain, Mark)...).Run() == nil {
		}
	}
	for _, r := range iptablesRules() {
		if exec.Command("iptables", r.args("-C")...).Run() == nil {
			continue
		}
		if out, err := exec.Command("iptables", r.args("-I")...).CombinedOutput(); err != nil {
			return fmt.Errorf("add %s rule: %w: %s", r.table, err, out)
		}
	}
	return nil
}

// iptablesRule is one rule the redirection needs, inserted first in its
// chain.
type iptablesRule struct {
	table, chain string
	spec         []string
}

func (r iptablesRule) args(op string) []string {
	args := []string{"-t", r.table, op, r.chain}
	if op == "-I" {
		args = append(args, "1")
	}
	return append(append(args, r.spec...), "-m", "comment", "--comment", "ambit redirect")
}

func iptablesRules() []iptablesRule {
	mark := fmt.Sprintf("%#x/%#x", Mark, Mark)
	return []iptablesRule{
		{"nat", "PREROUTING", []string{"-m", "mark", "--mark", mark, "-j", "RETURN"}},
		{"raw", "PREROUTING", []string{"-i", PathDevice, "-j", "NOTRACK"}},
	}
}

func removeRouting() error {
	var errs []error
	rules, err := netlink.RuleList(netlink.FAMILY_V4)
	errs = append(errs, err)
	for _, r := range rules {
		if isMarkRule(r) {
			errs = append(errs, netlink.RuleDel(&r))
		}
	}
	_, all, _ := net.ParseCIDR("0.0.0.0/0")
	if lo, err := netlink.LinkByName("lo"); err == nil {
		err := netlink.RouteDel(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: all, Table: RouteTable, Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST})
		if err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete local route: %w", err))
		}
	}
	for _, r := range iptablesRules() {
		for exec.Command("iptables", r.args("-D")...).Run() == nil {
		}
	}
	for _, chain := range []string{"PREROUTING", "OUTPUT"} {
		for exec.Command("iptables", notrackArgs("-D", chain, Mark)...).Run() == nil {
		}
	}
	return errors.Join(errs...)
}

func markRule() *netlink.Rule {
	rule := netlink.NewRule()
	rule.Mark = Mark
	rule.Mask = ptr(uint32(Mark))
	rule.Table = RouteTable
	rule.Priority = rulePriority
	return rule
}

func isMarkRule(r netlink.Rule) bool {
	return r.Table == RouteTable && r.Mark == Mark
}

func ptr[T any](v T) *T { return &v }

// HostInterface returns the node-side interface that routes to a pod's
// address: the host end of its veth.
func HostInterface(podIP netip.Addr) (string, error) {
	routes, err := netlink.RouteGet(podIP.AsSlice())
	if err != nil || len(routes) == 0 {
		return "", fmt.Errorf("find host interface of pod %s: %w", podIP, err)
	}
	l, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return "", fmt.Errorf("find host interface of pod %s: %w", podIP, err)
	}
	return l.Attrs().Name, nil
}

// PinnedEnrolled reads the enrolled pod addresses from the map pinned in
// pinDir, without loading the programs: for tests and debugging.
func PinnedEnrolled(pinDir string) ([]netip.Addr, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "ambit_pods"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("load pinned pod map: %w", err)
	}
	defer m.Close()
	return enrolledIn(m)
}
