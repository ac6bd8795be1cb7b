package adminport

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ambitmesh/ambit/internal/netns"
)

// Netns reaches components in the lab (internal/lab), where each node is
// a network namespace named Prefix+<node name> and runs ztunnel and the
// node agent as processes on its loopback, and istiod runs in the
// control plane's namespace, Prefix+"cp". Nodes are the cluster's Node
// objects. It needs root (it enters namespaces).
type Netns struct {
	// Prefix is the lab's namespace prefix, "ambit-<lab id>-".
	Prefix string
	// Client lists the nodes.
	Client kubernetes.Interface
}

var _ Dialer = (*Netns)(nil)

// ControlPlane is the name of the lab's control-plane namespace (after
// the prefix), where istiod runs.
const ControlPlane = "cp"

// Targets lists the nodes (node when not empty) for a per-node
// component, the control plane for istiod.
func (n *Netns) Targets(ctx context.Context, c Component, node string) ([]Target, error) {
	if !c.PerNode {
		return []Target{{Component: c, Node: ControlPlane}}, nil
	}
	if node != "" {
		if _, err := n.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{}); err != nil {
			return nil, fmt.Errorf("get node %s: %w", node, err)
		}
		return []Target{{Component: c, Node: node}}, nil
	}
	nodes, err := n.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	var out []Target
	for _, nd := range nodes.Items {
		out = append(out, Target{Component: c, Node: nd.Name})
	}
	slices.SortFunc(out, func(a, b Target) int {
		if a.Node < b.Node {
			return -1
		}
		if a.Node > b.Node {
			return 1
		}
		return 0
	})
	return out, nil
}

// Dial connects to 127.0.0.1:<port> inside the target's namespace.
func (n *Netns) Dial(ctx context.Context, t Target) (net.Conn, error) {
	ns, err := netns.Open(n.Prefix + t.Node)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", t, err)
	}
	return ns.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(t.Component.Port)))
}

// Close does nothing: Netns keeps no state.
func (n *Netns) Close() error { return nil }
