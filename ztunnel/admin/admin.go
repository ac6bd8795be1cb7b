// Package admin is the node tunnel's local admin interface (served on
// 127.0.0.1:15000): the config dump, the Go profiler, and the log level;
// and its readiness endpoint (15021). The admin interface also says which
// version runs (/version).
package admin

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"strings"

	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/internal/version"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

// Dump is what /config_dump shows: the model ztunnel runs with and the
// certificates it holds (never their keys). Readers (the lab, tools)
// decode it with this type without linking the tunnel itself.
type Dump struct {
	Node         string                  `json:"node"`
	Version      uint64                  `json:"version"`
	Workloads    []*config.Workload      `json:"workloads"`
	Services     []*config.Service       `json:"services"`
	Policies     []*config.Authorization `json:"policies"`
	Certificates []identity.CertInfo     `json:"certificates"`
}

// Options is what the admin handler shows and controls.
type Options struct {
	// Dump returns what /config_dump shows, marshalled as JSON.
	Dump func() any
	// Level is the log level /logging reads and sets.
	Level *slog.LevelVar
}

// Handler serves /config_dump, /version (internal/version), /debug/pprof/
// and /logging.
func Handler(o Options) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(o.Dump()); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	mux.Handle("GET "+version.Path, version.Handler())
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/logging", func(w http.ResponseWriter, r *http.Request) {
		if o.Level == nil {
			http.Error(w, "log level is not adjustable", http.StatusNotImplemented)
			return
		}
		if lv := r.URL.Query().Get("level"); lv != "" {
			if r.Method != http.MethodPost {
				http.Error(w, "set the level with POST /logging?level=<debug|info|warn|error>", http.StatusMethodNotAllowed)
				return
			}
			var l slog.Level
			if err := l.UnmarshalText([]byte(lv)); err != nil {
				http.Error(w, fmt.Sprintf("level %q: want debug, info, warn or error", lv), http.StatusBadRequest)
				return
			}
			o.Level.Set(l)
		}
		fmt.Fprintf(w, "level: %s\n", strings.ToLower(o.Level.Level().String()))
	})
	return mux
}

// Readiness answers /healthz/ready with 200 once ready reports true and
// 503 before.
func Readiness(ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// Liveness answers /healthz/live with 200 whenever the process can
// answer at all.
func Liveness() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/live", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "live")
	})
	return mux
}
