// Package version is the version every Ambit program reports: its own
// release (stamped at build time by deploy/images, "dev" otherwise), the
// Istio release whose wire format it speaks, and the Go toolchain that
// built it. The components serve it as JSON on GET /version of their
// local HTTP ports (ztunnel's admin, the node agent's monitor, istiod's
// monitoring), and ambitctl version collects it from each.
package version

import (
	"encoding/json"
	"net/http"
	"runtime"

	"github.com/ambitmesh/ambit/api"
)

// Dev is the version of a binary built without a stamp (go build, go test).
const Dev = "dev"

// BuildTags are the build tags every Ambit binary is built with (the
// Makefile, deploy/images, the labs). grpcnotrace keeps gRPC from
// linking golang.org/x/net/trace, which imports html/template: a program
// that links text/template's reflective method calls keeps every
// exported method of every type it links, so the waypoint, ztunnel and
// istiod carried all of the Envoy API's generated Validate methods and
// getters (the waypoint's binary 27.4 MB instead of 22.4 MB, and about
// 4 MiB more of it resident). gRPC's own tracing (grpc.EnableTracing,
// /debug/requests) is the one thing lost; Ambit never turned it on.
const BuildTags = "grpcnotrace"

// Path is where components serve their Info.
const Path = "/version"

// version is set by the linker: -X github.com/ambitmesh/ambit/internal/version.version=<v>
// (deploy/images stamps the images' tag).
var version string

// Info describes one binary.
type Info struct {
	// Version is Ambit's release, Dev when not stamped.
	Version string `json:"version"`
	// IstioVersion is the Istio release whose APIs it speaks (api.IstioVersion).
	IstioVersion string `json:"istioVersion"`
	// GoVersion is the toolchain that built it.
	GoVersion string `json:"goVersion"`
}

// Get returns this binary's Info.
func Get() Info {
	v := version
	if v == "" {
		v = Dev
	}
	return Info{Version: v, IstioVersion: api.IstioVersion, GoVersion: runtime.Version()}
}

// Handler serves Get as JSON on GET requests.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "want GET", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(Get())
	})
}
