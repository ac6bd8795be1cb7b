package config

import (
	"encoding/json"
	"fmt"
	"os"

	_ "github.com/cncf/xds/go/udpa/type/v1"
	_ "github.com/cncf/xds/go/xds/type/matcher/v3"
	_ "github.com/cncf/xds/go/xds/type/v3"
	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
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

// ParseStatic parses what LoadFile reads.
func ParseStatic(data []byte) (*Resources, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("parse static config: %w", err)
	}
	opts := protojson.UnmarshalOptions{}
	if _, ok := top["static_resources"]; ok {
		var b bootstrap.Bootstrap
		if err := opts.Unmarshal(data, &b); err != nil {
			return nil, fmt.Errorf("parse static config: %w", err)
		}
		return &Resources{Listeners: b.GetStaticResources().GetListeners(), Clusters: b.GetStaticResources().GetClusters()}, nil
	}
	out := &Resources{}
	var lists struct {
		Listeners []json.RawMessage `json:"listeners"`
		Clusters  []json.RawMessage `json:"clusters"`
		Endpoints []json.RawMessage `json:"endpoints"`
	}
	if err := json.Unmarshal(data, &lists); err != nil {
		return nil, fmt.Errorf("parse static config: %w", err)
	}
	for i, raw := range lists.Listeners {
		var l listener.Listener
		if err := opts.Unmarshal(raw, &l); err != nil {
			return nil, fmt.Errorf("parse static config: listener %d: %w", i, err)
		}
		out.Listeners = append(out.Listeners, &l)
	}
	for i, raw := range lists.Clusters {
		var c cluster.Cluster
		if err := opts.Unmarshal(raw, &c); err != nil {
			return nil, fmt.Errorf("parse static config: cluster %d: %w", i, err)
		}
		out.Clusters = append(out.Clusters, &c)
	}
	for i, raw := range lists.Endpoints {
		var e endpoint.ClusterLoadAssignment
		if err := opts.Unmarshal(raw, &e); err != nil {
			return nil, fmt.Errorf("parse static config: endpoints %d: %w", i, err)
		}
		out.Endpoints = append(out.Endpoints, &e)
	}
	return out, nil
}

// Build builds the resources' snapshot.
func (r *Resources) Build() (*Snapshot, error) { return Build(r.Listeners, r.Clusters, r.Endpoints) }
