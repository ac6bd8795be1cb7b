package ca

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/cache"
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

// ErrTooManyFailures is returned, without asking the apiserver, while the
// budget of failed reviews (of all callers, or of the caller's address)
// is spent.
var ErrTooManyFailures = errors.New("too many failed authentications")

// Defaults of AuthenticatorOptions.
const (
	// DefaultCacheTTL is how long an accepted token is taken without
	// another review. Revoking a token (deleting its pod or service
	// account) takes at most this long to reach istiod.
	DefaultCacheTTL = time.Minute
	// DefaultCacheSize bounds the accepted tokens kept: one per ztunnel
	// and a few rotations; some 200 bytes each.
	DefaultCacheSize = 16384
	// DefaultPeers bounds the caller addresses whose failures are
	// counted.
	DefaultPeers = 4096
)

// Default failure budgets: a burst of 100 failed reviews, then 10 a
// second, of all callers; 5, then one every 2 s, per caller address.
var (
	DefaultFailures     = Budget{PerSecond: 10, Burst: 100}
	DefaultPeerFailures = Budget{PerSecond: 0.5, Burst: 5}
)

// reviewTimeout bounds one TokenReview. A review is shared by every
// caller that waits for the same token, so it does not end with the
// first caller's request.
const reviewTimeout = 10 * time.Second

// AuthenticatorOptions tune an Authenticator; zero fields take the
// defaults.
type AuthenticatorOptions struct {
	// CacheTTL is how long an accepted token is taken without another
	// review, and never beyond the token's own expiry (its exp claim).
	CacheTTL time.Duration
	// CacheSize bounds the accepted tokens kept (least recently used
	// go first).
	CacheSize int
	// Failures is the budget of failed reviews of all callers,
	// PeerFailures that of each caller address; Peers bounds the
	// addresses tracked (least recently used go first).
	Failures, PeerFailures Budget
	Peers                  int
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// ClusterID is the cluster whose apiserver reviews tokens
	// (api.DefaultClusterID when empty).
	ClusterID string
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
//
// Every call on 15012 carries a token, so a review per call would let
// anyone who reaches the port load the apiserver. An accepted token's
// caller is therefore taken for CacheTTL (never beyond the token's
// expiry) without another review, keyed by the SHA-256 of the token,
// which is not stored; concurrent calls with the same token wait for one
// review. Failed reviews are never kept: each one spends from a budget of
// all callers and one of the caller's address, and while either is spent
// a token not seen accepted is refused (ErrTooManyFailures) without a
// review. A token seen accepted, whose CacheTTL ran out, is reviewed
// again without the budgets until it expires, so that failing callers
// cannot lock out those already known. The apiserver itself caches
// reviews the same way (10 s for accepted tokens).
type Authenticator struct {
	kube     kubernetes.Interface
	opts     AuthenticatorOptions
	accepted *cache.LRUExpireCache // [sha256.Size]byte -> acceptance
	reviews  singleflight.Group
	limits   *failureLimits
}

// acceptance is what is kept of an accepted token, until it expires (or
// for CacheTTL if its expiry is unknown).
type acceptance struct {
	caller Caller
	// fresh is until when the caller is taken without a review.
	fresh time.Time
}

// maxKeep bounds how long a token is known as accepted.
const maxKeep = 24 * time.Hour

// NewAuthenticator returns an Authenticator that reviews tokens with
// kube, the apiserver of cluster opts.ClusterID.
func NewAuthenticator(kube kubernetes.Interface, opts AuthenticatorOptions) *Authenticator {
	if opts.CacheTTL <= 0 {
		opts.CacheTTL = DefaultCacheTTL
	}
	if opts.CacheSize <= 0 {
		opts.CacheSize = DefaultCacheSize
	}
	if !opts.Failures.valid() {
		opts.Failures = DefaultFailures
	}
	if !opts.PeerFailures.valid() {
		opts.PeerFailures = DefaultPeerFailures
	}
	if opts.Peers <= 0 {
		opts.Peers = DefaultPeers
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.ClusterID == "" {
		opts.ClusterID = api.DefaultClusterID
	}
	clock := clockFunc(opts.Now)
	return &Authenticator{
		kube:     kube,
		opts:     opts,
		accepted: cache.NewLRUExpireCacheWithClock(opts.CacheSize, clock),
		limits:   newFailureLimits(opts.Failures, opts.PeerFailures, opts.Peers, clock),
	}
}

// clockFunc is a cache.Clock.
type clockFunc func() time.Time

func (f clockFunc) Now() time.Time { return f() }

// Authenticate returns the caller of a gRPC request, or an error wrapping
// ErrUnauthenticated or ErrTooManyFailures.
func (a *Authenticator) Authenticate(ctx context.Context) (Caller, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, c := range md.Get(api.ClusterIDMetadata) {
		if c != "" && c != a.opts.ClusterID {
			return Caller{}, fmt.Errorf("%w: caller names cluster %q (%s), this istiod authenticates callers of cluster %q only", ErrUnauthenticated, c, api.ClusterIDMetadata, a.opts.ClusterID)
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
	key := sha256.Sum256([]byte(token))
	if c, ok, _ := a.lookup(key); ok {
		return c, nil
	}
	from := peerAddr(ctx)
	c, err, _ := a.reviews.Do(string(key[:]), func() (any, error) {
		// A review that ended between the lookup above and this one
		// left its caller here.
		c, ok, known := a.lookup(key)
		if ok {
			return c, nil
		}
		return a.review(ctx, key, token, from, known)
	})
	if err != nil {
		return Caller{}, err
	}
	return c.(Caller), nil
}

// lookup returns the caller of a token taken without review (ok), or
// whether the token was seen accepted (known).
func (a *Authenticator) lookup(key [sha256.Size]byte) (_ Caller, ok, known bool) {
	v, known := a.accepted.Get(key)
	if !known {
		return Caller{}, false, false
	}
	acc := v.(acceptance)
	if a.opts.Now().After(acc.fresh) {
		return Caller{}, false, true
	}
	return acc.caller, true, true
}

// review asks the apiserver about token, if it is known or the failure
// budgets allow, and keeps the caller of an accepted one.
func (a *Authenticator) review(ctx context.Context, key [sha256.Size]byte, token string, from netip.Addr, known bool) (Caller, error) {
	now := a.opts.Now()
	settle := func(time.Time, bool) {}
	if !known {
		var err error
		if settle, err = a.limits.admit(now, from); err != nil {
			return Caller{}, err
		}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reviewTimeout)
	defer cancel()
	c, err := a.tokenReview(ctx, token)
	settle(a.opts.Now(), err != nil)
	if err != nil {
		// Known no more: its next review spends from the budgets.
		a.accepted.Remove(key)
		return Caller{}, err
	}
	fresh, keep := a.opts.CacheTTL, a.opts.CacheTTL
	if exp, ok := expiry(token); ok {
		fresh = min(fresh, exp.Sub(now))
		keep = max(fresh, min(exp.Sub(now), maxKeep))
	}
	if fresh > 0 {
		a.accepted.Add(key, acceptance{caller: c, fresh: now.Add(fresh)}, keep)
	}
	return c, nil
}

// tokenReview asks the apiserver who token belongs to.
func (a *Authenticator) tokenReview(ctx context.Context, token string) (Caller, error) {
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

// expiry reads the exp claim of a JWT without verifying its signature:
// it only bounds how long a token the apiserver accepted (so whose
// claims it signed) is kept, and never accepts one.
func expiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp json.Number `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return time.Time{}, false
	}
	exp, err := claims.Exp.Float64()
	// Beyond year 9999 (or not a number) it bounds nothing.
	if err != nil || exp < 0 || exp > 253402300799 {
		return time.Time{}, false
	}
	return time.Unix(int64(exp), 0), true
}

// peerAddr is the caller's IP address; the zero Addr when unknown.
func peerAddr(ctx context.Context) netip.Addr {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return netip.Addr{}
	}
	if tcp, ok := p.Addr.(*net.TCPAddr); ok {
		return tcp.AddrPort().Addr().Unmap()
	}
	if p.Addr != nil {
		if ap, err := netip.ParseAddrPort(p.Addr.String()); err == nil {
			return ap.Addr().Unmap()
		}
	}
	return netip.Addr{}
}

// Code is the gRPC status code of an Authenticate error.
func Code(err error) codes.Code {
	if errors.Is(err, ErrTooManyFailures) {
		return codes.ResourceExhausted
	}
	return codes.Unauthenticated
}

// StreamInterceptor refuses the streams of the methods whose full name
// starts with prefix when the caller cannot be authenticated
// (codes.Unauthenticated, or codes.ResourceExhausted while failures are
// limited); refused calls are reported to onRefuse (may be nil).
func (a *Authenticator) StreamInterceptor(prefix string, onRefuse func(method string, err error)) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if strings.HasPrefix(info.FullMethod, prefix) {
			if _, err := a.Authenticate(ss.Context()); err != nil {
				if onRefuse != nil {
					onRefuse(info.FullMethod, err)
				}
				return status.Error(Code(err), err.Error())
			}
		}
		return handler(srv, ss)
	}
}
