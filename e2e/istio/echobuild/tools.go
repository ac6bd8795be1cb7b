//go:build tools

// Package echobuild pins Istio's echo app, the test workload of Istio's
// own integration tests and of the Gateway API conformance suite (whose
// echo-advanced image is built FROM Istio's app image): the server (the
// image's entrypoint) and the client the suite runs with `kubectl exec`.
// Like pilotbuild, a module of its own that requires nothing but Istio,
// at the same commit as pilotbuild (TestEchoPinsPilotsIstio), so that
// the programs have exactly Istio's dependency versions; a module apart
// from pilotbuild so that adding the echo app left pilot-discovery's
// cache key alone. The lab builds the programs named here with `go
// build` in this directory and caches them (lab.EnsureIstioEcho).
package echobuild

import (
	_ "istio.io/istio/pkg/test/echo/cmd/client"
	_ "istio.io/istio/pkg/test/echo/cmd/server"
)
