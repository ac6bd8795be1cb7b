// Package xdsclient is a delta xDS client (DeltaAggregatedResources) for
// any set of resource types: ztunnel's workload discovery is built on it,
// and so will be the waypoint's Envoy xDS. It keeps one stream open to
// the server, subscribed wildcard to its types, holds the resources of
// each type with their versions, and hands the whole held set to its
// Handler after every response.
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
//   - The held set is complete only once the first response of each type
//     (but the Optional ones, which a server may not serve)
//     has been applied; before that the Handler only checks it, so that a
//     user never starts with one type but not the others.
//   - When the stream ends the client reconnects with exponential backoff
//     and jitter (100 ms growing to 15 s, back to the start after a stream
//     that delivered responses), sending initial_resource_versions of what
//     it holds, so the server sends only what changed and what was removed
//     meanwhile. While the server is away the Handler keeps its state.
//   - TLS with the mesh root and a bearer token re-read from its file for
//     every stream, or plaintext for development.
//
// It follows Istio's ztunnel (src/xds/client.rs) in what it sends:
// wildcard subscriptions, ACK and NACK, resumption. Unlike Istio's
// ztunnel, it resumes with the versions it holds rather than empty ones,
// so that an unchanged resource is not sent again.
package xdsclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
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

	// held is the resources of each type, by name. Only Run's goroutine
	// touches it.
	held map[string]*typeState

	mu     sync.Mutex
	status Status
}

// typeState is what the client holds of one type.
type typeState struct {
	// received: a first response of the type has been applied.
	received bool
	items    map[string]*item
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
		c.held[typ] = &typeState{items: map[string]*item{}}
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
	for _, typ := range c.cfg.Types {
		req := &discovery.DeltaDiscoveryRequest{
			Node:                    c.cfg.Node,
			TypeUrl:                 typ,
			InitialResourceVersions: c.Versions(typ),
		}
		if err := stream.Send(req); err != nil {
			return false, endReason(false, err), fmt.Errorf("subscribe to %s at %s: %w", typ, c.cfg.Address, sendErr(stream, err))
		}
		c.log.Debug("xds subscribed", logkey.TypeURL, typ, logkey.Count, len(req.InitialResourceVersions))
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return healthy, endReason(healthy, err), fmt.Errorf("receive from xds %s: %w", c.cfg.Address, err)
		}
		if !healthy {
			healthy = true
			c.setConnected()
			c.log.Info("xds connected", logkey.Addr, c.cfg.Address)
		}
		req := c.Handle(resp)
		if err := stream.Send(req); err != nil {
			return healthy, endReason(healthy, err), fmt.Errorf("send to xds %s: %w", c.cfg.Address, sendErr(stream, err))
		}
	}
}

// sendErr is the stream's status when Send reports only that it ended.
func sendErr(stream grpc.ClientStream, err error) error {
	if !errors.Is(err, io.EOF) {
		return err
	}
	if rerr := stream.RecvMsg(new(discovery.DeltaDiscoveryResponse)); rerr != nil && !errors.Is(rerr, io.EOF) {
		return rerr
	}
	return err
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
// NACK). If the handler refuses the held set nothing changes.
func (c *Client) apply(resp *discovery.DeltaDiscoveryResponse) error {
	typ := resp.GetTypeUrl()
	ts := c.held[typ]
	if ts == nil {
		return fmt.Errorf("response of type %q, not one subscribed to (%s)", typ, strings.Join(c.cfg.Types, ", "))
	}
	// changes maps each name the response touches to its new item, or to
	// nil for a removal.
	changes := map[string]*item{}
	for _, name := range resp.GetRemovedResources() {
		changes[name] = nil
	}
	var errs []string
	for _, r := range resp.GetResources() {
		if r.GetName() == "" {
			errs = append(errs, "resource without a name")
			continue
		}
		v, err := c.cfg.Handler.Decode(typ, r)
		if err != nil {
			errs = append(errs, r.GetName()+": "+err.Error())
			continue
		}
		changes[r.GetName()] = &item{version: r.GetVersion(), value: v}
	}

	// effective: the response brings a resource or removes a held one.
	effective := false
	for name, it := range changes {
		if it != nil || ts.items[name] != nil {
			effective = true
			break
		}
	}
	if !effective && len(errs) > 0 {
		// Nothing good in it: nothing changes, and a first response
		// does not count as received.
		return rejection(errs)
	}
	complete := true
	for _, other := range c.cfg.Types {
		if other != typ && !c.held[other].received && !slices.Contains(c.cfg.Optional, other) {
			complete = false
		}
	}
	if !complete || !ts.received || effective {
		// Unless this is an empty response (a resume with nothing new)
		// to a complete set, which the handler already holds.
		if err := c.cfg.Handler.Update(c.heldWith(typ, changes), complete); err != nil {
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
	ts.received = true
	if len(errs) > 0 {
		return rejection(errs)
	}
	return nil
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
