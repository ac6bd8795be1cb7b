package realnode

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/internal/testutil"
)

// echoImage is the test workload's image as the pod names it: a registry
// name that only the lab's mirror serves.
const echoImage = EchoImage

// realLab is a lab with one real node and its registry serving the
// pause image and the samples' images.
type realLab struct {
	*lab.Lab
	bins lab.Binaries
	root string
	reg  *Registry
}

// startRealLab starts a lab with one real node and the lab registry, with
// the pause image and the samples' images pushed (PushLabImages). It is
// torn down after the test, which fails if anything is left behind.
func startRealLab(t *testing.T) *realLab {
	t.Helper()
	return startRealLabN(t, 1)
}

// startRealLabN is startRealLab with n real nodes.
func startRealLabN(t *testing.T, n int) *realLab {
	t.Helper()
	testutil.RequireRoot(t)
	ctx := t.Context()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	bins, err := lab.EnsureBinaries(ctx, lab.BuildOptions{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	root, err := lab.FindRoot()
	if err != nil {
		t.Fatal(err)
	}
	l, err := lab.Start(ctx, lab.Config{Nodes: n, RealNodes: true, Binaries: bins, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	labDir := l.Dir
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("lab logs:\n%s", l.Logs(60))
		}
		podNS := nodePodNetNS(l)
		if err := l.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
		left, err := lab.Leftovers(l.ID, labDir)
		if err != nil {
			t.Errorf("check lab leftovers: %v", err)
		}
		left = append(left, hostNetNSFiles(podNS)...)
		if len(left) > 0 {
			t.Errorf("after Close: got leftovers %v, want none", left)
		}
	})
	reg, err := ServeRegistry(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	if err := reg.PushLabImages(ctx, root); err != nil {
		t.Fatal(err)
	}
	return &realLab{Lab: l, bins: bins, root: root, reg: reg}
}

// TestRealNode starts the lab with one real node (kubelet, containerd,
// runc), runs a pod from an image the lab's registry serves, execs into
// it through the kubelet, deletes it, and checks that the lab leaves no
// namespace, mount, process or cgroup behind.
func TestRealNode(t *testing.T) {
	l := startRealLab(t)
	ctx := t.Context()
	bins := l.bins
	labDir := l.Dir

	node := l.Nodes[0]
	// The node's CNI directory is the node's own, not the host's.
	if _, err := os.Stat(filepath.Join(node.CNIConfDir, "10-lab.conflist")); err != nil {
		t.Fatalf("node conflist: %v", err)
	}
	if data, err := exec.Command("nsenter", "--mount="+node.MountNS(), "--", "ls", "/etc/cni/net.d").CombinedOutput(); err != nil || strings.TrimSpace(string(data)) != "10-lab.conflist" {
		t.Errorf("/etc/cni/net.d in the node: got %q (%v), want 10-lab.conflist", data, err)
	}

	// The node has a bpffs of its own.
	if data, err := exec.Command("nsenter", "--mount="+node.MountNS(), "--", "stat", "-fc", "%T", "/sys/fs/bpf").CombinedOutput(); err != nil || strings.TrimSpace(string(data)) != "bpf_fs" {
		t.Errorf("/sys/fs/bpf in the node: got %q (%v), want a bpf_fs", data, err)
	}

	pods := l.Client.CoreV1().Pods("default")
	if _, err := pods.Create(ctx, echoPod(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var ip string
	if err := waitPod(ctx, l.Lab, "echo", 3*time.Minute, func(p *corev1.Pod) bool {
		ip = p.Status.PodIP
		return p.Spec.NodeName == node.Name && podReady(p)
	}); err != nil {
		t.Fatal(err)
	}
	if !node.PodCIDR.Contains(mustAddr(t, ip)) {
		t.Errorf("pod IP %s: want one in the node's pod CIDR %s", ip, node.PodCIDR)
	}

	// containerd's bind mount of the pod's network namespace is in the
	// node's own /var/run/netns, never a file in the host's.
	podNS := node.PodNetNS()
	if len(podNS) == 0 {
		t.Errorf("node's /var/run/netns: got no files, want the echo pod's sandbox namespace")
	}
	if left := hostNetNSFiles(podNS); len(left) > 0 {
		t.Errorf("host's /var/run/netns: got %v, want no namespace of the node's pods", left)
	}

	// The container's log is in the node's podLogsDir.
	if logs, _ := filepath.Glob(filepath.Join(labDir, "nodes", node.Name, "pods-logs", "default_echo_*", "echo", "0.log")); len(logs) != 1 {
		t.Errorf("container logs in the node's /var/log/pods: got %v, want one 0.log", logs)
	}

	// exec through the apiserver and the real kubelet: the workload's own
	// client asks its server on the pod's loopback.
	cmd := exec.CommandContext(ctx, bins.Kubectl, "--kubeconfig", l.Kubeconfig, "exec", "-n", "default", "echo", "--",
		"/usr/local/bin/echo", "http", "http://127.0.0.1:8080/exec")
	data, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl exec: %v\n%s", err, data)
	}
	var rep struct {
		Hostname string `json:"hostname"`
		Path     string `json:"path"`
	}
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatalf("kubectl exec output %q: %v", data, err)
	}
	if rep.Hostname != "echo" || rep.Path != "/exec" {
		t.Errorf("kubectl exec: got hostname %q path %q, want echo and /exec", rep.Hostname, rep.Path)
	}
	// port-forward through the apiserver and the real kubelet, as
	// ambitctl reaches components' admin ports.
	checkPortForward(t, ctx, l.Lab, node.Name)
	// The pod answers on its IP from the node.
	if body, err := lab.HTTPGet(ctx, node.NS, "http://"+ip+":8080/node"); err != nil || !strings.Contains(body, `"hostname":"echo"`) {
		t.Errorf("GET the pod from its node: got %q, %v; want the echo pod's reply", body, err)
	}

	// Deleting the pod runs the sandbox teardown (CNI DEL) on the node.
	if err := pods.Delete(ctx, "echo", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := lab.PollUntil(ctx, 2*time.Minute, func() bool {
		_, err := pods.Get(ctx, "echo", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	}); err != nil {
		t.Fatalf("wait for the pod to be gone: %v", err)
	}
	if ips, _ := filepath.Glob(filepath.Join(labDir, "nodes", node.Name, "ipam", "lab", "10.*")); len(ips) != 0 {
		t.Errorf("after the pod is gone: got IP reservations %v, want none (CNI DEL)", ips)
	}
}

// echoPod is the echo workload in the default namespace, Ready once it
// answers HTTP (a probe the kubelet makes into the pod).
func echoPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "default"},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name:  "echo",
				Image: echoImage,
				Args:  []string{"serve"},
				Env:   []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
					HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt32(8080)},
				}, PeriodSeconds: 1},
			}},
		},
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// waitPod polls the pod until cond holds.
func waitPod(ctx context.Context, l *lab.Lab, name string, timeout time.Duration, cond func(*corev1.Pod) bool) error {
	var last *corev1.Pod
	err := lab.PollUntil(ctx, timeout, func() bool {
		p, err := l.Client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		last = p
		return cond(p)
	})
	if err != nil {
		st, _ := json.Marshal(last)
		return fmt.Errorf("wait for pod %s: %w; last: %s", name, err, st)
	}
	return nil
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatalf("parse pod IP %q: %v", s, err)
	}
	return a
}

// TestRealNodeCleanStale: a lab with a real node whose owner is gone (a
// crashed test run) is removed by the next lab's CleanStale: its
// containers, shims, containerd and kubelet, cgroups, mounts and
// namespaces.
func TestRealNodeCleanStale(t *testing.T) {
	l := startRealLab(t)
	ctx := t.Context()
	if _, err := l.Client.CoreV1().Pods("default").Create(ctx, echoPod(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := waitPod(ctx, l.Lab, "echo", 2*time.Minute, podReady); err != nil {
		t.Fatal(err)
	}
	podNS := nodePodNetNS(l.Lab)
	// The owner is now a process that has exited.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	if err := l.SetOwner(dead.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if err := lab.CleanStale(); err != nil {
		t.Fatalf("clean stale labs: %v", err)
	}
	left, err := lab.Leftovers(l.ID, l.Dir)
	if err != nil {
		t.Fatal(err)
	}
	left = append(left, hostNetNSFiles(podNS)...)
	if len(left) > 0 {
		t.Errorf("after CleanStale: got leftovers %v, want none", left)
	}
	if _, err := os.Stat(l.Dir); !os.IsNotExist(err) {
		t.Errorf("lab dir after CleanStale: got %v, want it gone", err)
	}
}

// nodePodNetNS lists the pod sandbox namespaces (cni-<uuid>) of the lab's
// real nodes.
func nodePodNetNS(l *lab.Lab) []string {
	var names []string
	for _, n := range l.Nodes {
		names = append(names, n.PodNetNS()...)
	}
	return names
}

// hostNetNSFiles lists which of the namespace files names are in the
// host's /var/run/netns (a leftover: containerd's netns files belong in
// the node's own directory).
func hostNetNSFiles(names []string) []string {
	var left []string
	for _, n := range names {
		if _, err := os.Lstat(filepath.Join("/var/run/netns", n)); err == nil {
			left = append(left, "netns file /var/run/netns/"+n)
		}
	}
	return left
}
