// Command ambit-cni-agent is Ambit's node agent (see cni/agent). It runs on
// every node in the host network namespace.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambitmesh/ambit/cni/agent"
	"github.com/ambitmesh/ambit/internal/kubelog"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ambit-cni-agent:", err)
		os.Exit(1)
	}
}

func run() error {
	exe, _ := os.Executable()
	var (
		cfg              agent.Config
		kubeconfig       string
		pluginKubeconfig string
		pluginSA         types.NamespacedName
		uninstall        bool
	)
	flag.StringVar(&cfg.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	flag.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the agent (default: in-cluster)")
	flag.StringVar(&pluginKubeconfig, "plugin-kubeconfig", "", "kubeconfig to install for the plugin (default: the agent's --kubeconfig, or one made from its in-cluster credentials)")
	flag.StringVar(&cfg.CNIConfDir, "cni-conf-dir", "/etc/cni/net.d", "the node's CNI config dir")
	flag.StringVar(&cfg.CNIBinDir, "cni-bin-dir", "/opt/cni/bin", "the node's CNI bin dir")
	flag.StringVar(&cfg.PluginBinary, "plugin-binary", filepath.Join(filepath.Dir(exe), "ambit-cni"), "the plugin binary to install")
	flag.StringVar(&cfg.PinDir, "pin-dir", "/sys/fs/bpf/ambit", "bpffs directory for the redirection")
	flag.StringVar(&cfg.Socket, "socket", "/var/run/ambit/cni.sock", "Unix socket for the plugin")
	flag.StringVar(&cfg.Uplink, "uplink", "", "the node's interface to other nodes (default: the one holding --host-ip, else the one of the default route)")
	flag.Func("host-ip", "the node's address, to find the uplink by (default $HOST_IP)", func(s string) error {
		a, err := netip.ParseAddr(s)
		cfg.HostIP = a
		return err
	})
	flag.StringVar(&cfg.MonitorAddr, "monitor-addr", ":15029", "address of /readyz and /metrics")
	flag.Func("plugin-service-account", "the plugin's own service account, <namespace>/<name>: in a cluster, the agent requests the plugin's tokens for it, bound to this node (default: the plugin gets the agent's own credentials)", func(s string) error {
		ns, name, ok := strings.Cut(s, "/")
		if !ok || ns == "" || name == "" {
			return fmt.Errorf("plugin service account %q: want <namespace>/<name>", s)
		}
		pluginSA = types.NamespacedName{Namespace: ns, Name: name}
		return nil
	})
	flag.BoolVar(&uninstall, "uninstall", false, "remove Ambit from the node and exit")
	flag.Func("daemonset", "the agent's own DaemonSet, <namespace>/<name>: when it stops after the DaemonSet is deleted, the agent removes Ambit from the node (default: never)", func(s string) error {
		ns, name, ok := strings.Cut(s, "/")
		if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return fmt.Errorf("daemonset %q: want <namespace>/<name>", s)
		}
		cfg.DaemonSet = types.NamespacedName{Namespace: ns, Name: name}
		return nil
	})
	if a, err := netip.ParseAddr(os.Getenv("HOST_IP")); err == nil {
		cfg.HostIP = a
	}
	flag.Parse()
	cfg.Log = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	kubelog.Route(cfg.Log.Handler())

	if uninstall {
		return agent.Uninstall(cfg)
	}
	if cfg.NodeName == "" {
		return fmt.Errorf("no node name: set --node-name or $NODE_NAME")
	}
	var rc *rest.Config
	var err error
	if kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	if cfg.Client, err = kubernetes.NewForConfig(rc); err != nil {
		return fmt.Errorf("create kubernetes client: %w", err)
	}
	switch {
	case pluginKubeconfig != "":
		cfg.PluginKubeconfig = agent.PluginKubeconfigFile(pluginKubeconfig)
	case kubeconfig != "":
		cfg.PluginKubeconfig = agent.PluginKubeconfigFile(kubeconfig)
	case pluginSA.Name != "":
		// A DaemonSet pod: the plugin gets tokens of its own account,
		// bound to the node, so that they outlive the agent's pod.
		cfg.PluginKubeconfig = agent.TokenRequestPluginKubeconfig(cfg.Client, rc, pluginSA, cfg.NodeName, agent.InClusterPluginKubeconfig(rc), cfg.Log)
	default:
		// The plugin gets the agent's own credentials, renewed as the
		// kubelet rotates the token.
		cfg.PluginKubeconfig = agent.InClusterPluginKubeconfig(rc)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return agent.Run(ctx, cfg)
}
