package waypoint_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// TestResponseFramingDownstream: how the waypoint frames an answer for
// its HTTP/1 client. A streamed answer (the pod's length unknown) goes
// to an HTTP/1.1 client chunked, to an HTTP/1.0 one (accept_http_10) to
// the close; a known length as it is.
func TestResponseFramingDownstream(t *testing.T) {
	e := newEnv(t, resConfig(func(p *svcPort) {
		p.editHCM = func(h *hcmv3.HttpConnectionManager) {
			h.HttpProtocolOptions = &core.Http1ProtocolOptions{AcceptHttp_10: true}
		}
	}))
	pod := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stream" {
			io.WriteString(w, "part one, ")
			http.NewResponseController(w).Flush() // the length is not known
			io.WriteString(w, "part two")
			return
		}
		io.WriteString(w, "whole")
	}
	podHandlers(t, e, pod, pod)
	for _, tc := range []struct {
		name, request  string
		chunked, close bool
		length         int64
		body           string
	}{
		{"1.1, streamed", "GET /stream HTTP/1.1\r\nHost: " + host + "\r\n\r\n", true, false, -1, "part one, part two"},
		{"1.1, length", "GET /whole HTTP/1.1\r\nHost: " + host + "\r\n\r\n", false, false, 5, "whole"},
		{"1.0 keep-alive, streamed", "GET /stream HTTP/1.0\r\nHost: " + host + "\r\nConnection: keep-alive\r\n\r\n", false, true, -1, "part one, part two"},
		{"1.0, streamed", "GET /stream HTTP/1.0\r\nHost: " + host + "\r\n\r\n", false, true, -1, "part one, part two"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := e.resClient(t)
			io.WriteString(c.c, tc.request)
			resp, err := http.ReadResponse(c.br, &http.Request{Method: http.MethodGet})
			if err != nil {
				t.Fatal(err)
			}
			// An HTTP/1.0 client is answered in HTTP/1.0, as Envoy's
			// codec answers one.
			proto := "HTTP/1.1"
			if strings.HasPrefix(tc.name, "1.0") {
				proto = "HTTP/1.0"
			}
			if resp.Proto != proto || resp.StatusCode != 200 {
				t.Errorf("status: got %s %d, want %s 200", resp.Proto, resp.StatusCode, proto)
			}
			if got := len(resp.TransferEncoding) > 0; got != tc.chunked {
				t.Errorf("chunked: got %v (%q), want %v", got, resp.TransferEncoding, tc.chunked)
			}
			if resp.Close != tc.close {
				t.Errorf("Connection: close: got %v, want %v", resp.Close, tc.close)
			}
			if resp.ContentLength != tc.length {
				t.Errorf("length: got %d, want %d", resp.ContentLength, tc.length)
			}
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("read body: %v", err)
			}
			if string(b) != tc.body {
				t.Errorf("body: got %q, want %q", b, tc.body)
			}
			if tc.close {
				if _, err := c.br.ReadByte(); err != io.EOF {
					t.Errorf("after a body to the close: got %v, want EOF", err)
				}
				return
			}
			// The connection carries the next request.
			fmt.Fprintf(c.c, "GET /whole HTTP/1.1\r\nHost: %s\r\n\r\n", host)
			next, err := http.ReadResponse(c.br, nil)
			if err != nil {
				t.Fatalf("next request: %v", err)
			}
			if b, _ := io.ReadAll(next.Body); string(b) != "whole" {
				t.Errorf("next request's body: got %q, want whole", b)
			}
		})
	}
}

// TestHTTP10Downstream: an HTTP/1.0 client (accept_http_10) on a
// connection it asks to keep.
func TestHTTP10Downstream(t *testing.T) {
	e := newEnv(t, resConfig(func(p *svcPort) {
		p.editHCM = func(h *hcmv3.HttpConnectionManager) {
			h.HttpProtocolOptions = &core.Http1ProtocolOptions{AcceptHttp_10: true}
		}
	}))
	pod := func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %q", r.Method, r.URL.Path, b)
	}
	podHandlers(t, e, pod, pod)

	// "Connection: keep-alive" asked: an answer of known length says it
	// keeps the connection (as Envoy's connection manager): proxied, or
	// the waypoint's own (TestWriteKeepAlive10); without it an HTTP/1.0
	// client closes.
	t.Run("keep-alive", func(t *testing.T) {
		c := e.resClient(t)
		for _, path := range []string{"/one", "/two"} {
			fmt.Fprintf(c.c, "GET %s HTTP/1.0\r\nHost: %s\r\nConnection: keep-alive\r\n\r\n", path, host)
			resp, err := http.ReadResponse(c.br, nil)
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			b, _ := io.ReadAll(resp.Body)
			if got := resp.Header.Get("Connection"); got != "keep-alive" || resp.ContentLength != int64(len(b)) {
				t.Errorf("%s: got status %d, Connection %q, length %d (body %q), want keep-alive and the body's length", path, resp.StatusCode, got, resp.ContentLength, b)
			}
		}
		// Without keep-alive, the connection closes after the answer.
		fmt.Fprintf(c.c, "GET /last HTTP/1.0\r\nHost: %s\r\n\r\n", host)
		resp, err := http.ReadResponse(c.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		if !resp.Close || resp.Proto != "HTTP/1.0" || resp.Header.Get("Connection") != "close" {
			t.Errorf("/last: %s, Connection %q (close %v), want HTTP/1.0 and close", resp.Proto, resp.Header.Get("Connection"), resp.Close)
		}
		if _, err := c.br.ReadByte(); err == nil {
			t.Errorf("connection still open after an HTTP/1.0 request without keep-alive")
		}
	})

	// Transfer-Encoding on HTTP/1.0: net/http would read a request
	// without a body, then the chunk as the next request; refused, and
	// the connection closed (RFC 9112 section 6.1).
	t.Run("transfer-encoding refused", func(t *testing.T) {
		c := e.resClient(t)
		smuggled := "GET /smuggled HTTP/1.0\r\nHost: " + host + "\r\nConnection: keep-alive\r\n\r\n"
		fmt.Fprintf(c.c, "POST /a HTTP/1.0\r\nHost: %s\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", host, len(smuggled), smuggled)
		resp, err := http.ReadResponse(c.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("status: got %d (%q), want 400", resp.StatusCode, b)
		}
		if _, err := c.br.ReadByte(); err == nil {
			t.Errorf("connection still open after the refusal")
		}
	})
}
