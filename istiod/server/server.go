// Package server assembles istiod: the ambient index watching the
// cluster, the delta xDS server fed by it, the CA, and the monitoring
// endpoint (metrics, readiness and, when enabled, debug dumps). It owns
// the listeners; the logic lives in istiod/ambient, istiod/authz,
// istiod/ca and istiod/xds.
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
	"sync/atomic"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/internal/mesh"
	"github.com/ambitmesh/ambit/istiod/ambient"
	"github.com/ambitmesh/ambit/istiod/ca"
	"github.com/ambitmesh/ambit/istiod/xds"
)

// Config is istiod's configuration, filled from flags by the main.
type Config struct {
	// XDSAddr serves plaintext delta xDS without authentication (Istio:
	// 15010); none when empty. Whoever reaches it reads every workload,
	// service and policy: for development and tests only.
	XDSAddr string
	// MonitoringAddr serves /metrics and /ready (Istio: 15014), and with
	// DebugEndpoints /debug/model and /debug/clients, all without
	// authentication; none when empty.
	MonitoringAddr string
	DebugEndpoints bool
	Ambient        ambient.Config
	// Quiet and MaxDebounce tune how bursts of cluster events fold into
	// one push; ambient's defaults when zero.
	Quiet, MaxDebounce time.Duration
	// SecureAddr serves the CA and delta xDS over TLS (Istio: 15012),
	// both only to callers with a service account token (audience
	// istio-ca, checked by TokenReview); empty runs no CA.
	SecureAddr string
	CA         CAConfig
}

// CAConfig configures the certificate authority.
type CAConfig struct {
	// Namespace holds the CA Secrets (istio-system when empty).
	Namespace string
	// NodeAgents may ask for the identities of pods on their node
	// ("namespace/name"; istio-system/ztunnel when empty).
	NodeAgents []string
	// CertTTL is the default lifetime of workload certificates (24h when
	// zero), MaxCertTTL the longest a caller may ask for.
	CertTTL, MaxCertTTL time.Duration
	// DNSNames of istiod's serving certificate on SecureAddr
	// (istiod.<namespace>.svc when empty).
	DNSNames []string
}

// Server is a configured istiod; Run starts it.
type Server struct {
	cfg   Config
	log   *slog.Logger
	index *ambient.Index
	xds   *xds.Server
	reg   *prometheus.Registry
	ready atomic.Bool

	kube                   kubernetes.Interface
	informers              informers.SharedInformerFactory
	cmInformers            informers.SharedInformerFactory
	xdsLis, monLis, secLis net.Listener
	authority              *ca.Authority
	status                 *statusWriter
}

// New builds istiod and opens its listeners, so that the addresses are
// known (and ports taken) before Run.
func New(cfg Config, kube kubernetes.Interface, istio istioclient.Interface, log *slog.Logger) (_ *Server, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.XDSAddr == "" && cfg.SecureAddr == "" {
		return nil, errors.New("new istiod: no xDS listener: want a secure address (15012), or a plaintext one for development")
	}
	if cfg.CA.Namespace == "" {
		cfg.CA.Namespace = "istio-system"
	}
	if len(cfg.CA.NodeAgents) == 0 {
		cfg.CA.NodeAgents = []string{cfg.CA.Namespace + "/ztunnel"}
	}
	if len(cfg.CA.DNSNames) == 0 {
		cfg.CA.DNSNames = []string{"istiod." + cfg.CA.Namespace + ".svc"}
	}
	s := &Server{cfg: cfg, log: log, reg: prometheus.NewRegistry(), kube: kube}
	// Managed fields are most of a typical object's size and nothing here
	// reads them: drop them from the caches, as Istio does.
	s.informers = informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithTransform(dropManagedFields))
	if istio != nil {
		s.status = newStatusWriter(istio, log.With("component", "status"))
	}
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.xds = xds.New(xds.Options{Log: log.With("component", "xds"), Registerer: s.reg})
	s.index, err = ambient.NewIndex(ambient.IndexOptions{
		Config: cfg.Ambient, Kube: kube, Istio: istio, OnChange: s.publish,
		Quiet: cfg.Quiet, Max: cfg.MaxDebounce, Log: log.With("component", "ambient"),
		Informers: s.informers,
	})
	if err != nil {
		return nil, err
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

// dropManagedFields is the informers' transform: it clears
// metadata.managedFields of every object.
func dropManagedFields(obj any) (any, error) {
	if m, err := meta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

// SecureAddr is the address of the TLS listener (CA and xDS), nil if none.
func (s *Server) SecureAddr() net.Addr {
	if s.secLis == nil {
		return nil
	}
	return s.secLis.Addr()
}

// Authority is the CA once Run has loaded it; nil before or without CA.
func (s *Server) Authority() *ca.Authority { return s.authority }

// startCA loads or creates the signing key, starts the root certificate
// publisher and returns the gRPC server for SecureAddr.
func (s *Server) startCA(ctx context.Context) (*grpc.Server, error) {
	td := s.cfg.Ambient.TrustDomain
	if td == "" {
		td = mesh.DefaultTrustDomain
	}
	a, src, err := ca.LoadOrCreate(ctx, s.kube, s.cfg.CA.Namespace, td)
	if err != nil {
		return nil, err
	}
	s.authority = a
	s.log.Info("certificate authority loaded", "source", src, logkey.Namespace, s.cfg.CA.Namespace)
	authn := ca.NewAuthenticator(s.kube, ca.AuthenticatorOptions{ClusterID: s.cfg.Ambient.ClusterID})
	svc, err := ca.NewService(ca.ServiceOptions{
		Authority: a, Kube: s.kube, Authenticator: authn, TrustDomain: td, Pods: s.index.Pods(), NodeAgents: s.cfg.CA.NodeAgents,
		DefaultTTL: s.cfg.CA.CertTTL, MaxTTL: s.cfg.CA.MaxCertTTL, Log: s.log.With("component", "ca"), Registerer: s.reg,
	})
	if err != nil {
		return nil, err
	}
	s.cmInformers = informers.NewSharedInformerFactoryWithOptions(s.kube, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = "metadata.name=" + ca.RootCertConfigMap
	}))
	pub, err := ca.NewRootCertPublisher(s.kube, a.RootPEM(), s.informers.Core().V1().Namespaces(), s.cmInformers.Core().V1().ConfigMaps(), s.log.With("component", "rootcert"))
	if err != nil {
		return nil, err
	}
	s.cmInformers.Start(ctx.Done())
	s.informers.Start(ctx.Done())
	// The impersonation rule reads pods: serve only with a synced cache.
	for typ, ok := range s.informers.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return nil, fmt.Errorf("sync informer %v: %w", typ, context.Cause(ctx))
		}
	}
	go pub.Run(ctx)
	cert, err := a.ServingCertificate(s.cfg.CA.DNSNames, 365*24*time.Hour)
	if err != nil {
		return nil, err
	}
	// xDS on 15012 is for authenticated clients only, as in Istio: the
	// same service account tokens as the CA takes (the CA checks its own
	// unary calls). Plaintext xDS (XDSAddr) is off unless configured.
	xdsLog := s.log.With("component", "xds")
	g := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})),
		grpc.ChainStreamInterceptor(authn.StreamInterceptor("/"+discovery.AggregatedDiscoveryService_ServiceDesc.ServiceName+"/", func(method string, err error) {
			xdsLog.Warn("xds stream refused", "method", method, logkey.Error, err)
		})),
	)
	svc.Register(g)
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
	addrs := make(map[string]proto.Message, len(d.Addresses))
	for k, v := range d.Addresses {
		addrs[k] = v
	}
	auths := make(map[string]proto.Message, len(d.Authorizations))
	for k, v := range d.Authorizations {
		auths[k] = v
	}
	// Policies first: a workload must never reference a policy its
	// client does not have yet.
	if err := s.xds.Apply(xds.AuthorizationType, auths, d.RemovedAuthorizations); err != nil {
		s.log.Error("publish authorizations", logkey.Error, err)
	}
	if err := s.xds.Apply(xds.AddressType, addrs, d.RemovedAddresses); err != nil {
		s.log.Error("publish addresses", logkey.Error, err)
	}
	if s.status != nil && d.PolicyStatus != nil {
		s.status.offer(d.PolicyStatus)
	}
	s.ready.Store(true)
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 4)
	var sec *grpc.Server
	if s.secLis != nil {
		var err error
		if sec, err = s.startCA(ctx); err != nil {
			return err
		}
		go func() {
			if err := sec.Serve(s.secLis); err != nil {
				errc <- fmt.Errorf("serve secure: %w", err)
			}
		}()
	}
	if s.status != nil {
		go s.status.run(ctx)
	}
	go func() { errc <- s.index.Run(ctx) }()
	var g *grpc.Server
	if s.xdsLis != nil {
		g = grpc.NewServer()
		s.xds.Register(g)
		go func() {
			if err := g.Serve(s.xdsLis); err != nil {
				errc <- fmt.Errorf("serve xds: %w", err)
			}
		}()
	}
	var hs *http.Server
	if s.monLis != nil {
		hs = &http.Server{Handler: s.monitoring(), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := hs.Serve(s.monLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve monitoring: %w", err)
			}
		}()
	}
	s.log.Info("istiod running", "xds", s.XDSAddr(), "secure", s.SecureAddr(), "monitoring", s.MonitoringAddr(), "debug_endpoints", s.cfg.DebugEndpoints)
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	cancel()
	if g != nil {
		g.Stop()
	}
	if sec != nil {
		sec.Stop()
	}
	if s.cmInformers != nil {
		s.cmInformers.Shutdown()
	}
	if hs != nil {
		hs.Close()
	}
	return err
}

// monitoring serves /metrics and /ready, and the debug dumps when
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
