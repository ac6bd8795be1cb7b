package istiod

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambitmesh/ambit/e2e/internal/labmesh"
	"github.com/ambitmesh/ambit/istiod/ambient"
	"github.com/ambitmesh/ambit/istiod/ca"
	"github.com/ambitmesh/ambit/istiod/server"
)

func csrFor(t *testing.T, key crypto.Signer, uri string) string {
	t.Helper()
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func TestCAInLab(t *testing.T) {
	// A ztunnel pod on node1, and workloads on both nodes.
	l, ctx := startLab(t, 4*time.Minute, "istio-system", "app")
	for _, sa := range []struct{ ns, name string }{{"istio-system", "ztunnel"}, {"app", "here"}, {"app", "there"}} {
		if _, err := l.Client.CoreV1().ServiceAccounts(sa.ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa.name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	run := func(ns, name, node, sa string) *corev1.Pod {
		got, err := l.RunEchoPod(ctx, ns, name, node, sa, nil)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	zt := run("istio-system", "ztunnel-node1", "node1", "ztunnel")
	hereApp := run("app", "here", "node1", "here")
	run("app", "there", "node2", "there")

	s, err := server.New(server.Config{
		SecureAddr: "127.0.0.1:0",
		CA:         server.CAConfig{CertTTL: 2 * time.Hour},
	}, l.Client, nil, warnLog())
	if err != nil {
		t.Fatal(err)
	}
	runServer(t, ctx, s)
	roots, _, err := labmesh.WaitRoot(ctx, l, "app")
	if err != nil {
		t.Fatal(err)
	}

	cc, err := grpc.NewClient(s.SecureAddr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: roots, ServerName: "istiod.istio-system.svc",
	})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	client := pb.NewIstioCertificateServiceClient(cc)

	token := func(ns, sa string, pod *corev1.Pod, audience string) string {
		t.Helper()
		req := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: []string{audience}}}
		if pod != nil {
			req.Spec.BoundObjectRef = &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
		}
		tr, err := l.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, req, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	const (
		idHere  = "spiffe://cluster.local/ns/app/sa/here"
		idThere = "spiffe://cluster.local/ns/app/sa/there"
	)
	ztToken := token("istio-system", "ztunnel", zt, ca.Audience)
	tests := []struct {
		name        string
		token       string
		impersonate string
		csr         string
		wantCode    codes.Code
		wantURI     string
	}{
		{"ztunnel for a pod on its node", ztToken, idHere, csrFor(t, ec, idHere), codes.OK, idHere},
		{"workload for itself", token("app", "here", hereApp, ca.Audience), "", csrFor(t, ec, idHere), codes.OK, idHere},
		{"ztunnel for a pod on another node", ztToken, idThere, csrFor(t, ec, idThere), codes.PermissionDenied, ""},
		{"workload impersonating", token("app", "here", hereApp, ca.Audience), idThere, csrFor(t, ec, idThere), codes.PermissionDenied, ""},
		{"wrong audience", token("istio-system", "ztunnel", zt, "api"), idHere, csrFor(t, ec, idHere), codes.Unauthenticated, ""},
		{"no token", "", "", csrFor(t, ec, idHere), codes.Unauthenticated, ""},
		{"SAN mismatch", ztToken, idHere, csrFor(t, ec, idThere), codes.InvalidArgument, ""},
		{"weak key", ztToken, idHere, csrFor(t, weak, idHere), codes.InvalidArgument, ""},
		{"not a CSR", ztToken, idHere, "hello", codes.InvalidArgument, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rctx := ctx
			if tc.token != "" {
				rctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tc.token)
			}
			req := &pb.IstioCertificateRequest{Csr: tc.csr, ValidityDuration: int64((48 * time.Hour).Seconds())}
			if tc.impersonate != "" {
				req.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{ca.ImpersonatedIdentity: structpb.NewStringValue(tc.impersonate)}}
			}
			resp, err := client.CreateCertificate(rctx, req)
			if got := status.Code(err); got != tc.wantCode {
				t.Fatalf("CreateCertificate: got code %s (%v), want %s", got, err, tc.wantCode)
			}
			if tc.wantCode != codes.OK {
				return
			}
			chain := resp.GetCertChain()
			if len(chain) < 2 {
				t.Fatalf("cert chain: got %d certificates, want leaf and root", len(chain))
			}
			var certs []*x509.Certificate
			for _, p := range chain {
				b, _ := pem.Decode([]byte(p))
				if b == nil {
					t.Fatalf("cert chain entry %q: not PEM", p)
				}
				c, err := x509.ParseCertificate(b.Bytes)
				if err != nil {
					t.Fatal(err)
				}
				certs = append(certs, c)
			}
			leaf := certs[0]
			inter := x509.NewCertPool()
			for _, c := range certs[1:] {
				inter.AddCert(c)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("verify leaf against the published root: %v", err)
			}
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != tc.wantURI {
				t.Errorf("leaf URI SANs: got %v, want [%s]", leaf.URIs, tc.wantURI)
			}
			// 48h asked, capped to the configured 2h (+1 minute backdating).
			if life := leaf.NotAfter.Sub(leaf.NotBefore); life > 2*time.Hour+time.Minute {
				t.Errorf("leaf lifetime: got %v, want at most 2h1m", life)
			}
		})
	}

	// Delta xDS on the same port takes the same tokens, reviewed by this
	// apiserver.
	xdsTests := []struct {
		name  string
		token string
		want  codes.Code
	}{
		{"xds with the ztunnel's token", ztToken, codes.OK},
		{"xds without a token", "", codes.Unauthenticated},
		{"xds with a token for another audience", token("istio-system", "ztunnel", zt, "api"), codes.Unauthenticated},
	}
	for _, tc := range xdsTests {
		t.Run(tc.name, func(t *testing.T) {
			sctx := ctx
			if tc.token != "" {
				sctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tc.token)
			}
			st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(sctx)
			if err == nil {
				err = st.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "ztunnel"}, TypeUrl: ambient.AddressType})
			}
			if err == nil {
				_, err = st.Recv()
				st.CloseSend()
			}
			if got := status.Code(err); got != tc.want {
				t.Errorf("delta xDS stream: got code %s (%v), want %s", got, err, tc.want)
			}
		})
	}
}
