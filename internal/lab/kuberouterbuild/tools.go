//go:build tools

// Package kuberouterbuild pins the NetworkPolicy implementation the lab
// runs when asked to (lab.Config.NetworkPolicy): kube-router's network
// policy controller (iptables and ipset), built from the
// github.com/cloudnativelabs/kube-router/v2 module at the version named
// in go.mod and run with its firewall only (--run-firewall, no router, no
// service proxy: the advisories against this version, GHSA-v5mh-h5hx-7v92
// and GHSA-phqm-jgc3-qf8g, are in those two). It is a module of its own so
// that kube-router's dependencies stay out of Ambit's module graph. The
// lab builds the program named here with `go build` in this directory and
// caches it (lab.EnsureKubeRouter).
package kuberouterbuild

import (
	_ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
)
