package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/internal/netns"
)

// TestLabPodLifecycle: a pod that cannot start reports why and leaves no
// namespace behind; deleting pods runs CNI DEL, which frees their
// addresses; a container that exits is restarted.
func TestLabPodLifecycle(t *testing.T) {
	l := startLab(t, lab.Config{Nodes: 1})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	const ns = "lifecycle"
	if err := l.CreateNamespace(ctx, ns, nil); err != nil {
		t.Fatal(err)
	}
	podNamespaces := func() []string {
		t.Helper()
		names, err := netns.List(lab.NamePrefix + l.ID + "-pod-")
		if err != nil {
			t.Fatal(err)
		}
		return names
	}

	// An image the lab has no program for: the start fails after CNI ADD,
	// and everything is undone.
	bad := lab.EchoPod(ns, "bad-image", "node1", nil)
	bad.Spec.Containers[0].Image = "registry.invalid/nothing:1"
	if _, err := l.Client.CoreV1().Pods(ns).Create(ctx, bad, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p, err := l.WaitPod(ctx, ns, "bad-image", func(p *corev1.Pod) bool {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && strings.Contains(c.Message, "registry.invalid/nothing") {
				return true
			}
		}
		return false
	})
	if err != nil {
		t.Fatal(err)
	}
	if lab.PodReady(p) {
		t.Errorf("pod with unknown image: got Ready, want not ready")
	}
	if err := l.DeletePod(ctx, ns, "bad-image"); err != nil {
		t.Fatal(err)
	}
	if got := podNamespaces(); len(got) != 0 {
		t.Errorf("after failed start and delete: got pod namespaces %v, want none", got)
	}

	// Addresses come back after DEL: host-local keeps one file per
	// reserved address.
	ipamDir := filepath.Join(l.Dir, "nodes", "node1", "ipam", "lab")
	reserved := func() int {
		t.Helper()
		entries, err := os.ReadDir(ipamDir)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		n := 0
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), "10.244.") {
				n++
			}
		}
		return n
	}
	for _, name := range []string{"a", "b"} {
		if _, err := l.RunPod(ctx, lab.EchoPod(ns, name, "node1", nil)); err != nil {
			t.Fatal(err)
		}
	}
	if got := reserved(); got != 2 {
		t.Errorf("with two pods: got %d reserved addresses, want 2", got)
	}
	if got := len(podNamespaces()); got != 2 {
		t.Errorf("with two pods: got %d pod namespaces, want 2", got)
	}
	for _, name := range []string{"a", "b"} {
		if err := l.DeletePod(ctx, ns, name); err != nil {
			t.Fatal(err)
		}
	}
	if got := reserved(); got != 0 {
		t.Errorf("after deleting both pods: got %d reserved addresses, want 0", got)
	}
	if got := podNamespaces(); len(got) != 0 {
		t.Errorf("after deleting both pods: got pod namespaces %v, want none", got)
	}

	// A container that exits is restarted (restartPolicy Always).
	crash := lab.EchoPod(ns, "crasher", "node1", nil)
	crash.Spec.Containers[0].Args = []string{"no-such-subcommand"}
	crash.Spec.Containers[0].ReadinessProbe = nil
	if _, err := l.Client.CoreV1().Pods(ns).Create(ctx, crash, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.WaitPod(ctx, ns, "crasher", func(p *corev1.Pod) bool {
		return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount >= 2
	}); err != nil {
		t.Fatal(err)
	}
}
