// Package api holds Ambit's protocol buffer definitions and the Go code
// generated from them: the ambient workload discovery API (package
// workload, proto package istio.workload) and its authorization policies
// (package security, proto package istio.security). `make generate`
// regenerates the Go code with protoc and the protoc-gen-go pinned in
// go.mod. This package itself names the Istio release that wire format
// matches (IstioVersion) and Istio's defaults on it (DefaultClusterID).
package api

//go:generate sh -c "protoc --plugin=protoc-gen-go=$(go tool -n protoc-gen-go) --go_out=. --go_opt=paths=source_relative workload/workload.proto security/authorization.proto"
