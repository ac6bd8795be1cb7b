package realnode

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	images "github.com/ambitmesh/ambit/deploy/images"
	"github.com/ambitmesh/ambit/internal/lab"
)

// Registry is the lab's image registry: go-containerregistry's registry
// (in memory) served by the test process on lab.RegistryAddr in the
// control-plane namespace, which containerd on real nodes pulls from.
type Registry struct {
	srv *http.Server
	l   *lab.Lab
}

// ServeRegistry starts the registry of lab l.
func ServeRegistry(ctx context.Context, l *lab.Lab) (*Registry, error) {
	ln, err := l.ControlPlaneNS().Listen(ctx, "tcp", lab.RegistryAddr)
	if err != nil {
		return nil, fmt.Errorf("serve registry: %w", err)
	}
	r := &Registry{l: l, srv: &http.Server{
		Handler:  registry.New(registry.Logger(log.New(io.Discard, "", 0))),
		ErrorLog: log.New(io.Discard, "", 0),
	}}
	go r.srv.Serve(ln)
	return r, nil
}

// Close stops the registry.
func (r *Registry) Close() error { return r.srv.Close() }

// Push pushes the image of an OCI layout (one image, as deploy/images
// writes it) as repository/tag, e.g. "ambit/pause:lab"; any registry name
// the manifests use resolves to it (lab.MirroredRegistries).
func (r *Registry) Push(ctx context.Context, layoutDir, repoTag string) error {
	p, err := layout.FromPath(layoutDir)
	if err != nil {
		return fmt.Errorf("push %s: %w", layoutDir, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return fmt.Errorf("push %s: %w", layoutDir, err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return fmt.Errorf("push %s: %w", layoutDir, err)
	}
	if len(m.Manifests) != 1 {
		return fmt.Errorf("push %s: got %d images in the layout, want 1", layoutDir, len(m.Manifests))
	}
	img, err := idx.Image(m.Manifests[0].Digest)
	if err != nil {
		return fmt.Errorf("push %s: %w", layoutDir, err)
	}
	ref, err := name.NewTag(lab.RegistryAddr+"/"+repoTag, name.Insecure)
	if err != nil {
		return fmt.Errorf("push %s: %w", repoTag, err)
	}
	tr := &http.Transport{DialContext: r.l.ControlPlaneNS().DialContext}
	defer tr.CloseIdleConnections()
	if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithTransport(tr)); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	return nil
}

// PushRef pushes an OCI layout as ref, <registry>/<repository>:<tag>,
// whose registry name is dropped: every mirrored name resolves to the lab
// registry.
func (r *Registry) PushRef(ctx context.Context, layoutDir, ref string) error {
	_, repoTag, ok := strings.Cut(ref, "/")
	if !ok {
		return fmt.Errorf("push %s: want <registry>/<repository>:<tag>", ref)
	}
	return r.Push(ctx, layoutDir, repoTag)
}

// PushProgram builds an image of a Go main package of the Ambit module
// (root is the repository) with deploy/images' builder, running as user
// ("uid:gid"), and pushes it as ref (<hub>/<name>:<tag>; the hub is any
// name of lab.MirroredRegistries).
func (r *Registry) PushProgram(ctx context.Context, root, ref, pkg, user string) error {
	colon, slash := strings.LastIndex(ref, ":"), strings.LastIndex(ref, "/")
	if slash < 0 || colon < slash {
		return fmt.Errorf("push %s: want <hub>/<name>:<tag>", ref)
	}
	hub, imageName, tag := ref[:slash], ref[slash+1:colon], ref[colon+1:]
	out, err := os.MkdirTemp("", "ambit-image-")
	if err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	defer os.RemoveAll(out)
	im, err := images.BuildProgram(ctx, images.Options{Root: root, Out: out, Hub: hub, Version: tag}, imageName,
		images.Component{Packages: []string{pkg}, User: user, Description: "lab image " + imageName})
	if err != nil {
		return err
	}
	if im.Ref != ref {
		return fmt.Errorf("push %s: built %s", ref, im.Ref)
	}
	return r.PushRef(ctx, im.Layout, ref)
}

// PushProduct builds Ambit's images as `make images` does, with the
// chart's default hub and tag, and pushes them.
func (r *Registry) PushProduct(ctx context.Context, root string) error {
	return r.PushProductVersion(ctx, root, "")
}

// PushProductVersion is PushProduct with the images built as version (a
// release to upgrade to: the binaries report it, the images are tagged
// with it); the chart's appVersion when empty.
func (r *Registry) PushProductVersion(ctx context.Context, root, version string) error {
	out, err := os.MkdirTemp("", "ambit-images-")
	if err != nil {
		return fmt.Errorf("push images: %w", err)
	}
	defer os.RemoveAll(out)
	ims, err := images.Build(ctx, images.Options{Root: root, Out: out, Version: version})
	if err != nil {
		return err
	}
	for _, im := range ims {
		if err := r.PushRef(ctx, im.Layout, im.Ref); err != nil {
			return err
		}
	}
	return nil
}

// The lab's sample images, as the manifests name them (registries only
// the lab's mirror serves).
const (
	EchoImage     = "ambit.dev/echo:dev"
	BookinfoImage = "ambit.dev/bookinfo:dev"
)

// PushLabImages pushes what a real node needs besides Ambit's own
// images: the pause image, and the samples' (echo, Bookinfo).
func (r *Registry) PushLabImages(ctx context.Context, root string) error {
	for _, im := range []struct{ ref, pkg, user string }{
		{lab.PauseImage, "./internal/lab/cmd/pause", "0:0"},
		{EchoImage, "./samples/echo", fmt.Sprintf("%d:%d", images.NonRootUID, images.NonRootUID)},
		{BookinfoImage, "./samples/bookinfo", "65532:65532"},
	} {
		if err := r.PushProgram(ctx, root, im.ref, im.pkg, im.user); err != nil {
			return err
		}
	}
	return nil
}

// ConformanceEchoImage is the image the Gateway API conformance suite's
// mesh manifests (sigs.k8s.io/gateway-api/conformance v1.6.3,
// mesh/manifests.yaml) name for their echo pods. Upstream builds it FROM
// Istio's app image (docker/Dockerfile.echo-advanced: gcr.io/istio-release/
// app:1.21.2); the lab builds the same programs from the istio.io/istio
// module (lab.EnsureIstioEcho) and serves them under this name.
const ConformanceEchoImage = "registry.k8s.io/gateway-api/echo-advanced:v1.5.1"

// ConformanceEchoUser is the echo app's user, as in Istio's app image
// (pkg/test/echo/docker/Dockerfile.app: user "application", uid 1338).
const ConformanceEchoUser = "1338:1338"

// PushConformanceEcho builds the conformance suite's echo image as Istio's
// app image is laid out (pkg/test/echo/docker/Dockerfile.app): the server
// at /usr/local/bin/server as the entrypoint, the client at
// /usr/local/bin/client (on the PATH: the suite execs `client`), and
// Istio's test serving certificate and key at /cert.crt and /cert.key;
// and pushes it as ConformanceEchoImage.
func (r *Registry) PushConformanceEcho(ctx context.Context, root string, echo lab.IstioEcho) error {
	ref := ConformanceEchoImage
	slash, colon := strings.LastIndex(ref, "/"), strings.LastIndex(ref, ":")
	out, err := os.MkdirTemp("", "ambit-image-")
	if err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	defer os.RemoveAll(out)
	im, err := images.BuildProgram(ctx, images.Options{Root: root, Out: out, Hub: ref[:slash], Version: ref[colon+1:]}, ref[slash+1:colon], images.Component{
		User:        ConformanceEchoUser,
		Entrypoint:  images.BinDir + "/server",
		Description: fmt.Sprintf("Istio's echo app (istio.io/istio %s, Istio %s commit %s) as the Gateway API conformance echo-advanced image", echo.ModuleVersion, echo.Version, echo.Revision),
		Files: []images.File{
			{Path: images.BinDir + "/server", Source: echo.Server, Mode: 0o755},
			{Path: images.BinDir + "/client", Source: echo.Client, Mode: 0o755},
			{Path: "/cert.crt", Source: echo.Cert, Mode: 0o644},
			{Path: "/cert.key", Source: echo.Key, Mode: 0o644},
		},
	})
	if err != nil {
		return err
	}
	if im.Ref != ref {
		return fmt.Errorf("push %s: built %s", ref, im.Ref)
	}
	return r.PushRef(ctx, im.Layout, ref)
}
