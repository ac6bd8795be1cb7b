package xds_test

import (
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ambitmesh/ambit/istiod/xds"
)

const stringType = "type.googleapis.com/google.protobuf.StringValue"

// byNodeSuffix partitions by the last "~" field of the node id.
func byNodeSuffix(n *core.Node) string {
	id := n.GetId()
	return id[strings.LastIndexByte(id, '~')+1:]
}

// Two clients of a partitioned type each get their own partition's
// resources, under the same names, and only their own partition's
// changes; a client whose stream sends its node only once keeps its
// partition.
func TestPartitioned(t *testing.T) {
	s := xds.New(xds.Options{Types: []xds.Type{{URL: stringType, Partition: byNodeSuffix}}})
	apply := func(part string, changed map[string]proto.Message, removed ...string) {
		t.Helper()
		if err := s.ApplyPartition(stringType, part, changed, removed); err != nil {
			t.Fatal(err)
		}
	}
	apply("a", map[string]proto.Message{"listener": wrapperspb.String("a's"), "only-a": wrapperspb.String("x")})
	apply("b", map[string]proto.Message{"listener": wrapperspb.String("b's")})
	if err := s.Apply(stringType, map[string]proto.Message{"x": wrapperspb.String("x")}, nil); err == nil {
		t.Errorf("Apply to a partitioned type: got nil error, want one")
	}

	cc := startServer(t, s)
	ca, cb := dial(t, cc), dial(t, cc)
	ca.send(&discovery.DeltaDiscoveryRequest{TypeUrl: stringType, Node: &core.Node{Id: "waypoint~1~p~a"}})
	ca.recvAck(update{Names: []string{"listener", "only-a"}})
	cb.send(&discovery.DeltaDiscoveryRequest{TypeUrl: stringType, Node: &core.Node{Id: "waypoint~2~p~b"}})
	resp, got := cb.recv()
	if len(got.Names) != 1 || got.Names[0] != "listener" {
		t.Fatalf("b's first response: got %v, want [listener]", got.Names)
	}
	var v wrapperspb.StringValue
	if err := resp.GetResources()[0].GetResource().UnmarshalTo(&v); err != nil || v.Value != "b's" {
		t.Fatalf("b's listener: got %q (%v), want \"b's\"", v.Value, err)
	}
	// The ACK carries no node (the client sends it once): the stream
	// keeps its partition.
	if err := cb.stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: stringType, ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}

	// A change to a's partition reaches a only; b gets its next change.
	apply("a", map[string]proto.Message{"listener": wrapperspb.String("a's 2")})
	apply("b", nil, "listener")
	ca.recvAck(update{Names: []string{"listener"}})
	cb.recvAck(update{Removed: []string{"listener"}})
}
