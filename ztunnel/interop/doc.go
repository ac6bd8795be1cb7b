// Package interop holds tests of Ambit's HBONE against Istio's own Go
// implementation (istio.io/istio/pkg/hbone), in both directions. It is a
// module of its own so that the main module does not depend on
// istio.io/istio; `make test` runs it.
package interop
