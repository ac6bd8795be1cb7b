package lab

import (
	"context"
	"path/filepath"
)

// HelmBuildDir is the module, relative to the repository root, that pins
// the Helm command line (helm.sh/helm/v3) of the real-node tests and of
// `make cluster`.
const HelmBuildDir = "internal/lab/helmbuild"

// EnsureHelm returns the `helm` program, building it first (with `go
// build` in HelmBuildDir, about a minute) if the cache does not hold it for
// the pinned version and this Go toolchain. A second call builds nothing.
func EnsureHelm(ctx context.Context, opts BuildOptions) (string, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return "", err
	}
	dir, err := buildCached(ctx, opts, moduleBuild{
		what:  "helm",
		src:   filepath.Join(opts.Root, HelmBuildDir),
		cache: "helm",
		names: []string{"helm"},
		pkgs:  []string{"helm.sh/helm/v3/cmd/helm"},
	})
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "helm"), nil
}
