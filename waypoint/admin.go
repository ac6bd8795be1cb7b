package waypoint

import (
	"context"
	"net/http"
	"net/http/pprof"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambitmesh/ambit/internal/anytypes"
)

// ConfigDump is the current configuration in Envoy's admin ConfigDump
// shape (listeners, clusters, endpoints), so that Envoy's and Istio's
// tooling can read it.
func (p *Proxy) ConfigDump() ([]byte, error) {
	dump := &adminv3.ConfigDump{}
	snap := p.snap.Load()
	add := func(m proto.Message) error {
		a, err := anypb.New(m)
		if err != nil {
			return err
		}
		dump.Configs = append(dump.Configs, a)
		return nil
	}
	ld, cd, ed := &adminv3.ListenersConfigDump{}, &adminv3.ClustersConfigDump{}, &adminv3.EndpointsConfigDump{}
	if snap != nil {
		for _, l := range snap.RawListeners {
			a, err := anypb.New(l)
			if err != nil {
				return nil, err
			}
			ld.DynamicListeners = append(ld.DynamicListeners, &adminv3.ListenersConfigDump_DynamicListener{
				Name: l.GetName(), ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{Listener: a}})
		}
		for _, c := range snap.RawClusters {
			a, err := anypb.New(c)
			if err != nil {
				return nil, err
			}
			cd.DynamicActiveClusters = append(cd.DynamicActiveClusters, &adminv3.ClustersConfigDump_DynamicCluster{Cluster: a})
		}
		for _, e := range snap.RawEndpoints {
			a, err := anypb.New(e)
			if err != nil {
				return nil, err
			}
			ed.DynamicEndpointConfigs = append(ed.DynamicEndpointConfigs, &adminv3.EndpointsConfigDump_DynamicEndpointConfig{EndpointConfig: a})
		}
	}
	for _, m := range []proto.Message{cd, ed, ld} {
		if err := add(m); err != nil {
			return nil, err
		}
	}
	return marshalDump(dump)
}

// marshalDump renders a config dump as Envoy's admin does. Istio's xDS
// carries extensions whose types are Istio's proxy's (peer metadata,
// metadata exchange, ...) and not linked into the waypoint; protojson
// cannot expand those and would fail the whole dump, so they are shown
// with their type URL and no fields.
func marshalDump(m proto.Message) ([]byte, error) {
	return protojson.MarshalOptions{Indent: "  ", Resolver: anytypes.Lenient{}}.Marshal(m)
}

// Ready is nil once the proxy has a configuration and its certificate.
func (p *Proxy) Ready(ctx context.Context) error {
	if p.snap.Load() == nil {
		return errNotConfigured
	}
	_, err := p.cfg.Certificates.Certificate(ctx, p.cfg.Identity)
	return err
}

type readyError string

func (e readyError) Error() string { return string(e) }

const errNotConfigured = readyError("no configuration yet")

// AdminHandler serves Envoy's admin paths the waypoint supports:
// /config_dump, /stats (Envoy's cluster statistics), /stats/prometheus,
// /ready and POST /quitquitquit (which calls quit).
func (p *Proxy) AdminHandler(reg *prometheus.Registry, quit func()) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/config_dump", func(w http.ResponseWriter, r *http.Request) {
		b, err := p.ConfigDump()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
	})
	prom := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	mux.Handle("/stats/prometheus", prom)
	mux.HandleFunc("/stats", p.statsHandler(prom))
	mux.HandleFunc("/ready", p.readyHandler)
	mux.HandleFunc("/quitquitquit", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		w.Write([]byte("OK\n"))
		if quit != nil {
			go quit()
		}
	})
	return mux
}

// withPprof adds Go's profiles under /debug/pprof/ to h, for the admin
// listener only (loopback by default, as ztunnel's admin): how the
// waypoint benchmark profiles the pinned process (docs/performance.md).
func withPprof(h http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", h)
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// ReadinessHandler serves /healthz/ready on the readiness port.
func (p *Proxy) ReadinessHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz/ready", p.readyHandler)
	return mux
}

func (p *Proxy) readyHandler(w http.ResponseWriter, r *http.Request) {
	if err := p.Ready(r.Context()); err != nil {
		http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("LIVE\n"))
}
