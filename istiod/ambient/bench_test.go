package ambient

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// benchState is pods spread over services (pods/services per service),
// namespaces of 50 services each, two nodes.
func benchState(pods, services int) State {
	var st State
	for i := range services / 50 {
		st.Namespaces = append(st.Namespaces, ns(fmt.Sprintf("ns%d", i), map[string]string{DataplaneModeLabel: DataplaneModeAmbient}))
	}
	for i := range services {
		st.Services = append(st.Services, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns%d", i/50), Name: fmt.Sprintf("svc%d", i)},
			Spec: corev1.ServiceSpec{
				Selector:   map[string]string{"app": fmt.Sprintf("svc%d", i)},
				ClusterIPs: []string{fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)},
				Ports:      []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
			},
		})
	}
	for i := range pods {
		s := i % services
		st.Pods = append(st.Pods, pod(fmt.Sprintf("ns%d", s/50), fmt.Sprintf("p%d", i), fmt.Sprintf("10.%d.%d.%d", 100+i/65536, i/256%256, i%256), fmt.Sprintf("node%d", i%2), map[string]string{"app": fmt.Sprintf("svc%d", s)}))
	}
	return st
}

// BenchmarkBuild measures one full model build, which istiod does once
// per debounced burst of cluster events.
func BenchmarkBuild(b *testing.B) {
	for _, n := range []int{1000, 10000, 50000} {
		b.Run(fmt.Sprintf("pods=%d/services=1000", n), func(b *testing.B) {
			st := benchState(n, 1000)
			b.ResetTimer()
			for b.Loop() {
				m := Build(st, Config{})
				if len(m.Addresses) != n+1000 {
					b.Fatalf("addresses: got %d, want %d", len(m.Addresses), n+1000)
				}
			}
		})
	}
}

// BenchmarkFlush measures what istiod now does per event: one pod changes
// (its readiness flips) and the Builder recomputes what that touches. It
// reports the ratio to a full Build of the same state, timed in the same
// run (the best of five).
func BenchmarkFlush(b *testing.B) {
	for _, n := range []int{1000, 10000, 50000} {
		b.Run(fmt.Sprintf("pods=%d/services=1000", n), func(b *testing.B) {
			st := benchState(n, 1000)
			var build time.Duration
			for i := range 5 {
				t0 := time.Now()
				Build(st, Config{})
				if d := time.Since(t0); i == 0 || d < build {
					build = d
				}
			}
			bl := NewBuilder(Config{})
			for _, x := range st.Namespaces {
				bl.SetNamespace(x)
			}
			for _, x := range st.Nodes {
				bl.SetNode(x)
			}
			for _, x := range st.Services {
				bl.SetService(x)
			}
			for _, x := range st.Pods {
				bl.SetPod(x)
			}
			if d := bl.Flush(); len(d.Addresses) != n+1000 {
				b.Fatalf("first flush: got %d addresses, want %d", len(d.Addresses), n+1000)
			}
			i := 0
			start := time.Now()
			for b.Loop() {
				p := st.Pods[i%n].DeepCopy()
				if i/n%2 == 0 {
					p.Status.Conditions[0].Status = corev1.ConditionFalse
				}
				i++
				bl.SetPod(p)
				if d := bl.Flush(); len(d.Addresses) != 1 {
					b.Fatalf("flush: got %d changed addresses, want 1", len(d.Addresses))
				}
			}
			per := time.Since(start) / time.Duration(b.N)
			b.ReportMetric(float64(build.Microseconds())/1000, "full-build-ms")
			b.ReportMetric(float64(build)/float64(per), "x-faster-than-build")
		})
	}
}
