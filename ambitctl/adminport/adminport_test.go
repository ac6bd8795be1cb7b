package adminport

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
)

func pod(name, node string, phase corev1.PodPhase, labels map[string]string) runtime.Object {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: name, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: phase},
	}
}

// TestPortForwardTargets: the running pods of the component, by the
// chart's labels, on the node asked for, sorted by node.
func TestPortForwardTargets(t *testing.T) {
	zt := map[string]string{"app": "ztunnel"}
	cl := fake.NewClientset(
		pod("ztunnel-b", "node2", corev1.PodRunning, zt),
		pod("ztunnel-a", "node1", corev1.PodRunning, zt),
		pod("ztunnel-old", "node1", corev1.PodFailed, zt),
		pod("agent-a", "node1", corev1.PodRunning, map[string]string{"app": "ambit-cni-agent"}),
	)
	p := &PortForward{Client: cl, Namespace: "istio-system"}
	got, err := p.Targets(context.Background(), Ztunnel, "")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tg := range got {
		names = append(names, tg.Pod+"@"+tg.Node)
	}
	if want := "ztunnel-a@node1 ztunnel-b@node2"; strings.Join(names, " ") != want {
		t.Errorf("Targets(ztunnel): got %q, want %q", names, want)
	}
	// The fake clientset ignores field selectors; the real apiserver
	// filters by spec.nodeName (TestAmbitctl's lab), so only check that
	// asking for a node does not fail here.
	if _, err := p.Targets(context.Background(), Agent, "node1"); err != nil {
		t.Errorf("Targets(agent, node1): %v", err)
	}
	if _, err := p.Dial(context.Background(), Target{Component: Ztunnel, Node: "node1"}); err == nil || !strings.Contains(err.Error(), "no pod") {
		t.Errorf("Dial without a pod: got %v, want an error saying so", err)
	}
}

// dialFunc is a Dialer that dials one address, for Get's tests.
type dialFunc func(ctx context.Context) (net.Conn, error)

func (f dialFunc) Targets(context.Context, Component, string) ([]Target, error) { return nil, nil }
func (f dialFunc) Dial(ctx context.Context, _ Target) (net.Conn, error)         { return f(ctx) }
func (f dialFunc) Close() error                                                 { return nil }

func TestGet(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			w.Write([]byte("fine"))
		default:
			http.Error(w, "no such page", http.StatusNotFound)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	d := dialFunc(func(ctx context.Context) (net.Conn, error) {
		var nd net.Dialer
		return nd.DialContext(ctx, "tcp", ln.Addr().String())
	})
	tg := Target{Component: Ztunnel, Node: "node1", Pod: "ztunnel-a"}
	if body, err := Get(context.Background(), d, tg, "/ok"); err != nil || string(body) != "fine" {
		t.Errorf("Get /ok: got %q, %v; want fine", body, err)
	}
	_, err = Get(context.Background(), d, tg, "/missing")
	if err == nil || !strings.Contains(err.Error(), "404") || !strings.Contains(err.Error(), "no such page") || !strings.Contains(err.Error(), "ztunnel (ztunnel-a) on node1") {
		t.Errorf("Get /missing: got %v, want the status, the body and the target", err)
	}
}
