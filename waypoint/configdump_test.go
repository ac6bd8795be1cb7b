package waypoint_test

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambitmesh/ambit/internal/anytypes"
	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/waypoint"
	"github.com/ambitmesh/ambit/waypoint/config"
)

// unlinkedURL is the type of an extension Istio's istiod sends that the
// waypoint does not link (Istio's proxy's peer metadata filter).
const unlinkedURL = "type.googleapis.com/io.istio.http.peer_metadata.Config"

// unlinkedAny is a value of unlinkedURL's type, with a field.
func unlinkedAny(t *testing.T) *anypb.Any {
	t.Helper()
	value, err := proto.Marshal(structpb.NewStringValue("opaque"))
	if err != nil {
		t.Fatal(err)
	}
	return &anypb.Any{TypeUrl: unlinkedURL, Value: value}
}

// testProxy is a waypoint with no listeners open, holding snap (nil:
// no configuration yet).
func testProxy(t *testing.T, snap *config.Snapshot) *waypoint.Proxy {
	t.Helper()
	ca, err := identity.NewCA(identity.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	p, err := waypoint.New(waypoint.Config{Identity: waypointID, Certificates: ca, Roots: ca.Roots()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if snap != nil {
		p.Update(snap)
	}
	return p
}

// referenceDump is the config dump as the waypoint wrote it with Envoy's
// admin types and protojson, before it stopped linking them: what
// ConfigDump's output must equal as JSON.
func referenceDump(t *testing.T, snap *config.Snapshot) []byte {
	t.Helper()
	dump := &adminv3.ConfigDump{}
	add := func(m proto.Message) {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		dump.Configs = append(dump.Configs, a)
	}
	ld, cd, ed := &adminv3.ListenersConfigDump{}, &adminv3.ClustersConfigDump{}, &adminv3.EndpointsConfigDump{}
	if snap != nil {
		for _, l := range snap.RawListeners {
			a, err := anypb.New(l)
			if err != nil {
				t.Fatal(err)
			}
			ld.DynamicListeners = append(ld.DynamicListeners, &adminv3.ListenersConfigDump_DynamicListener{
				Name: l.GetName(), ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{Listener: a}})
		}
		for _, c := range snap.RawClusters {
			a, err := anypb.New(c)
			if err != nil {
				t.Fatal(err)
			}
			cd.DynamicActiveClusters = append(cd.DynamicActiveClusters, &adminv3.ClustersConfigDump_DynamicCluster{Cluster: a})
		}
		for _, e := range snap.RawEndpoints {
			a, err := anypb.New(e)
			if err != nil {
				t.Fatal(err)
			}
			ed.DynamicEndpointConfigs = append(ed.DynamicEndpointConfigs, &adminv3.EndpointsConfigDump_DynamicEndpointConfig{EndpointConfig: a})
		}
	}
	for _, m := range []proto.Message{cd, ed, ld} {
		add(m)
	}
	b, err := protojson.MarshalOptions{Indent: "  ", Resolver: anytypes.Lenient{}}.Marshal(dump)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// parseJSON is b as a generic JSON value: protojson varies its spacing
// on purpose, so dumps are compared as values.
func parseJSON(t *testing.T, what string, b []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: not JSON: %v\n%s", what, err, b)
	}
	return v
}

// TestConfigDumpAsAdminTypes: the config dump, written without Envoy's
// admin types, is the JSON protojson wrote from them: for no
// configuration yet, an empty one, each of istiod's golden waypoint
// configurations, and one with resources carrying extensions of types
// the waypoint does not link, a listener without a name and one whose
// name needs escaping. It stays indented for people reading it.
func TestConfigDumpAsAdminTypes(t *testing.T) {
	type tc struct {
		name string
		snap func(t *testing.T) *config.Snapshot
	}
	cases := []tc{
		{"no configuration", func(*testing.T) *config.Snapshot { return nil }},
		{"empty", func(*testing.T) *config.Snapshot { return &config.Snapshot{} }},
	}
	goldens, err := filepath.Glob("testdata/istiod/*.json")
	if err != nil || len(goldens) == 0 {
		t.Fatalf("golden configurations: got %v, %v, want some", goldens, err)
	}
	load := func(t *testing.T, file string) *config.Snapshot {
		t.Helper()
		r, err := config.LoadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		snap, err := r.Build()
		if err != nil {
			t.Fatal(err)
		}
		return snap
	}
	for _, f := range goldens {
		cases = append(cases, tc{filepath.Base(f), func(t *testing.T) *config.Snapshot { return load(t, f) }})
	}
	cases = append(cases, tc{"unlinked extensions", func(t *testing.T) *config.Snapshot {
		// The dump shows the resources as received, whether or not the
		// snapshot could use them: added after Build.
		snap := load(t, "testdata/istiod/service.json")
		ext := unlinkedAny(t)
		snap.RawListeners = append(snap.RawListeners,
			&listenerv3.Listener{Name: "main_internal_2", ListenerFilters: []*listenerv3.ListenerFilter{{
				Name: "istio.peer_metadata", ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: ext}}}},
			&listenerv3.Listener{},
			&listenerv3.Listener{Name: `a "quoted" <name> & \ é`})
		snap.RawClusters = append(snap.RawClusters, &cluster.Cluster{Name: "ext",
			TypedExtensionProtocolOptions: map[string]*anypb.Any{"istio.peer_metadata": ext}})
		snap.RawEndpoints = append(snap.RawEndpoints, &endpoint.ClusterLoadAssignment{ClusterName: "ext",
			Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
				Metadata: &core.Metadata{TypedFilterMetadata: map[string]*anypb.Any{"istio": ext}}}}}}})
		return snap
	}})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			snap := c.snap(t)
			got, err := testProxy(t, snap).ConfigDump()
			if err != nil {
				t.Fatal(err)
			}
			want := referenceDump(t, snap)
			if diff := cmp.Diff(parseJSON(t, "want", want), parseJSON(t, "got", got)); diff != "" {
				t.Errorf("config dump (-want +got):\n%s", diff)
			}
			if !strings.HasPrefix(string(got), "{\n  \"configs\": [\n    {\n      \"@type\": ") {
				t.Errorf("config dump: got\n%.200s\nwant it indented by two spaces a level", got)
			}
		})
	}
}

// TestDumpUnlinkedTypes: a listener carrying an extension of a type the
// waypoint does not link (Istio's proxy's peer metadata filter, as
// Istio's istiod sends it) is dumped with its type URL, beside the
// fields of the types it knows, instead of failing the whole dump.
func TestDumpUnlinkedTypes(t *testing.T) {
	l := &listenerv3.Listener{Name: "main_internal", ListenerFilters: []*listenerv3.ListenerFilter{{
		Name:       "istio.peer_metadata",
		ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: unlinkedAny(t)},
	}}}
	b, err := testProxy(t, &config.Snapshot{RawListeners: []*listenerv3.Listener{l}}).ConfigDump()
	if err != nil {
		t.Fatalf("dump with an unlinked type: %v", err)
	}
	compact := strings.Join(strings.Fields(string(b)), "")
	for _, want := range []string{`"@type":"` + unlinkedURL + `"}`, `"name":"main_internal"`, `"name":"istio.peer_metadata"`} {
		if !strings.Contains(compact, want) {
			t.Errorf("dump %s: want %s in it", b, want)
		}
	}
}
