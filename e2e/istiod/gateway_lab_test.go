package istiod

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	watchtools "k8s.io/client-go/tools/watch"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/e2e/internal/labmesh"
	"github.com/ambitmesh/ambit/internal/kubewatch"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/istiod/ambient"
	"github.com/ambitmesh/ambit/istiod/gateway"
	"github.com/ambitmesh/ambit/istiod/server"
)

// gatewayAPICRDs are the GatewayClass and Gateway CRDs of the Gateway API
// module that go.mod pins (its standard channel): istiod with Gateway API
// watches both (the class, and Gateways for waypoint bindings).
func gatewayAPICRDs(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api").Output()
	if err != nil {
		t.Fatalf("find the gateway api module: %v", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "standard")
	return []string{filepath.Join(dir, "gateway.networking.k8s.io_gatewayclasses.yaml"), filepath.Join(dir, "gateway.networking.k8s.io_gateways.yaml")}
}

// TestWaypointGatewayClass: istiod with Gateway API creates the
// istio-waypoint GatewayClass for Istio's mesh controller, reports it
// Accepted, and creates it again when it is deleted; then its waypoint
// bindings (waypointBindings).
func TestWaypointGatewayClass(t *testing.T) {
	l, ctx := startLab(t, 3*time.Minute)
	// Before the CRDs exist, the istiod binary (Gateway API on by
	// default) runs without it and says so.
	istiodWithoutCRDs(ctx, t, l)
	if err := labmesh.InstallCRDFiles(ctx, l, gatewayAPICRDs(t)...); err != nil {
		t.Fatal(err)
	}
	gw, err := gatewayclient.NewForConfig(l.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	// The waypoint controller's class defaults live in istiod's namespace.
	if err := l.CreateNamespace(ctx, server.DefaultCANamespace, nil); err != nil {
		t.Fatal(err)
	}
	s, err := server.NewWithClients(server.Config{XDSAddr: "127.0.0.1:0", MonitoringAddr: "127.0.0.1:0", DebugEndpoints: true,
		Waypoint: server.WaypointConfig{Image: testWaypointImage}}, server.Clients{Kube: l.Client, GatewayAPI: gw},
		warnLog())
	if err != nil {
		t.Fatal(err)
	}
	runServer(t, ctx, s)

	classes := gw.GatewayV1().GatewayClasses()
	lw := kubewatch.Named(classes, gateway.WaypointClass)
	// await waits for the class to be accepted, by another object than
	// notUID.
	await := func(what string, notUID string) *gatewayv1.GatewayClass {
		t.Helper()
		var got *gatewayv1.GatewayClass
		_, err := watchtools.UntilWithSync(ctx, lw, &gatewayv1.GatewayClass{}, nil, func(e watch.Event) (bool, error) {
			gc, ok := e.Object.(*gatewayv1.GatewayClass)
			if !ok || e.Type == watch.Deleted || string(gc.UID) == notUID {
				return false, nil
			}
			got = gc
			c := meta.FindStatusCondition(gc.Status.Conditions, string(gatewayv1.GatewayClassConditionStatusAccepted))
			return c != nil && c.Status == metav1.ConditionTrue && c.ObservedGeneration == gc.Generation, nil
		})
		if err != nil {
			t.Fatalf("%s: class %s not accepted: %v (last seen: %+v)", what, gateway.WaypointClass, err, got)
		}
		return got
	}

	gc := await("istiod started", "")
	if gc.Spec.ControllerName != gateway.MeshController {
		t.Errorf("controllerName: got %q, want %q", gc.Spec.ControllerName, gateway.MeshController)
	}
	c := meta.FindStatusCondition(gc.Status.Conditions, string(gatewayv1.GatewayClassConditionStatusAccepted))
	if c.Reason != string(gatewayv1.GatewayClassReasonAccepted) {
		t.Errorf("Accepted reason: got %q, want %q", c.Reason, gatewayv1.GatewayClassReasonAccepted)
	}

	if err := classes.Delete(ctx, gateway.WaypointClass, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	again := await("after its deletion", string(gc.UID))
	if again.Spec.ControllerName != gateway.MeshController {
		t.Errorf("controllerName after re-creation: got %q, want %q", again.Spec.ControllerName, gateway.MeshController)
	}

	// In the same lab, to spare another start.
	t.Run("waypoint bindings", func(t *testing.T) { waypointBindings(ctx, t, l, gw, s) })
	t.Run("waypoint controller", func(t *testing.T) { waypointController(ctx, t, l, gw) })
}

// waypointBindings: against the real apiserver, Gateways, labels and a
// ServiceAccount bind traffic to waypoints in workload discovery (the
// waypoint's Service VIP, port 15008), and bad input is reported and not
// applied. s must run with Gateway API and the debug endpoints.
func waypointBindings(ctx context.Context, t *testing.T, l *lab.Lab, gw gatewayclient.Interface, s *server.Server) {
	c := connect(ctx, t, s.XDSAddr().String())
	const ns = "shop"
	if err := l.CreateNamespace(ctx, ns, map[string]string{ambient.LabelUseWaypoint: "waypoint"}); err != nil {
		t.Fatal(err)
	}
	if err := l.CreateNamespace(ctx, "infra", nil); err != nil {
		t.Fatal(err)
	}
	mkGateway := func(namespace, name string, port gatewayv1.PortNumber, lbls map[string]string) {
		t.Helper()
		_, err := gw.GatewayV1().Gateways(namespace).Create(ctx, &gatewayv1.Gateway{
			ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: lbls},
			Spec: gatewayv1.GatewaySpec{GatewayClassName: gateway.WaypointClass,
				Listeners: []gatewayv1.Listener{{Name: "mesh", Port: port, Protocol: ambient.WaypointListenerProtocol}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	mkService := func(namespace, name string, lbls, selector map[string]string) *corev1.Service {
		t.Helper()
		svc, err := l.Client.CoreV1().Services(namespace).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: lbls},
			Spec:       corev1.ServiceSpec{Selector: selector, Ports: []corev1.ServicePort{{Name: "p", Port: 9080}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return svc
	}
	// The namespace's waypoint (for service traffic, the default), one
	// for the reviews service account, one on a wrong port, and one in
	// another namespace that admits only its own. The controller makes
	// the valid ones' Services.
	mkGateway(ns, "waypoint", 15008, nil)
	mkGateway(ns, "reviews-wp", 15008, nil)
	mkGateway(ns, "bad", 15009, nil)
	mkService(ns, "bad", nil, nil)
	mkGateway("infra", "shared", 15008, map[string]string{ambient.LabelWaypointFor: ambient.WaypointForAll})
	nsWP := awaitObject(ctx, t, "waypoint's service", l.Client.CoreV1().Services(ns), "waypoint", func(*corev1.Service) bool { return true })
	saWP := awaitObject(ctx, t, "reviews-wp's service", l.Client.CoreV1().Services(ns), "reviews-wp", func(*corev1.Service) bool { return true })
	if _, err := l.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "reviews", Labels: map[string]string{ambient.LabelUseWaypoint: "reviews-wp"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	mkService(ns, "reviews", nil, map[string]string{"app": "reviews"})
	mkService(ns, "ratings", nil, map[string]string{"app": "ratings"})
	mkService(ns, "details", map[string]string{ambient.LabelUseWaypoint: "bad"}, map[string]string{"app": "details"})
	mkService(ns, "legacy", map[string]string{ambient.LabelUseWaypoint: "shared", ambient.LabelUseWaypointNamespace: "infra"}, nil)
	if _, err := l.RunEchoPod(ctx, ns, "reviews-1", "node1", "reviews", map[string]string{"app": "reviews"}); err != nil {
		t.Fatal(err)
	}

	vip := func(ga *workload.GatewayAddress) string {
		if ga == nil || ga.GetHboneMtlsPort() != 15008 {
			return fmt.Sprint(ga)
		}
		a, _ := netip.AddrFromSlice(ga.GetAddress().GetAddress())
		return a.String()
	}
	svcOf := func(name string) *workload.Service {
		return c.addrs[ambient.ServiceName(ns, name+"."+ns+".svc.cluster.local")].GetService()
	}
	uid := ambient.PodUID("Kubernetes", ns, "reviews-1")
	c.await("bindings", func() bool {
		w := c.workload(uid)
		return w != nil && w.GetWaypoint() != nil && svcOf("ratings").GetWaypoint() != nil && svcOf("details").GetWaypoint() != nil && svcOf("legacy").GetWaypoint() != nil
	})
	// Workload-addressed: the service account's waypoint (for all, by
	// default when bound that way), not the namespace's (for services).
	if got, want := vip(c.workload(uid).GetWaypoint()), saWP.Spec.ClusterIP; got != want {
		t.Errorf("reviews-1 waypoint: got %s, want %s (reviews-wp)", got, want)
	}
	// Service-addressed: the namespace's waypoint, except where the
	// endpoint has its own (reviews) or the binding is bad input.
	if got, want := vip(svcOf("ratings").GetWaypoint()), nsWP.Spec.ClusterIP; got != want {
		t.Errorf("ratings waypoint: got %s, want %s (the namespace's)", got, want)
	}
	for _, name := range []string{"reviews", "waypoint"} {
		if wp := svcOf(name).GetWaypoint(); wp != nil {
			t.Errorf("%s waypoint: got %v, want none", name, wp)
		}
	}
	// A binding its Gateway cannot take (not a waypoint; allowedRoutes
	// refuses the namespace) fails closed: an address nothing answers to.
	for name, want := range map[string]string{"details": "bad.shop.waypoint.invalid", "legacy": "shared.infra.waypoint.invalid"} {
		if got := svcOf(name).GetWaypoint().GetHostname().GetHostname(); got != want {
			t.Errorf("%s waypoint: got %v, want hostname %s (fail closed)", name, svcOf(name).GetWaypoint(), want)
		}
	}

	resp, err := http.Get("http://" + s.MonitoringAddr().String() + "/debug/model")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var model struct {
		WaypointStatus map[string]ambient.BindingStatus `json:"waypointStatus"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&model); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{
		"Namespace/shop":              ambient.ReasonWaypointAccepted,
		"ServiceAccount/shop/reviews": ambient.ReasonWaypointAccepted,
		"Service/shop/details":        ambient.ReasonWaypointInvalid,
		"Gateway/shop/bad":            ambient.ReasonWaypointInvalid,
		"Service/shop/legacy":         ambient.ReasonWaypointNotAllowed,
	} {
		if got := model.WaypointStatus[k]; got.Reason != want || got.Message == "" {
			t.Errorf("waypoint status of %s: got %+v, want reason %s", k, got, want)
		}
	}
	// The bound Services carry it as Istio's condition; the refused
	// binding is False with the reason, the rest of the mesh untouched.
	for name, want := range map[string]string{"details": ambient.ReasonWaypointInvalid, "legacy": ambient.ReasonWaypointNotAllowed} {
		awaitObject(ctx, t, "condition of service "+name, l.Client.CoreV1().Services(ns), name, func(s *corev1.Service) bool {
			c := condition(s.Status.Conditions, gateway.ConditionWaypointBound)
			return c.Status == metav1.ConditionFalse && c.Reason == want
		})
	}
}

// istiodWithoutCRDs runs the istiod binary with its defaults (Gateway API
// on) where the Gateway API CRDs are not installed: it becomes ready,
// having logged that Gateway API is off and which resources are missing.
func istiodWithoutCRDs(ctx context.Context, t *testing.T, l *lab.Lab) {
	t.Helper()
	kc, err := l.KubeconfigFor("istiod-nocrds", "istiod-nocrds", "system:masters")
	if err != nil {
		t.Fatal(err)
	}
	const mon = "127.0.0.1:15014"
	p, err := l.StartProcessIn(l.ControlPlaneNS(), "istiod-nocrds", nil, l.Binaries().Istiod,
		"--kubeconfig", kc, "--secure-addr=", "--xds-addr=127.0.0.1:15010", "--monitoring-addr="+mon, "--no-policies")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(5 * time.Second)
	if err := lab.WaitHTTP(ctx, l.ControlPlaneNS(), "http://"+mon+"/ready", time.Minute, p); err != nil {
		t.Fatalf("istiod without gateway api crds: %v\n%s", err, p.Logs(20))
	}
	logs := p.Logs(50)
	if !strings.Contains(logs, "gateway api off: its CRDs are not installed") || !strings.Contains(logs, "gatewayclasses") {
		t.Errorf("istiod without gateway api crds: logs do not say gateway api is off and what is missing:\n%s", logs)
	}
}
