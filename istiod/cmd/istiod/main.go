// Command istiod is Ambit's control plane: it watches the cluster and
// serves the ambient workload discovery API to ztunnels.
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

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambitmesh/ambit/internal/kubelog"
	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/internal/memlimit"
	"github.com/ambitmesh/ambit/istiod/gateway"
	"github.com/ambitmesh/ambit/istiod/server"
)

// options are the command's flags: istiod's configuration and how to
// reach the cluster.
type options struct {
	cfg               server.Config
	kubeconfig        string
	noPolicies, debug bool
	gatewayAPI        bool
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		os.Exit(2)
	}
	level := slog.LevelInfo
	if o.debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	// client-go's logs (klog) in istiod's, at slog levels; its cancelled
	// watches at shutdown at Debug.
	kubelog.Route(log.Handler())
	// 90% of the container's memory limit, as Istio does with
	// automemlimit: at 50k pods istiod's heap grows past 1 GiB with the
	// default GC pacing, and its RSS stays near 900 MiB with a 900 MiB soft
	// limit (docs/performance.md).
	if limit, err := memlimit.Set(0.9); err == nil && limit > 0 {
		log.Info("go memory limit from the container's", "bytes", limit)
	}
	if err := run(o, log); err != nil {
		log.Error("istiod", logkey.Error, err)
		os.Exit(1)
	}
}

// parseFlags reads the command line; the flag package reports errors.
func parseFlags(args []string) (options, error) {
	var o options
	cfg := &o.cfg
	// Flags start from istiod's defaults; those derived from others (the
	// node agents and DNS names from the CA namespace, the longest
	// certificate lifetime from the default one) are filled by the server.
	def := server.DefaultConfig()
	fs := flag.NewFlagSet("istiod", flag.ContinueOnError)
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file; in-cluster configuration when empty")
	fs.StringVar(&cfg.SecureAddr, "secure-addr", ":15012", "TLS listen address of the CA and delta xDS, for callers with a service account token (audience istio-ca); empty runs no CA")
	fs.StringVar(&cfg.XDSAddr, "xds-addr", "", "listen address of plaintext delta xDS without authentication, e.g. :15010; off when empty. Whoever reaches it reads the whole mesh: development only")
	fs.StringVar(&cfg.MonitoringAddr, "monitoring-addr", ":15014", "listen address of /metrics and /ready (and /debug/ with --debug-endpoints)")
	fs.BoolVar(&cfg.DebugEndpoints, "debug-endpoints", false, "serve /debug/model and /debug/clients on the monitoring address, without authentication")
	fs.StringVar(&cfg.Ambient.ClusterID, "cluster-id", def.Ambient.ClusterID, "cluster name in workload uids; callers naming another cluster (clusterid) are refused on 15012")
	fs.StringVar(&cfg.Ambient.TrustDomain, "trust-domain", def.Ambient.TrustDomain, "SPIFFE trust domain")
	fs.StringVar(&cfg.Ambient.DomainSuffix, "domain-suffix", def.Ambient.DomainSuffix, "cluster DNS domain")
	fs.StringVar(&cfg.Ambient.Network, "network", "", "network of the cluster's addresses")
	fs.StringVar(&cfg.Ambient.RootNamespace, "root-namespace", def.Ambient.RootNamespace, "namespace of mesh-wide policies")
	fs.DurationVar(&cfg.Quiet, "debounce", def.Quiet, "quiet time that ends a burst of cluster events")
	fs.DurationVar(&cfg.MaxDebounce, "debounce-max", def.MaxDebounce, "longest a burst may delay a push")
	fs.StringVar(&cfg.CA.Namespace, "ca-namespace", def.CA.Namespace, "namespace of the CA Secrets (cacerts, istio-ca-secret)")
	fs.Func("node-agent", "service account namespace/name allowed to request certificates for pods on its node (repeatable; default istio-system/ztunnel)", func(v string) error {
		cfg.CA.NodeAgents = append(cfg.CA.NodeAgents, v)
		return nil
	})
	fs.Func("dns-name", "DNS name of istiod's serving certificate (repeatable; default istiod.<ca-namespace>.svc)", func(v string) error {
		cfg.CA.DNSNames = append(cfg.CA.DNSNames, v)
		return nil
	})
	fs.DurationVar(&cfg.CA.CertTTL, "cert-ttl", def.CA.CertTTL, "default lifetime of workload certificates")
	fs.DurationVar(&cfg.CA.MaxCertTTL, "max-cert-ttl", 0, "longest lifetime a caller may request (default cert-ttl)")
	fs.BoolVar(&o.noPolicies, "no-policies", false, "do not watch security.istio.io policies (their CRDs are not installed)")
	fs.BoolVar(&o.gatewayAPI, "gateway-api", true, "watch Gateway API objects: keep the istio-waypoint GatewayClass, deploy waypoints, bind traffic to them; off (with a warning) while their CRDs are not installed")
	fs.StringVar(&cfg.Waypoint.Image, "waypoint-image", "", "image of the waypoint proxy deployed for each waypoint Gateway; none is deployed when empty")
	fs.StringVar(&cfg.Waypoint.ImagePullPolicy, "waypoint-image-pull-policy", "", "pull policy of the waypoint image (Kubernetes' default when empty)")
	fs.StringVar(&cfg.Waypoint.IstiodAddress, "waypoint-istiod-address", "", "address of istiod's TLS port (xDS and CA) that waypoints dial (default istiod.<ca-namespace>.svc:15012)")
	fs.BoolVar(&o.debug, "debug", false, "debug logs")
	err := fs.Parse(args)
	return o, err
}

func run(o options, log *slog.Logger) error {
	cfg, kubeconfig, noPolicies := o.cfg, o.kubeconfig, o.noPolicies
	var rc *rest.Config
	var err error
	if kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return fmt.Errorf("load kubernetes config: %w", err)
	}
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("create kubernetes client: %w", err)
	}
	var istio istioclient.Interface
	if !noPolicies {
		if istio, err = istioclient.NewForConfig(rc); err != nil {
			return fmt.Errorf("create istio client: %w", err)
		}
	}
	clients := server.Clients{Kube: kube, Istio: istio}
	if o.gatewayAPI {
		// Without the CRDs the informers would never sync: istiod runs
		// without Gateway API and says so, rather than not starting.
		missing, err := gateway.MissingCRDs(kube.Discovery())
		switch {
		case err != nil:
			log.Warn("gateway api off: cannot tell whether its CRDs are installed; waypoints are not deployed or bound", logkey.Error, err)
		case len(missing) > 0:
			log.Warn("gateway api off: its CRDs are not installed (deploy/crds); waypoints are not deployed or bound until they are and istiod restarts", "missing", missing)
		default:
			if clients.GatewayAPI, err = gatewayclient.NewForConfig(rc); err != nil {
				return fmt.Errorf("create gateway api client: %w", err)
			}
		}
	}
	s, err := server.NewWithClients(cfg, clients, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return s.Run(ctx)
}
