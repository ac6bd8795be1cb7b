// Package xds is the node tunnel's workload-discovery client: a delta xDS
// client (internal/xdsclient) subscribed wildcard to
// istio.workload.Address and istio.security.Authorization, which
// translates each resource into the model and turns the resources it
// holds into a whole config.State that replaces the store's.
//
// Behaviour (the rest is xdsclient's: NACKs naming the bad resources
// while the good ones apply, the last good state kept, backoff and
// resumption, TLS and the token):
//   - A resource that does not translate is left out and named in the
//     NACK. The state the held resources lead to is validated as a whole
//     by the store; if it is not valid, nothing of the response applies
//     and the store keeps the last good state.
//   - The store is loaded (Store.Loaded, which gates readiness) only once
//     the first response of each type has been applied, so a ztunnel never
//     reports ready with workloads but no policies or the reverse.
//   - While istiod is away the store keeps its state and the data plane
//     keeps working with it.
//
// It follows Istio's ztunnel (src/xds/client.rs) in what it sends: the
// node id and metadata (node.go), wildcard subscriptions, ACK and NACK,
// resumption.
package xds

import (
	"crypto/x509"
	"fmt"
	"log/slog"
	"strings"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/internal/xdsclient"
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
	DefaultInitialBackoff = xdsclient.DefaultInitialBackoff
	DefaultMaxBackoff     = xdsclient.DefaultMaxBackoff
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
type Status = xdsclient.Status

// Client is the workload-discovery client. Run drives it.
type Client struct {
	*xdsclient.Client
	store *config.Store
	log   *slog.Logger
}

// New checks cfg and builds a client; Run connects.
func New(cfg Config) (*Client, error) {
	if cfg.Address == "" {
		return nil, fmt.Errorf("new xds client: no istiod address")
	}
	if cfg.Store == nil {
		return nil, fmt.Errorf("new xds client: no config store")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	c := &Client{store: cfg.Store, log: cfg.Log.With(logkey.Component, "xds")}
	dc, err := xdsclient.New(xdsclient.Config{
		Address:        cfg.Address,
		Types:          subscribed,
		Handler:        c,
		Plaintext:      cfg.Plaintext,
		RootCAs:        cfg.RootCAs,
		ServerName:     cfg.ServerName,
		TokenFile:      cfg.TokenFile,
		ClusterID:      cfg.Node.cluster(),
		Node:           cfg.Node.proto(),
		Log:            cfg.Log,
		Registerer:     cfg.Registerer,
		InitialBackoff: cfg.InitialBackoff,
		MaxBackoff:     cfg.MaxBackoff,
	})
	if err != nil {
		return nil, err
	}
	c.Client = dc
	return c, nil
}

var _ xdsclient.Handler = (*Client)(nil)

// Decode translates one resource into the model.
func (c *Client) Decode(typ string, r *discovery.Resource) (any, error) {
	it, err := translate(typ, r)
	if err != nil {
		return nil, err
	}
	if it.policy != nil {
		if nu := it.policy.NotUnderstood(); len(nu) > 0 {
			c.log.Warn("authorization policy enforced stricter than sent: parts not understood",
				logkey.Policy, r.GetName(), logkey.Action, string(it.policy.Action), logkey.Error, strings.Join(nu, "; "))
		}
	}
	return it, nil
}

// Update makes the held resources the store's state once both types have
// arrived, and only validates them before.
func (c *Client) Update(held xdsclient.Held, complete bool) error {
	var st config.State
	for _, typ := range subscribed {
		for _, v := range held.Values(typ) {
			v.(*item).addTo(&st)
		}
	}
	if complete {
		return c.store.Replace(st)
	}
	if err := st.Validate(); err != nil {
		return fmt.Errorf("validate config: %w", err)
	}
	return nil
}

// handle and versions are the generic client's, for the tests.
func (c *Client) handle(resp *discovery.DeltaDiscoveryResponse) *discovery.DeltaDiscoveryRequest {
	return c.Handle(resp)
}

func (c *Client) versions(typ string) map[string]string { return c.Versions(typ) }
