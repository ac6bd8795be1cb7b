package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
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
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/ambitmesh/ambit/api"
	"github.com/ambitmesh/ambit/istiod/ca"
	"github.com/ambitmesh/ambit/istiod/server"
	"github.com/ambitmesh/ambit/istiod/xds"
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
			st, err := discovery.NewAggregatedDiscoveryServiceClient(tc.cc).DeltaAggregatedResources(sctx)
			if err == nil {
				err = st.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "test"}, TypeUrl: xds.AddressType})
			}
			if err == nil {
				// The first wildcard request is answered even with
				// nothing to send.
				_, err = st.Recv()
				st.CloseSend()
			}
			if got := status.Code(err); got != tc.want {
				t.Errorf("delta xDS stream: got code %s (%v), want %s", got, err, tc.want)
			}
		})
	}
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
