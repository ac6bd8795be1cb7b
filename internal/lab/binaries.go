package lab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ambitmesh/ambit/internal/version"
)

// CoreDNSVersion is the CoreDNS release the lab builds from its Go module.
const CoreDNSVersion = "v1.12.1"

// kubeCommands are the Kubernetes programs built from internal/lab/kubebuild.
var kubeCommands = []string{"kube-apiserver", "kube-controller-manager", "kube-proxy", "kube-scheduler", "kubectl", "kubelet"}

// Binaries are the programs the lab runs.
type Binaries struct {
	Etcd                  string
	KubeAPIServer         string
	KubeControllerManager string
	KubeProxy             string
	// KubeScheduler runs on labs with Config.Scheduler or real nodes,
	// Kubelet on real nodes (Config.RealNodes).
	KubeScheduler string
	Kubelet       string
	// RuncWrap is runc for containerd on real nodes (internal/lab/runcwrap)
	// and Pause the program of their pause image (internal/lab/cmd/pause).
	RuncWrap string
	Pause    string
	// Kubectl is for people using a running lab.
	Kubectl string
	CoreDNS string
	// Echo is the test workload (samples/echo).
	Echo string
	// Bookinfo is the Bookinfo sample (samples/bookinfo), run by the lab
	// for BookinfoImage.
	Bookinfo string
	// CNIPlugin and CNIAgent are Ambit's chained CNI plugin and node agent.
	CNIPlugin string
	CNIAgent  string
	// Ztunnel is Ambit's node tunnel.
	Ztunnel string
	// Istiod is Ambit's control plane.
	Istiod string
	// Waypoint is Ambit's waypoint proxy, run by the lab for
	// WaypointImage.
	Waypoint string
	// PodInit mounts a container's volumes before running it
	// (internal/lab/cmd/podinit).
	PodInit string
	// CNIDir holds the reference CNI plugins (ptp, host-local, loopback).
	CNIDir string
	// KubeRouter is the NetworkPolicy controller, for labs with
	// Config.NetworkPolicy; EnsureKubeRouter builds it.
	KubeRouter string
}

// BuildOptions say where the sources are and where built programs are
// cached.
type BuildOptions struct {
	// Root is the Ambit repository root; FindRoot finds it.
	Root string
	// CacheDir keeps built Kubernetes and CoreDNS programs across runs;
	// DefaultCacheDir when empty.
	CacheDir string
	Log      *slog.Logger
}

// DefaultCacheDir is $AMBIT_CACHE_DIR, or /var/cache/ambit.
func DefaultCacheDir() string {
	if d := os.Getenv("AMBIT_CACHE_DIR"); d != "" {
		return d
	}
	return "/var/cache/ambit"
}

// FindRoot returns the Ambit repository root: $AMBIT_ROOT, or the nearest
// directory above the working directory whose go.mod is Ambit's.
func FindRoot() (string, error) {
	if r := os.Getenv("AMBIT_ROOT"); r != "" {
		return r, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find ambit root: %w", err)
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(data, []byte("module github.com/ambitmesh/ambit\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find ambit root: no go.mod of github.com/ambitmesh/ambit above the working directory; set AMBIT_ROOT")
		}
		dir = parent
	}
}

// EnsureBinaries returns the lab's programs, building the Kubernetes and
// CoreDNS ones first if the cache does not hold them for the pinned
// versions and this Go toolchain. A second call builds nothing of those.
// Ambit's own programs are always rebuilt, which the Go build cache makes
// cheap.
func EnsureBinaries(ctx context.Context, opts BuildOptions) (Binaries, error) {
	var b Binaries
	opts, err := opts.withDefaults()
	if err != nil {
		return b, err
	}
	if b.Etcd, err = lookPath("etcd", "/usr/bin/etcd", "apt-get install etcd-server"); err != nil {
		return b, err
	}
	b.CNIDir = "/usr/lib/cni"
	for _, p := range []string{"ptp", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(b.CNIDir, p)); err != nil {
			return b, fmt.Errorf("find CNI plugin %s in %s: %w (apt-get install containernetworking-plugins)", p, b.CNIDir, err)
		}
	}
	for _, tool := range []string{"ip", "iptables", "conntrack"} {
		if _, err := exec.LookPath(tool); err != nil {
			return b, fmt.Errorf("find %s: %w (apt-get install iproute2 iptables conntrack)", tool, err)
		}
	}

	goVersion, err := goEnv(ctx, "GOVERSION")
	if err != nil {
		return b, err
	}

	// Serialise builds between test binaries that start labs at once.
	unlock, err := lockDir(opts.CacheDir)
	if err != nil {
		return b, err
	}
	defer unlock()

	kubeDir, err := ensureKube(ctx, opts, goVersion)
	if err != nil {
		return b, err
	}
	b.KubeAPIServer = filepath.Join(kubeDir, "kube-apiserver")
	b.KubeControllerManager = filepath.Join(kubeDir, "kube-controller-manager")
	b.KubeProxy = filepath.Join(kubeDir, "kube-proxy")
	b.Kubectl = filepath.Join(kubeDir, "kubectl")
	b.KubeScheduler = filepath.Join(kubeDir, "kube-scheduler")
	b.Kubelet = filepath.Join(kubeDir, "kubelet")

	if b.CoreDNS, err = ensureCoreDNS(ctx, opts, goVersion); err != nil {
		return b, err
	}

	binDir := filepath.Join(opts.Root, "_output", "bin")
	b.Echo = filepath.Join(binDir, "echo")
	b.Bookinfo = filepath.Join(binDir, "bookinfo")
	b.CNIPlugin = filepath.Join(binDir, "ambit-cni")
	b.CNIAgent = filepath.Join(binDir, "ambit-cni-agent")
	b.Ztunnel = filepath.Join(binDir, "ztunnel")
	b.Istiod = filepath.Join(binDir, "istiod")
	b.Waypoint = filepath.Join(binDir, "waypoint")
	b.PodInit = filepath.Join(binDir, "podinit")
	b.RuncWrap = filepath.Join(binDir, "runcwrap")
	b.Pause = filepath.Join(binDir, "pause")
	if err := goBuild(ctx, opts.Root, binDir, "-tags", version.BuildTags, "./samples/echo", "./samples/bookinfo", "./cni/cmd/ambit-cni", "./cni/cmd/ambit-cni-agent", "./ztunnel/cmd/ztunnel", "./istiod/cmd/istiod", "./waypoint/cmd/waypoint", "./internal/lab/cmd/podinit", "./internal/lab/cmd/runcwrap", "./internal/lab/cmd/pause"); err != nil {
		return b, err
	}
	return b, nil
}

func (opts BuildOptions) withDefaults() (BuildOptions, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Root == "" {
		root, err := FindRoot()
		if err != nil {
			return opts, err
		}
		opts.Root = root
	}
	if opts.CacheDir == "" {
		opts.CacheDir = DefaultCacheDir()
	}
	return opts, nil
}

// ensureKube builds the Kubernetes programs into a cache directory named by
// a hash of the pinning module and the Go version.
func ensureKube(ctx context.Context, opts BuildOptions, goVersion string) (string, error) {
	var pkgs []string
	for _, c := range kubeCommands {
		pkgs = append(pkgs, "k8s.io/kubernetes/cmd/"+c)
	}
	src := filepath.Join(opts.Root, "internal", "lab", "kubebuild")
	ldflags, err := kubeVersionFlags(filepath.Join(src, "go.mod"))
	if err != nil {
		return "", err
	}
	return ensureModuleBuild(ctx, opts, goVersion, moduleBuild{
		what:  "kubernetes",
		src:   src,
		cache: "kube",
		names: kubeCommands,
		pkgs:  pkgs,
		flags: []string{"-ldflags=" + ldflags},
	})
}

// kubeVersionFlags are the linker flags that stamp the Kubernetes version
// the pinning module requires into the programs, as Kubernetes' own build
// does (hack/lib/version.sh): without them the apiserver reports
// v0.0.0-master and Helm refuses charts with a kubeVersion constraint.
func kubeVersionFlags(goMod string) (string, error) {
	data, err := os.ReadFile(goMod)
	if err != nil {
		return "", fmt.Errorf("read kubernetes version: %w", err)
	}
	var version string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "require ")); len(f) >= 2 && f[0] == "k8s.io/kubernetes" {
			version = f[1]
			break
		}
	}
	major, rest, _ := strings.Cut(strings.TrimPrefix(version, "v"), ".")
	minor, _, _ := strings.Cut(rest, ".")
	if version == "" || major == "" || minor == "" {
		return "", fmt.Errorf("read kubernetes version: no k8s.io/kubernetes vX.Y.Z requirement in %s", goMod)
	}
	var flags []string
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		flags = append(flags, "-X "+pkg+".gitVersion="+version, "-X "+pkg+".gitMajor="+major, "-X "+pkg+".gitMinor="+minor, "-X "+pkg+".gitTreeState=clean")
	}
	return strings.Join(flags, " "), nil
}

// moduleBuild is a set of programs built with `go build` in a pinning
// module of their own (its go.mod, go.sum and tools.go).
type moduleBuild struct {
	what  string
	src   string
	cache string // subdirectory of the cache directory
	names []string
	pkgs  []string
	flags []string // go build flags before the packages
}

// buildCached is ensureModuleBuild for this Go toolchain, holding the
// cache's lock while it runs. opts must have its defaults.
func buildCached(ctx context.Context, opts BuildOptions, b moduleBuild) (string, error) {
	goVersion, err := goEnv(ctx, "GOVERSION")
	if err != nil {
		return "", err
	}
	unlock, err := lockDir(opts.CacheDir)
	if err != nil {
		return "", err
	}
	defer unlock()
	return ensureModuleBuild(ctx, opts, goVersion, b)
}

// ensureModuleBuild builds b into a cache directory named by a hash of
// the pinning module, the flags and the Go version, unless it is there.
func ensureModuleBuild(ctx context.Context, opts BuildOptions, goVersion string, b moduleBuild) (string, error) {
	h := sha256.New()
	for _, f := range []string{"go.mod", "go.sum", "tools.go"} {
		data, err := os.ReadFile(filepath.Join(b.src, f))
		if err != nil {
			return "", fmt.Errorf("hash %s build inputs: %w", b.what, err)
		}
		h.Write(data)
	}
	h.Write([]byte(strings.Join(b.flags, "\x00")))
	h.Write([]byte(goVersion))
	key := hex.EncodeToString(h.Sum(nil))[:16]
	dir := filepath.Join(opts.CacheDir, b.cache, key)
	if allExist(dir, b.names) {
		opts.Log.Debug(b.what+" binaries cached", "dir", dir)
		return dir, nil
	}
	opts.Log.Info("building "+b.what+" binaries (once; takes minutes)", "dir", dir)
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return "", fmt.Errorf("build %s: %w", b.what, err)
	}
	if err := goBuild(ctx, b.src, tmp, append(b.flags, b.pkgs...)...); err != nil {
		return "", err
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("build %s: %w", b.what, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("build %s: %w", b.what, err)
	}
	return dir, nil
}

func ensureCoreDNS(ctx context.Context, opts BuildOptions, goVersion string) (string, error) {
	dir := filepath.Join(opts.CacheDir, "coredns", CoreDNSVersion+"-"+goVersion)
	bin := filepath.Join(dir, "coredns")
	if allExist(dir, []string{"coredns"}) {
		return bin, nil
	}
	opts.Log.Info("building coredns (once)", "version", CoreDNSVersion, "dir", dir)
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return "", fmt.Errorf("build coredns: %w", err)
	}
	cmd := exec.CommandContext(ctx, "go", "install", "github.com/coredns/coredns@"+CoreDNSVersion)
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "GOFLAGS=-mod=mod", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build coredns %s: %w\n%s", CoreDNSVersion, err, out)
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("build coredns: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("build coredns: %w", err)
	}
	return bin, nil
}

func goBuild(ctx context.Context, dir, out string, pkgs ...string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("go build %s: %w", strings.Join(pkgs, " "), err)
	}
	cmd := exec.CommandContext(ctx, "go", append([]string{"build", "-o", out + "/"}, pkgs...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", strings.Join(pkgs, " "), err, out)
	}
	return nil
}

func goEnv(ctx context.Context, name string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", name).Output()
	if err != nil {
		return "", fmt.Errorf("go env %s: %w", name, err)
	}
	return strings.TrimSpace(string(out)), nil
}

func allExist(dir string, names []string) bool {
	for _, n := range names {
		fi, err := os.Stat(filepath.Join(dir, n))
		if err != nil || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

func lookPath(name, fallback, hint string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	if _, err := os.Stat(fallback); err == nil {
		return fallback, nil
	}
	return "", fmt.Errorf("find %s: not in PATH nor at %s (%s)", name, fallback, hint)
}

// lockDir takes an exclusive flock on dir/.lock until unlock is called.
func lockDir(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() {
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}
