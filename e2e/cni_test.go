package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambitmesh/ambit/bpf/redirect"
	"github.com/ambitmesh/ambit/cni/install"
	"github.com/ambitmesh/ambit/e2e/internal/labmesh"
	"github.com/ambitmesh/ambit/internal/enrolment"
	"github.com/ambitmesh/ambit/internal/lab"
)

// TestCNIAgent: the node agent chains the plugin into the node's conflist;
// pods of ambient namespaces are enrolled at CNI ADD and annotated; label
// changes enrol and un-enrol running pods; with the agent down, an ambient
// pod cannot start (closed) while others can, and traffic already set up
// keeps being redirected; a restarted agent reconciles and does not attach
// twice; uninstall leaves the node as it was.
func TestCNIAgent(t *testing.T) {
	l := startLab(t, lab.Config{Nodes: 2})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	agents, err := labmesh.New(l)
	if err != nil {
		t.Fatal(err)
	}
	n1, n2 := l.Node("node1"), l.Node("node2")
	for _, n := range l.Nodes {
		startFakeZtunnel(t, n)
		if err := agents.StartAgent(ctx, n); err != nil {
			t.Fatal(err)
		}
		conflist, err := install.PrimaryConflist(n.CNIConfDir)
		if err != nil {
			t.Fatal(err)
		}
		if has, err := install.Has(conflist); err != nil || !has {
			t.Fatalf("%s conflist after agent start: got has-ambit=%v (%v), want ambit-cni chained last", n.Name, has, err)
		}
	}

	ambient := map[string]string{enrolment.LabelDataplaneMode: enrolment.ModeAmbient}
	if err := l.CreateNamespace(ctx, "mesh", ambient); err != nil {
		t.Fatal(err)
	}
	if err := l.CreateNamespace(ctx, "plain", nil); err != nil {
		t.Fatal(err)
	}
	pods := map[string]*corev1.Pod{}
	for _, pc := range []struct{ ns, name, node string }{
		{"mesh", "a", "node1"}, {"mesh", "b", "node2"}, {"plain", "c", "node1"}, {"plain", "d", "node2"},
	} {
		p, err := l.RunPod(ctx, lab.EchoPod(pc.ns, pc.name, pc.node, nil))
		if err != nil {
			t.Fatal(err)
		}
		pods[pc.name] = p
	}
	ip := func(name string) string { return pods[name].Status.PodIP }
	annotated := func(p *corev1.Pod) bool {
		return p.Annotations[enrolment.AnnotationRedirection] == enrolment.AnnotationEnabled
	}
	notAnnotated := func(p *corev1.Pod) bool { return !annotated(p) }
	waitPod := func(ns, name string, cond func(*corev1.Pod) bool, what string) {
		t.Helper()
		if _, err := l.WaitPod(ctx, ns, name, cond); err != nil {
			t.Fatalf("pod %s/%s %s: %v", ns, name, what, err)
		}
	}
	// Enrolled at CNI ADD, before the pod ran: the annotation follows.
	waitPod("mesh", "a", annotated, "annotated")
	waitPod("mesh", "b", annotated, "annotated")
	for _, name := range []string{"c", "d"} {
		p, err := l.Client.CoreV1().Pods("plain").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if annotated(p) {
			t.Errorf("plain/%s: got the redirection annotation, want none", name)
		}
	}
	expect := func(what, from, fromNS, to, wantHost string) {
		t.Helper()
		rep, err := podTCP(ctx, l, fromNS, from, to)
		if err != nil {
			t.Errorf("%s: %v", what, err)
			return
		}
		if rep.Hostname != wantHost {
			t.Errorf("%s: got answer from %s, want %s", what, rep.Hostname, wantHost)
		}
	}
	expect("mesh a to mesh b", "a", "mesh", net.JoinHostPort(ip("b"), "9000"), "ztunnel-node1-15001")
	expect("plain c to plain d", "c", "plain", net.JoinHostPort(ip("d"), "9000"), "d")
	expect("plain c to mesh b", "c", "plain", net.JoinHostPort(ip("b"), "9000"), "ztunnel-node2-15006")

	// Un-labelling the namespace un-enrols its running pods.
	setNSLabel(t, ctx, l, "mesh", nil)
	waitPod("mesh", "a", notAnnotated, "un-annotated")
	waitPod("mesh", "b", notAnnotated, "un-annotated")
	expect("un-enrolled a to b", "a", "mesh", net.JoinHostPort(ip("b"), "9000"), "b")

	// Labelling enrols running pods; the pod label opts one out.
	setNSLabel(t, ctx, l, "plain", ptr(enrolment.ModeAmbient))
	waitPod("plain", "c", annotated, "annotated")
	waitPod("plain", "d", annotated, "annotated")
	expect("newly enrolled c to d", "c", "plain", net.JoinHostPort(ip("d"), "9000"), "ztunnel-node1-15001")
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, enrolment.LabelDataplaneMode, enrolment.ModeNone)
	if _, err := l.Client.CoreV1().Pods("plain").Patch(ctx, "d", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPod("plain", "d", notAnnotated, "opted out")
	if got := enrolledOn(t, l, n2); slices.Contains(got, netip.MustParseAddr(ip("d"))) {
		t.Errorf("node2 enrolled after d opted out: got %v, want no %s", got, ip("d"))
	}

	// Agent down: redirection already in place goes on; a new ambient pod
	// cannot start (its ADD fails, closed); a pod outside the mesh can.
	agents.StopAgent(n1)
	expect("c to d with the agent down", "c", "plain", net.JoinHostPort(ip("d"), "9000"), "ztunnel-node1-15001")
	e := lab.EchoPod("plain", "e", "node1", nil)
	if _, err := l.Client.CoreV1().Pods("plain").Create(ctx, e, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPod("plain", "e", func(p *corev1.Pod) bool {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && strings.Contains(c.Message, "redirection could not be set up") {
				return true
			}
		}
		return false
	}, "refused while the agent is down")
	if err := l.CreateNamespace(ctx, "other", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := l.RunPod(ctx, lab.EchoPod("other", "f", "node1", nil)); err != nil {
		t.Fatalf("pod outside the mesh with the agent down: %v", err)
	}

	// Agent back: the pending pod starts, enrolled; no second attachment
	// on the veths it had already attached.
	if err := agents.StartAgent(ctx, n1); err != nil {
		t.Fatal(err)
	}
	pe, err := l.WaitPod(ctx, "plain", "e", lab.PodReady)
	if err != nil {
		t.Fatal(err)
	}
	waitPod("plain", "e", annotated, "annotated after the agent came back")
	if got := enrolledOn(t, l, n1); !slices.Contains(got, netip.MustParseAddr(pe.Status.PodIP)) {
		t.Errorf("node1 enrolled: got %v, want %s among them", got, pe.Status.PodIP)
	}
	if n := attachments(t, n1, ip("c"), redirect.ModeTCX); n != 1 {
		t.Errorf("programs on c's veth after agent restart: got %d, want 1", n)
	}

	// Deleting a pod removes its enrolment at CNI DEL, and the pin of its
	// attachment once the agent sees the pod gone.
	var vethC string
	if err := n1.NS.Do(func() error {
		var err error
		vethC, err = redirect.HostInterface(netip.MustParseAddr(ip("c")))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	linkPin := filepath.Join(l.BPFPinDir(n1), "links", vethC+"-ingress")
	if _, err := os.Stat(linkPin); err != nil {
		t.Fatalf("precondition: pin of c's attachment: %v", err)
	}
	if err := l.DeletePod(ctx, "plain", "c"); err != nil {
		t.Fatal(err)
	}
	if got := enrolledOn(t, l, n1); slices.Contains(got, netip.MustParseAddr(ip("c"))) {
		t.Errorf("node1 enrolled after deleting c: got %v, want no %s", got, ip("c"))
	}
	// The agent removes the pin when its watch delivers the deletion; a
	// file's disappearance offers no event to wait on, so poll it.
	if err := lab.PollUntil(ctx, 30*time.Second, func() bool { _, err := os.Stat(linkPin); return os.IsNotExist(err) }); err != nil {
		t.Errorf("pin %s of deleted pod c's veth: still there: %v", linkPin, err)
	}
	// A pod deleted while the agent is down leaves a stale entry, which
	// the agent removes when it starts.
	agents.StopAgent(n1)
	if err := l.DeletePod(ctx, "plain", "e"); err != nil {
		t.Fatal(err)
	}
	if got := enrolledOn(t, l, n1); !slices.Contains(got, netip.MustParseAddr(pe.Status.PodIP)) {
		t.Fatalf("precondition: node1 enrolled after deleting e with the agent down: got %v, want %s still there", got, pe.Status.PodIP)
	}
	if err := agents.StartAgent(ctx, n1); err != nil {
		t.Fatal(err)
	}
	if got := enrolledOn(t, l, n1); slices.Contains(got, netip.MustParseAddr(pe.Status.PodIP)) {
		t.Errorf("node1 enrolled after agent restart: got %v, want the stale %s gone", got, pe.Status.PodIP)
	}

	// Uninstall: the conflist is as before, nothing pinned is left.
	for _, n := range l.Nodes {
		agents.StopAgent(n)
		out, err := n.NS.Command(ctx, l.Binaries().CNIAgent, append(agents.AgentArgs(n), "--uninstall")...).CombinedOutput()
		if err != nil {
			t.Fatalf("uninstall on %s: %v: %s", n.Name, err, out)
		}
		conflist, _ := install.PrimaryConflist(n.CNIConfDir)
		if has, _ := install.Has(conflist); has {
			t.Errorf("%s conflist after uninstall: ambit-cni still chained", n.Name)
		}
		if _, err := redirect.PinnedEnrolled(l.BPFPinDir(n)); err == nil {
			t.Errorf("%s after uninstall: pinned pod map still there", n.Name)
		}
	}
}

func enrolledOn(t *testing.T, l *lab.Lab, n *lab.Node) []netip.Addr {
	t.Helper()
	got, err := redirect.PinnedEnrolled(l.BPFPinDir(n))
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func setNSLabel(t *testing.T, ctx context.Context, l *lab.Lab, ns string, value *string) {
	t.Helper()
	v := "null"
	if value != nil {
		v = fmt.Sprintf("%q", *value)
	}
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%s}}}`, enrolment.LabelDataplaneMode, v)
	if _, err := l.Client.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

func ptr[T any](v T) *T { return &v }
