// Package xdsclient is a delta xDS client (DeltaAggregatedResources) for
// any set of resource types: ztunnel's workload discovery and the
// waypoint's Envoy xDS are built on it. It keeps one stream open to the
// server, subscribed to each type either as a wildcard or, for the types
// in Config.Named, by resource name (as Envoy subscribes to EDS by its
// clusters' names), holds the resources of each type with their
// versions, and hands the whole held set to its Handler after every
// response.
//
// Behaviour:
//   - Every resource of a response is decoded by the Handler; those that
//     fail are left out (a resource held under the same name stays as it
//     was) and the response is NACKed with error_detail naming them, while
//     the good ones and the removals apply, as Istio's ztunnel does: one
//     bad resource does not hold back the rest of a push. The Handler
//     then checks the held set they lead to as a whole; if it refuses it,
//     nothing of the response applies and the Handler keeps the last good
//     state. Nothing is asked for again: the server sends the next change,
//     and a resumed stream gets the left-out resources again, as their
//     versions are not among those the client holds.
//   - A named type's names follow the held set: after every response
//     the client asks the type's NamesFunc for them and tells the server
//     what changed in a request of their own, without a nonce (Istio's
//     istiod takes a changed subscription in an ACK for an error), before
//     the ACK of the response: resource_names_subscribe for new names,
//     resource_names_unsubscribe for names no longer wanted, whose held
//     resources it drops at once (the server sends no removal for them).
//     It sends no request of a named type while it wants no name of it:
//     a first request without names would be a wildcard. Resources of a
//     named type it did not subscribe to are ignored, as Envoy does; a
//     server that sends them anyway (a wildcard one) still configures it.
//   - The held set is complete only once the first response of each type
//     (but the Optional ones, which a server may not serve) has been
//     applied and every name subscribed to of each named type has been
//     answered, with the resource or with its removal (a delta server's
//     way of saying it does not exist: Istio's istiod answers every EDS
//     name, ours answers an unknown one with its removal); before that the
//     Handler only checks it, so that a user never starts with one type
//     but not the others. A name that no answer comes for holds the set
//     back for InitialFetchTimeout at most (Envoy's initial_fetch_timeout,
//     15 s by default, after which a warming cluster is used without the
//     endpoints it waits for); the set is then complete without it, and
//     the resource applies when it comes. Once complete it stays so: a
//     name subscribed to later (a new cluster) does not hold back the
//     rest of the configuration.
//   - When the stream ends the client reconnects with exponential backoff
//     and jitter (100 ms growing to 15 s, back to the start after a stream
//     that delivered responses), sending initial_resource_versions of what
//     it holds, so the server sends only what changed and what was removed
//     meanwhile, and subscribing again to every name it wants, held or
//     not. While the server is away the Handler keeps its state.
//   - TLS with the mesh root and a bearer token re-read from its file for
//     every stream, or plaintext for development.
//
// It follows Istio's ztunnel (src/xds/client.rs) in what it sends:
// wildcard subscriptions, ACK and NACK, resumption. Unlike Istio's
// ztunnel, it resumes with the versions it holds rather than empty ones,
// so that an unchanged resource is not sent again. Named subscriptions
// follow Envoy's delta subscription state
// (source/extensions/config_subscription/grpc/delta_subscription_state.cc)
// and cluster warming.
package xdsclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ambitmesh/ambit/internal/logkey"
)

// Defaults of Config.
const (
	DefaultInitialBackoff = 100 * time.Millisecond
	DefaultMaxBackoff     = 15 * time.Second
	// DefaultInitialFetchTimeout is Envoy's default initial_fetch_timeout.
	DefaultInitialFetchTimeout = 15 * time.Second
)

// maxRecvBytes bounds one response. istiod splits its pushes at 3 MiB,
// but upstream istiod sends a full push in one response; Istio's ztunnel
// accepts 200 MiB for that reason, and so do we.
const maxRecvBytes = 200 << 20

// maxNACKErrors bounds how many rejected resources one NACK lists.
const maxNACKErrors = 10

// Reasons a stream ended, the label values of Istio's ztunnel's
// istio_xds_connection_terminations_total.
const (
	ReasonConnectionError = "ConnectionError"
	ReasonError           = "Error"
	ReasonReconnect       = "Reconnect"
	ReasonComplete        = "Complete"
)

// Handler is what a client's user does with the resources.
type Handler interface {
	// Decode turns one resource of typ into the value the client holds
	// for it; an error leaves the resource out and names it in the NACK.
	Decode(typ string, r *discovery.Resource) (any, error)
	// Update gets what the client would hold after a response. With
	// complete (every type has had a first response) the handler makes
	// it its current state; otherwise it only checks it. An error refuses
	// the response: nothing of it applies, it is NACKed with the error,
	// and the handler keeps its last good state.
	Update(held Held, complete bool) error
}

// NamesFunc gives the names of a named type to subscribe to for a held
// set (Envoy: the EDS service names of the clusters held). Order and
// duplicates do not matter.
type NamesFunc func(Held) []string

// Held is the resources a client holds, by type and name.
type Held struct {
	items map[string]map[string]*item
}

// Values are the decoded resources of typ in name order, so that the
// same resources always come in the same order.
func (h Held) Values(typ string) []any {
	items := h.items[typ]
	names := make([]string, 0, len(items))
	for name := range items {
		names = append(names, name)
	}
	slices.Sort(names)
	out := make([]any, 0, len(names))
	for _, name := range names {
		out = append(out, items[name].value)
	}
	return out
}

// item is one held resource.
type item struct {
	version string
	value   any
}

// Config configures a Client.
type Config struct {
	// Address is the server's xDS endpoint, host:port
	// (istiod.istio-system.svc:15012).
	Address string
	// Types are the type URLs subscribed to, in the order of the first
	// requests (istiod pushes policies before the workloads that name
	// them).
	Types []string
	// Handler decodes and applies the resources.
	Handler Handler
	// Plaintext dials without TLS and sends no token: istiod's 15010,
	// for development and tests only.
	Plaintext bool
	// RootCAs verify istiod's serving certificate (required unless
	// Plaintext). ServerName is the name the certificate must carry; the
	// host of Address when empty.
	RootCAs    *x509.CertPool
	ServerName string
	// TokenFile holds the bearer token sent with every stream, re-read
	// each time; none is sent when empty. ClusterID is sent with it.
	TokenFile string
	ClusterID string
	// Optional are types among Types whose first response the held set
	// does not wait for to be complete (as Envoy's workload discovery
	// does not hold back its listeners): a server that does not serve
	// them still configures the client.
	Optional []string
	// Named are types among Types subscribed to by resource name rather
	// than as a wildcard, each with the function that gives the names
	// from the held set, as Envoy subscribes to EDS by the names its
	// clusters give (and to RDS by its listeners' route_config_name).
	Named map[string]NamesFunc
	// InitialFetchTimeout bounds how long the first complete set waits
	// for a named resource no answer comes for;
	// DefaultInitialFetchTimeout when zero.
	InitialFetchTimeout time.Duration
	// Node describes this client to the server.
	Node *core.Node
	// Log is the operational log; nothing is logged when nil.
	Log *slog.Logger
	// Registerer receives the client's metrics; none when nil.
	Registerer prometheus.Registerer
	// InitialBackoff and MaxBackoff bound the waits between connection
	// attempts; DefaultInitialBackoff and DefaultMaxBackoff when zero.
	InitialBackoff, MaxBackoff time.Duration
}

// Status is the client's connection as seen from outside, for the admin
// endpoint and tests.
type Status struct {
	// Connected is true while a stream is open and has delivered a
	// response.
	Connected bool `json:"connected"`
	// Streams counts the streams that delivered a response.
	Streams int `json:"streams"`
	// LastError is why the last stream ended or the last attempt failed.
	LastError string `json:"lastError,omitempty"`
	// NACKs counts the responses rejected; LastNACK is the last reason.
	NACKs    int    `json:"nacks"`
	LastNACK string `json:"lastNack,omitempty"`
}

// Client is a delta xDS client. Run drives it.
type Client struct {
	cfg      Config
	log      *slog.Logger
	dialOpts []grpc.DialOption
	metrics  Metrics

	// held is the resources of each type, by name, and complete whether
	// the handler has had a complete set. Only Run's goroutine touches
	// them.
	held     map[string]*typeState
	complete bool
	// timedOut is when the last initial fetch timeout was acted on.
	timedOut time.Time

	mu     sync.Mutex
	status Status
}

// typeState is what the client holds of one type.
type typeState struct {
	// received: a first response of the type has been applied.
	received bool
	items    map[string]*item

	// Of a named type: names gives the names; subs are the names
	// subscribed to, each with the time it was subscribed to while not
	// answered yet, zero once answered (the resource held, or its
	// removal received). Of every type: told are the names the current
	// stream's server was told of, nil before the stream's first request
	// of the type.
	names NamesFunc
	subs  map[string]time.Time
	told  map[string]bool
}

// Metrics are a client's collectors.
type Metrics struct {
	// Terminations counts streams that ended, by reason (Reason*).
	Terminations *prometheus.CounterVec
	// NACKs counts responses rejected, by type.
	NACKs *prometheus.CounterVec
	// Connected is 1 while a stream is open and has delivered a
	// response.
	Connected prometheus.Gauge
}

// New checks cfg and builds a client; Run connects.
func New(cfg Config) (*Client, error) {
	if cfg.Address == "" {
		return nil, errors.New("new xds client: no server address")
	}
	if cfg.Handler == nil {
		return nil, errors.New("new xds client: no handler")
	}
	if len(cfg.Types) == 0 {
		return nil, errors.New("new xds client: no types to subscribe to")
	}
	if !cfg.Plaintext && cfg.RootCAs == nil {
		return nil, fmt.Errorf("new xds client for %s: TLS needs the mesh root certificates", cfg.Address)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.InitialBackoff <= 0 {
		cfg.InitialBackoff = DefaultInitialBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.InitialFetchTimeout <= 0 {
		cfg.InitialFetchTimeout = DefaultInitialFetchTimeout
	}
	for typ, f := range cfg.Named {
		if !slices.Contains(cfg.Types, typ) || f == nil {
			return nil, fmt.Errorf("new xds client: named type %s: want one of the types subscribed to, with a names function", typ)
		}
	}
	c := &Client{
		cfg:  cfg,
		log:  cfg.Log.With(logkey.Component, "xds"),
		held: map[string]*typeState{},
		metrics: Metrics{
			Terminations: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "istio_xds_connection_terminations_total",
				Help: "Streams to the xDS server that ended, by reason.",
			}, []string{"reason"}),
			NACKs: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "ambit_xds_nacks_total",
				Help: "xDS responses rejected (NACK), by type.",
			}, []string{"type"}),
			Connected: prometheus.NewGauge(prometheus.GaugeOpts{
				Name: "ambit_xds_connected",
				Help: "1 while a stream to the xDS server is open and has delivered a response.",
			}),
		},
	}
	for _, typ := range cfg.Types {
		c.held[typ] = &typeState{items: map[string]*item{}, names: cfg.Named[typ]}
		if cfg.Named[typ] != nil {
			c.held[typ].subs = map[string]time.Time{}
		}
	}
	if cfg.Registerer != nil {
		for _, m := range []prometheus.Collector{c.metrics.Terminations, c.metrics.NACKs, c.metrics.Connected} {
			if err := cfg.Registerer.Register(m); err != nil {
				return nil, fmt.Errorf("new xds client: register metrics: %w", err)
			}
		}
	}
	c.dialOpts = []grpc.DialOption{grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvBytes))}
	if cfg.Plaintext {
		c.dialOpts = append(c.dialOpts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	} else {
		// An empty ServerName makes grpc-go verify the host of Address.
		c.dialOpts = append(c.dialOpts, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			RootCAs: cfg.RootCAs, ServerName: cfg.ServerName, MinVersion: tls.VersionTLS12,
		})))
		if cfg.TokenFile != "" {
			c.dialOpts = append(c.dialOpts, grpc.WithPerRPCCredentials(tokenFile{path: cfg.TokenFile, clusterID: cfg.ClusterID}))
		}
	}
	return c, nil
}

// Metrics are the client's collectors.
func (c *Client) Metrics() Metrics { return c.metrics }

// Status is the client's connection state now.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status
}

// Run keeps a stream to istiod until ctx is done, reconnecting with
// backoff whenever it ends. It returns once ctx is done and the stream
// is closed. Call it once.
func (c *Client) Run(ctx context.Context) {
	b := backoff{initial: c.cfg.InitialBackoff, max: c.cfg.MaxBackoff}
	for {
		healthy, reason, err := c.session(ctx)
		if ctx.Err() != nil {
			c.setDisconnected(nil)
			return
		}
		c.setDisconnected(err)
		c.metrics.Terminations.WithLabelValues(reason).Inc()
		if healthy {
			b.reset()
		}
		wait := b.next()
		c.log.Warn("xds disconnected", logkey.Addr, c.cfg.Address, logkey.Error, err.Error(), logkey.Backoff, wait.String())
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// session runs one stream until it fails or ctx is done. healthy reports
// whether the stream delivered a response; reason classifies its end.
func (c *Client) session(ctx context.Context) (healthy bool, reason string, err error) {
	cc, err := grpc.NewClient(c.cfg.Address, c.dialOpts...)
	if err != nil {
		return false, ReasonConnectionError, fmt.Errorf("dial xds %s: %w", c.cfg.Address, err)
	}
	defer cc.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		return false, ReasonConnectionError, fmt.Errorf("open xds stream to %s: %w", c.cfg.Address, err)
	}
	for _, ts := range c.held {
		ts.told = nil
	}
	// Responses come from a goroutine of their own once the first
	// requests are sent (below), so that the wait for them can end at an
	// initial fetch timeout.
	type received struct {
		resp *discovery.DeltaDiscoveryResponse
		err  error
	}
	recv := make(chan received)
	receiving := false
	// ended is the stream's status when Send reports only that the
	// stream ended (io.EOF): what receiving from it returns, received by
	// the one goroutine that receives (gRPC allows no two at once).
	ended := func(err error) error {
		if !errors.Is(err, io.EOF) {
			return err
		}
		var rerr error
		if !receiving {
			rerr = stream.RecvMsg(new(discovery.DeltaDiscoveryResponse))
		} else {
			// Responses still on their way are dropped: the stream has
			// ended.
			for rerr == nil {
				select {
				case r := <-recv:
					rerr = r.err
				case <-ctx.Done():
					return err
				}
			}
		}
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			return rerr
		}
		return err
	}
	// subscribe sends the subscription requests due, in the order of
	// Types: at first every type's initial request, later the changed
	// names of named types.
	subscribe := func() error {
		for _, typ := range c.cfg.Types {
			req := c.request(typ)
			if req == nil {
				continue
			}
			if err := stream.Send(req); err != nil {
				return fmt.Errorf("subscribe to %s at %s: %w", typ, c.cfg.Address, ended(err))
			}
			c.log.Debug("xds subscribed", logkey.TypeURL, typ, logkey.Count, len(req.InitialResourceVersions),
				logkey.Subscribe, len(req.ResourceNamesSubscribe), logkey.Unsubscribe, len(req.ResourceNamesUnsubscribe))
		}
		return nil
	}
	if err := subscribe(); err != nil {
		return false, endReason(false, err), err
	}

	recvDone := make(chan struct{})
	receiving = true
	go func() {
		defer close(recvDone)
		for {
			resp, err := stream.Recv()
			select {
			case recv <- received{resp, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	defer func() {
		cancel()
		<-recvDone
	}()
	for {
		var (
			timer   *time.Timer
			timeout <-chan time.Time
		)
		if d, ok := c.deadline(); ok {
			timer = time.NewTimer(time.Until(d))
			timeout = timer.C
		}
		var r received
		select {
		case <-ctx.Done():
			return healthy, ReasonComplete, ctx.Err()
		case <-timeout:
			c.fetchTimedOut()
			continue
		case r = <-recv:
		}
		if timer != nil {
			timer.Stop()
		}
		if r.err != nil {
			return healthy, endReason(healthy, r.err), fmt.Errorf("receive from xds %s: %w", c.cfg.Address, r.err)
		}
		if !healthy {
			healthy = true
			c.setConnected()
			c.log.Info("xds connected", logkey.Addr, c.cfg.Address)
		}
		ack := c.Handle(r.resp)
		// Subscriptions first, in requests of their own: Istio's istiod
		// takes a subscription changed in an ACK for an error.
		if err := subscribe(); err != nil {
			return healthy, endReason(healthy, err), err
		}
		if err := stream.Send(ack); err != nil {
			return healthy, endReason(healthy, err), fmt.Errorf("send to xds %s: %w", c.cfg.Address, ended(err))
		}
	}
}

// request is the subscription request of typ due on the current stream,
// or nil: a wildcard type's initial request; a named type's initial
// request (every name it wants, with initial_resource_versions) once it
// wants a name, and after that the names it wants or no longer wants.
func (c *Client) request(typ string) *discovery.DeltaDiscoveryRequest {
	ts := c.held[typ]
	if ts.names == nil {
		if ts.told != nil {
			return nil
		}
		ts.told = map[string]bool{}
		return &discovery.DeltaDiscoveryRequest{Node: c.cfg.Node, TypeUrl: typ, InitialResourceVersions: c.Versions(typ)}
	}
	if ts.told == nil {
		if len(ts.subs) == 0 {
			// A first request without names would subscribe to all.
			return nil
		}
		req := &discovery.DeltaDiscoveryRequest{Node: c.cfg.Node, TypeUrl: typ, InitialResourceVersions: c.Versions(typ)}
		ts.told = make(map[string]bool, len(ts.subs))
		for name := range ts.subs {
			ts.told[name] = true
			req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, name)
		}
		slices.Sort(req.ResourceNamesSubscribe)
		return req
	}
	req := &discovery.DeltaDiscoveryRequest{TypeUrl: typ}
	for name := range ts.subs {
		if !ts.told[name] {
			ts.told[name] = true
			req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, name)
		}
	}
	for name := range ts.told {
		if _, ok := ts.subs[name]; !ok {
			delete(ts.told, name)
			req.ResourceNamesUnsubscribe = append(req.ResourceNamesUnsubscribe, name)
		}
	}
	if len(req.ResourceNamesSubscribe)+len(req.ResourceNamesUnsubscribe) == 0 {
		return nil
	}
	slices.Sort(req.ResourceNamesSubscribe)
	slices.Sort(req.ResourceNamesUnsubscribe)
	return req
}

// deadline is when the initial fetch of the named resources not yet
// answered times out, while the held set has not been complete yet and
// that time has not been acted on.
func (c *Client) deadline() (time.Time, bool) {
	if c.complete {
		return time.Time{}, false
	}
	var d time.Time
	for _, ts := range c.held {
		for _, at := range ts.subs {
			if !at.IsZero() {
				if e := at.Add(c.cfg.InitialFetchTimeout); e.After(d) {
					d = e
				}
			}
		}
	}
	if d.IsZero() || !d.After(c.timedOut) {
		return time.Time{}, false
	}
	return d, true
}

// fetchTimedOut makes the held set complete without the named resources
// that no answer came for, if nothing else is missing, as Envoy ends a
// cluster's warming at its initial_fetch_timeout.
func (c *Client) fetchTimedOut() {
	now := time.Now()
	c.timedOut = now
	subs := map[string]map[string]time.Time{}
	var missing []string
	for typ, ts := range c.held {
		if ts.names == nil {
			continue
		}
		subs[typ] = ts.subs
		for name, at := range ts.subs {
			if !at.IsZero() {
				missing = append(missing, name)
			}
		}
	}
	if c.complete || !c.ready("", subs, now) {
		return
	}
	slices.Sort(missing)
	c.log.Warn("xds initial fetch timed out", logkey.Count, len(missing), logkey.Names, strings.Join(missing[:min(len(missing), maxNACKErrors)], ","))
	if err := c.cfg.Handler.Update(c.heldWith("", nil), true); err != nil {
		c.log.Warn("xds held set refused", logkey.Error, err.Error())
		return
	}
	c.complete = true
}

// ready reports whether the held set is complete once a response of typ
// has applied, with subs the named types' subscriptions then: every type
// but the optional ones has had a response, and every name subscribed to
// has been answered or waited for InitialFetchTimeout.
func (c *Client) ready(typ string, subs map[string]map[string]time.Time, now time.Time) bool {
	for _, t := range c.cfg.Types {
		ts := c.held[t]
		if ts.names != nil {
			for _, at := range subs[t] {
				if !at.IsZero() && now.Before(at.Add(c.cfg.InitialFetchTimeout)) {
					return false
				}
			}
			continue
		}
		if t != typ && !ts.received && !slices.Contains(c.cfg.Optional, t) {
			return false
		}
	}
	return true
}

// endReason classifies the end of a stream as Istio's ztunnel does: the
// server closing or going away is a reconnect, other statuses errors.
func endReason(healthy bool, err error) string {
	if errors.Is(err, io.EOF) {
		return ReasonComplete
	}
	if !healthy {
		return ReasonConnectionError
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.Canceled, codes.DeadlineExceeded, codes.Unknown:
		return ReasonReconnect
	}
	return ReasonError
}

// Versions are the names and versions held of typ, for resuming. Only
// the goroutine that runs the client (or calls Handle) may call it.
func (c *Client) Versions(typ string) map[string]string {
	ts := c.held[typ]
	if ts == nil || len(ts.items) == 0 {
		return nil
	}
	out := make(map[string]string, len(ts.items))
	for name, it := range ts.items {
		out[name] = it.version
	}
	return out
}

// Handle applies one response and returns the ACK or NACK for it. Run
// calls it for every response; tests call it without a stream.
func (c *Client) Handle(resp *discovery.DeltaDiscoveryResponse) *discovery.DeltaDiscoveryRequest {
	typ := resp.GetTypeUrl()
	req := &discovery.DeltaDiscoveryRequest{TypeUrl: typ, ResponseNonce: resp.GetNonce()}
	if err := c.apply(resp); err != nil {
		req.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		c.metrics.NACKs.WithLabelValues(typ).Inc()
		c.mu.Lock()
		c.status.NACKs++
		c.status.LastNACK = err.Error()
		c.mu.Unlock()
		c.log.Warn("xds NACK", logkey.TypeURL, typ, logkey.Nonce, resp.GetNonce(), logkey.Error, err.Error())
		return req
	}
	c.log.Debug("xds ACK", logkey.TypeURL, typ, logkey.Nonce, resp.GetNonce(),
		logkey.Count, len(resp.GetResources()), logkey.Removed, len(resp.GetRemovedResources()))
	return req
}

// apply decodes a response and, if the handler accepts the held set it
// leads to, makes the response's resources the held ones, leaving out
// resources that do not decode (then it returns their errors, for the
// NACK), and the named types' subscriptions follow. If the handler
// refuses the held set nothing changes.
func (c *Client) apply(resp *discovery.DeltaDiscoveryResponse) error {
	typ := resp.GetTypeUrl()
	ts := c.held[typ]
	if ts == nil {
		return fmt.Errorf("response of type %q, not one subscribed to (%s)", typ, strings.Join(c.cfg.Types, ", "))
	}
	// wanted: a name this client holds resources of typ under; of a
	// named type, only the names subscribed to (Envoy ignores others).
	wanted := func(name string) bool {
		if ts.names == nil {
			return true
		}
		_, ok := ts.subs[name]
		return ok
	}
	// changes maps each name the response touches to its new item, or to
	// nil for a removal.
	changes := map[string]*item{}
	for _, name := range resp.GetRemovedResources() {
		if wanted(name) {
			changes[name] = nil
		}
	}
	var errs []string
	ignored := 0
	for _, r := range resp.GetResources() {
		if r.GetName() == "" {
			errs = append(errs, "resource without a name")
			continue
		}
		if !wanted(r.GetName()) {
			ignored++
			continue
		}
		v, err := c.cfg.Handler.Decode(typ, r)
		if err != nil {
			errs = append(errs, r.GetName()+": "+err.Error())
			continue
		}
		changes[r.GetName()] = &item{version: r.GetVersion(), value: v}
	}
	if ignored > 0 {
		c.log.Debug("xds resources not subscribed to ignored", logkey.TypeURL, typ, logkey.Count, ignored)
	}

	// effective: the response brings a resource, removes a held one, or
	// answers a name subscribed to.
	effective := false
	for name, it := range changes {
		if it != nil || ts.items[name] != nil || !ts.subs[name].IsZero() {
			effective = true
			break
		}
	}
	if !effective && len(errs) > 0 {
		// Nothing good in it: nothing changes, and a first response
		// does not count as received.
		return rejection(errs)
	}
	now := time.Now()
	held := c.heldWith(typ, changes)
	subs := c.subscriptions(held, typ, changes, now)
	complete := c.complete || c.ready(typ, subs, now)
	if !c.complete || !ts.received || effective {
		// Unless this is an empty response (a resume with nothing new)
		// to a complete set, which the handler already holds.
		if err := c.cfg.Handler.Update(held, complete); err != nil {
			return err
		}
	}
	for name, it := range changes {
		if it == nil {
			delete(ts.items, name)
		} else {
			ts.items[name] = it
		}
	}
	for t, s := range subs {
		st := c.held[t]
		st.subs = s
		for name := range st.items {
			if _, ok := s[name]; !ok {
				delete(st.items, name)
			}
		}
	}
	ts.received = true
	c.complete = complete
	if len(errs) > 0 {
		return rejection(errs)
	}
	return nil
}

// subscriptions are the named types' subscriptions for held, the set a
// response of typ with changes leads to, and leave out of held the
// resources of names no longer subscribed to: a name held or answered
// by the response is answered, one subscribed to before keeps its
// state, a new one waits from now.
func (c *Client) subscriptions(held Held, typ string, changes map[string]*item, now time.Time) map[string]map[string]time.Time {
	var out map[string]map[string]time.Time
	for t, ts := range c.held {
		if ts.names == nil {
			continue
		}
		items := held.items[t]
		next := map[string]time.Time{}
		for _, name := range ts.names(held) {
			if name == "" {
				continue
			}
			at, ok := ts.subs[name]
			_, answered := changes[name]
			switch {
			case items[name] != nil || t == typ && answered:
				at = time.Time{}
			case !ok:
				at = now
			}
			next[name] = at
		}
		// Copied before the first deletion: items may be the held map.
		var kept map[string]*item
		for name := range items {
			if _, ok := next[name]; ok {
				continue
			}
			if kept == nil {
				kept = maps.Clone(items)
			}
			delete(kept, name)
		}
		if kept != nil {
			held.items[t] = kept
		}
		if out == nil {
			out = map[string]map[string]time.Time{}
		}
		out[t] = next
	}
	return out
}

// heldWith is the held set with changes applied to the resources of typ.
func (c *Client) heldWith(typ string, changes map[string]*item) Held {
	h := Held{items: make(map[string]map[string]*item, len(c.held))}
	for t, ts := range c.held {
		items := ts.items
		if t == typ && len(changes) > 0 {
			merged := make(map[string]*item, len(items)+len(changes))
			for name, it := range items {
				merged[name] = it
			}
			for name, it := range changes {
				if it == nil {
					delete(merged, name)
				} else {
					merged[name] = it
				}
			}
			items = merged
		}
		h.items[t] = items
	}
	return h
}

// rejection is the NACK reason for the rejected resources errs: the first
// few, and how many more there are.
func rejection(errs []string) error {
	msg := strings.Join(errs[:min(len(errs), maxNACKErrors)], "; ")
	if n := len(errs) - maxNACKErrors; n > 0 {
		msg += fmt.Sprintf("; and %d more rejected resources", n)
	}
	return errors.New(msg)
}

func (c *Client) setConnected() {
	c.metrics.Connected.Set(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.status.Connected = true
	c.status.Streams++
}

func (c *Client) setDisconnected(err error) {
	c.metrics.Connected.Set(0)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.status.Connected = false
	if err != nil {
		c.status.LastError = err.Error()
	}
}
