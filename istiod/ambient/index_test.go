package ambient

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/ambitmesh/ambit/istiod/cluster"
)

// TestIndexDeltas: the Index turns informer events into deltas that name
// only what changed, the first one holding the whole model.
func TestIndexDeltas(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	web := pod("shop", "web", "10.244.1.5", "node1", map[string]string{"app": "web"})
	web.Annotations = map[string]string{"ambient.istio.io/redirection": "enabled"}
	kube := fake.NewSimpleClientset(ns("shop", nil), web, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, ClusterIP: "10.96.0.1"},
	})
	deltas := make(chan Delta, 16)
	x := NewIndex(IndexOptions{OnChange: func(d Delta) { deltas <- d }})
	c := cluster.New(kube, nil)
	if err := x.RegisterInformers(c); err != nil {
		t.Fatal(err)
	}
	c.Start(ctx)
	done := make(chan error, 1)
	go func() { done <- x.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
		c.Shutdown()
	})
	uid := PodUID("Kubernetes", "shop", "web")
	svc := ServiceName("shop", "web.shop.svc.cluster.local")
	type summary struct{ Changed, Removed []string }
	next := func() summary {
		t.Helper()
		select {
		case d := <-deltas:
			var s summary
			for k := range d.Addresses {
				s.Changed = append(s.Changed, k)
			}
			s.Removed = d.RemovedAddresses
			return s
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
		return summary{}
	}
	steps := []struct {
		name   string
		change func() error
		want   summary
	}{
		{"first model", func() error { return nil }, summary{Changed: []string{uid, svc}}},
		{"pod not ready", func() error {
			p := web.DeepCopy()
			p.Status.Conditions[0].Status = corev1.ConditionFalse
			_, err := kube.CoreV1().Pods("shop").UpdateStatus(ctx, p, metav1.UpdateOptions{})
			return err
		}, summary{Changed: []string{uid}}},
		// Enrolment turns the pod's tunnel to HBONE.
		{"namespace enrolled", func() error {
			_, err := kube.CoreV1().Namespaces().Update(ctx, ns("shop", map[string]string{DataplaneModeLabel: DataplaneModeAmbient}), metav1.UpdateOptions{})
			return err
		}, summary{Changed: []string{uid}}},
		{"pod deleted", func() error {
			return kube.CoreV1().Pods("shop").Delete(ctx, "web", metav1.DeleteOptions{})
		}, summary{Removed: []string{uid}}},
		{"service deleted", func() error {
			return kube.CoreV1().Services("shop").Delete(ctx, "web", metav1.DeleteOptions{})
		}, summary{Removed: []string{svc}}},
	}
	for _, st := range steps {
		if err := st.change(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		got := next()
		slices.Sort(got.Changed)
		if diff := cmp.Diff(st.want, got); diff != "" {
			t.Errorf("%s: delta (-want +got):\n%s", st.name, diff)
		}
	}
	if m, flushes := x.Model(); len(m.Addresses) != 0 || flushes != uint64(len(steps)) {
		t.Errorf("model: got %d addresses after %d flushes, want 0 after %d", len(m.Addresses), flushes, len(steps))
	}
}
