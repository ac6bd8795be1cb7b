package adminport

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ambitmesh/ambit/internal/netns"
)

// Netns reaches components in the lab (internal/lab), where each node is
// a network namespace named Prefix+<node name> and runs ztunnel and the
// node agent as processes on its loopback, and istiod runs in the
// control plane's namespace, Prefix+"cp". Nodes are the cluster's Node
// objects. Pods (waypoints) have network namespaces of their own, named
// by the lab's kubelet Prefix+"pod-"+<the first 12 hex digits of the
// pod's UID>. It needs root (it enters namespaces).
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

// Dial connects to 127.0.0.1:<port> inside the target's namespace: its
// pod's when it names a pod in a namespace, else its node's.
func (n *Netns) Dial(ctx context.Context, t Target) (net.Conn, error) {
	name := n.Prefix + t.Node
	if t.Pod != "" && t.Namespace != "" {
		pod, err := n.Client.CoreV1().Pods(t.Namespace).Get(ctx, t.Pod, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", t, err)
		}
		name = PodNetnsName(n.Prefix, string(pod.UID))
	}
	ns, err := netns.Open(name)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", t, err)
	}
	return ns.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(t.Component.Port)))
}

// Close does nothing: Netns keeps no state.
func (n *Netns) Close() error { return nil }

// PodNetnsName is the name the lab's kubelet gives a pod's network
// namespace.
func PodNetnsName(prefix, uid string) string {
	id := strings.ReplaceAll(uid, "-", "")
	if len(id) > 12 {
		id = id[:12]
	}
	return prefix + "pod-" + id
}
