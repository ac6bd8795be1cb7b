package bookinfo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambitmesh/ambit/ambitctl/proxyconfig"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/samples/bookinfo/app"
)

// IstioRegistries are where Istio's manifests have named Bookinfo's
// images: registry.istio.io/release since Istio 1.22, docker.io/istio
// before.
var IstioRegistries = []string{"registry.istio.io/release", "docker.io/istio"}

// IstioImages makes the bookinfo program stand in for each of Istio's
// Bookinfo images (examples-bookinfo-<service>-<version>): a symbolic
// link to bin of that name in dir, which the program reads as its
// service and version (app.ParseImageName). It returns the lab's image
// map (lab.Config.Images) from each image name, in every registry of
// IstioRegistries and without a tag, to its link, so that Istio's own
// bookinfo.yaml runs unchanged in the lab. dir must not be under /tmp:
// Istio's manifests mount an emptyDir there, which hides it from the pod.
func IstioImages(bin, dir string) (map[string]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create image links: %w", err)
	}
	images := map[string]string{}
	for _, w := range Workloads {
		name := app.ImageName(w.App, w.Version)
		link := filepath.Join(dir, name)
		if err := os.Remove(link); err != nil && !os.IsNotExist(err) {
			return nil, fmt.Errorf("link image %s: %w", name, err)
		}
		if err := os.Symlink(bin, link); err != nil {
			return nil, fmt.Errorf("link image %s: %w", name, err)
		}
		for _, r := range IstioRegistries {
			images[r+"/"+name] = link
		}
	}
	return images, nil
}

// IstioManifests returns the directory of Istio's Bookinfo manifests
// (bookinfo.yaml, bookinfo-versions.yaml, ...:
// samples/bookinfo/platform/kube) in the istio.io/istio module that
// lab.IstioBuildDir pins, downloading it into the Go module cache if
// needed. Ambit ships no copy of them: the tests apply Istio's own.
func IstioManifests(ctx context.Context, root string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", "istio.io/istio")
	cmd.Dir = filepath.Join(root, lab.IstioBuildDir)
	cmd.Env = append(os.Environ(), "GOWORK=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go mod download istio.io/istio: %w\n%s", err, stderr.Bytes())
	}
	var m struct{ Dir, Error string }
	if err := json.Unmarshal(out, &m); err != nil {
		return "", fmt.Errorf("go mod download istio.io/istio: decode: %w", err)
	}
	if m.Error != "" || m.Dir == "" {
		return "", fmt.Errorf("go mod download istio.io/istio: %s", m.Error)
	}
	dir := filepath.Join(m.Dir, "samples", "bookinfo", "platform", "kube")
	if _, err := os.Stat(filepath.Join(dir, "bookinfo.yaml")); err != nil {
		return "", fmt.Errorf("find istio's bookinfo.yaml: %w", err)
	}
	return dir, nil
}

// Kubectl runs the lab's kubectl with the lab's admin kubeconfig and
// returns its output; an error quotes it.
func Kubectl(ctx context.Context, l *lab.Lab, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, l.Binaries().Kubectl, append([]string{"--kubeconfig", l.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return out, nil
}

// InstallIstio applies Istio's bookinfo.yaml and bookinfo-versions.yaml,
// from dir (IstioManifests), unchanged, with kubectl in namespace of a lab
// started with a scheduler and the images of IstioImages; it waits until
// every Deployment is Available and kube-proxy on every node has every
// Service. It returns the Ready pods by name.
func InstallIstio(ctx context.Context, l *lab.Lab, namespace, dir string) (map[string]*corev1.Pod, error) {
	if _, err := Kubectl(ctx, l, "apply", "-n", namespace, "-f", filepath.Join(dir, "bookinfo.yaml"), "-f", filepath.Join(dir, "bookinfo-versions.yaml")); err != nil {
		return nil, fmt.Errorf("install istio's bookinfo: %w", err)
	}
	if _, err := Kubectl(ctx, l, "wait", "-n", namespace, "--for=condition=Available", "deployment", "--all", "--timeout=3m"); err != nil {
		return nil, fmt.Errorf("install istio's bookinfo: %w", err)
	}
	pods, err := l.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "app,version"})
	if err != nil {
		return nil, fmt.Errorf("install istio's bookinfo: %w", err)
	}
	ready := map[string]*corev1.Pod{}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp == nil && lab.PodReady(p) {
			ready[p.Name] = p
		}
	}
	for _, p := range ready {
		for _, svc := range []string{p.Labels["app"], p.Labels["app"] + "-" + p.Labels["version"]} {
			if err := l.WaitServiceProgrammed(ctx, namespace, svc, p.Status.PodIP); err != nil {
				return nil, fmt.Errorf("install istio's bookinfo: %w", err)
			}
		}
	}
	return ready, nil
}

// reviewsPodRE finds the reviews pod that served a product page;
// starsRE each star rating on it.
var (
	reviewsPodRE = regexp.MustCompile(`<span id="reviews-pod">([^<]*)</span>`)
	starsRE      = regexp.MustCompile(`class="stars" style="[^"]*" data-color="([^"]*)"`)
)

// ReviewsVersion reads which reviews version served a product page, from
// the pod named on it (reviews-<version>[-...]), and checks that the page
// shows that version's stars: none for v1, black for v2, red for v3.
func ReviewsVersion(page string) (string, error) {
	m := reviewsPodRE.FindStringSubmatch(page)
	if m == nil {
		return "", errors.New("read reviews version: the page names no reviews pod")
	}
	rest, ok := strings.CutPrefix(m[1], app.Reviews+"-")
	if !ok {
		return "", fmt.Errorf("read reviews version: pod %q is no reviews pod", m[1])
	}
	version, _, _ := strings.Cut(rest, "-")
	want := map[string]string{"v1": "", "v2": "black", "v3": "red"}[version]
	stars := starsRE.FindAllStringSubmatch(page, -1)
	switch {
	case want == "" && len(stars) > 0:
		return "", fmt.Errorf("read reviews version: %s shows %d star ratings, want none", m[1], len(stars))
	case want != "" && len(stars) != 2:
		return "", fmt.Errorf("read reviews version: %s shows %d star ratings, want 2 %s", m[1], len(stars), want)
	}
	for _, s := range stars {
		if s[1] != want {
			return "", fmt.Errorf("read reviews version: %s shows %s stars, want %s", m[1], s[1], want)
		}
	}
	return version, nil
}

// shortCluster names an Istio cluster by its Service's short name and
// subset: inbound-vip|9080|http|reviews-v1.bookinfo.svc.cluster.local is
// reviews-v1, inbound-vip|9080|http/v2|reviews.bookinfo.svc.cluster.local
// (a DestinationRule's subset) reviews/v2.
func shortCluster(name string) string {
	parts := strings.Split(name, "|")
	host, _, _ := strings.Cut(parts[len(parts)-1], ".")
	if len(parts) == 4 {
		if _, subset, ok := strings.Cut(parts[2], "/"); ok {
			host += "/" + subset
		}
	}
	return host
}

// ReviewsRoutes is the reviews Service's routes in a waypoint's config
// dump (admin /config_dump): "match → destination", one per route, with
// clusters by their Service's short name (shortCluster) and weights in
// percent, e.g. "/* → reviews-v1 90%, reviews-v2 10%" (ambitctl/
// proxyconfig's route summary). Nil when the dump does not parse.
func ReviewsRoutes(dump, namespace string) []string {
	return Routes(dump, "reviews", namespace)
}

// Routes is ReviewsRoutes for any Service of namespace.
func Routes(dump, service, namespace string) []string {
	d, err := proxyconfig.Parse([]byte(dump))
	if err != nil {
		return nil
	}
	var out []string
	for _, r := range d.RouteSummary() {
		if !strings.HasSuffix(r.Name, "|"+service+"."+namespace+".svc.cluster.local") {
			continue
		}
		var dests []string
		for _, part := range strings.Split(r.Destination, ", ") {
			name, weight, _ := strings.Cut(part, " ")
			dests = append(dests, strings.TrimSpace(shortCluster(name)+" "+weight))
		}
		out = append(out, r.Match+" → "+strings.Join(dests, ", "))
	}
	return out
}
