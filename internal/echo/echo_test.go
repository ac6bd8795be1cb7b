package echo

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func startServer(t *testing.T) (tcpAddr, httpAddr string) {
	t.Helper()
	tl, hl := listen(t), listen(t)
	serve(t, []net.Listener{tl}, []net.Listener{hl})
	return tl.Addr().String(), hl.Addr().String()
}

// listen listens on a free loopback port.
func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// serve runs a Server (pod-a in ns1) on the listeners until the test
// ends.
func serve(t *testing.T, tcp, web []net.Listener, rpc ...net.Listener) {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{Hostname: "pod-a", Namespace: "ns1"}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Serve(ctx, tcp, web, rpc...)
	}()
	t.Cleanup(func() { cancel(); <-done })
}

func TestTCPReport(t *testing.T) {
	tcpAddr, _ := startServer(t)
	rep, err := TCP(context.Background(), tcpAddr, "marker-123")
	if err != nil {
		t.Fatal(err)
	}
	if rep.Hostname != "pod-a" || rep.Namespace != "ns1" || rep.Protocol != "tcp" || rep.Message != "marker-123" {
		t.Errorf("report: got %+v, want hostname pod-a, namespace ns1, protocol tcp, message marker-123", rep)
	}
	if rep.Local != tcpAddr {
		t.Errorf("report local: got %q, want %q", rep.Local, tcpAddr)
	}
	if !strings.HasPrefix(rep.Peer, "127.0.0.1:") {
		t.Errorf("report peer: got %q, want 127.0.0.1:<port>", rep.Peer)
	}
	if _, err := TCP(context.Background(), tcpAddr, "two\nlines"); err == nil {
		t.Error("TCP with a newline in the message: got nil error, want refusal")
	}
}

func TestHTTPReport(t *testing.T) {
	_, httpAddr := startServer(t)
	rep, err := HTTP(context.Background(), nil, "http://"+httpAddr+"/some/path", http.Header{"X-Test": {"v1"}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Protocol != "http" || rep.Method != "GET" || rep.Path != "/some/path" || rep.Host != httpAddr {
		t.Errorf("report: got %+v, want GET /some/path on host %s", rep, httpAddr)
	}
	if got := rep.Headers["X-Test"]; len(got) != 1 || got[0] != "v1" {
		t.Errorf("header X-Test: got %v, want [v1]", got)
	}
	resp, err := http.Get("http://" + httpAddr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz: got status %d, want 200", resp.StatusCode)
	}
}

// TestHTTPStatusDelayCounts: ?status answers with that code, ?delay waits
// (cut short when the client gives up), and /requests counts by path.
func TestHTTPStatusDelayCounts(t *testing.T) {
	_, httpAddr := startServer(t)
	get := func(ctx context.Context, path string) (int, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	for range 2 {
		if code, err := get(context.Background(), "/fail?status=500"); err != nil || code != 500 {
			t.Errorf("/fail?status=500: got %d, %v; want 500", code, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if code, err := get(ctx, "/slow?delay=1h"); err == nil {
		t.Errorf("/slow?delay=1h with a 100ms client timeout: got %d, want a timeout", code)
	}
	resp, err := http.Get("http://" + httpAddr + "/requests")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got map[string]int
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if want := map[string]int{"/fail": 2, "/slow": 1}; !reflect.DeepEqual(got, want) {
		t.Errorf("/requests: got %v, want %v", got, want)
	}
}

// TestProbe: both probe clients reach a server; the held one on one
// connection, the new one on a connection per request; a server that
// goes away shows as failures.
func TestProbe(t *testing.T) {
	_, httpAddr := startServer(t)
	ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
	defer cancel()
	var out strings.Builder
	if err := Probe(ctx, "http://"+httpAddr+"/probe", 50*time.Millisecond, &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var last ProbeResult
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
		t.Fatalf("last line %q: %v", lines[len(lines)-1], err)
	}
	if !last.Done || last.Held.OK < 5 || last.New.OK < 5 || last.Held.Failed+last.New.Failed != 0 {
		t.Errorf("probe of a live server: got %+v, want done, at least 5 answers each and no failure", last)
	}
	// The last request may have had its connection when the probe ended.
	if last.Held.Conns != 1 || last.New.Conns < last.New.OK || last.New.Conns > last.New.OK+1 {
		t.Errorf("connections: got held %d, new %d for %d requests; want 1 and one per request", last.Held.Conns, last.New.Conns, last.New.OK)
	}

	ctx, cancel = context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	out.Reset()
	if err := Probe(ctx, "http://127.0.0.1:1/closed", 50*time.Millisecond, &out); err != nil {
		t.Fatal(err)
	}
	lines = strings.Split(strings.TrimSpace(out.String()), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
		t.Fatal(err)
	}
	if last.Held.Failed == 0 || last.New.Failed == 0 || last.Held.OK+last.New.OK != 0 || last.New.FirstFail == "" {
		t.Errorf("probe of a closed port: got %+v, want only failures", last)
	}
}

// TestProbeHeldEnds: the held client replaces its connection only when
// the peer ends it, and says why: closed by the server between two
// requests (an idle timeout shorter than the interval), or an answer
// with Connection: close. Neither fails a request.
func TestProbeHeldEnds(t *testing.T) {
	for _, tt := range []struct {
		name string
		srv  func(h http.Handler) *http.Server
		want string
	}{
		{"idle timeout", func(h http.Handler) *http.Server {
			return &http.Server{Handler: h, IdleTimeout: 10 * time.Millisecond}
		}, ": EOF"},
		{"connection close", func(h http.Handler) *http.Server {
			var n atomic.Int64
			return &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if n.Add(1)%3 == 0 {
					w.Header().Set("Connection", "close")
				}
				h.ServeHTTP(w, r)
			})}
		}, ": answer asked to close the connection"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			hs := tt.srv(&Server{Hostname: "pod-a"})
			go hs.Serve(l)
			t.Cleanup(func() { hs.Close() })
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			var out strings.Builder
			if err := Probe(ctx, "http://"+l.Addr().String()+"/probe", 50*time.Millisecond, &out); err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			var last ProbeResult
			if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
				t.Fatal(err)
			}
			h := last.Held
			if h.Failed != 0 || h.OK < 5 {
				t.Errorf("held client: got %d answers, %d failed (%v); want at least 5 and none failed", h.OK, h.Failed, h.Errors)
			}
			if h.Conns < 3 || len(h.Ends) < h.Conns-1 {
				t.Fatalf("held client: got %d connections, ends %q; want at least 3, each replaced one with its end", h.Conns, h.Ends)
			}
			for _, e := range h.Ends {
				if !strings.HasSuffix(e, tt.want) {
					t.Errorf("held connection end %q, want one ending in %q", e, tt.want)
				}
			}
		})
	}
}
