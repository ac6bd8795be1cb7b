// Package adminport reaches the local HTTP ports of Ambit's components
// (ztunnel's admin on 15000, the node agent's monitor on 15029, istiod's
// monitoring on 15014), which listen on loopback or are not exposed by a
// Service, for ambitctl. One interface, Dialer, has two implementations:
// PortForward, through the apiserver's pod port-forward (what kubectl
// port-forward does) on a real cluster, and Netns, through the network
// namespaces of the lab (internal/lab), where the components run as
// processes rather than pods.
package adminport

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Component is a program whose local port ambitctl reads.
type Component struct {
	// Name is what ambitctl prints.
	Name string
	// Selector selects its pods in the Istio namespace (the chart's labels).
	Selector string
	// Port is the local HTTP port.
	Port int
	// PerNode is true for DaemonSets: one instance per node.
	PerNode bool
}

// The components, with the chart's labels and ports.
var (
	Ztunnel = Component{Name: "ztunnel", Selector: "app=ztunnel", Port: 15000, PerNode: true}
	Agent   = Component{Name: "ambit-cni-agent", Selector: "app=ambit-cni-agent", Port: 15029, PerNode: true}
	Istiod  = Component{Name: "istiod", Selector: "app=istiod", Port: 15014}
	// Waypoint is a waypoint proxy's admin (Envoy's port, 15000 on
	// loopback), in the namespace of its Gateway: its pods carry the
	// Gateway's name in this label.
	Waypoint = Component{Name: "waypoint", Selector: "gateway.networking.k8s.io/gateway-name", Port: 15000}
)

// Target is one running instance of a component.
type Target struct {
	Component Component
	// Node is the node it runs on.
	Node string
	// Pod is its pod's name, empty where it is no pod (the lab's
	// per-node components).
	Pod string
	// Namespace is the pod's namespace; empty for the Istio namespace
	// the dialer was made for. A waypoint's is its Gateway's.
	Namespace string
}

// String names the target for people: pod and node.
func (t Target) String() string {
	pod := t.Pod
	if t.Namespace != "" {
		pod += "." + t.Namespace
	}
	switch {
	case t.Pod == "":
		return fmt.Sprintf("%s on %s", t.Component.Name, t.Node)
	case t.Node == "":
		return fmt.Sprintf("%s (%s)", t.Component.Name, pod)
	}
	return fmt.Sprintf("%s (%s) on %s", t.Component.Name, pod, t.Node)
}

// Dialer finds the instances of a component and opens connections to
// their local port.
type Dialer interface {
	// Targets lists the running instances of c, only those on node when
	// node is not empty, ordered by node.
	Targets(ctx context.Context, c Component, node string) ([]Target, error)
	// Dial opens a TCP connection to t's local port.
	Dial(ctx context.Context, t Target) (net.Conn, error)
	// Close releases what Dial set up (port forwards).
	Close() error
}

// maxBody bounds what Get reads: a config dump of a large cluster is tens
// of megabytes.
const maxBody = 512 << 20

// Get fetches path from t's local port over d and returns the body of a
// 200 answer; any other status is an error that quotes the body.
func Get(ctx context.Context, d Dialer, t Target, path string) ([]byte, error) {
	return do(ctx, d, t, http.MethodGet, path)
}

// Post sends an empty POST to path on t's local port and returns the body
// of a 200 answer.
func Post(ctx context.Context, d Dialer, t Target, path string) ([]byte, error) {
	return do(ctx, d, t, http.MethodPost, path)
}

func do(ctx context.Context, d Dialer, t Target, method, path string) ([]byte, error) {
	tr := &http.Transport{
		DialContext:       func(ctx context.Context, _, _ string) (net.Conn, error) { return d.Dial(ctx, t) },
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: time.Minute}
	url := fmt.Sprintf("http://127.0.0.1:%d%s", t.Component.Port, path)
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return nil, fmt.Errorf("%s %s of %s: %w", method, path, t, err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s of %s: %w", method, path, t, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, fmt.Errorf("read %s of %s: %w", path, t, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s of %s: %s: %s", method, path, t, resp.Status, bytesTrim(body))
	}
	return body, nil
}

func bytesTrim(b []byte) string {
	const max = 200
	s := string(b)
	if len(s) > max {
		s = s[:max] + "..."
	}
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == ' ') {
		s = s[:len(s)-1]
	}
	return s
}
