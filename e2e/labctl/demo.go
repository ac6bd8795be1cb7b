package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	secapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambitmesh/ambit/e2e/internal/bookinfo"
	"github.com/ambitmesh/ambit/e2e/internal/labmesh"
	"github.com/ambitmesh/ambit/internal/enrolment"
	"github.com/ambitmesh/ambit/internal/lab"
)

const (
	bookinfoNS = "bookinfo"
	clientNS   = "demo"
)

// reviewsPod finds which reviews pod served a product page.
var reviewsPod = regexp.MustCompile(`<span id="reviews-pod">([^<]*)</span>`)

// demo is what the demo's steps share: each step uses what the ones before
// it made.
type demo struct {
	log  *slog.Logger
	step *stepper
	bins lab.Binaries
	lab  *lab.Lab
	mesh *labmesh.Mesh
	// bookinfo holds Bookinfo's Ready pods by name.
	bookinfo map[string]*corev1.Pod
	// productpage is productpage's URL by its cluster DNS name.
	productpage string
	// pcap is the capture of node1's link while pages were served.
	pcap string
	// client sends HTTP from the client pod's network namespace.
	client *http.Client
}

// ratingsPolicy is the L4 policy "only reviews may call ratings".
const ratingsPolicy = "ratings-only-from-reviews"

func (d *demo) istioClient() (istioclient.Interface, error) {
	return istioclient.NewForConfig(d.lab.RESTConfig)
}

// runDemo starts a two-node lab with Ambit on every node, deploys
// Bookinfo, puts it in the ambient mesh by labelling its namespace, and
// shows what changed: who talks to whom with which identity, that the
// bytes between nodes are encrypted, and an authorization policy at work;
// then L7: a waypoint for reviews' service account, the reviews versions
// of product pages before and after an HTTPRoute, an L7 policy at ratings'
// waypoint, and the waypoints' request metrics (l7.go).
// Each step is a method of demo; a step that returns an error ends the
// demo with the step's name.
func runDemo(runCtx context.Context, log *slog.Logger, nonInteractive bool) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("the demo needs root (network namespaces, eBPF): run sudo make demo")
	}
	d := &demo{log: log, step: &stepper{w: os.Stdout}}
	// Building takes minutes on a cold cache: no deadline but Ctrl-C.
	if err := d.step.runAll(runCtx, []demoStep{
		{"build", "Building (or finding in the cache) the programs: Kubernetes, CoreDNS, Ambit's istiod, node agent, CNI plugin, ztunnel and waypoint, Bookinfo", d.build},
		{"lab", "Starting a lab cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, CoreDNS; two nodes with kube-proxy and a kubelet stand-in, all in network namespaces", d.startLab},
	}); err != nil {
		return err
	}
	defer func() {
		d.step.say("Tearing the lab down")
		if cerr := d.lab.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	ctx, cancel := context.WithTimeout(runCtx, 10*time.Minute)
	defer cancel()
	if err := d.step.runAll(ctx, []demoStep{
		{"istiod", "Installing Ambit's control plane: istiod on the control-plane node (workload discovery over delta xDS, the CA), with Istio's security CRDs", d.installIstiod},
		{"nodes", "Installing Ambit on every node: the node agent chains its CNI plugin into the node's conflist and loads the eBPF redirection; ztunnel connects to istiod", d.installNodes},
		{"bookinfo", fmt.Sprintf("Deploying Bookinfo in namespace %q (not in the mesh yet) and a client pod in %q", bookinfoNS, clientNS), d.deployBookinfo},
		{"enrol", fmt.Sprintf("Enrolling Bookinfo: kubectl label namespace %s %s=%s; the running pods join without a restart", bookinfoNS, enrolment.LabelDataplaneMode, enrolment.ModeAmbient), d.enrol},
		{"capture", "Capturing node1's link while Bookinfo serves pages through the mesh", d.capture},
		{"identities", "Who talked to whom, as the destination ztunnels saw it (client identity from its mTLS certificate)", d.showIdentities},
		{"encryption", "Were the bytes between the nodes encrypted?", d.checkEncryption},
		{"authorization", fmt.Sprintf("Authorization: only reviews may call ratings (an ALLOW policy on ratings for principal cluster.local/ns/%s/sa/bookinfo-reviews)", bookinfoNS), d.checkAuthorization},
		{"versions", "L7: Istio's bookinfo-versions.yaml, unchanged: a Service per reviews version, for routes to name", d.deployVersions},
		{"client", fmt.Sprintf("The client pod joins the mesh too: kubectl label namespace %s %s=%s (its calls to a Service then reach the Service's waypoint as calls to the Service)", clientNS, enrolment.LabelDataplaneMode, enrolment.ModeAmbient), d.enrolClient},
		{"waypoint", "A waypoint for the reviews service account, with ambitctl: istiod deploys it (Gateway → Deployment → pod) and binds the account's pods to it", d.reviewsWaypointStep},
		{"split", fmt.Sprintf("Which reviews version served %d product pages, through the waypoint, with no route", pagesPerSplit), d.splitBefore},
		{"routing", "Routing at the waypoint: jason to reviews v2, everyone else 50/50 to v1 and v3 (an HTTPRoute on the reviews Service)", d.routeJason},
		{"l7-policy", "L7 authorization at a waypoint: ratings read-only (DENY POST and DELETE), GET still allowed", d.ratingsReadOnly},
		{"metrics", "The waypoints' request metrics", d.waypointMetrics},
	}); err != nil {
		return err
	}
	cancel()
	if err := d.step.err(); err != nil {
		return err
	}
	if nonInteractive {
		d.step.say("All steps passed (DEMO_NONINTERACTIVE set: not waiting)")
		return nil
	}
	fmt.Printf(`
The lab is running. In another terminal:

  export KUBECONFIG=%s
  %s get nodes,pods,svc -A -o wide
  ip netns exec %s %s http --body %s/productpage    # a page from node1's network
  tail -f %s/logs/ztunnel-node2-*.log                 # ztunnel's access log on node2

Press Ctrl-C to stop and clean up.
`, d.lab.Kubeconfig, d.bins.Kubectl, d.lab.Node("node1").NS.Name(), d.bins.Echo, d.productpage, d.lab.Dir)
	<-runCtx.Done()
	return nil
}

// build builds the programs the lab runs, or finds them in the cache.
func (d *demo) build(ctx context.Context) error {
	bins, err := lab.EnsureBinaries(ctx, lab.BuildOptions{Log: d.log})
	if err != nil {
		return err
	}
	d.bins = bins
	return nil
}

// startLab starts a two-node lab.
func (d *demo) startLab(ctx context.Context) error {
	l, err := lab.Start(ctx, lab.Config{Nodes: 2, Binaries: d.bins, Log: d.log, Scheduler: true})
	if err != nil {
		return err
	}
	d.lab = l
	for _, n := range l.Nodes {
		d.step.ok("node %s at %s, pods in %s", n.Name, n.IP, n.PodCIDR)
	}
	return nil
}

// installIstiod starts istiod as the chart runs it.
func (d *demo) installIstiod(ctx context.Context) error {
	mesh, err := labmesh.New(d.lab)
	if err != nil {
		return err
	}
	d.mesh = mesh
	if err := mesh.StartIstiod(ctx, labmesh.IstiodOptions{}); err != nil {
		return err
	}
	d.step.ok("istiod ready; mesh root published in ConfigMap istio-ca-root-cert of every namespace")
	return nil
}

// installNodes starts the node agent and ztunnel on every node.
func (d *demo) installNodes(ctx context.Context) error {
	if err := d.mesh.StartAgents(ctx); err != nil {
		return err
	}
	if err := d.mesh.StartZtunnels(ctx); err != nil {
		return err
	}
	for _, n := range d.lab.Nodes {
		d.step.ok("%s: ambit-cni chained after ptp in %s; ztunnel ready", n.Name, filepath.Base(n.CNIConfDir)+"/10-lab.conflist")
	}
	return nil
}

// deployBookinfo deploys Bookinfo over both nodes and a client pod, and
// shows pages served without the mesh.
func (d *demo) deployBookinfo(ctx context.Context) error {
	l := d.lab
	if err := l.CreateNamespace(ctx, bookinfoNS, nil); err != nil {
		return err
	}
	bpods, err := bookinfo.Install(ctx, l, bookinfoNS, bookinfo.Spread("node1", "node2"))
	if err != nil {
		return err
	}
	d.bookinfo = bpods
	for _, name := range slices.Sorted(maps.Keys(bpods)) {
		d.step.ok("pod %s/%s Ready on %s", bookinfoNS, name, bpods[name].Spec.NodeName)
	}
	if err := l.CreateNamespace(ctx, clientNS, nil); err != nil {
		return err
	}
	if _, err := l.RunPod(ctx, lab.EchoPod(clientNS, "client", "node1", map[string]string{"app": "client"})); err != nil {
		return err
	}
	d.productpage = fmt.Sprintf("http://productpage.%s.svc.cluster.local:%d", bookinfoNS, bookinfo.Port)
	d.pages(ctx, 6)
	return nil
}

// enrol labels Bookinfo's namespace and waits until every pod is
// redirected and every ztunnel serves it over HBONE.
func (d *demo) enrol(ctx context.Context) error {
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, enrolment.LabelDataplaneMode, enrolment.ModeAmbient)
	if _, err := d.lab.Client.CoreV1().Namespaces().Patch(ctx, bookinfoNS, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(d.bookinfo)) {
		p, err := d.lab.WaitPod(ctx, bookinfoNS, name, func(p *corev1.Pod) bool {
			return p.Annotations[enrolment.AnnotationRedirection] == enrolment.AnnotationEnabled
		})
		if err != nil {
			return err
		}
		if err := d.mesh.WaitWorkload(ctx, p.Status.PodIP, true); err != nil {
			return err
		}
		d.step.ok("%s: %s=%s, restarts %d; every ztunnel knows it as HBONE", name, enrolment.AnnotationRedirection, enrolment.AnnotationEnabled, p.Status.ContainerStatuses[0].RestartCount)
	}
	return nil
}

// capture records node1's link with tcpdump while pages are served
// through the mesh.
func (d *demo) capture(ctx context.Context) error {
	l := d.lab
	d.pcap = filepath.Join(l.Dir, "node1-link.pcap")
	dump, err := l.StartProcessIn(l.BridgeNS(), "tcpdump-node1", nil, "tcpdump", "--immediate-mode", "-i", "v-node1", "-U", "-n", "-w", d.pcap, "tcp")
	if err != nil {
		return err
	}
	if err := lab.PollUntil(ctx, 30*time.Second, func() bool { return strings.Contains(dump.Logs(5), "listening on") }); err != nil {
		return fmt.Errorf("start tcpdump: %w\n%s", err, dump.Logs(5))
	}
	d.pages(ctx, 12)
	dump.Stop(5 * time.Second)
	return nil
}

// showIdentities shows the client identities the destination ztunnels saw.
func (d *demo) showIdentities(context.Context) error {
	for _, line := range identities(d.mesh, d.lab) {
		d.step.ok("%s", line)
	}
	return nil
}

// checkEncryption checks that none of the services' bytes crossed node1's link
// in plaintext.
func (d *demo) checkEncryption(context.Context) error {
	wire, err := os.ReadFile(d.pcap)
	if err != nil {
		return err
	}
	leaked := false
	for _, s := range []string{"PublisherA", "Reviewer1", "An extremely entertaining play", "GET /details", "GET /reviews", "GET /ratings"} {
		if strings.Contains(string(wire), s) {
			d.step.fail("%q crossed node1's link in plaintext", s)
			leaked = true
		}
	}
	if !leaked {
		d.step.ok("%d bytes captured on node1's link; none of the pages' text, the request lines or the JSON between the services is in them (HBONE: mTLS 1.3)", len(wire))
	}
	return nil
}

// checkAuthorization applies "only reviews may call ratings" and shows reviews
// allowed and productpage refused.
func (d *demo) checkAuthorization(ctx context.Context) error {
	l, bins := d.lab, d.bins
	policy := &securityv1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: ratingsPolicy, Namespace: bookinfoNS},
		Spec: secapi.AuthorizationPolicy{
			Selector: &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "ratings"}},
			Action:   secapi.AuthorizationPolicy_ALLOW,
			Rules: []*secapi.Rule{{From: []*secapi.Rule_From{{Source: &secapi.Source{
				Principals: []string{"cluster.local/ns/" + bookinfoNS + "/sa/bookinfo-reviews"},
			}}}}},
		},
	}
	istio, err := d.istioClient()
	if err != nil {
		return err
	}
	if _, err := istio.SecurityV1().AuthorizationPolicies(bookinfoNS).Create(ctx, policy, metav1.CreateOptions{}); err != nil {
		return err
	}
	var ratingsIP string
	for _, p := range d.bookinfo {
		if p.Labels["app"] == "ratings" {
			ratingsIP = p.Status.PodIP
		}
	}
	if err := d.mesh.WaitPolicy(ctx, bookinfoNS, policy.Name, ratingsIP, true); err != nil {
		return err
	}
	d.step.ok("AuthorizationPolicy %s/%s created; istiod translated it and every ztunnel has it", bookinfoNS, policy.Name)
	stars := 0
	for range 6 {
		out, err := l.Exec(ctx, clientNS, "client", bins.Echo, "http", "--body", d.productpage+"/productpage")
		if err == nil {
			stars += strings.Count(string(out), `class="stars"`)
		}
	}
	if stars > 0 {
		d.step.ok("reviews → ratings allowed: the product pages still show star ratings")
	} else {
		d.step.fail("reviews → ratings: no star ratings on 6 pages")
	}
	out, err := l.Exec(ctx, clientNS, "client", bins.Echo, "http", "--body", d.productpage+"/api/v1/products/0/ratings")
	if err != nil {
		d.step.ok("productpage → ratings denied: GET /api/v1/products/0/ratings: %s", lastLine(err.Error()))
	} else {
		d.step.fail("productpage → ratings: got %s, want a denial", strings.TrimSpace(string(out)))
	}
	for _, line := range denials(d.mesh, d.lab) {
		d.step.ok("%s", line)
	}
	return nil
}

// pages fetches n product pages from the client pod (which resolves the
// name with the cluster's DNS) and reports which reviews versions served
// them.
func (d *demo) pages(ctx context.Context, n int) {
	served := map[string]int{}
	for range n {
		out, err := d.lab.Exec(ctx, clientNS, "client", d.bins.Echo, "http", "--body", d.productpage+"/productpage")
		page := string(out)
		if err != nil || !strings.Contains(page, "Book Details") || !strings.Contains(page, "Book Reviews") {
			d.step.fail("GET %s/productpage: %v", d.productpage, err)
			return
		}
		if m := reviewsPod.FindStringSubmatch(page); m != nil {
			served[m[1]]++
		}
	}
	d.step.ok("GET /productpage ×%d from %s/client: details and reviews on every page; reviews served by %v", n, clientNS, served)
}

// accessLog returns the access-log entries of every ztunnel.
func accessLog(mesh *labmesh.Mesh, l *lab.Lab) []map[string]any {
	var entries []map[string]any
	for _, n := range l.Nodes {
		p := mesh.Ztunnel(n)
		if p == nil {
			continue
		}
		s := bufio.NewScanner(strings.NewReader(p.Logs(2000)))
		for s.Scan() {
			var e map[string]any
			if json.Unmarshal(s.Bytes(), &e) == nil && e["direction"] != nil {
				e["node"] = n.Name
				entries = append(entries, e)
			}
		}
	}
	return entries
}

// identities summarises inbound HBONE connections: client identity →
// destination workload.
func identities(mesh *labmesh.Mesh, l *lab.Lab) []string {
	seen := map[string]bool{}
	for _, e := range accessLog(mesh, l) {
		if e["direction"] != "inbound" || e["error"] != nil {
			continue
		}
		seen[fmt.Sprintf("%v → %v (ztunnel on %v)", e["src.identity"], e["dst.workload"], e["node"])] = true
	}
	return slices.Sorted(maps.Keys(seen))
}

// denials lists the connections ztunnels refused by policy.
func denials(mesh *labmesh.Mesh, l *lab.Lab) []string {
	seen := map[string]bool{}
	for _, e := range accessLog(mesh, l) {
		if e["direction"] == "inbound" && e["error"] != nil {
			seen[fmt.Sprintf("ztunnel on %v refused %v → %v: %v", e["node"], e["src.identity"], e["dst.workload"], e["error"])] = true
		}
	}
	return slices.Sorted(maps.Keys(seen))
}

// lastLine is the client's own message at the end of an exec error.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	last := lines[len(lines)-1]
	if i := strings.LastIndex(last, "echo: "); i >= 0 {
		last = last[i+len("echo: "):]
	}
	return last
}
