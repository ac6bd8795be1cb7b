// Package traffic runs Istio's Bookinfo traffic-management samples in
// the lab: Istio's own bookinfo.yaml and bookinfo-versions.yaml applied
// unchanged with kubectl (Istio's image names run the Go Bookinfo),
// waypoints deployed with ambitctl and run as pods by istiod's waypoint
// controller, and the samples of samples/bookinfo applied with kubectl;
// the versions of reviews that answer are counted on real product pages.
// It needs root.
package traffic

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/ambitmesh/ambit/ambitctl/cli"
	"github.com/ambitmesh/ambit/ambitctl/waypoint"
	"github.com/ambitmesh/ambit/e2e/internal/bookinfo"
	"github.com/ambitmesh/ambit/e2e/internal/labmesh"
	"github.com/ambitmesh/ambit/internal/enrolment"
	"github.com/ambitmesh/ambit/internal/kubelog"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/internal/testutil"
	"github.com/ambitmesh/ambit/ztunnel/admin"
)

const ns = "bookinfo"

var routeKlog sync.Once

// env is a running lab with Ambit, Istio's Bookinfo and a client pod.
type env struct {
	l    *lab.Lab
	mesh *labmesh.Mesh
	root string
	// pods are Bookinfo's pods by name.
	pods map[string]*corev1.Pod
	// client sends from the client pod's network namespace.
	client *http.Client
	// productpage and ratings are the Services' cluster IPs, port 9080.
	productpage, ratings string
}

func start(t *testing.T, ctx context.Context) *env {
	t.Helper()
	testutil.RequireRoot(t)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	routeKlog.Do(func() { kubelog.Route(log.Handler()) })
	root, err := lab.FindRoot()
	if err != nil {
		t.Fatal(err)
	}
	bins, err := lab.EnsureBinaries(ctx, lab.BuildOptions{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	// Next to the programs: Istio's manifests mount an emptyDir over
	// their pods' /tmp, which would hide links under it.
	images, err := bookinfo.IstioImages(bins.Bookinfo, filepath.Join(filepath.Dir(bins.Bookinfo), "istio-images"))
	if err != nil {
		t.Fatal(err)
	}
	l := labmesh.StartLab(t, lab.Config{Nodes: 2, Binaries: bins, Log: log, Scheduler: true, Images: images})
	e := &env{l: l, root: root}
	e.mesh = labmesh.StartMesh(t, ctx, l, labmesh.IstiodOptions{})
	if err := l.CreateNamespace(ctx, ns, map[string]string{enrolment.LabelDataplaneMode: enrolment.ModeAmbient}); err != nil {
		t.Fatal(err)
	}
	dir, err := bookinfo.IstioManifests(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	if e.pods, err = bookinfo.InstallIstio(ctx, l, ns, dir); err != nil {
		t.Fatal(err)
	}
	client, err := l.RunPod(ctx, lab.EchoPod(ns, "client", "node1", map[string]string{"app": "client"}))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range append(slices.Collect(maps.Values(e.pods)), client) {
		if err := e.mesh.WaitWorkload(ctx, p.Status.PodIP, true); err != nil {
			t.Fatal(err)
		}
	}
	pns, ok := l.Node(client.Spec.NodeName).Kubelet.PodNetNS(ns, client.Name)
	if !ok {
		t.Fatal("client pod: no network namespace")
	}
	tr := &http.Transport{DialContext: pns.DialContext, DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	e.client = &http.Client{Transport: tr, Timeout: 20 * time.Second}
	for _, s := range []struct {
		name string
		to   *string
	}{{"productpage", &e.productpage}, {"ratings", &e.ratings}} {
		svc, err := l.Client.CoreV1().Services(ns).Get(ctx, s.name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		*s.to = "http://" + svc.Spec.ClusterIP + ":9080"
	}
	// Istio's manifests have no readiness probes: wait until the page
	// is served whole.
	var last error
	if err := lab.PollUntil(ctx, time.Minute, func() bool {
		page, err := e.get(ctx, e.productpage+"/productpage", nil)
		if err == nil && !strings.Contains(page, "Book Details") {
			err = fmt.Errorf("no book details on the page:\n%s", page)
		}
		if err == nil {
			_, err = bookinfo.ReviewsVersion(page)
		}
		last = err
		return err == nil
	}); err != nil {
		t.Fatalf("productpage never served a whole page: %v; last: %v", err, last)
	}
	return e
}

// get fetches url from the client pod and returns the body of a 200.
func (e *env) get(ctx context.Context, url string, cookies []*http.Cookie) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	for _, c := range cookies {
		req.AddCookie(c)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: status %d: %s", url, resp.StatusCode, b)
	}
	return string(b), nil
}

// login signs in to productpage as user, as Istio's tasks do, and
// returns the session cookies.
func (e *env) login(t *testing.T, ctx context.Context, user string) []*http.Cookie {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.productpage+"/login", strings.NewReader(url.Values{"username": {user}, "passwd": {"x"}}.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	c := *e.client
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || len(resp.Cookies()) == 0 {
		t.Fatalf("POST /login as %s: got %d with cookies %v, want 302 and a cookie", user, resp.StatusCode, resp.Cookies())
	}
	return resp.Cookies()
}

// versions loads the product page n times and counts the reviews
// versions that served it.
func (e *env) versions(t *testing.T, ctx context.Context, n int, cookies []*http.Cookie) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		page, err := e.get(ctx, e.productpage+"/productpage", cookies)
		if err != nil {
			t.Fatal(err)
		}
		v, err := bookinfo.ReviewsVersion(page)
		if err != nil {
			i := strings.Index(page, `<div id="reviews">`)
			t.Fatalf("%v; the page's reviews: %.300s", err, page[max(i, 0):])
		}
		got[v]++
	}
	return got
}

// ambitctl runs the command line against the lab.
func (e *env) ambitctl(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	global := []string{"--kubeconfig", e.l.Kubeconfig, "--lab-netns-prefix", lab.NamePrefix + e.l.ID + "-"}
	if code := cli.Main(ctx, genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}, append(global, args...)); code != 0 {
		t.Fatalf("ambitctl %s: exit %d: %s%s", strings.Join(args, " "), code, errOut.String(), out.String())
	}
	return out.String()
}

// waypoint deploys the waypoint of a service account with ambitctl and
// waits until every ztunnel sends the account's pods' traffic through it.
func (e *env) waypoint(t *testing.T, ctx context.Context, sa string) {
	t.Helper()
	e.ambitctl(t, ctx, "waypoint", "apply", "-n", ns, "--service-account", sa, "--wait", "--timeout", "3m")
	if _, err := e.mesh.WaypointPods(ctx, ns, sa+waypoint.ServiceAccountSuffix, 1); err != nil {
		t.Fatal(err)
	}
	var ips []string
	for _, p := range e.pods {
		if p.Spec.ServiceAccountName == sa {
			ips = append(ips, p.Status.PodIP)
		}
	}
	err := e.mesh.WaitZtunnels(ctx, "workloads of "+sa+" bound to their waypoint", func(d *admin.Dump) bool {
		bound := 0
		for _, w := range d.Workloads {
			for _, a := range w.Addresses {
				if slices.Contains(ips, a.String()) && w.Waypoint != nil {
					bound++
				}
			}
		}
		return bound == len(ips)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// apply applies sample files of samples/bookinfo with kubectl and waits
// until the reviews waypoint routes as want says.
func (e *env) apply(t *testing.T, ctx context.Context, want []string, files ...string) {
	t.Helper()
	args := []string{"apply", "-n", ns}
	for _, f := range files {
		args = append(args, "-f", filepath.Join(e.root, "samples", "bookinfo", f))
	}
	if _, err := bookinfo.Kubectl(ctx, e.l, args...); err != nil {
		t.Fatal(err)
	}
	var last []string
	_, err := e.mesh.WaitWaypoint(ctx, ns, "bookinfo-reviews"+waypoint.ServiceAccountSuffix, 1, fmt.Sprintf("routes %q", want), func(dump string) bool {
		last = bookinfo.ReviewsRoutes(dump, ns)
		return slices.Equal(last, want)
	})
	if err != nil {
		t.Fatalf("%v\nlast routes: %q", err, last)
	}
}

// within checks k out of n against a probability p, with bounds that a
// correct split misses once in 1,000 runs (normal approximation of the
// binomial, 3.29 standard deviations).
func within(t *testing.T, what string, k, n int, p float64) {
	t.Helper()
	mean, sd := float64(n)*p, math.Sqrt(float64(n)*p*(1-p))
	lo, hi := int(math.Floor(mean-3.29*sd)), int(math.Ceil(mean+3.29*sd))
	if k < lo || k > hi {
		t.Errorf("%s: got %d of %d, want %d to %d (p=%.2f, 99.9%%)", what, k, n, lo, hi, p)
	}
}

// TestBookinfoTraffic: Istio's Bookinfo, unchanged, in the ambient mesh,
// with a waypoint for the reviews service account: Istio's HTTPRoute
// samples route product pages to the reviews versions they name, by
// weight and by the signed-in user; ambitctl proxy-config shows the
// routes; an L7 policy at ratings' waypoint denies POST and DELETE with
// 403 while GET and the pages' stars go on.
func TestBookinfoTraffic(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 12*time.Minute)
	defer cancel()
	e := start(t, ctx)
	e.waypoint(t, ctx, "bookinfo-reviews")

	t.Run("no route: every version", func(t *testing.T) {
		got := e.versions(t, ctx, 60, nil)
		for _, v := range []string{"v1", "v2", "v3"} {
			if got[v] == 0 {
				t.Errorf("60 pages without a route: got %v, want every version", got)
			}
		}
	})
	t.Run("route-all-v1", func(t *testing.T) {
		e.apply(t, ctx, []string{"/* → reviews-v1"}, "gateway-api/route-all-v1.yaml")
		if got := e.versions(t, ctx, 30, nil); !maps.Equal(got, map[string]int{"v1": 30}) {
			t.Errorf("30 pages: got %v, want all v1", got)
		}
	})
	t.Run("route-reviews-test-v2", func(t *testing.T) {
		e.apply(t, ctx, []string{"/* end-user=jason → reviews-v2", "/* → reviews-v1"}, "gateway-api/route-reviews-test-v2.yaml")
		jason := e.login(t, ctx, "jason")
		if got := e.versions(t, ctx, 20, jason); !maps.Equal(got, map[string]int{"v2": 20}) {
			t.Errorf("20 pages as jason: got %v, want all v2", got)
		}
		if got := e.versions(t, ctx, 20, e.login(t, ctx, "someone")); !maps.Equal(got, map[string]int{"v1": 20}) {
			t.Errorf("20 pages as someone else: got %v, want all v1", got)
		}
	})
	t.Run("route-reviews-50-v3", func(t *testing.T) {
		e.apply(t, ctx, []string{"/* → reviews-v1 50%, reviews-v3 50%"}, "gateway-api/route-reviews-50-v3.yaml")
		got := e.versions(t, ctx, 200, nil)
		if got["v2"] != 0 || got["v1"]+got["v3"] != 200 {
			t.Errorf("200 pages: got %v, want v1 and v3 only", got)
		}
		within(t, "v3", got["v3"], 200, 0.5)
	})
	t.Run("route-reviews-90-10", func(t *testing.T) {
		e.apply(t, ctx, []string{"/* → reviews-v1 90%, reviews-v2 10%"}, "gateway-api/route-reviews-90-10.yaml")
		got := e.versions(t, ctx, 200, nil)
		if got["v3"] != 0 || got["v1"]+got["v2"] != 200 {
			t.Errorf("200 pages: got %v, want v1 and v2 only", got)
		}
		within(t, "v2", got["v2"], 200, 0.1)
		// ambitctl shows the waypoint's route, read from the waypoint
		// pod's admin port in its own network namespace.
		out := e.ambitctl(t, ctx, "proxy-config", "route", "bookinfo-reviews"+waypoint.ServiceAccountSuffix, "-n", ns)
		if !strings.Contains(out, "inbound-vip|9080|http|reviews-v1."+ns+".svc.cluster.local 90%, inbound-vip|9080|http|reviews-v2."+ns+".svc.cluster.local 10%") {
			t.Errorf("ambitctl proxy-config route: got\n%s\nwant the 90/10 split", out)
		}
	})
	t.Run("route-reviews-jason-v2-50-v3", func(t *testing.T) {
		e.apply(t, ctx, []string{"/* end-user=jason → reviews-v2", "/* → reviews-v1 50%, reviews-v3 50%"}, "gateway-api/route-reviews-jason-v2-50-v3.yaml")
		if got := e.versions(t, ctx, 20, e.login(t, ctx, "jason")); !maps.Equal(got, map[string]int{"v2": 20}) {
			t.Errorf("20 pages as jason: got %v, want all v2", got)
		}
		got := e.versions(t, ctx, 100, nil)
		if got["v2"] != 0 {
			t.Errorf("100 anonymous pages: got %v, want no v2", got)
		}
		within(t, "v3", got["v3"], 100, 0.5)
	})
	t.Run("route-reviews-v3", func(t *testing.T) {
		e.apply(t, ctx, []string{"/* → reviews-v3"}, "gateway-api/route-reviews-v3.yaml")
		if got := e.versions(t, ctx, 30, nil); !maps.Equal(got, map[string]int{"v3": 30}) {
			t.Errorf("30 pages: got %v, want all v3", got)
		}
	})

	t.Run("ratings read-only at its waypoint", func(t *testing.T) {
		e.waypoint(t, ctx, "bookinfo-ratings")
		if _, err := bookinfo.Kubectl(ctx, e.l, "apply", "-n", ns, "-f", filepath.Join(e.root, "samples", "bookinfo", "ratings-read-only.yaml")); err != nil {
			t.Fatal(err)
		}
		key := fmt.Sprintf("ns[%s]-policy[ratings-read-only]-rule[0]", ns)
		if _, err := e.mesh.WaitWaypoint(ctx, ns, "bookinfo-ratings"+waypoint.ServiceAccountSuffix, 1, "policy ratings-read-only", func(d string) bool { return strings.Contains(d, key) }); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			method string
			want   int
		}{{http.MethodPost, http.StatusForbidden}, {http.MethodDelete, http.StatusForbidden}, {http.MethodGet, http.StatusOK}} {
			req, err := http.NewRequestWithContext(ctx, tc.method, e.ratings+"/ratings/0", strings.NewReader(`{"Reviewer1": 1}`))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := e.client.Do(req)
			if err != nil {
				t.Fatalf("%s /ratings/0: %v", tc.method, err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("%s /ratings/0: got %d, want %d", tc.method, resp.StatusCode, tc.want)
			}
		}
		// reviews v3 still gets its stars (GET) through ratings' waypoint.
		if got := e.versions(t, ctx, 5, nil); got["v3"] != 5 {
			t.Errorf("5 pages: got %v, want v3 with stars", got)
		}
	})
}
