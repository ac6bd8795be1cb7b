package xds

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"sync"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// changeCache is a delta-only cache.Cache for go-control-plane's delta
// server that answers watches from a log of changes instead of comparing
// every resource with every client's versions.
//
// go-control-plane's LinearCache compares all resources of the type with
// what each wildcard client holds on every update and again on every ACK:
// O(resources x clients) per change, which measured 450 ms per change at
// 10k resources and 100 clients. changeCache keeps, per stream, the
// change sequence up to which the stream's subscription has been compared,
// and on an update or an ACK compares only the resources changed since.
// It falls back to the full comparison when it has no state for the
// stream (first request, resume with initial_resource_versions), when the
// request changes the subscription, or when the change log no longer
// reaches back far enough.
//
// The server tells it which stream a request belongs to (noteRequest,
// called from the OnStreamDeltaRequest callback that go-control-plane runs
// on the stream's goroutine just before CreateDeltaWatch with the same
// request) and when a stream ends (streamClosed).
type changeCache struct {
	typeURL string
	// maxBytes bounds the resources of one response; the rest follows
	// after the client's next request.
	maxBytes int
	// aliases names the other names a resource answers to (nil: none).
	aliases func(proto.Message) []string

	mu      sync.Mutex
	res     map[string]*entry
	seq     uint64
	changes []change // ascending seq
	base    uint64   // changes hold every change after base
	streams map[int64]*streamState
	pending map[*discovery.DeltaDiscoveryRequest]int64
	// byAlias maps an alias to the resources that carry it, usually one.
	byAlias map[string][]string
}

type entry struct {
	version string
	any     *anypb.Any
	aliases []string
}

type change struct {
	seq  uint64
	name string
}

type streamState struct {
	seen  uint64 // subscription compared with every change up to seen
	watch *deltaWatch
	// rest are the changes the last response left out (size bound); the
	// next response continues with them.
	rest []string
}

type deltaWatch struct {
	req *discovery.DeltaDiscoveryRequest
	sub cache.Subscription
	ch  chan cache.DeltaResponse
}

var _ cache.Cache = (*changeCache)(nil)

// errSotW: Ambit serves its types over delta xDS only, as Istio serves
// ztunnels and waypoints by default.
var errSotW = errors.New("state-of-the-world xDS is not served: use delta xDS")

// DefaultMaxResponseBytes keeps responses under the 4 MiB that gRPC
// clients (grpc-go, tonic) accept by default.
const DefaultMaxResponseBytes = 3 << 20

func newChangeCache(typeURL string, maxBytes int, aliases func(proto.Message) []string) *changeCache {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxResponseBytes
	}
	return &changeCache{
		typeURL:  typeURL,
		maxBytes: maxBytes,
		aliases:  aliases,
		res:      map[string]*entry{},
		streams:  map[int64]*streamState{},
		pending:  map[*discovery.DeltaDiscoveryRequest]int64{},
		byAlias:  map[string][]string{},
	}
}

// CreateWatch refuses state-of-the-world streams.
func (c *changeCache) CreateWatch(*cache.Request, cache.Subscription, chan cache.Response) (func(), error) {
	return nil, errSotW
}

// Fetch refuses REST requests.
func (c *changeCache) Fetch(context.Context, *cache.Request) (cache.Response, error) {
	return nil, errSotW
}

func (c *changeCache) noteRequest(stream int64, req *discovery.DeltaDiscoveryRequest, _ *core.Node) {
	c.mu.Lock()
	c.pending[req] = stream
	c.mu.Unlock()
}

func (c *changeCache) streamClosed(stream int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.streams, stream)
	for req, id := range c.pending {
		if id == stream {
			delete(c.pending, req)
		}
	}
}

// update applies changed and removed resources and answers the watches
// they concern.
func (c *changeCache) update(changed map[string]proto.Message, removed []string) error {
	entries := make(map[string]*entry, len(changed))
	for name, r := range changed {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
		if err != nil {
			return fmt.Errorf("marshal %s: %w", name, err)
		}
		e := &entry{version: cache.HashResource(b), any: &anypb.Any{TypeUrl: c.typeURL, Value: b}}
		if c.aliases != nil {
			e.aliases = c.aliases(r)
		}
		entries[name] = e
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	for name, e := range entries {
		if old := c.res[name]; old != nil {
			if old.version == e.version {
				continue // the same bytes: nothing for anyone
			}
			c.unindex(name, old)
		}
		c.res[name] = e
		for _, a := range e.aliases {
			c.byAlias[a] = append(c.byAlias[a], name)
		}
		c.changes = append(c.changes, change{c.seq, name})
	}
	for _, name := range removed {
		if old, ok := c.res[name]; ok {
			c.unindex(name, old)
			delete(c.res, name)
			c.changes = append(c.changes, change{c.seq, name})
		}
	}
	// Keep the log about as long as the resource set; streams further
	// behind get a full comparison.
	if limit := 2*len(c.res) + 1024; len(c.changes) > limit {
		drop := len(c.changes) - limit/2
		for drop < len(c.changes) && c.changes[drop].seq == c.changes[drop-1].seq {
			drop++
		}
		c.base = c.changes[drop-1].seq
		c.changes = append([]change(nil), c.changes[drop:]...)
	}
	for _, st := range c.streams {
		w := st.watch
		if w == nil {
			continue
		}
		ch, rm := c.diffSince(w.sub, st.seen)
		st.seen = c.seq
		if len(ch)+len(rm) == 0 {
			continue
		}
		st.watch = nil
		resp, rest := c.respond(w.req, w.sub, ch, rm)
		st.rest = rest
		w.ch <- resp
	}
	return nil
}

// unindex forgets the aliases of a resource's previous entry.
func (c *changeCache) unindex(name string, old *entry) {
	for _, a := range old.aliases {
		names := slices.DeleteFunc(c.byAlias[a], func(n string) bool { return n == name })
		if len(names) == 0 {
			delete(c.byAlias, a)
		} else {
			c.byAlias[a] = names
		}
	}
}

// CreateDeltaWatch answers at once when the client lacks something, and
// otherwise parks the watch until an update concerns it.
func (c *changeCache) CreateDeltaWatch(req *discovery.DeltaDiscoveryRequest, sub cache.Subscription, ch chan cache.DeltaResponse) (func(), error) {
	if req.GetTypeUrl() != c.typeURL {
		return nil, fmt.Errorf("create watch: request type %s, cache type %s", req.GetTypeUrl(), c.typeURL)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	id, known := c.pending[req]
	delete(c.pending, req)
	st := c.streams[id]
	incremental := known && st != nil && st.seen >= c.base &&
		len(req.GetResourceNamesSubscribe()) == 0 && len(req.GetResourceNamesUnsubscribe()) == 0
	var changed, removed []string
	if incremental {
		changed, removed = c.diffSince(sub, st.seen)
		if len(st.rest) > 0 {
			changed = c.continueWith(sub, st.rest, changed)
		}
	} else {
		changed, removed = c.fullDiff(sub)
		changed, removed = c.resolve(req.GetResourceNamesSubscribe(), changed, removed)
	}
	if known {
		if st == nil {
			st = &streamState{}
			c.streams[id] = st
		}
		st.seen = c.seq
		st.watch = nil
	}
	// A first wildcard request is answered even when empty: it tells the
	// client its initial state is complete.
	if len(changed)+len(removed) > 0 || sub.IsWildcard() && req.GetResponseNonce() == "" {
		resp, rest := c.respond(req, sub, changed, removed)
		if st != nil {
			st.rest = rest
		}
		ch <- resp
		return nil, nil
	}
	if !known {
		return nil, fmt.Errorf("create watch for %s: request of an unknown stream", c.typeURL)
	}
	st.rest = nil
	w := &deltaWatch{req: req, sub: sub, ch: ch}
	st.watch = w
	return func() {
		c.mu.Lock()
		if st.watch == w {
			st.watch = nil
		}
		c.mu.Unlock()
	}, nil
}

// resolve answers the names a request subscribes to, as Istio does for
// on-demand clients, even when the client holds the resources already,
// since it waits for an answer: a resource's own name brings the
// resource; an alias of resources (a workload's or service's
// "<network>/<ip>") brings them under their own names; a name that is
// neither is answered with its removal, which tells the client it does
// not exist (the delta protocol's way, see Envoy's xDS protocol, "Knowing
// When a Requested Resource Does Not Exist").
func (c *changeCache) resolve(names, changed, removed []string) ([]string, []string) {
	var have map[string]bool // changed and removed, built on first need
	add := func(list *[]string, n string) {
		if have == nil {
			have = map[string]bool{}
			for _, x := range changed {
				have[x] = true
			}
			for _, x := range removed {
				have[x] = true
			}
		}
		if !have[n] {
			have[n] = true
			*list = append(*list, n)
		}
	}
	for _, n := range names {
		if n == "*" {
			continue
		}
		if c.res[n] != nil {
			add(&changed, n)
			continue
		}
		canon, ok := c.byAlias[n]
		if !ok {
			add(&removed, n)
			continue
		}
		for _, name := range canon {
			add(&changed, name)
		}
	}
	return changed, removed
}

// subscribed reports whether a stream's subscription covers a resource:
// a wildcard, its name, or one of its aliases.
func subscribed(sub cache.Subscription, name string, e *entry) bool {
	if sub.IsWildcard() {
		return true
	}
	subs := sub.SubscribedResources()
	if _, ok := subs[name]; ok {
		return true
	}
	for _, a := range e.aliases {
		if _, ok := subs[a]; ok {
			return true
		}
	}
	return false
}

// continueWith adds to changed (changes since the last response) what the
// last response left out and the client still lacks. Removals among them
// are in changed's diff already, since they happened after.
func (c *changeCache) continueWith(sub cache.Subscription, rest, changed []string) []string {
	known := sub.ReturnedResources()
	in := make(map[string]bool, len(changed))
	for _, n := range changed {
		in[n] = true
	}
	for _, n := range rest {
		e := c.res[n]
		if in[n] || e == nil || !subscribed(sub, n, e) {
			continue
		}
		if v, has := known[n]; !has || v != e.version {
			changed = append(changed, n)
		}
	}
	return changed
}

// diffSince compares the subscription with the resources changed after
// seq since.
func (c *changeCache) diffSince(sub cache.Subscription, since uint64) (changed, removed []string) {
	i := sort.Search(len(c.changes), func(i int) bool { return c.changes[i].seq > since })
	known := sub.ReturnedResources()
	seen := map[string]bool{}
	for _, ch := range c.changes[i:] {
		if seen[ch.name] {
			continue
		}
		seen[ch.name] = true
		v, has := known[ch.name]
		e := c.res[ch.name]
		switch {
		case e != nil && subscribed(sub, ch.name, e):
			if !has || v != e.version {
				changed = append(changed, ch.name)
			}
		case has:
			// Gone, or no longer covered by the subscription (an alias
			// that now belongs to another resource).
			removed = append(removed, ch.name)
		}
	}
	return changed, removed
}

// fullDiff compares the subscription with every resource, as
// go-control-plane's LinearCache does.
func (c *changeCache) fullDiff(sub cache.Subscription) (changed, removed []string) {
	known := sub.ReturnedResources()
	if sub.IsWildcard() {
		for name, e := range c.res {
			if v, ok := known[name]; !ok || v != e.version {
				changed = append(changed, name)
			}
		}
		for name := range known {
			if _, ok := c.res[name]; !ok {
				removed = append(removed, name)
			}
		}
		return changed, removed
	}
	want := map[string]bool{}
	for name := range sub.SubscribedResources() {
		if c.res[name] != nil {
			want[name] = true
		}
		for _, n := range c.byAlias[name] {
			want[n] = true
		}
	}
	for name := range want {
		e := c.res[name]
		if v, has := known[name]; !has || v != e.version {
			changed = append(changed, name)
		}
	}
	for name := range known {
		if !want[name] {
			removed = append(removed, name)
		}
	}
	return changed, removed
}

// respond builds a response with the removals and as many changed
// resources as fit in maxBytes (at least one), in the order given; rest
// are those left for a later response.
//
// The next version map is the stream's own ReturnedResources map, updated
// in place rather than copied: a copy per response is O(resources) per
// client, which at 10k resources and 100 clients was most of the time of
// a one-resource push. go-control-plane documents that the cache must not
// alter that map; with its delta server (v0.14) this is safe all the same,
// because the map is only touched here while the stream's watch is parked
// in this cache (under c.mu), and the stream goroutine touches it only
// after it cancelled that watch (also under c.mu) or once it received this
// response, which carries the same map. Re-check this on upgrades of
// go-control-plane, with the xds tests under -race.
func (c *changeCache) respond(req *discovery.DeltaDiscoveryRequest, sub cache.Subscription, changed, removed []string) (_ cache.DeltaResponse, rest []string) {
	next := sub.ReturnedResources()
	if next == nil {
		next = map[string]string{}
	}
	// Removals are few and sorted for readable logs; changed is not
	// sorted: a full push's sort per client and response cost more than
	// anything else in it at 50k resources.
	sort.Strings(removed)
	out := &discovery.DeltaDiscoveryResponse{
		TypeUrl:           c.typeURL,
		SystemVersionInfo: strconv.FormatUint(c.seq, 10),
		Resources:         make([]*discovery.Resource, 0, len(changed)),
		RemovedResources:  removed,
	}
	size := 0
	for i, name := range changed {
		e := c.res[name]
		size += len(e.any.GetValue()) + len(name) + len(e.version)
		if size > c.maxBytes && len(out.Resources) > 0 {
			rest = changed[i:]
			break
		}
		out.Resources = append(out.Resources, &discovery.Resource{Name: name, Version: e.version, Resource: e.any, Aliases: e.aliases})
		next[name] = e.version
	}
	for _, name := range removed {
		delete(next, name)
	}
	return &cache.DeltaPassthroughResponse{DeltaRequest: req, NextVersionMap: next, DeltaDiscoveryResponse: out}, rest
}
