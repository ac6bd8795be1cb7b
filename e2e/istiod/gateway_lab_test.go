package istiod

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambitmesh/ambit/e2e/internal/labmesh"
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
// Accepted, and creates it again when it is deleted.
func TestWaypointGatewayClass(t *testing.T) {
	l := startLab(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	if err := labmesh.InstallCRDFiles(ctx, l, gatewayAPICRDs(t)...); err != nil {
		t.Fatal(err)
	}
	gw, err := gatewayclient.NewForConfig(l.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	s, err := server.NewWithClients(server.Config{XDSAddr: "127.0.0.1:0"}, server.Clients{Kube: l.Client, GatewayAPI: gw},
		slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	runServer(t, ctx, cancel, s)

	classes := gw.GatewayV1().GatewayClasses()
	sel := fields.OneTermEqualSelector("metadata.name", gateway.WaypointClass).String()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			return classes.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			return classes.Watch(ctx, o)
		},
	}
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
}
