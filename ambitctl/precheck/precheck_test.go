package precheck

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
)

func TestKernel(t *testing.T) {
	tests := []struct {
		release string
		want    Status
	}{
		{"6.18.44-fc-v1045", Pass},
		{"5.10.0-28-amd64", Pass},
		{"5.4.0-150-generic", Fail},
		{"4.19.0", Fail},
		{"garbage", Fail},
		{"", Fail},
	}
	for _, tt := range tests {
		if got := checkKernel(tt.release); got.Status != tt.want {
			t.Errorf("checkKernel(%q): got %s (%s), want %s", tt.release, got.Status, got.Detail, tt.want)
		}
	}
}

func TestBTFAndTCX(t *testing.T) {
	dir := t.TempDir()
	btf := filepath.Join(dir, "vmlinux")
	if got := checkBTF(btf); got.Status != Fail || got.Fix == "" {
		t.Errorf("missing BTF: got %+v, want a failure with a fix", got)
	}
	os.WriteFile(btf, []byte("btf"), 0o644)
	if got := checkBTF(btf); got.Status != Pass {
		t.Errorf("BTF present: got %+v, want pass", got)
	}
	for _, tt := range []struct {
		ok   bool
		err  error
		want Status
	}{{true, nil, Pass}, {false, nil, Warn}, {false, errors.New("operation not permitted"), Warn}} {
		got := checkTCX(func() (bool, error) { return tt.ok, tt.err })
		if got.Status != tt.want {
			t.Errorf("checkTCX(%v, %v): got %s, want %s", tt.ok, tt.err, got.Status, tt.want)
		}
	}
}

func TestCNI(t *testing.T) {
	const bridge = `{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"},{"type":"portmap"}]}`
	tests := []struct {
		name       string
		files      map[string]string
		want       []Status
		wantDetail string
	}{
		{"no conflist", map[string]string{"10-x.conf": `{}`}, []Status{Fail}, "no .conflist"},
		{"unparseable", map[string]string{"10-k8s.conflist": `{"plugins": [`}, []Status{Fail}, "does not parse"},
		{"no plugins", map[string]string{"10-k8s.conflist": `{"cniVersion":"1.0.0","name":"k8s","plugins":[]}`}, []Status{Fail}, "no plugins"},
		{"primary only", map[string]string{"10-k8s.conflist": bridge}, []Status{Pass, Pass}, "will chain after portmap"},
		{"first in lexical order", map[string]string{"10-k8s.conflist": bridge, "05-istio.conflist": `{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"ptp"},{"type":"istio-cni"}]}`}, []Status{Pass, Fail}, "Istio's CNI plugin (istio-cni) is chained in 05-istio.conflist"},
		{"linkerd", map[string]string{"10-k8s.conflist": `{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"},{"type":"linkerd-cni"}]}`}, []Status{Pass, Fail}, "Linkerd"},
		{"already chained", map[string]string{"10-k8s.conflist": `{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"},{"type":"ambit-cni"}]}`}, []Status{Pass, Pass}, "already chained"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for n, c := range tt.files {
				os.WriteFile(filepath.Join(dir, n), []byte(c), 0o644)
			}
			rs := checkCNI(dir)
			var got []Status
			var details []string
			for _, r := range rs {
				got = append(got, r.Status)
				details = append(details, r.Detail)
				if r.Status == Fail && r.Fix == "" {
					t.Errorf("%s: failure without a fix: %+v", r.Check, r)
				}
			}
			if strings.Join(statusStrings(got), ",") != strings.Join(statusStrings(tt.want), ",") {
				t.Errorf("statuses: got %v (%q), want %v", got, details, tt.want)
			}
			if all := strings.Join(details, "\n"); !strings.Contains(all, tt.wantDetail) {
				t.Errorf("details: got %q, want one containing %q", all, tt.wantDetail)
			}
		})
	}
}

func statusStrings(ss []Status) []string {
	var out []string
	for _, s := range ss {
		out = append(out, string(s))
	}
	return out
}

func TestCluster(t *testing.T) {
	ds := func(ns, name string) runtime.Object {
		return &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	}
	cilium := func(data map[string]string) runtime.Object {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "cilium-config"}, Data: data}
	}
	tests := []struct {
		name    string
		objs    []runtime.Object
		want    map[string]Status
		wantFix string
	}{
		{"ambit alone", []runtime.Object{ds("istio-system", "ztunnel"), ds("istio-system", "ambit-cni-agent")},
			map[string]Status{"other mesh (cluster)": Pass}, ""},
		{"istio ambient", []runtime.Object{ds("istio-system", "ztunnel"), ds("istio-system", "istio-cni-node")},
			map[string]Status{"other mesh (cluster)": Fail}, "uninstall Istio's"},
		{"linkerd", []runtime.Object{ds("linkerd-cni", "linkerd-cni")},
			map[string]Status{"other mesh (cluster)": Fail}, "Linkerd"},
		{"cilium exclusive", []runtime.Object{cilium(map[string]string{"cni-exclusive": "true"})},
			map[string]Status{"other mesh (cluster)": Pass, "cilium": Fail}, "cni.exclusive=false"},
		{"cilium socket lb in pods", []runtime.Object{cilium(map[string]string{"bpf-lb-sock": "true"}), ds("kube-system", "cilium-envoy")},
			map[string]Status{"other mesh (cluster)": Warn, "cilium": Fail}, "socketLB.hostNamespaceOnly=true"},
		{"cilium set up for a mesh", []runtime.Object{cilium(map[string]string{"cni-exclusive": "false", "bpf-lb-sock": "true", "bpf-lb-sock-hostns-only": "true"})},
			map[string]Status{"other mesh (cluster)": Pass, "cilium": Pass}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := CheckCluster(t.Context(), Cluster{Client: fake.NewClientset(tt.objs...), IstioNamespace: "istio-system"})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]Status{}
			var fixes []string
			for _, r := range rs {
				got[r.Check] = r.Status
				fixes = append(fixes, r.Fix)
			}
			if len(got) != len(tt.want) {
				t.Errorf("checks: got %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s: got %s, want %s (%+v)", k, got[k], v, rs)
				}
			}
			if tt.wantFix != "" && !strings.Contains(strings.Join(fixes, "\n"), tt.wantFix) {
				t.Errorf("fixes: got %q, want one containing %q", fixes, tt.wantFix)
			}
		})
	}
}
