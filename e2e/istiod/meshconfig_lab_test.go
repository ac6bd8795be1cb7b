package istiod

import (
	"strings"
	"testing"
	"time"

	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/tools/cache"

	"github.com/ambitmesh/ambit/istiod/meshconfig"
)

// TestMeshConfigWatchInLab: istiod's MeshConfig watcher against a real
// kube-apiserver. The ConfigMap istio (key mesh) in istiod's namespace
// comes into force when created and on every update; a version that
// does not parse is refused with a Warning Event on the ConfigMap and
// the last good one stays; deleting it brings Istio's defaults back.
func TestMeshConfigWatchInLab(t *testing.T) {
	const ns = "istio-system"
	l, ctx := startLab(t, 3*time.Minute, ns)
	w := meshconfig.NewWatcher(l.Client, ns, warnLog())
	got := make(chan *meshv1alpha1.MeshConfig, 16)
	w.Subscribe(func(m *meshv1alpha1.MeshConfig) { got <- m })
	go w.Informer().Run(ctx.Done())
	go w.Run(ctx)
	if !cache.WaitForCacheSync(ctx.Done(), w.Informer().HasSynced) {
		t.Fatal("mesh config informer did not sync")
	}
	if m := w.Mesh(); !m.GetEnableTracing() || m.GetAccessLogFile() != "" {
		t.Fatalf("before any ConfigMap: got %v, want Istio's defaults", m)
	}
	next := func(what string) *meshv1alpha1.MeshConfig {
		t.Helper()
		select {
		case m := <-got:
			return m
		case <-ctx.Done():
			t.Fatalf("%s: no mesh config came into force", what)
			return nil
		}
	}
	cms := l.Client.CoreV1().ConfigMaps(ns)
	cm, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: meshconfig.ConfigMapName},
		Data: map[string]string{meshconfig.ConfigMapKey: "accessLogFile: /dev/stdout\n"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if m := next("created"); m.GetAccessLogFile() != "/dev/stdout" {
		t.Fatalf("created: accessLogFile %q, want /dev/stdout", m.GetAccessLogFile())
	}

	// A typo: refused, reported, the last good one kept.
	cm.Data[meshconfig.ConfigMapKey] = "accessLogFile: /dev/stdout\nenableTracin: false\n"
	if cm, err = cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	sel := fields.Set{"regarding.name": meshconfig.ConfigMapName, "reason": meshconfig.ReasonInvalid}.String()
	var note string
	for note == "" {
		evs, err := l.Client.EventsV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs.Items {
			if e.Type == corev1.EventTypeWarning && strings.Contains(e.Note, "enableTracin") {
				note = e.Note
			}
		}
		if note == "" {
			// Events are written asynchronously: watch for the next one.
			wi, err := l.Client.EventsV1().Events(ns).Watch(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: evs.ResourceVersion})
			if err != nil {
				t.Fatal(err)
			}
			select {
			case <-wi.ResultChan():
			case <-ctx.Done():
				t.Fatalf("no Warning event %s on the ConfigMap", meshconfig.ReasonInvalid)
			}
			wi.Stop()
		}
	}
	if !strings.Contains(w.LastError(), "enableTracin") {
		t.Errorf("LastError: got %q, want one naming enableTracin", w.LastError())
	}
	if m := w.Mesh(); m.GetAccessLogFile() != "/dev/stdout" || !m.GetEnableTracing() {
		t.Errorf("after a bad update: got %v, want the last good one", m)
	}
	select {
	case m := <-got:
		t.Errorf("a refused config came into force: %v", m)
	default:
	}

	// Fixed: in force.
	cm.Data[meshconfig.ConfigMapKey] = "accessLogFile: /dev/stdout\nenableTracing: false\n"
	if _, err = cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if m := next("fixed"); m.GetEnableTracing() || w.LastError() != "" {
		t.Errorf("fixed: enableTracing %v, last error %q; want false and none", m.GetEnableTracing(), w.LastError())
	}

	if err := cms.Delete(ctx, meshconfig.ConfigMapName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if m := next("deleted"); m.GetAccessLogFile() != "" || !m.GetEnableTracing() {
		t.Errorf("deleted: got %v, want Istio's defaults", m)
	}
}
