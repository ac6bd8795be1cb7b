// Package workload is the Go code generated from workload.proto: the
// messages of type.googleapis.com/istio.workload.Address, wire-compatible
// with Istio's workload discovery API.
package workload
