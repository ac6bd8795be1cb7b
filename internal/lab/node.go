package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// startNode registers the node, writes its CNI configuration, and starts
// its kubelet stand-in and kube-proxy.
func (l *Lab) startNode(ctx, bgCtx context.Context, n *Node) error {
	dir := filepath.Join(l.Dir, "nodes", n.Name)
	if l.cfg.RealNodes {
		return l.startRealNode(ctx, n, dir)
	}
	confDir := filepath.Join(dir, "cni", "net.d")
	n.CNIConfDir, n.CNIBinDir = confDir, filepath.Join(dir, "cni", "bin")
	for _, d := range []string{confDir, n.CNIBinDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create node dir: %w", err)
		}
	}
	if err := writeConflist(filepath.Join(confDir, "10-lab.conflist"), n, filepath.Join(dir, "ipam")); err != nil {
		return err
	}
	images := map[string]string{EchoImage: l.cfg.Binaries.Echo, BookinfoImage: l.cfg.Binaries.Bookinfo, WaypointImage: l.cfg.Binaries.Waypoint}
	for k, v := range l.cfg.Images {
		images[k] = v
	}
	k, err := newKubelet(ctx, kubeletConfig{
		node:     n,
		labID:    l.ID,
		nsPrefix: l.nsName(""),
		dir:      dir,
		confDir:  confDir,
		cniPath:  []string{n.CNIBinDir, l.cfg.Binaries.CNIDir},
		client:   l.Client,
		caFile:   l.pki.CAFile,
		images:   images,
		podInit:  l.cfg.Binaries.PodInit,
		log:      l.log.With("node", n.Name),
	})
	if err != nil {
		return err
	}
	n.Kubelet = k
	return l.startKubeProxy(ctx, n, dir)
}

// startKubeProxy runs kube-proxy (iptables mode) in the node's network
// namespace.
func (l *Lab) startKubeProxy(ctx context.Context, n *Node, dir string) error {
	cert, key, err := l.pki.issue("kube-proxy-"+n.Name, "system:kube-proxy", nil, nil, nil)
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(dir, "kube-proxy.kubeconfig")
	if err := l.pki.kubeconfig(kubeconfig, APIServerURL(), cert, key); err != nil {
		return err
	}
	proxy, err := startProcess(l.ID, filepath.Join(l.Dir, "logs"), "kube-proxy-"+n.Name, n.NS, nil, l.cfg.Binaries.KubeProxy,
		"--kubeconfig", kubeconfig,
		"--hostname-override", n.Name,
		"--proxy-mode", "iptables",
		"--cluster-cidr", ClusterCIDR,
		"--conntrack-max-per-core", "0",
		"--conntrack-tcp-timeout-established", "0",
		"--conntrack-tcp-timeout-close-wait", "0",
		"--metrics-bind-address", "127.0.0.1:10249",
		"--healthz-bind-address", "127.0.0.1:10256",
		"--v", "1",
	)
	if err != nil {
		return err
	}
	l.procs = append(l.procs, proxy)
	if err := waitFor(ctx, "kube-proxy on "+n.Name, 60*time.Second, proxy, func(ctx context.Context) error {
		return httpGet(ctx, n.NS, nil, "http://127.0.0.1:10256/healthz")
	}); err != nil {
		return err
	}
	if !l.cfg.NetworkPolicy {
		return nil
	}
	cert, key, err = l.pki.issue("kube-router-"+n.Name, kubeRouterUser, nil, nil, nil)
	if err != nil {
		return err
	}
	kubeconfig = filepath.Join(dir, "kube-router.kubeconfig")
	if err := l.pki.kubeconfig(kubeconfig, APIServerURL(), cert, key); err != nil {
		return err
	}
	return l.startNetworkPolicy(ctx, n, kubeconfig)
}

// writeConflist writes the node's primary CNI network: the ptp plugin with
// host-local IPAM over the node's pod CIDR. ptp routes every pod through
// the node's namespace, so kube-proxy's iptables rules see all pod traffic
// without bridge netfilter.
func writeConflist(path string, n *Node, ipamDir string) error {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "lab",
		"plugins": []any{
			map[string]any{
				"type":   "ptp",
				"ipMasq": false,
				"mtu":    1500,
				"ipam": map[string]any{
					"type":    "host-local",
					"ranges":  [][]map[string]string{{{"subnet": n.PodCIDR.String()}}},
					"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
					"dataDir": ipamDir,
				},
			},
		},
	}
	data, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return fmt.Errorf("encode conflist: %w", err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("write conflist: %w", err)
	}
	return nil
}
