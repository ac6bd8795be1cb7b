package server

import (
	"time"

	"github.com/ambitmesh/ambit/istiod/ambient"
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
	// Waypoint is how istiod deploys waypoints (with Gateway API).
	Waypoint WaypointConfig
}

// WaypointConfig says what istiod deploys for each waypoint Gateway.
type WaypointConfig struct {
	// Image of the waypoint proxy; no waypoint is deployed when empty
	// (Gateways are reported not programmed).
	Image string
	// ImagePullPolicy of that image; Kubernetes' default when empty.
	ImagePullPolicy string
	// IstiodAddress is istiod's TLS port (xDS and CA) as waypoints reach
	// it (istiod.<CA namespace>.svc:15012 when empty).
	IstiodAddress string
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

// Istio's defaults where the mesh-wide ones (ambient.Config.WithDefaults)
// do not apply.
const (
	// DefaultCANamespace holds the CA Secrets.
	DefaultCANamespace = "istio-system"
	// DefaultCertTTL is the default lifetime of workload certificates.
	DefaultCertTTL = 24 * time.Hour
	// servingCertTTL is the lifetime of istiod's own serving certificate.
	servingCertTTL = 365 * 24 * time.Hour
)

// DefaultConfig is the configuration that WithDefaults gives an empty
// one: the main's flags start from it.
func DefaultConfig() Config { return Config{}.WithDefaults() }

// WithDefaults fills what c leaves empty: istiod's one set of defaults.
// Listener addresses have none (empty is off).
func (c Config) WithDefaults() Config {
	c.Ambient = c.Ambient.WithDefaults()
	if c.Quiet == 0 {
		c.Quiet = ambient.DefaultQuiet
	}
	if c.MaxDebounce == 0 {
		c.MaxDebounce = ambient.DefaultMax
	}
	if c.CA.Namespace == "" {
		c.CA.Namespace = DefaultCANamespace
	}
	if len(c.CA.NodeAgents) == 0 {
		c.CA.NodeAgents = []string{c.CA.Namespace + "/ztunnel"}
	}
	if len(c.CA.DNSNames) == 0 {
		c.CA.DNSNames = []string{"istiod." + c.CA.Namespace + ".svc"}
	}
	if c.Waypoint.IstiodAddress == "" {
		c.Waypoint.IstiodAddress = "istiod." + c.CA.Namespace + ".svc:15012"
	}
	if c.CA.CertTTL == 0 {
		c.CA.CertTTL = DefaultCertTTL
	}
	if c.CA.MaxCertTTL == 0 {
		c.CA.MaxCertTTL = c.CA.CertTTL
	}
	return c
}
