package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambitmesh/ambit/internal/echo"
	"github.com/ambitmesh/ambit/internal/lab"
)

// TestLabSmoke: two pods on two nodes reach each other over TCP and HTTP
// by pod IP, by ClusterIP and by Service name, and the server sees the
// client's own pod IP (no NAT between pods).
func TestLabSmoke(t *testing.T) {
	l := startLab(t, lab.Config{Nodes: 2})
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	const ns = "smoke"
	if err := l.CreateNamespace(ctx, ns, nil); err != nil {
		t.Fatal(err)
	}
	pods := map[string]*corev1.Pod{}
	for name, node := range map[string]string{"client": "node1", "server": "node2"} {
		p, err := l.RunPod(ctx, lab.EchoPod(ns, name, node, map[string]string{"app": name}))
		if err != nil {
			t.Fatal(err)
		}
		pods[name] = p
		if _, err := l.Client.CoreV1().Services(ns).Create(ctx, echoService(ns, name), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	client, server := pods["client"], pods["server"]
	if client.Status.PodIP == "" || client.Status.HostIP != l.Node("node1").IP.String() {
		t.Fatalf("client pod status: got podIP %q hostIP %q, want a pod IP on node1 (%s)", client.Status.PodIP, client.Status.HostIP, l.Node("node1").IP)
	}
	svc, err := l.Client.CoreV1().Services(ns).Get(ctx, "server", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.WaitServiceProgrammed(ctx, ns, "server", server.Status.PodIP); err != nil {
		t.Fatal(err)
	}

	targets := []struct {
		name      string
		host      string
		tcp, http int
	}{
		{"pod IP", server.Status.PodIP, 9000, 8080},
		{"ClusterIP", svc.Spec.ClusterIP, 9000, 80},
		{"short name", "server", 9000, 80},
		{"namespaced name", "server.smoke", 9000, 80},
		{"FQDN", "server.smoke.svc.cluster.local", 9000, 80},
	}
	for _, tc := range targets {
		t.Run(tc.name, func(t *testing.T) {
			addr := net.JoinHostPort(tc.host, fmt.Sprint(tc.tcp))
			out, err := l.Exec(ctx, ns, "client", l.Binaries().Echo, "tcp", addr, "hello-"+tc.name)
			if err != nil {
				t.Fatal(err)
			}
			checkReport(t, out, "tcp", client.Status.PodIP)

			url := fmt.Sprintf("http://%s/from-client", net.JoinHostPort(tc.host, fmt.Sprint(tc.http)))
			out, err = l.Exec(ctx, ns, "client", l.Binaries().Echo, "http", url)
			if err != nil {
				t.Fatal(err)
			}
			checkReport(t, out, "http", client.Status.PodIP)
		})
	}

	// A pod reaches its own containers on loopback, as in a real pod
	// sandbox.
	if out, err := l.Exec(ctx, ns, "client", l.Binaries().Echo, "tcp", "127.0.0.1:9000", "self"); err != nil || !strings.Contains(string(out), `"hostname":"client"`) {
		t.Errorf("tcp to 127.0.0.1:9000 in the client pod: got %s, %v; want the client's own echo", out, err)
	}

	// Deleting a pod stops it and runs CNI DEL: its address no longer
	// answers.
	if err := l.DeletePod(ctx, ns, "server"); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Node("node2").Kubelet.PodNetNS(ns, "server"); ok {
		t.Error("after DeletePod: server still runs on node2")
	}
	if out, err := l.Exec(ctx, ns, "client", l.Binaries().Echo, "tcp", net.JoinHostPort(server.Status.PodIP, "9000"), "gone"); err == nil {
		t.Errorf("tcp to deleted pod %s: got %s, want an error", server.Status.PodIP, out)
	}
}

func checkReport(t *testing.T, out []byte, proto, clientIP string) {
	t.Helper()
	var rep echo.Report
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("decode echo report %q: %v", out, err)
	}
	if rep.Hostname != "server" || rep.Namespace != "smoke" || rep.Protocol != proto {
		t.Errorf("%s report: got hostname %q namespace %q protocol %q, want server smoke %s", proto, rep.Hostname, rep.Namespace, rep.Protocol, proto)
	}
	host, _, err := net.SplitHostPort(rep.Peer)
	if err != nil || host != clientIP {
		t.Errorf("%s report peer: got %q, want the client pod IP %s", proto, rep.Peer, clientIP)
	}
}

func echoService(ns, app string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: app, Namespace: ns},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": app},
			Ports: []corev1.ServicePort{
				{Name: "tcp", Port: 9000, TargetPort: intstr.FromString("tcp")},
				{Name: "http", Port: 80, TargetPort: intstr.FromString("http")},
			},
		},
	}
}
