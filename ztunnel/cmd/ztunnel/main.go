// Command ztunnel is Ambit's node tunnel. This build runs in development
// mode only: workloads and policies come from a static file
// (--local-config) and certificates from a file-based test CA
// (--fake-ca-dir). The workload-discovery and CA clients for istiod are
// not built yet, so without both flags it refuses to start rather than
// run with a mode meant for tests.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/ztunnel"
	"github.com/ambitmesh/ambit/ztunnel/accesslog"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

type options struct {
	node, localConfig, fakeCADir, trustDomain string
	outbound, admin, metrics, readiness       string
	logLevel                                  string
	redirect                                  string
	drain                                     time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.node, "node", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	flag.StringVar(&o.localConfig, "local-config", os.Getenv("LOCAL_XDS_PATH"), "static config file of workloads, services and policies, for development (default $LOCAL_XDS_PATH); SIGHUP reloads it")
	flag.StringVar(&o.fakeCADir, "fake-ca-dir", "", "directory of a file-based test CA (ca-cert.pem, ca-key.pem), created if empty; development only")
	flag.StringVar(&o.trustDomain, "trust-domain", identity.DefaultTrustDomain, "trust domain of a test CA this run creates")
	flag.StringVar(&o.outbound, "outbound", ":15001", "outbound listener")
	flag.StringVar(&o.redirect, "redirect", "tproxy", "how captured connections arrive: tproxy (Ambit's eBPF redirection, transparent listeners) or nat (iptables REDIRECT, SO_ORIGINAL_DST)")
	flag.StringVar(&o.admin, "admin", "127.0.0.1:15000", "admin listener (config dump, pprof, logging)")
	flag.StringVar(&o.metrics, "metrics", ":15020", "Prometheus metrics listener")
	flag.StringVar(&o.readiness, "readiness", ":15021", "readiness listener")
	flag.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	flag.DurationVar(&o.drain, "drain-timeout", 30*time.Second, "how long open connections may finish on shutdown")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "ztunnel:", err)
		os.Exit(1)
	}
}

// localMark is the mark Ambit's eBPF redirection routes locally
// (bpf/redirect.Mark), used for HBONE to workloads on this node.
const localMark = 0x400

func run(o options) error {
	if o.localConfig == "" || o.fakeCADir == "" {
		return errors.New("the istiod xDS and CA clients are not built yet: run in development mode with --local-config and --fake-ca-dir")
	}
	if o.redirect != "tproxy" && o.redirect != "nat" {
		return fmt.Errorf("--redirect %q: want tproxy or nat", o.redirect)
	}
	var level slog.LevelVar
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("parse --log-level %q: %w", o.logLevel, err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: &level}))
	ca, err := loadOrCreateCA(o.fakeCADir, o.trustDomain)
	if err != nil {
		return err
	}
	store := config.NewStore()
	if err := config.LoadFile(o.localConfig, store); err != nil {
		return err
	}
	z, err := ztunnel.New(ztunnel.Config{
		Node: o.node, Store: store, Certificates: ca, Roots: ca.Roots(),
		Transparent:  o.redirect == "tproxy",
		LocalMark:    localMark,
		OutboundAddr: o.outbound, AdminAddr: o.admin, MetricsAddr: o.metrics, ReadinessAddr: o.readiness,
		Log: log, LogLevel: &level,
	})
	if err != nil {
		return err
	}
	if err := z.Start(); err != nil {
		return err
	}
	log.Warn("running in development mode: static config and test CA", accesslog.KeyConfig, o.localConfig, accesslog.KeyCA, o.fakeCADir)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	for sig := range sigs {
		if sig == syscall.SIGHUP {
			if err := config.LoadFile(o.localConfig, store); err != nil {
				log.Error("reload config; keeping the last good one", accesslog.KeyError, err.Error())
			} else {
				log.Info("reloaded config", accesslog.KeyVersion, store.Snapshot().Version)
			}
			continue
		}
		log.Info("draining", accesslog.KeySignal, sig.String(), accesslog.KeyDeadline, o.drain.String())
		ctx, cancel := context.WithTimeout(context.Background(), o.drain)
		err := z.Shutdown(ctx)
		cancel()
		return err
	}
	return nil
}

func loadOrCreateCA(dir, trustDomain string) (*identity.CA, error) {
	ca, err := identity.LoadCA(dir)
	if err == nil {
		return ca, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	ca, err = identity.NewCA(trustDomain)
	if err != nil {
		return nil, err
	}
	if err := ca.WriteFiles(dir); err != nil {
		return nil, err
	}
	return ca, nil
}
