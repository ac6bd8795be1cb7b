package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/ambitmesh/ambit/api"
	"github.com/ambitmesh/ambit/istiod/ambient"
	"github.com/ambitmesh/ambit/istiod/ca"
	"github.com/ambitmesh/ambit/istiod/server"
)

// fakeTokenReview answers TokenReviews as an apiserver would for a few
// fixed tokens.
func fakeTokenReview(kube *fake.Clientset) {
	kube.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
		switch tr.Spec.Token {
		case "ztunnel":
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{ca.Audience},
				User: authnv1.UserInfo{Username: "system:serviceaccount:istio-system:ztunnel"}}
		case "other-audience":
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"api"},
				User: authnv1.UserInfo{Username: "system:serviceaccount:istio-system:ztunnel"}}
		case "user":
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{ca.Audience},
				User: authnv1.UserInfo{Username: "alice"}}
		default:
			tr.Status = authnv1.TokenReviewStatus{Error: "invalid bearer token"}
		}
		return true, tr, nil
	})
}

// TestXDSAuthentication: delta xDS on the secure port takes only clients
// with a service account token for istio-ca, as Istio's 15012; the
// plaintext port takes anyone.
func TestXDSAuthentication(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	kube := fake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "app"}})
	fakeTokenReview(kube)
	// The fake's watches see only later events: watch before istiod
	// publishes the root.
	w, err := kube.CoreV1().ConfigMaps("app").Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	s, err := server.New(server.Config{XDSAddr: "127.0.0.1:0", SecureAddr: "127.0.0.1:0"}, kube, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	runServer(t, ctx, cancel, s)
	roots := x509.NewCertPool()
	for ev := range w.ResultChan() {
		if cm, ok := ev.Object.(*corev1.ConfigMap); ok && cm.Name == ca.RootCertConfigMap && roots.AppendCertsFromPEM([]byte(cm.Data[ca.RootCertKey])) {
			break
		}
	}
	if ctx.Err() != nil {
		t.Fatalf("root certificate: not published: %v", ctx.Err())
	}
	secure := dialOpts(t, s.SecureAddr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "istiod.istio-system.svc"})))
	plain := dialOpts(t, s.XDSAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))

	tests := []struct {
		name    string
		cc      *grpc.ClientConn
		token   string
		cluster string // clusterid, none when empty
		want    codes.Code
	}{
		{"service account token", secure, "ztunnel", "", codes.OK},
		{"service account token of this cluster", secure, "ztunnel", api.DefaultClusterID, codes.OK},
		{"service account token of another cluster", secure, "ztunnel", "east", codes.Unauthenticated},
		{"no token", secure, "", "", codes.Unauthenticated},
		{"rejected token", secure, "forged", "", codes.Unauthenticated},
		{"token for another audience", secure, "other-audience", "", codes.Unauthenticated},
		{"not a service account", secure, "user", "", codes.Unauthenticated},
		{"plaintext port, no token", plain, "", "", codes.OK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sctx := ctx
			if tc.token != "" {
				sctx = metadata.AppendToOutgoingContext(sctx, "authorization", "Bearer "+tc.token)
			}
			if tc.cluster != "" {
				sctx = metadata.AppendToOutgoingContext(sctx, api.ClusterIDMetadata, tc.cluster)
			}
			err := firstDelta(sctx, tc.cc)
			if got := status.Code(err); got != tc.want {
				t.Errorf("delta xDS stream: got code %s (%v), want %s", got, err, tc.want)
			}
		})
	}

	// xDS streams and CA calls share one authenticator: a token is
	// reviewed once for all of them.
	t.Run("one review per token", func(t *testing.T) {
		sctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer ztunnel")
		for range 5 {
			if err := firstDelta(sctx, secure); err != nil {
				t.Fatalf("delta xDS stream: got %v, want none", err)
			}
			// Authenticated, then refused for its CSR.
			_, err := pb.NewIstioCertificateServiceClient(secure).CreateCertificate(sctx, &pb.IstioCertificateRequest{Csr: "not a CSR"})
			if got := status.Code(err); got != codes.InvalidArgument {
				t.Fatalf("CreateCertificate: got code %s (%v), want %s", got, err, codes.InvalidArgument)
			}
		}
		reviews := 0
		for _, a := range kube.Actions() {
			if c, ok := a.(k8stesting.CreateAction); ok && a.GetResource().Resource == "tokenreviews" && c.GetObject().(*authnv1.TokenReview).Spec.Token == "ztunnel" {
				reviews++
			}
		}
		if reviews != 1 {
			t.Errorf("TokenReviews of the token: got %d, want 1", reviews)
		}
	})
}

// firstDelta opens a delta xDS stream on cc and waits for the answer to
// its first wildcard request (sent even with nothing to send); it returns
// the stream's status error.
func firstDelta(ctx context.Context, cc *grpc.ClientConn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	// A stream the server already ended returns io.EOF from Send; its
	// status comes from Recv.
	if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "test"}, TypeUrl: ambient.AddressType}); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	_, err = st.Recv()
	return err
}

func dialOpts(t *testing.T, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}
