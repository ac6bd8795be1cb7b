package config_test

import (
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/proto"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// goldenFuzzFiles are istiod's golden waypoint configs the xDS fuzz
// target starts from.
var goldenFuzzFiles = []string{
	"../testdata/istiod/service.json", "../testdata/istiod/httproute-matches.json",
	"../testdata/istiod/httproute-filters.json", "../testdata/istiod/authz.json", "../testdata/istiod/grpcroute.json",
}

// FuzzXDSTranslation: istiod's golden config with one resource replaced
// by fuzzed protobuf bytes (a Listener, Cluster or ClusterLoadAssignment
// by kind; at index idx of the file's resources): Build refuses or
// translates it, never panics, and says the same twice. Seeds are the
// golden resources themselves, each marshalled.
func FuzzXDSTranslation(f *testing.F) {
	var golden []*config.Resources
	for _, file := range goldenFuzzFiles {
		r, err := config.LoadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		golden = append(golden, r)
	}
	for fi, r := range golden {
		add := func(kind byte, i int, m proto.Message) {
			b, err := proto.Marshal(m)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(byte(fi), kind, byte(i), b)
		}
		for i, l := range r.Listeners {
			add(0, i, l)
		}
		for i, c := range r.Clusters {
			add(1, i, c)
		}
		for i, e := range r.Endpoints {
			add(2, i, e)
		}
	}
	f.Fuzz(func(t *testing.T, file, kind, idx byte, data []byte) {
		g := golden[int(file)%len(golden)]
		r := &config.Resources{
			Listeners: append([]*listener.Listener(nil), g.Listeners...),
			Clusters:  append([]*cluster.Cluster(nil), g.Clusters...),
			Endpoints: append([]*endpoint.ClusterLoadAssignment(nil), g.Endpoints...),
		}
		switch kind % 3 {
		case 0:
			var l listener.Listener
			if proto.Unmarshal(data, &l) != nil {
				return
			}
			r.Listeners = replace(r.Listeners, int(idx), &l)
		case 1:
			var c cluster.Cluster
			if proto.Unmarshal(data, &c) != nil {
				return
			}
			r.Clusters = replace(r.Clusters, int(idx), &c)
		case 2:
			var e endpoint.ClusterLoadAssignment
			if proto.Unmarshal(data, &e) != nil {
				return
			}
			r.Endpoints = replace(r.Endpoints, int(idx), &e)
		}
		_, err1 := r.Build()
		_, err2 := r.Build()
		if (err1 == nil) != (err2 == nil) || err1 != nil && err1.Error() != err2.Error() {
			t.Fatalf("build twice: %v, then %v", err1, err2)
		}
	})
}

// replace puts m at i (appended when i is past the end).
func replace[T any](s []T, i int, m T) []T {
	if i < len(s) {
		s[i] = m
		return s
	}
	return append(s, m)
}
