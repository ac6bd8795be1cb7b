//go:build tools

// Package kubebuild pins the Kubernetes version the lab runs. It is a
// module of its own so that k8s.io/kubernetes and its staging replaces do
// not leak into Ambit's module graph; the lab builds the binaries named
// here with `go build` in this directory and caches them.
package kubebuild

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
