// Package bookinfo returns the Kubernetes objects that run Bookinfo in the
// lab (internal/lab), the way Istio's samples/bookinfo/platform/kube/
// bookinfo.yaml runs it on a cluster: a ServiceAccount per service
// (bookinfo-productpage, bookinfo-details, bookinfo-reviews,
// bookinfo-ratings), a Service per app on port 9080 named http, and one Pod
// per version (productpage-v1, details-v1, reviews-v1, reviews-v2,
// reviews-v3, ratings-v1) labelled app and version. The lab has no
// scheduler and no Deployment controller, so Pods are made directly, each
// on the node a Placement names. samples/bookinfo/bookinfo.yaml is the same
// as Deployments for a real cluster.
package bookinfo

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambitmesh/ambit/samples/bookinfo/app"
)

// Image is the container image of every Bookinfo service: the bookinfo
// command, whose first argument selects the service. The lab maps it to the
// built binary (lab.Config.Images).
const Image = "ambit.dev/bookinfo"

// Port is the port of every Bookinfo service and Service.
const Port = 9080

// Workload is one version of one service: one Pod in the lab, one
// Deployment on a cluster.
type Workload struct {
	App     string
	Version string
}

// Name is the pod (deployment) name: app-version.
func (w Workload) Name() string { return w.App + "-" + w.Version }

// Workloads are Bookinfo's pods, in a fixed order.
var Workloads = []Workload{
	{app.Productpage, "v1"},
	{app.Details, "v1"},
	{app.Reviews, "v1"},
	{app.Reviews, "v2"},
	{app.Reviews, "v3"},
	{app.Ratings, "v1"},
}

// ServiceAccountName is the service account of app's pods.
func ServiceAccountName(app string) string { return "bookinfo-" + app }

// Placement says on which node a workload's pod runs.
type Placement func(Workload) string

// Spread places the workloads over nodes in turn, in the order of
// Workloads: with two nodes, productpage, reviews-v1 and reviews-v3 on the
// first and details, reviews-v2 and ratings on the second, so that every
// call of the call graph crosses nodes and reviews has versions on both.
func Spread(nodes ...string) Placement {
	return func(w Workload) string {
		for i, x := range Workloads {
			if x == w {
				return nodes[i%len(nodes)]
			}
		}
		return nodes[0]
	}
}

// Objects are what runs Bookinfo in one namespace. Create them in this
// order: service accounts, services, pods.
type Objects struct {
	ServiceAccounts []*corev1.ServiceAccount
	Services        []*corev1.Service
	Pods            []*corev1.Pod
}

// Lab returns the objects that run Bookinfo in namespace, each pod on the
// node place names for it.
func Lab(namespace string, place Placement) (Objects, error) {
	var o Objects
	for _, a := range app.Services {
		o.ServiceAccounts = append(o.ServiceAccounts, &corev1.ServiceAccount{
			ObjectMeta: metav1.ObjectMeta{Name: ServiceAccountName(a), Namespace: namespace, Labels: map[string]string{"account": a}},
		})
		o.Services = append(o.Services, Service(namespace, a))
	}
	for _, w := range Workloads {
		node := place(w)
		if node == "" {
			return Objects{}, fmt.Errorf("place pod %s/%s: no node", namespace, w.Name())
		}
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: w.Name(), Namespace: namespace, Labels: Labels(w)},
			Spec:       PodSpec(w),
		}
		p.Spec.NodeName = node
		o.Pods = append(o.Pods, p)
	}
	return o, nil
}

// Labels are a workload's pod labels: app and version.
func Labels(w Workload) map[string]string {
	return map[string]string{"app": w.App, "version": w.Version}
}

// Service is app's Service: port 9080 named http, selecting app.
func Service(namespace, a string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: a, Namespace: namespace, Labels: map[string]string{"app": a, "service": a}},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": a},
			Ports:    []corev1.ServicePort{{Name: "http", Port: Port, TargetPort: intstr.FromInt32(Port)}},
		},
	}
}

// PodSpec is a workload's pod spec, without node: the bookinfo image with
// the service as argument, SERVICE_VERSION set, port 9080 named http and a
// readiness probe on /health.
func PodSpec(w Workload) corev1.PodSpec {
	return corev1.PodSpec{
		ServiceAccountName: ServiceAccountName(w.App),
		Containers: []corev1.Container{{
			Name:  w.App,
			Image: Image,
			Args:  []string{w.App},
			Env:   []corev1.EnvVar{{Name: "SERVICE_VERSION", Value: w.Version}},
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: Port}},
			ReadinessProbe: &corev1.Probe{
				ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/health", Port: intstr.FromInt32(Port)}},
				PeriodSeconds: 1,
			},
		}},
	}
}
