// Package xds is the node tunnel's workload-discovery client. It keeps one
// delta xDS stream (DeltaAggregatedResources) open to istiod, subscribed
// wildcard to istio.workload.Address and istio.security.Authorization,
// holds the resources of each type, and turns every response into a whole
// config.State that replaces the store's.
//
// Behaviour:
//   - Every resource of a response is decoded and translated into the
//     model; those that fail are left out (a resource held under the same
//     name stays as it was) and the response is NACKed with error_detail
//     naming them, while the good ones and the removals apply, as Istio's
//     ztunnel does: one bad workload does not hold back the rest of a
//     push. The state they lead to is validated as a whole; if it is not
//     valid, nothing of the response applies and the store keeps the last
//     good state. Nothing is asked for again: istiod sends the next
//     change, and a resumed stream gets the left-out resources again, as
//     their versions are not among those the client holds.
//   - The store is loaded (Store.Loaded, which gates readiness) only once
//     the first response of each type has been applied, so a ztunnel never
//     reports ready with workloads but no policies or the reverse.
//   - When the stream ends the client reconnects with exponential backoff
//     and jitter (100 ms growing to 15 s, back to the start after a stream
//     that delivered responses), sending initial_resource_versions of what
//     it holds, so istiod sends only what changed and what was removed
//     meanwhile. While istiod is away the store keeps its state and the
//     data plane keeps working with it.
//   - TLS to istiod's 15012 with the mesh root and a bearer token re-read
//     from its file for every stream, or plaintext to 15010 for development.
//
// It follows Istio's ztunnel (src/xds/client.rs) in what it sends: the
// node id and metadata, wildcard subscriptions, ACK and NACK, resumption.
// Unlike Istio's ztunnel, it resumes with the versions it holds rather
// than empty ones, so that an unchanged resource is not sent again.
package xds

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

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

// Type URLs of the workload-discovery resources.
const (
	AddressType       = "type.googleapis.com/istio.workload.Address"
	AuthorizationType = "type.googleapis.com/istio.security.Authorization"
)

// subscribed are the types the client asks for, in the order of its
// first requests: policies before the workloads that name them, as istiod
// pushes them.
var subscribed = []string{AuthorizationType, AddressType}

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
	reasonConnectionError = "ConnectionError"
	reasonError           = "Error"
	reasonReconnect       = "Reconnect"
	reasonComplete        = "Complete"
)

// Config configures a Client.
type Config struct {
	// Address is istiod's xDS endpoint, host:port
	// (istiod.istio-system.svc:15012).
	Address string
	// Plaintext dials without TLS and sends no token: istiod's 15010,
	// for development and tests only.
	Plaintext bool
	// RootCAs verify istiod's serving certificate (required unless
	// Plaintext). ServerName is the name the certificate must carry; the
	// host of Address when empty.
	RootCAs    *x509.CertPool
	ServerName string
	// TokenFile holds the bearer token sent with every stream, re-read
	// each time; none is sent when empty.
	TokenFile string
	// Node describes this ztunnel to istiod.
	Node Node
	// Store receives the state.
	Store *config.Store
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

// Client is a delta xDS client for the workload-discovery types. Run
// drives it.
type Client struct {
	cfg      Config
	log      *slog.Logger
	dialOpts []grpc.DialOption
	metrics  clientMetrics

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

type clientMetrics struct {
	terminations *prometheus.CounterVec
	nacks        *prometheus.CounterVec
	connected    prometheus.Gauge
}

// New checks cfg and builds a client; Run connects.
func New(cfg Config) (*Client, error) {
	if cfg.Address == "" {
		return nil, errors.New("new xds client: no istiod address")
	}
	if cfg.Store == nil {
		return nil, errors.New("new xds client: no config store")
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
		metrics: clientMetrics{
			terminations: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "istio_xds_connection_terminations_total",
				Help: "Streams to the xDS server that ended, by reason.",
			}, []string{"reason"}),
			nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "ambit_xds_nacks_total",
				Help: "xDS responses rejected (NACK), by type.",
			}, []string{"type"}),
			connected: prometheus.NewGauge(prometheus.GaugeOpts{
				Name: "ambit_xds_connected",
				Help: "1 while a stream to the xDS server is open and has delivered a response.",
			}),
		},
	}
	for _, typ := range subscribed {
		c.held[typ] = &typeState{items: map[string]*item{}}
	}
	if cfg.Registerer != nil {
		for _, m := range []prometheus.Collector{c.metrics.terminations, c.metrics.nacks, c.metrics.connected} {
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
			c.dialOpts = append(c.dialOpts, grpc.WithPerRPCCredentials(tokenFile{path: cfg.TokenFile, clusterID: cfg.Node.cluster()}))
		}
	}
	return c, nil
}

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
		c.metrics.terminations.WithLabelValues(reason).Inc()
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
		return false, reasonConnectionError, fmt.Errorf("dial xds %s: %w", c.cfg.Address, err)
	}
	defer cc.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		return false, reasonConnectionError, fmt.Errorf("open xds stream to %s: %w", c.cfg.Address, err)
	}
	node := c.cfg.Node.proto()
	for _, typ := range subscribed {
		req := &discovery.DeltaDiscoveryRequest{
			Node:                    node,
			TypeUrl:                 typ,
			InitialResourceVersions: c.versions(typ),
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
		req := c.handle(resp)
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
		return reasonComplete
	}
	if !healthy {
		return reasonConnectionError
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.Canceled, codes.DeadlineExceeded, codes.Unknown:
		return reasonReconnect
	}
	return reasonError
}

// versions are the names and versions held of typ, for resuming.
func (c *Client) versions(typ string) map[string]string {
	ts := c.held[typ]
	if len(ts.items) == 0 {
		return nil
	}
	out := make(map[string]string, len(ts.items))
	for name, it := range ts.items {
		out[name] = it.version
	}
	return out
}

// handle applies one response and returns the ACK or NACK for it.
func (c *Client) handle(resp *discovery.DeltaDiscoveryResponse) *discovery.DeltaDiscoveryRequest {
	typ := resp.GetTypeUrl()
	req := &discovery.DeltaDiscoveryRequest{TypeUrl: typ, ResponseNonce: resp.GetNonce()}
	if err := c.apply(resp); err != nil {
		req.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		c.metrics.nacks.WithLabelValues(typ).Inc()
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

// apply translates a response and, if the state it leads to is valid,
// makes that state the store's and the response's resources the held
// ones, leaving out resources that do not translate (then it returns
// their errors, for the NACK). If the state is not valid nothing changes.
func (c *Client) apply(resp *discovery.DeltaDiscoveryResponse) error {
	typ := resp.GetTypeUrl()
	ts := c.held[typ]
	if ts == nil {
		return fmt.Errorf("response of type %q, not one subscribed to (%s)", typ, strings.Join(subscribed, ", "))
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
		it, err := translate(typ, r)
		if err != nil {
			errs = append(errs, r.GetName()+": "+err.Error())
			continue
		}
		if it.policy != nil {
			if nu := it.policy.NotUnderstood(); len(nu) > 0 {
				c.log.Warn("authorization policy enforced stricter than sent: parts not understood",
					logkey.Policy, r.GetName(), logkey.Action, string(it.policy.Action), logkey.Error, strings.Join(nu, "; "))
			}
		}
		changes[r.GetName()] = it
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
	loaded := true
	for _, other := range subscribed {
		if other != typ && !c.held[other].received {
			loaded = false
		}
	}
	switch {
	case loaded && ts.received && !effective:
		// An empty response (a resume with nothing new): the store
		// already holds this state.
	case loaded:
		if err := c.cfg.Store.Replace(c.state(typ, changes)); err != nil {
			return err
		}
	default:
		// The other type has not arrived yet: check now, replace the
		// store's state once both are here.
		st := c.state(typ, changes)
		if err := st.Validate(); err != nil {
			return fmt.Errorf("validate config: %w", err)
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

// state is the whole model: the held resources with changes applied to
// those of typ. Entries are in name order, so that the same resources
// always make the same state.
func (c *Client) state(typ string, changes map[string]*item) config.State {
	var st config.State
	for _, t := range subscribed {
		items := c.held[t].items
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
		names := make([]string, 0, len(items))
		for name := range items {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			items[name].addTo(&st)
		}
	}
	return st
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
	c.metrics.connected.Set(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.status.Connected = true
	c.status.Streams++
}

func (c *Client) setDisconnected(err error) {
	c.metrics.connected.Set(0)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.status.Connected = false
	if err != nil {
		c.status.LastError = err.Error()
	}
}
