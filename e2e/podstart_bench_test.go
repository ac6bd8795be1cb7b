package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/e2e/internal/labmesh"
	"github.com/ambitmesh/ambit/internal/enrolment"
	"github.com/ambitmesh/ambit/internal/lab"
)

// BenchmarkPodStartCNI measures what Ambit's plugin adds to pod start:
// the duration of CNI ADD for pods of an ambient namespace with the plugin
// chained (label lookup, agent call, attach and enrol), against the same
// node's ADD once Ambit is uninstalled (the primary plugin alone), as p50
// and p99 over 100 pods each, in one run.
func BenchmarkPodStartCNI(b *testing.B) {
	const pods = 100
	l := startLab(b, lab.Config{Nodes: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	n := l.Node("node1")
	agents, err := labmesh.New(l)
	if err != nil {
		b.Fatal(err)
	}
	if err := agents.StartAgent(ctx, n); err != nil {
		b.Fatal(err)
	}
	if err := l.CreateNamespace(ctx, "mesh", map[string]string{enrolment.LabelDataplaneMode: enrolment.ModeAmbient}); err != nil {
		b.Fatal(err)
	}
	run := func(prefix string) []time.Duration {
		n.Kubelet.TakeCNIAddDurations()
		for i := range pods {
			p := lab.EchoPod("mesh", fmt.Sprintf("%s-%d", prefix, i), n.Name, nil)
			p.Spec.Containers[0].ReadinessProbe = nil
			if _, err := l.RunPod(ctx, p); err != nil {
				b.Fatal(err)
			}
		}
		for i := range pods {
			if err := l.DeletePod(ctx, "mesh", fmt.Sprintf("%s-%d", prefix, i)); err != nil {
				b.Fatal(err)
			}
		}
		d := n.Kubelet.TakeCNIAddDurations()
		if len(d) != pods {
			b.Fatalf("%s: got %d CNI ADDs, want %d", prefix, len(d), pods)
		}
		slices.Sort(d)
		return d
	}
	b.ResetTimer()
	with := run("with")
	agents.StopAgent(n)
	if out, err := n.NS.Command(ctx, l.Binaries().CNIAgent, append(agents.AgentArgs(n), "--uninstall")...).CombinedOutput(); err != nil {
		b.Fatalf("uninstall: %v: %s", err, out)
	}
	without := run("without")
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	p := func(d []time.Duration, q float64) time.Duration { return d[int(q*float64(len(d)-1))] }
	b.ReportMetric(ms(p(without, 0.5)), "without-p50-ms")
	b.ReportMetric(ms(p(without, 0.99)), "without-p99-ms")
	b.ReportMetric(ms(p(with, 0.5)), "with-p50-ms")
	b.ReportMetric(ms(p(with, 0.99)), "with-p99-ms")
	b.ReportMetric(ms(p(with, 0.5)-p(without, 0.5)), "added-p50-ms")
	b.ReportMetric(ms(p(with, 0.99)-p(without, 0.99)), "added-p99-ms")
}
