package config_test

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// goldenBootstrap is a bootstrap whose static_resources (under key) are
// the listeners and clusters of istiod's golden service waypoint, with a
// node, an admin and a secret beside them.
func goldenBootstrap(t *testing.T, key string) []byte {
	t.Helper()
	raw, err := os.ReadFile("../testdata/istiod/service.json")
	if err != nil {
		t.Fatal(err)
	}
	var set struct{ Listeners, Clusters []json.RawMessage }
	if err := json.Unmarshal(raw, &set); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(map[string]any{
		"node":  map[string]any{"id": "waypoint~10.244.1.9~waypoint.shop~shop.svc.cluster.local", "cluster": "waypoint.shop"},
		"admin": map[string]any{"address": map[string]any{"socket_address": map[string]any{"address": "127.0.0.1", "port_value": 15000}}},
		key: map[string]any{
			"listeners": set.Listeners,
			"clusters":  set.Clusters,
			"secrets":   []any{map[string]any{"name": "default", "validation_context": map[string]any{"trusted_ca": map[string]any{"filename": "/etc/ca.pem"}}}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestParseStaticBootstrap: a bootstrap's static_resources, under
// either spelling protojson accepts, give the listeners and clusters
// protojson reads from the whole bootstrap; the bootstrap's other keys
// and the secrets are not read.
func TestParseStaticBootstrap(t *testing.T) {
	for _, key := range []string{"static_resources", "staticResources"} {
		t.Run(key, func(t *testing.T) {
			data := goldenBootstrap(t, key)
			var want bootstrap.Bootstrap
			if err := protojson.Unmarshal(data, &want); err != nil {
				t.Fatalf("reference: %v", err)
			}
			if len(want.GetStaticResources().GetListeners()) == 0 || len(want.GetStaticResources().GetClusters()) == 0 {
				t.Fatal("reference: no listeners or clusters")
			}
			got, err := config.ParseStatic(data)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want.GetStaticResources().GetListeners(), got.Listeners, protocmp.Transform()); diff != "" {
				t.Errorf("listeners (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(want.GetStaticResources().GetClusters(), got.Clusters, protocmp.Transform()); diff != "" {
				t.Errorf("clusters (-want +got):\n%s", diff)
			}
			if len(got.Endpoints) != 0 {
				t.Errorf("endpoints: got %d, want none (a bootstrap's are in its clusters)", len(got.Endpoints))
			}
			if _, err := got.Build(); err != nil {
				t.Errorf("build: %v", err)
			}
		})
	}
}

// TestParseStaticEmpty: a bootstrap or resource set with nothing in it
// is an empty configuration, not an error.
func TestParseStaticEmpty(t *testing.T) {
	for _, in := range []string{`{}`, `null`, `{"static_resources": null}`, `{"static_resources": {}}`,
		`{"staticResources": {"listeners": [], "clusters": null, "secrets": []}}`, `{"node": {"id": "x"}, "static_resources": {}}`} {
		r, err := config.ParseStatic([]byte(in))
		if err != nil || len(r.Listeners)+len(r.Clusters)+len(r.Endpoints) != 0 {
			t.Errorf("ParseStatic(%s): got %v, %v, want no resources and no error", in, r, err)
		}
	}
}

// TestParseStaticBadInput: what is not a configuration is an error that
// names what is wrong.
func TestParseStaticBadInput(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"not json", "parse static config: invalid character"},
		{"\x00\xff garbage", "parse static config: invalid character"},
		{`{"static_resources": {"listeners": []}`, "parse static config: unexpected end of JSON input"},
		{`{"static_resources": {"listeners": []}} trailing`, "parse static config: invalid character"},
		{`[1, 2]`, "parse static config: json: cannot unmarshal array"},
		{`{"static_resources": 5}`, "parse static config: static_resources: json: cannot unmarshal number"},
		{`{"staticResources": {"listeners": [], "listener": []}}`, `parse static config: staticResources: unknown key "listener": want listeners, clusters or secrets`},
		{`{"static_resources": {"runtime": {}}}`, `static_resources: unknown key "runtime"`},
		{`{"static_resources": {}, "staticResources": {}}`, "both static_resources and staticResources"},
		{`{"static_resources": {}, "listeners": []}`, "both static_resources and a resource set's listeners"},
		{`{"static_resources": {"clusters": {"name": "a"}}}`, "parse static config: static_resources: clusters: json: cannot unmarshal object"},
		{`{"static_resources": {"listeners": [{"name": "a"}, {"name": "b", "no_such_field": 1}]}}`, `parse static config: listener 1: `},
		{`{"static_resources": {"clusters": [null]}}`, "parse static config: cluster 0: "},
		{`{"listeners": [{"name": "a", "no_such_field": 1}]}`, "parse static config: listener 0: "},
		{`{"endpoints": [{"cluster_name": 5}]}`, "parse static config: endpoints 0: "},
	} {
		r, err := config.ParseStatic([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseStatic(%q): got %v, %v, want an error with %q", tc.in, r, err, tc.want)
		}
	}
}
