package bookinfo_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/ambitmesh/ambit/e2e/internal/bookinfo"
	"github.com/ambitmesh/ambit/samples/bookinfo/app"
	"github.com/ambitmesh/ambit/waypoint/waypointtest"
)

func TestLab(t *testing.T) {
	o, err := bookinfo.Lab("shop", bookinfo.Spread("node1", "node2"))
	if err != nil {
		t.Fatal(err)
	}
	var sas, svcs []string
	for _, sa := range o.ServiceAccounts {
		sas = append(sas, sa.Namespace+"/"+sa.Name)
	}
	for _, s := range o.Services {
		svcs = append(svcs, s.Namespace+"/"+s.Name)
		if len(s.Spec.Ports) != 1 || s.Spec.Ports[0].Name != "http" || s.Spec.Ports[0].Port != 9080 || s.Spec.Selector["app"] != s.Name {
			t.Errorf("service %s: got ports %v selector %v, want http 9080 selecting app=%s", s.Name, s.Spec.Ports, s.Spec.Selector, s.Name)
		}
	}
	if diff := cmp.Diff([]string{"shop/bookinfo-productpage", "shop/bookinfo-details", "shop/bookinfo-reviews", "shop/bookinfo-ratings"}, sas); diff != "" {
		t.Errorf("service accounts (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"shop/productpage", "shop/details", "shop/reviews", "shop/ratings"}, svcs); diff != "" {
		t.Errorf("services (-want +got):\n%s", diff)
	}

	type pod struct{ Name, Node, App, Version, SA, Image, Probe string }
	var got []pod
	for _, p := range o.Pods {
		c := p.Spec.Containers[0]
		got = append(got, pod{p.Name, p.Spec.NodeName, p.Labels["app"], p.Labels["version"], p.Spec.ServiceAccountName,
			c.Image + " " + c.Args[0], c.ReadinessProbe.HTTPGet.Path + ":" + c.ReadinessProbe.HTTPGet.Port.String()})
	}
	want := []pod{
		{"productpage-v1", "node1", "productpage", "v1", "bookinfo-productpage", "ambit.dev/bookinfo productpage", "/health:9080"},
		{"details-v1", "node2", "details", "v1", "bookinfo-details", "ambit.dev/bookinfo details", "/health:9080"},
		{"reviews-v1", "node1", "reviews", "v1", "bookinfo-reviews", "ambit.dev/bookinfo reviews", "/health:9080"},
		{"reviews-v2", "node2", "reviews", "v2", "bookinfo-reviews", "ambit.dev/bookinfo reviews", "/health:9080"},
		{"reviews-v3", "node1", "reviews", "v3", "bookinfo-reviews", "ambit.dev/bookinfo reviews", "/health:9080"},
		{"ratings-v1", "node2", "ratings", "v1", "bookinfo-ratings", "ambit.dev/bookinfo ratings", "/health:9080"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("pods (-want +got):\n%s", diff)
	}

	if _, err := bookinfo.Lab("shop", func(bookinfo.Workload) string { return "" }); err == nil {
		t.Error("Lab with a placement that names no node: got no error, want one")
	}
}

// TestYAMLMatchesLab: bookinfo.yaml declares the same service accounts,
// services and (as Deployment templates) pods as Lab, but for the node and
// the image name, which is a placeholder there.
func TestYAMLMatchesLab(t *testing.T) {
	data, err := os.ReadFile("../../../samples/bookinfo/bookinfo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var (
		sas  = map[string]*corev1.ServiceAccount{}
		svcs = map[string]*corev1.Service{}
		deps = map[string]*appsv1.Deployment{}
	)
	r := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("decode bookinfo.yaml document %q: %v", doc, err)
		}
		switch o := obj.(type) {
		case *corev1.ServiceAccount:
			sas[o.Name] = o
		case *corev1.Service:
			svcs[o.Name] = o
		case *appsv1.Deployment:
			deps[o.Name] = o
		default:
			t.Errorf("bookinfo.yaml: got a %T, want only ServiceAccounts, Services and Deployments", obj)
		}
	}

	lab, err := bookinfo.Lab("", bookinfo.Spread("node"))
	if err != nil {
		t.Fatal(err)
	}
	if len(sas) != len(lab.ServiceAccounts) || len(svcs) != len(lab.Services) || len(deps) != len(lab.Pods) {
		t.Errorf("bookinfo.yaml: got %d service accounts, %d services, %d deployments; want %d, %d, %d",
			len(sas), len(svcs), len(deps), len(lab.ServiceAccounts), len(lab.Services), len(lab.Pods))
	}
	for _, want := range lab.ServiceAccounts {
		got, ok := sas[want.Name]
		if !ok {
			t.Errorf("bookinfo.yaml: no ServiceAccount %s", want.Name)
			continue
		}
		if diff := cmp.Diff(want.Labels, got.Labels); diff != "" {
			t.Errorf("ServiceAccount %s labels (-lab +yaml):\n%s", want.Name, diff)
		}
	}
	for _, want := range lab.Services {
		got, ok := svcs[want.Name]
		if !ok {
			t.Errorf("bookinfo.yaml: no Service %s", want.Name)
			continue
		}
		if diff := cmp.Diff(want.Spec, got.Spec); diff != "" {
			t.Errorf("Service %s spec (-lab +yaml):\n%s", want.Name, diff)
		}
		if diff := cmp.Diff(want.Labels, got.Labels); diff != "" {
			t.Errorf("Service %s labels (-lab +yaml):\n%s", want.Name, diff)
		}
	}
	for _, want := range lab.Pods {
		d, ok := deps[want.Name]
		if !ok {
			t.Errorf("bookinfo.yaml: no Deployment %s", want.Name)
			continue
		}
		if diff := cmp.Diff(want.Labels, d.Spec.Template.Labels); diff != "" {
			t.Errorf("Deployment %s template labels (-lab +yaml):\n%s", want.Name, diff)
		}
		if diff := cmp.Diff(want.Labels, d.Spec.Selector.MatchLabels); diff != "" {
			t.Errorf("Deployment %s selector (-lab +yaml):\n%s", want.Name, diff)
		}
		got := d.Spec.Template.Spec
		if got.ServiceAccountName != want.Spec.ServiceAccountName || len(got.Containers) != 1 {
			t.Errorf("Deployment %s: got service account %q and %d containers, want %q and 1", want.Name, got.ServiceAccountName, len(got.Containers), want.Spec.ServiceAccountName)
			continue
		}
		wc, gc := want.Spec.Containers[0], got.Containers[0]
		// What the lab has no use for: pulling images, a security context.
		gc.Image, gc.ImagePullPolicy, gc.SecurityContext = bookinfo.Image, "", nil
		if diff := cmp.Diff(wc, gc); diff != "" {
			t.Errorf("Deployment %s container (-lab +yaml):\n%s", want.Name, diff)
		}
	}
}

// decodeFile decodes the Kubernetes objects of a YAML file.
func decodeFile(t *testing.T, path string) []any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []any
	r := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(bytes.TrimSpace(doc)) == 0 || bytes.Equal(bytes.TrimSpace(doc), []byte("---")) {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			if strings.Contains(err.Error(), "empty") {
				continue // a document of comments only
			}
			t.Fatalf("decode %s document %q: %v", path, doc, err)
		}
		out = append(out, obj)
	}
}

// TestIstioManifests: Istio's own bookinfo.yaml (from the istio.io/istio
// module the interop suite pins) declares the service accounts, Services
// and workloads of Lab, with the same labels, and every image it names is
// one IstioImages maps to the bookinfo program as that service and
// version; bookinfo-versions.yaml's Services are the ones the HTTPRoute
// samples route to.
func TestIstioManifests(t *testing.T) {
	dir, err := bookinfo.IstioManifests(t.Context(), "../../..")
	if err != nil {
		t.Fatal(err)
	}
	images, err := bookinfo.IstioImages("/bin/true", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	lab, err := bookinfo.Lab("", bookinfo.Spread("node"))
	if err != nil {
		t.Fatal(err)
	}
	labPods := map[string]*corev1.Pod{}
	for _, p := range lab.Pods {
		labPods[p.Name] = p
	}
	var sas, svcs, deps []string
	for _, obj := range decodeFile(t, filepath.Join(dir, "bookinfo.yaml")) {
		switch o := obj.(type) {
		case *corev1.ServiceAccount:
			sas = append(sas, o.Name+" account="+o.Labels["account"])
		case *corev1.Service:
			svcs = append(svcs, fmt.Sprintf("%s %s/%d selects app=%s", o.Name, o.Spec.Ports[0].Name, o.Spec.Ports[0].Port, o.Spec.Selector["app"]))
		case *appsv1.Deployment:
			want, ok := labPods[o.Name]
			if !ok {
				t.Errorf("Istio's Deployment %s: no such workload in Lab", o.Name)
				continue
			}
			tpl := o.Spec.Template
			if diff := cmp.Diff(want.Labels, tpl.Labels); diff != "" {
				t.Errorf("Deployment %s labels (-lab +istio):\n%s", o.Name, diff)
			}
			if tpl.Spec.ServiceAccountName != want.Spec.ServiceAccountName {
				t.Errorf("Deployment %s: service account %q, lab's %q", o.Name, tpl.Spec.ServiceAccountName, want.Spec.ServiceAccountName)
			}
			img := tpl.Spec.Containers[0].Image
			svc, ver, ok := app.ParseImageName(img)
			if !ok || svc != tpl.Labels["app"] || ver != tpl.Labels["version"] {
				t.Errorf("Deployment %s image %s: read as %q %q %v, want %s %s", o.Name, img, svc, ver, ok, tpl.Labels["app"], tpl.Labels["version"])
			}
			name, _, _ := strings.Cut(img, ":")
			if images[name] == "" {
				t.Errorf("Deployment %s image %s: IstioImages does not map %s", o.Name, img, name)
			}
			deps = append(deps, o.Name)
		}
	}
	slices.Sort(sas)
	slices.Sort(svcs)
	slices.Sort(deps)
	if diff := cmp.Diff([]string{"bookinfo-details account=details", "bookinfo-productpage account=productpage", "bookinfo-ratings account=ratings", "bookinfo-reviews account=reviews"}, sas); diff != "" {
		t.Errorf("service accounts (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"details http/9080 selects app=details", "productpage http/9080 selects app=productpage", "ratings http/9080 selects app=ratings", "reviews http/9080 selects app=reviews"}, svcs); diff != "" {
		t.Errorf("services (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"details-v1", "productpage-v1", "ratings-v1", "reviews-v1", "reviews-v2", "reviews-v3"}, deps); diff != "" {
		t.Errorf("deployments (-want +got):\n%s", diff)
	}

	var versions []string
	for _, obj := range decodeFile(t, filepath.Join(dir, "bookinfo-versions.yaml")) {
		if s, ok := obj.(*corev1.Service); ok {
			versions = append(versions, fmt.Sprintf("%s selects app=%s version=%s", s.Name, s.Spec.Selector["app"], s.Spec.Selector["version"]))
		}
	}
	slices.Sort(versions)
	if diff := cmp.Diff([]string{"details-v1 selects app=details version=v1", "productpage-v1 selects app=productpage version=v1", "ratings-v1 selects app=ratings version=v1",
		"reviews-v1 selects app=reviews version=v1", "reviews-v2 selects app=reviews version=v2", "reviews-v3 selects app=reviews version=v3"}, versions); diff != "" {
		t.Errorf("bookinfo-versions.yaml services (-want +got):\n%s", diff)
	}
}

// page renders a real product page of the Go Bookinfo with reviews
// version v served by pod podName.
func page(t *testing.T, v, podName string) string {
	t.Helper()
	env := map[string]string{"HOSTNAME": podName, "SERVICE_VERSION": v}
	serve := func(service string) string {
		cfg, err := app.ConfigFromEnv(service, func(k string) string { return env[k] })
		if err != nil {
			t.Fatal(err)
		}
		h, err := app.New(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		u, _ := url.Parse(srv.URL)
		return u.Port()
	}
	env["RATINGS_HOSTNAME"], env["REVIEWS_HOSTNAME"], env["DETAILS_HOSTNAME"] = "127.0.0.1", "127.0.0.1", "127.0.0.1"
	env["RATINGS_SERVICE_PORT"] = serve(app.Ratings)
	env["REVIEWS_SERVICE_PORT"] = serve(app.Reviews)
	env["DETAILS_SERVICE_PORT"] = serve(app.Details)
	resp, err := http.Get("http://127.0.0.1:" + serve(app.Productpage) + "/productpage")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestReviewsVersion(t *testing.T) {
	for _, v := range []string{"v1", "v2", "v3"} {
		got, err := bookinfo.ReviewsVersion(page(t, v, "reviews-"+v+"-5d8f7c9b6-x2x7q"))
		if err != nil || got != v {
			t.Errorf("page of reviews %s: got %q, %v, want %s", v, got, err, v)
		}
	}
	// A page whose stars do not match the pod's version is refused.
	if _, err := bookinfo.ReviewsVersion(page(t, "v3", "reviews-v2-abc")); err == nil || !strings.Contains(err.Error(), "red stars, want black") {
		t.Errorf("v3's stars under a v2 pod: got %v, want an error about the colour", err)
	}
	if _, err := bookinfo.ReviewsVersion(page(t, "v2", "reviews-v1-abc")); err == nil || !strings.Contains(err.Error(), "want none") {
		t.Errorf("v2's stars under a v1 pod: got %v, want an error", err)
	}
	if _, err := bookinfo.ReviewsVersion("<html>no reviews</html>"); err == nil {
		t.Error("a page without reviews: got no error, want one")
	}
}

// TestRoutes: the route summary of a real waypoint's config dump, run in
// process on istiod's golden HTTPRoute matches (Service reviews in shop).
func TestRoutes(t *testing.T) {
	dump := waypointtest.GoldenDump(t, "httproute-matches.json")
	got := bookinfo.ReviewsRoutes(string(dump), "shop")
	want := []string{
		"/health → reviews-v1",
		"regex /reviews/[0-9]+ → reviews-v1",
		"/api/v2/* x-canary=true x-user~^(alice|bob)$ :method=GET ?debug=1 → reviews-v2",
		"/api/* :method=POST → reviews-v2",
		"/api/* → reviews-v1 90%, reviews-v2 10%",
		"/* → reviews",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("routes (-want +got):\n%s", diff)
	}
	if got := bookinfo.ReviewsRoutes("not a dump", "shop"); got != nil {
		t.Errorf("routes of garbage: got %q, want none", got)
	}
}
