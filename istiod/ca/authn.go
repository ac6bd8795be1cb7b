package ca

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ambitmesh/ambit/api"
)

// Caller is an authenticated service account.
type Caller struct {
	Namespace, Name string
	// Node is the node of the pod a token is bound to; "" for a token not
	// bound to a pod.
	Node string
}

// Authenticator authenticates gRPC callers as Istio does on 15012: a
// Kubernetes service account token in the "authorization: Bearer"
// metadata, bound to the audience istio-ca and reviewed by the apiserver
// (TokenReview). The CA and the xDS server on 15012 share it.
//
// A caller may name its cluster in the "clusterid" metadata, as Istio's
// ztunnel does on every call. Istio's istiod then reviews the token with
// that cluster's apiserver; Ambit's istiod serves one cluster, so a
// caller that names another is refused (Istio: "could not get cluster
// ...'s kube client") rather than its token reviewed by the wrong
// apiserver. A caller that names none is taken to be in this cluster,
// as by Istio.
type Authenticator struct {
	kube      kubernetes.Interface
	clusterID string
}

// NewAuthenticator returns an Authenticator that reviews tokens with kube,
// the apiserver of cluster clusterID (api.DefaultClusterID when empty).
func NewAuthenticator(kube kubernetes.Interface, clusterID string) *Authenticator {
	if clusterID == "" {
		clusterID = api.DefaultClusterID
	}
	return &Authenticator{kube: kube, clusterID: clusterID}
}

// Authenticate returns the caller of a gRPC request, or an error wrapping
// ErrUnauthenticated.
func (a *Authenticator) Authenticate(ctx context.Context) (Caller, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, c := range md.Get(api.ClusterIDMetadata) {
		if c != "" && c != a.clusterID {
			return Caller{}, fmt.Errorf("%w: caller names cluster %q (%s), this istiod authenticates callers of cluster %q only", ErrUnauthenticated, c, api.ClusterIDMetadata, a.clusterID)
		}
	}
	var token string
	for _, v := range md.Get("authorization") {
		if t, ok := strings.CutPrefix(v, "Bearer "); ok {
			token = t
		}
	}
	if token == "" {
		return Caller{}, fmt.Errorf("%w: no bearer token in the authorization header", ErrUnauthenticated)
	}
	tr, err := a.kube.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{Audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return Caller{}, fmt.Errorf("%w: review token: %v", ErrUnauthenticated, err)
	}
	st := tr.Status
	if !st.Authenticated {
		return Caller{}, fmt.Errorf("%w: token rejected (want a service account token with audience %s): %s", ErrUnauthenticated, Audience, st.Error)
	}
	if !slices.Contains(st.Audiences, Audience) {
		return Caller{}, fmt.Errorf("%w: token audiences %v, want %s", ErrUnauthenticated, st.Audiences, Audience)
	}
	parts := strings.Split(st.User.Username, ":")
	if len(parts) != 4 || parts[0] != "system" || parts[1] != "serviceaccount" {
		return Caller{}, fmt.Errorf("%w: user %q is not a service account", ErrUnauthenticated, st.User.Username)
	}
	c := Caller{Namespace: parts[2], Name: parts[3]}
	if v := st.User.Extra[extraNodeName]; len(v) == 1 {
		c.Node = v[0]
	}
	return c, nil
}

// StreamInterceptor refuses, with codes.Unauthenticated, the streams of
// the methods whose full name starts with prefix when the caller cannot be
// authenticated; refused calls are reported to onRefuse (may be nil).
func (a *Authenticator) StreamInterceptor(prefix string, onRefuse func(method string, err error)) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if strings.HasPrefix(info.FullMethod, prefix) {
			if _, err := a.Authenticate(ss.Context()); err != nil {
				if onRefuse != nil {
					onRefuse(info.FullMethod, err)
				}
				return status.Error(codes.Unauthenticated, err.Error())
			}
		}
		return handler(srv, ss)
	}
}
