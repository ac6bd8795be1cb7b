package bookinfo

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

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
// bookinfo.yaml runs unchanged in the lab.
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
