package waypoint

import (
	"strings"
	"testing"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// TestDumpUnlinkedTypes: a listener carrying an extension of a type the
// waypoint does not link (Istio's proxy's peer metadata filter, as
// Istio's istiod sends it) is dumped with its type URL, beside the
// fields of the types it knows, instead of failing the whole dump.
func TestDumpUnlinkedTypes(t *testing.T) {
	value, err := proto.Marshal(structpb.NewStringValue("opaque"))
	if err != nil {
		t.Fatal(err)
	}
	const url = "type.googleapis.com/io.istio.http.peer_metadata.Config"
	l := &listenerv3.Listener{Name: "main_internal", ListenerFilters: []*listenerv3.ListenerFilter{{
		Name:       "istio.peer_metadata",
		ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: &anypb.Any{TypeUrl: url, Value: value}},
	}}}
	la, err := anypb.New(l)
	if err != nil {
		t.Fatal(err)
	}
	dump := &adminv3.ListenersConfigDump{DynamicListeners: []*adminv3.ListenersConfigDump_DynamicListener{{
		Name: l.Name, ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{Listener: la},
	}}}
	b, err := marshalDump(dump)
	if err != nil {
		t.Fatalf("dump with an unlinked type: %v", err)
	}
	// protojson varies its spacing on purpose.
	compact := strings.Join(strings.Fields(string(b)), "")
	for _, want := range []string{`"@type":"` + url + `"`, `"name":"main_internal"`, `"name":"istio.peer_metadata"`} {
		if !strings.Contains(compact, want) {
			t.Errorf("dump %s: want %s in it", b, want)
		}
	}
}
