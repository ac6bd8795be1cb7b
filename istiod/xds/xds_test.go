package xds_test

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/istiod/ambient"
	"github.com/ambitmesh/ambit/istiod/xds"
)

// startServer serves s on a loopback port and returns a client
// connection.
func startServer(t testing.TB, s *xds.Server) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	s.Register(g)
	go g.Serve(lis)
	t.Cleanup(g.GracefulStop)
	// A full push of 50k workloads is larger than gRPC's default 4 MiB
	// receive limit; ztunnel accepts such messages too.
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// deltaClient is a minimal delta ADS client, like a ztunnel's.
type deltaClient struct {
	t      testing.TB
	stream discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	cancel context.CancelFunc
	// versions the client holds, for resuming.
	versions map[string]string
}

func dial(t testing.TB, cc *grpc.ClientConn) *deltaClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	c := &deltaClient{t: t, stream: st, cancel: cancel, versions: map[string]string{}}
	t.Cleanup(cancel)
	return c
}

func (c *deltaClient) send(req *discovery.DeltaDiscoveryRequest) {
	c.t.Helper()
	if req.Node == nil {
		req.Node = &core.Node{Id: "ztunnel~10.0.0.1~test~ns.svc.cluster.local"}
	}
	if err := c.stream.Send(req); err != nil {
		c.t.Fatalf("send %v: %v", req, err)
	}
}

// update is what one response carried.
type update struct {
	Names   []string
	Removed []string
}

func (c *deltaClient) recv() (*discovery.DeltaDiscoveryResponse, update) {
	c.t.Helper()
	resp, err := c.stream.Recv()
	if err != nil {
		c.t.Fatalf("receive: %v", err)
	}
	var u update
	for _, r := range resp.GetResources() {
		u.Names = append(u.Names, r.GetName())
		c.versions[r.GetName()] = r.GetVersion()
		var a workload.Address
		if resp.GetTypeUrl() == ambient.AddressType {
			if err := r.GetResource().UnmarshalTo(&a); err != nil {
				c.t.Errorf("decode %s: %v", r.GetName(), err)
			}
		}
	}
	for _, n := range resp.GetRemovedResources() {
		delete(c.versions, n)
	}
	u.Removed = append(u.Removed, resp.GetRemovedResources()...)
	sort.Strings(u.Names)
	sort.Strings(u.Removed)
	return resp, u
}

// recvAck receives one response, checks what it carried and ACKs it.
func (c *deltaClient) recvAck(want update) {
	c.t.Helper()
	resp, got := c.recv()
	if diff := cmp.Diff(want, got); diff != "" {
		c.t.Errorf("response (-want +got):\n%s", diff)
	}
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()})
}

func wl(uid, node string) proto.Message {
	return &workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{Uid: uid, Node: node}}}
}

func mustUpdate(t testing.TB, s *xds.Server, res map[string]proto.Message) {
	t.Helper()
	if err := s.Update(ambient.AddressType, res); err != nil {
		t.Fatal(err)
	}
}

func TestWildcardIncrementalAndRemoval(t *testing.T) {
	s := xds.New(xds.Options{Types: ambient.XDSTypes()})
	mustUpdate(t, s, map[string]proto.Message{"a": wl("a", "n1"), "b": wl("b", "n1")})
	c := dial(t, startServer(t, s))
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AddressType})
	c.recvAck(update{Names: []string{"a", "b"}})

	// b changes, c appears, a is untouched: only b and c travel.
	mustUpdate(t, s, map[string]proto.Message{"a": wl("a", "n1"), "b": wl("b", "n2"), "c": wl("c", "n1")})
	c.recvAck(update{Names: []string{"b", "c"}})

	// a disappears.
	mustUpdate(t, s, map[string]proto.Message{"b": wl("b", "n2"), "c": wl("c", "n1")})
	c.recvAck(update{Removed: []string{"a"}})

	// An identical set sends nothing; the next real change is all that
	// arrives.
	mustUpdate(t, s, map[string]proto.Message{"b": wl("b", "n2"), "c": wl("c", "n1")})
	mustUpdate(t, s, map[string]proto.Message{"b": wl("b", "n2"), "c": wl("c", "n3")})
	c.recvAck(update{Names: []string{"c"}})
}

func TestOnDemand(t *testing.T) {
	s := xds.New(xds.Options{Types: ambient.XDSTypes()})
	mustUpdate(t, s, map[string]proto.Message{"a": wl("a", "n1"), "b": wl("b", "n1")})
	c := dial(t, startServer(t, s))
	// A name the server does not know is answered with its removal, as
	// Istio does, so that an on-demand client stops waiting for it.
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AddressType, ResourceNamesSubscribe: []string{"b", "missing"}})
	c.recvAck(update{Names: []string{"b"}, Removed: []string{"missing"}})

	// A change to a resource the client did not ask for is not sent; the
	// next response carries the one it did ask for.
	mustUpdate(t, s, map[string]proto.Message{"a": wl("a", "n2"), "b": wl("b", "n1")})
	mustUpdate(t, s, map[string]proto.Message{"a": wl("a", "n2"), "b": wl("b", "n1"), "missing": wl("missing", "n1")})
	c.recvAck(update{Names: []string{"missing"}})

	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AddressType, ResourceNamesSubscribe: []string{"a"}})
	c.recvAck(update{Names: []string{"a"}})
}

func TestNACKIsNotRetried(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := xds.New(xds.Options{Types: ambient.XDSTypes(), Registerer: reg})
	mustUpdate(t, s, map[string]proto.Message{"a": wl("a", "n1")})
	c := dial(t, startServer(t, s))
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AddressType})
	resp, got := c.recv()
	if diff := cmp.Diff(update{Names: []string{"a"}}, got); diff != "" {
		t.Errorf("first response (-want +got):\n%s", diff)
	}
	c.send(&discovery.DeltaDiscoveryRequest{
		TypeUrl: ambient.AddressType, ResponseNonce: resp.GetNonce(),
		ErrorDetail: &statuspb.Status{Code: 3, Message: "workload a: bad address"},
	})
	// Were the rejected resource resent, it would come before b.
	mustUpdate(t, s, map[string]proto.Message{"a": wl("a", "n1"), "b": wl("b", "n1")})
	c.recvAck(update{Names: []string{"b"}})

	if got := testutil.ToFloat64(s.NACKCounter(ambient.AddressType)); got != 1 {
		t.Errorf("NACK counter: got %v, want 1", got)
	}
	var nacked []string
	for _, ci := range s.Clients() {
		nacked = append(nacked, ci.LastNACK)
	}
	if want := []string{"workload a: bad address"}; !slices.Equal(nacked, want) {
		t.Errorf("clients' last NACK: got %q, want %q", nacked, want)
	}
}

func TestResume(t *testing.T) {
	s := xds.New(xds.Options{Types: ambient.XDSTypes()})
	mustUpdate(t, s, map[string]proto.Message{"a": wl("a", "n1"), "b": wl("b", "n1"), "c": wl("c", "n1")})
	cc := startServer(t, s)
	c := dial(t, cc)
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AddressType})
	c.recvAck(update{Names: []string{"a", "b", "c"}})
	held := c.versions
	c.cancel()

	// While the client is away: b changes, c goes, d comes.
	mustUpdate(t, s, map[string]proto.Message{"a": wl("a", "n1"), "b": wl("b", "n2"), "d": wl("d", "n1")})

	c2 := dial(t, cc)
	c2.send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AddressType, InitialResourceVersions: held})
	c2.recvAck(update{Names: []string{"b", "d"}, Removed: []string{"c"}})
}

// TestSlowClient: a client that never reads nor ACKs holds nothing back
// from the others.
func TestSlowClient(t *testing.T) {
	s := xds.New(xds.Options{Types: ambient.XDSTypes()})
	big := func(node string) map[string]proto.Message {
		m := map[string]proto.Message{}
		for i := range 2000 {
			name := string(rune('a'+i%26)) + "-" + string(rune('0'+i%10)) + "-" + time.Duration(i).String()
			m[name] = wl(name, node)
		}
		return m
	}
	mustUpdate(t, s, big("n0"))
	cc := startServer(t, s)
	slow := dial(t, cc)
	slow.send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AddressType})
	fast := dial(t, cc)
	fast.send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AddressType})
	for i := range 20 {
		resp, got := fast.recv()
		if len(got.Names) != 2000 {
			t.Fatalf("push %d: got %d resources, want 2000", i, len(got.Names))
		}
		fast.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()})
		mustUpdate(t, s, big("n"+string(rune('1'+i%9))+time.Duration(i).String()))
	}
}

// TestFarBehind: a client that ACKs only after more changes than the
// change log keeps still converges to the current state.
func TestFarBehind(t *testing.T) {
	s := xds.New(xds.Options{Types: ambient.XDSTypes()})
	mustUpdate(t, s, map[string]proto.Message{"a": wl("a", "n0"), "b": wl("b", "n0")})
	c := dial(t, startServer(t, s))
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AddressType})
	resp, got := c.recv()
	if diff := cmp.Diff(update{Names: []string{"a", "b"}}, got); diff != "" {
		t.Fatalf("first response (-want +got):\n%s", diff)
	}
	// The client has not ACKed: nothing is sent while a changes 3000
	// times, b goes and c comes.
	for i := range 3000 {
		mustUpdate(t, s, map[string]proto.Message{"a": wl("a", fmt.Sprint("n", i+1)), "b": wl("b", "n0")})
	}
	mustUpdate(t, s, map[string]proto.Message{"a": wl("a", "last"), "c": wl("c", "n0")})
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()})
	resp, got = c.recv()
	if diff := cmp.Diff(update{Names: []string{"a", "c"}, Removed: []string{"b"}}, got); diff != "" {
		t.Errorf("catch-up response (-want +got):\n%s", diff)
	}
	var a workload.Address
	for _, r := range resp.GetResources() {
		if r.GetName() == "a" {
			if err := r.GetResource().UnmarshalTo(&a); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := a.GetWorkload().GetNode(); got != "last" {
		t.Errorf("a after catch-up: got node %q, want last", got)
	}
}

// TestLargePushIsSplit: a full push larger than MaxResponseBytes arrives
// over several responses, each after the client's ACK, and completely.
func TestLargePushIsSplit(t *testing.T) {
	s := xds.New(xds.Options{Types: ambient.XDSTypes(), MaxResponseBytes: 2000})
	all := map[string]proto.Message{}
	for i := range 200 {
		name := fmt.Sprintf("Kubernetes//Pod/ns/p%03d", i)
		all[name] = wl(name, "node1")
	}
	mustUpdate(t, s, all)
	c := dial(t, startServer(t, s))
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AddressType})
	responses := 0
	for len(c.versions) < len(all) {
		resp, got := c.recv()
		responses++
		if len(got.Names) == 0 {
			t.Fatalf("response %d: got no resources, want the next part", responses)
		}
		if size := proto.Size(resp); size > 4000 {
			t.Errorf("response %d: got %d bytes, want about 2000", responses, size)
		}
		c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()})
	}
	if responses < 2 {
		t.Errorf("responses: got %d, want the push split over several", responses)
	}
	// Afterwards pushes are incremental again.
	all["Kubernetes//Pod/ns/p000"] = wl("Kubernetes//Pod/ns/p000", "node2")
	mustUpdate(t, s, all)
	c.recvAck(update{Names: []string{"Kubernetes//Pod/ns/p000"}})
}

func TestApply(t *testing.T) {
	s := xds.New(xds.Options{Types: ambient.XDSTypes()})
	if err := s.Apply(ambient.AddressType, map[string]proto.Message{"a": wl("a", "n1"), "b": wl("b", "n1")}, nil); err != nil {
		t.Fatal(err)
	}
	c := dial(t, startServer(t, s))
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AddressType})
	c.recvAck(update{Names: []string{"a", "b"}})

	tests := []struct {
		name    string
		changed map[string]proto.Message
		removed []string
		want    update
	}{
		{"one changed, the rest untouched", map[string]proto.Message{"b": wl("b", "n2")}, nil, update{Names: []string{"b"}}},
		{"added and removed", map[string]proto.Message{"c": wl("c", "n1")}, []string{"a"}, update{Names: []string{"c"}, Removed: []string{"a"}}},
		// An unchanged resource handed over again reaches no client: the
		// next response carries only the real change.
		{"unchanged then changed", map[string]proto.Message{"b": wl("b", "n2")}, nil, update{}},
		{"changed and removed at once is removed", map[string]proto.Message{"b": wl("b", "n3"), "c": wl("c", "n2")}, []string{"b"}, update{Names: []string{"c"}, Removed: []string{"b"}}},
	}
	for _, tc := range tests {
		if err := s.Apply(ambient.AddressType, tc.changed, tc.removed); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if len(tc.want.Names)+len(tc.want.Removed) > 0 {
			c.recvAck(tc.want)
		}
	}
	// Update after Apply diffs against what Apply left: only c changes.
	mustUpdate(t, s, map[string]proto.Message{"c": wl("c", "n9")})
	c.recvAck(update{Names: []string{"c"}})
	if err := s.Apply("type.googleapis.com/unknown", nil, []string{"x"}); err == nil {
		t.Errorf("Apply of an unknown type: got no error, want one")
	}
}

func addrWorkload(uid, network string, ips ...string) *workload.Address {
	w := &workload.Workload{Uid: uid, Network: network}
	for _, ip := range ips {
		w.Addresses = append(w.Addresses, netip.MustParseAddr(ip).AsSlice())
	}
	return &workload.Address{Type: &workload.Address_Workload{Workload: w}}
}

func addrService(name, network, vip string) *workload.Address {
	return &workload.Address{Type: &workload.Address_Service{Service: &workload.Service{
		Name: name, Namespace: "ns", Hostname: name + ".ns.svc.cluster.local",
		Addresses: []*workload.NetworkAddress{{Network: network, Address: netip.MustParseAddr(vip).AsSlice()}},
	}}}
}

// aliased is one resource of a response with its aliases.
type aliased struct {
	Name    string
	Aliases []string
}

func recvAliased(t *testing.T, c *deltaClient) ([]aliased, []string) {
	t.Helper()
	resp, err := c.stream.Recv()
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	var got []aliased
	for _, r := range resp.GetResources() {
		got = append(got, aliased{r.GetName(), r.GetAliases()})
	}
	sort.Slice(got, func(i, j int) bool { return got[i].Name < got[j].Name })
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()})
	return got, resp.GetRemovedResources()
}

// TestSubscribeByAlias: ztunnel asks on demand for an address it does not
// know by "<network>/<ip>"; the answer is the resource under its own name
// with its aliases, and its later changes follow.
func TestSubscribeByAlias(t *testing.T) {
	s := xds.New(xds.Options{Types: ambient.XDSTypes()})
	const (
		podA = "Kubernetes//Pod/ns/a"
		podB = "Kubernetes//Pod/ns/b"
		svc  = "ns/web.ns.svc.cluster.local"
	)
	apply := func(changed map[string]proto.Message, removed ...string) {
		t.Helper()
		if err := s.Apply(ambient.AddressType, changed, removed); err != nil {
			t.Fatal(err)
		}
	}
	apply(map[string]proto.Message{
		podA: addrWorkload(podA, "", "10.0.0.1", "fd00::1"),
		podB: addrWorkload(podB, "net2", "10.0.0.2"),
		svc:  addrService("web", "", "10.96.0.10"),
	})
	c := dial(t, startServer(t, s))

	steps := []struct {
		name        string
		subscribe   []string
		change      func()
		want        []aliased
		wantRemoved []string
	}{
		{
			name: "pod IP", subscribe: []string{"/10.0.0.1"},
			want: []aliased{{podA, []string{"/10.0.0.1", "/fd00::1"}}},
		},
		{
			name: "service VIP and pod on another network", subscribe: []string{"/10.96.0.10", "net2/10.0.0.2"},
			want: []aliased{{podB, []string{"net2/10.0.0.2"}}, {svc, []string{"/10.96.0.10"}}},
		},
		{
			name: "unknown alias", subscribe: []string{"/10.9.9.9"},
			wantRemoved: []string{"/10.9.9.9"},
		},
		{
			name: "change of a workload subscribed by alias",
			change: func() {
				apply(map[string]proto.Message{podA: addrWorkload(podA, "", "10.0.0.1", "fd00::1", "10.0.1.1")})
			},
			want: []aliased{{podA, []string{"/10.0.0.1", "/fd00::1", "/10.0.1.1"}}},
		},
		{
			name: "an address that appears later under a subscribed alias",
			change: func() {
				apply(map[string]proto.Message{"Kubernetes//Pod/ns/c": addrWorkload("Kubernetes//Pod/ns/c", "", "10.9.9.9")})
			},
			want: []aliased{{"Kubernetes//Pod/ns/c", []string{"/10.9.9.9"}}},
		},
		{
			name:        "removal",
			change:      func() { apply(nil, podB) },
			wantRemoved: []string{podB},
		},
		{
			name:      "by its own name, with aliases",
			subscribe: []string{svc},
			want:      []aliased{{svc, []string{"/10.96.0.10"}}},
		},
	}
	for _, st := range steps {
		if st.subscribe != nil {
			c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AddressType, ResourceNamesSubscribe: st.subscribe})
		}
		if st.change != nil {
			st.change()
		}
		got, removed := recvAliased(t, c)
		if diff := cmp.Diff(st.want, got); diff != "" {
			t.Errorf("%s: resources (-want +got):\n%s", st.name, diff)
		}
		if diff := cmp.Diff(st.wantRemoved, removed); diff != "" {
			t.Errorf("%s: removed (-want +got):\n%s", st.name, diff)
		}
	}

	// A workload that was not asked for changes: nothing is sent; the next
	// response carries the one that was.
	apply(map[string]proto.Message{"Kubernetes//Pod/ns/other": addrWorkload("Kubernetes//Pod/ns/other", "", "10.0.0.50")})
	apply(map[string]proto.Message{svc: addrService("web", "", "10.96.0.10"), podA: addrWorkload(podA, "", "10.0.0.1")})
	got, removed := recvAliased(t, c)
	if diff := cmp.Diff([]aliased{{podA, []string{"/10.0.0.1"}}}, got); diff != "" || len(removed) > 0 {
		t.Errorf("after unrelated change: got %v removed %v, want only %s (-want +got):\n%s", got, removed, podA, diff)
	}
}

// TestConvergesUnderChurn: while resources change, wildcard clients and
// on-demand clients that widen their subscriptions (by name and by alias)
// keep receiving and ACKing, with pushes split in small parts; once the
// changes stop, each holds exactly what it subscribed to, at the last
// version. Run with -race: it exercises the version maps the cache
// updates in place while go-control-plane's streams use them.
func TestConvergesUnderChurn(t *testing.T) {
	s := xds.New(xds.Options{Types: ambient.XDSTypes(), MaxResponseBytes: 400})
	cc := startServer(t, s)
	const n, rounds = 40, 30
	name := func(i int) string { return fmt.Sprintf("Kubernetes//Pod/ns/p%02d", i%n) }
	ip := func(i int) string { return fmt.Sprintf("10.0.0.%d", i%n+1) }
	state := map[string]string{} // name -> node of the last version
	apply := func(i, version int) {
		a := addrWorkload(name(i), "", ip(i))
		a.GetWorkload().Node = fmt.Sprint("n", version)
		if err := s.Apply(ambient.AddressType, map[string]proto.Message{name(i): a}, nil); err != nil {
			t.Fatal(err)
		}
		state[name(i)] = a.GetWorkload().GetNode()
	}
	for i := range n {
		apply(i, 0)
	}

	// view is what one client holds; notify says it changed.
	type view struct {
		mu     sync.Mutex
		nodes  map[string]string
		notify chan struct{}
	}
	type client struct {
		c      *deltaClient
		v      *view
		sendMu sync.Mutex // the receive loop ACKs while the test subscribes
		want   func() map[string]string
	}
	var wg sync.WaitGroup
	var clients []*client
	for k := range 4 {
		cl := &client{c: dial(t, cc), v: &view{nodes: map[string]string{}, notify: make(chan struct{}, 1)}}
		if k < 2 {
			cl.c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AddressType})
			cl.want = func() map[string]string { return maps.Clone(state) }
		} else {
			// By name and by alias; widened by one name each round.
			cl.c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AddressType, ResourceNamesSubscribe: []string{name(k), "/" + ip(k+1)}})
			cl.want = func() map[string]string {
				out := map[string]string{}
				for _, i := range append([]int{k, k + 1}, func() []int {
					var r []int
					for round := 1; round <= rounds; round++ {
						r = append(r, k+round)
					}
					return r
				}()...) {
					out[name(i)] = state[name(i)]
				}
				return out
			}
		}
		clients = append(clients, cl)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				resp, err := cl.c.stream.Recv()
				if err != nil {
					return
				}
				cl.v.mu.Lock()
				for _, r := range resp.GetResources() {
					var a workload.Address
					if err := r.GetResource().UnmarshalTo(&a); err != nil {
						t.Errorf("decode %s: %v", r.GetName(), err)
					}
					cl.v.nodes[r.GetName()] = a.GetWorkload().GetNode()
				}
				for _, r := range resp.GetRemovedResources() {
					delete(cl.v.nodes, r)
				}
				cl.v.mu.Unlock()
				select {
				case cl.v.notify <- struct{}{}:
				default:
				}
				cl.sendMu.Lock()
				err = cl.c.stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()})
				cl.sendMu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	for round := 1; round <= rounds; round++ {
		for i := range n {
			if (i+round)%3 == 0 {
				apply(i, round)
			}
		}
		for k, cl := range clients[2:] {
			cl.sendMu.Lock()
			err := cl.c.stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AddressType, ResourceNamesSubscribe: []string{name(k + 2 + round)}})
			cl.sendMu.Unlock()
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	for k, cl := range clients {
		want := cl.want()
		for {
			cl.v.mu.Lock()
			diff := cmp.Diff(want, cl.v.nodes)
			cl.v.mu.Unlock()
			if diff == "" {
				break
			}
			select {
			case <-cl.v.notify:
			case <-cl.c.stream.Context().Done():
				t.Fatalf("client %d: stream ended before converging (-want +got):\n%s", k, diff)
			}
		}
	}
	for _, cl := range clients {
		cl.c.cancel()
	}
	wg.Wait()
}
