// Package interop holds tests of Ambit against Istio's own Go code: its
// HBONE (istio.io/istio/pkg/hbone) in both directions, and its workload
// API protos (istio.io/istio/pkg/workloadapi), whose every message, field
// and enum value ours must have with the same number and shape
// (TestProtosMatchIstio). It is a module of its own so that the main
// module does not depend on istio.io/istio; `make test` runs it.
package interop
