package config_test

import (
	"testing"
	"time"

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

// FuzzLogFormat: any string given as an access-log format string is
// refused with an error or compiled, never panics; a compiled format
// keeps its source, its parts are literals or known operators with a
// non-negative length, and START_TIME's strftime renders. The shared
// parser also backs config.ParseFormat, checked the same way. Seeds
// (testdata/fuzz/FuzzLogFormat) are Istio's formats and the edge cases
// of Envoy's syntax: %%, arguments holding % and :, truncation,
// unterminated operators.
func FuzzLogFormat(f *testing.F) {
	for _, s := range []string{
		"[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS%\n",
		"%START_TIME(%Y-%m-%dT%H:%M:%E3S %s.%3f %f)%", "100%% %UPSTREAM_HOST:5% %REQ(A?B):3%", "%REQ(a", "%", "%%%",
		"%DYNAMIC_METADATA(istio:double_hbone:target)% %FILTER_STATE(k:PLAIN)%", "%GRPC_STATUS(SNAKE_STRING)%", "%CEL(x)%",
		"%PATH(NQ:ORIG)%", "%(%)%", "%REQ():%", "%START_TIME(%E)%",
	} {
		f.Add(s)
	}
	at := time.Date(2026, 12, 3, 9, 5, 7, 123456789, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		_ = config.AppendStrftime(nil, at, s)
		lf, err := config.ParseLogFormat(s)
		if _, ferr := config.ParseFormat(s); ferr == nil && err != nil {
			t.Errorf("%q: ParseFormat accepts what ParseLogFormat refuses (%v)", s, err)
		}
		if err != nil {
			return
		}
		if lf.String() != s {
			t.Errorf("String: got %q, want %q", lf.String(), s)
		}
		for _, p := range lf.Parts {
			switch {
			case p.Op == "" && p.Literal == "":
				t.Errorf("%q: an empty literal part", s)
			case p.Op != "" && p.Code == config.OpLiteral:
				t.Errorf("%q: operator %s without a code", s, p.Op)
			case p.Max < 0:
				t.Errorf("%q: length %d", s, p.Max)
			case p.Code == config.OpStartTime:
				_ = config.AppendStrftime(nil, at, p.Arg)
			}
		}
	})
}
