package lab

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/ambitmesh/ambit/internal/kubewatch"
)

// CreateNamespace creates a namespace with labels and waits until the
// controller-manager has made its default service account, without which
// no pod can be created in it.
func (l *Lab) CreateNamespace(ctx context.Context, name string, labels map[string]string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if _, err := l.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return l.WaitServiceAccount(ctx, name, "default")
}

// WaitServiceAccount waits until the service account exists.
func (l *Lab) WaitServiceAccount(ctx context.Context, namespace, name string) error {
	lw := kubewatch.Named(l.Client.CoreV1().ServiceAccounts(namespace), name)
	_, err := watchtools.UntilWithSync(ctx, lw, &corev1.ServiceAccount{}, nil, func(ev watch.Event) (bool, error) {
		return ev.Type == watch.Added || ev.Type == watch.Modified, nil
	})
	if err != nil {
		return fmt.Errorf("wait for service account %s/%s: %w", namespace, name, err)
	}
	return nil
}

// WaitPod waits until cond holds for the pod, watching it.
func (l *Lab) WaitPod(ctx context.Context, namespace, name string, cond func(*corev1.Pod) bool) (*corev1.Pod, error) {
	lw := kubewatch.Named(l.Client.CoreV1().Pods(namespace), name)
	ev, err := watchtools.UntilWithSync(ctx, lw, &corev1.Pod{}, nil, func(ev watch.Event) (bool, error) {
		p, ok := ev.Object.(*corev1.Pod)
		return ok && ev.Type != watch.Deleted && cond(p), nil
	})
	if err != nil {
		return nil, fmt.Errorf("wait for pod %s/%s: %w", namespace, name, err)
	}
	return ev.Object.(*corev1.Pod), nil
}

// PodReady reports whether the pod's Ready condition is true.
func PodReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// RunPod creates the pod and waits until it is Ready.
func (l *Lab) RunPod(ctx context.Context, pod *corev1.Pod) (*corev1.Pod, error) {
	if pod.Spec.NodeName == "" {
		return nil, fmt.Errorf("run pod %s/%s: no spec.nodeName: the lab has no scheduler", pod.Namespace, pod.Name)
	}
	if _, err := l.Client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return l.WaitPod(ctx, pod.Namespace, pod.Name, PodReady)
}

// DeletePod deletes the pod and waits until it is gone from the API, which
// the node's kubelet stand-in completes after stopping it and running CNI
// DEL.
func (l *Lab) DeletePod(ctx context.Context, namespace, name string) error {
	pods := l.Client.CoreV1().Pods(namespace)
	p, err := pods.Get(ctx, name, getOpts)
	if err != nil {
		return fmt.Errorf("delete pod %s/%s: %w", namespace, name, err)
	}
	if err := pods.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete pod %s/%s: %w", namespace, name, err)
	}
	sel := fields.OneTermEqualSelector("metadata.name", name).String()
	w, err := pods.Watch(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: p.ResourceVersion})
	if err != nil {
		return fmt.Errorf("watch deletion of pod %s/%s: %w", namespace, name, err)
	}
	_, err = watchtools.UntilWithoutRetry(ctx, w, func(ev watch.Event) (bool, error) {
		return ev.Type == watch.Deleted, nil
	})
	if err != nil {
		return fmt.Errorf("wait for deletion of pod %s/%s: %w", namespace, name, err)
	}
	return nil
}

// Exec runs argv inside the pod's network namespace on its node, like
// kubectl exec, and returns the output.
func (l *Lab) Exec(ctx context.Context, namespace, name string, argv ...string) ([]byte, error) {
	p, err := l.Client.CoreV1().Pods(namespace).Get(ctx, name, getOpts)
	if err != nil {
		return nil, fmt.Errorf("exec in pod %s/%s: %w", namespace, name, err)
	}
	n := l.Node(p.Spec.NodeName)
	if n == nil {
		return nil, fmt.Errorf("exec in pod %s/%s: node %q is not in the lab", namespace, name, p.Spec.NodeName)
	}
	return n.Kubelet.Exec(ctx, namespace, name, argv...)
}

// RunEchoPod runs an EchoPod as service account sa (the namespace's
// default when empty) and waits until it is Ready.
func (l *Lab) RunEchoPod(ctx context.Context, namespace, name, node, sa string, labels map[string]string) (*corev1.Pod, error) {
	p := EchoPod(namespace, name, node, labels)
	p.Spec.ServiceAccountName = sa
	return l.RunPod(ctx, p)
}

// EchoPod returns a pod that runs the echo workload on node, serving TCP on
// 9000, HTTP on 8080 and gRPC (the interop TestService) on 7070, with a
// readiness probe on /healthz.
func EchoPod(namespace, name, node string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName: node,
			Containers: []corev1.Container{{
				Name:  "echo",
				Image: EchoImage,
				Args:  []string{"serve", "--tcp", ":9000", "--http", ":8080", "--grpc", ":7070"},
				Ports: []corev1.ContainerPort{
					{Name: "tcp", ContainerPort: 9000},
					{Name: "http", ContainerPort: 8080},
					{Name: "grpc", ContainerPort: 7070},
				},
				Env: []corev1.EnvVar{
					{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
					{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
				},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}},
					PeriodSeconds: 1,
				},
			}},
		},
	}
}

// Binaries returns the programs the lab runs, the echo workload among them.
func (l *Lab) Binaries() Binaries { return l.cfg.Binaries }

// WaitServiceProgrammed waits until kube-proxy on every node has rules that
// send the Service namespace/name to the endpoint IP. kube-proxy offers no
// event for that, so this reads its iptables rules until they are there.
func (l *Lab) WaitServiceProgrammed(ctx context.Context, namespace, name, endpointIP string) error {
	comment := namespace + "/" + name
	for _, n := range l.Nodes {
		err := waitFor(ctx, "kube-proxy rules for "+comment+" on "+n.Name, 60*time.Second, nil, func(ctx context.Context) error {
			out, err := n.NS.Command(ctx, "iptables-save", "-t", "nat").Output()
			if err != nil {
				return fmt.Errorf("iptables-save: %w", err)
			}
			for _, line := range strings.Split(string(out), "\n") {
				if strings.Contains(line, comment) && strings.Contains(line, "--to-destination "+endpointIP+":") {
					return nil
				}
			}
			return fmt.Errorf("no DNAT to %s for %s yet", endpointIP, comment)
		})
		if err != nil {
			return err
		}
	}
	return nil
}
