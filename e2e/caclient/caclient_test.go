// Package caclient_test tests internal/caclient against istiod's real CA
// (istiod/ca): under e2e/, because it joins two components.
package caclient_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"

	"github.com/ambitmesh/ambit/api"
	"github.com/ambitmesh/ambit/internal/caclient"
	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/istiod/ca"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serverName is the name istiod's serving certificate carries.
const serverName = "istiod.istio-system.svc"

var (
	// here runs on the ztunnel's node, there on another one.
	here  = identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "here"}
	there = identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "there"}
)

// Tokens the fake apiserver's TokenReview knows.
const (
	ztunnelToken = "ztunnel-token"
	rotatedToken = "ztunnel-token-2"
)

// mesh is a root, an intermediate that signs, and the Authority over
// them, like a plug-in CA in cacerts.
type mesh struct {
	authority *ca.Authority
	rootPEM   []byte
	roots     *x509.CertPool
}

func newMesh(t *testing.T) *mesh {
	t.Helper()
	rootPEM, rootKeyPEM, err := ca.NewRoot("cluster.local", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	root, rootKey := parsePair(t, rootPEM, rootKeyPEM)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "intermediate"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}, root, key.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	interPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	a, err := ca.FromPEM(interPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}),
		append(append([]byte{}, interPEM...), rootPEM...), rootPEM, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	return &mesh{authority: a, rootPEM: rootPEM, roots: a.Roots()}
}

func parsePair(t *testing.T, certPEM, keyPEM []byte) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		t.Fatal("root: not PEM")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key.(crypto.Signer)
}

// serve runs svc on a gRPC TLS server on 127.0.0.1 that presents a
// serving certificate of a, and returns its address.
func serve(t *testing.T, a *ca.Authority, register func(*grpc.Server)) string {
	t.Helper()
	cert, err := a.ServingCertificate([]string{serverName}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})))
	register(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	return ln.Addr().String()
}

// istiod runs the real CA service of cluster clusterID (Istio's default
// when empty) with a fake apiserver that knows the ztunnel tokens, and
// pods: one with service account "here" on the ztunnel's node and one
// with "there" on another node.
func istiod(t *testing.T, m *mesh, clusterID string) string {
	t.Helper()
	kube := fake.NewClientset()
	kube.PrependReactor("create", "tokenreviews", func(action k8stesting.Action) (bool, runtime.Object, error) {
		tr := action.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
		switch tr.Spec.Token {
		case ztunnelToken, rotatedToken:
			tr.Status = authnv1.TokenReviewStatus{
				Authenticated: true,
				Audiences:     tr.Spec.Audiences,
				User: authnv1.UserInfo{
					Username: "system:serviceaccount:istio-system:ztunnel",
					Extra:    map[string]authnv1.ExtraValue{"authentication.kubernetes.io/node-name": {"node-a"}},
				},
			}
		default:
			tr.Status = authnv1.TokenReviewStatus{Error: "invalid bearer token"}
		}
		return true, tr, nil
	})
	pods := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, p := range []struct{ name, sa, node string }{{"here-1", "here", "node-a"}, {"there-1", "there", "node-b"}} {
		pods.Add(&corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: p.name},
			Spec:       corev1.PodSpec{ServiceAccountName: p.sa, NodeName: p.node},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning},
		})
	}
	svc, err := ca.NewService(ca.ServiceOptions{
		Authority: m.authority, Kube: kube, Pods: corelisters.NewPodLister(pods),
		TrustDomain: "cluster.local", NodeAgents: []string{"istio-system/ztunnel"}, ClusterID: clusterID,
	})
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, m.authority, svc.Register)
}

func writeToken(t *testing.T, path, token string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func newClient(t *testing.T, cfg caclient.Config) *caclient.Client {
	t.Helper()
	c, err := caclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestImpersonationKeyIsIstiods(t *testing.T) {
	if caclient.ImpersonatedIdentity != ca.ImpersonatedIdentity {
		t.Errorf("ImpersonatedIdentity: got %q, want istiod's %q", caclient.ImpersonatedIdentity, ca.ImpersonatedIdentity)
	}
}

// The real CA issues the certificate of a pod on the ztunnel's node; the
// chain verifies to the root alone and carries the identity; the token
// is read again for each request.
func TestCertificateFromIstiod(t *testing.T) {
	m := newMesh(t)
	tokenFile := filepath.Join(t.TempDir(), "istio-token")
	writeToken(t, tokenFile, ztunnelToken)
	c := newClient(t, caclient.Config{Address: istiod(t, m, ""), ServerName: serverName, Roots: m.roots, TokenFile: tokenFile, TTL: 2 * time.Hour})

	cert, err := c.Certificate(ctx(t), here)
	if err != nil {
		t.Fatalf("Certificate: %v", err)
	}
	if got := len(cert.Certificate); got != 2 {
		t.Errorf("chain: got %d certificates, want leaf and intermediate (not the root)", got)
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		inter.AddCert(c)
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: m.roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("verify chain against the root: %v", err)
	}
	if id, err := identity.FromCertificate(cert.Leaf); id != here || err != nil {
		t.Errorf("leaf identity: got %s, %v; want %s", id, err, here)
	}
	if life := cert.Leaf.NotAfter.Sub(cert.Leaf.NotBefore); life < 2*time.Hour || life > 2*time.Hour+time.Minute {
		t.Errorf("lifetime: got %v, want the 2h asked for (+1m backdating)", life)
	}
	if !cert.PrivateKey.(*ecdsa.PrivateKey).PublicKey.Equal(cert.Leaf.PublicKey) {
		t.Error("private key: does not match the leaf")
	}
	// The certificate serves TLS: the same check crypto/tls makes.
	if _, err := tls.X509KeyPair(pemChain(cert), pemKey(t, cert)); err != nil {
		t.Errorf("X509KeyPair: %v", err)
	}

	// Kubernetes rotated the token: the next request uses the new one.
	writeToken(t, tokenFile, rotatedToken)
	if _, err := c.Certificate(ctx(t), here); err != nil {
		t.Errorf("Certificate after token rotation: %v", err)
	}
	writeToken(t, tokenFile, "revoked")
	if _, err := c.Certificate(ctx(t), here); !errors.Is(err, caclient.ErrUnauthenticated) {
		t.Errorf("Certificate with a token istiod does not accept: got %v, want %v", err, caclient.ErrUnauthenticated)
	}
}

func pemChain(cert *tls.Certificate) []byte {
	var out []byte
	for _, der := range cert.Certificate {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return out
}

func pemKey(t *testing.T, cert *tls.Certificate) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// Refusals by istiod and by the TLS handshake come back as clear errors
// that keep the gRPC code.
func TestRefusedByIstiod(t *testing.T) {
	m := newMesh(t)
	addr := istiod(t, m, "")
	other := newMesh(t)
	tests := []struct {
		name      string
		id        identity.Identity
		token     string
		roots     *x509.CertPool
		clusterID string
		wantIs    error
		wantCode  codes.Code
		wantText  string
	}{
		{"wrong token", here, "stolen", m.roots, "", caclient.ErrUnauthenticated, codes.Unauthenticated, "token rejected"},
		{"pod on another node", there, ztunnelToken, m.roots, "", caclient.ErrPermissionDenied, codes.PermissionDenied, "node-a"},
		{"server certificate from another root", here, ztunnelToken, other.roots, "", caclient.ErrUnavailable, codes.Unavailable, "certificate signed by unknown authority"},
		{"caller of another cluster", here, ztunnelToken, m.roots, "east", caclient.ErrUnauthenticated, codes.Unauthenticated, `caller names cluster "east"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tokenFile := filepath.Join(t.TempDir(), "istio-token")
			writeToken(t, tokenFile, tt.token)
			c := newClient(t, caclient.Config{Address: addr, ServerName: serverName, Roots: tt.roots, TokenFile: tokenFile, ClusterID: tt.clusterID})
			cert, err := c.Certificate(ctx(t), tt.id)
			if cert != nil || err == nil {
				t.Fatalf("Certificate: got a certificate, want a refusal")
			}
			t.Logf("refused: %v", err)
			if !errors.Is(err, tt.wantIs) {
				t.Errorf("error: got %v, want one wrapping %v", err, tt.wantIs)
			}
			if got := status.Code(err); got != tt.wantCode {
				t.Errorf("gRPC code: got %s, want %s (%v)", got, tt.wantCode, err)
			}
			if !strings.Contains(err.Error(), tt.wantText) || !strings.Contains(err.Error(), tt.id.String()) {
				t.Errorf("error: got %q, want it to name %s and say %q", err, tt.id, tt.wantText)
			}
		})
	}
}

// fakeCA answers CreateCertificate with whatever the test makes of the
// request, and records what it was sent.
type fakeCA struct {
	pb.UnimplementedIstioCertificateServiceServer
	answer func(csr *x509.CertificateRequest) []string

	mu          sync.Mutex
	auth        []string
	cluster     []string
	impersonate string
	ttl         int64
}

func (f *fakeCA) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.auth = md.Get("authorization")
	f.cluster = md.Get(api.ClusterIDMetadata)
	f.impersonate = req.GetMetadata().GetFields()[ca.ImpersonatedIdentity].GetStringValue()
	f.ttl = req.GetValidityDuration()
	f.mu.Unlock()
	b, _ := pem.Decode([]byte(req.GetCsr()))
	if b == nil {
		return nil, status.Error(codes.InvalidArgument, "not a PEM CSR")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &pb.IstioCertificateResponse{CertChain: f.answer(csr)}, nil
}

// Answers that must be refused although istiod said yes, and two that
// are fine.
func TestChecksTheAnswer(t *testing.T) {
	m := newMesh(t)
	other := newMesh(t)
	sign := func(a *ca.Authority, csr *x509.CertificateRequest, id identity.Identity) []string {
		u, _ := url.Parse(id.String())
		chain, err := a.SignCSR(csr, u, time.Hour)
		if err != nil {
			t.Error(err)
		}
		return chain
	}
	strangerKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		answer func(csr *x509.CertificateRequest) []string
		want   error // nil: accepted
	}{
		{"as istiod answers", func(csr *x509.CertificateRequest) []string { return sign(m.authority, csr, here) }, nil},
		{"without the root", func(csr *x509.CertificateRequest) []string {
			c := sign(m.authority, csr, here)
			return c[:len(c)-1]
		}, nil},
		{"whole chain in one entry", func(csr *x509.CertificateRequest) []string {
			return []string{strings.Join(sign(m.authority, csr, here), "")}
		}, nil},
		{"SAN of another identity", func(csr *x509.CertificateRequest) []string { return sign(m.authority, csr, there) }, caclient.ErrWrongIdentity},
		// The chain ends in the other root: being in the answer does not
		// make a root trusted.
		{"signed under another root", func(csr *x509.CertificateRequest) []string { return sign(other.authority, csr, here) }, caclient.ErrUntrustedChain},
		{"leaf for another key", func(csr *x509.CertificateRequest) []string {
			stranger := *csr
			stranger.PublicKey = strangerKey.Public()
			return sign(m.authority, &stranger, here)
		}, caclient.ErrBadChain},
		{"empty chain", func(*x509.CertificateRequest) []string { return nil }, caclient.ErrBadChain},
		{"not PEM", func(*x509.CertificateRequest) []string { return []string{"hello"} }, caclient.ErrBadChain},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeCA{answer: tt.answer}
			addr := serve(t, m.authority, func(g *grpc.Server) { pb.RegisterIstioCertificateServiceServer(g, f) })
			tokenFile := filepath.Join(t.TempDir(), "istio-token")
			writeToken(t, tokenFile, ztunnelToken)
			c := newClient(t, caclient.Config{Address: addr, ServerName: serverName, Roots: m.roots, TokenFile: tokenFile, TTL: 90 * time.Minute})
			cert, err := c.Certificate(ctx(t), here)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Certificate: got %v, want a certificate", err)
				}
				if id, _ := identity.FromCertificate(cert.Leaf); id != here {
					t.Errorf("leaf identity: got %s, want %s", id, here)
				}
				if got := len(cert.Certificate); got != 2 {
					t.Errorf("chain: got %d certificates, want leaf and intermediate", got)
				}
			} else if cert != nil || !errors.Is(err, tt.want) {
				t.Fatalf("Certificate: got %v, %v; want an error wrapping %v", cert != nil, err, tt.want)
			}
			if err != nil {
				t.Logf("refused: %v", err)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.impersonate != here.String() || len(f.auth) != 1 || f.auth[0] != "Bearer "+ztunnelToken || f.ttl != 5400 ||
				len(f.cluster) != 1 || f.cluster[0] != api.DefaultClusterID {
				t.Errorf("request: got impersonate %q, authorization %q, ttl %d, clusterid %q; want %q, [Bearer %s], 5400, [%s]",
					f.impersonate, f.auth, f.ttl, f.cluster, here, ztunnelToken, api.DefaultClusterID)
			}
		})
	}
}

// Every request names the client's cluster (clusterid); istiod of that
// cluster issues, istiod of another refuses, and one that is told nothing
// takes the caller for its own.
func TestClusterID(t *testing.T) {
	m := newMesh(t)
	east := istiod(t, m, "east")
	tokenFile := filepath.Join(t.TempDir(), "istio-token")
	writeToken(t, tokenFile, ztunnelToken)
	c := newClient(t, caclient.Config{Address: east, ServerName: serverName, Roots: m.roots, TokenFile: tokenFile, ClusterID: "east"})
	if _, err := c.Certificate(ctx(t), here); err != nil {
		t.Errorf("Certificate from the istiod of the client's cluster: %v", err)
	}
	c = newClient(t, caclient.Config{Address: east, ServerName: serverName, Roots: m.roots, TokenFile: tokenFile})
	_, err := c.Certificate(ctx(t), here)
	if !errors.Is(err, caclient.ErrUnauthenticated) || !strings.Contains(err.Error(), `"Kubernetes"`) {
		t.Errorf("Certificate with the default cluster id from istiod of east: got %v, want %v naming cluster \"Kubernetes\"", err, caclient.ErrUnauthenticated)
	}
}

func TestNewChecksConfig(t *testing.T) {
	pool := x509.NewCertPool()
	tests := []struct {
		name string
		cfg  caclient.Config
		want string
	}{
		{"no address", caclient.Config{Roots: pool, TokenFile: "t"}, "want an address"},
		{"no roots", caclient.Config{Address: "127.0.0.1:15012", TokenFile: "t"}, "want an address"},
		{"address without port", caclient.Config{Address: "istiod", Roots: pool, TokenFile: "t"}, "want host:port"},
		{"lifetime under a second", caclient.Config{Address: "127.0.0.1:15012", Roots: pool, TokenFile: "t", TTL: time.Millisecond}, "at least 1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := caclient.New(tt.cfg)
			if err == nil {
				c.Close()
				t.Fatalf("New: got a client, want an error saying %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New: got %q, want it to say %q", err, tt.want)
			}
		})
	}
}

func TestLoadRoots(t *testing.T) {
	m := newMesh(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "root-cert.pem")
	if err := os.WriteFile(good, m.rootPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.pem")
	if err := os.WriteFile(bad, []byte("not pem"), 0o644); err != nil {
		t.Fatal(err)
	}
	pool, err := caclient.LoadRoots(good)
	if err != nil || !pool.Equal(m.roots) {
		t.Errorf("LoadRoots(%s): got %v; want the root", good, err)
	}
	for _, p := range []string{bad, filepath.Join(dir, "missing.pem")} {
		if _, err := caclient.LoadRoots(p); err == nil {
			t.Errorf("LoadRoots(%s): got no error, want one", p)
		}
	}
}
