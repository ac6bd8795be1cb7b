package waypoint_test

import (
	"context"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	server "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"

	"github.com/ambitmesh/ambit/internal/xdsclient"
	"github.com/ambitmesh/ambit/waypoint"
	"github.com/ambitmesh/ambit/waypoint/config"
)

func snapshotOf(t *testing.T, version string, r *config.Resources) *cache.Snapshot {
	t.Helper()
	m := map[resource.Type][]types.Resource{}
	for _, l := range r.Listeners {
		m[resource.ListenerType] = append(m[resource.ListenerType], l)
	}
	for _, c := range r.Clusters {
		m[resource.ClusterType] = append(m[resource.ClusterType], c)
	}
	for _, e := range r.Endpoints {
		m[resource.EndpointType] = append(m[resource.EndpointType], e)
	}
	s, err := cache.NewSnapshot(version, m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestXDS: the waypoint's delta ADS client against go-control-plane's
// server: Istio's node id, the config applied with the endpoints of its
// EDS clusters, subscribed to by name as Envoy does (the server answers
// no wildcard for them); an update with jwt_authn NACKed naming the
// listener and the filter while the last good snapshot stays; a cluster
// removed unsubscribes its endpoints.
func TestXDS(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nodeID := "waypoint~10.0.0.9~wp-1.shop~shop.svc.cluster.local"
	snaps := cache.NewSnapshotCache(true, cache.IDHash{}, nil)
	var mu sync.Mutex
	nacks := make(chan string, 4)
	var gotNode string
	// eds are the endpoint names subscribed to.
	eds := map[string]bool{}
	unsubscribed := make(chan string, 4)
	cb := server.CallbackFuncs{StreamDeltaRequestFunc: func(_ int64, req *discovery.DeltaDiscoveryRequest) error {
		mu.Lock()
		if req.GetNode().GetId() != "" {
			gotNode = req.GetNode().GetId()
		}
		if req.GetTypeUrl() == waypoint.TypeEndpoint {
			for _, n := range req.GetResourceNamesSubscribe() {
				eds[n] = true
			}
			for _, n := range req.GetResourceNamesUnsubscribe() {
				delete(eds, n)
				unsubscribed <- n
			}
		}
		mu.Unlock()
		if req.GetErrorDetail() != nil {
			nacks <- req.GetErrorDetail().GetMessage()
		}
		return nil
	}}
	g := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(g, server.NewServer(ctx, snaps, cb))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	defer g.Stop()

	w := basicConfig(func(b byte) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 0, b}) })
	const extra = "outbound|80||extra.shop.svc.cluster.local"
	w.extraClusters = map[string][]netip.AddrPort{extra: {netip.MustParseAddrPort("127.0.0.9:80")}}
	if err := snaps.SetSnapshot(ctx, nodeID, snapshotOf(t, "1", w.resources())); err != nil {
		t.Fatal(err)
	}
	p := testProxy(t, nil)
	updates := make(chan *config.Snapshot, 4)
	node := waypoint.Node{PodName: "wp-1", PodNamespace: "shop", IP: "10.0.0.9", ServiceAccount: "waypoint"}
	xc, err := xdsclient.New(xdsclient.Config{Address: ln.Addr().String(), Types: waypoint.Types, Named: waypoint.Named, Plaintext: true, Node: node.Proto(),
		Handler: &waypoint.Handler{Proxy: p, OnUpdate: func(s *config.Snapshot) { updates <- s }}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { xc.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	var first *config.Snapshot
	select {
	case first = <-updates:
	case <-time.After(20 * time.Second):
		t.Fatal("no config from xDS")
	}
	if first.Listeners["main_internal"] == nil || p.Snapshot() != first {
		t.Fatalf("installed snapshot: got %v, want the served one", p.Snapshot())
	}
	mu.Lock()
	if gotNode != nodeID {
		t.Errorf("node id: got %q, want %q", gotNode, nodeID)
	}
	var wantEDS []string
	for _, c := range w.resources().Clusters {
		if c.GetType() == cluster.Cluster_EDS {
			wantEDS = append(wantEDS, c.GetName())
			if n := len(first.Clusters[c.GetName()].Endpoints); n == 0 {
				t.Errorf("cluster %s: got no endpoints, want those served", c.GetName())
			}
		}
	}
	if got := slices.Sorted(maps.Keys(eds)); !slices.Equal(got, slices.Sorted(slices.Values(wantEDS))) || len(got) < 2 {
		t.Errorf("endpoints subscribed to: got %v, want the EDS clusters %v", got, wantEDS)
	}
	mu.Unlock()
	if v := node.Proto().GetMetadata().GetFields()["ISTIO_VERSION"].GetStringValue(); v != waypoint.IstioVersion {
		t.Errorf("ISTIO_VERSION: got %q, want %q", v, waypoint.IstioVersion)
	}

	bad := w.resources()
	bad.Listeners[1].FilterChains[0].Filters[0].ConfigType = jwtHCM(t, bad.Listeners[1].FilterChains[0].Filters[0])
	if err := snaps.SetSnapshot(ctx, nodeID, snapshotOf(t, "2", bad)); err != nil {
		t.Fatal(err)
	}
	select {
	case msg := <-nacks:
		if !strings.Contains(msg, "main_internal") || !strings.Contains(msg, "jwt_authn") {
			t.Errorf("NACK: got %q, want it to name main_internal and jwt_authn", msg)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no NACK for jwt_authn")
	}
	if p.Snapshot() != first {
		t.Error("snapshot changed after a NACKed update, want the last good one kept")
	}

	w.extraClusters = nil
	if err := snaps.SetSnapshot(ctx, nodeID, snapshotOf(t, "3", w.resources())); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-unsubscribed:
		if n != extra {
			t.Errorf("unsubscribed: got %s, want %s", n, extra)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("cluster %s removed: no unsubscription of its endpoints", extra)
	}
}
