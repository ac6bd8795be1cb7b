package waypoint

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambitmesh/ambit/internal/anytypes"
)

// ConfigDump is the current configuration in Envoy's admin ConfigDump
// shape (listeners, clusters, endpoints), so that Envoy's and Istio's
// tooling can read it: the JSON protojson writes for an
// envoy.admin.v3.ConfigDump of a ClustersConfigDump, an
// EndpointsConfigDump and a ListenersConfigDump, in that order, indented.
// The envelope is written here rather than by protojson from the admin
// types: those were 0.65 MB of the binary (and of its resident memory)
// for three lists of Anys. The resources inside are protojson's.
func (p *Proxy) ConfigDump() ([]byte, error) {
	var (
		ls []*listenerv3.Listener
		cs []*clusterv3.Cluster
		es []*endpointv3.ClusterLoadAssignment
	)
	if snap := p.snap.Load(); snap != nil {
		ls, cs, es = snap.RawListeners, snap.RawClusters, snap.RawEndpoints
	}
	b := []byte(`{"configs":[`)
	b, err := appendSection(b, "ClustersConfigDump", "dynamicActiveClusters", cs, func(b []byte, c *clusterv3.Cluster) ([]byte, error) {
		b, err := appendAny(append(b, `{"cluster":`...), c)
		return append(b, '}'), err
	})
	if err != nil {
		return nil, err
	}
	b, err = appendSection(append(b, ','), "EndpointsConfigDump", "dynamicEndpointConfigs", es, func(b []byte, e *endpointv3.ClusterLoadAssignment) ([]byte, error) {
		b, err := appendAny(append(b, `{"endpointConfig":`...), e)
		return append(b, '}'), err
	})
	if err != nil {
		return nil, err
	}
	b, err = appendSection(append(b, ','), "ListenersConfigDump", "dynamicListeners", ls, func(b []byte, l *listenerv3.Listener) ([]byte, error) {
		b = append(b, '{')
		if name := l.GetName(); name != "" {
			// As protojson, which leaves out an empty string.
			q, err := json.Marshal(name)
			if err != nil {
				return nil, fmt.Errorf("dump listener name %q: %w", name, err)
			}
			b = append(append(append(b, `"name":`...), q...), ',')
		}
		b, err := appendAny(append(b, `"activeState":{"listener":`...), l)
		return append(b, "}}"...), err
	})
	if err != nil {
		return nil, err
	}
	b = append(b, "]}"...)
	var out bytes.Buffer
	out.Grow(2 * len(b))
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return nil, fmt.Errorf("indent config dump: %w", err)
	}
	return out.Bytes(), nil
}

// adminTypeURL is the type URL prefix of Envoy's admin messages.
const adminTypeURL = "type.googleapis.com/envoy.admin.v3."

// appendSection appends the config dump section of type
// envoy.admin.v3.<typ>: a list under key of one entry per message of ms,
// each written by entry; no key when there are none, as protojson leaves
// out an empty repeated field.
func appendSection[M proto.Message](b []byte, typ, key string, ms []M, entry func([]byte, M) ([]byte, error)) ([]byte, error) {
	b = append(b, `{"@type":"`+adminTypeURL+typ+`"`...)
	if len(ms) > 0 {
		b = append(b, `,"`+key+`":[`...)
		for i, m := range ms {
			if i > 0 {
				b = append(b, ',')
			}
			var err error
			if b, err = entry(b, m); err != nil {
				return nil, err
			}
		}
		b = append(b, ']')
	}
	return append(b, '}'), nil
}

// appendAny appends m as protojson writes it in a google.protobuf.Any: its
// type URL under "@type", then its fields. Istio's xDS carries
// extensions whose types are Istio's proxy's (peer metadata, metadata
// exchange, ...) and not linked into the waypoint; protojson cannot
// expand those and would fail the whole dump, so they are shown with
// their type URL and no fields (anytypes.Lenient).
func appendAny(b []byte, m proto.Message) ([]byte, error) {
	a, err := anypb.New(m)
	if err == nil {
		b, err = protojson.MarshalOptions{Resolver: anytypes.Lenient{}}.MarshalAppend(b, a)
	}
	if err != nil {
		return nil, fmt.Errorf("dump %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	return b, nil
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
