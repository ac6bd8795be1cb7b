// Package lab runs a whole Kubernetes cluster on one Linux machine, out of
// real parts, for Ambit's end-to-end tests and demo.
//
// The control plane (etcd, kube-apiserver, kube-controller-manager, CoreDNS)
// runs in a network namespace of its own, the "control-plane node". Each
// worker node is a network namespace too, joined to the others by a bridge
// in yet another namespace, and runs kube-proxy in iptables mode and a
// kubelet stand-in (Kubelet) that runs pods: a network namespace per pod,
// wired by the real CNI plugins through libcni, with the workload process
// started inside it. Nothing the lab does touches the host's own network:
// the only way in is a TCP forwarder from a loopback port of the host to
// the apiserver.
package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/internal/netns"
)

// Addressing of every lab. Labs are isolated from each other and from the
// host by namespaces, so all of them use the same addresses.
const (
	// NamePrefix starts the name of every network namespace a lab makes.
	NamePrefix = "ambit-"
	// ClusterDomain is the DNS domain of Services.
	ClusterDomain = "cluster.local"
	// ClusterCIDR holds every node's pod CIDR (10.244.<node>.0/24).
	ClusterCIDR = "10.244.0.0/16"
	// ServiceCIDR holds the ClusterIPs.
	ServiceCIDR = "10.96.0.0/16"
	// DNSServiceIP is the ClusterIP of kube-system/kube-dns.
	DNSServiceIP = "10.96.0.10"
	// nodeSubnet is the bridge network of the nodes; the control plane is
	// .2 and node i (from 1) is .10+i.
	nodeSubnet = "172.30.0.0/24"
	apiPort    = 6443
)

var controlPlaneIP = netip.MustParseAddr("172.30.0.2")

// Config says what lab to build.
type Config struct {
	// Nodes is the number of worker nodes; 2 when zero.
	Nodes int
	// Binaries are the programs to run, from EnsureBinaries.
	Binaries Binaries
	// Images maps a container image name to the program that stands in for
	// it. The echo workload is always there as EchoImage.
	Images map[string]string
	// NetworkPolicy runs a NetworkPolicy controller on every node
	// (kube-router's, firewall only: Binaries.KubeRouter from
	// EnsureKubeRouter), standing in for a primary CNI's enforcement. Off by
	// default: only the tests about NetworkPolicy pay for it.
	NetworkPolicy bool
	// Scheduler runs kube-scheduler, so that pods made by controllers
	// (a Deployment's ReplicaSet) are placed on nodes and run, as on a
	// cluster: istiod's waypoint Deployments. Off by default: tests that
	// create pods name their node, and tests of controllers that make
	// pods stand in for the kubelet themselves. Real nodes always have it.
	Scheduler bool
	// Dir keeps the lab's files (PKI, logs, pod files); a new temporary
	// directory when empty. It is removed by Close.
	Dir string
	Log *slog.Logger
	// RealNodes makes every node a real one (realnode.go): a real kubelet
	// with containerd and runc, in a mount namespace of its own, pulling
	// from the lab's registry (RegistryAddr), which the caller serves; the
	// control plane then runs kube-scheduler too. Images is not used.
	RealNodes bool
	// SandboxImage is containerd's pause image on real nodes; PauseImage
	// when empty.
	SandboxImage string
}

// EchoImage is the image name that runs the echo test workload,
// BookinfoImage the one that runs the Bookinfo sample, and WaypointImage
// Ambit's waypoint proxy (istiod's --waypoint-image in the lab).
const (
	EchoImage     = "ambit.dev/echo"
	BookinfoImage = "ambit.dev/bookinfo"
	WaypointImage = "ambit.dev/waypoint"
)

// Lab is a running cluster.
type Lab struct {
	// ID makes this lab's namespace names and process markers unique.
	ID  string
	Dir string
	// Kubeconfig is an admin kubeconfig file for people and tools
	// (kubectl), valid while the lab runs.
	Kubeconfig string
	// RESTConfig and Client are the admin client of the cluster.
	RESTConfig *rest.Config
	Client     kubernetes.Interface
	Nodes      []*Node

	cfg      Config
	log      *slog.Logger
	pki      *pki
	bridge   *netns.NS
	cp       *netns.NS
	procs    []*process // stopped in reverse order
	apiIndex int        // kube-apiserver in procs
	apiArgs  []string
	apiAddr  string // the forwarder, host loopback
	stopFwd  func()
	cancel   context.CancelFunc
	bg       sync.WaitGroup
	closeErr error
	closed   sync.Once
}

// Node is a worker node.
type Node struct {
	Name    string
	IP      netip.Addr
	PodCIDR netip.Prefix
	// NS is the node's network namespace: the host network of its pods.
	NS      *netns.NS
	Kubelet *Kubelet
	// CNIConfDir and CNIBinDir are the node's CNI directories, as
	// /etc/cni/net.d and /opt/cni/bin on a real node. The kubelet stand-in
	// finds plugins in CNIBinDir first, then in the reference plugins' dir.
	CNIConfDir string
	CNIBinDir  string

	real *realNode // a real node's kubelet and containerd, nil for the stand-in
}

// Start builds and starts a lab. On error, everything already started is
// torn down.
func Start(ctx context.Context, cfg Config) (_ *Lab, err error) {
	if cfg.Nodes == 0 {
		cfg.Nodes = 2
	}
	if cfg.Nodes > 200 {
		return nil, fmt.Errorf("start lab: %d nodes: want at most 200", cfg.Nodes)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Binaries.KubeAPIServer == "" {
		return nil, errors.New("start lab: no binaries: call EnsureBinaries first")
	}
	if cfg.NetworkPolicy && cfg.Binaries.KubeRouter == "" {
		return nil, errors.New("start lab: NetworkPolicy without Binaries.KubeRouter: call EnsureKubeRouter first")
	}
	idb := make([]byte, 3)
	rand.Read(idb)
	l := &Lab{ID: hex.EncodeToString(idb), cfg: cfg}
	l.log = cfg.Log.With("lab", l.ID)
	if cfg.Dir == "" {
		cfg.Dir, err = os.MkdirTemp("", "ambit-lab-"+l.ID+"-")
		if err != nil {
			return nil, fmt.Errorf("start lab: %w", err)
		}
	}
	l.Dir = cfg.Dir
	l.cfg = cfg
	if err := l.SetOwner(os.Getpid()); err != nil {
		return nil, fmt.Errorf("start lab: %w", err)
	}
	// An interrupted test run cannot clean up after itself; the next lab
	// does it.
	if err := CleanStale(); err != nil {
		l.log.Warn("clean stale labs", logkey.Error, err)
	}
	bgCtx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	defer func() {
		if err != nil {
			if cerr := l.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
	}()

	start := time.Now()
	if err := ensureBPFFS(); err != nil {
		return nil, err
	}
	if err := l.buildNetwork(); err != nil {
		return nil, err
	}
	if err := l.startControlPlane(ctx); err != nil {
		return nil, err
	}
	if cfg.RealNodes || cfg.Scheduler {
		if err := l.startScheduler(ctx); err != nil {
			return nil, err
		}
	}
	if err := l.startDNS(ctx); err != nil {
		return nil, err
	}
	if cfg.NetworkPolicy {
		if err := l.allowKubeRouter(ctx); err != nil {
			return nil, err
		}
	}
	for _, n := range l.Nodes {
		if err := l.startNode(ctx, bgCtx, n); err != nil {
			return nil, err
		}
	}
	l.log.Info("lab ready", "nodes", len(l.Nodes), "kubeconfig", l.Kubeconfig, "took", time.Since(start).Round(time.Millisecond))
	return l, nil
}

func (l *Lab) nsName(role string) string { return NamePrefix + l.ID + "-" + role }

// buildNetwork makes the bridge, the control-plane namespace and one
// namespace per node, with routes between the nodes' pod CIDRs.
func (l *Lab) buildNetwork() error {
	var err error
	if l.bridge, err = netns.Create(l.nsName("net")); err != nil {
		return err
	}
	bh, err := netns.Netlink(l.bridge)
	if err != nil {
		return err
	}
	defer bh.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := bh.LinkAdd(br); err != nil {
		return fmt.Errorf("add bridge: %w", err)
	}
	if err := bh.LinkSetUp(br); err != nil {
		return fmt.Errorf("set bridge up: %w", err)
	}

	if l.cp, err = netns.Create(l.nsName("cp")); err != nil {
		return err
	}
	if err := l.attach(bh, br, l.cp, "v-cp", controlPlaneIP); err != nil {
		return err
	}
	for i := 1; i <= l.cfg.Nodes; i++ {
		name := fmt.Sprintf("node%d", i)
		ns, err := netns.Create(l.nsName(name))
		if err != nil {
			return err
		}
		n := &Node{
			Name:    name,
			IP:      netip.AddrFrom4([4]byte{172, 30, 0, byte(10 + i)}),
			PodCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24),
			NS:      ns,
		}
		l.Nodes = append(l.Nodes, n)
		if err := l.attach(bh, br, ns, "v-"+name, n.IP); err != nil {
			return err
		}
		if err := sysctl(ns, "net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
	}

	// Processes started in the lab resolve through the cluster DNS, never
	// the host's resolver (which lives outside the lab).
	nodeResolv := fmt.Sprintf("search svc.%[1]s %[1]s\nnameserver %[2]s\noptions ndots:5\n", ClusterDomain, DNSServiceIP)
	for _, n := range l.Nodes {
		if err := n.NS.SetEtcFile("resolv.conf", []byte(nodeResolv)); err != nil {
			return err
		}
	}
	cpResolv := fmt.Sprintf("search svc.%s %s\nnameserver 127.0.0.1\n", ClusterDomain, ClusterDomain)
	if err := l.cp.SetEtcFile("resolv.conf", []byte(cpResolv)); err != nil {
		return err
	}

	// Routes: every node reaches the other nodes' pods through them, and
	// sends Service traffic out on the wire (kube-proxy rewrites it before
	// it leaves); the control plane reaches every pod.
	_, svc, _ := net.ParseCIDR(ServiceCIDR)
	for _, n := range l.Nodes {
		h, err := netns.Netlink(n.NS)
		if err != nil {
			return err
		}
		eth, err := h.LinkByName("eth0")
		if err != nil {
			h.Close()
			return fmt.Errorf("find eth0 of %s: %w", n.Name, err)
		}
		routes := []netlink.Route{{LinkIndex: eth.Attrs().Index, Dst: svc, Scope: netlink.SCOPE_LINK}}
		for _, o := range l.Nodes {
			if o != n {
				routes = append(routes, netlink.Route{LinkIndex: eth.Attrs().Index, Dst: prefixNet(o.PodCIDR), Gw: o.IP.AsSlice()})
			}
		}
		for _, r := range routes {
			if err := h.RouteAdd(&r); err != nil {
				h.Close()
				return fmt.Errorf("add route %s on %s: %w", r.Dst, n.Name, err)
			}
		}
		h.Close()
	}
	h, err := netns.Netlink(l.cp)
	if err != nil {
		return err
	}
	defer h.Close()
	eth, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0 of control plane: %w", err)
	}
	for _, n := range l.Nodes {
		r := netlink.Route{LinkIndex: eth.Attrs().Index, Dst: prefixNet(n.PodCIDR), Gw: n.IP.AsSlice()}
		if err := h.RouteAdd(&r); err != nil {
			return fmt.Errorf("add route %s on control plane: %w", r.Dst, err)
		}
	}
	return nil
}

// attach connects ns to the bridge with a veth pair whose inner end is eth0
// with address ip in nodeSubnet.
func (l *Lab) attach(bh *netlink.Handle, br *netlink.Bridge, ns *netns.NS, outer string, ip netip.Addr) error {
	fd, err := netns.Fd(ns)
	if err != nil {
		return err
	}
	defer fd.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: outer, MasterIndex: br.Attrs().Index},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(fd.Fd())),
	}
	if err := bh.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s for %s: %w", outer, ns.Name(), err)
	}
	if err := bh.LinkSetUp(veth); err != nil {
		return fmt.Errorf("set %s up: %w", outer, err)
	}
	h, err := netns.Netlink(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := loopbackUp(h, ns); err != nil {
		return err
	}
	eth, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0 in %s: %w", ns.Name(), err)
	}
	addr := &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(ip, 24))}
	addr.IPNet.IP = ip.AsSlice()
	if err := h.AddrAdd(eth, addr); err != nil {
		return fmt.Errorf("add %s to eth0 in %s: %w", ip, ns.Name(), err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("set eth0 up in %s: %w", ns.Name(), err)
	}
	return nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// sysctl sets a per-namespace sysctl such as "net/ipv4/ip_forward".
func sysctl(ns *netns.NS, key, value string) error {
	return ns.Do(func() error {
		if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, ns.Name(), err)
		}
		return nil
	})
}

// APIServerURL is the apiserver's address as the nodes and pods reach it.
func APIServerURL() string {
	return fmt.Sprintf("https://%s", net.JoinHostPort(controlPlaneIP.String(), fmt.Sprint(apiPort)))
}

// ControlPlaneIP is the address of the control-plane node on the node
// network.
func ControlPlaneIP() netip.Addr { return controlPlaneIP }

// BridgeNS is the namespace of the bridge that joins the nodes: the wire
// between them, where a test can capture what crosses it.
func (l *Lab) BridgeNS() *netns.NS { return l.bridge }

// ControlPlaneIP is the control plane's address on the lab's wire: an
// address outside the pod network that every node routes to.
func (l *Lab) ControlPlaneIP() netip.Addr { return controlPlaneIP }

// ControlPlaneNS is the control-plane node's network namespace.
func (l *Lab) ControlPlaneNS() *netns.NS { return l.cp }

// Node returns the node called name, or nil.
func (l *Lab) Node(name string) *Node {
	for _, n := range l.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// PodNetNS returns the network namespace of pod namespace/name, from the
// kubelet of the node the pod runs on.
func (l *Lab) PodNetNS(ctx context.Context, namespace, name string) (*netns.NS, error) {
	p, err := l.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get pod %s/%s: %w", namespace, name, err)
	}
	n := l.Node(p.Spec.NodeName)
	if n == nil {
		return nil, fmt.Errorf("pod %s/%s: on node %q, not one of the lab's", namespace, name, p.Spec.NodeName)
	}
	pns, ok := n.Kubelet.PodNetNS(namespace, name)
	if !ok {
		return nil, fmt.Errorf("pod %s/%s: no network namespace", namespace, name)
	}
	return pns, nil
}

// Close stops everything the lab started and removes its namespaces and
// files. It is safe to call more than once.
func (l *Lab) Close() error {
	l.closed.Do(func() { l.closeErr = l.close() })
	return l.closeErr
}

func (l *Lab) close() error {
	var errs []error
	// Kubelets first: they run CNI DEL for their pods.
	for _, n := range l.Nodes {
		if n.Kubelet != nil {
			if err := n.Kubelet.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		if n.real != nil {
			if err := n.real.close(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if l.cancel != nil {
		l.cancel()
	}
	l.bg.Wait()
	for i := len(l.procs) - 1; i >= 0; i-- {
		l.procs[i].stop(5 * time.Second)
	}
	if l.stopFwd != nil {
		l.stopFwd()
	}
	// Anything that escaped its process group.
	if pids, err := labProcesses(l.ID); err != nil {
		errs = append(errs, err)
	} else if err := killAll(pids); err != nil {
		errs = append(errs, err)
	}
	names, err := netns.List(NamePrefix + l.ID + "-")
	if err != nil {
		errs = append(errs, err)
	}
	for _, name := range names {
		if err := netns.Delete(name); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, removePins(l.ID))
	if err := os.Remove(filepath.Join(registryDir, l.ID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("unregister lab: %w", err))
	}
	if l.Dir != "" && os.Getenv("AMBIT_LAB_KEEP_DIR") == "" {
		if err := os.RemoveAll(l.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove lab dir: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close lab %s: %w", l.ID, err)
	}
	return nil
}

// Logs returns the last lines of every log the lab's processes wrote, for
// a failing test to print.
func (l *Lab) Logs(lines int) string {
	var b strings.Builder
	for _, p := range l.procs {
		fmt.Fprintf(&b, "==== %s (%s)\n%s\n", p.name, p.logPath, p.tail(lines))
	}
	for _, n := range l.Nodes {
		if n.Kubelet != nil {
			b.WriteString(n.Kubelet.logs(lines))
		}
		if n.real != nil {
			for _, p := range []*process{n.real.containerd, n.real.kubelet} {
				if p != nil {
					fmt.Fprintf(&b, "==== %s (%s)\n%s\n", p.name, p.logPath, p.tail(lines))
				}
			}
		}
	}
	return b.String()
}

// CleanAll removes what crashed labs left behind: processes marked with
// EnvLabID, namespaces named NamePrefix..., and temporary lab directories.
// It must not run while a lab is in use.
func CleanAll() error {
	var errs []error
	pids, err := labProcesses("")
	if err != nil {
		errs = append(errs, err)
	} else if err := killAll(pids); err != nil {
		errs = append(errs, err)
	}
	names, err := netns.List(NamePrefix)
	if err != nil {
		errs = append(errs, err)
	}
	for _, name := range names {
		if err := netns.Delete(name); err != nil {
			errs = append(errs, err)
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "ambit-lab-*"))
	for _, d := range dirs {
		errs = append(errs, cleanRealNodes("", d))
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, removePins(""))
	return errors.Join(errs...)
}

// BPFPinDir is where a lab node's eBPF objects are pinned: a directory of
// its own per lab and node, removed with the lab.
func (l *Lab) BPFPinDir(n *Node) string {
	return filepath.Join(bpffs, NamePrefix+l.ID+"-"+n.Name)
}

// bpffs is the lab's bpf filesystem: the nodes' /sys/fs/bpf. It is not
// under /sys because `ip netns exec` mounts a fresh sysfs for the processes
// it starts, hiding the host's /sys/fs/bpf; a mount under /run stays
// visible to them, so pins survive the processes that made them, as on a
// real node where the DaemonSet mounts the host's bpffs.
const bpffs = "/run/ambit-lab-bpffs"

// ensureBPFFS mounts the lab's bpf filesystem once; labs share it.
func ensureBPFFS() error {
	var st unix.Statfs_t
	if unix.Statfs(bpffs, &st) == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(bpffs, 0o700); err != nil {
		return fmt.Errorf("mount lab bpffs: %w", err)
	}
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount lab bpffs at %s: %w", bpffs, err)
	}
	return nil
}

// removePins removes the bpffs directories of lab id (all labs if id is
// empty). Removing a pin releases the object once nothing else holds it.
func removePins(id string) error {
	dirs, _ := filepath.Glob(filepath.Join(bpffs, NamePrefix+id+"*"))
	var errs []error
	for _, d := range dirs {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, fmt.Errorf("remove pins %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// ownerFile in a lab directory holds the pid of the process that runs the
// lab.
const ownerFile = "owner"

// registryDir holds a file per running lab, named by its id and holding
// its owner's pid. A lab's directory is under its process's TMPDIR, or
// Config.Dir anywhere, so another process's CleanStale cannot find it
// there: without the registry it took a live lab run with another
// TMPDIR for a stale one and deleted its namespaces.
const registryDir = "/run/ambit-labs"

// SetOwner records pid as the lab's owner, in its directory and in the
// registry of running labs: CleanStale takes the lab for a stale one
// once that process is gone (tests of CleanStale orphan a lab so).
func (l *Lab) SetOwner(pid int) error {
	if err := os.WriteFile(filepath.Join(l.Dir, ownerFile), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return fmt.Errorf("set lab owner: %w", err)
	}
	return register(l.ID, pid)
}

func register(id string, pid int) error {
	if err := os.MkdirAll(registryDir, 0o755); err != nil {
		return fmt.Errorf("register lab: %w", err)
	}
	if err := os.WriteFile(filepath.Join(registryDir, id), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return fmt.Errorf("register lab: %w", err)
	}
	return nil
}

// registered returns the ids of the labs whose owners live, and removes
// the others' entries.
func registered() map[string]bool {
	live := map[string]bool{}
	entries, _ := os.ReadDir(registryDir)
	for _, e := range entries {
		path := filepath.Join(registryDir, e.Name())
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && processAlive(pid) {
			live[e.Name()] = true
			continue
		}
		os.Remove(path)
	}
	return live
}

// CleanStale removes labs whose owning process is gone: their namespaces,
// processes and directories. Labs of live processes are left alone, so it
// is safe while other labs run.
func CleanStale() error {
	live := registered()
	var errs []error
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "ambit-lab-*"))
	for _, d := range dirs {
		id, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(d), "ambit-lab-"), "-")
		if live[id] {
			continue
		}
		data, err := os.ReadFile(filepath.Join(d, ownerFile))
		if err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && processAlive(pid) {
				live[id] = true
				continue
			}
		} else if fi, err := os.Stat(d); err == nil && time.Since(fi.ModTime()) < time.Minute {
			live[id] = true // being created
			continue
		}
		if pids, err := labProcesses(id); err == nil {
			errs = append(errs, killAll(pids))
		}
		errs = append(errs, cleanRealNodes(id, d))
		errs = append(errs, os.RemoveAll(d))
	}
	names, err := netns.List(NamePrefix)
	if err != nil {
		return err
	}
	// Only names of labs ("ambit-<6 hex digits>-..."): other tests' own
	// namespaces share the prefix and are not ours to remove.
	for _, name := range names {
		id, ok := labIDOf(name)
		if ok && !live[id] {
			errs = append(errs, netns.Delete(name))
		}
	}
	pins, _ := filepath.Glob(filepath.Join(bpffs, NamePrefix+"*"))
	for _, p := range pins {
		id, ok := labIDOf(filepath.Base(p))
		if ok && !live[id] {
			errs = append(errs, os.RemoveAll(p))
		}
	}
	return errors.Join(errs...)
}

// labIDOf returns the lab id in a name made by a lab.
func labIDOf(name string) (string, bool) {
	id, rest, ok := strings.Cut(strings.TrimPrefix(name, NamePrefix), "-")
	if !ok || rest == "" || len(id) != 6 || !strings.HasPrefix(name, NamePrefix) {
		return "", false
	}
	for _, c := range id {
		if !strings.ContainsRune("0123456789abcdef", c) {
			return "", false
		}
	}
	return id, true
}

func processAlive(pid int) bool {
	return syscall.Kill(pid, 0) == nil && !isZombieOrGone(pid)
}

// restConfig loads a kubeconfig file into a client config.
func restConfig(path string) (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", path, err)
	}
	cfg.QPS = 200
	cfg.Burst = 400
	return cfg, nil
}

// Leftovers lists what of lab id is still there (namespaces, processes,
// and of real nodes cgroups and mounts under the lab's directory dir, if
// given), for tests to assert that Close removed everything.
func Leftovers(id string, dir ...string) ([]string, error) {
	var left []string
	for _, d := range dir {
		left = append(left, realLeftovers(id, d)...)
	}
	if len(dir) == 0 {
		left = append(left, realLeftovers(id, "")...)
	}
	names, err := netns.List(NamePrefix + id + "-")
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		left = append(left, "netns "+n)
	}
	pins, _ := filepath.Glob(filepath.Join(bpffs, NamePrefix+id+"-*"))
	for _, p := range pins {
		left = append(left, "bpf pins "+p)
	}
	pids, err := labProcesses(id)
	if err != nil {
		return nil, err
	}
	for _, p := range pids {
		if !isZombieOrGone(p) {
			left = append(left, fmt.Sprintf("process %d", p))
		}
	}
	return left, nil
}

// loopbackUp sets lo up in ns, as a container runtime does for every pod
// sandbox.
func loopbackUp(h *netlink.Handle, ns *netns.NS) error {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo in %s: %w", ns.Name(), err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up in %s: %w", ns.Name(), err)
	}
	return nil
}
