package xds

import (
	"maps"
	"slices"
	"strings"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

func newTestClient(t *testing.T) (*Client, *config.Store) {
	t.Helper()
	store := config.NewStore()
	c, err := New(Config{Address: "127.0.0.1:1", Plaintext: true, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	return c, store
}

func response(t *testing.T, typ, nonce string, msgs map[string]proto.Message, removed ...string) *discovery.DeltaDiscoveryResponse {
	t.Helper()
	resp := &discovery.DeltaDiscoveryResponse{TypeUrl: typ, Nonce: nonce, RemovedResources: removed}
	for _, name := range slices.Sorted(maps.Keys(msgs)) {
		resp.Resources = append(resp.Resources, resource(t, name, msgs[name]))
	}
	return resp
}

// ack checks that req ACKs nonce.
func ack(t *testing.T, req *discovery.DeltaDiscoveryRequest, typ, nonce string) {
	t.Helper()
	if req.GetTypeUrl() != typ || req.GetResponseNonce() != nonce || req.GetErrorDetail() != nil {
		t.Errorf("request: got %v, want an ACK of %s nonce %s", req, typ, nonce)
	}
}

func TestLoadedOnlyWithBothTypes(t *testing.T) {
	auths, addrs := model()
	for _, order := range [][]string{{AuthorizationType, AddressType}, {AddressType, AuthorizationType}} {
		t.Run(order[0]+" first", func(t *testing.T) {
			c, store := newTestClient(t)
			sets := map[string]map[string]proto.Message{AuthorizationType: auths, AddressType: addrs}
			ack(t, c.handle(response(t, order[0], "1", sets[order[0]])), order[0], "1")
			if store.Loaded() || store.Snapshot().Version != 0 {
				t.Fatalf("after the first type: got loaded %v, version %d; want not loaded, version 0", store.Loaded(), store.Snapshot().Version)
			}
			ack(t, c.handle(response(t, order[1], "2", sets[order[1]])), order[1], "2")
			snap := store.Snapshot()
			if !store.Loaded() || snap.Version != 1 || len(snap.Workloads) != 2 || len(snap.Services) != 1 || len(snap.Policies) != 1 {
				t.Errorf("after both types: got loaded %v, version %d, %d workloads, %d services, %d policies; want loaded, version 1, 2, 1, 1",
					store.Loaded(), snap.Version, len(snap.Workloads), len(snap.Services), len(snap.Policies))
			}
		})
	}

	// An empty first response counts: a mesh without policies loads.
	c, store := newTestClient(t)
	c.handle(response(t, AddressType, "1", addrs))
	c.handle(response(t, AuthorizationType, "2", nil))
	if !store.Loaded() {
		t.Error("after workloads and an empty policy response: got not loaded, want loaded")
	}

	// A rejected first response does not count.
	c, store = newTestClient(t)
	c.handle(response(t, AuthorizationType, "1", nil))
	bad := map[string]proto.Message{"x": wlAddress(&workload.Workload{Uid: "x", Name: "x", Namespace: "ns"})}
	if req := c.handle(response(t, AddressType, "2", bad)); req.GetErrorDetail() == nil {
		t.Fatalf("request after a workload without addresses: got %v, want a NACK", req)
	}
	if store.Loaded() {
		t.Error("after a rejected first address response: got loaded, want not loaded")
	}
}

// TestRejectedResponseChangesNothing: a NACKed response with nothing good
// in it, or whose state is invalid, leaves the store and the held
// resources as they were, so the resume versions stay what the store
// reflects.
func TestRejectedResponseChangesNothing(t *testing.T) {
	c, store := newTestClient(t)
	auths, addrs := model()
	c.handle(response(t, AuthorizationType, "1", auths))
	c.handle(response(t, AddressType, "2", addrs))
	good := store.Snapshot()
	held := c.versions(AddressType)

	badWorkload := wlAddress(&workload.Workload{Uid: "bad", Name: "bad", Namespace: "shop", Addresses: [][]byte{{1, 2, 3}}})
	tests := []struct {
		name string
		resp *discovery.DeltaDiscoveryResponse
		want []string
	}{
		{
			name: "a resource without a name",
			resp: &discovery.DeltaDiscoveryResponse{TypeUrl: AddressType, Nonce: "4", Resources: []*discovery.Resource{{Resource: resource(t, "", badWorkload).Resource}}},
			want: []string{"resource without a name"},
		},
		{
			name: "a type not subscribed to",
			resp: &discovery.DeltaDiscoveryResponse{TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster", Nonce: "5"},
			want: []string{`response of type "type.googleapis.com/envoy.config.cluster.v3.Cluster", not one subscribed to`},
		},
		{
			name: "a service with another's address",
			resp: response(t, AddressType, "6", map[string]proto.Message{"shop/other": svcAddress(&workload.Service{
				Name: "other", Namespace: "shop", Hostname: "other", Addresses: []*workload.NetworkAddress{{Address: ip("127.0.30.1")}},
			})}),
			want: []string{"apply config: ", "shop/other", reviewsKey, "address 127.0.30.1 already used by service"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := c.handle(tc.resp)
			if req.GetResponseNonce() != tc.resp.GetNonce() || req.GetTypeUrl() != tc.resp.GetTypeUrl() || req.GetErrorDetail() == nil {
				t.Fatalf("request: got %v, want a NACK of nonce %s", req, tc.resp.GetNonce())
			}
			for _, w := range tc.want {
				if !strings.Contains(req.GetErrorDetail().GetMessage(), w) {
					t.Errorf("NACK reason: got %q, want one containing %q", req.GetErrorDetail().GetMessage(), w)
				}
			}
			if store.Snapshot() != good {
				t.Errorf("store: got version %d, want the last good one, %d", store.Snapshot().Version, good.Version)
			}
			if diff := cmp.Diff(held, c.versions(AddressType)); diff != "" {
				t.Errorf("held versions (-want +got):\n%s", diff)
			}
		})
	}

	// Many bad resources: the reason names the first ten and counts the rest.
	many := map[string]proto.Message{}
	for i := range 25 {
		name := string(rune('a'+i)) + "-bad"
		many[name] = wlAddress(&workload.Workload{Uid: name, Name: name, Namespace: "shop", Addresses: [][]byte{{1}}})
	}
	msg := c.handle(response(t, AddressType, "7", many)).GetErrorDetail().GetMessage()
	if !strings.HasPrefix(msg, "a-bad: ") || !strings.HasSuffix(msg, "; and 15 more rejected resources") || strings.Count(msg, "; ") != 10 {
		t.Errorf("NACK reason for 25 bad resources: got %q, want the first 10 and \"; and 15 more rejected resources\"", msg)
	}

	// A response removing something held and adding nothing applies.
	ack(t, c.handle(response(t, AddressType, "8", nil, webUID, "never-held")), AddressType, "8")
	if snap := store.Snapshot(); snap.WorkloadByUID(webUID) != nil || snap.Version != good.Version+1 {
		t.Errorf("after removing %s: got version %d and the workload %v, want version %d without it", webUID, snap.Version, snap.WorkloadByUID(webUID), good.Version+1)
	}
	// An empty response (a resume with nothing new) changes nothing.
	ack(t, c.handle(response(t, AddressType, "9", nil, "never-held")), AddressType, "9")
	if got := store.Snapshot().Version; got != good.Version+1 {
		t.Errorf("after an empty response: got version %d, want %d (no new state)", got, good.Version+1)
	}
}

// TestBadResourcesLeftOut: the good resources and removals of a response
// apply while the bad ones are left out and named in the NACK; a bad
// version of a held resource leaves the held one in place.
func TestBadResourcesLeftOut(t *testing.T) {
	c, store := newTestClient(t)
	auths, addrs := model()
	c.handle(response(t, AuthorizationType, "1", auths))
	c.handle(response(t, AddressType, "2", addrs))
	badWorkload := func(uid string) proto.Message {
		return wlAddress(&workload.Workload{Uid: uid, Name: "bad", Namespace: "shop", Addresses: [][]byte{{1, 2, 3}}})
	}

	req := c.handle(response(t, AddressType, "3", map[string]proto.Message{webUID: wlAddress(webWorkload("node-z")), "bad": badWorkload("bad")}, reviewsUID))
	if req.GetErrorDetail() == nil || !strings.Contains(req.GetErrorDetail().GetMessage(), "bad: workload bad: address 0: 3 bytes, want 4 (IPv4) or 16 (IPv6)") {
		t.Fatalf("request: got %v, want a NACK naming the bad workload", req)
	}
	snap := store.Snapshot()
	if w := snap.WorkloadByUID(webUID); w == nil || w.Node != "node-z" {
		t.Errorf("%s after the response: got %v, want it on node-z", webUID, w)
	}
	if snap.WorkloadByUID(reviewsUID) != nil || snap.WorkloadByUID("bad") != nil {
		t.Errorf("store after the response: got %s %v and bad %v, want both absent", reviewsUID, snap.WorkloadByUID(reviewsUID), snap.WorkloadByUID("bad"))
	}
	held := c.versions(AddressType)
	if _, ok := held["bad"]; ok || held[webUID] != "v-"+webUID {
		t.Errorf("held versions: got %v, want %s's new version and no bad", held, webUID)
	}
	if _, ok := held[reviewsUID]; ok {
		t.Errorf("held versions: got %v, want %s removed", held, reviewsUID)
	}

	// A bad new version of a held resource: the held one stays.
	if req := c.handle(response(t, AddressType, "4", map[string]proto.Message{webUID: badWorkload(webUID)})); req.GetErrorDetail() == nil {
		t.Fatalf("request: got %v, want a NACK", req)
	}
	if w := store.Snapshot().WorkloadByUID(webUID); w == nil || w.Node != "node-z" {
		t.Errorf("%s after a bad version of it: got %v, want the held one, on node-z", webUID, w)
	}
}
