// Package istio runs Ambit's data plane against upstream Istio's control
// plane: Ambit's ztunnels and node agents in the lab (internal/lab, real
// etcd and kube-apiserver, network namespaces for nodes and pods, Ambit's
// CNI plugin chained) with Istio's own pilot-discovery as istiod, built
// from istio.io/istio v0.0.0-20260827124520-eed52ebb66ad (Istio commit
// eed52ebb66ad, the version ztunnel/interop pins too) in the module
// e2e/istio/pilotbuild and cached like the lab's Kubernetes programs
// (lab.EnsureIstio).
//
// It checks what a user of an Istio control plane relies on from the
// ztunnels: workload discovery, certificates from Istio's CA, mTLS across
// nodes, Service VIPs, and every L4 field of AuthorizationPolicy and a
// STRICT PeerAuthentication as Istio translates them. It is a module of
// its own so that nothing Istio pins reaches Ambit's module graph; `make
// test` runs it after `make lab-bins` has built pilot-discovery (cold,
// about 15 minutes of CPU; the suite builds it itself if it must, and
// then needs a longer -timeout). The tests need root.
package istio
