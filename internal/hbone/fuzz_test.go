package hbone

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"testing"
)

// FuzzCONNECT drives the server's request handling with arbitrary methods,
// authorities and headers. Whatever the request says, the server answers
// one of its four statuses and dials only a target Authorize approved,
// which is exactly the parsed :authority.
func FuzzCONNECT(f *testing.F) {
	f.Add("CONNECT", "10.0.0.1:80", "")
	f.Add("GET", "10.0.0.1:80", "")
	f.Add("CONNECT", "[fd00::1]:8080", "for=10.0.0.2")
	f.Add("CONNECT", "example.com:443", "")
	f.Add("CONNECT", "10.0.0.9:80", "")
	f.Add("CONNECT", "10.0.0.1:0", "")
	f.Add("CONNECT", "[fe80::1%eth0]:80", "")
	f.Add("CONNECT", "::ffff:10.0.0.1:80", "")
	f.Add("CONNECT", "10.0.0.3:503", "")
	approved := netip.MustParseAddr("10.0.0.1")
	f.Fuzz(func(t *testing.T, method, authority, forwarded string) {
		var authorized netip.AddrPort
		var dialed []netip.AddrPort
		s := &Server{
			Authorize: func(_ context.Context, r *Request) error {
				authorized = r.Target
				if r.Target.Addr() == approved || r.Target.Port() == 503 {
					return nil
				}
				if r.Target.Port()%2 == 0 {
					return ErrDenied
				}
				return ErrBadRequest
			},
			Dial: func(_ context.Context, r *Request) (net.Conn, error) {
				dialed = append(dialed, r.Target)
				if r.Target.Port() == 503 {
					return nil, errors.New("connection refused")
				}
				a, b := net.Pipe()
				b.Close()
				return a, nil
			},
		}
		h := http.Header{}
		h.Set(HeaderForwarded, forwarded)
		d := s.decide(t.Context(), connInfo{peer: clientID}, requestHead{method: method, authority: authority, header: h})
		if d.upstream != nil {
			d.upstream.Close()
		}
		w := struct{ Code int }{d.code}
		switch w.Code {
		case http.StatusOK, http.StatusBadRequest, http.StatusUnauthorized, http.StatusServiceUnavailable:
		default:
			t.Fatalf("%q %q: got status %d, want 200, 400, 401 or 503", method, authority, w.Code)
		}
		target, perr := ParseTarget(method, authority)
		if perr != nil {
			if w.Code != http.StatusBadRequest || len(dialed) != 0 || authorized.IsValid() {
				t.Fatalf("%q %q: unparsable target: got status %d, %d dials, authorized %v; want 400, none, none", method, authority, w.Code, len(dialed), authorized)
			}
			return
		}
		if method != http.MethodConnect {
			t.Fatalf("ParseTarget accepted method %q", method)
		}
		if authorized != target {
			t.Fatalf("%q: Authorize saw %v, want %v", authority, authorized, target)
		}
		approvedTarget := target.Addr() == approved || target.Port() == 503
		if !approvedTarget && len(dialed) != 0 {
			t.Fatalf("%q: dialed %v without approval", authority, dialed)
		}
		if approvedTarget && (len(dialed) != 1 || dialed[0] != target) {
			t.Fatalf("%q: dialed %v, want exactly %v", authority, dialed, target)
		}
		if w.Code == http.StatusOK && (!approvedTarget || target.Port() == 503) {
			t.Fatalf("%q: got 200 without a connected upstream", authority)
		}
	})
}
