package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/ambitmesh/ambit/ambitctl/adminport"
	"github.com/ambitmesh/ambit/waypoint/waypointtest"
)

// addrDialer dials one address whatever the target, standing in for the
// pod port-forward to a waypoint's admin port; it records the targets.
type addrDialer struct {
	addr    string
	targets []adminport.Target
}

func (a *addrDialer) Targets(context.Context, adminport.Component, string) ([]adminport.Target, error) {
	return nil, nil
}

func (a *addrDialer) Dial(ctx context.Context, t adminport.Target) (net.Conn, error) {
	a.targets = append(a.targets, t)
	var d net.Dialer
	return d.DialContext(ctx, "tcp", a.addr)
}

func (a *addrDialer) Close() error { return nil }

// startWaypoint runs Ambit's waypoint in process on istiod's golden
// service waypoint (reviews in shop, HTTP 9080 and TCP 9090) and serves
// its admin API, as on its port 15000.
func startWaypoint(t *testing.T) string {
	t.Helper()
	p := waypointtest.Golden(t, "service.json")
	srv := httptest.NewServer(p.AdminHandler(prometheus.NewRegistry(), nil))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// runWith runs ambitctl with a cluster holding objs and admin ports
// reached through d.
func runWith(t *testing.T, d adminport.Dialer, objs []*corev1.Pod, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	cl := fake.NewClientset()
	for _, p := range objs {
		if _, err := cl.CoreV1().Pods(p.Namespace).Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	c := &ctl{streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut},
		kube: genericclioptions.NewConfigFlags(true), client: cl, dial: d}
	root := newRoot(c)
	root.SetArgs(args)
	code := 0
	if err := root.ExecuteContext(t.Context()); err != nil {
		errOut.WriteString("Error: " + err.Error() + "\n")
		code = 1
	}
	return code, out.String(), errOut.String()
}

func TestProxyConfig(t *testing.T) {
	d := &addrDialer{addr: startWaypoint(t)}
	pods := []*corev1.Pod{
		{ObjectMeta: metav1.ObjectMeta{Name: "waypoint-6c8d9", Namespace: "shop", Labels: map[string]string{adminport.Waypoint.Selector: "waypoint"}},
			Spec: corev1.PodSpec{NodeName: "node2"}, Status: corev1.PodStatus{Phase: corev1.PodRunning}},
		{ObjectMeta: metav1.ObjectMeta{Name: "waypoint-pending", Namespace: "shop", Labels: map[string]string{adminport.Waypoint.Selector: "waypoint"}},
			Status: corev1.PodStatus{Phase: corev1.PodPending}},
	}
	const reviews = "inbound-vip|9080|http|reviews.shop.svc.cluster.local"
	tests := []struct {
		name string
		args []string
		want []string // lines, in this order
	}{
		{"listeners by gateway", []string{"proxy-config", "listener", "waypoint", "-n", "shop"}, []string{
			"LISTENER                            CHAIN",
			"connect_terminate (0.0.0.0:15008)   default",
			"main_internal (internal)            " + reviews + "   ip=10.96.0.30 -> port=9080",
		}},
		{"routes by pod", []string{"pc", "route", "waypoint-6c8d9.shop"}, []string{
			"NAME                                                   VHOST NAME          DOMAINS   MATCH     ROUTE     DESTINATION",
			"default                                                default             *         CONNECT   -         main_internal",
			reviews + "   inbound|http|9080   *         /*        default   " + reviews,
		}},
		{"clusters of a host", []string{"proxy-config", "cluster", "waypoint.shop", "--fqdn", "reviews.shop.svc.cluster.local"}, []string{
			"NAME                                                   SERVICE FQDN                     PORT   SUBSET   DIRECTION     TYPE",
			reviews + "   reviews.shop.svc.cluster.local   9080   http     inbound-vip   EDS",
			"inbound-vip|9090|tcp|reviews.shop.svc.cluster.local    reviews.shop.svc.cluster.local   9090   tcp      inbound-vip   EDS",
		}},
		{"endpoints of a cluster", []string{"proxy-config", "endpoint", "waypoint.shop", "--cluster", reviews}, []string{
			"ENDPOINT                                STATUS    WEIGHT   CLUSTER",
			"10.244.1.5:9080 via connect_originate   HEALTHY   1        " + reviews,
			"10.244.2.6:9080 via connect_originate   HEALTHY   1        " + reviews,
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d.targets = nil
			code, out, errOut := runWith(t, d, pods, tc.args...)
			if code != 0 {
				t.Fatalf("got exit %d, stderr %q", code, errOut)
			}
			rest := out
			for _, line := range tc.want {
				i := strings.Index(rest, line)
				if i < 0 {
					t.Fatalf("got\n%s\nwant a line with %q (in order)", out, line)
				}
				rest = rest[i+len(line):]
			}
			if len(d.targets) != 1 || d.targets[0].Pod != "waypoint-6c8d9" || d.targets[0].Namespace != "shop" || d.targets[0].Component.Port != 15000 {
				t.Errorf("dialled %+v, want waypoint-6c8d9 in shop on port 15000", d.targets)
			}
		})
	}

	// -o json: the section's Envoy objects.
	code, out, errOut := runWith(t, d, pods, "proxy-config", "listener", "waypoint.shop", "--name", "connect_terminate", "-o", "json")
	var ls []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &ls) != nil || len(ls) != 1 || ls[0]["name"] != "connect_terminate" {
		t.Errorf("listener -o json: got %d %q %q, want one listener connect_terminate", code, out, errOut)
	}
	code, out, _ = runWith(t, d, pods, "proxy-config", "cluster", "waypoint.shop", "-o", "yaml")
	if code != 0 || !strings.Contains(out, "  name: connect_originate") || !strings.Contains(out, "type: ORIGINAL_DST") {
		t.Errorf("cluster -o yaml: got %d %q, want the clusters as YAML", code, out)
	}

	// Bad input.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"proxy-config", "listener", "nosuch", "-n", "shop"}, "find waypoint shop/nosuch: no pod of that name and no running pod with gateway.networking.k8s.io/gateway-name=nosuch"},
		{[]string{"proxy-config", "listener"}, "accepts 1 arg(s)"},
		{[]string{"proxy-config", "route", "waypoint.shop", "-o", "wide"}, `output "wide": want yaml or json`},
	} {
		code, _, errOut := runWith(t, d, pods, tc.args...)
		if code != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("ambitctl %s: got exit %d, stderr %q, want 1 and %q", strings.Join(tc.args, " "), code, errOut, tc.want)
		}
	}
}
