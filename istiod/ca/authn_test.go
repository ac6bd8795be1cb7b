package ca_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/ambitmesh/ambit/istiod/ca"
)

// apiserver answers TokenReviews as the apiserver would: the tokens
// starting with "good" and the JWTs whose subject does (see jwt), unless
// revoked, belong to istio-system/ztunnel (audience istio-ca), any other
// is rejected; with down set, every review fails as if the apiserver were
// unreachable. It counts the reviews.
type apiserver struct {
	mu      sync.Mutex
	revoked map[string]bool
	down    bool
	reviews int
	// release, when not nil, holds every review until it is closed;
	// entered then hears of the first held one.
	release, entered chan struct{}
}

func newAPIServer() (*fake.Clientset, *apiserver) {
	a := &apiserver{revoked: map[string]bool{}}
	kube := fake.NewClientset()
	kube.PrependReactor("create", "tokenreviews", func(act k8stesting.Action) (bool, runtime.Object, error) {
		tr := act.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
		a.mu.Lock()
		a.reviews++
		release, down := a.release, a.down
		ok := strings.HasPrefix(tr.Spec.Token, "good") || strings.HasPrefix(subject(tr.Spec.Token), "good")
		ok = ok && !a.revoked[tr.Spec.Token]
		a.mu.Unlock()
		if release != nil {
			select {
			case a.entered <- struct{}{}:
			default:
			}
			<-release
		}
		if down {
			return true, nil, errors.New("connection refused")
		}
		if ok {
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{ca.Audience},
				User: authnv1.UserInfo{Username: "system:serviceaccount:istio-system:ztunnel"}}
		} else {
			tr.Status = authnv1.TokenReviewStatus{Error: "invalid bearer token"}
		}
		return true, tr, nil
	})
	return kube, a
}

func (a *apiserver) revoke(token string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.revoked[token] = true
}

func (a *apiserver) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reviews
}

// clock is a settable clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

var epoch = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// jwt is a token shaped like a service account token that expires at exp;
// its signature is not one (only the apiserver checks it).
func jwt(sub string, exp time.Time) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." +
		enc(fmt.Appendf(nil, `{"sub":%q,"aud":["istio-ca"],"exp":%d}`, sub, exp.Unix())) + "." +
		enc([]byte("signature"))
}

// subject is the sub claim of a token made by jwt.
func subject(token string) string {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return ""
	}
	b, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var claims struct{ Sub string }
	json.Unmarshal(b, &claims)
	return claims.Sub
}

// request is the context of a gRPC call from addr with token.
func request(token, addr string) context.Context {
	ctx := context.Background()
	if token != "" {
		ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", "Bearer "+token))
	}
	return peer.NewContext(ctx, &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP(addr), Port: 40000}})
}

func code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	return ca.Code(err)
}

// call is n calls of the same kind in a test's sequence, after advancing
// the clock by advance.
type call struct {
	advance time.Duration
	token   string
	from    string
	n       int
	want    codes.Code
}

// run makes the calls in order and checks each one's code.
func run(t *testing.T, a *ca.Authenticator, clk *clock, calls []call) {
	t.Helper()
	for i, c := range calls {
		clk.advance(c.advance)
		for j := range max(c.n, 1) {
			caller, err := a.Authenticate(request(c.token, c.from))
			if got := code(err); got != c.want {
				t.Fatalf("step %d, call %d (token %.20q from %s): got %s (%v), want %s", i, j, c.token, c.from, got, err, c.want)
			}
			if err == nil && caller != (ca.Caller{Namespace: "istio-system", Name: "ztunnel"}) {
				t.Fatalf("step %d, call %d: got caller %+v, want istio-system/ztunnel", i, j, caller)
			}
		}
	}
}

// TestAuthenticatorCachesAcceptedTokens: an accepted token is reviewed
// once however often it comes, from wherever; a refused one is reviewed
// every time (within the failure budgets), never taken from the cache.
func TestAuthenticatorCachesAcceptedTokens(t *testing.T) {
	tests := []struct {
		name        string
		calls       []call
		wantReviews int
	}{
		{"same token 100 times", []call{{token: "good", from: "10.0.0.1", n: 100, want: codes.OK}}, 1},
		{"same token from two addresses", []call{
			{token: "good", from: "10.0.0.1", n: 10, want: codes.OK},
			{token: "good", from: "10.0.0.2", n: 10, want: codes.OK},
		}, 1},
		{"two tokens", []call{
			{token: "good", from: "10.0.0.1", n: 10, want: codes.OK},
			{token: "good-2", from: "10.0.0.1", n: 10, want: codes.OK},
			{token: "good", from: "10.0.0.1", n: 10, want: codes.OK},
		}, 2},
		{"rejected token not kept", []call{
			{token: "forged", from: "10.0.0.1", want: codes.Unauthenticated},
			{token: "forged", from: "10.0.0.2", want: codes.Unauthenticated},
			{token: "forged", from: "10.0.0.3", want: codes.Unauthenticated},
		}, 3},
		{"no token, no review", []call{{token: "", from: "10.0.0.1", n: 10, want: codes.Unauthenticated}}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kube, api := newAPIServer()
			clk := &clock{now: epoch}
			a := ca.NewAuthenticator(kube, ca.AuthenticatorOptions{Now: clk.Now})
			run(t, a, clk, tc.calls)
			if got := api.count(); got != tc.wantReviews {
				t.Errorf("TokenReviews: got %d, want %d", got, tc.wantReviews)
			}
		})
	}
}

// TestAuthenticatorSharesReviews: calls that arrive together with the
// same token wait for one review.
func TestAuthenticatorSharesReviews(t *testing.T) {
	kube, api := newAPIServer()
	api.release, api.entered = make(chan struct{}), make(chan struct{}, 1)
	a := ca.NewAuthenticator(kube, ca.AuthenticatorOptions{})
	const n = 50
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, err := a.Authenticate(request("good", fmt.Sprintf("10.0.0.%d", i)))
			errs <- err
		}()
	}
	<-api.entered
	close(api.release)
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("Authenticate: got %v, want no error", err)
		}
	}
	if got := api.count(); got != 1 {
		t.Errorf("TokenReviews: got %d, want 1", got)
	}
}

// TestAuthenticatorExpiry: an accepted token is reviewed again once its
// cache entry expired, after the cache TTL or at the token's own expiry
// if that comes first.
func TestAuthenticatorExpiry(t *testing.T) {
	const ttl = time.Minute
	tests := []struct {
		name        string
		token       string
		after       time.Duration
		wantReviews int
	}{
		{"within the TTL", "good", ttl - time.Second, 1},
		{"after the TTL", "good", ttl + time.Second, 2},
		{"token expiring after the TTL, within the TTL", jwt("good-late", epoch.Add(time.Hour)), ttl - time.Second, 1},
		{"token expiring after the TTL, after the TTL", jwt("good-late", epoch.Add(time.Hour)), ttl + time.Second, 2},
		{"token expiring before the TTL, before its expiry", jwt("good-soon", epoch.Add(10*time.Second)), 9 * time.Second, 1},
		{"token expiring before the TTL, after its expiry", jwt("good-soon", epoch.Add(10*time.Second)), 11 * time.Second, 2},
		// The apiserver's clock may run behind ours: it accepts, we
		// keep nothing.
		{"token expired by our clock", jwt("good-past", epoch.Add(-time.Second)), 0, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kube, api := newAPIServer()
			clk := &clock{now: epoch}
			a := ca.NewAuthenticator(kube, ca.AuthenticatorOptions{CacheTTL: ttl, Now: clk.Now})
			run(t, a, clk, []call{
				{token: tc.token, from: "10.0.0.1", want: codes.OK},
				{advance: tc.after, token: tc.token, from: "10.0.0.1", want: codes.OK},
			})
			if got := api.count(); got != tc.wantReviews {
				t.Errorf("TokenReviews: got %d, want %d", got, tc.wantReviews)
			}
		})
	}
}

// TestAuthenticatorLimitsFailures: failed reviews spend a budget of the
// caller's address (3, then 1/s here) and one of all callers (10, then
// 1/s); while either is spent, a token not in the cache is refused with
// ResourceExhausted and not reviewed. Accepted tokens spend nothing.
func TestAuthenticatorLimitsFailures(t *testing.T) {
	// many is n tokens, from n addresses or all from 10.0.0.1.
	many := func(token string, n int, oneAddress bool, want codes.Code) []call {
		var cs []call
		for i := range n {
			from := fmt.Sprintf("10.0.%d.%d", i/250, i%250+1)
			if oneAddress {
				from = "10.0.0.1"
			}
			cs = append(cs, call{token: fmt.Sprintf("%s-%d", token, i), from: from, want: want})
		}
		return cs
	}
	tests := []struct {
		name        string
		down        bool
		calls       []call
		wantReviews int
	}{
		{"one address floods", false, []call{
			{token: "forged", from: "10.0.0.1", n: 3, want: codes.Unauthenticated},
			{token: "forged", from: "10.0.0.1", n: 100, want: codes.ResourceExhausted},
		}, 3},
		{"other addresses go on", false, []call{
			{token: "forged", from: "10.0.0.1", n: 3, want: codes.Unauthenticated},
			{token: "forged", from: "10.0.0.1", n: 10, want: codes.ResourceExhausted},
			{token: "forged", from: "10.0.0.2", n: 3, want: codes.Unauthenticated},
		}, 6},
		{"many addresses flood", false, append(many("forged", 10, false, codes.Unauthenticated), many("forged", 100, false, codes.ResourceExhausted)...), 10},
		{"the budget refills", false, []call{
			{token: "forged", from: "10.0.0.1", n: 3, want: codes.Unauthenticated},
			{token: "forged", from: "10.0.0.1", want: codes.ResourceExhausted},
			{advance: time.Second, token: "forged", from: "10.0.0.1", want: codes.Unauthenticated},
			{token: "forged", from: "10.0.0.1", want: codes.ResourceExhausted},
		}, 4},
		{"accepted tokens spend nothing", false, append(
			many("good", 20, true, codes.OK),
			call{token: "forged", from: "10.0.0.1", n: 3, want: codes.Unauthenticated},
		), 23},
		{"a kept token passes while the address's budget is spent", false, []call{
			{token: "good", from: "10.0.0.1", want: codes.OK},
			{token: "forged", from: "10.0.0.1", n: 3, want: codes.Unauthenticated},
			{token: "forged", from: "10.0.0.1", want: codes.ResourceExhausted},
			{token: "good", from: "10.0.0.1", want: codes.OK},
			// A new token must wait, even a good one.
			{token: "good-2", from: "10.0.0.1", want: codes.ResourceExhausted},
		}, 4},
		{"a known token whose entry expired is reviewed without the budgets", false, []call{
			{token: jwt("good-known", epoch.Add(time.Hour)), from: "10.0.0.1", want: codes.OK},
			{advance: time.Minute + time.Second, token: "forged", from: "10.0.0.1", n: 3, want: codes.Unauthenticated},
			{token: "forged", from: "10.0.0.1", want: codes.ResourceExhausted},
			{token: jwt("good-known", epoch.Add(time.Hour)), from: "10.0.0.1", want: codes.OK},
			{token: "good-new", from: "10.0.0.1", want: codes.ResourceExhausted},
		}, 5},
		{"apiserver errors are failures", true, []call{
			{token: "good", from: "10.0.0.1", n: 3, want: codes.Unauthenticated},
			{token: "good", from: "10.0.0.1", n: 10, want: codes.ResourceExhausted},
		}, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kube, api := newAPIServer()
			api.down = tc.down
			clk := &clock{now: epoch}
			a := ca.NewAuthenticator(kube, ca.AuthenticatorOptions{
				Failures:     ca.Budget{PerSecond: 1, Burst: 10},
				PeerFailures: ca.Budget{PerSecond: 1, Burst: 3},
				Now:          clk.Now,
			})
			run(t, a, clk, tc.calls)
			if got := api.count(); got != tc.wantReviews {
				t.Errorf("TokenReviews: got %d, want %d", got, tc.wantReviews)
			}
		})
	}
}

// TestAuthenticatorRevokedToken: a token the apiserver accepted and then
// rejects (its pod deleted) is refused at its next review, once its
// cache entry expired, and is then no longer known: its reviews spend
// from the budgets like any other's.
func TestAuthenticatorRevokedToken(t *testing.T) {
	kube, api := newAPIServer()
	clk := &clock{now: epoch}
	a := ca.NewAuthenticator(kube, ca.AuthenticatorOptions{
		PeerFailures: ca.Budget{PerSecond: 1, Burst: 1},
		Now:          clk.Now,
	})
	token := jwt("good-revoked", epoch.Add(time.Hour))
	run(t, a, clk, []call{{token: token, from: "10.0.0.1", n: 10, want: codes.OK}})
	api.revoke(token)
	run(t, a, clk, []call{
		{token: token, from: "10.0.0.1", want: codes.OK}, // still fresh
		{advance: time.Minute + time.Second, token: token, from: "10.0.0.1", want: codes.Unauthenticated},
		{token: token, from: "10.0.0.1", want: codes.Unauthenticated},
		{token: token, from: "10.0.0.1", n: 10, want: codes.ResourceExhausted},
	})
	if got, want := api.count(), 3; got != want {
		t.Errorf("TokenReviews: got %d, want %d", got, want)
	}
}
