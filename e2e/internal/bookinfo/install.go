package bookinfo

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambitmesh/ambit/internal/lab"
)

// Install creates Bookinfo's objects in namespace of a running lab, placed
// by place, and waits until every pod is Ready and kube-proxy on every node
// has every Service. It returns the Ready pods by name.
func Install(ctx context.Context, l *lab.Lab, namespace string, place Placement) (map[string]*corev1.Pod, error) {
	objs, err := Lab(namespace, place)
	if err != nil {
		return nil, err
	}
	core := l.Client.CoreV1()
	for _, sa := range objs.ServiceAccounts {
		if _, err := core.ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("install bookinfo: %w", err)
		}
	}
	for _, s := range objs.Services {
		if _, err := core.Services(namespace).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("install bookinfo: %w", err)
		}
	}
	for _, p := range objs.Pods {
		if _, err := core.Pods(namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("install bookinfo: %w", err)
		}
	}
	ready := map[string]*corev1.Pod{}
	for _, p := range objs.Pods {
		rp, err := l.WaitPod(ctx, namespace, p.Name, lab.PodReady)
		if err != nil {
			return nil, fmt.Errorf("install bookinfo: %w", err)
		}
		ready[p.Name] = rp
	}
	for _, rp := range ready {
		if err := l.WaitServiceProgrammed(ctx, namespace, rp.Labels["app"], rp.Status.PodIP); err != nil {
			return nil, fmt.Errorf("install bookinfo: %w", err)
		}
	}
	return ready, nil
}
