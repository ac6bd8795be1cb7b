// Package labmesh runs Ambit's node components in a lab (internal/lab): the
// node agent and ztunnel on every node, as real processes, the way the
// DaemonSet runs them. Until ztunnel takes its configuration from istiod,
// labmesh computes ztunnel's static configuration from the cluster itself
// (pods, Services, enrolment by Istio's labels) and reloads it on demand.
package labmesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/ambitmesh/ambit/internal/enrolment"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

// Ports of the components inside each node's namespace.
const (
	AgentMonitorAddr = "127.0.0.1:15029"
	ZtunnelReadyURL  = "http://127.0.0.1:15021/healthz/ready"
	ZtunnelMetrics   = "http://127.0.0.1:15020/metrics"
	ZtunnelAdmin     = "http://127.0.0.1:15000"
)

// Mesh is Ambit running on a lab's nodes.
type Mesh struct {
	l          *lab.Lab
	kubeconfig string
	cfgPath    string
	caDir      string
	agents     map[string]*lab.Process
	ztunnels   map[string]*lab.Process
	starts     int
	policies   []Policy

	istiod           *lab.Process
	istiodOpts       IstiodOptions
	istiodKubeconfig string
}

// Policy is an L4 authorization policy for ztunnel's static config, bound
// to the workloads Select picks (istiod's job once it feeds ztunnel).
type Policy struct {
	config.Authorization
	Select func(w *config.Workload) bool
}

// New prepares a mesh on l; Start* run its parts.
func New(l *lab.Lab) (*Mesh, error) {
	kc, err := l.KubeconfigFor("ambit-cni-agent", "ambit:cni-agent", "system:masters")
	if err != nil {
		return nil, err
	}
	return &Mesh{
		l: l, kubeconfig: kc,
		cfgPath:  filepath.Join(l.Dir, "ztunnel-config.yaml"),
		caDir:    filepath.Join(l.Dir, "ztunnel-ca"),
		agents:   map[string]*lab.Process{},
		ztunnels: map[string]*lab.Process{},
	}, nil
}

// AgentArgs are the node agent's flags on node n.
func (m *Mesh) AgentArgs(n *lab.Node) []string {
	return []string{
		"--node-name", n.Name,
		"--kubeconfig", m.kubeconfig,
		"--cni-conf-dir", n.CNIConfDir,
		"--cni-bin-dir", n.CNIBinDir,
		"--plugin-binary", m.l.Binaries().CNIPlugin,
		"--pin-dir", m.l.BPFPinDir(n),
		"--socket", filepath.Join(filepath.Dir(n.CNIConfDir), "ambit-cni.sock"),
		"--uplink", "eth0",
		"--monitor-addr", AgentMonitorAddr,
	}
}

// StartAgent starts the node agent on n and waits until it has chained
// the CNI plugin.
func (m *Mesh) StartAgent(ctx context.Context, n *lab.Node) error {
	m.starts++
	p, err := m.l.StartProcess(n, fmt.Sprintf("ambit-cni-agent-%s-%d", n.Name, m.starts), nil, m.l.Binaries().CNIAgent, m.AgentArgs(n)...)
	if err != nil {
		return err
	}
	m.agents[n.Name] = p
	return lab.WaitHTTP(ctx, n.NS, "http://"+AgentMonitorAddr+"/readyz", time.Minute, p)
}

// StopAgent stops the node agent on n (redirection stays in place).
func (m *Mesh) StopAgent(n *lab.Node) {
	if p := m.agents[n.Name]; p != nil {
		p.Stop(5 * time.Second)
	}
}

// StartAgents starts the node agent on every node.
func (m *Mesh) StartAgents(ctx context.Context) error {
	for _, n := range m.l.Nodes {
		if err := m.StartAgent(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

// StartZtunnel starts ztunnel on n and waits until it is ready. With
// istiod running (StartIstiod) ztunnel takes its config from istiod's
// workload discovery and its certificates from istiod's CA, with a token
// bound to its pod; otherwise from the static config and a test CA.
func (m *Mesh) StartZtunnel(ctx context.Context, n *lab.Node) error {
	args := []string{"--node", n.Name, "--redirect", "tproxy"}
	var env []string
	if m.istiod != nil {
		// The downward API of the DaemonSet's pod.
		env = []string{"POD_NAME=ztunnel-" + n.Name, "POD_NAMESPACE=" + IstiodNamespace, "INSTANCE_IP=" + n.IP.String()}
		token, err := m.ztunnelIdentity(ctx, n)
		if err != nil {
			return err
		}
		args = append(args,
			"--xds-address", IstiodAddr(), "--xds-root-cert", m.RootCertPath(), "--xds-token", token,
			"--ca-address", IstiodAddr(), "--ca-root-cert", m.RootCertPath(), "--ca-token", token,
			"--xds-server-name", IstiodServerName, "--ca-server-name", IstiodServerName,
		)
	} else {
		if _, err := os.Stat(m.cfgPath); err != nil {
			if err := m.WriteConfig(ctx); err != nil {
				return err
			}
		}
		args = append(args, "--local-config", m.cfgPath, "--fake-ca-dir", m.caDir)
	}
	m.starts++
	p, err := m.l.StartProcess(n, fmt.Sprintf("ztunnel-%s-%d", n.Name, m.starts), env, m.l.Binaries().Ztunnel, args...)
	if err != nil {
		return err
	}
	m.ztunnels[n.Name] = p
	return lab.WaitHTTP(ctx, n.NS, ZtunnelReadyURL, time.Minute, p)
}

// StartZtunnels starts ztunnel on every node, one after the other: the
// first creates the shared test CA, the others load it.
func (m *Mesh) StartZtunnels(ctx context.Context) error {
	if m.istiod == nil {
		if err := m.WriteConfig(ctx); err != nil {
			return err
		}
	}
	for _, n := range m.l.Nodes {
		if err := m.StartZtunnel(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

// StopZtunnel stops ztunnel on n.
func (m *Mesh) StopZtunnel(n *lab.Node) {
	if p := m.ztunnels[n.Name]; p != nil {
		p.Stop(5 * time.Second)
	}
}

// Ztunnel returns the running ztunnel process of node n, or nil.
func (m *Mesh) Ztunnel(n *lab.Node) *lab.Process { return m.ztunnels[n.Name] }

// AddPolicy adds an authorization policy to ztunnel's config; Sync
// applies it.
func (m *Mesh) AddPolicy(p Policy) { m.policies = append(m.policies, p) }

// Sync recomputes ztunnel's config from the cluster and makes every
// running ztunnel reload it (SIGHUP), waiting until each one's config dump
// shows the new version.
func (m *Mesh) Sync(ctx context.Context) error {
	if err := m.WriteConfig(ctx); err != nil {
		return err
	}
	data, err := os.ReadFile(m.cfgPath)
	if err != nil {
		return err
	}
	want := configDigest(data)
	for name, p := range m.ztunnels {
		select {
		case <-p.Exited():
			continue
		default:
		}
		if err := p.Signal(syscall.SIGHUP); err != nil {
			return fmt.Errorf("reload ztunnel on %s: %w", name, err)
		}
		n := m.l.Node(name)
		// ztunnel offers no reload event; its config dump shows what it has.
		err := lab.WaitHTTPBody(ctx, n.NS, ZtunnelAdmin+"/config_dump", 30*time.Second, func(body string) bool {
			return strings.Contains(body, want)
		})
		if err != nil {
			return fmt.Errorf("reload ztunnel on %s: %w", name, err)
		}
	}
	return nil
}

// configDigest is a string that appears in a ztunnel's config dump once
// it has loaded data: the names of the policies, or of the last workload.
func configDigest(data []byte) string {
	var st config.State
	if err := yaml.Unmarshal(data, &st); err != nil {
		return ""
	}
	if len(st.Policies) > 0 {
		return `"` + st.Policies[len(st.Policies)-1].Name + `"`
	}
	if len(st.Workloads) > 0 {
		return `"` + st.Workloads[len(st.Workloads)-1].UID + `"`
	}
	return ""
}

// WriteConfig writes ztunnel's static config computed from the cluster.
func (m *Mesh) WriteConfig(ctx context.Context) error {
	st, err := m.State(ctx)
	if err != nil {
		return err
	}
	js, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode ztunnel config: %w", err)
	}
	data, err := yaml.JSONToYAML(js)
	if err != nil {
		return fmt.Errorf("encode ztunnel config: %w", err)
	}
	tmp := m.cfgPath + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("write ztunnel config: %w", err)
	}
	return os.Rename(tmp, m.cfgPath)
}

// State computes what istiod would tell ztunnel: a workload per running
// pod with an address (HBONE if it is in the mesh and the node agent has
// annotated it as redirected), a service per
// ClusterIP Service with the ports of the pods it selects, and the
// policies added with AddPolicy. kube-system is left out.
func (m *Mesh) State(ctx context.Context) (*config.State, error) {
	c := m.l.Client.CoreV1()
	nsList, err := c.Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	st := &config.State{}
	for _, ns := range nsList.Items {
		if ns.Name == metav1.NamespaceSystem || strings.HasPrefix(ns.Name, "kube-") {
			continue
		}
		pods, err := c.Pods(ns.Name).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("list pods of %s: %w", ns.Name, err)
		}
		svcs, err := c.Services(ns.Name).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("list services of %s: %w", ns.Name, err)
		}
		for i := range svcs.Items {
			s := &svcs.Items[i]
			vip, err := netip.ParseAddr(s.Spec.ClusterIP)
			if err != nil {
				continue // headless
			}
			svc := &config.Service{
				Name: s.Name, Namespace: s.Namespace,
				Hostname:  fmt.Sprintf("%s.%s.svc.%s", s.Name, s.Namespace, lab.ClusterDomain),
				Addresses: []config.NetworkAddress{{Address: vip}},
			}
			for _, p := range s.Spec.Ports {
				if p.Protocol == corev1.ProtocolTCP || p.Protocol == "" {
					svc.Ports = append(svc.Ports, config.Port{ServicePort: uint32(p.Port), TargetPort: uint32(p.TargetPort.IntValue())})
				}
			}
			st.Services = append(st.Services, svc)
		}
		for i := range pods.Items {
			p := &pods.Items[i]
			ip, err := netip.ParseAddr(p.Status.PodIP)
			if err != nil || p.DeletionTimestamp != nil || p.Spec.HostNetwork {
				continue
			}
			w := &config.Workload{
				UID: p.Namespace + "/" + p.Name, Name: p.Name, Namespace: p.Namespace,
				Addresses: []netip.Addr{ip}, Node: p.Spec.NodeName,
				ServiceAccount: p.Spec.ServiceAccountName, TunnelProtocol: config.TunnelNone,
				CanonicalName: p.Labels["app"], CanonicalRevision: p.Labels["version"],
				Status: config.Unhealthy,
			}
			if w.ServiceAccount == "" {
				w.ServiceAccount = "default"
			}
			if lab.PodReady(p) {
				w.Status = config.Healthy
			}
			// As istiod: HBONE once the node agent has confirmed the
			// redirection.
			if enrolment.Captured(p.Labels, ns.Labels, false) && p.Annotations[enrolment.AnnotationRedirection] == enrolment.AnnotationEnabled {
				w.TunnelProtocol = config.TunnelHBONE
			}
			for _, s := range svcs.Items {
				if s.Spec.Selector == nil || !labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(p.Labels)) {
					continue
				}
				if _, err := netip.ParseAddr(s.Spec.ClusterIP); err != nil {
					continue
				}
				var pl config.PortList
				for _, sp := range s.Spec.Ports {
					if target := targetPort(p, sp); target != 0 {
						pl.Ports = append(pl.Ports, config.Port{ServicePort: uint32(sp.Port), TargetPort: target})
					}
				}
				if w.Services == nil {
					w.Services = map[string]config.PortList{}
				}
				w.Services[fmt.Sprintf("%s/%s.%s.svc.%s", s.Namespace, s.Name, s.Namespace, lab.ClusterDomain)] = pl
			}
			for _, pol := range m.policies {
				if pol.Select != nil && pol.Select(w) {
					w.AuthorizationPolicies = append(w.AuthorizationPolicies, pol.Namespace+"/"+pol.Name)
				}
			}
			st.Workloads = append(st.Workloads, w)
		}
	}
	for _, pol := range m.policies {
		a := pol.Authorization
		st.Policies = append(st.Policies, &a)
	}
	slices.SortFunc(st.Workloads, func(a, b *config.Workload) int { return strings.Compare(a.UID, b.UID) })
	if err := st.Validate(); err != nil {
		return nil, errors.Join(errors.New("computed ztunnel config is invalid"), err)
	}
	return st, nil
}

// targetPort resolves a Service port's target on a pod: a number, or a
// container port's name.
func targetPort(p *corev1.Pod, sp corev1.ServicePort) uint32 {
	if sp.TargetPort.IntValue() != 0 {
		return uint32(sp.TargetPort.IntValue())
	}
	name := sp.TargetPort.String()
	if name == "" || name == "0" {
		return uint32(sp.Port)
	}
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == name {
				return uint32(cp.ContainerPort)
			}
		}
	}
	return 0
}
