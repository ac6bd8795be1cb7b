package xds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ambitmesh/ambit/api"
	"github.com/ambitmesh/ambit/api/security"
	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/internal/xdsclient"
	"github.com/ambitmesh/ambit/istiod/ambient"
	"github.com/ambitmesh/ambit/istiod/ca"
	istiodxds "github.com/ambitmesh/ambit/istiod/xds"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

func TestTypeURLsMatchIstiod(t *testing.T) {
	if AddressType != ambient.AddressType || AuthorizationType != ambient.AuthorizationType {
		t.Errorf("type URLs: got %s and %s, want istiod's %s and %s", AddressType, AuthorizationType, ambient.AddressType, ambient.AuthorizationType)
	}
}

// recorder is a gRPC interceptor that keeps what each stream carried and,
// when accept is set, refuses streams whose bearer token it lacks.
type recorder struct {
	accept map[string]bool

	mu       sync.Mutex
	tokens   []string
	clusters []string
	streams  []*recorded
}

type recorded struct {
	requests  []*discovery.DeltaDiscoveryRequest
	responses []*discovery.DeltaDiscoveryResponse
}

func (r *recorder) intercept(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	md, _ := metadata.FromIncomingContext(ss.Context())
	token := strings.Join(md.Get("authorization"), ",")
	r.mu.Lock()
	r.tokens = append(r.tokens, token)
	r.clusters = append(r.clusters, strings.Join(md.Get(api.ClusterIDMetadata), ","))
	ok := r.accept == nil || r.accept[token]
	rec := &recorded{}
	if ok {
		r.streams = append(r.streams, rec)
	}
	r.mu.Unlock()
	if !ok {
		return status.Errorf(codes.Unauthenticated, "token %q not accepted", token)
	}
	return handler(srv, &recStream{ServerStream: ss, r: r, rec: rec})
}

type recStream struct {
	grpc.ServerStream
	r   *recorder
	rec *recorded
}

func (s *recStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if req, ok := m.(*discovery.DeltaDiscoveryRequest); ok && err == nil {
		s.r.mu.Lock()
		s.rec.requests = append(s.rec.requests, proto.Clone(req).(*discovery.DeltaDiscoveryRequest))
		s.r.mu.Unlock()
	}
	return err
}

func (s *recStream) SendMsg(m any) error {
	if resp, ok := m.(*discovery.DeltaDiscoveryResponse); ok {
		s.r.mu.Lock()
		s.rec.responses = append(s.rec.responses, proto.Clone(resp).(*discovery.DeltaDiscoveryResponse))
		s.r.mu.Unlock()
	}
	return s.ServerStream.SendMsg(m)
}

// stream is a copy of what the i-th stream carried so far.
func (r *recorder) stream(i int) recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	if i >= len(r.streams) {
		return recorded{}
	}
	return recorded{requests: slices.Clone(r.streams[i].requests), responses: slices.Clone(r.streams[i].responses)}
}

func (r *recorder) numStreams() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.streams)
}

func (r *recorder) seenTokens() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.tokens)
}

func (r *recorder) seenClusters() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.clusters)
}

// serve runs the real istiod xDS server s on addr ("127.0.0.1:0" for a
// new port) behind a recorder; stop ends it, as istiod going away.
func serve(t *testing.T, s *istiodxds.Server, addr string, rec *recorder, opts ...grpc.ServerOption) (bound string, stop func()) {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(append(opts, grpc.StreamInterceptor(rec.intercept))...)
	s.Register(g)
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.Serve(lis)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			g.Stop()
			<-done
		})
	}
	t.Cleanup(stop)
	return lis.Addr().String(), stop
}

// startClient runs a client until the test ends.
func startClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	if cfg.Store == nil {
		cfg.Store = config.NewStore()
	}
	cfg.InitialBackoff, cfg.MaxBackoff = 5*time.Millisecond, 50*time.Millisecond
	cfg.Node = Node{NodeName: "node-a", PodName: "ztunnel-1", PodNamespace: "istio-system", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.9")}}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return c
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: timed out after 10s", what)
		}
		<-tick.C
	}
}

// waitStore waits for a snapshot of store for which cond holds, woken by
// the store's own notifications.
func waitStore(t *testing.T, store *config.Store, what string, cond func(*config.Snapshot) bool) *config.Snapshot {
	t.Helper()
	changed := make(chan struct{}, 1)
	cancel := store.Subscribe(func(*config.Snapshot) {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	defer cancel()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for {
		if snap := store.Snapshot(); store.Loaded() && cond(snap) {
			return snap
		}
		select {
		case <-changed:
		case <-timeout.C:
			t.Fatalf("waiting for the store to hold %s: timed out after 10s; it holds %d workloads, %d services, %d policies",
				what, len(store.Snapshot().Workloads), len(store.Snapshot().Services), len(store.Snapshot().Policies))
		}
	}
}

const (
	webUID      = "Kubernetes//Pod/shop/web-1"
	reviewsUID  = "Kubernetes//Pod/shop/reviews-1"
	reviewsHost = "reviews.shop.svc.cluster.local"
	reviewsKey  = "shop/" + reviewsHost
	policyKey   = "shop/only-web"
)

func webWorkload(node string) *workload.Workload {
	return &workload.Workload{
		Uid: webUID, Name: "web-1", Namespace: "shop", ServiceAccount: "web",
		Addresses: [][]byte{ip("127.0.10.1")}, Node: node, TunnelProtocol: workload.TunnelProtocol_HBONE,
	}
}

// model is a small mesh: two workloads, a service and a policy.
func model() (auths, addrs map[string]proto.Message) {
	auths = map[string]proto.Message{
		policyKey: &security.Authorization{
			Name: "only-web", Namespace: "shop", Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_ALLOW,
			Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{{
				Principals: []*security.StringMatch{exact("cluster.local/ns/shop/sa/web")},
			}}}}}},
		},
	}
	addrs = map[string]proto.Message{
		webUID: wlAddress(webWorkload("node-a")),
		reviewsUID: wlAddress(&workload.Workload{
			Uid: reviewsUID, Name: "reviews-1", Namespace: "shop", ServiceAccount: "reviews",
			Addresses: [][]byte{ip("127.0.20.1")}, Node: "node-b", TunnelProtocol: workload.TunnelProtocol_HBONE,
			Services:              map[string]*workload.PortList{reviewsKey: {Ports: []*workload.Port{{ServicePort: 80, TargetPort: 8080}}}},
			AuthorizationPolicies: []string{policyKey},
		}),
		reviewsKey: svcAddress(&workload.Service{
			Name: "reviews", Namespace: "shop", Hostname: reviewsHost,
			Addresses: []*workload.NetworkAddress{{Address: ip("127.0.30.1")}},
			Ports:     []*workload.Port{{ServicePort: 80, TargetPort: 8080}},
		}),
	}
	return auths, addrs
}

func publish(t *testing.T, s *istiodxds.Server, auths, addrs map[string]proto.Message) {
	t.Helper()
	if err := s.Update(ambient.AuthorizationType, auths); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(ambient.AddressType, addrs); err != nil {
		t.Fatal(err)
	}
}

// carried is what one response carried, names sorted.
type carried struct {
	Type           string
	Names, Removed []string
}

func carriedBy(resp *discovery.DeltaDiscoveryResponse) carried {
	c := carried{Type: resp.GetTypeUrl(), Removed: slices.Sorted(slices.Values(resp.GetRemovedResources()))}
	for _, r := range resp.GetResources() {
		c.Names = append(c.Names, r.GetName())
	}
	slices.Sort(c.Names)
	return c
}

// lastOfType is the last response of typ the stream carried.
func lastOfType(rec recorded, typ string) *discovery.DeltaDiscoveryResponse {
	for i := len(rec.responses) - 1; i >= 0; i-- {
		if rec.responses[i].GetTypeUrl() == typ {
			return rec.responses[i]
		}
	}
	return nil
}

func TestInitialPushAndIncrementalUpdates(t *testing.T) {
	s := istiodxds.New(istiodxds.Options{Types: ambient.XDSTypes()})
	auths, addrs := model()
	publish(t, s, auths, addrs)
	rec := &recorder{}
	addr, _ := serve(t, s, "127.0.0.1:0", rec)
	store := config.NewStore()
	if store.Loaded() {
		t.Fatal("Loaded before the client ran: got true, want false")
	}
	c := startClient(t, Config{Address: addr, Plaintext: true, Store: store})

	snap := waitStore(t, store, "the initial push", func(*config.Snapshot) bool { return true })
	web := snap.WorkloadByAddr(netip.MustParseAddr("127.0.10.1"))
	reviews := snap.WorkloadByUID(reviewsUID)
	svc := snap.ServiceByAddr(netip.MustParseAddr("127.0.30.1"))
	if web == nil || web.UID != webUID || web.Identity().String() != "spiffe://cluster.local/ns/shop/sa/web" || !web.HBONE() {
		t.Errorf("workload at 127.0.10.1: got %+v, want %s, HBONE, spiffe://cluster.local/ns/shop/sa/web", web, webUID)
	}
	if svc == nil || svc.Key() != reviewsKey || !slices.Equal(svc.Ports, []config.Port{{ServicePort: 80, TargetPort: 8080}}) {
		t.Fatalf("service at 127.0.30.1: got %+v, want %s with 80 -> 8080", svc, reviewsKey)
	}
	if eps := snap.Endpoints(svc); len(eps) != 1 || eps[0] != reviews {
		t.Errorf("endpoints of %s: got %v, want [%s]", reviewsKey, eps, reviewsUID)
	}
	if got, want := reviews.Services[reviewsKey].Ports, []config.Port{{ServicePort: 80, TargetPort: 8080}}; !slices.Equal(got, want) {
		t.Errorf("port mapping of %s for %s: got %v, want %v", reviewsUID, reviewsKey, got, want)
	}
	if pols := snap.PoliciesFor(reviews); len(pols) != 1 || pols[0].Key() != policyKey || pols[0].Rules[0].Clauses[0].Matches[0].Principals[0].Exact != "cluster.local/ns/shop/sa/web" {
		t.Errorf("policies for %s: got %+v, want %s allowing cluster.local/ns/shop/sa/web", reviewsUID, pols, policyKey)
	}
	if st := c.Status(); !st.Connected || st.Streams != 1 {
		t.Errorf("status: got %+v, want connected, 1 stream", st)
	}
	// The node went with the first request of each type.
	first := rec.stream(0).requests
	if len(first) < 2 || first[0].GetNode().GetId() != "ztunnel~127.0.0.9~ztunnel-1.istio-system~istio-system.svc.cluster.local" {
		t.Errorf("first requests: got %v, want the node id ztunnel~127.0.0.9~ztunnel-1.istio-system~istio-system.svc.cluster.local", first)
	}

	// web moves to another node, a workload appears, reviews' service
	// goes: only those travel, and the store follows.
	addrs[webUID] = wlAddress(webWorkload("node-c"))
	addrs["Kubernetes//Pod/shop/new-1"] = wlAddress(&workload.Workload{Uid: "Kubernetes//Pod/shop/new-1", Name: "new-1", Namespace: "shop", Addresses: [][]byte{ip("127.0.10.2")}})
	delete(addrs, reviewsKey)
	if err := s.Update(ambient.AddressType, addrs); err != nil {
		t.Fatal(err)
	}
	snap = waitStore(t, store, "the update", func(s *config.Snapshot) bool {
		w := s.WorkloadByUID(webUID)
		return w != nil && w.Node == "node-c" && s.WorkloadByUID("Kubernetes//Pod/shop/new-1") != nil && len(s.Services) == 0
	})
	if len(snap.Workloads) != 3 || len(snap.Policies) != 1 {
		t.Errorf("after the update: got %d workloads and %d policies, want 3 and 1", len(snap.Workloads), len(snap.Policies))
	}
	want := carried{Type: AddressType, Names: []string{"Kubernetes//Pod/shop/new-1", webUID}, Removed: []string{reviewsKey}}
	if diff := cmp.Diff(want, carriedBy(lastOfType(rec.stream(0), AddressType))); diff != "" {
		t.Errorf("update response (-want +got):\n%s", diff)
	}

	// A policy goes: the workloads stay, the policy no longer applies.
	if err := s.Update(ambient.AuthorizationType, nil); err != nil {
		t.Fatal(err)
	}
	snap = waitStore(t, store, "the policy removal", func(s *config.Snapshot) bool { return len(s.Policies) == 0 })
	if got := snap.PoliciesFor(snap.WorkloadByUID(reviewsUID)); len(got) != 0 {
		t.Errorf("policies for %s after the removal: got %v, want none", reviewsUID, got)
	}
	if len(snap.Workloads) != 3 {
		t.Errorf("workloads after the policy removal: got %d, want 3", len(snap.Workloads))
	}
}

func TestNACKKeepsLastGoodState(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := istiodxds.New(istiodxds.Options{Types: ambient.XDSTypes(), Registerer: reg})
	auths, addrs := model()
	publish(t, s, auths, addrs)
	addr, _ := serve(t, s, "127.0.0.1:0", &recorder{})
	store := config.NewStore()
	clientReg := prometheus.NewRegistry()
	c := startClient(t, Config{Address: addr, Plaintext: true, Store: store, Registerer: clientReg})
	good := waitStore(t, store, "the initial push", func(*config.Snapshot) bool { return true })

	steps := []struct {
		name string
		// change makes a bad update of the addresses.
		change   func(map[string]proto.Message)
		wantNACK []string
	}{
		{
			name: "5-byte address",
			change: func(m map[string]proto.Message) {
				m["Kubernetes//Pod/shop/bad"] = wlAddress(&workload.Workload{Uid: "Kubernetes//Pod/shop/bad", Name: "bad", Namespace: "shop", Addresses: [][]byte{{127, 0, 0, 1, 5}}})
				m[webUID] = wlAddress(webWorkload("node-z")) // good, but in the same response
			},
			wantNACK: []string{"Kubernetes//Pod/shop/bad: workload Kubernetes//Pod/shop/bad: address 0: 5 bytes, want 4 (IPv4) or 16 (IPv6)"},
		},
		{
			name: "uid of another workload",
			change: func(m map[string]proto.Message) {
				m["Kubernetes//Pod/shop/dup"] = wlAddress(&workload.Workload{Uid: reviewsUID, Name: "dup", Namespace: "shop", Addresses: [][]byte{ip("127.0.20.9")}})
			},
			wantNACK: []string{"apply config: ", reviewsUID, "duplicate uid"},
		},
	}
	// Each step's bad set is the good one plus its change; the server
	// diffs it against what it sent before.
	for i, step := range steps {
		bad := map[string]proto.Message{}
		for k, v := range addrs {
			bad[k] = v
		}
		step.change(bad)
		if err := s.Update(ambient.AddressType, bad); err != nil {
			t.Fatal(err)
		}
		waitFor(t, step.name+": the server counting the NACK", func() bool {
			return testutil.ToFloat64(s.NACKCounter(ambient.AddressType)) == float64(i+1)
		})
		clients := s.Clients()
		if len(clients) != 1 {
			t.Fatalf("%s: server's clients: got %d, want 1", step.name, len(clients))
		}
		for _, w := range step.wantNACK {
			if !strings.Contains(clients[0].LastNACK, w) {
				t.Errorf("%s: NACK reason the server saw: got %q, want one containing %q", step.name, clients[0].LastNACK, w)
			}
		}
		if st := c.Status(); st.NACKs != i+1 || st.LastNACK != clients[0].LastNACK {
			t.Errorf("%s: client status: got %d NACKs, last %q; want %d, %q", step.name, st.NACKs, st.LastNACK, i+1, clients[0].LastNACK)
		}
		if got := testutil.ToFloat64(c.Metrics().NACKs.WithLabelValues(AddressType)); got != float64(i+1) {
			t.Errorf("%s: ambit_xds_nacks_total: got %v, want %d", step.name, got, i+1)
		}
		snap := store.Snapshot()
		switch i {
		case 0:
			// The good resource of the response applied, the bad one
			// did not.
			if w := snap.WorkloadByUID(webUID); w == nil || w.Node != "node-z" || snap.WorkloadByUID("Kubernetes//Pod/shop/bad") != nil {
				t.Errorf("%s: store after the NACK: got %s on %v and the bad workload %v, want it on node-z and no bad one", step.name, webUID, w, snap.WorkloadByUID("Kubernetes//Pod/shop/bad"))
			}
			good = snap
		case 1:
			// The state it led to was invalid: nothing applied.
			if snap != good {
				t.Errorf("%s: store after the NACK: got version %d, want the last good one, %d", step.name, snap.Version, good.Version)
			}
		}
	}

	// The next good update applies.
	addrs["Kubernetes//Pod/shop/fixed"] = wlAddress(&workload.Workload{Uid: "Kubernetes//Pod/shop/fixed", Name: "fixed", Namespace: "shop", Addresses: [][]byte{ip("127.0.10.5")}})
	if err := s.Update(ambient.AddressType, addrs); err != nil {
		t.Fatal(err)
	}
	snap := waitStore(t, store, "the good update after the NACKs", func(s *config.Snapshot) bool {
		return s.WorkloadByUID("Kubernetes//Pod/shop/fixed") != nil
	})
	if snap.WorkloadByUID("Kubernetes//Pod/shop/bad") != nil || snap.WorkloadByUID("Kubernetes//Pod/shop/dup") != nil {
		t.Errorf("store after the good update: holds a rejected workload")
	}
	// web went back to node-a in the response rejected whole; the server
	// counts it as sent, so the client keeps node-z until web changes
	// again or the stream resumes (delta xDS has no resend after a NACK).
	if got := snap.WorkloadByUID(webUID).Node; got != "node-z" {
		t.Errorf("node of %s after the good update: got %q, want node-z (applied with the first NACKed response)", webUID, got)
	}
	if got := testutil.ToFloat64(s.NACKCounter(ambient.AddressType)); got != 2 {
		t.Errorf("NACKs the server counted: got %v, want 2 (none resent)", got)
	}
}

func TestReconnectResumes(t *testing.T) {
	s1 := istiodxds.New(istiodxds.Options{Types: ambient.XDSTypes()})
	auths, addrs := model()
	publish(t, s1, auths, addrs)
	rec1 := &recorder{}
	addr, stop := serve(t, s1, "127.0.0.1:0", rec1)
	store := config.NewStore()
	c := startClient(t, Config{Address: addr, Plaintext: true, Store: store})
	before := waitStore(t, store, "the initial push", func(*config.Snapshot) bool { return true })
	// The versions the client holds: those of the first responses.
	held := map[string]map[string]string{AddressType: {}, AuthorizationType: {}}
	for _, resp := range rec1.stream(0).responses {
		for _, r := range resp.GetResources() {
			held[resp.GetTypeUrl()][r.GetName()] = r.GetVersion()
		}
	}

	// istiod goes away: the store keeps its state.
	stop()
	waitFor(t, "the client to notice", func() bool { return !c.Status().Connected })
	if snap := store.Snapshot(); snap != before || !store.Loaded() {
		t.Fatalf("store while istiod is away: got version %d (loaded %v), want the last good one, %d", snap.Version, store.Loaded(), before.Version)
	}

	// A new istiod on the same address with the same model, but for one
	// workload that changed meanwhile.
	s2 := istiodxds.New(istiodxds.Options{Types: ambient.XDSTypes()})
	addrs[webUID] = wlAddress(webWorkload("node-c"))
	publish(t, s2, auths, addrs)
	rec2 := &recorder{}
	serve(t, s2, addr, rec2)
	waitStore(t, store, "the change made while away", func(s *config.Snapshot) bool { return s.WorkloadByUID(webUID).Node == "node-c" })
	waitFor(t, "the client to reconnect", func() bool { return c.Status().Connected && c.Status().Streams == 2 })

	resumed := rec2.stream(0)
	initial := map[string]map[string]string{}
	for _, req := range resumed.requests {
		if req.GetResponseNonce() == "" {
			initial[req.GetTypeUrl()] = req.GetInitialResourceVersions()
		}
	}
	if diff := cmp.Diff(held, initial); diff != "" {
		t.Errorf("initial_resource_versions on resume (-want what the client held +got):\n%s", diff)
	}
	var got []carried
	for _, resp := range resumed.responses {
		got = append(got, carriedBy(resp))
	}
	slices.SortFunc(got, func(a, b carried) int { return strings.Compare(a.Type, b.Type) })
	want := []carried{{Type: AuthorizationType}, {Type: AddressType, Names: []string{webUID}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("responses after the resume (-want +got):\n%s", diff)
	}
	if snap := store.Snapshot(); len(snap.Workloads) != 2 || len(snap.Services) != 1 || len(snap.Policies) != 1 {
		t.Errorf("store after the resume: got %d workloads, %d services, %d policies; want 2, 1, 1", len(snap.Workloads), len(snap.Services), len(snap.Policies))
	}
}

// newAuthority is a mesh CA like istiod's.
func newAuthority(t *testing.T) *ca.Authority {
	t.Helper()
	certPEM, keyPEM, err := ca.NewRoot("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	a, err := ca.FromPEM(certPEM, keyPEM, nil, nil, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// serveTLS is istiod's secure port: TLS with a serving certificate for
// istiod.istio-system.svc from the mesh CA a.
func serveTLS(t *testing.T, s *istiodxds.Server, addr string, rec *recorder, a *ca.Authority) (string, func()) {
	t.Helper()
	cert, err := a.ServingCertificate([]string{"istiod.istio-system.svc"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, s, addr, rec, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})))
}

func TestTLSAndToken(t *testing.T) {
	s := istiodxds.New(istiodxds.Options{Types: ambient.XDSTypes()})
	auths, addrs := model()
	publish(t, s, auths, addrs)
	rec := &recorder{accept: map[string]bool{"Bearer token-1": true, "Bearer token-2": true}}
	authority := newAuthority(t)
	addr, stop := serveTLS(t, s, "127.0.0.1:0", rec, authority)
	tokenPath := filepath.Join(t.TempDir(), "istio-token")
	if err := os.WriteFile(tokenPath, []byte("token-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	refusals := []struct {
		name       string
		roots      *x509.CertPool
		serverName string
		want       []string
	}{
		{
			name: "wrong root", roots: newAuthority(t).Roots(), serverName: "istiod.istio-system.svc",
			want: []string{"open xds stream to " + addr, "authentication handshake failed", "certificate signed by unknown authority"},
		},
		{
			name: "wrong server name", roots: authority.Roots(), serverName: "istiod.elsewhere.svc",
			want: []string{"open xds stream to " + addr, "certificate is valid for istiod.istio-system.svc, not istiod.elsewhere.svc"},
		},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			store := config.NewStore()
			c := startClient(t, Config{Address: addr, ServerName: tc.serverName, RootCAs: tc.roots, TokenFile: tokenPath, Store: store})
			waitFor(t, "the refusal", func() bool { return c.Status().LastError != "" })
			got := c.Status().LastError
			for _, want := range tc.want {
				if !strings.Contains(got, want) {
					t.Errorf("error: got %q, want one containing %q", got, want)
				}
			}
			if store.Loaded() || rec.numStreams() != 0 {
				t.Errorf("got loaded %v and %d streams served, want neither", store.Loaded(), rec.numStreams())
			}
		})
	}

	store := config.NewStore()
	c := startClient(t, Config{Address: addr, ServerName: "istiod.istio-system.svc", RootCAs: authority.Roots(), TokenFile: tokenPath, Store: store})
	good := waitStore(t, store, "the push over TLS", func(*config.Snapshot) bool { return true })
	if got := rec.seenTokens(); !slices.Equal(got, []string{"Bearer token-1"}) {
		t.Errorf("tokens the server saw: got %q, want [Bearer token-1]", got)
	}
	// With the token goes the cluster id, Istio's default when unset.
	if got := rec.seenClusters(); !slices.Equal(got, []string{api.DefaultClusterID}) {
		t.Errorf("clusterid headers the server saw: got %q, want [%s]", got, api.DefaultClusterID)
	}

	// The kubelet rotates the token (writes a new file and renames it
	// over the old one); the next stream carries the new token.
	rotate := func(token string) {
		t.Helper()
		tmp := tokenPath + ".tmp"
		if err := os.WriteFile(tmp, []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, tokenPath); err != nil {
			t.Fatal(err)
		}
	}
	rotate("token-2")
	stop()
	waitFor(t, "the client to notice", func() bool { return !c.Status().Connected })
	_, stop = serveTLS(t, s, addr, rec, authority)
	waitFor(t, "the client to reconnect", func() bool { return c.Status().Streams == 2 })
	if got := rec.seenTokens(); !slices.Equal(got, []string{"Bearer token-1", "Bearer token-2"}) {
		t.Errorf("tokens the server saw: got %q, want [Bearer token-1 Bearer token-2]", got)
	}

	// A token the server refuses: no stream, the store keeps its state.
	rotate("token-3")
	stop()
	waitFor(t, "the client to notice", func() bool { return !c.Status().Connected })
	serveTLS(t, s, addr, rec, authority)
	waitFor(t, "the refusal", func() bool { return strings.Contains(c.Status().LastError, "Unauthenticated") })
	if got, want := c.Status().LastError, `token "Bearer token-3" not accepted`; !strings.Contains(got, want) {
		t.Errorf("error with a refused token: got %q, want one containing %q", got, want)
	}
	if snap := store.Snapshot(); snap != good {
		t.Errorf("store after the refusal: got version %d, want the last good one, %d", snap.Version, good.Version)
	}
}

// TestStopWhileAway: cancelling the context ends Run while it waits to
// reconnect, and ends the stream while connected (TestMain checks that no
// goroutine is left).
func TestStopWhileAway(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens: every attempt is refused
	c := startClient(t, Config{Address: addr, Plaintext: true})
	waitFor(t, "a refused attempt", func() bool { return strings.Contains(c.Status().LastError, "connection refused") })
	if got := testutil.ToFloat64(c.Metrics().Terminations.WithLabelValues(xdsclient.ReasonConnectionError)); got < 1 {
		t.Errorf("istio_xds_connection_terminations_total{reason=ConnectionError}: got %v, want at least 1", got)
	}
}
