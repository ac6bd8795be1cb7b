package proxyconfig_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/ambitmesh/ambit/ambitctl/proxyconfig"
	"github.com/ambitmesh/ambit/waypoint/waypointtest"
)

func parse(t *testing.T, golden string) *proxyconfig.Dump {
	t.Helper()
	d, err := proxyconfig.Parse(waypointtest.GoldenDump(t, golden))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestListeners: a service-account waypoint's listeners, as istioctl
// shows a waypoint's: HBONE termination on 15008, the internal
// main_internal's chains with the matcher paths that lead to each (VIP
// and port, or the original destination in filter state; the bound pods'
// addresses and the sniffed protocol), and connect_originate.
func TestListeners(t *testing.T) {
	got := parse(t, "serviceaccount.json").ListenerSummary()
	const mi, reviews, all = "main_internal (internal)", "inbound-vip|9080|http|reviews.shop.svc.cluster.local", "inbound-vip|80|http|shop-all.shop.svc.cluster.local"
	want := []proxyconfig.Listener{
		{"connect_terminate (0.0.0.0:15008)", "default", "ALL", "Route: default"},
		{"connect_originate (internal)", "-", "ALL", "Cluster: connect_originate"},
		{mi, reviews, "ip=10.96.0.30 -> port=9080", "Route: " + reviews},
		{mi, reviews, "original-dst-filter-state=reviews.shop.svc.cluster.local:9080", "Route: " + reviews},
		{mi, all, "ip=10.96.0.40 -> port=80", "Route: " + all},
		{mi, all, "original-dst-filter-state=shop-all.shop.svc.cluster.local:80", "Route: " + all},
		{mi, "direct-tcp", "ip=10.244.1.5,10.244.2.6", "Cluster: encap"},
		{mi, "direct-http", "ip=10.244.1.5,10.244.2.6 -> application-protocol='h2c'", "Route: encap"},
		{mi, "direct-http", "ip=10.244.1.5,10.244.2.6 -> application-protocol='http/1.1'", "Route: encap"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("listeners (-want +got):\n%s", diff)
	}
}

// TestRoutes: istiod's golden HTTPRoute matches, as the waypoint holds
// them: path kinds, headers, query parameters, methods, a 90/10 split,
// each route named after its HTTPRoute rule.
func TestRoutes(t *testing.T) {
	var got []proxyconfig.Route
	for _, r := range parse(t, "httproute-matches.json").RouteSummary() {
		if strings.HasPrefix(r.Name, "inbound-vip|9080|http|reviews.") {
			got = append(got, r)
		}
	}
	const name, vh = "inbound-vip|9080|http|reviews.shop.svc.cluster.local", "inbound|http|9080"
	v1, v2 := "inbound-vip|9080|http|reviews-v1.shop.svc.cluster.local", "inbound-vip|9080|http|reviews-v2.shop.svc.cluster.local"
	want := []proxyconfig.Route{
		{name, vh, "*", "/health", "shop.reviews.2", v1},
		{name, vh, "*", "regex /reviews/[0-9]+", "shop.reviews.2", v1},
		{name, vh, "*", "/api/v2/* x-canary=true x-user~^(alice|bob)$ :method=GET ?debug=1", "shop.reviews.1", v2},
		{name, vh, "*", "/api/* :method=POST", "shop.reviews-canary.api-method", v2},
		{name, vh, "*", "/api/*", "shop.reviews.0", v1 + " 90%, " + v2 + " 10%"},
		{name, vh, "*", "/*", "shop.reviews.3", name},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("routes (-want +got):\n%s", diff)
	}
}

// TestClustersAndEndpoints: Istio's cluster names split into direction,
// port, subset and host; EDS endpoints are the pods behind the internal
// connect_originate listener.
func TestClustersAndEndpoints(t *testing.T) {
	d := parse(t, "service.json")
	var clusters []string
	for _, c := range d.ClusterSummary() {
		clusters = append(clusters, strings.Join([]string{c.ServiceFQDN, c.Port, c.Subset, c.Direction, c.Type}, " "))
	}
	wantClusters := []string{"    ORIGINAL_DST", "    STATIC", "reviews.shop.svc.cluster.local 9080 http inbound-vip EDS",
		"reviews.shop.svc.cluster.local 9090 tcp inbound-vip EDS", "    STATIC"}
	if diff := cmp.Diff(wantClusters, clusters); diff != "" {
		t.Errorf("clusters (-want +got):\n%s", diff)
	}
	var eps []string
	for _, e := range d.EndpointSummary() {
		if strings.HasPrefix(e.Cluster, "inbound-vip|9080|") {
			eps = append(eps, e.Endpoint+" "+e.Status)
		}
	}
	wantEps := []string{"10.244.1.5:9080 via connect_originate HEALTHY", "10.244.2.6:9080 via connect_originate HEALTHY"}
	if diff := cmp.Diff(wantEps, eps); diff != "" {
		t.Errorf("endpoints (-want +got):\n%s", diff)
	}
}

// TestParseBadInput: what is not a config dump is an error that says so.
func TestParseBadInput(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"not json", "decode config dump"},
		{`{"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "dynamic_listeners": [{"active_state": {"listener": {"@type": "type.googleapis.com/no.such.Type"}}}]}]}`, "no.such.Type"},
	} {
		if _, err := proxyconfig.Parse([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%.40q): got %v, want an error with %q", tc.in, err, tc.want)
		}
	}
	d, err := proxyconfig.Parse([]byte(`{}`))
	if err != nil || len(d.ListenerSummary()) != 0 {
		t.Errorf("Parse of an empty dump: got %v, %v, want nothing and no error", d, err)
	}
}

// TestParseUnlinkedExtension: an extension of a type ambitctl does not
// link (an Istio proxy filter, with its fields) inside a listener is
// skipped over, not an error: the listener is read.
func TestParseUnlinkedExtension(t *testing.T) {
	dump := `{"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "dynamic_listeners": [{"name": "main_internal", "active_state": {"listener": {
		"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "main_internal",
		"listener_filters": [{"name": "istio.peer_metadata", "typed_config": {"@type": "type.googleapis.com/io.istio.http.peer_metadata.Config", "upstream_discovery": [{"workload_discovery": {}}]}}]}}}]}]}`
	d, err := proxyconfig.Parse([]byte(dump))
	if err != nil {
		t.Fatalf("Parse with an unlinked extension: %v", err)
	}
	if len(d.Listeners) != 1 || d.Listeners[0].GetName() != "main_internal" {
		t.Errorf("listeners: got %v, want main_internal", d.Listeners)
	}
}
