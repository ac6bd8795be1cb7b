// Package xds serves resources over delta xDS (DeltaAggregatedResources)
// with go-control-plane's delta server: the ambient model to ztunnels,
// and each waypoint its Envoy types (partitioned types). It serves the
// resource types its translators register (Options.Types), each with a
// changeCache (changecache.go; one per partition) behind a MuxCache, and
// knows nothing else about them. It does not know where the resources
// come from either; callers hand it either complete sets (Update, which
// diffs them against the previous set) or only what changed (Apply,
// ApplyPartition), and it pushes only what changed.
//
// Behaviour, pinned down by the tests:
//   - Versions are hashes of the resources, so a client that reconnects
//     with initial_resource_versions receives only what changed and the
//     removals since.
//   - A stream has at most one outstanding response per type; the next is
//     prepared only after the client's next request (ACK or NACK). A slow
//     client therefore holds back nothing but its own stream.
//   - Resources of a type with Aliases carry their aliases (for the
//     workload API's Address: "<network>/<ip>" of each address), and an
//     on-demand client may subscribe by alias: it gets the resources under
//     their own names, with the aliases, and from then on their changes. A
//     subscribed name that is neither a resource nor an alias is answered
//     with its removal, as Istio does.
//   - A partitioned type (Type.Partition: a waypoint's Envoy types) is
//     served per partition: each stream gets the resources of the
//     partition its first node names, under names other partitions use
//     too (every waypoint has a listener connect_terminate), and only
//     that partition's changes (ApplyPartition).
//   - A NACK does not resend: the server already recorded what it sent, so
//     the client gets the next change, not the same rejected resources
//     again. NACKs are logged with the client's reason.
package xds

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"sort"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Type is a resource type the server serves.
type Type struct {
	// URL is the type URL clients ask for,
	// "type.googleapis.com/<message full name>".
	URL string
	// Aliases, when not nil, gives the names other than its own that a
	// resource answers to in on-demand subscriptions.
	Aliases func(proto.Message) []string
	// Partition, when not nil, makes the type partitioned: each client
	// is served the resources of the partition its node names (for a
	// waypoint's Envoy types, its waypoint: every waypoint has a
	// listener named connect_terminate), filled with ApplyPartition. A
	// node that names none ("") gets nothing.
	Partition func(*core.Node) string
}

// Log attribute keys.
const (
	logStream  = "stream"
	logNode    = "node"
	logType    = "type"
	logNonce   = "nonce"
	logReason  = "reason"
	logCount   = "resources"
	logRemoved = "removed"

	logPartition = "partition"
)

// Options configure a Server.
type Options struct {
	Log *slog.Logger
	// Registerer receives the metrics; none when nil.
	Registerer prometheus.Registerer
	// MaxResponseBytes bounds the resources in one response (a full push
	// is split over several); DefaultMaxResponseBytes when zero.
	MaxResponseBytes int
	// Types are the resource types served, registered by the translators
	// that produce them. A client asking for any other type gets none.
	Types []Type
}

// Server is the delta ADS server of the registered resource types.
type Server struct {
	log    *slog.Logger
	caches map[string]typeCache
	ads    serverv3.Server

	mu      sync.Mutex                          // serialises Update
	current map[string]map[string]proto.Message // type -> name -> resource

	// cmu guards clients apart from mu, so that stream requests never
	// wait for an Update to finish waking the watches.
	cmu     sync.Mutex
	clients map[int64]*client

	metrics metrics
}

type client struct {
	id        int64
	node      string
	nodeProto *core.Node // as sent on the stream's first request
	connected time.Time
	acked     map[string]string // type -> last ACKed nonce
	nacks     int
	lastNACK  string
}

type metrics struct {
	pushes     *prometheus.CounterVec
	resources  *prometheus.CounterVec
	nacks      *prometheus.CounterVec
	clients    prometheus.Gauge
	updateTime prometheus.Histogram
}

// New builds a Server with empty caches of opts.Types. It panics when a
// type has no URL or two types share one: a program error, as registering
// a gRPC service twice is.
func New(opts Options) *Server {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		log:     opts.Log,
		caches:  map[string]typeCache{},
		current: map[string]map[string]proto.Message{},
		clients: map[int64]*client{},
	}
	mux := &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        map[string]cache.Cache{},
	}
	for _, typ := range opts.Types {
		if typ.URL == "" {
			panic("new xds server: a type without URL")
		}
		if _, dup := s.caches[typ.URL]; dup {
			panic("new xds server: type " + typ.URL + " registered twice")
		}
		var c typeCache
		if typ.Partition != nil {
			c = newPartitioned(typ, opts.MaxResponseBytes)
		} else {
			c = newChangeCache(typ.URL, opts.MaxResponseBytes, typ.Aliases)
			s.current[typ.URL] = map[string]proto.Message{}
		}
		s.caches[typ.URL] = c
		mux.Caches[typ.URL] = c
	}
	s.metrics = metrics{
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pilot_xds_pushes", Help: "Delta xDS responses sent, by type.",
		}, []string{"type"}),
		resources: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambit_xds_pushed_resources_total", Help: "Resources and removals carried by delta xDS responses, by type.",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pilot_total_xds_rejects", Help: "Responses rejected by clients (NACK), by type.",
		}, []string{"type"}),
		clients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pilot_xds", Help: "Connected xDS clients.",
		}),
		updateTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ambit_xds_update_seconds", Help: "Time to diff a new model into the caches and wake the watches.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
	}
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{s.metrics.pushes, s.metrics.resources, s.metrics.nacks, s.metrics.clients, s.metrics.updateTime} {
			opts.Registerer.MustRegister(c)
		}
	}
	s.ads = serverv3.NewServer(context.Background(), mux, serverv3.CallbackFuncs{
		DeltaStreamOpenFunc:     s.onOpen,
		DeltaStreamClosedFunc:   s.onClosed,
		StreamDeltaRequestFunc:  s.onRequest,
		StreamDeltaResponseFunc: s.onResponse,
	})
	return s
}

// Register adds the AggregatedDiscoveryService to a gRPC server.
func (s *Server) Register(g *grpc.Server) {
	discovery.RegisterAggregatedDiscoveryServiceServer(g, s.ads)
}

// Update replaces the resources of one type with a complete set. Only the
// resources that differ from the previous set (by proto.Equal) and the
// removed ones reach the clients.
func (s *Server) Update(typeURL string, resources map[string]proto.Message) error {
	start := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.caches[typeURL].(*changeCache)
	if !ok {
		return fmt.Errorf("update %s: unknown or partitioned type", typeURL)
	}
	old := s.current[typeURL]
	changed := map[string]proto.Message{}
	for name, r := range resources {
		if o, ok := old[name]; ok && proto.Equal(o, r) {
			continue
		}
		changed[name] = r
	}
	var removed []string
	for name := range old {
		if _, ok := resources[name]; !ok {
			removed = append(removed, name)
		}
	}
	if len(changed) == 0 && len(removed) == 0 {
		return nil
	}
	sort.Strings(removed)
	if err := c.update(changed, removed); err != nil {
		return fmt.Errorf("update %s: %w", typeURL, err)
	}
	next := make(map[string]proto.Message, len(resources))
	for k, v := range resources {
		next[k] = v
	}
	s.current[typeURL] = next
	s.metrics.updateTime.Observe(time.Since(start).Seconds())
	s.log.Debug("xds update", logType, typeURL, logCount, len(changed), logRemoved, len(removed))
	return nil
}

// Apply changes some resources of one type: changed ones are added or
// replaced, removed ones dropped; the others stay as they are. Unlike
// Update it compares nothing: the caller says what changed, and the cost
// is proportional to that. A resource handed over unchanged reaches no
// client (its version, a hash of its bytes, is the same). A name both
// changed and removed is removed.
func (s *Server) Apply(typeURL string, changed map[string]proto.Message, removed []string) error {
	start := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.caches[typeURL].(*changeCache)
	if !ok {
		return fmt.Errorf("apply %s: unknown or partitioned type", typeURL)
	}
	if len(changed) == 0 && len(removed) == 0 {
		return nil
	}
	changed = withoutRemoved(changed, removed)
	if err := c.update(changed, removed); err != nil {
		return fmt.Errorf("apply %s: %w", typeURL, err)
	}
	cur := s.current[typeURL]
	for k, v := range changed {
		cur[k] = v
	}
	for _, k := range removed {
		delete(cur, k)
	}
	s.metrics.updateTime.Observe(time.Since(start).Seconds())
	s.log.Debug("xds apply", logType, typeURL, logCount, len(changed), logRemoved, len(removed))
	return nil
}

// withoutRemoved is changed without the names removed also names (the
// removal wins), a copy when there are any.
func withoutRemoved(changed map[string]proto.Message, removed []string) map[string]proto.Message {
	if len(removed) == 0 || len(changed) == 0 {
		return changed
	}
	changed = maps.Clone(changed)
	for _, name := range removed {
		delete(changed, name)
	}
	return changed
}

// ApplyPartition changes some resources of one partition of a
// partitioned type, as Apply does for a type that is not: only the
// clients whose node names the partition see them.
func (s *Server) ApplyPartition(typeURL, partition string, changed map[string]proto.Message, removed []string) error {
	start := time.Now()
	p, ok := s.caches[typeURL].(*partitioned)
	if !ok {
		return fmt.Errorf("apply %s to partition %s: unknown type, or not partitioned", typeURL, partition)
	}
	if len(changed) == 0 && len(removed) == 0 {
		return nil
	}
	changed = withoutRemoved(changed, removed)
	if err := p.get(partition).update(changed, removed); err != nil {
		return fmt.Errorf("apply %s to partition %s: %w", typeURL, partition, err)
	}
	s.metrics.updateTime.Observe(time.Since(start).Seconds())
	s.log.Debug("xds apply", logType, typeURL, logPartition, partition, logCount, len(changed), logRemoved, len(removed))
	return nil
}

// ClientInfo describes a connected client, for the debug endpoint.
type ClientInfo struct {
	Stream    int64             `json:"stream"`
	Node      string            `json:"node"`
	Connected time.Time         `json:"connected"`
	Acked     map[string]string `json:"acked"`
	NACKs     int               `json:"nacks"`
	LastNACK  string            `json:"lastNack,omitempty"`
}

// Clients lists the connected clients.
func (s *Server) Clients() []ClientInfo {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	out := make([]ClientInfo, 0, len(s.clients))
	for _, c := range s.clients {
		acked := map[string]string{}
		for k, v := range c.acked {
			acked[k] = v
		}
		out = append(out, ClientInfo{Stream: c.id, Node: c.node, Connected: c.connected, Acked: acked, NACKs: c.nacks, LastNACK: c.lastNACK})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Stream < out[j].Stream })
	return out
}

func (s *Server) onOpen(_ context.Context, id int64, _ string) error {
	s.cmu.Lock()
	s.clients[id] = &client{id: id, connected: time.Now(), acked: map[string]string{}}
	s.cmu.Unlock()
	s.metrics.clients.Inc()
	s.log.Debug("xds stream opened", logStream, id)
	return nil
}

func (s *Server) onClosed(id int64, node *core.Node) {
	for _, c := range s.caches {
		c.streamClosed(id)
	}
	s.cmu.Lock()
	delete(s.clients, id)
	s.cmu.Unlock()
	s.metrics.clients.Dec()
	s.log.Debug("xds stream closed", logStream, id, logNode, node.GetId())
}

func (s *Server) onRequest(id int64, req *discovery.DeltaDiscoveryRequest) error {
	s.cmu.Lock()
	c := s.clients[id]
	if c != nil && req.GetNode() != nil {
		if c.nodeProto == nil {
			// A stream's partition is its first node's.
			c.nodeProto = req.GetNode()
		}
		if req.GetNode().GetId() != "" {
			c.node = req.GetNode().GetId()
		}
	}
	node := ""
	var nodeProto *core.Node
	if c != nil {
		node, nodeProto = c.node, c.nodeProto
	}
	if nodeProto == nil {
		nodeProto = req.GetNode()
	}
	switch {
	case req.GetErrorDetail() != nil:
		if c != nil {
			c.nacks++
			c.lastNACK = req.GetErrorDetail().GetMessage()
		}
	case req.GetResponseNonce() != "" && c != nil:
		c.acked[req.GetTypeUrl()] = req.GetResponseNonce()
	}
	s.cmu.Unlock()
	if tc := s.caches[req.GetTypeUrl()]; tc != nil {
		tc.noteRequest(id, req, nodeProto)
	}
	if d := req.GetErrorDetail(); d != nil {
		// Logged once per NACK; nothing is resent (see the package doc).
		s.metrics.nacks.WithLabelValues(req.GetTypeUrl()).Inc()
		s.log.Warn("xds NACK", logStream, id, logNode, node, logType, req.GetTypeUrl(), logNonce, req.GetResponseNonce(), logReason, d.GetMessage())
	}
	return nil
}

func (s *Server) onResponse(id int64, req *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
	s.metrics.pushes.WithLabelValues(resp.GetTypeUrl()).Inc()
	s.metrics.resources.WithLabelValues(resp.GetTypeUrl()).Add(float64(len(resp.GetResources()) + len(resp.GetRemovedResources())))
	s.log.Debug("xds push", logStream, id, logType, resp.GetTypeUrl(), logCount, len(resp.GetResources()), logRemoved, len(resp.GetRemovedResources()), logNonce, resp.GetNonce())
}

// NACKCounter is the NACK counter of one type, for tests and the debug
// endpoint.
func (s *Server) NACKCounter(typeURL string) prometheus.Counter {
	return s.metrics.nacks.WithLabelValues(typeURL)
}
