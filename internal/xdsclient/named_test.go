package xdsclient

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"
)

// adsServer is an ADS server on loopback whose streams a test drives: it
// sees every request of a stream and says what the server sends.
type adsServer struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
	streams chan *adsStream
	addr    string
}

// adsStream is one stream of an adsServer: the client's requests come
// on reqs; responses sent on send go to the client; closing end ends the
// stream.
type adsStream struct {
	reqs chan *discovery.DeltaDiscoveryRequest
	send chan *discovery.DeltaDiscoveryResponse
	end  chan struct{}
}

func startADS(t *testing.T) *adsServer {
	t.Helper()
	s := &adsServer{streams: make(chan *adsStream, 4)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	g := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(g, s)
	var wg sync.WaitGroup
	wg.Go(func() { g.Serve(ln) })
	t.Cleanup(func() {
		g.Stop()
		wg.Wait()
	})
	return s
}

func (s *adsServer) DeltaAggregatedResources(stream discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	st := &adsStream{
		reqs: make(chan *discovery.DeltaDiscoveryRequest, 64),
		send: make(chan *discovery.DeltaDiscoveryResponse),
		end:  make(chan struct{}),
	}
	s.streams <- st
	errc := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			st.reqs <- req
		}
	}()
	for {
		select {
		case r := <-st.send:
			if err := stream.Send(r); err != nil {
				return err
			}
		case <-st.end:
			return nil
		case err := <-errc:
			return err
		}
	}
}

func (s *adsServer) stream(t *testing.T) *adsStream {
	t.Helper()
	select {
	case st := <-s.streams:
		return st
	case <-time.After(20 * time.Second):
		t.Fatal("no stream from the client")
		return nil
	}
}

// next is the client's next request.
func (st *adsStream) next(t *testing.T) *discovery.DeltaDiscoveryRequest {
	t.Helper()
	select {
	case req := <-st.reqs:
		return req
	case <-time.After(20 * time.Second):
		t.Fatal("no request from the client")
		return nil
	}
}

// want checks the client's next request against want, ignoring the node.
func (st *adsStream) want(t *testing.T, what string, want *discovery.DeltaDiscoveryRequest) {
	t.Helper()
	got := st.next(t)
	got.Node = nil
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Fatalf("%s (-want +got):\n%s", what, diff)
	}
}

// ack checks that the client's next request ACKs nonce.
func (st *adsStream) ack(t *testing.T, typ, nonce string) {
	t.Helper()
	got := st.next(t)
	if got.GetTypeUrl() != typ || got.GetResponseNonce() != nonce || got.GetErrorDetail() != nil ||
		len(got.GetResourceNamesSubscribe())+len(got.GetResourceNamesUnsubscribe()) > 0 {
		t.Fatalf("request after response %s: got %v, want a plain ACK of %s", nonce, got, typ)
	}
}

// namedHandler is a Handler of StringValues of two types: typeA, held as
// a wildcard, whose values are the names of typeB to subscribe to
// (Envoy's clusters and their EDS names), and typeB. Every complete set
// it accepts goes to sets.
type namedHandler struct {
	stringsHandler
	sets chan map[string][]string
}

func (h *namedHandler) Update(held Held, complete bool) error {
	if err := h.stringsHandler.Update(held, complete); err != nil {
		return err
	}
	if complete {
		h.sets <- h.current
	}
	return nil
}

// namesOfA are the values of typeA held.
func namesOfA(held Held) []string {
	var out []string
	for _, v := range held.Values(typeA) {
		out = append(out, v.(string))
	}
	return out
}

func runNamed(t *testing.T, s *adsServer, timeout time.Duration) *namedHandler {
	t.Helper()
	h := &namedHandler{sets: make(chan map[string][]string, 16)}
	c, err := New(Config{
		Address: s.addr, Plaintext: true, Types: []string{typeA, typeB}, Handler: h,
		Named:               map[string]NamesFunc{typeB: namesOfA},
		InitialFetchTimeout: timeout,
		InitialBackoff:      time.Millisecond, MaxBackoff: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return h
}

func wantSet(t *testing.T, h *namedHandler, what string, want map[string][]string) {
	t.Helper()
	select {
	case got := <-h.sets:
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("%s (-want +got):\n%s", what, diff)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: no complete set", what)
	}
}

func noSet(t *testing.T, h *namedHandler, what string) {
	t.Helper()
	select {
	case got := <-h.sets:
		t.Fatalf("%s: got complete set %v, want none yet", what, got)
	default:
	}
}

// TestNamedSubscriptions: a named type is subscribed to by the names the
// held set gives, in requests of their own before the ACK; the set is
// complete once every name is answered, by the resource or its removal;
// names no longer given are unsubscribed and their resources dropped;
// resources not subscribed to are ignored; a resumed stream subscribes
// again to every name, with the versions held.
func TestNamedSubscriptions(t *testing.T) {
	s := startADS(t)
	h := runNamed(t, s, time.Hour)
	st := s.stream(t)
	// No request of B while no name of it is wanted: a first request
	// without names would be a wildcard.
	st.want(t, "first request", &discovery.DeltaDiscoveryRequest{TypeUrl: typeA})

	st.send <- resp(t, typeA, "a1", map[string]string{"c1": "e1", "c2": "e2"})
	st.want(t, "subscription after the first A", &discovery.DeltaDiscoveryRequest{TypeUrl: typeB, ResourceNamesSubscribe: []string{"e1", "e2"}})
	st.ack(t, typeA, "a1")

	st.send <- resp(t, typeB, "b1", map[string]string{"e1": "x"})
	st.ack(t, typeB, "b1")
	noSet(t, h, "e2 not answered")
	// e2 does not exist: the server says so with its removal.
	st.send <- resp(t, typeB, "b2", nil, "e2")
	st.ack(t, typeB, "b2")
	wantSet(t, h, "every name answered", map[string][]string{typeA: {"e1", "e2"}, typeB: {"x"}})

	// A resource of B not subscribed to is ignored, not NACKed.
	st.send <- resp(t, typeB, "b3", map[string]string{"e9": "z"})
	st.ack(t, typeB, "b3")

	// A cluster removed: its name is unsubscribed; one added: subscribed.
	st.send <- resp(t, typeA, "a2", map[string]string{"c3": "e3"}, "c2")
	st.want(t, "subscription after c2 went and c3 came", &discovery.DeltaDiscoveryRequest{TypeUrl: typeB,
		ResourceNamesSubscribe: []string{"e3"}, ResourceNamesUnsubscribe: []string{"e2"}})
	st.ack(t, typeA, "a2")
	// Complete already: c3 does not hold the set back.
	wantSet(t, h, "after a2", map[string][]string{typeA: {"e1", "e3"}, typeB: {"x"}})
	st.send <- resp(t, typeB, "b4", map[string]string{"e3": "y"})
	st.ack(t, typeB, "b4")
	wantSet(t, h, "after e3", map[string][]string{typeA: {"e1", "e3"}, typeB: {"x", "y"}})

	// c1 goes: e1 is unsubscribed and its resource dropped at once.
	st.send <- resp(t, typeA, "a3", nil, "c1")
	st.want(t, "subscription after c1 went", &discovery.DeltaDiscoveryRequest{TypeUrl: typeB, ResourceNamesUnsubscribe: []string{"e1"}})
	st.ack(t, typeA, "a3")
	wantSet(t, h, "after c1 went", map[string][]string{typeA: {"e3"}, typeB: {"y"}})

	// The stream ends; the next subscribes to every name again, with the
	// versions held.
	st.send <- resp(t, typeA, "a4", map[string]string{"c4": "e4"})
	st.want(t, "subscription after c4", &discovery.DeltaDiscoveryRequest{TypeUrl: typeB, ResourceNamesSubscribe: []string{"e4"}})
	st.ack(t, typeA, "a4")
	wantSet(t, h, "after c4", map[string][]string{typeA: {"e3", "e4"}, typeB: {"y"}})
	close(st.end)
	st = s.stream(t)
	st.want(t, "A resumed", &discovery.DeltaDiscoveryRequest{TypeUrl: typeA,
		InitialResourceVersions: map[string]string{"c3": "v-e3", "c4": "v-e4"}})
	st.want(t, "B resumed", &discovery.DeltaDiscoveryRequest{TypeUrl: typeB,
		ResourceNamesSubscribe: []string{"e3", "e4"}, InitialResourceVersions: map[string]string{"e3": "v-y"}})
	st.send <- resp(t, typeB, "b5", map[string]string{"e4": "w"})
	st.ack(t, typeB, "b5")
	wantSet(t, h, "after the resume", map[string][]string{typeA: {"e3", "e4"}, typeB: {"y", "w"}})
}

// TestNamedInitialFetchTimeout: a name no answer comes for holds the
// first complete set back for InitialFetchTimeout only; its resource
// applies when it comes.
func TestNamedInitialFetchTimeout(t *testing.T) {
	s := startADS(t)
	h := runNamed(t, s, 50*time.Millisecond)
	st := s.stream(t)
	st.want(t, "first request", &discovery.DeltaDiscoveryRequest{TypeUrl: typeA})
	st.send <- resp(t, typeA, "a1", map[string]string{"c1": "e1", "c2": "e2"})
	st.want(t, "subscription", &discovery.DeltaDiscoveryRequest{TypeUrl: typeB, ResourceNamesSubscribe: []string{"e1", "e2"}})
	st.ack(t, typeA, "a1")
	st.send <- resp(t, typeB, "b1", map[string]string{"e1": "x"})
	st.ack(t, typeB, "b1")
	// e2 never comes: the set is complete without it once its initial
	// fetch timed out.
	wantSet(t, h, "after the timeout", map[string][]string{typeA: {"e1", "e2"}, typeB: {"x"}})
	st.send <- resp(t, typeB, "b2", map[string]string{"e2": "y"})
	st.ack(t, typeB, "b2")
	wantSet(t, h, "e2 late", map[string][]string{typeA: {"e1", "e2"}, typeB: {"x", "y"}})
}

// TestNamedNACK: a resource of a named type that does not decode is
// named in the NACK, leaves its name unanswered, and the good ones
// apply; a response with garbage in place of a resource is NACKed too.
func TestNamedNACK(t *testing.T) {
	s := startADS(t)
	h := runNamed(t, s, time.Hour)
	st := s.stream(t)
	st.want(t, "first request", &discovery.DeltaDiscoveryRequest{TypeUrl: typeA})
	st.send <- resp(t, typeA, "a1", map[string]string{"c1": "e1", "c2": "e2"})
	st.want(t, "subscription", &discovery.DeltaDiscoveryRequest{TypeUrl: typeB, ResourceNamesSubscribe: []string{"e1", "e2"}})
	st.ack(t, typeA, "a1")

	bad := resp(t, typeB, "b1", map[string]string{"e1": "x", "e2": "bad"})
	st.send <- bad
	nack := st.next(t)
	if nack.GetResponseNonce() != "b1" || !strings.Contains(nack.GetErrorDetail().GetMessage(), "e2: bad value") {
		t.Fatalf("request after a bad e2: got %v, want a NACK of b1 naming e2", nack)
	}
	noSet(t, h, "e2 rejected")
	garbage := &discovery.DeltaDiscoveryResponse{TypeUrl: typeB, Nonce: "b2", Resources: []*discovery.Resource{
		{Name: "e2", Version: "1", Resource: &anypb.Any{TypeUrl: "type.googleapis.com/google.protobuf.StringValue", Value: []byte{0xff, 0xff}}}}}
	st.send <- garbage
	nack = st.next(t)
	if nack.GetResponseNonce() != "b2" || !strings.Contains(nack.GetErrorDetail().GetMessage(), "e2: ") {
		t.Fatalf("request after garbage: got %v, want a NACK of b2 naming e2", nack)
	}
	noSet(t, h, "e2 garbage")
	st.send <- resp(t, typeB, "b3", map[string]string{"e2": "y"})
	st.ack(t, typeB, "b3")
	wantSet(t, h, "e2 good", map[string][]string{typeA: {"e1", "e2"}, typeB: {"x", "y"}})
}

// TestNamedConfig: a named type must be one of Types.
func TestNamedConfig(t *testing.T) {
	_, err := New(Config{Address: "127.0.0.1:1", Plaintext: true, Types: []string{typeA}, Handler: &stringsHandler{},
		Named: map[string]NamesFunc{typeB: namesOfA}})
	if err == nil || !strings.Contains(err.Error(), typeB) {
		t.Fatalf("named type not subscribed to: got %v, want an error naming it", err)
	}
}
