package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"

	_ "github.com/cncf/xds/go/udpa/type/v1"
	_ "github.com/cncf/xds/go/xds/type/matcher/v3"
	_ "github.com/cncf/xds/go/xds/type/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/grpc_stats/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Resources is the set Build takes.
type Resources struct {
	Listeners []*listener.Listener
	Clusters  []*cluster.Cluster
	Endpoints []*endpoint.ClusterLoadAssignment
}

// LoadFile reads a static configuration, for development and tests: an
// Envoy bootstrap's static_resources (listeners, clusters with inline
// load_assignment) in JSON, or a resource set
// {"listeners": [...], "clusters": [...], "endpoints": [...]} as the
// golden files of istiod's waypoint xDS hold.
func LoadFile(path string) (*Resources, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read static config: %w", err)
	}
	return ParseStatic(data)
}

// ParseStatic parses what LoadFile reads. Of a bootstrap, it reads
// static_resources (or staticResources, as protojson also accepts), and
// in it listeners and clusters; each is protojson's. The bootstrap's
// other keys (node, admin, ...) are not read, nor are static_resources'
// secrets: the waypoint's certificates come from its CA. Any other key
// in static_resources is an error, as it was when protojson read the
// whole bootstrap. The bootstrap is read by hand so that the waypoint
// does not link Envoy's bootstrap types (0.45 MB of its binary) for
// two lists.
func ParseStatic(data []byte) (*Resources, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("parse static config: %w", err)
	}
	static, key, err := staticResources(top)
	if err != nil {
		return nil, fmt.Errorf("parse static config: %w", err)
	}
	if key != "" {
		return parseStaticResources(static, key)
	}
	var lists struct {
		Listeners []json.RawMessage `json:"listeners"`
		Clusters  []json.RawMessage `json:"clusters"`
		Endpoints []json.RawMessage `json:"endpoints"`
	}
	if err := json.Unmarshal(data, &lists); err != nil {
		return nil, fmt.Errorf("parse static config: %w", err)
	}
	out := &Resources{}
	if out.Listeners, err = unmarshalEach[listener.Listener](lists.Listeners, "listener"); err != nil {
		return nil, err
	}
	if out.Clusters, err = unmarshalEach[cluster.Cluster](lists.Clusters, "cluster"); err != nil {
		return nil, err
	}
	if out.Endpoints, err = unmarshalEach[endpoint.ClusterLoadAssignment](lists.Endpoints, "endpoints"); err != nil {
		return nil, err
	}
	return out, nil
}

// staticResources is a bootstrap's static_resources, and the key it was
// under; no key when top is not a bootstrap.
func staticResources(top map[string]json.RawMessage) (json.RawMessage, string, error) {
	snake, hasSnake := top["static_resources"]
	camel, hasCamel := top["staticResources"]
	switch {
	case hasSnake && hasCamel:
		return nil, "", errors.New("both static_resources and staticResources: want one")
	case !hasSnake && !hasCamel:
		return nil, "", nil
	}
	key, static := "static_resources", snake
	if hasCamel {
		key, static = "staticResources", camel
	}
	for _, k := range []string{"listeners", "clusters", "endpoints"} {
		if _, ok := top[k]; ok {
			return nil, "", fmt.Errorf("both %s and a resource set's %s: want one or the other", key, k)
		}
	}
	return static, key, nil
}

// parseStaticResources parses a bootstrap's static_resources (under key
// in the file).
func parseStaticResources(data json.RawMessage, key string) (*Resources, error) {
	var static map[string]json.RawMessage
	if err := json.Unmarshal(data, &static); err != nil {
		return nil, fmt.Errorf("parse static config: %s: %w", key, err)
	}
	var lists struct{ listeners, clusters []json.RawMessage }
	for _, k := range slices.Sorted(maps.Keys(static)) {
		var list *[]json.RawMessage
		switch k {
		case "listeners":
			list = &lists.listeners
		case "clusters":
			list = &lists.clusters
		case "secrets":
			continue
		default:
			return nil, fmt.Errorf("parse static config: %s: unknown key %q: want listeners, clusters or secrets", key, k)
		}
		if err := json.Unmarshal(static[k], list); err != nil {
			return nil, fmt.Errorf("parse static config: %s: %s: %w", key, k, err)
		}
	}
	out := &Resources{}
	var err error
	if out.Listeners, err = unmarshalEach[listener.Listener](lists.listeners, "listener"); err != nil {
		return nil, err
	}
	if out.Clusters, err = unmarshalEach[cluster.Cluster](lists.clusters, "cluster"); err != nil {
		return nil, err
	}
	return out, nil
}

// unmarshalEach unmarshals each of raws, a what, with protojson.
func unmarshalEach[T any, P interface {
	*T
	proto.Message
}](raws []json.RawMessage, what string) ([]P, error) {
	var out []P
	for i, raw := range raws {
		m := P(new(T))
		if err := protojson.Unmarshal(raw, m); err != nil {
			return nil, fmt.Errorf("parse static config: %s %d: %w", what, i, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// Build builds the resources' snapshot.
func (r *Resources) Build() (*Snapshot, error) { return Build(r.Listeners, r.Clusters, r.Endpoints) }
