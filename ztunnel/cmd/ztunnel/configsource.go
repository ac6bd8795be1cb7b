package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambitmesh/ambit/api"
	"github.com/ambitmesh/ambit/ztunnel/config"
	"github.com/ambitmesh/ambit/ztunnel/xds"
)

// configSource is where workloads, services and policies come from:
// exactly one of istiod's workload discovery (xDS) and a static file
// (development).
type configSource struct {
	file  string
	store *config.Store

	client *xds.Client
	cancel context.CancelFunc
	done   chan struct{}
}

// newConfigSource builds the source the flags ask for; start runs it.
func newConfigSource(o options, store *config.Store, log *slog.Logger, reg prometheus.Registerer) (*configSource, error) {
	switch {
	case o.localConfig != "" && o.xdsAddress != "":
		return nil, errors.New("--local-config and --xds-address are both set: want exactly one config source")
	case o.localConfig != "":
		return &configSource{file: o.localConfig, store: store}, nil
	case o.xdsAddress == "":
		return nil, errors.New("no config source: set --xds-address (istiod) or, for development, --local-config")
	}
	node, err := nodeFromEnv(o.node, o.clusterID)
	if err != nil {
		return nil, err
	}
	cfg := xds.Config{
		Address: o.xdsAddress, ServerName: o.xdsServerName, Plaintext: o.xdsPlaintext, TokenFile: o.xdsToken,
		Node: node, Store: store, Log: log, Registerer: reg,
	}
	if !o.xdsPlaintext {
		pem, err := os.ReadFile(o.xdsRootCert)
		if err != nil {
			return nil, fmt.Errorf("read --xds-root-cert: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("read --xds-root-cert %s: no PEM certificate in it", o.xdsRootCert)
		}
	}
	c, err := xds.New(cfg)
	if err != nil {
		return nil, err
	}
	return &configSource{store: store, client: c}, nil
}

// nodeFromEnv describes this ztunnel to istiod from the downward-API
// environment Istio's ztunnel DaemonSet sets.
func nodeFromEnv(nodeName, clusterID string) (xds.Node, error) {
	n := xds.Node{
		NodeName:     nodeName,
		PodName:      os.Getenv("POD_NAME"),
		PodNamespace: os.Getenv("POD_NAMESPACE"),
		ClusterID:    clusterID,
		Domain:       os.Getenv("CLUSTER_DOMAIN"),
	}
	if v := os.Getenv("INSTANCE_IP"); v != "" {
		ip, err := netip.ParseAddr(v)
		if err != nil {
			return xds.Node{}, fmt.Errorf("parse $INSTANCE_IP: %w", err)
		}
		n.IPs = []netip.Addr{ip}
	}
	return n, nil
}

// clusterIDFromEnv is the cluster id Istio's ztunnel reads:
// ISTIO_META_CLUSTER_ID (what Istio's chart sets), else CLUSTER_ID (what
// Ambit's sets), else Istio's default.
func clusterIDFromEnv() string {
	for _, k := range []string{"ISTIO_META_CLUSTER_ID", "CLUSTER_ID"} {
		if v := os.Getenv(k); v != "" {
			return v
		}
	}
	return api.DefaultClusterID
}

// String names the source for the logs.
func (s *configSource) String() string {
	if s.client != nil {
		return "xds"
	}
	return s.file
}

// start loads the file, whose errors stop the start, or starts the xDS
// client, which keeps trying until stop.
func (s *configSource) start() error {
	if s.client == nil {
		return config.LoadFile(s.file, s.store)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan struct{})
	go func() {
		defer close(s.done)
		s.client.Run(ctx)
	}()
	return nil
}

// reload re-reads the file (SIGHUP); xDS needs no reload.
func (s *configSource) reload() (reloaded bool, err error) {
	if s.client != nil {
		return false, nil
	}
	return true, config.LoadFile(s.file, s.store)
}

// stop ends the xDS client and waits for it.
func (s *configSource) stop() {
	if s.cancel != nil {
		s.cancel()
		<-s.done
	}
}
