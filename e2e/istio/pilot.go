package istio

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambitmesh/ambit/e2e/internal/labmesh"
	"github.com/ambitmesh/ambit/internal/lab"
)

// Where Istio's istiod listens, in the control-plane node's namespace:
// the ports of Istio's chart (8080 debug and readiness, 15010 plaintext
// xDS, 15012 CA and xDS over TLS, 15014 monitoring, 15017 webhooks).
const (
	pilotReadyURL = "http://127.0.0.1:8080/ready"
	// pilotSA is the service account Istio's chart runs istiod as.
	pilotSA = "istiod"
	// ZtunnelAccount is the node agent istiod lets ask for other
	// identities, as Istio's chart sets it: Ambit's ztunnels run as it.
	ZtunnelAccount = labmesh.IstiodNamespace + "/" + labmesh.ZtunnelSA
)

// MeshConfig is the mesh config Istio's chart renders with its default
// values and the ambient profile, plus the extension providers the
// telemetry comparison (gowaypoint_telemetry_test.go) names: a Zipkin
// tracer and a file access log with a custom JSON format.
const MeshConfig = `trustDomain: cluster.local
rootNamespace: istio-system
defaultProviders:
  metrics:
  - prometheus
enablePrometheusMerge: true
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
  proxyMetadata:
    ISTIO_META_ENABLE_HBONE: "true"
serviceScopeConfigs:
- servicesSelector:
    matchExpressions:
    - key: istio.io/global
      operator: In
      values: ["true"]
  scope: GLOBAL
extensionProviders:
- name: zipkin
  zipkin:
    service: zipkin.istio-system.svc.cluster.local
    port: 9411
    maxTagLength: 128
    headers:
    - name: x-collector-token
      value: lab
- name: otel
  opentelemetry:
    service: otel-collector.istio-system.svc.cluster.local
    port: 4317
- name: custom-log
  envoyFileAccessLog:
    path: /dev/stdout
    logFormat:
      labels:
        code: "%RESPONSE_CODE%"
        path: "%REQ_WITHOUT_QUERY(:PATH)%"
        flags: "%RESPONSE_FLAGS%"
`

// StartPilot runs Istio's pilot-discovery as the mesh's istiod on the
// control-plane node, where labmesh runs Ambit's (ztunnels reach it at
// labmesh.IstiodAddr and check its certificate for
// labmesh.IstiodServerName, which Istio's istiod also serves), with the
// environment and flags of Istio's chart and ambient profile. It installs
// what istiod watches first: Istio's CRDs from the pinned module and the
// Gateway API CRDs of the version Istio requires. It returns once istiod
// is ready and has published its root, which its CA made itself
// (Secret istio-ca-secret).
//
// Of Ambit's chart it installs the data plane's access only (the node
// agent's and ztunnel's service accounts, RBAC and admission policies),
// as on a cluster whose istiod is Istio's; call it before
// mesh.StartAgents. istiod runs in a directory of its own, where it
// finds its mesh config (./etc/istio/config/mesh) and its token
// (./var/run/secrets/tokens), as in its container. It runs as its chart's service account, bound to
// cluster-admin rather than to the chart's ClusterRoles: those are in a
// Helm chart this suite does not render.
func StartPilot(ctx context.Context, l *lab.Lab, mesh *labmesh.Mesh, ist lab.Istio) (*lab.Process, error) {
	if err := mesh.InstallDataPlaneAccess(ctx); err != nil {
		return nil, err
	}
	crds := []string{filepath.Join(ist.Source, "manifests", "charts", "base", "files", "crd-all.gen.yaml")}
	gw, err := filepath.Glob(filepath.Join(ist.GatewayAPISource, "config", "crd", "standard", "gateway.networking.k8s.io_*.yaml"))
	if err != nil || len(gw) == 0 {
		return nil, fmt.Errorf("find gateway api crds in %s: got %d files (%v)", ist.GatewayAPISource, len(gw), err)
	}
	for _, f := range gw {
		if filepath.Base(f) != "gateway.networking.k8s.io_vap_safeupgrades.yaml" { // an admission policy, not a CRD
			crds = append(crds, f)
		}
	}
	if err := labmesh.InstallCRDFiles(ctx, l, crds...); err != nil {
		return nil, err
	}

	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: pilotSA, Namespace: labmesh.IstiodNamespace}}
	if _, err := l.Client.CoreV1().ServiceAccounts(sa.Namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("istiod service account: %w", err)
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "istio-interop-istiod"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: labmesh.IstiodNamespace, Name: pilotSA}},
	}
	if _, err := l.Client.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("bind istiod to cluster-admin: %w", err)
	}
	token := func(audiences []string) (string, error) {
		exp := int64(12 * 3600)
		tr, err := l.Client.CoreV1().ServiceAccounts(labmesh.IstiodNamespace).CreateToken(ctx, pilotSA, &authnv1.TokenRequest{
			Spec: authnv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: &exp},
		}, metav1.CreateOptions{})
		if err != nil {
			return "", fmt.Errorf("token for istiod: %w", err)
		}
		return tr.Status.Token, nil
	}
	apiToken, err := token(nil)
	if err != nil {
		return nil, err
	}
	kubeconfig, err := labmesh.TokenKubeconfig(l, "istio-pilot", apiToken)
	if err != nil {
		return nil, err
	}
	// The chart's projected token, audience istio-ca: istiod reads the
	// issuer and audience of the tokens it is to accept from it.
	caToken, err := token([]string{"istio-ca"})
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(l.Dir, "istio-pilot")
	for path, data := range map[string]string{
		"etc/istio/config/mesh":              MeshConfig,
		"var/run/secrets/tokens/istio-token": caToken,
	} {
		path = filepath.Join(dir, path)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return nil, fmt.Errorf("istiod files: %w", err)
		}
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			return nil, fmt.Errorf("istiod files: %w", err)
		}
	}

	env := []string{
		// The chart's.
		"REVISION=default",
		"PILOT_CERT_PROVIDER=istiod",
		"POD_NAME=istiod-lab",
		"POD_NAMESPACE=" + labmesh.IstiodNamespace,
		"SERVICE_ACCOUNT=" + pilotSA,
		"CA_TRUSTED_NODE_ACCOUNTS=" + ZtunnelAccount,
		"PILOT_ENABLE_ANALYSIS=false",
		"CLUSTER_ID=Kubernetes",
		"PLATFORM=",
		// The ambient profile's.
		"PILOT_ENABLE_AMBIENT=true",
		// Ambit's waypoint controller renders the waypoint's Deployment
		// (goWaypoint); Istio's would deploy its own proxy image.
		"PILOT_ENABLE_GATEWAY_API_DEPLOYMENT_CONTROLLER=false",
		// Every pod's: istiod then checks tokens with TokenReview, as in
		// a cluster, instead of fetching the issuer's OIDC discovery.
		"KUBERNETES_SERVICE_HOST=10.96.0.1",
		"KUBERNETES_SERVICE_PORT=443",
	}
	args := []string{"discovery",
		"--monitoringAddr=:15014",
		"--log_output_level=default:info",
		"--domain", lab.ClusterDomain,
		"--keepaliveMaxServerConnectionAge", "30m",
		"--kubeconfig", kubeconfig,
	}
	p, err := l.StartProcessInDir(l.ControlPlaneNS(), dir, "istio-pilot", env, ist.PilotDiscovery, args...)
	if err != nil {
		return nil, err
	}
	if err := lab.WaitHTTP(ctx, l.ControlPlaneNS(), pilotReadyURL, 2*time.Minute, p); err != nil {
		return nil, fmt.Errorf("istio's istiod: %w\n%s", err, p.Logs(30))
	}
	if err := mesh.UseIstiod(ctx, p); err != nil {
		return nil, err
	}
	return p, nil
}
