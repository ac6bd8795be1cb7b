package ca

import (
	"log/slog"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
)

// TestRootCertNamespaces checks which namespaces the publisher queues:
// every one but Kubernetes' system namespaces and those terminating.
func TestRootCertNamespaces(t *testing.T) {
	kube := fake.NewClientset()
	f := informers.NewSharedInformerFactory(kube, 0)
	p, err := NewRootCertPublisher(kube, f.Core().V1().Namespaces(), f.Core().V1().ConfigMaps(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer p.queue.ShutDown()
	ns := func(name string, phase corev1.NamespacePhase) *corev1.Namespace {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NamespaceStatus{Phase: phase}}
	}
	for _, n := range []*corev1.Namespace{
		ns("kube-system", corev1.NamespaceActive), ns("kube-public", corev1.NamespaceActive),
		ns("kube-node-lease", corev1.NamespaceActive), ns("local-path-storage", corev1.NamespaceActive),
		ns("leaving", corev1.NamespaceTerminating), ns("shop", corev1.NamespaceActive), ns("default", corev1.NamespaceActive),
	} {
		p.enqueue(n)
	}
	var got []string
	for p.queue.Len() > 0 {
		n, _ := p.queue.Get()
		got = append(got, n)
		p.queue.Done(n)
	}
	if len(got) != 2 || got[0] != "shop" || got[1] != "default" {
		t.Errorf("queued namespaces: got %v, want [shop default]", got)
	}
}
