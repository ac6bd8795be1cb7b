package cli

import (
	"bytes"
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/ztunnel/admin"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

// run runs ambitctl with args and returns its exit code, stdout and stderr.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Main(context.Background(), genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}, args)
	return code, out.String(), errOut.String()
}

// TestHelp runs --help on every command of the tree: each has a short
// description and its help names its own usage.
func TestHelp(t *testing.T) {
	var walk func(cmd *cobra.Command, path []string)
	var paths [][]string
	walk = func(cmd *cobra.Command, path []string) {
		paths = append(paths, path)
		for _, sub := range cmd.Commands() {
			if sub.Name() == "help" {
				continue
			}
			walk(sub, append(append([]string{}, path...), sub.Name()))
		}
	}
	root := New(genericiooptions.NewTestIOStreamsDiscard())
	walk(root, nil)
	for _, want := range [][]string{{"version"}, {"ztunnel-config", "workload"}, {"ztunnel-config", "connections"}, {"ztunnel-config", "log"},
		{"waypoint", "apply"}, {"waypoint", "status"}, {"x", "precheck"}, {"analyze"}, {"completion"},
		{"proxy-config", "listener"}, {"proxy-config", "route"}, {"proxy-config", "cluster"}, {"proxy-config", "endpoint"}} {
		found := false
		for _, p := range paths {
			found = found || strings.Join(p, " ") == strings.Join(want, " ")
		}
		if !found {
			t.Errorf("command tree: no %q among %q", want, paths)
		}
	}
	for _, p := range paths {
		code, out, errOut := run(t, append(p, "--help")...)
		name := strings.Join(append([]string{"ambitctl"}, p...), " ")
		if code != 0 || errOut != "" {
			t.Errorf("%s --help: got exit %d, stderr %q, want 0 and none", name, code, errOut)
		}
		if !strings.Contains(out, "Usage:\n  "+name) {
			t.Errorf("%s --help: got %q, want its usage", name, out)
		}
		cmd, _, err := root.Find(p)
		if err != nil || cmd.Short == "" {
			t.Errorf("%s: no short description (%v)", name, err)
		}
	}
}

func TestCompletion(t *testing.T) {
	for shell, want := range map[string]string{"bash": "__start_ambitctl", "zsh": "#compdef ambitctl"} {
		code, out, _ := run(t, "completion", shell)
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("completion %s: got exit %d and %d bytes, want 0 and a script with %q", shell, code, len(out), want)
		}
	}
	code, _, errOut := run(t, "completion", "fish")
	if code == 0 || !strings.Contains(errOut, "want bash or zsh") {
		t.Errorf("completion fish: got exit %d, stderr %q, want an error naming bash and zsh", code, errOut)
	}
}

func TestBadInput(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"version", "--remote=false", "-o", "xml"}, `output "xml": want yaml or json`},
		{[]string{"ztunnel-config", "workload", "-o", "wide"}, `output "wide"`},
		{[]string{"ztunnel-config", "log", "--level", "loud"}, `level "loud"`},
		{[]string{"ztunnel-config", "workload", "a", "b"}, "accepts at most 1 arg"},
		{[]string{"nosuch"}, "unknown command"},
		{[]string{"waypoint", "apply", "--for", "service-account"}, "--service-account NAME"},
		{[]string{"waypoint", "generate", "--name", "none"}, `"none": reserved`},
		{[]string{"waypoint", "delete"}, "name waypoints or give --all"},
	}
	for _, tt := range tests {
		code, _, errOut := run(t, tt.args...)
		if code != 1 || !strings.Contains(errOut, tt.want) {
			t.Errorf("ambitctl %s: got exit %d, stderr %q, want 1 and %q", strings.Join(tt.args, " "), code, errOut, tt.want)
		}
	}
}

func TestVersionClient(t *testing.T) {
	code, out, _ := run(t, "version", "--remote=false", "-o", "json")
	if code != 0 || !strings.Contains(out, `"component": "ambitctl"`) || !strings.Contains(out, `"version": "dev"`) {
		t.Errorf("version --remote=false -o json: got %d %q, want ambitctl's dev version", code, out)
	}
}

func testDump() *admin.Dump {
	return &admin.Dump{
		Node: "node1",
		Workloads: []*config.Workload{
			{Name: "reviews-v1", Namespace: "shop", Addresses: []netip.Addr{netip.MustParseAddr("10.244.1.5")}, Node: "node1",
				TunnelProtocol: config.TunnelHBONE, Services: map[string]config.PortList{"shop/reviews.shop.svc.cluster.local": {}},
				Waypoint: &config.GatewayAddress{Hostname: "waypoint.shop.svc.cluster.local", Namespace: "shop"}},
			{Name: "reviews-v2", Namespace: "shop", Addresses: []netip.Addr{netip.MustParseAddr("10.244.2.7")}, Node: "node2",
				Status: config.Unhealthy, Services: map[string]config.PortList{"shop/reviews.shop.svc.cluster.local": {}}},
			{Name: "client", Namespace: "other", Addresses: []netip.Addr{netip.MustParseAddr("10.244.2.9")}, Node: "node2"},
		},
		Services: []*config.Service{{Name: "reviews", Namespace: "shop", Hostname: "reviews.shop.svc.cluster.local",
			Addresses: []config.NetworkAddress{{Address: netip.MustParseAddr("10.96.0.20")}}}},
		Policies:     []*config.Authorization{{Name: "deny-all", Namespace: "shop", Scope: config.ScopeNamespace, Action: config.Deny, DryRun: true}},
		Certificates: []identity.CertInfo{{Identity: "spiffe://cluster.local/ns/shop/sa/reviews", State: "Initializing"}},
	}
}

func TestTables(t *testing.T) {
	tests := []struct {
		name  string
		print func(*bytes.Buffer, *admin.Dump) error
		want  string
	}{
		{"workloads", func(b *bytes.Buffer, d *admin.Dump) error { return printWorkloads(b, d, "") }, `NAMESPACE   POD NAME     ADDRESS      NODE    WAYPOINT                               PROTOCOL
other       client       10.244.2.9   node2   None                                   NONE
shop        reviews-v1   10.244.1.5   node1   shop/waypoint.shop.svc.cluster.local   HBONE
shop        reviews-v2   10.244.2.7   node2   None                                   NONE
`},
		{"workloads of a namespace", func(b *bytes.Buffer, d *admin.Dump) error { return printWorkloads(b, d, "other") }, `NAMESPACE   POD NAME   ADDRESS      NODE    WAYPOINT   PROTOCOL
other       client     10.244.2.9   node2   None       NONE
`},
		{"services", func(b *bytes.Buffer, d *admin.Dump) error { return printServices(b, d, "") }, `NAMESPACE   SERVICE NAME   SERVICE VIP   WAYPOINT   ENDPOINTS
shop        reviews        10.96.0.20    None       1/2
`},
		{"policies", func(b *bytes.Buffer, d *admin.Dump) error { return printPolicies(b, d, "") }, `NAMESPACE   POLICY NAME   ACTION           SCOPE
shop        deny-all      DENY (dry run)   NAMESPACE
`},
		{"certificates", func(b *bytes.Buffer, d *admin.Dump) error { return printCertificates(b, d, "") }, `IDENTITY                                    STATE          SERIAL NUMBER   NOT AFTER   NOT BEFORE
spiffe://cluster.local/ns/shop/sa/reviews   Initializing   None            None        None
`},
	}
	for _, tt := range tests {
		var b bytes.Buffer
		if err := tt.print(&b, testDump()); err != nil {
			t.Fatal(err)
		}
		if b.String() != tt.want {
			t.Errorf("%s: got\n%s\nwant\n%s", tt.name, b.String(), tt.want)
		}
	}
}

func TestParseConnections(t *testing.T) {
	const metrics = `# TYPE istio_tcp_connections_opened_total counter
istio_tcp_connections_opened_total{reporter="source",source_workload="productpage",source_workload_namespace="shop",destination_workload="reviews",destination_workload_namespace="shop",destination_service="reviews.shop.svc.cluster.local",response_flags="-"} 5
istio_tcp_connections_opened_total{reporter="source",source_workload="productpage",source_workload_namespace="shop",destination_workload="reviews",destination_workload_namespace="shop",destination_service="reviews.shop.svc.cluster.local",response_flags="DENY"} 2
istio_tcp_connections_opened_total{reporter="destination",source_workload="a",source_workload_namespace="x",destination_workload="b",destination_workload_namespace="x",destination_service="unknown"} 1
# TYPE istio_tcp_connections_closed_total counter
istio_tcp_connections_closed_total{reporter="source",source_workload="productpage",source_workload_namespace="shop",destination_workload="reviews",destination_workload_namespace="shop",destination_service="reviews.shop.svc.cluster.local",response_flags="-"} 4
`
	got, err := parseConnections([]byte(metrics))
	if err != nil {
		t.Fatal(err)
	}
	want := []connection{
		{Reporter: "destination", Source: "x/a", Destination: "x/b", Opened: 1, Open: 1},
		{Reporter: "source", Source: "shop/productpage", Destination: "shop/reviews", Service: "reviews.shop.svc.cluster.local", Opened: 7, Closed: 4, Open: 3},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("row %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	if _, err := parseConnections([]byte("not metrics {")); err == nil {
		t.Error("parse garbage: got no error, want one")
	}
}
