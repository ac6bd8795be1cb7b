package waypoint_test

import (
	"bufio"
	"io"
	"net/http"
	"testing"
)

// TestConnectionCloseEndsStream: after a response with "Connection:
// close" the waypoint ends the client's HBONE stream in order
// (END_STREAM, then RST_STREAM NO_ERROR for the rest of the request),
// not with a CANCEL that the client's ztunnel logs as a failed
// connection: the client reads the response and then an EOF. Both the
// proxied response and one the waypoint makes itself.
func TestConnectionCloseEndsStream(t *testing.T) {
	e := newEnv(t, basicConfig)
	for _, tc := range []struct {
		name string
		host string
		want int
	}{
		{"proxied", "", http.StatusOK},
		{"local", "-", http.StatusBadRequest}, // no Host header
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := e.tunnel(t, clientID, e.vip(80))
			req := get(t, "/close")
			req.Close = true
			if tc.host == "-" {
				req.Host, req.URL.Host = "", ""
			}
			if err := req.Write(c); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, req)
			if err != nil {
				t.Fatalf("read response: %v", err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			expectStatus(t, resp, tc.want)
			if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
				t.Errorf("after the response: got %q, %v; want EOF (END_STREAM, not a reset)", rest, err)
			}
		})
	}
}
