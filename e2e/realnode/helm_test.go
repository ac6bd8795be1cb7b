package realnode

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/cli"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	images "github.com/ambitmesh/ambit/deploy/images"
	"github.com/ambitmesh/ambit/internal/lab"
)

// TestHelmInstall installs deploy/charts/ambit with Helm, as the README
// says (release ambit in istio-system, the chart's default hub and tag),
// onto the real node, with the images `make images` builds served by the
// lab registry, and waits for istiod and the ztunnel and node-agent
// DaemonSets to be Ready.
func TestHelmInstall(t *testing.T) {
	l := startRealLab(t)
	ctx := t.Context()
	ims, err := images.Build(ctx, images.Options{Root: l.root, Out: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range ims {
		l.push(t, im.Layout, im.Ref)
	}

	const ns = "istio-system"
	settings := cli.New()
	settings.KubeConfig = l.Kubeconfig
	settings.SetNamespace(ns)
	cfg := new(action.Configuration)
	if err := cfg.Init(settings.RESTClientGetter(), ns, "secret", t.Logf); err != nil {
		t.Fatal(err)
	}
	ch, err := loader.Load(filepath.Join(l.root, "deploy", "charts", "ambit"))
	if err != nil {
		t.Fatal(err)
	}
	install := action.NewInstall(cfg)
	install.ReleaseName = "ambit"
	install.Namespace = ns
	install.CreateNamespace = true
	install.Timeout = 2 * time.Minute
	if _, err := install.RunWithContext(ctx, ch, map[string]any{}); err != nil {
		t.Fatalf("helm install: %v", err)
	}

	apps := l.Client.AppsV1()
	var last string
	err = lab.PollUntil(ctx, 4*time.Minute, func() bool {
		last = ""
		d, err := apps.Deployments(ns).Get(ctx, "istiod", metav1.GetOptions{})
		if err != nil || d.Status.ReadyReplicas < 1 {
			last += fmt.Sprintf("istiod: %v %+v; ", err, statusOf(d))
		}
		dss, err := apps.DaemonSets(ns).List(ctx, metav1.ListOptions{})
		if err != nil || len(dss.Items) != 2 {
			last += fmt.Sprintf("daemonsets: %v, want 2; ", err)
			return false
		}
		for _, ds := range dss.Items {
			if !daemonSetReady(&ds) {
				last += fmt.Sprintf("daemonset %s: %d of %d ready; ", ds.Name, ds.Status.NumberReady, ds.Status.DesiredNumberScheduled)
			}
		}
		return last == ""
	})
	if err != nil {
		pods, _ := l.Client.CoreV1().Pods(ns).List(context.WithoutCancel(ctx), metav1.ListOptions{})
		for _, p := range pods.Items {
			t.Logf("pod %s: %s %+v", p.Name, p.Status.Phase, p.Status.ContainerStatuses)
		}
		t.Fatalf("wait for the chart's workloads to be Ready: %v; %s", err, last)
	}

	// The node agent chained ambit-cni after the node's primary network
	// and installed the plugin, in the node's own directories.
	node := l.Nodes[0]
	data, err := os.ReadFile(filepath.Join(node.CNIConfDir, "10-lab.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	var conflist struct {
		Plugins []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(data, &conflist); err != nil {
		t.Fatalf("parse the node's conflist: %v\n%s", err, data)
	}
	var types []string
	for _, p := range conflist.Plugins {
		types = append(types, p.Type)
	}
	if len(types) != 2 || types[0] != "ptp" || types[1] != "ambit-cni" {
		t.Errorf("node conflist plugins: got %v, want [ptp ambit-cni]", types)
	}
	if _, err := os.Stat(filepath.Join(node.CNIBinDir, "ambit-cni")); err != nil {
		t.Errorf("ambit-cni in the node's /opt/cni/bin: %v", err)
	}
	// Its pins are in the node's bpffs, not the host's.
	out, err := exec.Command("nsenter", "--mount="+node.MountNS(), "--", "ls", "/sys/fs/bpf/ambit").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		t.Errorf("pins in the node's /sys/fs/bpf/ambit: got %q (%v), want some", out, err)
	}
	if _, err := os.Stat("/sys/fs/bpf/ambit"); err == nil {
		t.Errorf("/sys/fs/bpf/ambit on the host: exists, want it only in the node's bpffs")
	}

	// A pod started now goes through the chain (containerd calls
	// ambit-cni after ptp) and runs.
	l.pushProgram(t, echoImage, "./samples/echo", fmt.Sprintf("%d:%d", images.NonRootUID, images.NonRootUID))
	if _, err := l.Client.CoreV1().Pods("default").Create(ctx, echoPod(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := waitPod(ctx, l.Lab, "echo", 2*time.Minute, podReady); err != nil {
		t.Fatal(err)
	}
}

func daemonSetReady(ds *appsv1.DaemonSet) bool {
	s := ds.Status
	return s.DesiredNumberScheduled == 1 && s.NumberReady == s.DesiredNumberScheduled && s.UpdatedNumberScheduled == s.DesiredNumberScheduled
}

func statusOf(d *appsv1.Deployment) any {
	if d == nil {
		return nil
	}
	return d.Status
}
