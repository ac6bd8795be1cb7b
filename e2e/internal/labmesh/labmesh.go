// Package labmesh runs Ambit in a lab (internal/lab) the way the Helm chart
// runs it on a cluster: istiod on the control-plane node, the node agent
// and ztunnel on every node, as real processes. ztunnel takes its config
// from istiod's workload discovery and its certificates from istiod's CA.
// Every part runs with only the chart's access (RBAC and admission
// policies): istiod with its service account's token, the agent and
// ztunnel with tokens bound to pods that stand for their DaemonSets' pods.
package labmesh

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/ambitmesh/ambit/internal/lab"
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
	l *lab.Lab
	// agentKubeconfigs holds each node's agent kubeconfig: a token of
	// the chart's service account bound to the agent's pod on that node.
	agentKubeconfigs map[string]string
	agents           map[string]*lab.Process
	ztunnels         map[string]*lab.Process
	starts           int
	accessInstalled  bool

	istiod           *lab.Process
	istiodExternal   bool // UseIstiod
	istiodOpts       IstiodOptions
	istiodKubeconfig string
}

// New prepares a mesh on l; Start* run its parts.
func New(l *lab.Lab) (*Mesh, error) {
	return &Mesh{
		l:                l,
		agentKubeconfigs: map[string]string{},
		agents:           map[string]*lab.Process{},
		ztunnels:         map[string]*lab.Process{},
	}, nil
}

// AgentArgs are the node agent's flags on node n, once StartAgent has
// run there (it makes the agent's credentials).
func (m *Mesh) AgentArgs(n *lab.Node) []string {
	return []string{
		"--node-name", n.Name,
		"--kubeconfig", m.agentKubeconfigs[n.Name],
		"--cni-conf-dir", n.CNIConfDir,
		"--cni-bin-dir", n.CNIBinDir,
		"--plugin-binary", m.l.Binaries().CNIPlugin,
		"--pin-dir", m.l.BPFPinDir(n),
		"--socket", filepath.Join(filepath.Dir(n.CNIConfDir), "ambit-cni.sock"),
		// No --uplink: the agent finds eth0 as the interface holding the
		// node's address, as it does in a cluster from status.hostIP.
		"--host-ip", n.IP.String(),
		"--monitor-addr", AgentMonitorAddr,
	}
}

// StartAgent starts the node agent on n and waits until it has chained
// the CNI plugin. The agent (and the plugin, which gets its kubeconfig)
// runs with the chart's RBAC and admission policies only: a token of its
// service account bound to a pod on n.
func (m *Mesh) StartAgent(ctx context.Context, n *lab.Node) error {
	if m.agentKubeconfigs[n.Name] == "" {
		if err := m.installAccess(ctx); err != nil {
			return err
		}
		// A day: the interactive demo may run for hours. On a cluster
		// the agent follows the kubelet's renewals of its token.
		token, err := m.podToken(ctx, n, "ambit-cni-agent", AgentSA, "agent", nil, 24*3600)
		if err != nil {
			return err
		}
		kc, err := TokenKubeconfig(m.l, "ambit-cni-agent-"+n.Name, token)
		if err != nil {
			return err
		}
		m.agentKubeconfigs[n.Name] = kc
	}
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

// StartZtunnel starts ztunnel on n and waits until it is ready: config
// from istiod's workload discovery, certificates from istiod's CA, with a
// token bound to its pod. istiod must be running (StartIstiod).
func (m *Mesh) StartZtunnel(ctx context.Context, n *lab.Node) error {
	if m.istiod == nil {
		return errors.New("start ztunnel: istiod is not running (StartIstiod)")
	}
	token, err := m.ztunnelIdentity(ctx, n)
	if err != nil {
		return err
	}
	args := []string{"--node", n.Name, "--redirect", "tproxy",
		"--xds-address", IstiodAddr(), "--xds-root-cert", m.RootCertPath(), "--xds-token", token,
		"--ca-address", IstiodAddr(), "--ca-root-cert", m.RootCertPath(), "--ca-token", token,
		"--xds-server-name", IstiodServerName, "--ca-server-name", IstiodServerName,
	}
	// The downward API of the DaemonSet's pod.
	env := []string{"POD_NAME=ztunnel-" + n.Name, "POD_NAMESPACE=" + IstiodNamespace, "INSTANCE_IP=" + n.IP.String()}
	m.starts++
	p, err := m.l.StartProcess(n, fmt.Sprintf("ztunnel-%s-%d", n.Name, m.starts), env, m.l.Binaries().Ztunnel, args...)
	if err != nil {
		return err
	}
	m.ztunnels[n.Name] = p
	return lab.WaitHTTP(ctx, n.NS, ZtunnelReadyURL, time.Minute, p)
}

// StartZtunnels starts ztunnel on every node.
func (m *Mesh) StartZtunnels(ctx context.Context) error {
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
