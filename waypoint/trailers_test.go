package waypoint_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// trailerPods serve HTTP/1.1 and h2c on both pods' port 8181: the
// answer's X-Proto is the request's protocol, X-Got-Sum the request
// trailer X-Sum; the response ends with the trailers X-Resp-Sum
// (announced) and X-Late (not announced).
func trailerPods(t testing.TB, e *env) {
	t.Helper()
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	for _, h := range []byte{11, 12} {
		srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			w.Header().Set("Trailer", "X-Resp-Sum")
			w.Header().Set("X-Proto", r.Proto)
			w.Header().Set("X-Got-Sum", r.Trailer.Get("X-Sum"))
			fmt.Fprintf(w, "got %d bytes", len(b))
			http.NewResponseController(w).Flush()
			w.Header().Set("X-Resp-Sum", "resp-"+r.Trailer.Get("X-Sum"))
			w.Header().Set(http.TrailerPrefix+"X-Late", "late")
		})}
		ln, err := net.Listen("tcp", netip.AddrPortFrom(e.ip(h), 8181).String())
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
}

func h1Trailers() *core.Http1ProtocolOptions { return &core.Http1ProtocolOptions{EnableTrailers: true} }

// TestTrailersHTTP1: trailers between an HTTP/1.1 peer (chunked body)
// and an HTTP/2 one, both ways, as Envoy passes them: with
// enable_trailers on the HTTP/1.1 side's codec (the connection
// manager's for a client, the cluster's for an endpoint), and dropped
// without it.
func TestTrailersHTTP1(t *testing.T) {
	for _, tc := range []struct {
		name string
		// client: "h1" (chunked request with an announced trailer) or
		// "h2" (h2c).
		client, upstream string
		hcmTrailers      bool
		clusterTrailers  bool
		wantProto        string
		pass             bool
		// unannounced: the HTTP/1.1 client sends its trailer without a
		// Trailer header.
		unannounced bool
	}{
		{"h1 to h2", "h1", "h2", true, false, "HTTP/2.0", true, false},
		{"h1 to h2, off", "h1", "h2", false, false, "HTTP/2.0", false, false},
		{"h2 to h1", "h2", "", false, true, "HTTP/1.1", true, false},
		{"h2 to h1, off", "h2", "", false, false, "HTTP/1.1", false, false},
		{"h1 to h1", "h1", "", true, true, "HTTP/1.1", true, false},
		{"h1 to h1, unannounced", "h1", "", true, true, "HTTP/1.1", true, true},
		{"h1 to h1, client side only", "h1", "", true, false, "HTTP/1.1", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, resConfig(func(p *svcPort) {
				p.upstream = tc.upstream
				if tc.hcmTrailers {
					p.editHCM = func(h *hcmv3.HttpConnectionManager) { h.HttpProtocolOptions = h1Trailers() }
				}
				if tc.clusterTrailers {
					p.editCluster = func(c *cluster.Cluster) {
						c.TypedExtensionProtocolOptions = map[string]*anypb.Any{config.HTTPProtocolOptionsKey: mustAny(&upstreamhttp.HttpProtocolOptions{
							UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
								ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: h1Trailers()}}}})}
					}
				}
			}))
			trailerPods(t, e)
			var resp *http.Response
			var respBody string
			if tc.client == "h1" {
				c := e.resClient(t)
				announce := "Trailer: X-Sum\r\n"
				if tc.unannounced {
					announce = ""
				}
				fmt.Fprintf(c.c, "POST /t HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n%s\r\n"+
					"5\r\nhello\r\n0\r\nX-Sum: abc\r\n\r\n", host, announce)
				var err error
				if resp, err = http.ReadResponse(c.br, nil); err != nil {
					t.Fatal(err)
				}
				b, err := io.ReadAll(resp.Body)
				if err != nil {
					t.Fatalf("read body: %v", err)
				}
				respBody = string(b)
			} else {
				hc := e.h2cClient(resPort)
				defer hc.CloseIdleConnections()
				req, _ := http.NewRequest(http.MethodPost, "http://"+host+"/t", io.NopCloser(strings.NewReader("hello")))
				req.ContentLength = -1
				req.Trailer = http.Header{"X-Sum": {"abc"}}
				var err error
				if resp, err = hc.Do(req); err != nil {
					t.Fatal(err)
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					t.Fatalf("read body: %v", err)
				}
				respBody = string(b)
			}
			expectStatusOnly(t, resp, 200)
			if respBody != "got 5 bytes" {
				t.Errorf("body: got %q, want %q", respBody, "got 5 bytes")
			}
			if got := resp.Header.Get("X-Proto"); got != tc.wantProto {
				t.Errorf("upstream protocol: got %s, want %s", got, tc.wantProto)
			}
			wantSum, wantResp, wantLate := "", "", ""
			if tc.pass {
				wantSum, wantResp, wantLate = "abc", "resp-abc", "late"
			}
			if got := resp.Header.Get("X-Got-Sum"); got != wantSum {
				t.Errorf("request trailer at the pod: got %q, want %q", got, wantSum)
			}
			if got := resp.Trailer.Get("X-Resp-Sum"); got != wantResp {
				t.Errorf("response trailer X-Resp-Sum: got %q, want %q (trailers %v)", got, wantResp, resp.Trailer)
			}
			if got := resp.Trailer.Get("X-Late"); got != wantLate {
				t.Errorf("unannounced response trailer X-Late: got %q, want %q (trailers %v)", got, wantLate, resp.Trailer)
			}
		})
	}
}

func expectStatusOnly(t testing.TB, resp *http.Response, want int) {
	t.Helper()
	if resp.StatusCode != want {
		t.Fatalf("status: got %d, want %d", resp.StatusCode, want)
	}
}
