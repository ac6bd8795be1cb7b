// Package server assembles istiod: the ambient index watching the
// cluster, the delta xDS server fed by it, and the monitoring endpoint
// (metrics, readiness, debug dumps). It owns the listeners; the logic
// lives in istiod/ambient, istiod/authz and istiod/xds.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/client-go/kubernetes"

	"github.com/ambitmesh/ambit/istiod/ambient"
	"github.com/ambitmesh/ambit/istiod/xds"
)

// Config is istiod's configuration, filled from flags by the main.
type Config struct {
	// XDSAddr serves plaintext delta xDS (Istio: 15010).
	XDSAddr string
	// MonitoringAddr serves /metrics, /ready and /debug/* (Istio: 15014).
	MonitoringAddr string
	Ambient        ambient.Config
	// Quiet and MaxDebounce tune how bursts of cluster events fold into
	// one push; ambient's defaults when zero.
	Quiet, MaxDebounce time.Duration
}

// Server is a configured istiod; Run starts it.
type Server struct {
	cfg   Config
	log   *slog.Logger
	index *ambient.Index
	xds   *xds.Server
	reg   *prometheus.Registry
	ready atomic.Bool

	xdsLis, monLis net.Listener
}

// New builds istiod and opens its listeners, so that the addresses are
// known (and ports taken) before Run.
func New(cfg Config, kube kubernetes.Interface, istio istioclient.Interface, log *slog.Logger) (_ *Server, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log, reg: prometheus.NewRegistry()}
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.xds = xds.New(xds.Options{Log: log.With("component", "xds"), Registerer: s.reg})
	s.index, err = ambient.NewIndex(ambient.IndexOptions{
		Config: cfg.Ambient, Kube: kube, Istio: istio, OnModel: s.publish,
		Quiet: cfg.Quiet, Max: cfg.MaxDebounce, Log: log.With("component", "ambient"),
	})
	if err != nil {
		return nil, err
	}
	if s.xdsLis, err = net.Listen("tcp", cfg.XDSAddr); err != nil {
		return nil, fmt.Errorf("listen xds: %w", err)
	}
	if cfg.MonitoringAddr != "" {
		if s.monLis, err = net.Listen("tcp", cfg.MonitoringAddr); err != nil {
			s.xdsLis.Close()
			return nil, fmt.Errorf("listen monitoring: %w", err)
		}
	}
	return s, nil
}

// XDSAddr is the address the xDS listener is bound to.
func (s *Server) XDSAddr() net.Addr { return s.xdsLis.Addr() }

// MonitoringAddr is the address of the monitoring listener, nil if none.
func (s *Server) MonitoringAddr() net.Addr {
	if s.monLis == nil {
		return nil
	}
	return s.monLis.Addr()
}

func (s *Server) publish(m ambient.Model) {
	addrs := make(map[string]proto.Message, len(m.Addresses))
	for k, v := range m.Addresses {
		addrs[k] = v
	}
	auths := make(map[string]proto.Message, len(m.Authorizations))
	for k, v := range m.Authorizations {
		auths[k] = v
	}
	// Policies first: a workload must never reference a policy its
	// client does not have yet.
	if err := s.xds.Update(xds.AuthorizationType, auths); err != nil {
		s.log.Error("publish authorizations", "err", err)
	}
	if err := s.xds.Update(xds.AddressType, addrs); err != nil {
		s.log.Error("publish addresses", "err", err)
	}
	s.ready.Store(true)
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g := grpc.NewServer()
	s.xds.Register(g)
	errc := make(chan error, 3)
	go func() { errc <- s.index.Run(ctx) }()
	go func() {
		if err := g.Serve(s.xdsLis); err != nil {
			errc <- fmt.Errorf("serve xds: %w", err)
		}
	}()
	var hs *http.Server
	if s.monLis != nil {
		hs = &http.Server{Handler: s.monitoring(), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := hs.Serve(s.monLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve monitoring: %w", err)
			}
		}()
	}
	s.log.Info("istiod running", "xds", s.xdsLis.Addr(), "monitoring", s.MonitoringAddr())
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	cancel()
	g.Stop()
	if hs != nil {
		hs.Close()
	}
	return err
}

func (s *Server) monitoring() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !s.ready.Load() {
			http.Error(w, "not ready: no model built yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("/debug/clients", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(s.xds.Clients())
	})
	mux.HandleFunc("/debug/model", func(w http.ResponseWriter, _ *http.Request) {
		m, builds := s.index.Model()
		out := struct {
			Builds         uint64                     `json:"builds"`
			Addresses      map[string]json.RawMessage `json:"addresses"`
			Authorizations map[string]json.RawMessage `json:"authorizations"`
			PolicyStatus   map[string]string          `json:"policyStatus"`
		}{builds, map[string]json.RawMessage{}, map[string]json.RawMessage{}, m.PolicyStatus}
		for k, v := range m.Addresses {
			out.Addresses[k], _ = protojson.Marshal(v)
		}
		for k, v := range m.Authorizations {
			out.Authorizations[k], _ = protojson.Marshal(v)
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(out)
	})
	return mux
}
