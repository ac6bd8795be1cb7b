package realnode

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

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
