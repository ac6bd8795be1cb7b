// Package precheck checks that a node and a cluster can run Ambit
// before it is installed: the kernel (version, BTF, TCX), the node's CNI
// configuration that Ambit's plugin chains into, and another mesh that
// would redirect the same pods (Istio's CNI and ztunnel, Linkerd's CNI,
// Cilium settings that remove chained plugins or bypass redirection).
// Each check gives one Result: pass, warn or fail, and what to do.
package precheck

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/libcni"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ambitmesh/ambit/cni/install"
)

// Status of a check.
type Status string

const (
	Pass Status = "PASS"
	Warn Status = "WARN"
	Fail Status = "FAIL"
)

// Result is one check's outcome.
type Result struct {
	Check  string `json:"check"`
	Status Status `json:"status"`
	// Detail says what was found.
	Detail string `json:"detail"`
	// Fix says what to do, for a warning or a failure.
	Fix string `json:"fix,omitempty"`
}

// MinKernel is the oldest kernel Ambit's redirection loads on (README).
var MinKernel = [2]int{5, 10}

// Node is what the node checks read; the zero fields take the machine's.
type Node struct {
	// KernelRelease is uname -r.
	KernelRelease string
	// BTFPath is the kernel's BTF, /sys/kernel/btf/vmlinux.
	BTFPath string
	// ProbeTCX reports TCX support (bpf/redirect.ProbeTCX).
	ProbeTCX func() (bool, error)
	// CNIConfDir is the node's CNI configuration, /etc/cni/net.d.
	CNIConfDir string
}

// CheckNode runs the node's checks.
func CheckNode(n Node) []Result {
	var out []Result
	out = append(out, checkKernel(n.KernelRelease))
	out = append(out, checkBTF(n.BTFPath))
	out = append(out, checkTCX(n.ProbeTCX))
	out = append(out, checkCNI(n.CNIConfDir)...)
	return out
}

func checkKernel(release string) Result {
	r := Result{Check: "kernel"}
	major, minor, ok := parseRelease(release)
	switch {
	case !ok:
		r.Status, r.Detail = Fail, fmt.Sprintf("cannot read the version of kernel %q", release)
		r.Fix = fmt.Sprintf("run on Linux %d.%d or newer", MinKernel[0], MinKernel[1])
	case major < MinKernel[0] || major == MinKernel[0] && minor < MinKernel[1]:
		r.Status, r.Detail = Fail, fmt.Sprintf("Linux %s is older than %d.%d", release, MinKernel[0], MinKernel[1])
		r.Fix = fmt.Sprintf("upgrade the node's kernel to %d.%d or newer (6.6 or newer for TCX)", MinKernel[0], MinKernel[1])
	default:
		r.Status, r.Detail = Pass, fmt.Sprintf("Linux %s (%d.%d or newer)", release, MinKernel[0], MinKernel[1])
	}
	return r
}

// parseRelease reads the major and minor numbers of a kernel release
// such as 6.18.0-1-amd64.
func parseRelease(s string) (major, minor int, ok bool) {
	parts := strings.SplitN(s, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	digits := func(p string) string {
		i := strings.IndexFunc(p, func(r rune) bool { return r < '0' || r > '9' })
		if i >= 0 {
			return p[:i]
		}
		return p
	}
	var err1, err2 error
	major, err1 = strconv.Atoi(parts[0])
	minor, err2 = strconv.Atoi(digits(parts[1]))
	return major, minor, err1 == nil && err2 == nil
}

func checkBTF(path string) Result {
	r := Result{Check: "btf"}
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		r.Status, r.Detail = Fail, fmt.Sprintf("no kernel BTF at %s: %v", path, err)
		r.Fix = "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distributions' kernels are); Ambit's eBPF programs need it"
	case fi.Size() == 0:
		r.Status, r.Detail = Fail, fmt.Sprintf("kernel BTF at %s is empty", path)
		r.Fix = "use a kernel built with CONFIG_DEBUG_INFO_BTF=y"
	default:
		r.Status, r.Detail = Pass, fmt.Sprintf("kernel BTF at %s", path)
	}
	return r
}

func checkTCX(probe func() (bool, error)) Result {
	r := Result{Check: "tcx"}
	if probe == nil {
		r.Status, r.Detail = Warn, "not probed"
		r.Fix = "run ambitctl x precheck as root on the node to probe TCX"
		return r
	}
	ok, err := probe()
	switch {
	case err != nil:
		r.Status, r.Detail = Warn, fmt.Sprintf("cannot probe: %v", err)
		r.Fix = "run ambitctl x precheck as root on the node to probe TCX"
	case ok:
		r.Status, r.Detail = Pass, "TCX attach supported: Ambit's programs attach in order with the primary CNI's"
	default:
		r.Status, r.Detail = Warn, "no TCX (Linux before 6.6): Ambit attaches with tc clsact, at priority 1"
		r.Fix = "nothing needed; with a kernel of 6.6 or newer Ambit uses TCX, which orders programs with the primary CNI's"
	}
	return r
}

// meshPlugins are CNI plugin types of other meshes that redirect pods'
// traffic themselves.
var meshPlugins = map[string]string{
	"istio-cni":   "Istio's CNI plugin",
	"linkerd-cni": "Linkerd's CNI plugin",
}

func checkCNI(dir string) []Result {
	conf := Result{Check: "cni config"}
	path, err := install.PrimaryConflist(dir)
	if err != nil {
		conf.Status, conf.Detail = Fail, err.Error()
		conf.Fix = "install the cluster's primary CNI first: Ambit's plugin chains after the first .conflist in " + dir
		return []Result{conf}
	}
	list, err := libcni.ConfListFromFile(path)
	if err != nil {
		conf.Status, conf.Detail = Fail, fmt.Sprintf("%s does not parse: %v", path, err)
		conf.Fix = "fix or regenerate the primary CNI's configuration; Ambit will not chain into a file it cannot read"
		return []Result{conf}
	}
	var types []string
	for _, p := range list.Plugins {
		types = append(types, p.Network.Type)
	}
	if len(types) == 0 {
		conf.Status, conf.Detail = Fail, fmt.Sprintf("%s has no plugins", path)
		conf.Fix = "fix the primary CNI's configuration: it needs a primary plugin for Ambit's to chain after"
		return []Result{conf}
	}
	conf.Status = Pass
	if types[len(types)-1] == install.PluginType {
		conf.Detail = fmt.Sprintf("%s (%s): %s already chained last", filepath.Base(path), strings.Join(types, ", "), install.PluginType)
	} else {
		conf.Detail = fmt.Sprintf("%s (%s): %s will chain after %s", filepath.Base(path), strings.Join(types, ", "), install.PluginType, types[len(types)-1])
	}
	out := []Result{conf}
	mesh := Result{Check: "other mesh (cni config)", Status: Pass, Detail: "no other mesh's plugin in " + filepath.Base(path)}
	for _, t := range types {
		if what, ok := meshPlugins[t]; ok {
			mesh.Status = Fail
			mesh.Detail = fmt.Sprintf("%s (%s) is chained in %s", what, t, filepath.Base(path))
			mesh.Fix = "uninstall the other mesh's CNI first: two meshes cannot both redirect the same pods"
		}
	}
	return append(out, mesh)
}

// Cluster is what the cluster checks read.
type Cluster struct {
	Client kubernetes.Interface
	// IstioNamespace is where Ambit is (or will be) installed.
	IstioNamespace string
}

// CheckCluster looks for another mesh's DaemonSets and for Cilium
// settings that would undo Ambit's chaining or bypass its redirection.
func CheckCluster(ctx context.Context, c Cluster) ([]Result, error) {
	dss, err := c.Client.AppsV1().DaemonSets(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list daemonsets: %w", err)
	}
	mesh := Result{Check: "other mesh (cluster)", Status: Pass, Detail: "no DaemonSet of another mesh"}
	var found, fixes []string
	ambitNS := map[string]bool{}
	for _, ds := range dss.Items {
		if ds.Name == "ambit-cni-agent" {
			ambitNS[ds.Namespace] = true
		}
	}
	for _, ds := range dss.Items {
		key := ds.Namespace + "/" + ds.Name
		switch {
		case ds.Name == "istio-cni-node" || hasLabel(ds, "k8s-app", "istio-cni-node"):
			found = append(found, key+" (Istio's CNI)")
			fixes = append(fixes, "uninstall Istio's ambient data plane (istio-cni and ztunnel charts)")
		case ds.Name == "ztunnel" && !ambitNS[ds.Namespace]:
			found = append(found, key+" (Istio's ztunnel)")
			fixes = append(fixes, "uninstall Istio's ztunnel, or install Ambit with istiod.enabled=false to run Ambit's data plane against Istio's istiod")
		case ds.Name == "linkerd-cni" || hasLabel(ds, "k8s-app", "linkerd-cni"):
			found = append(found, key+" (Linkerd's CNI)")
			fixes = append(fixes, "remove Linkerd's CNI plugin (and its proxies) from the pods Ambit will serve")
		case ds.Name == "cilium-envoy":
			found = append(found, key+" (Cilium's L7 proxy)")
			fixes = append(fixes, "keep Cilium's L7 policies and ingress away from namespaces Ambit enrols")
		}
	}
	if len(found) > 0 {
		mesh.Status, mesh.Detail = Fail, strings.Join(found, "; ")
		slices.Sort(fixes)
		mesh.Fix = strings.Join(slices.Compact(fixes), "; ")
		if len(found) == 1 && strings.HasSuffix(found[0], "(Cilium's L7 proxy)") {
			mesh.Status = Warn
		}
	}
	out := []Result{mesh}
	if r, ok, err := checkCilium(ctx, c.Client); err != nil {
		return nil, err
	} else if ok {
		out = append(out, r)
	}
	return out, nil
}

func hasLabel(ds appsv1.DaemonSet, k, v string) bool { return ds.Labels[k] == v }

// checkCilium reads Cilium's agent settings (kube-system/cilium-config)
// where Cilium runs: cni-exclusive removes other plugins' configuration
// (Ambit's chained entry), and socket load balancing in pods' namespaces
// rewrites Service addresses before Ambit's redirection sees them (what
// Istio's ambient docs ask of Cilium too).
func checkCilium(ctx context.Context, cl kubernetes.Interface) (Result, bool, error) {
	cm, err := cl.CoreV1().ConfigMaps("kube-system").Get(ctx, "cilium-config", metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return Result{}, false, nil
	}
	if err != nil {
		return Result{}, false, fmt.Errorf("get kube-system/cilium-config: %w", err)
	}
	r := Result{Check: "cilium", Status: Pass, Detail: "Cilium leaves chained plugins and pods' Service addresses alone"}
	var bad, fixes []string
	if cm.Data["cni-exclusive"] == "true" {
		bad = append(bad, "cni-exclusive is true (Cilium removes Ambit's chained plugin)")
		fixes = append(fixes, "set cni.exclusive=false in Cilium's Helm values")
	}
	if cm.Data["bpf-lb-sock"] == "true" && cm.Data["bpf-lb-sock-hostns-only"] != "true" {
		bad = append(bad, "socket load balancing runs in pods (Services resolved before Ambit's redirection)")
		fixes = append(fixes, "set socketLB.hostNamespaceOnly=true in Cilium's Helm values")
	}
	if len(bad) > 0 {
		r.Status, r.Detail, r.Fix = Fail, strings.Join(bad, "; "), strings.Join(fixes, "; ")
	}
	return r, true, nil
}

// Failed reports whether any result failed.
func Failed(rs []Result) bool {
	return slices.ContainsFunc(rs, func(r Result) bool { return r.Status == Fail })
}
