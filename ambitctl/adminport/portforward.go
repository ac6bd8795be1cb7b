package adminport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/streaming/pkg/httpstream"
)

// PortForward reaches components' pods through the apiserver's
// port-forward subresource, as kubectl port-forward does: over a
// WebSocket tunnel, falling back to SPDY where the apiserver or a proxy
// does not upgrade to it. Each target gets one forward from a loopback
// port, opened on its first Dial and kept until Close.
type PortForward struct {
	// Config and Client reach the apiserver.
	Config *rest.Config
	Client kubernetes.Interface
	// Namespace holds the components' pods (istio-system).
	Namespace string

	mu       sync.Mutex
	forwards map[string]*forward // by pod name and port
}

var _ Dialer = (*PortForward)(nil)

type forward struct {
	stop  chan struct{}
	local uint16
}

// Targets lists the running pods of c (by its label selector) in the
// namespace, on node when it is not empty.
func (p *PortForward) Targets(ctx context.Context, c Component, node string) ([]Target, error) {
	opts := metav1.ListOptions{LabelSelector: c.Selector}
	if node != "" {
		opts.FieldSelector = "spec.nodeName=" + node
	}
	pods, err := p.Client.CoreV1().Pods(p.Namespace).List(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("list %s pods in %s: %w", c.Name, p.Namespace, err)
	}
	var out []Target
	for _, pod := range pods.Items {
		if pod.Status.Phase != corev1.PodRunning || pod.DeletionTimestamp != nil {
			continue
		}
		out = append(out, Target{Component: c, Node: pod.Spec.NodeName, Pod: pod.Name})
	}
	slices.SortFunc(out, func(a, b Target) int { return strings.Compare(a.Node+"/"+a.Pod, b.Node+"/"+b.Pod) })
	return out, nil
}

// Dial connects to t's port through its pod's port forward.
func (p *PortForward) Dial(ctx context.Context, t Target) (net.Conn, error) {
	if t.Pod == "" {
		return nil, fmt.Errorf("dial %s: no pod to forward to", t)
	}
	local, err := p.forward(t)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(local))))
}

func (p *PortForward) forward(t Target) (uint16, error) {
	ns := p.Namespace
	if t.Namespace != "" {
		ns = t.Namespace
	}
	key := fmt.Sprintf("%s/%s:%d", ns, t.Pod, t.Component.Port)
	p.mu.Lock()
	defer p.mu.Unlock()
	if f, ok := p.forwards[key]; ok {
		return f.local, nil
	}
	req := p.Client.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(t.Pod).SubResource("portforward")
	u := req.URL()
	rt, upgrader, err := spdy.RoundTripperFor(p.Config)
	if err != nil {
		return 0, fmt.Errorf("port-forward to %s: %w", t, err)
	}
	var dialer httpstream.Dialer = spdy.NewDialerForStreaming(upgrader, &http.Client{Transport: rt}, http.MethodPost, u)
	ws, err := portforward.NewSPDYOverWebsocketDialerForStreaming(u, p.Config)
	if err != nil {
		return 0, fmt.Errorf("port-forward to %s: %w", t, err)
	}
	dialer = portforward.NewFallbackDialerForStreaming(ws, dialer, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddressesForStreaming(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", t.Component.Port)}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		return 0, fmt.Errorf("port-forward to %s: %w", t, err)
	}
	errc := make(chan error, 1)
	go func() { errc <- fw.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-errc:
		if err == nil {
			err = errors.New("forward ended before it was ready")
		}
		return 0, fmt.Errorf("port-forward to %s: %w", t, err)
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) != 1 {
		close(stop)
		return 0, fmt.Errorf("port-forward to %s: no local port: %v", t, err)
	}
	if p.forwards == nil {
		p.forwards = map[string]*forward{}
	}
	p.forwards[key] = &forward{stop: stop, local: ports[0].Local}
	return ports[0].Local, nil
}

// Close stops every forward.
func (p *PortForward) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, f := range p.forwards {
		close(f.stop)
		delete(p.forwards, k)
	}
	return nil
}
