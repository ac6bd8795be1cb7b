package config

import (
	"errors"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
)

// TestBuildLeavesOutMultiNetwork: Istio's double-HBONE resources, which
// the waypoint cannot build, are left out with a warning; any other
// resource it cannot build refuses the whole set.
func TestBuildLeavesOutMultiNetwork(t *testing.T) {
	unbuildable := func(name string) *cluster.Cluster {
		return &cluster.Cluster{Name: name, ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_LOGICAL_DNS}}
	}
	s, err := Build(nil, []*cluster.Cluster{unbuildable("inner_connect_originate")}, nil)
	if err != nil {
		t.Fatalf("build with inner_connect_originate unbuildable: %v, want it left out", err)
	}
	if _, ok := s.Clusters["inner_connect_originate"]; ok {
		t.Error("inner_connect_originate: built, want left out")
	}
	if len(s.Warnings) != 1 || !strings.Contains(s.Warnings[0], "inner_connect_originate left out") {
		t.Errorf("warnings: got %q, want one naming inner_connect_originate", s.Warnings)
	}
	if _, err := Build(nil, []*cluster.Cluster{unbuildable("connect_originate")}, nil); !errors.Is(err, ErrUnsupported) {
		t.Errorf("build with connect_originate unbuildable: got %v, want the set refused (ErrUnsupported)", err)
	}
}
