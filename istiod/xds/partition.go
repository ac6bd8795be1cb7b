package xds

import (
	"context"
	"sync"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"
)

// typeCache is the cache of one served type: one changeCache, or one per
// partition (partitioned).
type typeCache interface {
	cache.Cache
	// noteRequest is called before the request's CreateDeltaWatch, with
	// the stream's node (sent on its first request only).
	noteRequest(stream int64, req *discovery.DeltaDiscoveryRequest, node *core.Node)
	streamClosed(stream int64)
}

var (
	_ typeCache = (*changeCache)(nil)
	_ typeCache = (*partitioned)(nil)
)

// partitioned serves each client the resources of its own partition,
// one changeCache each, created when a client or an ApplyPartition first
// names it. A client whose node names no partition ("") gets the empty
// partition "", which nobody fills.
type partitioned struct {
	typeURL   string
	maxBytes  int
	aliases   func(proto.Message) []string
	partition func(*core.Node) string

	mu      sync.Mutex
	parts   map[string]*changeCache
	pending map[*discovery.DeltaDiscoveryRequest]pendingRequest
}

type pendingRequest struct {
	stream    int64
	partition string
}

func newPartitioned(t Type, maxBytes int) *partitioned {
	return &partitioned{typeURL: t.URL, maxBytes: maxBytes, aliases: t.Aliases, partition: t.Partition,
		parts: map[string]*changeCache{}, pending: map[*discovery.DeltaDiscoveryRequest]pendingRequest{}}
}

func (p *partitioned) get(name string) *changeCache {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.parts[name]
	if c == nil {
		c = newChangeCache(p.typeURL, p.maxBytes, p.aliases)
		p.parts[name] = c
	}
	return c
}

func (p *partitioned) noteRequest(stream int64, req *discovery.DeltaDiscoveryRequest, node *core.Node) {
	name := p.partition(node)
	p.mu.Lock()
	p.pending[req] = pendingRequest{stream: stream, partition: name}
	p.mu.Unlock()
	p.get(name).noteRequest(stream, req, node)
}

func (p *partitioned) streamClosed(stream int64) {
	p.mu.Lock()
	parts := make([]*changeCache, 0, len(p.parts))
	for _, c := range p.parts {
		parts = append(parts, c)
	}
	for req, pr := range p.pending {
		if pr.stream == stream {
			delete(p.pending, req)
		}
	}
	p.mu.Unlock()
	for _, c := range parts {
		c.streamClosed(stream)
	}
}

func (p *partitioned) CreateWatch(*cache.Request, cache.Subscription, chan cache.Response) (func(), error) {
	return nil, errSotW
}

func (p *partitioned) Fetch(context.Context, *cache.Request) (cache.Response, error) {
	return nil, errSotW
}

func (p *partitioned) CreateDeltaWatch(req *discovery.DeltaDiscoveryRequest, sub cache.Subscription, ch chan cache.DeltaResponse) (func(), error) {
	p.mu.Lock()
	pr, ok := p.pending[req]
	delete(p.pending, req)
	p.mu.Unlock()
	name := pr.partition
	if !ok {
		name = p.partition(req.GetNode())
	}
	return p.get(name).CreateDeltaWatch(req, sub, ch)
}
