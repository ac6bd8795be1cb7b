// Package caclient is ztunnel's client of istiod's certificate authority,
// Istio's IstioCertificateService/CreateCertificate over gRPC and TLS. For
// each workload identity it makes a fresh ECDSA P-256 key and a CSR whose
// only SAN is the SPIFFE URI, asks for it as the node agent on the
// workload's behalf (the ImpersonatedIdentity request metadata, as Istio's
// ztunnel does), authenticates with the node agent's service account
// token and names its cluster (the clusterid header: without it Istio's
// istiod refuses to impersonate, having no node authorizer for the empty
// cluster), and accepts the answer only if the chain verifies to the mesh
// roots and the leaf names the identity asked for and carries the key
// just made. It is an identity.Source; identity.Cache decides when to ask.
package caclient

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"

	"github.com/ambitmesh/ambit/api"
	"github.com/ambitmesh/ambit/internal/identity"
)

// ImpersonatedIdentity is the key of the request metadata (the request's
// metadata Struct, not a gRPC header) that names the workload a node
// agent asks for; Istio's name.
const ImpersonatedIdentity = "ImpersonatedIdentity"

// Reasons a certificate is refused, for callers that branch with
// errors.Is. Refusals by istiod also keep their gRPC status, so
// status.Code works on the returned error.
var (
	// ErrUnauthenticated: istiod did not accept the token.
	ErrUnauthenticated = errors.New("ca did not authenticate the caller")
	// ErrPermissionDenied: istiod will not give this caller the
	// identity, e.g. no pod with it runs on this node.
	ErrPermissionDenied = errors.New("ca refused the identity to the caller")
	// ErrUnavailable: istiod could not be reached, or the TLS handshake
	// with it failed (its certificate is not signed by the mesh roots or
	// does not name the server name).
	ErrUnavailable = errors.New("ca unreachable")
	// ErrBadChain: the answer is not a usable certificate chain.
	ErrBadChain = errors.New("ca returned an unusable certificate chain")
	// ErrUntrustedChain: the chain does not verify to the mesh roots.
	ErrUntrustedChain = errors.New("issued chain does not verify to the mesh roots")
	// ErrWrongIdentity: the leaf names another identity than the one
	// asked for.
	ErrWrongIdentity = errors.New("issued certificate is for another identity")
)

// Config says where istiod's CA is and how to talk to it.
type Config struct {
	// Address is istiod's CA as host:port, e.g.
	// istiod.istio-system.svc:15012.
	Address string
	// ServerName is the name istiod's serving certificate must carry;
	// empty means the host of Address.
	ServerName string
	// Roots verify istiod's serving certificate and every issued chain:
	// the mesh roots.
	Roots *x509.CertPool
	// TokenFile holds the bearer token, a service account token with
	// audience istio-ca. It is read for every request, as the kubelet
	// rotates projected tokens.
	TokenFile string
	// TTL is the certificate lifetime asked for; zero leaves it to istiod.
	// istiod may grant less.
	TTL time.Duration
	// ClusterID is the cluster ztunnel runs in, sent with every request
	// (api.DefaultClusterID when empty). istiod reviews the token, and
	// checks the impersonated workload's pods, in that cluster.
	ClusterID string
	// Own: the caller asks only for its own identity (a waypoint does),
	// so requests carry no ImpersonatedIdentity. Istio's CA refuses that
	// metadata from a caller that is not a trusted node agent, even when
	// it names the caller's own identity; Ambit's istiod accepts both.
	Own bool
}

// Client asks istiod's CA for workload certificates. It is safe for
// concurrent use.
type Client struct {
	cfg  Config
	conn *grpc.ClientConn
	ca   pb.IstioCertificateServiceClient
}

var _ identity.Source = (*Client)(nil)

// New checks cfg and prepares the connection; it connects on the first
// request.
func New(cfg Config) (*Client, error) {
	if cfg.Address == "" || cfg.Roots == nil || cfg.TokenFile == "" {
		return nil, errors.New("new ca client: want an address, root certificates and a token file")
	}
	if cfg.TTL < 0 || (cfg.TTL > 0 && cfg.TTL < time.Second) {
		return nil, fmt.Errorf("new ca client: certificate lifetime %v: want 0 (istiod's default) or at least 1s", cfg.TTL)
	}
	if cfg.ClusterID == "" {
		cfg.ClusterID = api.DefaultClusterID
	}
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(cfg.Address)
		if err != nil {
			return nil, fmt.Errorf("new ca client: address %q: want host:port: %w", cfg.Address, err)
		}
		cfg.ServerName = host
	}
	creds := credentials.NewTLS(&tls.Config{RootCAs: cfg.Roots, ServerName: cfg.ServerName, MinVersion: tls.VersionTLS12})
	// istiod is reached directly, never through an HTTP proxy from the
	// environment.
	conn, err := grpc.NewClient(cfg.Address, grpc.WithTransportCredentials(creds), grpc.WithNoProxy())
	if err != nil {
		return nil, fmt.Errorf("new ca client for %s: %w", cfg.Address, err)
	}
	return &Client{cfg: cfg, conn: conn, ca: pb.NewIstioCertificateServiceClient(conn)}, nil
}

// Close closes the connection to istiod.
func (c *Client) Close() error { return c.conn.Close() }

// Certificate asks istiod for a certificate for id, as the node agent on
// the workload's behalf, and returns it with its chain (leaf and
// intermediates, not the root) and Leaf set.
func (c *Client) Certificate(ctx context.Context, id identity.Identity) (*tls.Certificate, error) {
	if err := id.Validate(); err != nil {
		return nil, fmt.Errorf("request certificate: %w", err)
	}
	key, csr, err := newCSR(id)
	if err != nil {
		return nil, err
	}
	token, err := readToken(c.cfg.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("request certificate for %s: %w", id, err)
	}
	req := &pb.IstioCertificateRequest{
		Csr:              csr,
		ValidityDuration: int64(c.cfg.TTL / time.Second),
	}
	if !c.cfg.Own {
		req.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{
			ImpersonatedIdentity: structpb.NewStringValue(id.String()),
		}}
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token, api.ClusterIDMetadata, c.cfg.ClusterID)
	resp, err := c.ca.CreateCertificate(ctx, req)
	if err != nil {
		switch status.Code(err) {
		case codes.Unauthenticated:
			return nil, fmt.Errorf("request certificate for %s from %s: %w: %w", id, c.cfg.Address, ErrUnauthenticated, err)
		case codes.PermissionDenied:
			return nil, fmt.Errorf("request certificate for %s from %s: %w: %w", id, c.cfg.Address, ErrPermissionDenied, err)
		case codes.Unavailable:
			return nil, fmt.Errorf("request certificate for %s from %s: %w: %w", id, c.cfg.Address, ErrUnavailable, err)
		default:
			return nil, fmt.Errorf("request certificate for %s from %s: %w", id, c.cfg.Address, err)
		}
	}
	cert, err := c.check(id, key, resp.GetCertChain())
	if err != nil {
		return nil, fmt.Errorf("request certificate for %s from %s: %w", id, c.cfg.Address, err)
	}
	return cert, nil
}

// newCSR makes a P-256 key and a PEM CSR whose only SAN is id's URI.
func newCSR(id identity.Identity) (*ecdsa.PrivateKey, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, "", fmt.Errorf("generate key for %s: %w", id, err)
	}
	u, err := url.Parse(id.String())
	if err != nil {
		return nil, "", fmt.Errorf("make csr for %s: %w", id, err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		return nil, "", fmt.Errorf("make csr for %s: %w", id, err)
	}
	return key, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), nil
}

// readToken reads the bearer token from path.
func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read token: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("read token %s: file is empty", path)
	}
	return t, nil
}

// check parses the chain istiod returned (leaf first, then
// intermediates, root last; an entry may hold several PEM blocks) and
// accepts it only if it verifies to the mesh roots, the leaf is for key,
// and the leaf's identity is id.
func (c *Client) check(id identity.Identity, key *ecdsa.PrivateKey, chain []string) (*tls.Certificate, error) {
	var certs []*x509.Certificate
	for i, p := range chain {
		cs, err := identity.ParseCertificatesPEM([]byte(p))
		if err != nil {
			return nil, fmt.Errorf("%w: entry %d: %w", ErrBadChain, i, err)
		}
		certs = append(certs, cs...)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: empty chain", ErrBadChain)
	}
	leaf := certs[0]
	// The root istiod sends is not trusted for being there: only the
	// configured roots are.
	rest := certs[1:]
	if n := len(rest); n > 0 && selfSigned(rest[n-1]) {
		rest = rest[:n-1]
	}
	got, err := (&identity.Verifier{Roots: c.cfg.Roots}).VerifyCertificates(append([]*x509.Certificate{leaf}, rest...))
	switch {
	case errors.Is(err, identity.ErrNoIdentity):
		return nil, fmt.Errorf("%w: asked for %s: %w", ErrWrongIdentity, id, err)
	case err != nil:
		return nil, fmt.Errorf("%w: %w", ErrUntrustedChain, err)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return nil, fmt.Errorf("%w: the leaf is not for the key of the request", ErrBadChain)
	}
	if got != id {
		return nil, fmt.Errorf("%w: got %s, want %s", ErrWrongIdentity, got, id)
	}
	out := &tls.Certificate{PrivateKey: key, Leaf: leaf, Certificate: [][]byte{leaf.Raw}}
	for _, ic := range rest {
		out.Certificate = append(out.Certificate, ic.Raw)
	}
	return out, nil
}

func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

// LoadRoots reads the mesh root certificates from a PEM file, such as
// the root-cert.pem istiod publishes in every namespace.
func LoadRoots(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read root certificates: %w", err)
	}
	certs, err := identity.ParseCertificatesPEM(b)
	if err != nil {
		return nil, fmt.Errorf("read root certificates %s: %w", path, err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}
