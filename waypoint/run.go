package waypoint

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ambitmesh/ambit/internal/caclient"
	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/internal/xdsclient"
	"github.com/ambitmesh/ambit/waypoint/config"
)

// Options are the command's settings (flags and the pod's environment).
type Options struct {
	XDSAddress, CAAddress string
	// StaticConfig is a static configuration file (development mode:
	// no istiod), read once.
	StaticConfig string
	// RootCert is the mesh root PEM; TokenFile the bearer token for
	// istiod.
	RootCert, TokenFile string
	// FakeCADir is a test CA's directory (identity.LoadCA), for
	// development.
	FakeCADir                        string
	Node                             Node
	TrustDomain                      string
	HBONE, Admin, Metrics, Readiness string
	Drain                            time.Duration
	Log                              *slog.Logger
	// AccessLog receives one JSON line per request and TCP connection;
	// nil for none.
	AccessLog io.Writer
	// OnListening, if set, is called once every listener is open.
	OnListening func()
}

// Run runs the waypoint until ctx ends or /quitquitquit.
func Run(ctx context.Context, o Options) error {
	log := o.Log
	id := identity.Identity{TrustDomain: o.TrustDomain, Namespace: o.Node.PodNamespace, ServiceAccount: o.Node.ServiceAccount}
	if err := id.Validate(); err != nil {
		return fmt.Errorf("waypoint identity: %w", err)
	}
	var src identity.Source
	var roots *x509.CertPool
	switch {
	case o.FakeCADir != "":
		ca, err := identity.LoadCA(o.FakeCADir)
		if err != nil {
			return fmt.Errorf("load fake ca: %w", err)
		}
		src, roots = ca, ca.Roots()
	case o.CAAddress != "":
		r, err := caclient.LoadRoots(o.RootCert)
		if err != nil {
			return fmt.Errorf("load mesh roots: %w", err)
		}
		c, err := caclient.New(caclient.Config{Address: o.CAAddress, Roots: r, TokenFile: o.TokenFile, ClusterID: o.Node.ClusterID, Own: true})
		if err != nil {
			return err
		}
		defer c.Close()
		src, roots = c, r
	default:
		return errors.New("no certificate source: set --ca-address or --fake-ca-dir")
	}
	certs := &identity.Cache{Source: src}
	defer certs.Close()
	certs.Track(id)
	p, err := New(Config{Identity: id, Certificates: certs, Roots: roots, Log: log})
	if err != nil {
		return err
	}
	if o.Node.TrustDomain == "" {
		o.Node.TrustDomain = o.TrustDomain
	}
	cluster := o.Node.ClusterID
	if cluster == "" {
		cluster = "Kubernetes"
	}
	np := o.Node.Proto()
	p.Stats().SetNode(NodeInfo{Namespace: o.Node.PodNamespace, ClusterID: cluster, ID: np.GetId(), ServiceCluster: np.GetCluster()})
	p.Stats().SetAccessLog(o.AccessLog)
	reg := prometheus.NewRegistry()
	// Istio's metrics, and the process's own as ztunnel and istiod serve
	// them (go_*, process_*): its memory, GC target and GC cycles.
	reg.MustRegister(p.Stats(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	switch {
	case o.StaticConfig != "":
		r, err := config.LoadFile(o.StaticConfig)
		if err != nil {
			return err
		}
		snap, err := r.Build()
		if err != nil {
			return fmt.Errorf("static config %s: %w", o.StaticConfig, err)
		}
		p.Update(snap)
	case o.XDSAddress != "":
		xc, err := xdsclient.New(xdsclient.Config{
			Address: o.XDSAddress, Types: Types, Optional: Optional, Named: Named, Handler: &Handler{Proxy: p}, RootCAs: roots,
			TokenFile: o.TokenFile, ClusterID: o.Node.ClusterID, Node: o.Node.Proto(), Log: log, Registerer: reg,
		})
		if err != nil {
			return err
		}
		go xc.Run(ctx)
	default:
		return errors.New("no configuration source: set --xds-address or --static-config")
	}
	servers := []*http.Server{
		{Addr: o.Admin, Handler: withPprof(p.AdminHandler(reg, cancel))},
		{Addr: o.Metrics, Handler: p.AdminHandler(reg, nil)},
		{Addr: o.Readiness, Handler: p.ReadinessHandler()},
	}
	for _, s := range servers {
		ln, err := net.Listen("tcp", s.Addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", s.Addr, err)
		}
		go s.Serve(ln)
		defer func() {
			// Gracefully: /quitquitquit's own answer still goes out.
			sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer scancel()
			s.Shutdown(sctx)
		}()
	}
	ln, err := net.Listen("tcp", o.HBONE)
	if err != nil {
		return fmt.Errorf("listen hbone %s: %w", o.HBONE, err)
	}
	go p.ServeHBONE(ln)
	if o.OnListening != nil {
		o.OnListening()
	}
	log.Info("waypoint started", logkey.Identity, id.String(), logkey.Addr, o.HBONE)
	<-ctx.Done()
	sctx, scancel := context.WithTimeout(context.Background(), o.Drain)
	defer scancel()
	return p.Shutdown(sctx)
}

// Signals that end the waypoint.
var Signals = []os.Signal{syscall.SIGTERM, os.Interrupt}
