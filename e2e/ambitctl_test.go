package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambitmesh/ambit/ambitctl/cli"
	"github.com/ambitmesh/ambit/e2e/internal/labmesh"
	"github.com/ambitmesh/ambit/internal/enrolment"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/ztunnel/admin"
)

// TestAmbitctl runs ambitctl, in process, against a lab with Ambit
// running as a user meets it: versions of every component, ztunnel's
// state of a meshed pod through the lab's namespace dialer, the precheck
// of a lab node, and waypoints applied, waited for, listed, inspected
// and deleted with istiod's waypoint controller deploying them (the
// scheduler places their pods) and reporting their status.
func TestAmbitctl(t *testing.T) {
	l := startLab(t, lab.Config{Nodes: 2, Scheduler: true})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	mesh := labmesh.StartMesh(t, ctx, l, labmesh.IstiodOptions{})
	if err := l.CreateNamespace(ctx, "shop", map[string]string{enrolment.LabelDataplaneMode: enrolment.ModeAmbient}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Client.CoreV1().ServiceAccounts("shop").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "reviews"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := l.RunEchoPod(ctx, "shop", "reviews-v1", "node1", "reviews", map[string]string{"app": "reviews"})
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
		if row, want := workloadRow(out, "reviews-v1"), []string{"shop", "reviews-v1", pod.Status.PodIP, "node1", "None", "HBONE"}; !slices.Equal(row, want) {
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
		// Waited for: istiod's waypoint controller deploys it, the
		// scheduler places its pod, and the controller reports
		// Programmed once its Deployment is available.
		out := ok(t, "waypoint", "apply", "-n", "shop", "--enroll-namespace", "--wait", "--timeout", "2m")
		for _, want := range []string{"waypoint shop/waypoint applied", "waypoint shop/waypoint is ready", `namespace shop labeled with "istio.io/use-waypoint": "waypoint"`} {
			if !strings.Contains(out, want) {
				t.Errorf("apply --enroll-namespace --wait: got %q, want %q", out, want)
			}
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

		// The service account's waypoint, named apart from the account:
		// the controller gives a waypoint's pods a service account of
		// the Gateway's name.
		out = ok(t, "waypoint", "apply", "-n", "shop", "--service-account", "reviews", "--name", "reviews-wp", "--wait", "--timeout", "2m")
		for _, want := range []string{"waypoint shop/reviews-wp applied", "waypoint shop/reviews-wp is ready", `serviceaccount shop/reviews labeled with "istio.io/use-waypoint": "reviews-wp"`} {
			if !strings.Contains(out, want) {
				t.Errorf("apply --service-account --wait: got %q, want %q", out, want)
			}
		}
		gw, err := gwc.GatewayV1().Gateways("shop").Get(ctx, "reviews-wp", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if gw.Annotations["istio.io/for-service-account"] != "reviews" || gw.Spec.GatewayClassName != "istio-waypoint" {
			t.Errorf("gateway shop/reviews-wp: got %+v, want class istio-waypoint annotated for reviews", gw)
		}
		if sa, err := l.Client.CoreV1().ServiceAccounts("shop").Get(ctx, "reviews", metav1.GetOptions{}); err != nil || sa.Labels["istio.io/use-waypoint"] != "reviews-wp" {
			t.Errorf("serviceaccount shop/reviews: got labels %v (%v), want istio.io/use-waypoint=reviews-wp", sa.GetLabels(), err)
		}
		// ztunnel binds the account's workload to the address the
		// controller reports for the waypoint, and ztunnel-config shows it.
		var vip string
		for _, a := range gw.Status.Addresses {
			if a.Type != nil && *a.Type == gatewayv1.IPAddressType {
				vip = a.Value
			}
		}
		if vip == "" {
			t.Fatalf("gateway shop/reviews-wp: got addresses %+v, want its Service's IP", gw.Status.Addresses)
		}
		if err := mesh.WaitZtunnels(ctx, "reviews-v1 bound to waypoint "+vip, func(d *admin.Dump) bool {
			for _, w := range d.Workloads {
				if w.Namespace == "shop" && w.Name == "reviews-v1" {
					return w.Waypoint != nil && w.Waypoint.String() == vip
				}
			}
			return false
		}); err != nil {
			t.Fatal(err)
		}
		out = ok(t, "ztunnel-config", "workload", "--node", "node2", "-n", "shop")
		if row, want := workloadRow(out, "reviews-v1"), []string{"shop", "reviews-v1", pod.Status.PodIP, "node1", vip, "HBONE"}; !slices.Equal(row, want) {
			t.Errorf("ztunnel-config workload after the waypoint: got row %q in\n%s\nwant %q", row, out, want)
		}

		// A waypoint whose pods the namespace's quota refuses: the
		// controller reports it Pending, and --wait ends with that.
		if err := l.CreateNamespace(ctx, "full", nil); err != nil {
			t.Fatal(err)
		}
		quota := &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Name: "no-pods"}, Spec: corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{corev1.ResourcePods: resource.MustParse("0")}}}
		if _, err := l.Client.CoreV1().ResourceQuotas("full").Create(ctx, quota, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		code, _, errOut := ambitctl(t, "waypoint", "apply", "-n", "full", "--name", "slow", "--wait", "--timeout", "10s")
		if want := "Programmed is False: Pending: waiting for deployment slow to be available"; code == 0 || !strings.Contains(errOut, "timed out") || !strings.Contains(errOut, want) {
			t.Errorf("apply --wait with its pods refused: got exit %d, stderr %q, want a timeout with %q", code, errOut, want)
		}

		wantRows(t, "waypoint list -A", ok(t, "waypoint", "list", "-A"), []string{
			"NAMESPACE NAME TRAFFIC TYPE SERVICE ACCOUNT PROGRAMMED",
			"full slow service (default) None False",
			"shop reviews-wp all (default) reviews True",
			"shop waypoint service (default) None True",
		})
		wantRows(t, "waypoint status --name reviews-wp", ok(t, "waypoint", "status", "-n", "shop", "--name", "reviews-wp"), []string{
			"NAME STATUS TYPE REASON MESSAGE",
			"reviews-wp True Accepted Accepted Handled by Ambit's istiod",
			"reviews-wp True Programmed Programmed deployment reviews-wp is available",
		})
		wantRows(t, "waypoint status -n full", ok(t, "waypoint", "status", "-n", "full"), []string{
			"NAME STATUS TYPE REASON MESSAGE",
			"slow True Accepted Accepted Handled by Ambit's istiod",
			"slow False Programmed Pending waiting for deployment slow to be available",
		})

		// The waypoint the controller deployed serves its config.
		out = ok(t, "proxy-config", "listener", "reviews-wp", "-n", "shop")
		for _, want := range []string{"connect_terminate", "main_internal"} {
			if !strings.Contains(out, want) {
				t.Errorf("proxy-config listener reviews-wp: got\n%s\nwant listener %s", out, want)
			}
		}

		out = ok(t, "waypoint", "delete", "--all", "-n", "shop")
		for _, want := range []string{"waypoint shop/reviews-wp deleted", "waypoint shop/waypoint deleted", "serviceaccount shop/reviews no longer uses it"} {
			if !strings.Contains(out, want) {
				t.Errorf("delete --all: got %q, want %q", out, want)
			}
		}
		if sa, err := l.Client.CoreV1().ServiceAccounts("shop").Get(ctx, "reviews", metav1.GetOptions{}); err != nil || sa.Labels["istio.io/use-waypoint"] != "" {
			t.Errorf("serviceaccount after delete: got labels %v (%v), want no istio.io/use-waypoint", sa.GetLabels(), err)
		}
		// With their Gateways go the waypoints' pods.
		for _, name := range []string{"waypoint", "reviews-wp"} {
			if _, err := mesh.WaypointPods(ctx, "shop", name, 0); err != nil {
				t.Error(err)
			}
		}
		if out := ok(t, "waypoint", "list", "-n", "shop"); out != "No waypoints found.\n" {
			t.Errorf("list after delete: got %q", out)
		}
		if out := ok(t, "waypoint", "delete", "slow", "-n", "full"); out != "waypoint full/slow deleted\n" {
			t.Errorf("delete slow: got %q", out)
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

// wantRows checks a table's rows, white space folded, against want.
func wantRows(t *testing.T, what, out string, want []string) {
	t.Helper()
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		got = append(got, strings.Join(strings.Fields(line), " "))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("%s: rows differ (-want +got):\n%s\nin\n%s", what, diff, out)
	}
}

// workloadRow is the row of pod name in ztunnel-config workload's table,
// split into its fields.
func workloadRow(out, name string) []string {
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[1] == name {
			return f
		}
	}
	return nil
}
