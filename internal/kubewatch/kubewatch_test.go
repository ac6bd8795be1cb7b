package kubewatch_test

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/ambitmesh/ambit/internal/kubewatch"
)

// recorder is a client of pods that records the options it gets.
type recorder struct{ got []metav1.ListOptions }

func (r *recorder) List(_ context.Context, o metav1.ListOptions) (*corev1.PodList, error) {
	r.got = append(r.got, o)
	return &corev1.PodList{}, nil
}

func (r *recorder) Watch(_ context.Context, o metav1.ListOptions) (watch.Interface, error) {
	r.got = append(r.got, o)
	return watch.NewEmptyWatch(), nil
}

// TestSelectors: List and Watch carry the selector and keep the options
// their caller sets (the resource version).
func TestSelectors(t *testing.T) {
	for _, tc := range []struct {
		name         string
		lw           func(*recorder) *cache.ListWatch
		field, label string
	}{
		{"named", func(r *recorder) *cache.ListWatch { return kubewatch.Named(r, "web") }, "metadata.name=web", ""},
		{"labelled", func(r *recorder) *cache.ListWatch { return kubewatch.Labelled(r, "app=web") }, "", "app=web"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{}
			lw := tc.lw(r)
			if _, err := lw.ListWithContext(t.Context(), metav1.ListOptions{ResourceVersion: "7"}); err != nil {
				t.Fatal(err)
			}
			w, err := lw.WatchWithContext(t.Context(), metav1.ListOptions{ResourceVersion: "8"})
			if err != nil {
				t.Fatal(err)
			}
			w.Stop()
			want := []metav1.ListOptions{
				{FieldSelector: tc.field, LabelSelector: tc.label, ResourceVersion: "7"},
				{FieldSelector: tc.field, LabelSelector: tc.label, ResourceVersion: "8"},
			}
			if diff := cmp.Diff(want, r.got); diff != "" {
				t.Errorf("options (-want +got):\n%s", diff)
			}
		})
	}
}
