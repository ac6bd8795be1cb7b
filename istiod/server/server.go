// Package server assembles istiod: the ambient index watching the
// cluster, the delta xDS server fed by it, with Gateway API the
// waypoints' Envoy xDS (istiod/waypoint), the CA, and the monitoring
// endpoint (metrics, readiness and, when enabled, debug dumps). It owns
// the listeners, the cluster's informers (istiod/cluster) and istiod's
// defaults (Config.WithDefaults); the logic lives in istiod/ambient,
// istiod/authz, istiod/ca and istiod/xds.
package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/encoding/protojson"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/internal/version"
	"github.com/ambitmesh/ambit/istiod/ambient"
	"github.com/ambitmesh/ambit/istiod/ca"
	"github.com/ambitmesh/ambit/istiod/cluster"
	"github.com/ambitmesh/ambit/istiod/gateway"
	"github.com/ambitmesh/ambit/istiod/meshconfig"
	"github.com/ambitmesh/ambit/istiod/waypoint"
	"github.com/ambitmesh/ambit/istiod/xds"
)

// Server is a configured istiod; Run starts it.
//
// It owns the cluster's clients and informer factories (istiod/cluster)
// and the listeners. Its subsystems are each built, registered and run
// the same way: the ambient index, the CA and (with Gateway API) the
// GatewayClass controller register the informers they read on the one set
// of factories, and the ambient index its resource types on the xDS
// server, in New; Run starts the factories once, waits
// for them to sync, and runs the subsystems.
type Server struct {
	cfg   Config
	log   *slog.Logger
	index *ambient.Index
	xds   *xds.Server
	reg   *prometheus.Registry
	ready atomic.Bool

	cluster                *cluster.Cluster
	xdsLis, monLis, secLis net.Listener
	ca                     *ca.CA // nil without SecureAddr
	status                 *statusWriter
	classes                *gateway.ClassController // nil without a Gateway API client
	waypointXDS            *waypoint.Controller     // nil without a Gateway API client
	waypoints              *gateway.WaypointController
	bindings               *gateway.BindingWriter
	// mesh watches MeshConfig (ConfigMap istio in istiod's namespace).
	mesh *meshconfig.Watcher
}

// Clients are the cluster's clients istiod uses. Istio nil watches no
// security policies (their CRDs are not installed); GatewayAPI nil runs
// no Gateway API controller.
type Clients struct {
	Kube       kubernetes.Interface
	Istio      istioclient.Interface
	GatewayAPI gatewayclient.Interface
}

// New builds istiod without Gateway API (NewWithClients).
func New(cfg Config, kube kubernetes.Interface, istio istioclient.Interface, log *slog.Logger) (*Server, error) {
	return NewWithClients(cfg, Clients{Kube: kube, Istio: istio}, log)
}

// NewWithClients builds istiod and opens its listeners, so that the
// addresses are known (and ports taken) before Run.
func NewWithClients(cfg Config, clients Clients, log *slog.Logger) (_ *Server, err error) {
	kube, istio := clients.Kube, clients.Istio
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if kube == nil {
		return nil, errors.New("new istiod: no Kubernetes client")
	}
	if cfg.XDSAddr == "" && cfg.SecureAddr == "" {
		return nil, errors.New("new istiod: no xDS listener: want a secure address (15012), or a plaintext one for development")
	}
	cfg = cfg.WithDefaults()
	s := &Server{cfg: cfg, log: log, reg: prometheus.NewRegistry(), cluster: cluster.NewWithGatewayAPI(kube, istio, clients.GatewayAPI)}
	if istio != nil {
		s.status = newStatusWriter(istio, log.With("component", "status"))
	}
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.index = ambient.NewIndex(ambient.IndexOptions{
		Config: cfg.Ambient, OnChange: s.publish, OnWaypointStatus: s.waypointStatus,
		Quiet: cfg.Quiet, Max: cfg.MaxDebounce, Log: log.With("component", "ambient"),
	})
	if err := s.index.RegisterInformers(s.cluster); err != nil {
		return nil, err
	}
	// The xDS server serves the resource types its translators register:
	// the ambient index's, and with Gateway API the waypoints' Envoy
	// types (one partition per waypoint).
	types := ambient.XDSTypes()
	if clients.GatewayAPI != nil {
		s.waypointXDS = waypoint.NewController(waypoint.ControllerOptions{
			Config: cfg.Ambient, Quiet: cfg.Quiet, Max: cfg.MaxDebounce, Log: log.With("component", "waypoint"),
		})
		if err := s.waypointXDS.RegisterInformers(s.cluster); err != nil {
			return nil, err
		}
		types = append(types, s.waypointXDS.XDSTypes()...)
		// MeshConfig, as Istio's istiod reads it: ConfigMap istio, key
		// mesh, in istiod's namespace; every change reaches the waypoints.
		s.mesh = meshconfig.NewWatcher(kube, cfg.CA.Namespace, log.With("component", "meshconfig"))
		s.mesh.Subscribe(s.waypointXDS.SetMesh)
		s.cluster.AddInformer(s.mesh.Informer())
	}
	s.xds = xds.New(xds.Options{Log: log.With("component", "xds"), Registerer: s.reg, Types: types})
	if cfg.SecureAddr != "" {
		if s.ca, err = ca.New(kube, ca.Options{
			Namespace: cfg.CA.Namespace, TrustDomain: cfg.Ambient.TrustDomain, ClusterID: cfg.Ambient.ClusterID,
			NodeAgents: cfg.CA.NodeAgents, DefaultTTL: cfg.CA.CertTTL, MaxTTL: cfg.CA.MaxCertTTL,
			Log: log.With("component", "ca"), Registerer: s.reg,
		}); err != nil {
			return nil, err
		}
		if err := s.ca.RegisterInformers(s.cluster); err != nil {
			return nil, err
		}
	}
	if clients.GatewayAPI != nil {
		s.classes = gateway.NewClassController(log.With("component", "gateway"))
		if err := s.classes.RegisterInformers(s.cluster); err != nil {
			return nil, err
		}
		s.waypoints = gateway.NewWaypointController(gateway.WaypointOptions{
			Log: log.With("component", "waypoints"), Namespace: cfg.CA.Namespace,
			Deploy: gateway.DeployConfig{
				Image: cfg.Waypoint.Image, ImagePullPolicy: cfg.Waypoint.ImagePullPolicy, IstiodAddress: cfg.Waypoint.IstiodAddress,
				TrustDomain: cfg.Ambient.TrustDomain, ClusterID: cfg.Ambient.ClusterID, DomainSuffix: cfg.Ambient.DomainSuffix,
			},
		})
		if err := s.waypoints.RegisterInformers(s.cluster); err != nil {
			return nil, err
		}
		s.bindings = gateway.NewBindingWriter(log.With("component", "waypoints"))
		s.bindings.RegisterInformers(s.cluster)
	}
	for _, l := range []struct {
		what, addr string
		lis        *net.Listener
	}{{"xds", cfg.XDSAddr, &s.xdsLis}, {"monitoring", cfg.MonitoringAddr, &s.monLis}, {"secure", cfg.SecureAddr, &s.secLis}} {
		if l.addr == "" {
			continue
		}
		if *l.lis, err = net.Listen("tcp", l.addr); err != nil {
			s.closeListeners()
			return nil, fmt.Errorf("listen %s: %w", l.what, err)
		}
	}
	return s, nil
}

func (s *Server) closeListeners() {
	for _, l := range []net.Listener{s.xdsLis, s.monLis, s.secLis} {
		if l != nil {
			l.Close()
		}
	}
}

// SecureAddr is the address of the TLS listener (CA and xDS), nil if none.
func (s *Server) SecureAddr() net.Addr {
	if s.secLis == nil {
		return nil
	}
	return s.secLis.Addr()
}

// Authority is the CA once Run has loaded it; nil before or without CA.
func (s *Server) Authority() *ca.Authority {
	if s.ca == nil {
		return nil
	}
	return s.ca.Authority()
}

// secureServer is the gRPC server of SecureAddr: the CA and delta xDS
// over TLS with istiod's serving certificate; after the CA's Load.
func (s *Server) secureServer() (*grpc.Server, error) {
	cert, err := s.ca.Authority().ServingCertificate(s.cfg.CA.DNSNames, servingCertTTL)
	if err != nil {
		return nil, err
	}
	// xDS on 15012 is for authenticated clients only, as in Istio: the
	// same service account tokens as the CA takes (the CA checks its own
	// unary calls). Plaintext xDS (XDSAddr) is off unless configured.
	xdsLog := s.log.With("component", "xds")
	g := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})),
		grpc.ChainStreamInterceptor(s.ca.Authenticator().StreamInterceptor("/"+discovery.AggregatedDiscoveryService_ServiceDesc.ServiceName+"/", func(method string, err error) {
			xdsLog.Warn("xds stream refused", "method", method, logkey.Error, err)
		})),
	)
	s.ca.Register(g)
	s.xds.Register(g)
	return g, nil
}

// XDSAddr is the address of the plaintext xDS listener, nil if none.
func (s *Server) XDSAddr() net.Addr {
	if s.xdsLis == nil {
		return nil
	}
	return s.xdsLis.Addr()
}

// MonitoringAddr is the address of the monitoring listener, nil if none.
func (s *Server) MonitoringAddr() net.Addr {
	if s.monLis == nil {
		return nil
	}
	return s.monLis.Addr()
}

// publish hands what changed in the model to the xDS server.
func (s *Server) publish(d ambient.Delta) {
	if err := d.Publish(s.xds); err != nil {
		s.log.Error("publish ambient model", logkey.Error, err)
	}
	if s.waypointXDS != nil {
		s.waypointXDS.OnModel(d)
	}
	if s.status != nil && d.PolicyStatus != nil {
		s.status.offer(d.PolicyStatus)
	}
	s.ready.Store(true)
}

// waypointStatus hands the waypoint bindings' statuses to their writers
// (with Gateway API): the bound objects' to the binding writer, the
// service accounts claimed twice to the waypoint controller.
func (s *Server) waypointStatus(st map[string]ambient.BindingStatus) {
	if s.bindings == nil {
		return
	}
	bindings := map[string]gateway.Binding{}
	conflicts := map[types.NamespacedName]string{}
	for k, v := range st {
		kind, rest, _ := strings.Cut(k, "/")
		switch kind {
		case "Gateway":
			if v.Reason == ambient.ReasonWaypointConflict {
				ns, name, _ := strings.Cut(rest, "/")
				conflicts[types.NamespacedName{Namespace: ns, Name: name}] = v.Message
			}
		default:
			bindings[k] = gateway.Binding(v)
		}
	}
	s.bindings.Offer(bindings)
	s.waypoints.SetClaimConflicts(conflicts)
}

// Run serves until ctx ends: the CA loads its key, the informers start
// and sync, then the subsystems run and the listeners serve (monitoring
// and plaintext xDS at once, answering from empty state until then).
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 5)
	var hs *http.Server
	if s.monLis != nil {
		hs = &http.Server{Handler: s.monitoring(), ReadHeaderTimeout: 10 * time.Second}
		defer hs.Close()
		go func() {
			if err := hs.Serve(s.monLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve monitoring: %w", err)
			}
		}()
	}
	if s.xdsLis != nil {
		g := grpc.NewServer()
		s.xds.Register(g)
		defer g.Stop()
		go func() {
			if err := g.Serve(s.xdsLis); err != nil {
				errc <- fmt.Errorf("serve xds: %w", err)
			}
		}()
	}
	if s.ca != nil {
		if err := s.ca.Load(ctx); err != nil {
			return stopped(ctx, err)
		}
	}
	// The one place the informers start: every subsystem registered its
	// own in New. Shutdown waits for their goroutines once ctx is done.
	s.cluster.Start(ctx)
	defer s.cluster.Shutdown()
	defer cancel()
	// The CA's node agent rule reads pods: serve only with synced caches.
	if err := s.cluster.WaitForCacheSync(ctx); err != nil {
		return stopped(ctx, err)
	}
	if s.ca != nil {
		sec, err := s.secureServer()
		if err != nil {
			return err
		}
		defer sec.Stop()
		go s.ca.Run(ctx)
		go func() {
			if err := sec.Serve(s.secLis); err != nil {
				errc <- fmt.Errorf("serve secure: %w", err)
			}
		}()
	}
	if s.status != nil {
		go s.status.run(ctx)
	}
	if s.classes != nil {
		go s.classes.Run(ctx)
		go s.waypoints.Run(ctx)
		go s.bindings.Run(ctx)
	}
	go func() { errc <- s.index.Run(ctx) }()
	if s.mesh != nil {
		go s.mesh.Run(ctx)
	}
	if s.waypointXDS != nil {
		go func() { errc <- s.waypointXDS.Run(ctx, s.xds) }()
	}
	s.log.Info("istiod running", "xds", s.XDSAddr(), "secure", s.SecureAddr(), "monitoring", s.MonitoringAddr(), "debug_endpoints", s.cfg.DebugEndpoints)
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

// stopped is nil when ctx ended (a stop while starting is no failure), err
// otherwise.
func stopped(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// monitoring serves /metrics, /ready and /version, and the debug dumps when
// enabled: they show every workload and client, to anyone who reaches
// the port.
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
	mux.Handle(version.Path, version.Handler())
	if !s.cfg.DebugEndpoints {
		return mux
	}
	mux.HandleFunc("/debug/clients", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(s.xds.Clients())
	})
	mux.HandleFunc("/debug/model", func(w http.ResponseWriter, _ *http.Request) {
		m, builds := s.index.Model()
		out := struct {
			Builds         uint64                           `json:"builds"`
			Addresses      map[string]json.RawMessage       `json:"addresses"`
			Authorizations map[string]json.RawMessage       `json:"authorizations"`
			PolicyStatus   map[string]string                `json:"policyStatus"`
			WaypointStatus map[string]ambient.BindingStatus `json:"waypointStatus"`
		}{builds, map[string]json.RawMessage{}, map[string]json.RawMessage{}, m.PolicyStatus, m.WaypointStatus}
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
