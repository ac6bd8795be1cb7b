package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// IstioBuildDir is the module, relative to the repository root, that pins
// the upstream Istio the interop suite (e2e/istio) runs Ambit against.
const IstioBuildDir = "e2e/istio/pilotbuild"

// istioBuildTags are the tags Istio's own Makefile builds pilot-discovery
// with (STANDARD_TAGS).
const istioBuildTags = "vtprotobuf,disable_pgv"

// Istio is upstream Istio's control plane, built from the istio.io/istio
// module pinned in IstioBuildDir.
type Istio struct {
	// PilotDiscovery is Istio's istiod program.
	PilotDiscovery string
	// Source is the pinned istio.io/istio module in the Go module cache:
	// its charts and CRDs (manifests/charts/base/files/crd-all.gen.yaml).
	Source string
	// GatewayAPISource is the Gateway API module that Istio requires, in
	// the module cache: its CRDs (config/crd/standard).
	GatewayAPISource string
	// Version is the version built into the program, as Istio's Makefile
	// sets it (VERSION with -dev), and Revision the Istio commit.
	Version  string
	Revision string
}

// EnsureIstio returns Istio's pilot-discovery, building it first (with
// `go build` in IstioBuildDir, minutes) if the cache does not hold it for
// the pinned module and this Go toolchain. A second call builds nothing.
// The main module never depends on istio.io/istio: the build runs in the
// pinning module, which requires nothing else, so the program has exactly
// Istio's dependency versions.
func EnsureIstio(ctx context.Context, opts BuildOptions) (Istio, error) {
	var ist Istio
	opts, err := opts.withDefaults()
	if err != nil {
		return ist, err
	}
	src := filepath.Join(opts.Root, IstioBuildDir)
	mods, err := moduleSources(ctx, src, "istio.io/istio", "sigs.k8s.io/gateway-api")
	if err != nil {
		return ist, err
	}
	istio := mods["istio.io/istio"]
	ist.Source, ist.GatewayAPISource = istio.Dir, mods["sigs.k8s.io/gateway-api"].Dir
	version, err := os.ReadFile(filepath.Join(istio.Dir, "VERSION"))
	if err != nil {
		return ist, fmt.Errorf("read istio version: %w", err)
	}
	ist.Version = strings.TrimSpace(string(version)) + "-dev"
	// A pseudo-version ends in the commit: v0.0.0-<time>-<commit>.
	ist.Revision = istio.Version[strings.LastIndexByte(istio.Version, '-')+1:]

	const pkg = "istio.io/istio/pkg/version."
	dir, err := buildCached(ctx, opts, moduleBuild{
		what:  "istio",
		src:   src,
		cache: "istio",
		names: []string{"pilot-discovery"},
		pkgs:  []string{"istio.io/istio/pilot/cmd/pilot-discovery"},
		flags: []string{"-tags", istioBuildTags, "-ldflags", strings.Join([]string{
			"-X", pkg + "buildVersion=" + ist.Version,
			"-X", pkg + "buildGitRevision=" + ist.Revision,
			"-X", pkg + "buildStatus=Clean",
		}, " ")},
	})
	if err != nil {
		return ist, err
	}
	ist.PilotDiscovery = filepath.Join(dir, "pilot-discovery")
	return ist, nil
}

type moduleSource struct {
	Path, Version, Dir, Error string
}

// moduleSources downloads (or finds in the module cache) the modules at
// the versions the module in dir requires, and returns them by path.
func moduleSources(ctx context.Context, dir string, paths ...string) (map[string]moduleSource, error) {
	cmd := exec.CommandContext(ctx, "go", append([]string{"mod", "download", "-json"}, paths...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go mod download %s in %s: %w\n%s", strings.Join(paths, " "), dir, err, stderr.Bytes())
	}
	mods := map[string]moduleSource{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var m moduleSource
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("go mod download %s: decode: %w", strings.Join(paths, " "), err)
		}
		if m.Error != "" || m.Dir == "" {
			return nil, fmt.Errorf("go mod download %s: %s", m.Path, m.Error)
		}
		mods[m.Path] = m
	}
	for _, p := range paths {
		if _, ok := mods[p]; !ok {
			return nil, fmt.Errorf("go mod download in %s: no %s", dir, p)
		}
	}
	return mods, nil
}

// IstioEchoBuildDir is the module, relative to the repository root, that
// pins Istio's echo app at the commit of IstioBuildDir.
const IstioEchoBuildDir = "e2e/istio/echobuild"

// IstioEcho is Istio's echo app (pkg/test/echo), built from the
// istio.io/istio module pinned in IstioEchoBuildDir: what the Gateway API
// conformance suite's echo-advanced image holds.
type IstioEcho struct {
	// Server is the echo server (the image's entrypoint), Client the
	// client the conformance suite execs in the echo pods.
	Server, Client string
	// Cert and Key are the serving certificate and key Istio's app image
	// puts at /cert.crt and /cert.key (tests/testdata/certs/dns in the
	// module: a certificate for DNS names under the test domain, signed by
	// Istio's test root).
	Cert, Key string
	// ModuleVersion is the istio.io/istio pseudo-version, Revision the
	// Istio commit, Version the version stamped into the programs.
	ModuleVersion, Revision, Version string
}

// EnsureIstioEcho returns Istio's echo server and client, building them
// first (with `go build` in IstioEchoBuildDir, about a minute with a warm
// Go build cache) if the cache does not hold them for the pinned module
// and this Go toolchain.
func EnsureIstioEcho(ctx context.Context, opts BuildOptions) (IstioEcho, error) {
	var e IstioEcho
	opts, err := opts.withDefaults()
	if err != nil {
		return e, err
	}
	src := filepath.Join(opts.Root, IstioEchoBuildDir)
	mods, err := moduleSources(ctx, src, "istio.io/istio")
	if err != nil {
		return e, err
	}
	istio := mods["istio.io/istio"]
	version, err := os.ReadFile(filepath.Join(istio.Dir, "VERSION"))
	if err != nil {
		return e, fmt.Errorf("read istio version: %w", err)
	}
	e.ModuleVersion = istio.Version
	e.Version = strings.TrimSpace(string(version)) + "-dev"
	e.Revision = istio.Version[strings.LastIndexByte(istio.Version, '-')+1:]
	e.Cert = filepath.Join(istio.Dir, "tests", "testdata", "certs", "dns", "cert-chain.pem")
	e.Key = filepath.Join(istio.Dir, "tests", "testdata", "certs", "dns", "key.pem")
	for _, f := range []string{e.Cert, e.Key} {
		if _, err := os.Stat(f); err != nil {
			return e, fmt.Errorf("find echo certificate: %w", err)
		}
	}

	const pkg = "istio.io/istio/pkg/version."
	dir, err := buildCached(ctx, opts, moduleBuild{
		what:  "istio echo",
		src:   src,
		cache: "istio-echo",
		names: []string{"server", "client"},
		pkgs:  []string{"istio.io/istio/pkg/test/echo/cmd/server", "istio.io/istio/pkg/test/echo/cmd/client"},
		flags: []string{"-trimpath", "-tags", istioBuildTags, "-ldflags", strings.Join([]string{
			"-s", "-w", "-buildid=",
			"-X", pkg + "buildVersion=" + e.Version,
			"-X", pkg + "buildGitRevision=" + e.Revision,
			"-X", pkg + "buildStatus=Clean",
		}, " ")},
	})
	if err != nil {
		return e, err
	}
	e.Server, e.Client = filepath.Join(dir, "server"), filepath.Join(dir, "client")
	return e, nil
}
