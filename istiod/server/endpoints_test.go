package server_test

import (
	"context"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/ambitmesh/ambit/istiod/server"
)

// TestOptionalEndpoints: plaintext, unauthenticated xDS and the debug
// endpoints are served only when configured, as Istio recommends for
// production; /metrics, /ready and /version always.
func TestOptionalEndpoints(t *testing.T) {
	tests := []struct {
		name          string
		plaintextAddr string
		debug         bool
		wantPlaintext codes.Code
		wantDebug     int
	}{
		{"off", "", false, codes.Unavailable, http.StatusNotFound},
		{"enabled", "127.0.0.1:0", true, codes.OK, http.StatusOK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			kube := fake.NewClientset()
			s, err := server.New(server.Config{
				XDSAddr: tc.plaintextAddr, SecureAddr: "127.0.0.1:0", MonitoringAddr: "127.0.0.1:0", DebugEndpoints: tc.debug,
			}, kube, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			runServer(t, ctx, cancel, s)

			// Without a plaintext listener, the only gRPC port speaks
			// TLS.
			addr := s.SecureAddr().String()
			if a := s.XDSAddr(); a != nil {
				addr = a.String()
			} else if tc.plaintextAddr != "" {
				t.Fatalf("XDSAddr: got nil, want a listener on %s", tc.plaintextAddr)
			}
			cc := dialOpts(t, addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			err = firstDelta(ctx, cc)
			if got := status.Code(err); got != tc.wantPlaintext {
				t.Errorf("plaintext delta xDS to %s: got code %s (%v), want %s", addr, got, err, tc.wantPlaintext)
			}

			base := "http://" + s.MonitoringAddr().String()
			for _, ep := range []struct {
				path string
				want []int
			}{
				{"/metrics", []int{http.StatusOK}},
				// Ready or not yet, but served.
				{"/ready", []int{http.StatusOK, http.StatusServiceUnavailable}},
				{"/version", []int{http.StatusOK}},
				{"/debug/model", []int{tc.wantDebug}},
				{"/debug/clients", []int{tc.wantDebug}},
			} {
				resp, err := http.Get(base + ep.path)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if got := resp.StatusCode; !slices.Contains(ep.want, got) {
					t.Errorf("GET %s: got %d, want one of %v", ep.path, got, ep.want)
				}
			}
		})
	}
}

// TestNoXDSListener: istiod without a secure or a plaintext xDS address
// is a configuration error, not an istiod that serves nobody.
func TestNoXDSListener(t *testing.T) {
	_, err := server.New(server.Config{MonitoringAddr: "127.0.0.1:0"}, fake.NewClientset(), nil, nil)
	if err == nil {
		t.Error("New without xDS addresses: got no error, want one")
	}
}
