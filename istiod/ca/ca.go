package ca

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/istiod/cluster"
)

// Options configure the CA as istiod runs it. The server fills every
// field (istiod/server holds istiod's defaults); the zero values are those
// of ServiceOptions.
type Options struct {
	// Namespace holds the CA Secrets (cacerts, istio-ca-secret).
	Namespace   string
	TrustDomain string
	// ClusterID is this istiod's cluster, the one whose apiserver reviews
	// callers' tokens.
	ClusterID string
	// NodeAgents, DefaultTTL and MaxTTL are as in ServiceOptions.
	NodeAgents         []string
	DefaultTTL, MaxTTL time.Duration
	Log                *slog.Logger
	Registerer         prometheus.Registerer
}

// CA is the certificate authority as one of istiod's subsystems: New
// builds it; RegisterInformers puts what it reads on istiod's informers
// (pods, for the node agents' rule; namespaces and the root ConfigMaps,
// for the publisher); Load reads or creates the signing key and builds the
// service; Register adds the service to a gRPC server, to be served once
// the informers have synced (the node agents' rule reads pods); Run
// publishes the root certificate until its context ends.
type CA struct {
	opts      Options
	kube      kubernetes.Interface
	authn     *Authenticator
	pods      corelisters.PodLister
	pub       *RootCertPublisher
	authority *Authority
	svc       *Service
}

// New builds the CA; nothing reaches the cluster before Load.
func New(kube kubernetes.Interface, opts Options) (*CA, error) {
	if kube == nil {
		return nil, errors.New("new certificate authority: no Kubernetes client")
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	return &CA{
		opts:  opts,
		kube:  kube,
		authn: NewAuthenticator(kube, AuthenticatorOptions{ClusterID: opts.ClusterID}),
	}, nil
}

// RegisterInformers registers the pod, namespace and root ConfigMap
// informers on the cluster's factory and the publisher's handlers on
// them. The ConfigMap informer is the factory's, restricted to
// RootCertConfigMap by a field selector: a cluster's ConfigMaps are many
// and large, and istiod reads no others.
func (c *CA) RegisterInformers(cl *cluster.Cluster) error {
	core := cl.KubeInformers.Core().V1()
	c.pods = core.Pods().Lister()
	cl.KubeInformers.InformerFor(&corev1.ConfigMap{}, func(k kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		return coreinformers.NewFilteredConfigMapInformer(k, metav1.NamespaceAll, resync,
			cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
			func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + RootCertConfigMap })
	})
	pub, err := NewRootCertPublisher(c.kube, core.Namespaces(), core.ConfigMaps(), c.opts.Log.With("component", "rootcert"))
	if err != nil {
		return err
	}
	c.pub = pub
	return nil
}

// Load loads the signing key from the CA Secrets, or creates a
// self-signed root and stores it (LoadOrCreate), and builds the service.
func (c *CA) Load(ctx context.Context) error {
	if c.pods == nil {
		return errors.New("load certificate authority: no informers registered")
	}
	a, src, err := LoadOrCreate(ctx, c.kube, c.opts.Namespace, c.opts.TrustDomain)
	if err != nil {
		return err
	}
	c.opts.Log.Info("certificate authority loaded", "source", src, logkey.Namespace, c.opts.Namespace)
	svc, err := NewService(ServiceOptions{
		Authority: a, Kube: c.kube, Authenticator: c.authn, TrustDomain: c.opts.TrustDomain, Pods: c.pods,
		NodeAgents: c.opts.NodeAgents, DefaultTTL: c.opts.DefaultTTL, MaxTTL: c.opts.MaxTTL,
		Log: c.opts.Log, Registerer: c.opts.Registerer,
	})
	if err != nil {
		return fmt.Errorf("load certificate authority: %w", err)
	}
	c.authority, c.svc = a, svc
	return nil
}

// Authority is the signing authority once Load has returned, nil before.
func (c *CA) Authority() *Authority { return c.authority }

// Authenticator authenticates callers by their service account tokens,
// for the other services on the CA's port (xDS).
func (c *CA) Authenticator() *Authenticator { return c.authn }

// Register adds IstioCertificateService to a gRPC server; after Load.
func (c *CA) Register(g *grpc.Server) { c.svc.Register(g) }

// Run publishes the root certificate to every namespace until ctx ends;
// after Load.
func (c *CA) Run(ctx context.Context) { c.pub.Run(ctx, c.authority.RootPEM()) }
