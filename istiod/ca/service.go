package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/internal/mesh"
)

// Audience a caller's token must be bound to.
const Audience = "istio-ca"

// ImpersonatedIdentity is the request metadata key with which a trusted
// node agent (ztunnel) asks for a workload's certificate.
const ImpersonatedIdentity = "ImpersonatedIdentity"

// extraNodeName is set by the apiserver in TokenReview results of tokens
// bound to a pod: the node the pod runs on.
const extraNodeName = "authentication.kubernetes.io/node-name"

// Errors a refusal wraps, for callers and tests that branch.
var (
	ErrUnauthenticated = errors.New("caller not authenticated")
	ErrNotAuthorized   = errors.New("identity not authorised for caller")
	ErrBadCSR          = errors.New("bad certificate signing request")
)

// ServiceOptions configure the IstioCertificateService.
type ServiceOptions struct {
	Authority   *Authority
	Kube        kubernetes.Interface
	TrustDomain string
	// Pods lists pods, to check that an impersonated identity runs on the
	// caller's node.
	Pods corelisters.PodLister
	// NodeAgents are the service accounts ("namespace/name") allowed to
	// ask for the identities of pods on their own node; Istio's default
	// is istio-system/ztunnel.
	NodeAgents []string
	// DefaultTTL of issued certificates (24h when zero) and MaxTTL a caller
	// may ask for (DefaultTTL when zero).
	DefaultTTL, MaxTTL time.Duration
	// Authenticator authenticates callers; one reviewing tokens with Kube
	// as the apiserver of ClusterID, with the default cache and failure
	// budgets, when nil.
	Authenticator *Authenticator
	// ClusterID is this istiod's cluster (api.DefaultClusterID when
	// empty), for the Authenticator made when none is given.
	ClusterID  string
	Log        *slog.Logger
	Registerer prometheus.Registerer
}

// Service implements istio.v1.auth.IstioCertificateService.
type Service struct {
	pb.UnimplementedIstioCertificateServiceServer
	opts    ServiceOptions
	authn   *Authenticator
	signed  prometheus.Counter
	refused *prometheus.CounterVec
}

var _ pb.IstioCertificateServiceServer = (*Service)(nil)

// NewService checks the options and builds the service.
func NewService(opts ServiceOptions) (*Service, error) {
	if opts.Authority == nil || opts.Kube == nil || opts.Pods == nil {
		return nil, errors.New("new certificate service: want an authority, a Kubernetes client and a pod lister")
	}
	if opts.TrustDomain == "" {
		opts.TrustDomain = mesh.DefaultTrustDomain
	}
	if opts.DefaultTTL == 0 {
		opts.DefaultTTL = 24 * time.Hour
	}
	if opts.MaxTTL == 0 {
		opts.MaxTTL = opts.DefaultTTL
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Authenticator == nil {
		opts.Authenticator = NewAuthenticator(opts.Kube, AuthenticatorOptions{ClusterID: opts.ClusterID})
	}
	s := &Service{
		opts:    opts,
		authn:   opts.Authenticator,
		signed:  prometheus.NewCounter(prometheus.CounterOpts{Name: "citadel_server_success_cert_issuance_count", Help: "Certificates issued."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ambit_ca_refused_total", Help: "Certificate requests refused, by reason."}, []string{"reason"}),
	}
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(s.signed, s.refused)
	}
	return s, nil
}

// Register adds the service to a gRPC server.
func (s *Service) Register(g *grpc.Server) { pb.RegisterIstioCertificateServiceServer(g, s) }

// CreateCertificate authenticates the caller, decides which identity it
// may have, checks the CSR and signs it.
func (s *Service) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	chain, reason, err := s.create(ctx, req)
	if err != nil {
		s.refused.WithLabelValues(reason).Inc()
		s.opts.Log.Warn("certificate refused", logkey.Reason, reason, logkey.Error, err)
		code := codes.InvalidArgument
		switch {
		case errors.Is(err, ErrUnauthenticated), errors.Is(err, ErrTooManyFailures):
			code = Code(err)
		case errors.Is(err, ErrNotAuthorized):
			code = codes.PermissionDenied
		}
		return nil, status.Error(code, err.Error())
	}
	s.signed.Inc()
	return &pb.IstioCertificateResponse{CertChain: chain}, nil
}

func (s *Service) create(ctx context.Context, req *pb.IstioCertificateRequest) (_ []string, reason string, _ error) {
	caller, err := s.authn.Authenticate(ctx)
	if errors.Is(err, ErrTooManyFailures) {
		return nil, "too_many_failures", err
	}
	if err != nil {
		return nil, "unauthenticated", err
	}
	identity, err := s.authorise(caller, req)
	if err != nil {
		return nil, "not_authorized", err
	}
	csr, err := s.checkCSR(req.GetCsr(), identity)
	if err != nil {
		return nil, "bad_csr", err
	}
	ttl := s.opts.DefaultTTL
	if d := time.Duration(req.GetValidityDuration()) * time.Second; d > 0 {
		ttl = min(d, s.opts.MaxTTL)
	}
	chain, err := s.opts.Authority.SignCSR(csr, identity, ttl)
	if err != nil {
		return nil, "sign", err
	}
	return chain, "", nil
}

// authorise returns the identity the caller gets: its own, or, for a node
// agent that asks to impersonate, a workload's that runs on its node.
func (s *Service) authorise(c Caller, req *pb.IstioCertificateRequest) (*url.URL, error) {
	own := s.spiffe(c.Namespace, c.Name)
	imp := req.GetMetadata().GetFields()[ImpersonatedIdentity].GetStringValue()
	if imp == "" || imp == own.String() {
		return own, nil
	}
	if !slices.Contains(s.opts.NodeAgents, c.Namespace+"/"+c.Name) {
		return nil, fmt.Errorf("%w: %s/%s asks for %s but is not a node agent", ErrNotAuthorized, c.Namespace, c.Name, imp)
	}
	if c.Node == "" {
		return nil, fmt.Errorf("%w: node agent %s/%s has a token not bound to a pod, so its node is unknown", ErrNotAuthorized, c.Namespace, c.Name)
	}
	ns, sa, err := s.parseSPIFFE(imp)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotAuthorized, err)
	}
	pods, err := s.opts.Pods.Pods(ns).List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("%w: list pods in %s: %v", ErrNotAuthorized, ns, err)
	}
	for _, p := range pods {
		if p.Spec.NodeName == c.Node && serviceAccount(p) == sa && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			return s.spiffe(ns, sa), nil
		}
	}
	return nil, fmt.Errorf("%w: no pod with service account %s/%s runs on node %s of node agent %s/%s", ErrNotAuthorized, ns, sa, c.Node, c.Namespace, c.Name)
}

func serviceAccount(p *corev1.Pod) string {
	if p.Spec.ServiceAccountName == "" {
		return "default"
	}
	return p.Spec.ServiceAccountName
}

func (s *Service) spiffe(ns, sa string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: s.opts.TrustDomain, Path: "/ns/" + ns + "/sa/" + sa}
}

func (s *Service) parseSPIFFE(id string) (ns, sa string, err error) {
	u, err := url.Parse(id)
	if err != nil || u.Scheme != "spiffe" || u.Host != s.opts.TrustDomain {
		return "", "", fmt.Errorf("identity %q: want spiffe://%s/ns/<namespace>/sa/<name>", id, s.opts.TrustDomain)
	}
	p := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(p) != 4 || p[0] != "ns" || p[2] != "sa" || p[1] == "" || p[3] == "" {
		return "", "", fmt.Errorf("identity %q: want spiffe://%s/ns/<namespace>/sa/<name>", id, s.opts.TrustDomain)
	}
	return p[1], p[3], nil
}

// checkCSR parses and verifies the CSR: its signature, an RSA key of at
// least 2048 bits or an ECDSA P-256/P-384 key, and exactly the authorised
// identity as its SAN.
func (s *Service) checkCSR(in string, identity *url.URL) (*x509.CertificateRequest, error) {
	blk, _ := pem.Decode([]byte(in))
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("%w: want a PEM CERTIFICATE REQUEST", ErrBadCSR)
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: parse: %v", ErrBadCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ErrBadCSR, err)
	}
	switch k := csr.PublicKey.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("%w: RSA key of %d bits, want at least 2048", ErrBadCSR, k.N.BitLen())
		}
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("%w: ECDSA curve %s, want P-256 or P-384", ErrBadCSR, k.Curve.Params().Name)
		}
	default:
		return nil, fmt.Errorf("%w: key type %T, want RSA or ECDSA", ErrBadCSR, k)
	}
	if len(csr.DNSNames)+len(csr.EmailAddresses)+len(csr.IPAddresses) > 0 || len(csr.URIs) != 1 || csr.URIs[0].String() != identity.String() {
		return nil, fmt.Errorf("%w: SANs %v %v %v %v, want exactly %s", ErrBadCSR, csr.URIs, csr.DNSNames, csr.IPAddresses, csr.EmailAddresses, identity)
	}
	return csr, nil
}
