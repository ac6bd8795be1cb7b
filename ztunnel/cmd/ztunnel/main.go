// Command ztunnel is Ambit's node tunnel. Workloads, services and
// policies come from istiod's workload discovery (--xds-address) and
// certificates from istiod's CA (--ca-address). For development, a static
// file (--local-config) and a file-based test CA (--fake-ca-dir) stand in
// for them.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/ambitmesh/ambit/api"
	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/internal/memprofile"
	"github.com/ambitmesh/ambit/internal/mesh"
	"github.com/ambitmesh/ambit/internal/origdst"
	"github.com/ambitmesh/ambit/ztunnel"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

type options struct {
	node, localConfig                             string
	clusterID                                     string
	xdsAddress, xdsServerName                     string
	xdsRootCert, xdsToken                         string
	xdsPlaintext                                  bool
	outbound, admin, metrics, readiness, liveness string
	logLevel                                      string
	redirect                                      string
	preserveSource                                bool
	podPath                                       bool
	handover                                      bool
	handoverWait                                  time.Duration
	drain                                         time.Duration
	certs                                         certFlags
}

func main() {
	var o options
	flag.StringVar(&o.node, "node", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	flag.StringVar(&o.clusterID, "cluster-id", clusterIDFromEnv(), "this cluster's id, sent to istiod with every xDS and CA call (default $ISTIO_META_CLUSTER_ID, else $CLUSTER_ID, else "+api.DefaultClusterID+", as Istio's ztunnel)")
	flag.StringVar(&o.localConfig, "local-config", os.Getenv("LOCAL_XDS_PATH"), "static config file of workloads, services and policies, for development (default $LOCAL_XDS_PATH); SIGHUP reloads it")
	o.certs.register(flag.CommandLine)
	flag.StringVar(&o.xdsAddress, "xds-address", os.Getenv("XDS_ADDRESS"), "istiod's workload discovery (delta xDS), e.g. istiod.istio-system.svc:15012 (default $XDS_ADDRESS)")
	flag.StringVar(&o.xdsServerName, "xds-server-name", "", "name istiod's serving certificate must carry (default: the host of --xds-address)")
	flag.StringVar(&o.xdsRootCert, "xds-root-cert", "/var/run/secrets/istio/root-cert.pem", "PEM file of the mesh root that istiod's serving certificate chains to")
	flag.StringVar(&o.xdsToken, "xds-token", "/var/run/secrets/tokens/istio-token", "file of the bearer token sent to istiod, re-read for every connection; empty sends none")
	flag.BoolVar(&o.xdsPlaintext, "xds-plaintext", false, "connect to istiod without TLS and token (its port 15010); development only")
	flag.StringVar(&o.outbound, "outbound", port(mesh.OutboundPort), "outbound listener")
	flag.StringVar(&o.redirect, "redirect", "tproxy", "how captured connections arrive: tproxy (Ambit's eBPF redirection, transparent listeners) or nat (iptables REDIRECT, SO_ORIGINAL_DST)")
	flag.BoolVar(&o.preserveSource, "preserve-source", true, "with --redirect tproxy, connect to pods (local workloads, and pods outside the mesh on passthrough) from their client's address, as Istio's ztunnel does (needs CAP_NET_ADMIN)")
	flag.BoolVar(&o.podPath, "pod-path", true, "with --redirect tproxy, send what this tunnel sends on a pod's behalf (HBONE to other nodes, passthrough) from the pod's address with socket mark 0x800, which the node agent routes back through the pod's own veth, so that the node's firewall and the primary CNI's policy apply to it as to the pod's own traffic")
	flag.BoolVar(&o.handover, "handover", true, "listen with SO_REUSEPORT, so that the next ztunnel of an upgrade can listen beside this one, take new connections once it is ready (its data listeners open only then) and let this one drain (docs/upgrades.md); with --redirect tproxy it needs Linux 6.5, and is off on older kernels")
	flag.DurationVar(&o.handoverWait, "handover-wait", 0, "with --handover, how long a stopping ztunnel keeps its listeners open until another ztunnel of the node answers ready on the readiness port (part of --drain-timeout; the chart sets 10s for its surge roll); 0 closes them at once")
	flag.StringVar(&o.admin, "admin", "127.0.0.1"+port(mesh.AdminPort), "admin listener (config dump, pprof, logging)")
	flag.StringVar(&o.metrics, "metrics", port(mesh.MetricsPort), "Prometheus metrics listener")
	flag.StringVar(&o.readiness, "readiness", port(mesh.ReadinessPort), "readiness listener")
	flag.StringVar(&o.liveness, "liveness", port(mesh.LivenessPort), "liveness listener (/healthz/live), of its own so that load never fails it")
	flag.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	flag.DurationVar(&o.drain, "drain-timeout", 30*time.Second, "how long open connections may finish on shutdown")
	heapProfiling := flag.Bool("heap-profiling", false, "record Go heap profiles (admin /debug/pprof/heap, allocs) from the start; off, they cost about 1 MiB and a stack walk per 512 KiB allocated")
	flag.Parse()
	if *heapProfiling {
		memprofile.Enable()
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "ztunnel:", err)
		os.Exit(1)
	}
}

// localMark is the mark Ambit's eBPF redirection routes locally
// (bpf/redirect.Mark), used for HBONE to workloads on this node;
// podPathMark the one it routes through a pod's veth
// (bpf/redirect.PathMark).
const (
	localMark   = mesh.CaptureMark
	podPathMark = mesh.PodPathMark
)

func run(o options) error {
	if o.redirect != "tproxy" && o.redirect != "nat" {
		return fmt.Errorf("--redirect %q: want tproxy or nat", o.redirect)
	}
	var level slog.LevelVar
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("parse --log-level %q: %w", o.logLevel, err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: &level}))
	certs, roots, certsFrom, closeCerts, err := o.certs.certificates(o.clusterID)
	if err != nil {
		return err
	}
	defer closeCerts()
	store := config.NewStore()
	var pathMark uint32
	if o.redirect == "tproxy" && o.podPath {
		pathMark = podPathMark
	}
	shared := o.handover
	if shared && o.redirect == "tproxy" && !origdst.AssignsReusePort() {
		log.Warn("kernel older than 6.5: listeners not shared, upgrades interrupt connections (docs/upgrades.md)")
		shared = false
	}
	z, err := ztunnel.New(ztunnel.Config{
		Node: o.node, Store: store, Certificates: certs, Roots: roots,
		Transparent:    o.redirect == "tproxy",
		PreserveSource: o.redirect == "tproxy" && o.preserveSource,
		LocalMark:      localMark,
		PodPathMark:    pathMark,
		Shared:         shared,
		// Only a ready tunnel takes connections: with shared listeners
		// the previous one serves meanwhile; alone, the redirection
		// fails closed until then, as while ztunnel is down.
		ListenWhenReady: true,
		HandoverWait:    o.handoverWait,
		OutboundAddr:    o.outbound, AdminAddr: o.admin, MetricsAddr: o.metrics, ReadinessAddr: o.readiness, LivenessAddr: o.liveness,
		Log: log, LogLevel: &level,
	})
	if err != nil {
		return err
	}
	src, err := newConfigSource(o, store, log, z.Metrics().Registry)
	if err != nil {
		return err
	}
	if err := z.Start(); err != nil {
		return err
	}
	// After Start, so that no update races the tunnel's first look at
	// the store.
	if err := src.start(); err != nil {
		z.Shutdown(context.Background())
		return err
	}
	defer src.stop()
	if o.localConfig != "" || o.certs.fakeCADir != "" {
		log.Warn("running in development mode", logkey.Config, src.String(), logkey.CA, certsFrom)
	} else {
		log.Info("started", logkey.Config, src.String(), logkey.CA, certsFrom)
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	for sig := range sigs {
		if sig == syscall.SIGHUP {
			if reloaded, err := src.reload(); err != nil {
				log.Error("reload config; keeping the last good one", logkey.Error, err.Error())
			} else if reloaded {
				log.Info("reloaded config", logkey.Version, store.Snapshot().Version)
			}
			continue
		}
		log.Info("draining", logkey.Signal, sig.String(), logkey.Deadline, o.drain.String())
		ctx, cancel := context.WithTimeout(context.Background(), o.drain)
		err := z.Shutdown(ctx)
		cancel()
		return err
	}
	return nil
}

// port is the listen address ":port".
func port(p uint16) string { return ":" + strconv.Itoa(int(p)) }
