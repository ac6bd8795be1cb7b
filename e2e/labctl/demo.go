package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambitmesh/ambit/internal/echo"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/samples/bookinfo/deploy"
)

// demo starts a two-node lab, runs an echo pod on each node, and shows
// them reaching each other by pod IP, ClusterIP and Service name.
func demo(runCtx context.Context, log *slog.Logger, nonInteractive bool) (err error) {
	ctx := runCtx
	if os.Geteuid() != 0 {
		return errors.New("the demo needs root (network namespaces): run sudo make demo")
	}
	step := stepper{}
	step.say("Building (or finding in the cache) the lab's programs: kube-apiserver, kube-controller-manager, kube-proxy, CoreDNS, echo")
	bins, err := lab.EnsureBinaries(ctx, lab.BuildOptions{Log: log})
	if err != nil {
		return err
	}
	step.say("Starting a lab: etcd, kube-apiserver, kube-controller-manager and CoreDNS on a control-plane node; two worker nodes with kube-proxy and a kubelet stand-in; all in network namespaces")
	l, err := lab.Start(ctx, lab.Config{Nodes: 2, Binaries: bins, Log: log})
	if err != nil {
		return err
	}
	defer func() {
		step.say("Tearing the lab down")
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	for _, n := range l.Nodes {
		step.ok("node %s at %s, pods in %s", n.Name, n.IP, n.PodCIDR)
	}

	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	const ns = "demo"
	step.say("Creating namespace %q with a client pod on node1 and a server pod on node2 (echo workload), each behind a Service", ns)
	if err := l.CreateNamespace(ctx, ns, nil); err != nil {
		cancel()
		return err
	}
	pods := map[string]*corev1.Pod{}
	for _, pc := range []struct{ name, node string }{{"client", "node1"}, {"server", "node2"}} {
		p, err := l.RunPod(ctx, lab.EchoPod(ns, pc.name, pc.node, map[string]string{"app": pc.name}))
		if err != nil {
			cancel()
			return err
		}
		pods[pc.name] = p
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: pc.name, Namespace: ns},
			Spec: corev1.ServiceSpec{
				Selector: map[string]string{"app": pc.name},
				Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
			},
		}
		if _, err := l.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			cancel()
			return err
		}
		step.ok("pod %s/%s Ready on %s with IP %s", ns, p.Name, p.Spec.NodeName, p.Status.PodIP)
	}
	server := pods["server"]
	if err := l.WaitServiceProgrammed(ctx, ns, "server", server.Status.PodIP); err != nil {
		cancel()
		return err
	}
	svc, err := l.Client.CoreV1().Services(ns).Get(ctx, "server", metav1.GetOptions{})
	if err != nil {
		cancel()
		return err
	}
	step.say("From the client pod, calling the server by pod IP, ClusterIP and DNS name")
	for _, target := range []string{
		net.JoinHostPort(server.Status.PodIP, "8080"),
		net.JoinHostPort(svc.Spec.ClusterIP, "80"),
		"server." + ns + ".svc.cluster.local",
	} {
		out, err := l.Exec(ctx, ns, "client", bins.Echo, "http", "http://"+target+"/hello")
		if err != nil {
			step.fail("GET http://%s/hello: %v", target, err)
			continue
		}
		var rep echo.Report
		if err := json.Unmarshal(out, &rep); err != nil {
			step.fail("GET http://%s/hello: decode %q: %v", target, out, err)
			continue
		}
		step.ok("GET http://%s/hello answered by pod %q, which saw the caller as %s", target, rep.Hostname, rep.Peer)
	}

	step.say("Deploying Bookinfo in namespace %q across both nodes: productpage, details, reviews v1/v2/v3, ratings", bookinfoNS)
	if err := l.CreateNamespace(ctx, bookinfoNS, nil); err != nil {
		cancel()
		return err
	}
	bpods, err := deploy.Install(ctx, l, bookinfoNS, deploy.Spread("node1", "node2"))
	if err != nil {
		cancel()
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(bpods)) {
		step.ok("pod %s/%s Ready on %s", bookinfoNS, name, bpods[name].Spec.NodeName)
	}
	step.say("Asking productpage for the product page from the client pod, through its Service name")
	// The request runs inside the pod, which resolves the name with the
	// cluster's DNS.
	productpage := fmt.Sprintf("http://productpage.%s.svc.cluster.local:%d/productpage", bookinfoNS, deploy.Port)
	served := map[string]int{}
	for range 12 {
		out, err := l.Exec(ctx, ns, "client", bins.Echo, "http", "--body", productpage)
		page := string(out)
		if err != nil {
			step.fail("GET %s: %v", productpage, err)
			break
		}
		if !strings.Contains(page, "Book Details") || !strings.Contains(page, "Book Reviews") {
			step.fail("GET %s: the page has no details or reviews", productpage)
			break
		}
		if m := reviewsPod.FindStringSubmatch(page); m != nil {
			served[m[1]]++
		}
	}
	if len(served) > 0 {
		step.ok("12 pages with details and reviews; reviews served by %v", served)
	}
	cancel()
	if step.failed > 0 {
		return fmt.Errorf("%d demo step(s) failed", step.failed)
	}
	if nonInteractive {
		step.say("All steps passed (DEMO_NONINTERACTIVE set: not waiting)")
		return nil
	}
	fmt.Printf(`
The lab is running. In another terminal:

  export KUBECONFIG=%s
  %s get nodes,pods,svc -A -o wide
  ip netns exec %s %s http http://server.%s.svc.cluster.local/   # call the server from node1's network
  ip netns exec %[3]s wget -qO- http://productpage.%[6]s.svc.cluster.local:9080/productpage   # Bookinfo, if wget is installed

Press Ctrl-C to stop and clean up.
`, l.Kubeconfig, bins.Kubectl, l.Node("node1").NS.Name(), bins.Echo, ns, bookinfoNS)
	<-runCtx.Done()
	return nil
}

const bookinfoNS = "bookinfo"

// reviewsPod finds which reviews pod served a product page.
var reviewsPod = regexp.MustCompile(`<span id="reviews-pod">([^<]*)</span>`)

type stepper struct {
	n      int
	failed int
}

func (s *stepper) say(format string, args ...any) {
	s.n++
	fmt.Printf("\n==> %d. %s\n", s.n, fmt.Sprintf(format, args...))
}

func (s *stepper) ok(format string, args ...any) {
	fmt.Printf("    ok   %s\n", strings.TrimSpace(fmt.Sprintf(format, args...)))
}

func (s *stepper) fail(format string, args ...any) {
	s.failed++
	fmt.Printf("    FAIL %s\n", strings.TrimSpace(fmt.Sprintf(format, args...)))
}
