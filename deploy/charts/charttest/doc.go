// Package charttest holds the tests of Ambit's Helm chart (deploy/charts/ambit).
// They render the chart with Helm's own Go library, decode every object
// into its typed Kubernetes API struct, and check what matters: RBAC rules,
// tokens, host access, ports and arguments. It is a module of its own so
// that Helm's dependencies stay out of Ambit's module.
//
// `go test -update` rewrites what is derived from the chart and from
// deploy/crds: the chart's crds/ directory and the rendered manifests that
// the lab test e2e/helm_test.go applies.
package charttest
