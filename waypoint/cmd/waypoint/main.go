// Command waypoint is Ambit's waypoint proxy. It takes Envoy xDS from
// istiod (--xds-address) and its certificate from istiod's CA
// (--ca-address); for development, a static file (--static-config) and a
// file-based test CA (--fake-ca-dir) stand in for them. The pod's
// identity comes from POD_NAME, POD_NAMESPACE, INSTANCE_IP and
// SERVICE_ACCOUNT, as Istio's proxies read it.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/ambitmesh/ambit/internal/memlimit"
	"github.com/ambitmesh/ambit/internal/memprofile"
	"github.com/ambitmesh/ambit/internal/mesh"
	"github.com/ambitmesh/ambit/waypoint"
)

func main() {
	// WebSocket over HTTP/2 needs Go's HTTP/2 server started with
	// GODEBUG http2xconnect=1: restart with it unless GODEBUG sets it.
	if err := waypoint.ExecWithExtendedConnect(); err != nil {
		fmt.Fprintln(os.Stderr, "waypoint:", err)
		os.Exit(1)
	}
	var o waypoint.Options
	port := func(p int) string { return ":" + strconv.Itoa(p) }
	flag.StringVar(&o.XDSAddress, "xds-address", os.Getenv("XDS_ADDRESS"), "istiod's xDS (delta ADS), e.g. istiod.istio-system.svc:15012")
	flag.StringVar(&o.CAAddress, "ca-address", os.Getenv("CA_ADDRESS"), "istiod's CA, e.g. istiod.istio-system.svc:15012")
	flag.StringVar(&o.StaticConfig, "static-config", "", "static Envoy configuration (bootstrap static_resources, JSON) instead of xDS; development only")
	flag.StringVar(&o.FakeCADir, "fake-ca-dir", "", "directory of a test CA to sign the waypoint's own certificate; development only")
	flag.StringVar(&o.RootCert, "root-cert", "/var/run/secrets/istio/root-cert.pem", "PEM file of the mesh root")
	flag.StringVar(&o.TokenFile, "token", "/var/run/secrets/tokens/istio-token", "bearer token for istiod")
	// The names istiod's waypoint controller passes (istiod/gateway's
	// render.go), as ztunnel's: the waypoint uses one root and one token
	// for xDS and the CA.
	flag.StringVar(&o.RootCert, "xds-root-cert", o.RootCert, "same as --root-cert")
	flag.StringVar(&o.RootCert, "ca-root-cert", o.RootCert, "same as --root-cert")
	flag.StringVar(&o.TokenFile, "xds-token", o.TokenFile, "same as --token")
	flag.StringVar(&o.TokenFile, "ca-token", o.TokenFile, "same as --token")
	flag.StringVar(&o.TrustDomain, "trust-domain", mesh.DefaultTrustDomain, "the mesh's trust domain")
	flag.StringVar(&o.Node.ClusterID, "cluster-id", os.Getenv("CLUSTER_ID"), "this cluster's id")
	flag.StringVar(&o.HBONE, "hbone", port(mesh.HBONEPort), "HBONE listener")
	flag.StringVar(&o.Admin, "admin", "127.0.0.1"+port(mesh.AdminPort), "admin listener (config dump, stats, pprof, quitquitquit)")
	flag.StringVar(&o.Metrics, "metrics", port(mesh.MetricsPort), "metrics listener (/stats/prometheus)")
	flag.StringVar(&o.Readiness, "readiness", port(mesh.ReadinessPort), "readiness listener (/healthz/ready)")
	flag.DurationVar(&o.Drain, "drain-timeout", 30*time.Second, "how long open connections may finish on shutdown")
	accessLog := flag.String("access-log", "/dev/stdout", "where the JSON access log goes (one line per request and TCP connection); empty for none")
	labelsFile := flag.String("pod-labels", "/etc/istio/pod/labels", "the pod's labels as the downward API writes them (Istio's podinfo volume); ISTIO_METAJSON_LABELS (JSON) is read too")
	heapProfiling := flag.Bool("heap-profiling", false, "record Go heap profiles (admin /debug/pprof/heap, allocs) from the start; off, they cost about 1 MiB and a stack walk per 512 KiB allocated")
	flag.Parse()
	if *heapProfiling {
		memprofile.Enable()
	}
	o.Node.PodName, o.Node.PodNamespace = os.Getenv("POD_NAME"), os.Getenv("POD_NAMESPACE")
	o.Node.IP, o.Node.ServiceAccount = os.Getenv("INSTANCE_IP"), os.Getenv("SERVICE_ACCOUNT")
	o.Node.NodeName = os.Getenv("NODE_NAME")
	o.Node.Labels = map[string]string{}
	for _, src := range []func() ([]byte, error){
		func() ([]byte, error) { return os.ReadFile(*labelsFile) },
		func() ([]byte, error) { return []byte(os.Getenv("ISTIO_METAJSON_LABELS")), nil },
	} {
		if b, err := src(); err == nil && len(b) > 0 {
			l, err := waypoint.ParseLabels(b)
			if err != nil {
				fmt.Fprintln(os.Stderr, "waypoint:", err)
				os.Exit(1)
			}
			maps.Copy(o.Node.Labels, l)
		}
	}
	switch *accessLog {
	case "":
	case "/dev/stdout":
		o.AccessLog = os.Stdout
	default:
		f, err := os.OpenFile(*accessLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			fmt.Fprintln(os.Stderr, "waypoint: open access log:", err)
			os.Exit(1)
		}
		defer f.Close()
		o.AccessLog = f
	}
	o.Log = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	// The GC's target is gcPercent unless GOGC sets one; the soft limit
	// at 90 % of the container's memory limit, as Istio's agents set it
	// with automemlimit, makes the GC work harder before the OOM killer
	// acts.
	if p, set := gcTarget(os.Getenv("GOGC")); set {
		debug.SetGCPercent(p)
	}
	if limit, err := memlimit.Set(0.9); err == nil && limit > 0 {
		o.Log.Info("go memory limit from the container's", "bytes", limit)
	}
	ctx, stop := signal.NotifyContext(context.Background(), waypoint.Signals...)
	defer stop()
	if err := waypoint.Run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "waypoint:", err)
		os.Exit(1)
	}
}

// gcPercent is the waypoint's GC target, GOGC 50 where Go's default is
// 100. The live heap is small (about 4 MB, nearly all of it the Envoy
// API's protobuf descriptors) and a request allocates about 3.2 KB, so
// collecting at 1.5 times the live heap rather than twice costs little
// CPU and keeps about 2 MiB of the RSS off: in alternating runs of
// BenchmarkProxies, 28.1 to 28.3 MiB against 30.0 to 30.4 at
// 1,000 req/s at the same CPU, and 3 % more CPU at 5,000 req/s
// (docs/performance.md, "The GC target, again").
const gcPercent = 50

// gcTarget is the GC target the waypoint sets given the GOGC variable
// env: gcPercent when env is empty, nothing (false) when GOGC says what
// the runtime has already applied.
func gcTarget(env string) (int, bool) {
	if env != "" {
		return 0, false
	}
	return gcPercent, true
}
