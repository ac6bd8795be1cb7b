package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambitmesh/ambit/ambitctl/cli"
	"github.com/ambitmesh/ambit/e2e/internal/labmesh"
	"github.com/ambitmesh/ambit/internal/enrolment"
	"github.com/ambitmesh/ambit/internal/lab"
)

// TestAmbitctl runs ambitctl, in process, against a lab with Ambit
// running: versions of every component, ztunnel's state of a meshed pod
// through the lab's namespace dialer, the precheck of a lab node, and
// waypoints applied, listed and deleted against the real apiserver with
// the Gateway API CRDs of the module go.mod pins.
func TestAmbitctl(t *testing.T) {
	l := startLab(t, lab.Config{Nodes: 2})
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	// The waypoint subtest stands in for istiod's waypoint controller
	// (it sets Programmed itself), so istiod runs without Gateway API.
	mesh := labmesh.StartMesh(t, ctx, l, labmesh.IstiodOptions{NoGatewayAPI: true})
	if err := labmesh.InstallCRDFiles(ctx, l, gatewayCRDs(t)...); err != nil {
		t.Fatal(err)
	}
	if err := l.CreateNamespace(ctx, "shop", map[string]string{enrolment.LabelDataplaneMode: enrolment.ModeAmbient}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Client.CoreV1().ServiceAccounts("shop").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "reviews"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := lab.EchoPod("shop", "reviews-v1", "node1", map[string]string{"app": "reviews"})
	p.Spec.ServiceAccountName = "reviews"
	pod, err := l.RunPod(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	client, err := l.RunPod(ctx, lab.EchoPod("shop", "productpage", "node2", map[string]string{"app": "productpage"}))
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range []string{pod.Status.PodIP, client.Status.PodIP} {
		if err := mesh.WaitWorkload(ctx, ip, true); err != nil {
			t.Fatal(err)
		}
	}

	global := []string{"--kubeconfig", l.Kubeconfig, "--lab-netns-prefix", lab.NamePrefix + l.ID + "-"}
	ambitctl := func(t *testing.T, args ...string) (int, string, string) {
		t.Helper()
		var out, errOut bytes.Buffer
		code := cli.Main(ctx, genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}, append(append([]string{}, global...), args...))
		return code, out.String(), errOut.String()
	}
	ok := func(t *testing.T, args ...string) string {
		t.Helper()
		code, out, errOut := ambitctl(t, args...)
		if code != 0 {
			t.Fatalf("ambitctl %s: exit %d, stderr %q, stdout %q", strings.Join(args, " "), code, errOut, out)
		}
		return out
	}

	t.Run("version", func(t *testing.T) {
		var got []struct {
			Component, Node, Version, IstioVersion, Error string
		}
		if err := json.Unmarshal([]byte(ok(t, "version", "-o", "json")), &got); err != nil {
			t.Fatal(err)
		}
		var seen []string
		for _, v := range got {
			seen = append(seen, v.Component+"@"+v.Node)
			if v.Version != "dev" || v.IstioVersion == "" || v.Error != "" {
				t.Errorf("%s on %q: got version %q, istio %q, error %q; want dev, istio's, none", v.Component, v.Node, v.Version, v.IstioVersion, v.Error)
			}
		}
		want := "ambitctl@ istiod@cp ztunnel@node1 ztunnel@node2 ambit-cni-agent@node1 ambit-cni-agent@node2"
		if strings.Join(seen, " ") != want {
			t.Errorf("components: got %q, want %q", seen, want)
		}
	})

	t.Run("ztunnel-config workload", func(t *testing.T) {
		out := ok(t, "ztunnel-config", "workload", "--node", "node2", "-n", "shop")
		var row []string
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[1] == "reviews-v1" {
				row = f
			}
		}
		if want := []string{"shop", "reviews-v1", pod.Status.PodIP, "node1", "None", "HBONE"}; strings.Join(row, " ") != strings.Join(want, " ") {
			t.Errorf("ztunnel-config workload on node2: got row %q in\n%s\nwant %q", row, out, want)
		}
		// The ztunnel of the pod's own node, found from the pod; raw JSON.
		var ws []struct{ Name, Node string }
		if err := json.Unmarshal([]byte(ok(t, "ztunnel-config", "workload", "reviews-v1.shop", "-o", "json")), &ws); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, w := range ws {
			found = found || w.Name == "reviews-v1" && w.Node == "node1"
		}
		if !found {
			t.Errorf("ztunnel-config workload reviews-v1.shop -o json: got %+v, want reviews-v1 on node1", ws)
		}
		code, _, errOut := ambitctl(t, "ztunnel-config", "workload", "--node", "nosuch")
		if code == 0 || !strings.Contains(errOut, "get node nosuch") {
			t.Errorf("--node nosuch: got exit %d, stderr %q, want an error naming the node", code, errOut)
		}
	})

	t.Run("ztunnel-config other sections", func(t *testing.T) {
		for sec, want := range map[string]string{
			"service":     "SERVICE NAME",
			"policy":      "POLICY NAME",
			"certificate": "IDENTITY",
			"all":         "SERVICE VIP",
		} {
			if out := ok(t, "ztunnel-config", sec, "--node", "node1"); !strings.Contains(out, want) {
				t.Errorf("ztunnel-config %s: got %q, want %q", sec, out, want)
			}
		}
		// One connection through the mesh, node2 to node1: node2's
		// ztunnel reports it as its source, node1's as its destination.
		to := net.JoinHostPort(pod.Status.PodIP, "9000")
		if out, err := l.Exec(ctx, "shop", "productpage", l.Binaries().Echo, "tcp", to, "hello"); err != nil {
			t.Fatalf("echo to %s: %v: %s", to, err, out)
		}
		for node, reporter := range map[string]string{"node2": "source", "node1": "destination"} {
			out := ok(t, "ztunnel-config", "connections", "--node", node, "-o", "json")
			var conns []struct {
				Reporter, Source, Destination string
				Opened, Closed                int
			}
			if err := json.Unmarshal([]byte(out), &conns); err != nil {
				t.Fatal(err)
			}
			found := false
			for _, c := range conns {
				found = found || c.Reporter == reporter && c.Source == "shop/productpage" && c.Destination == "shop/reviews-v1" && c.Opened >= 1
			}
			if !found {
				t.Errorf("ztunnel-config connections on %s: got %+v, want productpage to reviews-v1 reported by %s", node, conns, reporter)
			}
		}
		if out := ok(t, "ztunnel-config", "connections", "--node", "node1"); !strings.Contains(out, "destination   shop/productpage   shop/reviews-v1") {
			t.Errorf("ztunnel-config connections: got %q, want a table", out)
		}
		if out := ok(t, "ztunnel-config", "log", "--node", "node1", "--level", "debug"); !strings.Contains(out, "level: debug") {
			t.Errorf("log --level debug: got %q", out)
		}
		if out := ok(t, "ztunnel-config", "log", "--node", "node1"); !strings.Contains(out, "level: debug") {
			t.Errorf("log after setting debug: got %q", out)
		}
		ok(t, "ztunnel-config", "log", "--node", "node1", "--level", "info")
	})

	t.Run("precheck", func(t *testing.T) {
		out := ok(t, "x", "precheck", "--cni-conf-dir", l.Node("node1").CNIConfDir)
		for _, want := range []string{"PASS   cni config", "ambit-cni already chained", "PASS   other mesh (cluster)"} {
			if !strings.Contains(out, want) {
				t.Errorf("precheck on node1's CNI dir: got\n%s\nwant %q", out, want)
			}
		}
	})

	gwc, err := gatewayclient.NewForConfig(l.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("waypoint", func(t *testing.T) {
		out := ok(t, "waypoint", "apply", "-n", "shop", "--enroll-namespace")
		if !strings.Contains(out, "waypoint shop/waypoint applied") || !strings.Contains(out, `namespace shop labeled with "istio.io/use-waypoint": "waypoint"`) {
			t.Errorf("apply --enroll-namespace: got %q", out)
		}
		if ns, err := l.Client.CoreV1().Namespaces().Get(ctx, "shop", metav1.GetOptions{}); err != nil || ns.Labels["istio.io/use-waypoint"] != "waypoint" {
			t.Errorf("namespace shop: got labels %v (%v), want istio.io/use-waypoint=waypoint", ns.GetLabels(), err)
		}
		// Another waypoint for the namespace needs --overwrite.
		out = ok(t, "waypoint", "apply", "-n", "shop", "--name", "other", "--enroll-namespace")
		if !strings.Contains(out, "add --overwrite") {
			t.Errorf("apply another namespace waypoint: got %q, want a warning about --overwrite", out)
		}
		if _, err := gwc.GatewayV1().Gateways("shop").Get(ctx, "other", metav1.GetOptions{}); err == nil {
			t.Error("apply without --overwrite: gateway shop/other was created")
		}

		// The service account's waypoint, waited for: the test stands in
		// for the controller and sets Programmed once the Gateway exists.
		done := make(chan struct{})
		go func() {
			defer close(done)
			for ctx.Err() == nil {
				gw, err := gwc.GatewayV1().Gateways("shop").Get(ctx, "reviews", metav1.GetOptions{})
				if err != nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				gw.Status.Conditions = []metav1.Condition{{Type: string(gatewayv1.GatewayConditionProgrammed), Status: metav1.ConditionTrue,
					Reason: "Programmed", LastTransitionTime: metav1.Now(), ObservedGeneration: gw.Generation}}
				if _, err := gwc.GatewayV1().Gateways("shop").UpdateStatus(ctx, gw, metav1.UpdateOptions{}); err == nil {
					return
				}
			}
		}()
		out = ok(t, "waypoint", "apply", "-n", "shop", "--service-account", "reviews", "--wait", "--timeout", "1m")
		<-done
		for _, want := range []string{"waypoint shop/reviews applied", "waypoint shop/reviews is ready", `serviceaccount shop/reviews labeled with "istio.io/use-waypoint": "reviews"`} {
			if !strings.Contains(out, want) {
				t.Errorf("apply --service-account --wait: got %q, want %q", out, want)
			}
		}
		gw, err := gwc.GatewayV1().Gateways("shop").Get(ctx, "reviews", metav1.GetOptions{})
		if err != nil || gw.Annotations["istio.io/for-service-account"] != "reviews" || gw.Spec.GatewayClassName != "istio-waypoint" {
			t.Errorf("gateway shop/reviews: got %+v (%v), want class istio-waypoint annotated for reviews", gw, err)
		}
		if sa, err := l.Client.CoreV1().ServiceAccounts("shop").Get(ctx, "reviews", metav1.GetOptions{}); err != nil || sa.Labels["istio.io/use-waypoint"] != "reviews" {
			t.Errorf("serviceaccount shop/reviews: got labels %v (%v), want istio.io/use-waypoint=reviews", sa.GetLabels(), err)
		}

		out = ok(t, "waypoint", "list", "-A")
		want := "NAMESPACE   NAME       TRAFFIC TYPE        SERVICE ACCOUNT   PROGRAMMED\n" +
			"shop        reviews    all (default)       reviews           True\n" +
			"shop        waypoint   service (default)   None              Unknown\n"
		if out != want {
			t.Errorf("waypoint list -A: got\n%s\nwant\n%s", out, want)
		}
		if out := ok(t, "waypoint", "status", "-n", "shop", "--name", "reviews"); !strings.Contains(out, "reviews   True     Programmed   Programmed") {
			t.Errorf("waypoint status --name reviews: got %q", out)
		}

		// --wait on a waypoint nobody programs ends with the condition
		// the Gateway CRD defaults (Programmed Unknown, Pending).
		code, _, errOut := ambitctl(t, "waypoint", "apply", "-n", "shop", "--name", "slow", "--wait", "--timeout", "2s")
		if code == 0 || !strings.Contains(errOut, "timed out") || !strings.Contains(errOut, "Programmed is Unknown: Pending") {
			t.Errorf("apply --wait with no controller: got exit %d, stderr %q, want a timeout with the Programmed condition", code, errOut)
		}

		out = ok(t, "waypoint", "delete", "--all", "-n", "shop")
		for _, want := range []string{"waypoint shop/reviews deleted", "waypoint shop/slow deleted", "waypoint shop/waypoint deleted", "serviceaccount shop/reviews no longer uses it"} {
			if !strings.Contains(out, want) {
				t.Errorf("delete --all: got %q, want %q", out, want)
			}
		}
		if sa, err := l.Client.CoreV1().ServiceAccounts("shop").Get(ctx, "reviews", metav1.GetOptions{}); err != nil || sa.Labels["istio.io/use-waypoint"] != "" {
			t.Errorf("serviceaccount after delete: got labels %v (%v), want no istio.io/use-waypoint", sa.GetLabels(), err)
		}
		if out := ok(t, "waypoint", "list", "-n", "shop"); out != "No waypoints found.\n" {
			t.Errorf("list after delete: got %q", out)
		}
		code, _, errOut = ambitctl(t, "waypoint", "delete", "nosuch", "-n", "shop")
		if code == 0 || !strings.Contains(errOut, "nosuch") {
			t.Errorf("delete nosuch: got exit %d, stderr %q, want an error naming it", code, errOut)
		}
	})

	t.Run("analyze", func(t *testing.T) {
		// The namespace still names the deleted waypoint: its traffic is
		// refused, an Error.
		code, out, errOut := ambitctl(t, "analyze", "-n", "shop")
		if code != 1 || !strings.Contains(out, "Error [WaypointNotFound] (Namespace shop) bound to waypoint shop/waypoint") || !strings.Contains(errOut, "errors found") {
			t.Errorf("analyze with the waypoint gone: got exit %d, stdout %q, stderr %q; want 1 and WaypointNotFound for namespace shop", code, out, errOut)
		}
		ok(t, "waypoint", "apply", "-n", "shop")
		if out := ok(t, "analyze", "-n", "shop"); out != "No issues found in namespace shop.\n" {
			t.Errorf("analyze with the waypoint back: got %q", out)
		}
	})
}

// gatewayCRDs are the GatewayClass and Gateway CRDs (standard channel) of
// the Gateway API module go.mod pins.
func gatewayCRDs(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api").Output()
	if err != nil {
		t.Fatalf("find the gateway api module: %v", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "standard")
	return []string{filepath.Join(dir, "gateway.networking.k8s.io_gatewayclasses.yaml"), filepath.Join(dir, "gateway.networking.k8s.io_gateways.yaml")}
}
