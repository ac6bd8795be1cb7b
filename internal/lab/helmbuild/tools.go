//go:build tools

// Package helmbuild pins the Helm command line the real-node tests (and
// `make cluster`'s users) run, exactly as the README's install section
// says: `helm` built from the helm.sh/helm/v3 module at the version named
// in go.mod. It is a module of its own so that Helm's dependencies stay
// out of Ambit's module graph. The lab builds the program named here with
// `go build` in this directory and caches it (lab.EnsureHelm).
package helmbuild

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
