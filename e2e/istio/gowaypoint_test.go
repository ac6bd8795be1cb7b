package istio_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	secapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambitmesh/ambit/e2e/internal/labmesh"
	"github.com/ambitmesh/ambit/internal/echo"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/istiod/gateway"
	"github.com/ambitmesh/ambit/ztunnel/admin"
)

// goWaypoint runs Ambit's Go waypoint under Istio's own istiod: the
// waypoint Gateway is Istio's (class istio-waypoint), Istio's istiod
// binds Service web to it and sends the waypoint its Envoy xDS, and the
// waypoint, deployed as Ambit's waypoint controller renders it (Istio's
// deployment controller is off, see StartPilot), serves the traffic and
// enforces an L7 AuthorizationPolicy that targets the Service.
func (m *mesh) goWaypoint(t *testing.T) {
	ctx := t.Context()
	// Pods reach istiod at istiod.istio-system.svc:15012, as Istio's
	// chart's Service puts it (one port here: the one waypoints use).
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "istiod", Namespace: labmesh.IstiodNamespace, Labels: map[string]string{"app": "istiod"}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Name: "tls-xds-ca", Port: labmesh.IstiodSecurePort, TargetPort: intstr.FromInt32(labmesh.IstiodSecurePort)}}},
	}
	if _, err := m.l.Client.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if err := labmesh.IstiodEndpoints(ctx, m.l); err != nil {
		t.Fatal(err)
	}

	gw := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: "waypoint", Namespace: "shop"},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: "istio-waypoint",
			Listeners:        []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}},
		},
	}
	gwc, err := gwclient.NewForConfig(m.l.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	if gw, err = gwc.GatewayV1().Gateways("shop").Create(ctx, gw, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sa, wsvc, d := gateway.WaypointObjects(gw, gateway.DeployConfig{
		Image:         lab.WaypointImage,
		IstiodAddress: "istiod.istio-system.svc:15012",
		TrustDomain:   "cluster.local", ClusterID: "Kubernetes", DomainSuffix: lab.ClusterDomain,
	})
	if _, err := m.l.Client.CoreV1().ServiceAccounts("shop").Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.l.Client.CoreV1().Services("shop").Create(ctx, wsvc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tmpl := d.Spec.Template
	pod := &corev1.Pod{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
	pod.Name, pod.Namespace, pod.Spec.NodeName = "waypoint-0", "shop", "node2"
	// On failure, the waypoint's own log says why.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		p, err := m.l.Client.CoreV1().Pods("shop").Get(context.Background(), "waypoint-0", metav1.GetOptions{})
		if err != nil {
			return
		}
		if b, err := os.ReadFile(filepath.Join(m.l.Dir, "nodes", p.Spec.NodeName, "pods", string(p.UID), "istio-proxy.log")); err == nil {
			t.Logf("waypoint-0's log:\n%s", b)
		}
	})
	runCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	wp, err := m.l.RunPod(runCtx, pod)
	if err != nil {
		t.Fatal(err)
	}

	web := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", Labels: map[string]string{"istio.io/use-waypoint": "waypoint"}},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "b"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}
	if web, err = m.l.Client.CoreV1().Services("shop").Create(ctx, web, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Istio's istiod binds web to the waypoint once the Gateway has an
	// address (its status, from the waypoint's Service).
	if err := m.mesh.WaitZtunnels(ctx, "service shop/web through the waypoint", func(d *admin.Dump) bool {
		for _, s := range d.Services {
			if s.Namespace == "shop" && s.Name == "web" {
				return s.Waypoint != nil
			}
		}
		return false
	}); err != nil {
		t.Fatalf("%v\nIstio's istiod:\n%s", err, m.pilot.Logs(40))
	}
	url := "http://" + web.Spec.ClusterIP + "/"
	// The waypoint takes its config from Istio's istiod when it is
	// ready; the first requests may find it still starting.
	var (
		rep  echo.Report
		code int
	)
	if err := lab.PollUntil(ctx, time.Minute, func() bool {
		code, rep, err = m.http("a", url+"first")
		return err == nil && code == 200
	}); err != nil {
		t.Fatalf("a to %s through the waypoint: got %d, %v", url, code, err)
	}
	if host := strings.Split(rep.Peer, ":")[0]; host != wp.Status.PodIP {
		t.Errorf("a to %s: b saw its client at %s, want the waypoint %s", url, rep.Peer, wp.Status.PodIP)
	}

	// An L7 policy on the Service, which only a waypoint can enforce.
	pol := &securityv1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "web-paths", Namespace: "shop"},
		Spec: secapi.AuthorizationPolicy{
			TargetRefs: []*typeapi.PolicyTargetReference{{Kind: "Service", Group: "", Name: "web"}},
			Action:     secapi.AuthorizationPolicy_ALLOW,
			Rules: []*secapi.Rule{{
				From: []*secapi.Rule_From{{Source: &secapi.Source{Principals: []string{"cluster.local/ns/shop/sa/frontend"}}}},
				To:   []*secapi.Rule_To{{Operation: &secapi.Operation{Methods: []string{"GET"}, Paths: []string{"/public/*"}}}},
			}},
		},
	}
	if _, err := m.istio.SecurityV1().AuthorizationPolicies("shop").Create(ctx, pol, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer m.remove(t, pol)
	if err := lab.PollUntil(ctx, time.Minute, func() bool {
		code, _, err = m.http("a", url+"private")
		return err == nil && code == 403
	}); err != nil {
		t.Fatalf("a to %sprivate under policy web-paths: got %d, %v; want 403 from the waypoint", url, code, err)
	}
	for _, c := range []struct {
		from, path string
		want       int
	}{
		{"a", "public/x", 200},  // frontend, an allowed path
		{"a", "private", 403},   // frontend, another path
		{"a2", "public/x", 403}, // another identity
	} {
		if code, _, err := m.http(c.from, url+c.path); err != nil || code != c.want {
			t.Errorf("%s to %s%s: got %d, %v; want %d", c.from, url, c.path, code, err, c.want)
		}
	}

	// A dry-run DENY policy (istio.io/dry-run): Istio's istiod sends it
	// as RBAC shadow rules. The waypoint lets the request through and
	// counts what the policy would have done, where Istio's dry-run task
	// reads it.
	dry := &securityv1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "web-dry-run", Namespace: "shop", Annotations: map[string]string{"istio.io/dry-run": "true"}},
		Spec: secapi.AuthorizationPolicy{
			TargetRefs: []*typeapi.PolicyTargetReference{{Kind: "Service", Group: "", Name: "web"}},
			Action:     secapi.AuthorizationPolicy_DENY,
			Rules:      []*secapi.Rule{{To: []*secapi.Rule_To{{Operation: &secapi.Operation{Paths: []string{"/public/dry"}}}}}},
		},
	}
	if _, err := m.istio.SecurityV1().AuthorizationPolicies("shop").Create(ctx, dry, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer m.remove(t, dry)
	if _, err := m.mesh.WaitWaypoint(ctx, "shop", "waypoint", 1, "the dry-run policy's shadow rules", func(dump string) bool {
		return strings.Contains(dump, "istio_dry_run_deny_") && strings.Contains(dump, "web-dry-run")
	}); err != nil {
		t.Fatal(err)
	}
	if code, _, err := m.http("a", url+"public/dry"); err != nil || code != 200 {
		t.Errorf("a to %spublic/dry under dry-run policy web-dry-run: got %d, %v; want 200 (a dry run refuses nothing)", url, code, err)
	}
	wpNS, ok := m.l.Node(wp.Spec.NodeName).Kubelet.PodNetNS("shop", wp.Name)
	if !ok {
		t.Fatalf("waypoint pod %s: no network namespace on %s", wp.Name, wp.Spec.NodeName)
	}
	// (the waypoint writes a dry-run series once it has counted one)
	const wouldDeny = `envoy_http_rbac{authz_dry_run_action="deny",authz_dry_run_result="denied"} `
	if err := lab.WaitHTTPBody(ctx, wpNS, labmesh.WaypointAdmin+"/stats/prometheus", time.Minute, func(body string) bool {
		return strings.Contains(body, wouldDeny)
	}); err != nil {
		t.Errorf("the waypoint's metrics: want %s: %v", wouldDeny, err)
	}

	// The waypoint's admin dumps the configuration Istio's istiod sent,
	// Istio's own extension types (peer metadata, ...) included.
	if _, err := m.mesh.WaitWaypoint(ctx, "shop", "waypoint", 1, "its config dump", func(dump string) bool {
		return strings.Contains(dump, "connect_terminate") && strings.Contains(dump, "io.istio.")
	}); err != nil {
		t.Error(err)
	}

	// Its telemetry config is what Ambit's istiod builds.
	t.Run("telemetry as Istio's", m.telemetryAsIstio)

	// Istio's istiod saw no NACK from the waypoint.
	for line := range strings.Lines(m.pilot.Logs(1 << 20)) {
		if strings.Contains(line, "NACK") || strings.Contains(line, "ACK ERROR") {
			t.Errorf("Istio's istiod logged a rejection: %s", line)
		}
	}
}

// http makes one HTTP GET from pod name with the echo client: the status
// code, and for 200 the report of the echo server that answered. err is
// for no answer at all.
func (m *mesh) http(name, url string) (int, echo.Report, error) {
	p := m.pods[name]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := m.l.Exec(ctx, p.Namespace, name, m.l.Binaries().Echo, "http", url)
	var rep echo.Report
	if err != nil {
		// The client says "get URL: status N: body" for an answer
		// other than 200.
		if sm := statusRE.FindSubmatch(out); sm != nil {
			code, _ := strconv.Atoi(string(sm[1]))
			return code, rep, nil
		}
		return 0, rep, fmt.Errorf("%s to %s: %w: %s", name, url, err, out)
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		return 0, rep, fmt.Errorf("%s to %s: decode %q: %w", name, url, out, err)
	}
	return 200, rep, nil
}

var statusRE = regexp.MustCompile(`: status (\d+): `)
