package lab

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// KubeRouterBuildDir is the module, relative to the repository root, that
// pins the NetworkPolicy implementation the lab runs (Config.NetworkPolicy).
const KubeRouterBuildDir = "internal/lab/kuberouterbuild"

// kubeRouterUser is the identity of every node's NetworkPolicy controller.
const kubeRouterUser = "ambit-lab:kube-router"

// kubeRouterHealth is the health port of the controller in a node's
// namespace (kube-router's default).
const kubeRouterHealth = 20244

// EnsureKubeRouter returns kube-router, building it first (with `go build`
// in KubeRouterBuildDir, minutes) if the cache does not hold it for the
// pinned module and this Go toolchain. A second call builds nothing.
//
// kube-router stands in for the primary CNI's NetworkPolicy enforcement.
// kube-network-policies (sigs.k8s.io) would be the smaller choice, but it
// hands new flows to user space with nftables' queue expression, which
// the lab's kernels lack (CONFIG_NFT_QUEUE is off: `nft add rule ... queue`
// answers ENOENT); kube-router enforces with iptables and ipset, which they
// have.
func EnsureKubeRouter(ctx context.Context, opts BuildOptions) (string, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return "", err
	}
	if _, err := exec.LookPath("ipset"); err != nil {
		return "", fmt.Errorf("find ipset: %w (apt-get install ipset)", err)
	}
	dir, err := buildCached(ctx, opts, moduleBuild{
		what:  "kube-router",
		src:   filepath.Join(opts.Root, KubeRouterBuildDir),
		cache: "kube-router",
		names: []string{"kube-router"},
		pkgs:  []string{"github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"},
	})
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "kube-router"), nil
}

// allowKubeRouter gives the nodes' NetworkPolicy controllers what
// kube-router's own DaemonSet manifest gives them: reading the objects its
// informers watch.
func (l *Lab) allowKubeRouter(ctx context.Context) error {
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: kubeRouterUser},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"namespaces", "pods", "services", "nodes", "endpoints"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"networkpolicies"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
		},
	}
	if _, err := l.Client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create kube-router cluster role: %w", err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: kubeRouterUser},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: kubeRouterUser},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: kubeRouterUser}},
	}
	if _, err := l.Client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create kube-router cluster role binding: %w", err)
	}
	return nil
}

// startNetworkPolicy runs kube-router's NetworkPolicy controller in node
// n's namespace, as its DaemonSet runs it (host network), with the
// firewall only: the lab's routes and kube-proxy stay as they are. It is
// ready once it has put its chains in the node's filter table (INPUT,
// FORWARD and OUTPUT jump to KUBE-ROUTER-*) and answers its health check.
func (l *Lab) startNetworkPolicy(ctx context.Context, n *Node, kubeconfig string) error {
	proc, err := startProcess(l.ID, filepath.Join(l.Dir, "logs"), "kube-router-"+n.Name, n.NS, nil, l.cfg.Binaries.KubeRouter,
		"--kubeconfig", kubeconfig,
		"--hostname-override", n.Name,
		"--run-firewall=true",
		"--run-router=false",
		"--run-service-proxy=false",
		"--enable-cni=false",
		"--service-cluster-ip-range", ServiceCIDR,
		"--health-port", fmt.Sprint(kubeRouterHealth),
		"--metrics-port", "0",
		"--v", "1",
	)
	if err != nil {
		return err
	}
	l.procs = append(l.procs, proc)
	return waitFor(ctx, "kube-router on "+n.Name, 60*time.Second, proc, func(ctx context.Context) error {
		if err := httpGet(ctx, n.NS, nil, fmt.Sprintf("http://127.0.0.1:%d/healthz", kubeRouterHealth)); err != nil {
			return err
		}
		rules, err := FilterRules(ctx, n)
		if err != nil {
			return err
		}
		for _, chain := range []string{"INPUT", "FORWARD", "OUTPUT"} {
			if !strings.Contains(rules, "-A "+chain+" ") || !strings.Contains(rules, "-j KUBE-ROUTER-"+chain) {
				return fmt.Errorf("kube-router on %s: no jump from %s to KUBE-ROUTER-%s yet", n.Name, chain, chain)
			}
		}
		return nil
	})
}

// FilterRules returns node n's iptables filter table (iptables-save), where
// the NetworkPolicy controller keeps its chains.
func FilterRules(ctx context.Context, n *Node) (string, error) {
	out, err := n.NS.Command(ctx, "iptables-save", "-t", "filter").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("iptables-save in %s: %w: %s", n.Name, err, out)
	}
	return string(out), nil
}

// WaitNetworkPolicy waits until node n's NetworkPolicy controller has put
// the policy namespace/name in force for the local pods it selects
// (kube-router names the policy in the pod chains' comments).
func (l *Lab) WaitNetworkPolicy(ctx context.Context, n *Node, namespace, name string) error {
	if !l.cfg.NetworkPolicy {
		return fmt.Errorf("wait for network policy %s/%s: the lab runs no NetworkPolicy controller (Config.NetworkPolicy)", namespace, name)
	}
	want := `"run through nw policy ` + name + `"`
	var rules string
	err := PollUntil(ctx, 30*time.Second, func() bool {
		var err error
		rules, err = FilterRules(ctx, n)
		return err == nil && strings.Contains(rules, want)
	})
	if err != nil {
		return fmt.Errorf("wait for network policy %s/%s on %s: %w", namespace, name, n.Name, err)
	}
	return nil
}
