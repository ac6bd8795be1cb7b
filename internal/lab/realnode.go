package lab

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
)

// A real node runs a real kubelet with Debian's containerd and runc in
// place of the stand-in (Config.RealNodes). Its processes and every
// container of the node live in the node's network namespace and in a
// mount namespace of the node's own, in which the node's directories are
// bind-mounted over the standard paths (/etc/cni/net.d, /opt/cni/bin,
// /var/lib/kubelet, /var/lib/containerd, /run/containerd, /var/log/pods,
// /var/lib/cni, /run/ambit, /run/netns) and /sys/fs/bpf is a bpffs of the
// node's own: the chart's hostPath volumes name those paths, and a second
// node beside it must not see them. docs/real-node-plan.md has the design.
const (
	// RegistryAddr is where the lab's registry listens, on the control-plane
	// node: containerd on real nodes pulls every image from it
	// (MirroredRegistries). The test serves it (e2e/realnode).
	RegistryAddr = "172.30.0.2:5000"
	// PauseImage is the pod sandbox image of real nodes, built from
	// internal/lab/cmd/pause and served by the lab's registry.
	PauseImage = "localhost:5000/ambit/pause:lab"
)

// MirroredRegistries are the registry names containerd on a real node
// sends to RegistryAddr, with no fallback to the real ones: no pull ever
// leaves the lab.
var MirroredRegistries = []string{"localhost:5000", "ambit.dev", "docker.io", "registry.k8s.io", "gcr.io", "ghcr.io", "quay.io"}

// nodePaths maps the standard paths of a node to the node's own
// directories (relative to its node directory).
var nodePaths = []struct{ std, own string }{
	{"/etc/cni/net.d", "cni/net.d"},
	{"/opt/cni/bin", "cni/bin"},
	{"/var/lib/cni", "cni/lib"},
	{"/var/lib/kubelet", "kubelet"},
	{"/var/lib/containerd", "containerd/root"},
	{"/run/containerd", "containerd/state"},
	{"/var/log/pods", "pods-logs"},
	{"/run/ambit", "ambit"},
	// containerd bind-mounts each pod sandbox's network namespace on a
	// file it creates in /var/run/netns (cni-<uuid>). The host's
	// /run/netns is a shared mount of the host's filesystem: without a
	// directory of the node's own there, the files (not the mounts, which
	// stay in the node's namespace) land on the host and outlive the node
	// when its containers are killed rather than stopped.
	{"/run/netns", "netns"},
}

// realNode is what the lab keeps of a real node to tear it down.
type realNode struct {
	dir        string
	mntNS      string // the mount namespace file
	cgroupRoot string // the kubelet's cgroupRoot, e.g. /ambit-<id>-node1
	containerd *process
	kubelet    *process
}

// MountNS is the file of a real node's mount namespace (nsenter
// --mount=<file>), "" for a stand-in node.
func (n *Node) MountNS() string {
	if n.real == nil {
		return ""
	}
	return n.real.mntNS
}

// PodNetNS lists the files of a real node's /var/run/netns (the network
// namespaces containerd made for pod sandboxes, cni-<uuid>) as the host
// sees them: in the node's own directory, not in the host's /run/netns.
func (n *Node) PodNetNS() []string {
	if n.real == nil {
		return nil
	}
	entries, _ := os.ReadDir(filepath.Join(n.real.dir, "netns"))
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// ContainerdSocket is a real node's containerd socket as the host sees it.
func (n *Node) ContainerdSocket() string {
	if n.real == nil {
		return ""
	}
	return filepath.Join(n.real.dir, "containerd", "state", "containerd.sock")
}

// startRealNode makes the node's mount namespace and starts containerd,
// the kubelet and kube-proxy in it, returning once the Node is Ready.
func (l *Lab) startRealNode(ctx context.Context, n *Node, dir string) error {
	if l.cfg.Binaries.Kubelet == "" || l.cfg.Binaries.RuncWrap == "" {
		return errors.New("start real node: no kubelet or runc wrapper in Binaries: call EnsureBinaries")
	}
	containerd, err := lookPath("containerd", "/usr/bin/containerd", "apt-get install containerd runc")
	if err != nil {
		return err
	}
	if _, err := os.Stat("/usr/sbin/runc"); err != nil {
		return fmt.Errorf("find runc: %w (apt-get install runc)", err)
	}
	rn := &realNode{dir: dir, cgroupRoot: "/" + l.nsName(n.Name)}
	n.real = rn
	for _, p := range nodePaths {
		if err := os.MkdirAll(filepath.Join(dir, p.own), 0o755); err != nil {
			return fmt.Errorf("create node dir: %w", err)
		}
	}
	n.CNIConfDir, n.CNIBinDir = filepath.Join(dir, "cni", "net.d"), filepath.Join(dir, "cni", "bin")
	for _, p := range []string{"ptp", "bridge", "host-local", "loopback", "portmap"} {
		if err := copyFile(filepath.Join(l.cfg.Binaries.CNIDir, p), filepath.Join(n.CNIBinDir, p), 0o755); err != nil {
			return err
		}
	}
	if err := writeConflist(filepath.Join(n.CNIConfDir, "10-lab.conflist"), n, filepath.Join(dir, "ipam")); err != nil {
		return err
	}
	if err := l.makeMountNS(n, rn); err != nil {
		return err
	}
	if err := makeCgroupRoot(rn.cgroupRoot); err != nil {
		return err
	}

	// containerd.
	certsDir := filepath.Join(dir, "certs.d")
	for _, reg := range MirroredRegistries {
		d := filepath.Join(certsDir, reg)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("write registry hosts: %w", err)
		}
		// The lab registry as the mirror and as the server containerd
		// falls back to: the only place to pull from. (containerd 1.6
		// rejects a hosts.toml without a host table.)
		hosts := fmt.Sprintf("server = %[1]q\n\n[host.%[1]q]\n  capabilities = [\"pull\", \"resolve\"]\n", "http://"+RegistryAddr)
		if err := os.WriteFile(filepath.Join(d, "hosts.toml"), []byte(hosts), 0o644); err != nil {
			return fmt.Errorf("write registry hosts: %w", err)
		}
	}
	sandbox := l.cfg.SandboxImage
	if sandbox == "" {
		sandbox = PauseImage
	}
	conf := filepath.Join(dir, "containerd.toml")
	if err := os.WriteFile(conf, []byte(containerdConfig(sandbox, l.cfg.Binaries.RuncWrap, certsDir)), 0o644); err != nil {
		return fmt.Errorf("write containerd config: %w", err)
	}
	logDir := filepath.Join(l.Dir, "logs")
	if rn.containerd, err = l.startInNode(n, logDir, "containerd-"+n.Name, containerd, "--config", conf); err != nil {
		return err
	}
	if err := waitFor(ctx, "containerd on "+n.Name, 60*time.Second, rn.containerd, func(ctx context.Context) error {
		c, err := (&net.Dialer{}).DialContext(ctx, "unix", n.ContainerdSocket())
		if err != nil {
			return err
		}
		return c.Close()
	}); err != nil {
		return err
	}

	// The kubelet.
	cert, key, err := l.pki.issue("kubelet-"+n.Name, "system:node:"+n.Name, []string{"system:nodes"}, nil, nil)
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(dir, "kubelet.kubeconfig")
	if err := l.pki.kubeconfig(kubeconfig, APIServerURL(), cert, key); err != nil {
		return err
	}
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, fmt.Appendf(nil, "search svc.%[1]s %[1]s\nnameserver %[2]s\noptions ndots:5\n", ClusterDomain, DNSServiceIP), 0o644); err != nil {
		return fmt.Errorf("write kubelet resolv.conf: %w", err)
	}
	kc := filepath.Join(dir, "kubelet.yaml")
	if err := writeKubeletConfig(kc, n, rn.cgroupRoot, l.pki.CAFile, resolv); err != nil {
		return err
	}
	if rn.kubelet, err = l.startInNode(n, logDir, "kubelet-"+n.Name, l.cfg.Binaries.Kubelet,
		"--config", kc,
		"--kubeconfig", kubeconfig,
		"--hostname-override", n.Name,
		"--node-ip", n.IP.String(),
		"--root-dir", "/var/lib/kubelet",
		"--v", "2",
	); err != nil {
		return err
	}
	if err := waitFor(ctx, "kubelet on "+n.Name+" (node Ready)", 120*time.Second, rn.kubelet, func(ctx context.Context) error {
		node, err := l.Client.CoreV1().Nodes().Get(ctx, n.Name, getOpts)
		if err != nil {
			return err
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady {
				if c.Status == corev1.ConditionTrue {
					return nil
				}
				return fmt.Errorf("node %s: Ready %s: %s", n.Name, c.Status, c.Message)
			}
		}
		return fmt.Errorf("node %s: no Ready condition yet", n.Name)
	}); err != nil {
		return err
	}
	return l.startKubeProxy(ctx, n, dir)
}

// makeMountNS makes the node's mount namespace, bound to a file, as a
// slave of the host's (host mounts arrive, the node's stay in), with the
// node's directories over the standard paths, a bpffs of its own, and /
// shared inside (the kubelet's volume mounts and HostToContainer
// propagation need shared mounts).
func (l *Lab) makeMountNS(n *Node, rn *realNode) error {
	nsDir := filepath.Join(rn.dir, "ns")
	if err := os.MkdirAll(nsDir, 0o700); err != nil {
		return fmt.Errorf("create mount namespace dir: %w", err)
	}
	// Set first: close unmounts whatever of it exists.
	rn.mntNS = filepath.Join(nsDir, "mnt")
	// unshare --mount=<file> needs the file on a private mount.
	if err := unix.Mount(nsDir, nsDir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", nsDir, err)
	}
	if err := unix.Mount("", nsDir, "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make %s private: %w", nsDir, err)
	}
	if err := os.WriteFile(rn.mntNS, nil, 0o600); err != nil {
		return fmt.Errorf("create mount namespace file: %w", err)
	}
	if out, err := exec.Command("unshare", "--mount="+rn.mntNS, "--propagation", "slave", "true").CombinedOutput(); err != nil {
		return fmt.Errorf("make mount namespace of %s: %w: %s", n.Name, err, out)
	}
	for _, p := range nodePaths {
		// Mount points on the host: empty directories, left in place.
		if err := os.MkdirAll(p.std, 0o755); err != nil {
			return fmt.Errorf("create mount point %s: %w", p.std, err)
		}
		if err := l.inMountNS(rn, "mount", "--bind", filepath.Join(rn.dir, p.own), p.std); err != nil {
			return err
		}
	}
	if err := l.inMountNS(rn, "mount", "-t", "bpf", "bpf", "/sys/fs/bpf"); err != nil {
		return err
	}
	return l.inMountNS(rn, "mount", "--make-rshared", "/")
}

// inMountNS runs a command in the node's mount namespace. A Go process
// cannot enter a mount namespace once it has threads, so nsenter does.
func (l *Lab) inMountNS(rn *realNode, args ...string) error {
	out, err := exec.Command("nsenter", append([]string{"--mount=" + rn.mntNS, "--"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s in node mount namespace: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// startInNode runs a program in the node's mount and network namespaces.
func (l *Lab) startInNode(n *Node, logDir, name, bin string, args ...string) (*process, error) {
	nsArgs := append([]string{"--mount=" + n.real.mntNS, "--net=" + n.NS.Path(), "--", bin}, args...)
	return startCommand(l.ID, logDir, name, exec.Command("nsenter", nsArgs...), nil)
}

// containerdConfig is containerd 1.6's configuration for a real node.
func containerdConfig(sandboxImage, runc, certsDir string) string {
	return fmt.Sprintf(`version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "/run/containerd/containerd.sock"

[ttrpc]
  address = "/run/containerd/containerd.sock.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = %q
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = %q
`, sandboxImage, runc, certsDir)
}

// writeKubeletConfig writes the node's KubeletConfiguration.
func writeKubeletConfig(path string, n *Node, cgroupRoot, caFile, resolv string) error {
	cfg := map[string]any{
		"apiVersion":               "kubelet.config.k8s.io/v1beta1",
		"kind":                     "KubeletConfiguration",
		"cgroupDriver":             "cgroupfs",
		"cgroupRoot":               cgroupRoot,
		"cgroupsPerQOS":            true,
		"failSwapOn":               false,
		"containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
		"podLogsDir":               "/var/log/pods",
		"address":                  n.IP.String(),
		"healthzBindAddress":       "127.0.0.1",
		"clusterDNS":               []string{DNSServiceIP},
		"clusterDomain":            ClusterDomain,
		"resolvConf":               resolv,
		// Only the lab CA's clients (the apiserver) reach the kubelet's API.
		"authentication": map[string]any{
			"anonymous": map[string]any{"enabled": false},
			"webhook":   map[string]any{"enabled": false},
			"x509":      map[string]any{"clientCAFile": caFile},
		},
		"authorization": map[string]any{"mode": "AlwaysAllow"},
		// The host's disk is shared by other labs: no evictions, no image GC.
		"evictionHard":                  map[string]string{"memory.available": "0%", "nodefs.available": "0%", "imagefs.available": "0%", "nodefs.inodesFree": "0%"},
		"imageGCHighThresholdPercent":   100,
		"imageGCLowThresholdPercent":    99,
		"serializeImagePulls":           false,
		"protectKernelDefaults":         false,
		"makeIPTablesUtilChains":        false,
		"staticPodPath":                 "",
		"registerNode":                  true,
		"localStorageCapacityIsolation": false,
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("encode kubelet config: %w", err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("write kubelet config: %w", err)
	}
	return nil
}

// cgroupControllers lists the cgroup v1 hierarchies (and the unified one
// of a hybrid set-up) mounted under /sys/fs/cgroup.
func cgroupControllers() []string {
	entries, _ := os.ReadDir("/sys/fs/cgroup")
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, filepath.Join("/sys/fs/cgroup", e.Name()))
		}
	}
	return out
}

// makeCgroupRoot makes the node's cgroupRoot in every hierarchy (the
// kubelet wants it to exist).
func makeCgroupRoot(root string) error {
	for _, c := range cgroupControllers() {
		if err := os.MkdirAll(filepath.Join(c, root), 0o755); err != nil {
			return fmt.Errorf("create cgroup %s: %w", filepath.Join(c, root), err)
		}
	}
	return nil
}

// cgroupDirs lists the cgroups under root in every hierarchy, deepest
// first.
func cgroupDirs(root string) []string {
	var dirs []string
	for _, c := range cgroupControllers() {
		filepath.WalkDir(filepath.Join(c, root), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	slices.SortFunc(dirs, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	return dirs
}

// cgroupProcs returns the processes in the cgroups under root.
func cgroupProcs(root string) []int {
	seen := map[int]bool{}
	var pids []int
	for _, d := range cgroupDirs(root) {
		data, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
				seen[pid] = true
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// mountNSProcs returns the processes in the mount namespace bound to file.
func mountNSProcs(file string) []int {
	var fs unix.Statfs_t
	if err := unix.Statfs(file, &fs); err != nil || fs.Type != unix.NSFS_MAGIC {
		return nil // not (or no longer) a namespace
	}
	var st unix.Stat_t
	if err := unix.Stat(file, &st); err != nil {
		return nil
	}
	want := fmt.Sprintf("mnt:[%d]", st.Ino)
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if link, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "mnt")); err == nil && link == want {
			pids = append(pids, pid)
		}
	}
	return pids
}

// close tears the node down: the kubelet, every container (by the node's
// cgroups), containerd and its shims (by the mount namespace), the
// cgroups, the mount namespace.
func (rn *realNode) close() error {
	var errs []error
	if rn.kubelet != nil {
		rn.kubelet.stop(10 * time.Second)
	}
	errs = append(errs, killAll(cgroupProcs(rn.cgroupRoot)))
	if rn.containerd != nil {
		rn.containerd.stop(10 * time.Second)
	}
	if rn.mntNS != "" {
		errs = append(errs, killAll(mountNSProcs(rn.mntNS)))
	}
	errs = append(errs, removeCgroups(rn.cgroupRoot))
	if rn.mntNS != "" {
		errs = append(errs, unmountNodeNS(filepath.Dir(rn.mntNS)))
	}
	return errors.Join(errs...)
}

// removeCgroups removes the cgroups under root, deepest first, once their
// processes are gone.
func removeCgroups(root string) error {
	var errs []error
	for _, d := range cgroupDirs(root) {
		var err error
		// A killed process leaves its cgroup a moment after it is reaped.
		for range 50 {
			if err = unix.Rmdir(d); err == nil || errors.Is(err, unix.ENOENT) || !errors.Is(err, unix.EBUSY) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// unmountNodeNS unmounts a node's mount namespace file and the private
// mount that holds it; the namespace and its mounts go with the last
// reference.
func unmountNodeNS(nsDir string) error {
	var errs []error
	for _, p := range []string{filepath.Join(nsDir, "mnt"), nsDir} {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// cleanRealNodes removes what the real nodes of a lab left (its
// directory dir, its id): for CleanStale and CleanAll.
func cleanRealNodes(id, dir string) error {
	var errs []error
	nsFiles, _ := filepath.Glob(filepath.Join(dir, "nodes", "*", "ns", "mnt"))
	for _, f := range nsFiles {
		errs = append(errs, killAll(mountNSProcs(f)))
	}
	roots, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", NamePrefix+id+"*"))
	for _, r := range roots {
		cg := "/" + filepath.Base(r)
		errs = append(errs, killAll(cgroupProcs(cg)), removeCgroups(cg))
	}
	for _, f := range nsFiles {
		errs = append(errs, unmountNodeNS(filepath.Dir(f)))
	}
	return errors.Join(errs...)
}

// realLeftovers lists cgroups and mounts of lab id still there.
func realLeftovers(id, dir string) []string {
	var left []string
	cgs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", NamePrefix+id+"-*"))
	for _, c := range cgs {
		left = append(left, "cgroup "+c)
	}
	data, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(data), "\n") {
		if dir != "" && strings.Contains(line, dir) {
			left = append(left, "mount "+line)
		}
	}
	return left
}

// startCommand is startProcess for a prepared command (its namespaces
// set by the caller), with the lab's marker in its environment.
func startCommand(labID, dir, name string, cmd *exec.Cmd, env []string) (*process, error) {
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	cmd.Env = append(append(os.Environ(), EnvLabID+"="+labID), env...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}

// startScheduler runs kube-scheduler in the control-plane namespace (labs
// with real nodes: DaemonSet pods are placed by the scheduler).
func (l *Lab) startScheduler(ctx context.Context) error {
	cert, key, err := l.pki.issue("kube-scheduler", "system:kube-scheduler", nil, nil, nil)
	if err != nil {
		return err
	}
	kc := filepath.Join(l.Dir, "kube-scheduler.kubeconfig")
	if err := l.pki.kubeconfig(kc, "https://127.0.0.1:"+fmt.Sprint(apiPort), cert, key); err != nil {
		return err
	}
	p, err := startProcess(l.ID, filepath.Join(l.Dir, "logs"), "kube-scheduler", l.cp, nil, l.cfg.Binaries.KubeScheduler,
		"--kubeconfig", kc,
		"--authentication-kubeconfig", kc,
		"--authorization-kubeconfig", kc,
		"--bind-address", "127.0.0.1",
		"--leader-elect=false",
		"--v", "1",
	)
	if err != nil {
		return err
	}
	l.procs = append(l.procs, p)
	return waitFor(ctx, "kube-scheduler", 60*time.Second, p, func(ctx context.Context) error {
		return httpGet(ctx, l.cp, insecureTLS(), "https://127.0.0.1:10259/healthz")
	})
}

// insecureTLS is for health checks of components that serve a
// self-signed certificate on loopback.
func insecureTLS() *tls.Config { return &tls.Config{InsecureSkipVerify: true} }
