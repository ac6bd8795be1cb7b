//go:build tools

// Package pilotbuild pins the Istio control plane the interop suite
// (e2e/istio) runs: Istio's own pilot-discovery, built from the
// istio.io/istio module at the commit named in go.mod. It is a module of
// its own, requiring nothing but Istio, so that the program is built
// with exactly Istio's dependency versions (the suite's module, which
// also requires Ambit, would raise grpc, client-go and istio.io/api under
// it) and so that Ambit's module graph never includes Istio's. The lab
// builds the program named here with `go build` in this directory and
// caches it (lab.EnsurePilotDiscovery).
package pilotbuild

import (
	_ "istio.io/istio/pilot/cmd/pilot-discovery"
)
