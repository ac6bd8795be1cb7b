package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/ambitmesh/ambit/ambitctl/cli"
	"github.com/ambitmesh/ambit/ambitctl/waypoint"
	"github.com/ambitmesh/ambit/e2e/internal/bookinfo"
	"github.com/ambitmesh/ambit/internal/enrolment"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/ztunnel/admin"
)

// The L7 part of the demo: waypoints for service accounts, Istio's
// routing samples and an L7 policy, all applied as a user would (ambitctl
// and kubectl), measured on real product pages.

// The demo's waypoints: one per service account, named after it.
const (
	reviewsAccount  = "bookinfo-reviews"
	ratingsAccount  = "bookinfo-ratings"
	reviewsWaypoint = reviewsAccount + waypoint.ServiceAccountSuffix
	ratingsWaypoint = ratingsAccount + waypoint.ServiceAccountSuffix
	pagesPerSplit   = 100
)

// ambitctl runs the command line against the lab, prints the command and
// what it printed, and returns an error if it failed.
func (d *demo) ambitctl(ctx context.Context, args ...string) error {
	var out, errOut bytes.Buffer
	global := []string{"--kubeconfig", d.lab.Kubeconfig, "--lab-netns-prefix", lab.NamePrefix + d.lab.ID + "-"}
	code := cli.Main(ctx, genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}, append(global, args...))
	d.step.ok("$ ambitctl %s", strings.Join(args, " "))
	for _, line := range strings.Split(strings.TrimSpace(out.String()+errOut.String()), "\n") {
		if line != "" {
			d.step.detail("%s", line)
		}
	}
	if code != 0 {
		return fmt.Errorf("ambitctl %s: exit %d", strings.Join(args, " "), code)
	}
	return nil
}

// kubectl applies files of samples/bookinfo with the lab's kubectl.
func (d *demo) kubectlApply(ctx context.Context, files ...string) error {
	args := []string{"apply", "-n", bookinfoNS}
	for _, f := range files {
		args = append(args, "-f", f)
	}
	out, err := bookinfo.Kubectl(ctx, d.lab, args...)
	d.step.ok("$ kubectl %s", strings.Join(args, " "))
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		d.step.detail("%s", line)
	}
	return err
}

// podClient is an HTTP client whose connections start in the client
// pod's network namespace, as its own would; and the cluster IP of a
// Bookinfo Service (the client pod's DNS name for it is
// <service>.bookinfo.svc.cluster.local).
func (d *demo) podClient(ctx context.Context) (*http.Client, error) {
	if d.client != nil {
		return d.client, nil
	}
	p, err := d.lab.Client.CoreV1().Pods(clientNS).Get(ctx, "client", metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	pns, ok := d.lab.Node(p.Spec.NodeName).Kubelet.PodNetNS(clientNS, "client")
	if !ok {
		return nil, fmt.Errorf("client pod: no network namespace")
	}
	d.client = &http.Client{Transport: &http.Transport{DialContext: pns.DialContext, DisableKeepAlives: true}, Timeout: 20 * time.Second}
	return d.client, nil
}

func (d *demo) serviceURL(ctx context.Context, name string) (string, error) {
	svc, err := d.lab.Client.CoreV1().Services(bookinfoNS).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("http://%s:%d", svc.Spec.ClusterIP, bookinfo.Port), nil
}

// versions loads n product pages (as user when not empty) and counts the
// reviews versions that served them, from the pod named on each page and
// its stars: none (v1), black (v2), red (v3).
func (d *demo) versions(ctx context.Context, n int, user string) (map[string]int, error) {
	c, err := d.podClient(ctx)
	if err != nil {
		return nil, err
	}
	base, err := d.serviceURL(ctx, "productpage")
	if err != nil {
		return nil, err
	}
	var cookies []*http.Cookie
	if user != "" {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/login", strings.NewReader(url.Values{"username": {user}, "passwd": {"x"}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		nc := *c
		nc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		resp, err := nc.Do(req)
		if err != nil {
			return nil, fmt.Errorf("sign in as %s: %w", user, err)
		}
		resp.Body.Close()
		cookies = resp.Cookies()
	}
	got := map[string]int{}
	for range n {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/productpage", nil)
		for _, ck := range cookies {
			req.AddCookie(ck)
		}
		resp, err := c.Do(req)
		if err != nil {
			return got, fmt.Errorf("GET /productpage: %w", err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			return got, fmt.Errorf("GET /productpage: status %d, %v", resp.StatusCode, err)
		}
		v, err := bookinfo.ReviewsVersion(string(b))
		if err != nil {
			return got, err
		}
		got[v]++
	}
	return got, nil
}

func showVersions(got map[string]int) string {
	var parts []string
	for _, v := range []string{"v1", "v2", "v3"} {
		parts = append(parts, fmt.Sprintf("%s %3d", v, got[v]))
	}
	return strings.Join(parts, "   ")
}

// deployWaypoint deploys the waypoint of a service account with ambitctl
// and waits until every ztunnel sends the account's pods' traffic to it.
func (d *demo) deployWaypoint(ctx context.Context, sa string) error {
	if err := d.ambitctl(ctx, "waypoint", "apply", "-n", bookinfoNS, "--service-account", sa, "--wait", "--timeout", "3m"); err != nil {
		return err
	}
	pods, err := d.mesh.WaypointPods(ctx, bookinfoNS, sa+waypoint.ServiceAccountSuffix, 1)
	if err != nil {
		return err
	}
	var ips []string
	for _, p := range d.bookinfo {
		if p.Spec.ServiceAccountName == sa {
			ips = append(ips, p.Status.PodIP)
		}
	}
	if err := d.mesh.WaitZtunnels(ctx, "workloads of "+sa+" bound to their waypoint", func(dump *admin.Dump) bool {
		bound := 0
		for _, w := range dump.Workloads {
			for _, a := range w.Addresses {
				if slices.Contains(ips, a.String()) && w.Waypoint != nil {
					bound++
				}
			}
		}
		return bound == len(ips)
	}); err != nil {
		return err
	}
	d.step.ok("waypoint pod %s/%s on %s (istiod's Deployment, the Go waypoint); every ztunnel sends %s's %d pods' traffic through it", bookinfoNS, pods[0].Name, pods[0].Spec.NodeName, sa, len(ips))
	return nil
}

// enrolClient puts the client pod's namespace in the mesh, so that what
// it sends to a Service reaches the Service's waypoint addressed to the
// Service (HBONE to the VIP), where the policies attached to the Service
// apply. (Plaintext from outside the mesh arrives through kube-proxy
// already addressed to a pod.)
func (d *demo) enrolClient(ctx context.Context) error {
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, enrolment.LabelDataplaneMode, enrolment.ModeAmbient)
	if _, err := d.lab.Client.CoreV1().Namespaces().Patch(ctx, clientNS, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return err
	}
	p, err := d.lab.WaitPod(ctx, clientNS, "client", func(p *corev1.Pod) bool {
		return p.Annotations[enrolment.AnnotationRedirection] == enrolment.AnnotationEnabled
	})
	if err != nil {
		return err
	}
	if err := d.mesh.WaitWorkload(ctx, p.Status.PodIP, true); err != nil {
		return err
	}
	d.step.ok("%s/client: %s=%s; every ztunnel knows it as HBONE", clientNS, enrolment.AnnotationRedirection, enrolment.AnnotationEnabled)
	return nil
}

// deployVersions applies Istio's bookinfo-versions.yaml as it is: the
// Services that HTTPRoutes name as backends.
func (d *demo) deployVersions(ctx context.Context) error {
	root, err := lab.FindRoot()
	if err != nil {
		return err
	}
	dir, err := bookinfo.IstioManifests(ctx, root)
	if err != nil {
		return err
	}
	return d.kubectlApply(ctx, filepath.Join(dir, "bookinfo-versions.yaml"))
}

// reviewsWaypointStep deploys the reviews service account's waypoint.
func (d *demo) reviewsWaypointStep(ctx context.Context) error {
	return d.deployWaypoint(ctx, reviewsAccount)
}

// splitBefore counts the reviews versions of 100 pages with no route:
// the waypoint balances over all three.
func (d *demo) splitBefore(ctx context.Context) error {
	got, err := d.versions(ctx, pagesPerSplit, "")
	if err != nil {
		return err
	}
	d.step.ok("%d pages, no route:           %s", pagesPerSplit, showVersions(got))
	if len(got) != 3 {
		d.step.fail("want all three versions without a route, got %v", got)
	}
	return nil
}

// routeJason applies the HTTPRoute that sends jason to v2 and everyone
// else 50/50 to v1 and v3, waits until the waypoint has it, and counts
// again.
func (d *demo) routeJason(ctx context.Context) error {
	root, err := lab.FindRoot()
	if err != nil {
		return err
	}
	if err := d.kubectlApply(ctx, filepath.Join(root, "samples/bookinfo/gateway-api/route-reviews-jason-v2-50-v3.yaml")); err != nil {
		return err
	}
	want := []string{"/* end-user=jason → reviews-v2", "/* → reviews-v1 50%, reviews-v3 50%"}
	if _, err := d.mesh.WaitWaypoint(ctx, bookinfoNS, reviewsWaypoint, 1, "the jason route", func(dump string) bool {
		return slices.Equal(bookinfo.ReviewsRoutes(dump, bookinfoNS), want)
	}); err != nil {
		return err
	}
	if err := d.ambitctl(ctx, "proxy-config", "route", reviewsWaypoint, "-n", bookinfoNS, "--name", "inbound-vip|9080|http|reviews."+bookinfoNS+".svc.cluster.local"); err != nil {
		return err
	}
	jason, err := d.versions(ctx, pagesPerSplit, "jason")
	if err != nil {
		return err
	}
	d.step.ok("%d pages signed in as jason: %s", pagesPerSplit, showVersions(jason))
	others, err := d.versions(ctx, pagesPerSplit, "")
	if err != nil {
		return err
	}
	d.step.ok("%d pages, anyone else:       %s", pagesPerSplit, showVersions(others))
	if !maps.Equal(jason, map[string]int{"v2": pagesPerSplit}) {
		d.step.fail("jason: want every page from v2, got %v", jason)
	}
	if others["v2"] != 0 || others["v1"] == 0 || others["v3"] == 0 {
		d.step.fail("others: want v1 and v3 only, got %v", others)
	}
	return nil
}

// ratingsReadOnly puts ratings behind its own waypoint and denies POST
// and DELETE there, while GET (reviews' calls for stars) goes on.
func (d *demo) ratingsReadOnly(ctx context.Context) error {
	// With a waypoint in front of ratings, ratings' ztunnel sees the
	// waypoint's identity, not reviews': the L4 rule gives way to the
	// waypoint's L7 one.
	istio, err := d.istioClient()
	if err != nil {
		return err
	}
	if err := istio.SecurityV1().AuthorizationPolicies(bookinfoNS).Delete(ctx, ratingsPolicy, metav1.DeleteOptions{}); err != nil {
		return err
	}
	d.step.ok("L4 policy %s deleted: behind a waypoint, ratings' ztunnel sees the waypoint's identity", ratingsPolicy)
	if err := d.deployWaypoint(ctx, ratingsAccount); err != nil {
		return err
	}
	root, err := lab.FindRoot()
	if err != nil {
		return err
	}
	if err := d.kubectlApply(ctx, filepath.Join(root, "samples/bookinfo/ratings-read-only.yaml")); err != nil {
		return err
	}
	key := fmt.Sprintf("ns[%s]-policy[ratings-read-only]-rule[0]", bookinfoNS)
	if _, err := d.mesh.WaitWaypoint(ctx, bookinfoNS, ratingsWaypoint, 1, "policy ratings-read-only", func(dump string) bool { return strings.Contains(dump, key) }); err != nil {
		return err
	}
	c, err := d.podClient(ctx)
	if err != nil {
		return err
	}
	base, err := d.serviceURL(ctx, "ratings")
	if err != nil {
		return err
	}
	for _, tc := range []struct {
		method string
		want   int
	}{{http.MethodPost, http.StatusForbidden}, {http.MethodDelete, http.StatusForbidden}, {http.MethodGet, http.StatusOK}} {
		req, _ := http.NewRequestWithContext(ctx, tc.method, base+"/ratings/0", strings.NewReader(`{"Reviewer1": 1}`))
		resp, err := c.Do(req)
		if err != nil {
			d.step.fail("%s ratings/0: %v", tc.method, err)
			continue
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		resp.Body.Close()
		line := fmt.Sprintf("%-6s http://ratings.%s:%d/ratings/0 from %s/client → %d %s", tc.method, bookinfoNS, bookinfo.Port, clientNS, resp.StatusCode, strings.TrimSpace(string(b)))
		if resp.StatusCode == tc.want {
			d.step.ok("%s", line)
		} else {
			d.step.fail("%s (want %d)", line, tc.want)
		}
	}
	got, err := d.versions(ctx, 10, "")
	if err != nil {
		return err
	}
	stars := got["v1"] < 10
	if stars {
		d.step.ok("10 pages: %s (v2 and v3 still show stars: their GET to ratings passes the waypoint)", showVersions(got))
	} else {
		d.step.fail("10 pages all from v1: no star ratings to show")
	}
	return nil
}

// waypointMetrics shows each waypoint's request metrics, read from its
// pod's metrics port (15020) as Prometheus would scrape them.
func (d *demo) waypointMetrics(ctx context.Context) error {
	for _, wp := range []string{reviewsWaypoint, ratingsWaypoint} {
		pods, err := d.mesh.WaypointPods(ctx, bookinfoNS, wp, 1)
		if err != nil {
			return err
		}
		p := pods[0]
		pns, ok := d.lab.Node(p.Spec.NodeName).Kubelet.PodNetNS(p.Namespace, p.Name)
		if !ok {
			return fmt.Errorf("waypoint pod %s: no network namespace", p.Name)
		}
		body, err := lab.HTTPGet(ctx, pns, "http://127.0.0.1:15020/stats/prometheus")
		if err != nil {
			return err
		}
		lines := requestMetrics(body)
		if len(lines) == 0 {
			d.step.fail("waypoint %s: no request metrics in its /stats/prometheus", wp)
			continue
		}
		d.step.ok("waypoint %s (pod %s), GET :15020/stats/prometheus:", wp, p.Name)
		for _, l := range lines {
			d.step.detail("%s", l)
		}
	}
	return nil
}

// requestMetrics picks the request counters out of a Prometheus text
// page: Istio's istio_requests_total where the waypoint has it, else its
// Envoy counters of answers by status class and RBAC denials.
func requestMetrics(body string) []string {
	var istio, envoy []string
	s := bufio.NewScanner(strings.NewReader(body))
	s.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for s.Scan() {
		line := s.Text()
		switch {
		case strings.HasPrefix(line, "istio_requests_total{"):
			istio = append(istio, line)
		case strings.HasPrefix(line, "envoy_http_downstream_rq_xx{") && !strings.HasSuffix(line, " 0"),
			strings.HasPrefix(line, "envoy_http_rbac_denied "):
			envoy = append(envoy, line)
		}
	}
	if len(istio) > 0 {
		return istio
	}
	return envoy
}
